#!/usr/bin/env bash
# Benchmarks on an H100: Burn through wgpu (Vulkan) and the PyTorch peers on CUDA.
# Run from the repository root with .gl, .whl and .devbin carried (see README.md here).
set -u
. nystromformer-bench/scripts/h100_env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$R/gpu.txt"
LENGTHS=512,1024,2048,4096,8192,16384,32768,65536
timeout 240 nystromformer-bench sweep --devices wgpu --lengths $LENGTHS --pass both \
    --implementations nystrom,nystrom-tensor-ops,burn-attention,naive-softmax \
    --max-intermediate-gib 8 --out "$R" 2>&1 | grep -v '^\s*$' | tail -5
# Each custom kernel against the tensor ops it replaces (the bench shape; binary optional).
command -v kernel_stages > /dev/null && BATCH=1 HEADS=8 HEAD_DIM=64 timeout 60 \
    kernel_stages wgpu 4096 20 > "$R/kernel-stages-n4096.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
timeout 90 python3 nystromformer-bench/peers/torch_peers.py --device cuda --lengths $LENGTHS \
    --max-intermediate-gib 8 --out "$R" 2>&1 | tail -30
nystromformer-bench report --dir "$R" > /dev/null && cp "$R/results.md" "$R/results-h100.md"
rm -f "$R/results.md"
