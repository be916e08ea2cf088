#!/usr/bin/env python3
"""PyTorch/timm timing of ConvNeXt forwards, the same shapes as `convnext-explorer bench`.

Prints one JSON object per line: {"model", "batch", "dtype", "threads", "median_ms", "min_ms"}.
Run by scripts/bench_vs_pytorch.sh, which runs our bench in the same session and prints ratios.
"""
import argparse
import json
import statistics
import time

import timm
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="timm name, e.g. convnext_tiny")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = timm.create_model(a.model, pretrained=False).eval()
    x = torch.randn(a.batch, 3, a.size, a.size)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    model = model.to(dtype)
    x = x.to(dtype)
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            t = time.perf_counter()
            model(x)
            if i >= a.warmup:
                times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({
        "model": a.model, "batch": a.batch, "dtype": a.dtype, "threads": a.threads,
        "torch": torch.__version__, "timm": timm.__version__,
        "median_ms": statistics.median(times), "min_ms": min(times),
    }))


if __name__ == "__main__":
    main()
