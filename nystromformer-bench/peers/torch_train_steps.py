#!/usr/bin/env python3
"""Training steps per second of HF transformers' NystromformerForSequenceClassification at LRA
ListOps' configuration: the PyTorch side of `nystromformer-bench train-steps`.

2 layers, width 64, 2 heads, FFN 128, 64 landmarks, conv kernel 35, dropout 0.1, 10 classes;
forward, cross-entropy, backward and an AdamW step (betas 0.9/0.999, eps 1e-6, weight decay
0.01, lr 1e-4) on one full-length random batch, as the Burn side does. HF's segment means need
the length to be a multiple of the landmarks: 1984 (= 31 * 64, just under LRA's 2000) and 2048
are the neighbours.

  GLIBC_TUNABLES=... python peers/torch_train_steps.py --lengths 1984,2048 --out DIR
  python peers/torch_train_steps.py --device cuda --kernels --out DIR

--kernels (CUDA) also counts the GPU kernels (and memory copies and fills) of one more step with
torch.profiler, the peer of the Burn side's `--launches`.
"""

import argparse
import json
import os
import platform
import subprocess
import time

import torch
from transformers import NystromformerConfig, NystromformerForSequenceClassification


def measure(device, batch, length, warmup, steps, kernels=False, vocab=16, classes=10):
    config = NystromformerConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=length + 2,
        segment_means_seq_len=length,
        num_landmarks=64,
        conv_kernel_size=35,
        inv_coeff_init_option=False,
        num_labels=classes,
    )
    model = NystromformerForSequenceClassification(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    tokens = torch.randint(1, vocab, (batch, length), device=device)
    labels = torch.randint(0, classes, (batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=tokens, labels=labels).loss
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    seconds = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        step()
        if i >= warmup:
            seconds.append(time.perf_counter() - started)
        print(f"length {length}: step {i + 1}/{warmup + steps}", flush=True)
    count = count_gpu_kernels(step) if kernels else None
    return steps / sum(seconds), seconds, count


def count_gpu_kernels(step):
    """The GPU-side events (kernels, memory copies and fills) of one call of `step`, or the error
    that kept the profiler from counting them (a missing CUPTI, say), as a string."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    except Exception as err:  # the timing must survive a profiler that cannot run
        return f"not counted: {err}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lengths", default="1984,2048")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--kernels", action="store_true", help="count the GPU kernels of one more step (CUDA)")
    p.add_argument("--out", required=True, help="output directory (train-steps-torch-DEVICE.json goes there)")
    args = p.parse_args()
    if args.kernels and not args.device.startswith("cuda"):
        p.error("--kernels counts GPU kernels: it needs --device cuda")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    records = []
    for length in [int(x) for x in args.lengths.split(",")]:
        rate, seconds, kernels = measure(args.device, args.batch, length, args.warmup, args.steps, args.kernels)
        print(f"length {length}: {rate:.3f} steps/s", flush=True)
        record = dict(implementation="transformers NystromformerForSequenceClassification", backend=f"torch-{args.device}",
                      batch=args.batch, length=length, steps=args.steps, steps_per_second=rate,
                      step_seconds=seconds, commit=commit, machine=machine)
        if kernels is not None:
            print(f"length {length}: {kernels} GPU kernels per step", flush=True)
            record["kernels_per_step"] = kernels
        records.append(record)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"train-steps-torch-{args.device}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(records, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
