#!/usr/bin/env python3
"""PyTorch peers of the Burn benchmark, writing the same record format (one JSON per line).

Implementations:
  hf-nystrom        HF transformers' NystromformerSelfAttention maths (segment means, three
                    softmaxes, iterative_inv, no conv), called on q/k/v tensors
  lucidrains-nystrom  nystrom-attention's Nystrom maths via its module (projections included,
                    as that package offers no functional form)
  torch-sdpa        torch.nn.functional.scaled_dot_product_attention (exact)

Run in a venv: pip install torch transformers nystrom-attention
  python nystromformer-bench/peers/torch_peers.py --out nystromformer-bench/results/latest
"""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import time

import torch


def hf_nystrom(q, k, v, m, iters=6):
    """The maths of HF's NystromformerSelfAttention.forward (Nyström branch, conv off)."""
    from transformers.models.nystromformer.modeling_nystromformer import NystromformerSelfAttention

    d = q.shape[-1]
    q = q / math.sqrt(math.sqrt(d))
    k = k / math.sqrt(math.sqrt(d))
    b, h, n, _ = q.shape
    q_l = q.reshape(b, h, m, n // m, d).mean(dim=-2)
    k_l = k.reshape(b, h, m, n // m, d).mean(dim=-2)
    k1 = torch.softmax(q @ k_l.transpose(-1, -2), dim=-1)
    k2 = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)
    k3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)
    inv = NystromformerSelfAttention.iterative_inv(_HF_SELF, k2, iters)
    return (k1 @ inv) @ (k3 @ v)


class _Original:
    init_option = "original"


_HF_SELF = _Original()


def lucidrains_module(h, d, m, device):
    from nystrom_attention import NystromAttention

    return NystromAttention(dim=h * d, dim_head=d, heads=h, num_landmarks=m, pinv_iterations=6, residual=False).to(device).eval()


def sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_bytes(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(fn, device, warmup, reps):
    for _ in range(warmup):
        fn()
        sync(device)
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times), max(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
    p.add_argument("--landmarks", type=int, default=64)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-intermediate-gib", type=float, default=4.0)
    p.add_argument("--passes", default="forward",
                   help="forward, backward (forward + backward of the sum of the output with respect to q, k, v), or both: forward,backward")
    p.add_argument("--out", required=True, help="output directory (records-torch-<device>.jsonl goes there)")
    args = p.parse_args()
    if args.out.endswith(".jsonl") or os.path.isfile(args.out):
        p.error(f"--out {args.out}: expected a directory, as for nystromformer-bench sweep --out")

    device = torch.device(args.device)
    backend = f"torch-{device.type}"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name()}"
    b, h, d, m = args.batch, args.heads, args.head_dim, args.landmarks
    records = []
    passes = args.passes.split(",")
    if not set(passes) <= {"forward", "backward"}:
        p.error(f"--passes {args.passes}: expected forward, backward or forward,backward")
    for n, backward in [(int(x), pass_ == "backward") for pass_ in passes for x in args.lengths.split(",")]:
        # As the Burn sweep does: the backward of the output's sum with respect to q, k and v.
        torch.set_grad_enabled(backward)
        q, k, v = (torch.randn(b, h, n, d, device=device, requires_grad=backward) for _ in range(3))
        x = torch.randn(b, n, h * d, device=device)
        lucid = lucidrains_module(h, d, m, device)

        def run(fn):
            return (lambda: fn().sum().backward()) if backward else fn

        impls = [
            ("hf-nystrom", m, run(lambda: hf_nystrom(q, k, v, m)), b * h * n * m * 4),
            ("torch-sdpa", 0, run(lambda: sdpa(q, k, v)), b * h * n * n * 4 if device.type == "cpu" else 0),
        ]
        if not backward:
            # Its projections have weights of their own: a backward would not be the same work.
            impls.insert(1, ("lucidrains-nystrom", m, lambda: lucid(x), b * h * n * m * 4))
        pass_name = "forward+backward" if backward else "forward"
        for name, landmarks, fn, needed in impls:
            record = dict(implementation=name, backend=backend, **{"pass": pass_name}, batch=b, heads=h, n=n,
                          head_dim=d, landmarks=landmarks, median_ms=None, min_ms=None, max_ms=None,
                          reps=args.reps, peak_bytes=None, status="ok", commit=commit, machine=machine)
            if needed > args.max_intermediate_gib * 2**30:
                record["status"] = f"skipped: needs a {needed / 2**30:.1f} GiB intermediate"
            else:
                try:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    med, lo, hi = measure(fn, device, args.warmup, args.reps)
                    record.update(median_ms=med, min_ms=lo, max_ms=hi, peak_bytes=peak_bytes(device))
                except Exception as err:  # noqa: BLE001 - a shape that does not fit is a result
                    record["status"] = f"failed: {str(err).splitlines()[0]}"
            records.append(record)
            print(f"{name:20s} {pass_name:16s} n={n:6d} {record['median_ms']} ms {record['status']}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"records-torch-{device.type}.jsonl")
    with open(path + ".tmp", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
