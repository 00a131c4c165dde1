#!/usr/bin/env bash
# LRA ListOps training steps per second on this machine's CPU, the library (flex) and HF
# transformers' Nystromformer (PyTorch) side by side, alternating so that both see the same
# machine: ROUNDS rounds of one `train-steps` run each. Pauses a running `lra_cpu.sh` training
# (SIGSTOP) for the duration and resumes it at the end.
#
#   nystromformer-bench/scripts/cpu_train_steps.sh OUT_DIR
#
# BIN: the bench binary (default target/release/nystromformer-bench); PYTHON: an interpreter
# with torch and transformers (default .venv/bin/python); ROUNDS (default 3), STEPS (default 5).
set -eu
OUT=${1:?usage: cpu_train_steps.sh OUT_DIR}
BIN=${BIN:-target/release/nystromformer-bench}
PYTHON=${PYTHON:-.venv/bin/python}
. "$(dirname "$0")/pause_training.sh"
mkdir -p "$OUT"
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%FT%TZ)" | tee "$OUT/log.txt"
for ROUND in $(seq "${ROUNDS:-3}"); do
    DIR=$OUT/run$ROUND
    mkdir -p "$DIR"
    "$BIN" train-steps --warmup 1 --steps "${STEPS:-5}" --out "$DIR" 2>&1 | grep steps/s | tee -a "$OUT/log.txt"
    "$PYTHON" nystromformer-bench/peers/torch_train_steps.py --warmup 1 --steps "${STEPS:-5}" \
        --out "$DIR" 2>&1 | grep -i "steps/s" | tee -a "$OUT/log.txt"
done
