#!/usr/bin/env bash
# The attention alone on this machine's CPU, the library (flex, fused) and HF's Nyström maths in
# PyTorch side by side, alternating so that both see the same machine: ROUNDS rounds of one
# `sweep` and one `torch_peers.py` run each (b 1, h 8, d 64, m 64, fp32, forward and forward +
# backward). Pauses a running `lra_cpu.sh` training (SIGSTOP) for the duration and resumes it
# at the end.
#
#   nystromformer-bench/scripts/cpu_attention.sh OUT_DIR
#
# BIN: the bench binary (default target/release/nystromformer-bench); PYTHON: an interpreter
# with torch (default .venv/bin/python); ROUNDS (default 2), LENGTHS (default 4096,16384),
# REPS (default 7).
set -eu
OUT=${1:?usage: cpu_attention.sh OUT_DIR}
BIN=${BIN:-target/release/nystromformer-bench}
PYTHON=${PYTHON:-.venv/bin/python}
LENGTHS=${LENGTHS:-4096,16384}
REPS=${REPS:-7}
. "$(dirname "$0")/pause_training.sh"
mkdir -p "$OUT"
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%FT%TZ)" | tee "$OUT/log.txt"
for ROUND in $(seq "${ROUNDS:-2}"); do
    DIR=$OUT/run$ROUND
    mkdir -p "$DIR"
    "$BIN" sweep --devices flex --implementations nystrom --lengths "$LENGTHS" --pass both \
        --reps "$REPS" --out "$DIR" 2>&1 | tee -a "$OUT/log.txt"
    "$PYTHON" nystromformer-bench/peers/torch_peers.py --device cpu --lengths "$LENGTHS" \
        --reps "$REPS" --passes forward,backward --out "$DIR" 2>&1 | tee -a "$OUT/log.txt"
done
