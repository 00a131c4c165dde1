#!/usr/bin/env python3
"""Training steps per second of HF transformers' NystromformerForSequenceClassification at LRA
ListOps' configuration: the PyTorch side of `nystromformer-bench train-steps`.

2 layers, width 64, 2 heads, FFN 128, 64 landmarks, conv kernel 35, dropout 0.1, 10 classes;
forward, cross-entropy, backward and an AdamW step (betas 0.9/0.999, eps 1e-6, weight decay
0.01, lr 1e-4) on one full-length random batch, as the Burn side does. HF's segment means need
the length to be a multiple of the landmarks: 1984 (= 31 * 64, just under LRA's 2000) and 2048
are the neighbours.

  GLIBC_TUNABLES=... python peers/torch_train_steps.py --lengths 1984,2048 --out DIR
  python peers/torch_train_steps.py --device cuda --out DIR
"""

import argparse
import json
import os
import platform
import subprocess
import time

import torch
from transformers import NystromformerConfig, NystromformerForSequenceClassification


def measure(device, batch, length, warmup, steps, vocab=16, classes=10):
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
    seconds = []
    for step in range(warmup + steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=tokens, labels=labels).loss
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= warmup:
            seconds.append(time.perf_counter() - started)
        print(f"length {length}: step {step + 1}/{warmup + steps}", flush=True)
    return steps / sum(seconds), seconds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lengths", default="1984,2048")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", required=True, help="output directory (train-steps-torch-DEVICE.json goes there)")
    args = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    records = []
    for length in [int(x) for x in args.lengths.split(",")]:
        rate, seconds = measure(args.device, args.batch, length, args.warmup, args.steps)
        print(f"length {length}: {rate:.3f} steps/s", flush=True)
        records.append(dict(implementation="transformers NystromformerForSequenceClassification", backend=f"torch-{args.device}",
                            batch=args.batch, length=length, steps=args.steps, steps_per_second=rate,
                            step_seconds=seconds, commit=commit, machine=machine))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"train-steps-torch-{args.device}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(records, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
