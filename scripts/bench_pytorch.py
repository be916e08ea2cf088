#!/usr/bin/env python3
"""PyTorch/timm timing of ConvNeXt forwards, the same shapes as `convnext-explorer bench`.

Prints one JSON object: {"model", "batch", "dtype", "threads", "median_ms", "min_ms",
"nchw_ms", "channels_last_ms"}: both memory formats are timed (interleaved) and `median_ms` is
the faster one's median, as a user who tries both would see it.
Run by scripts/bench_vs_pytorch.sh, which runs our bench in the same session and prints ratios.
"""
import argparse
import copy
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
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (timed with a synchronize)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = timm.create_model(a.model, pretrained=False).eval()
    x = torch.randn(a.batch, 3, a.size, a.size)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    model = model.to(dtype).to(dev)
    x = x.to(dtype).to(dev)
    # GPU work is asynchronous: wait for it before reading the clock (a no-op on the CPU).
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    # Module.to converts in place and returns the same module: the channels_last one is a copy, so
    # "nchw" keeps NCHW weights (with channels_last weights PyTorch runs NCHW input channels_last).
    models = {"nchw": model,
              "channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last)}
    inputs = {"nchw": x, "channels_last": x.contiguous(memory_format=torch.channels_last)}
    times = {k: [] for k in models}
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            for k in models:
                sync()
                t = time.perf_counter()
                models[k](inputs[k])
                sync()
                if i >= a.warmup:
                    times[k].append((time.perf_counter() - t) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = min(med, key=med.get)
    print(json.dumps({
        "model": a.model, "batch": a.batch, "dtype": a.dtype, "threads": a.threads,
        "device": a.device, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "torch": torch.__version__, "timm": timm.__version__,
        "median_ms": med[best], "min_ms": min(times[best]), "format": best,
        "nchw_ms": med["nchw"], "channels_last_ms": med["channels_last"],
    }))


if __name__ == "__main__":
    main()
