#!/usr/bin/env bash
# The LRA ListOps preset on an H100 through wgpu (Vulkan), one leg per device session.
#
# A full run (5 000 steps) does not fit one session's device time, so legs chain through
# `--stop-at-step` and `--resume` (which also starts the run when there is none): each leg trains to the next checkpoint boundary it can reach
# (STOP, default: 1 000 steps further) and returns the whole artifact directory, checkpoints
# included, as $OUT/h100/lra-run.tgz. For the next leg, copy that file to .lra-run/lra-run.tgz
# (ignored by git) and carry `.lra-run` with `.gl` and `.devbin`. Data are regenerated from the
# seed on every leg, so they are the same examples each time.
set -u
. nystromformer-bench/scripts/h100_env.sh
LIMIT=${LIMIT:-420}
ADVANCE=${ADVANCE:-1000}
DIR=/tmp/lra
mkdir -p "$DIR"
DONE=0
if [ -f .lra-run/lra-run.tgz ]; then
    tar xzf .lra-run/lra-run.tgz -C "$DIR"
    # Steps done so far: the newest run state's step (the binary itself resumes from the newest
    # complete checkpoint, which this is unless that leg was killed while writing it).
    STATE=$(ls -v "$DIR"/checkpoint/state-*.json 2>/dev/null | tail -1)
    [ -n "$STATE" ] && DONE=$(sed -n 's/^  "step": *\([0-9]*\).*/\1/p' "$STATE")
fi
STOP=${STOP:-$((DONE + ADVANCE))}
echo "leg from step $DONE to $STOP" | tee "$R/lra-train.log"
# SET: extra `--set key=value` arguments; a resumed leg accepts them only if config.json agrees.
timeout "$LIMIT" nystromformer-train --device "${DEVICE:-wgpu}" train listops --preset lra \
    --headless --artifact-dir "$DIR" --resume --stop-at-step "$STOP" ${SET:-} \
    >> "$R/lra-train.log" 2>&1
echo "exit $?" >> "$R/lra-train.log"
tar czf "$R/lra-run.tgz" -C "$DIR" .
tail -n 5 "$R/lra-train.log"
