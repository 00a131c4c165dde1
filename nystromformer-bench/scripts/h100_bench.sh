#!/usr/bin/env bash
# Issue 10's measurements on an H100-class GPU in one device session (about nine minutes):
# Burn through wgpu (WGSL), and Vulkan (SPIR-V) too with DEVICES=wgpu,vulkan when the carried
# binary was built with the `vulkan` feature; the PyTorch peers on CUDA when PyTorch is there. Bench shape b 1, h 8, d 64, m 64,
# fp32. Run from the repository root with .gl and .devbin carried (see README.md here).
#   1. forward at n = 4 096 … 65 536 and forward + backward to 16 384: the custom kernels
#      (`nystrom`), the tensor-op stages, Burn's `attention`; and at 16 384 with half of the
#      sequence padding, kernels and tensor ops;
#   2. peak memory of the kernels' forward to 262 144 tokens;
#   3. each kernel against the tensor ops it replaces, at 4 096 and 16 384, f32 and f16
#      (`kernel_stages`), and forward + backward at 16 384, f32 and f16;
#   4. LRA ListOps training steps per second and kernel launches per step, kernels and tensor
#      ops, full-length; and the kernels on batches padded as ListOps' are;
#   5. the PyTorch peers (attention sweep and training steps);
#   6. each stage's forward + backward at m = 256, the most landmarks the kernels take.
set -u
. nystromformer-bench/scripts/h100_env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$R/gpu.txt"
DEVICES=${DEVICES:-wgpu}
# `run` stops a command at 600 s. What is under $OUT then still comes back, but the reports at
# the end would not be written; so every step is cut to what is left of BUDGET seconds, and
# skipped when little is.
BUDGET=${BUDGET:-550}
within() { # SECONDS COMMAND...: `timeout SECONDS COMMAND...`, within the budget
    local limit=$1 left=$((BUDGET - SECONDS))
    shift
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$left" -le 5 ]; then
        echo "skipped, over the ${BUDGET} s budget: $*" >&2
        return 124
    fi
    timeout "$limit" "$@"
}
sweep() { # TIMEOUT LENGTHS PASS IMPLEMENTATIONS [OUT_DIR [FLAGS...]]
    local limit=$1 lengths=$2 pass=$3 implementations=$4 dir=${5:-$3}
    shift 4
    shift $(($# > 0 ? 1 : 0))
    within "$limit" nystromformer-bench sweep --devices "$DEVICES" --lengths "$lengths" \
        --pass "$pass" --implementations "$implementations" --max-intermediate-gib 16 \
        --out "$R/$dir" "$@" 2>&1 | grep -v '^\s*$' | tail -3
}
sweep 150 4096,16384,65536 forward nystrom,nystrom-tensor-ops,burn-attention
sweep 100 4096,16384 both nystrom,nystrom-tensor-ops,burn-attention
within 60 nystromformer-bench sweep --devices wgpu --lengths 131072,262144 --pass forward \
    --implementations nystrom --max-intermediate-gib 64 --out "$R/memory" 2>&1 | tail -3
for N in 4096 16384; do
    for DTYPE in f32 f16; do
        command -v kernel_stages > /dev/null && within 30 env DTYPE=$DTYPE BATCH=1 HEADS=8 \
            HEAD_DIM=64 kernel_stages wgpu $N 20 > "$R/kernel-stages-$DTYPE-n$N.txt" 2>&1
    done
done
# The backward kernels against the tensor-op backward, stage by stage, f32 and f16.
for DTYPE in f32 f16; do
    command -v kernel_stages > /dev/null && within 40 env DTYPE=$DTYPE BACKWARD=1 BATCH=1 \
        HEADS=8 HEAD_DIM=64 kernel_stages wgpu 16384 20 > "$R/kernel-stages-$DTYPE-n16384-backward.txt" 2>&1
done
# On lavapipe the first step after a single warm-up one took three times as long as the next:
# three warm-up steps.
for FLAG in "" --tensor-ops; do
    within 60 nystromformer-bench train-steps --device wgpu --warmup 3 --steps 10 --launches $FLAG \
        --out "$R/train-steps" 2>&1 | grep -E "steps/s|launches per step"
done

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
if python3 -c "import torch" 2> /dev/null; then
    within 90 python3 nystromformer-bench/peers/torch_peers.py --device cuda \
        --lengths 4096,16384,65536 --max-intermediate-gib 16 --out "$R/forward" 2>&1 | tail -5
    within 60 python3 nystromformer-bench/peers/torch_train_steps.py --device cuda --warmup 2 \
        --steps 10 --kernels --out "$R/train-steps" 2>&1 | grep -iE "steps/s|kernels per step"
fi
# At the most landmarks the kernels take: one cube walks each 256 × 256 pseudo-inverse back
# (72 products of 256 × 256 per matrix), which may lose to the tensor ops' batched products.
command -v kernel_stages > /dev/null && within 40 env BACKWARD=1 BATCH=1 HEADS=8 HEAD_DIM=64 \
    LANDMARKS=256 kernel_stages wgpu 4096 10 > "$R/kernel-stages-f32-n4096-m256-backward.txt" 2>&1
# Last, so that they are what the budget drops first: half of each sequence padding (the
# kernels skip padded keys' and padded query rows' products), and batches padded as ListOps'
# are (valid lengths 500 to 2 000), kernels only.
sweep 60 16384 both nystrom,nystrom-tensor-ops padded --padded 0.5
within 40 nystromformer-bench train-steps --device wgpu --warmup 3 --steps 10 --min-length 500 \
    --out "$R/train-steps" 2>&1 | grep -E "steps/s"
for D in forward both memory padded; do
    nystromformer-bench report --dir "$R/$D" > /dev/null && mv "$R/$D/results.md" "$R/results-$D.md"
done
