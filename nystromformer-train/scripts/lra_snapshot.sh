#!/usr/bin/env bash
# Copies what an LRA run in artifacts/ needs to resume (its config.json and its checkpoints,
# a few MB: model, optimizer and scheduler records and the run state) to
# nystromformer-train/runs/, which git tracks. A fresh checkout of the repository has no
# artifacts/ (it is ignored); lra_cpu.sh restores the snapshot there and the run continues
# from it instead of starting again. A finished run's summary.json is copied too.
#
#   nystromformer-train/scripts/lra_snapshot.sh && git add nystromformer-train/runs
#
# A running training process is paused (SIGSTOP) during the copy, so no checkpoint changes
# under it, and continued afterwards (one that was already stopped stays stopped); files still
# being written (dot-prefixed temporaries) are not copied.
set -eu
RUNS=nystromformer-train/runs
PATTERN="nystromformer-train .*train listops --preset lra"
for DIR in artifacts/lra-listops-*; do
    [ -f "$DIR/config.json" ] || continue
    OUT=$RUNS/$(basename "$DIR")
    rm -rf "$OUT.partial"
    mkdir -p "$OUT.partial/checkpoint"
    PAUSED=""
    for PID in $(pgrep -f "$PATTERN" || true); do
        case "$(ps -o stat= -p "$PID")" in
            T*) ;;
            *) kill -STOP "$PID" && PAUSED="$PAUSED $PID" ;;
        esac
    done
    cp "$DIR/config.json" "$OUT.partial/"
    if [ -f "$DIR/summary.json" ]; then cp "$DIR/summary.json" "$OUT.partial/"; fi
    cp "$DIR"/checkpoint/* "$OUT.partial/checkpoint/" 2>/dev/null || true
    for PID in $PAUSED; do kill -CONT "$PID" || true; done
    rm -rf "$OUT"
    mv "$OUT.partial" "$OUT"
    echo "$OUT: $(ls "$OUT/checkpoint" | grep -c '^state-') checkpoints, $(du -sh "$OUT" | cut -f1)"
done
