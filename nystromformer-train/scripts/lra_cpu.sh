#!/usr/bin/env bash
# LRA ListOps as the paper ran it (`--preset lra`), Nyström then the softmax baseline, on this
# machine's CPU (flex). Hours per model: run it in the background and run it again after any
# interruption (kill, reboot, end of a session): each run continues from its newest complete
# checkpoint, to the result an uninterrupted run would give. Finished models are skipped.
#
#   nohup nystromformer-train/scripts/lra_cpu.sh > artifacts/lra-cpu.log 2>&1 &
#
# BIN: the binary (default target/release/nystromformer-train); ATTENTIONS: which models
# (default "nystrom softmax"); NICE: scheduling priority (default 19, so builds come first).
#
# A checkout without the run in artifacts/ (a fresh clone) starts from the snapshot that
# lra_snapshot.sh left in nystromformer-train/runs/, if there is one.
set -u
BIN=${BIN:-target/release/nystromformer-train}
mkdir -p artifacts
for ATTENTION in ${ATTENTIONS:-nystrom softmax}; do
    DIR=artifacts/lra-listops-$ATTENTION
    SNAPSHOT=nystromformer-train/runs/lra-listops-$ATTENTION
    if [ ! -f "$DIR/config.json" ] && [ -f "$SNAPSHOT/config.json" ]; then
        echo "$(date -u +%FT%TZ) $DIR: restoring the snapshot $SNAPSHOT"
        mkdir -p "$DIR" && cp -r "$SNAPSHOT/." "$DIR/"
    fi
    if [ -f "$DIR/summary.json" ]; then
        echo "$DIR: finished"
        continue
    fi
    echo "$(date -u +%FT%TZ) $DIR: training (commit $(git rev-parse --short HEAD 2>/dev/null))"
    nice -n "${NICE:-19}" "$BIN" --device flex train listops --preset lra \
        --attention "$ATTENTION" --headless --artifact-dir "$DIR" --resume || exit $?
done
