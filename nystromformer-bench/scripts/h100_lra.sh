#!/usr/bin/env bash
# The LRA ListOps preset on an H100 through wgpu (Vulkan), as far as the time limit allows.
set -u
. nystromformer-bench/scripts/h100_env.sh
LIMIT=${LIMIT:-400}
timeout "$LIMIT" nystromformer-train --device wgpu train listops --preset lra --headless \
    --artifact-dir /tmp/lra > "$R/lra-train.log" 2>&1
echo "exit $?" >> "$R/lra-train.log"
tar czf "$R/lra-artifacts.tgz" -C /tmp/lra --exclude checkpoint --exclude model.bpk . 2>/dev/null
tail -5 "$R/lra-train.log"
