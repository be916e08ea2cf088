#!/usr/bin/env python3
"""ONNX Runtime and OpenVINO timing of ConvNeXt forwards, the same shapes as `convnext-explorer bench`.

  bench_runtimes.py --export-only --model M --batch B
      exports timm's model (random weights, seed 0, as scripts/bench_pytorch.py builds it) with
      timm's ONNX export (timm.utils.onnx.onnx_export: the TorchScript exporter, opset 17, the
      ONNX checker run) to target/onnx/<model>_b<batch>.onnx, once; beside it <...>.ref.npz keeps
      an input and PyTorch's f32 output for it. Nothing is timed; PyTorch's chatter goes to stderr.
  bench_runtimes.py --runtime onnxruntime|openvino --model M --batch B --dtype f32|bf16 ...
      loads that export (exporting it first if it is missing), runs the kept input and compares
      the output with PyTorch's (fails loudly past the tolerance; --print-check prints the max abs
      diff to stderr), then times ITERS forwards after WARMUP and prints one JSON object:
      {"model", "batch", "dtype", "threads", "runtime", "<runtime>" (version), "median_ms",
       "min_ms", "max_abs_diff", "precision" (OpenVINO: the precision it compiled for)}.

The timing processes import numpy and the runtime only (no torch in the process).
ONNX Runtime: CPUExecutionProvider, intra-op threads = --threads, inter-op 1, sequential,
all graph optimisations, the batch dimension pinned to --batch.
OpenVINO: CPU, INFERENCE_NUM_THREADS = --threads, INFERENCE_PRECISION_HINT f32|bf16,
PERFORMANCE_HINT LATENCY, the model reshaped to the static input shape.
bf16 is OpenVINO's only: ONNX Runtime's CPU execution provider has no bf16 kernels for Conv,
Gemm/MatMul or LayerNormalization (only ARM's MLAS bf16 fast-math GEMM option, not on x86), so a
bf16 ONNX graph would either not load or run through cast nodes around f32 kernels: nothing
worth timing. `--runtime onnxruntime --dtype bf16` is refused (exit 2); bench_vs_pytorch.sh
prints n/a there.
Run by scripts/bench_vs_pytorch.sh, which interleaves it with ours and PyTorch's and prints ratios.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OPSET = 17
# f32: every runtime's output must match PyTorch's within this (max abs diff on the logits).
F32_TOL = 1e-3
# bf16 (OpenVINO): bf16 keeps 8 mantissa bits, so a few per cent of the logits' scale; past 10 %
# of max |logit| the export (or the precision) is broken rather than rounded.
BF16_REL_TOL = 0.1


def paths(cache, model, batch):
    stem = Path(cache) / f"{model}_b{batch}"
    return stem.with_suffix(".onnx"), Path(f"{stem}.ref.npz")


def export(a):
    """Export once (atomically: a half-written file is never taken for an export)."""
    onnx_path, ref_path = paths(a.cache, a.model, a.batch)
    if onnx_path.exists() and ref_path.exists():
        return onnx_path, ref_path
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    # torch, timm and the exporter print progress and deprecation notes on stdout: keep stdout
    # for the JSON line.
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        import timm
        import torch
        from timm.utils.onnx import onnx_export

        torch.manual_seed(0)
        model = timm.create_model(a.model, pretrained=False).eval()
        x = torch.randn(a.batch, 3, a.size, a.size)
        with torch.inference_mode():
            y = model(x).float().numpy()
        tmp = onnx_path.with_name(onnx_path.name + ".tmp")
        t = time.perf_counter()
        # timm's own export: TorchScript exporter (timm's default, use_dynamo=False), dynamic batch
        # axis (both runtimes pin it to --batch below), onnx.checker run on the result.
        onnx_export(model, str(tmp), example_input=x, opset=OPSET, check=True,
                    input_names=["input"], output_names=["logits"])
        sys.stdout.flush()
        tmp_ref = ref_path.with_name(ref_path.name + ".tmp.npz")
        np.savez(tmp_ref, x=x.numpy(), y=y, torch=torch.__version__, timm=timm.__version__)
        os.replace(tmp, onnx_path)
        os.replace(tmp_ref, ref_path)
        print(f"exported {onnx_path} (torch {torch.__version__}, timm {timm.__version__}, "
              f"opset {OPSET}) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    return onnx_path, ref_path


def onnxruntime_runner(onnx_path, a):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_free_dimension_override_by_name("batch", a.batch)
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return (lambda x: sess.run(None, {name: x})[0]), {"onnxruntime": ort.__version__,
                                                      "providers": sess.get_providers()}


def openvino_runner(onnx_path, a):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    model.reshape([a.batch, 3, a.size, a.size])
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": a.threads,
        "INFERENCE_PRECISION_HINT": a.dtype,
        "PERFORMANCE_HINT": "LATENCY",
    })
    req = compiled.create_infer_request()

    def run(x):
        req.infer({0: x})
        return req.get_output_tensor(0).data

    # The precision it compiled for: a CPU without bf16 support falls back to f32 silently.
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    precision = precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)
    return run, {"openvino": ov.get_version(), "precision": precision,
                 "cpu_capabilities": core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", choices=["onnxruntime", "openvino"])
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--model", required=True, help="timm name, e.g. convnext_tiny")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cache", default=str(ROOT / "target" / "onnx"))
    ap.add_argument("--print-check", action="store_true",
                    help="print the max abs diff against PyTorch's output to stderr")
    a = ap.parse_args()
    if a.export_only:
        export(a)
        return
    if a.runtime is None:
        ap.error("--runtime is required unless --export-only")
    if a.runtime == "onnxruntime" and a.dtype == "bf16":
        print("onnxruntime: no bf16 CPU path worth timing (see this script's docstring)",
              file=sys.stderr)
        sys.exit(2)
    onnx_path, ref_path = export(a)
    ref = np.load(ref_path)
    x, y_ref = ref["x"], ref["y"]
    if x.shape != (a.batch, 3, a.size, a.size):
        sys.exit(f"{ref_path} holds an input of shape {x.shape}, not "
                 f"{(a.batch, 3, a.size, a.size)}: remove it and {onnx_path} to re-export")

    run, info = (onnxruntime_runner if a.runtime == "onnxruntime" else openvino_runner)(onnx_path, a)

    y = np.asarray(run(x), dtype=np.float32)
    diff = float(np.max(np.abs(y - y_ref)))
    scale = float(np.max(np.abs(y_ref)))
    tol = F32_TOL if a.dtype == "f32" else BF16_REL_TOL * scale
    if a.print_check or diff > tol or not np.isfinite(diff):
        print(f"{a.runtime} {a.model} b{a.batch} {a.dtype}: max abs diff vs PyTorch f32 "
              f"{diff:.2e} (max |logit| {scale:.2f}, tolerance {tol:.2e})", file=sys.stderr)
    if not diff <= tol:
        sys.exit(f"{a.runtime} output differs from PyTorch's past the tolerance: not timing a "
                 f"broken export ({onnx_path})")

    for _ in range(a.warmup):
        run(x)
    times = []
    for _ in range(a.iters):
        t = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({
        "model": a.model, "batch": a.batch, "dtype": a.dtype, "threads": a.threads,
        "runtime": a.runtime, **info, "opset": OPSET,
        "exported_with": {"torch": str(ref["torch"]), "timm": str(ref["timm"])},
        "median_ms": statistics.median(times), "min_ms": min(times), "max_abs_diff": diff,
    }))


if __name__ == "__main__":
    main()
