"""``dualdepth bench infer``: inference latency and throughput per backend, at batch 1.

For each input size (default: the model's and 640×192) and each configuration that can run
here, it times ``Backend.infer`` on one random frame — the whole call, host → device → host
copies included — and reports the median (p50) and 95th-percentile (p95) latency and the
throughput (frames/s = 1 / mean latency). The configurations::

    onnxruntime cpu fp32        ONNX Runtime, CPU provider (full graph optimisation)
    torch cpu fp32 eager        PyTorch eager on the CPU
    tensorrt fp32 / fp16        TensorRT engines (built on first use, not timed)
    onnxruntime cuda fp32       ONNX Runtime, CUDA provider
    torch cuda fp32 eager       PyTorch eager on CUDA
    torch cuda fp16 compiled    PyTorch fp16, torch.compile with CUDA graphs

A configuration that cannot start here is listed with the reason. Runs are interleaved
(A, B, C, A, B, C …) so that the load of a shared machine affects every configuration alike,
and the ratios are taken between configurations of the same run:

* ``onnxruntime cpu fp32`` vs ``torch cpu fp32 eager`` (goal: ONNX Runtime ≥ 1.2× faster);
* on a GPU, the fp16 path (TensorRT fp16, or PyTorch compiled fp16 where TensorRT is absent)
  vs ``torch cuda fp32 eager`` (goal: ≥ 4×).

A size other than the model folder's is exported to a temporary folder first: from
``--checkpoint`` when given, else from the folder's ``weights.pt`` (the same weights;
:func:`dualdepth_ros.inference.export.export_resized`).

Example::

    nice dualdepth bench infer --model models/dualdepth_default --threads 1
    dualdepth bench infer --model DIR --backend onnxruntime tensorrt --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DualDepthError

#: name → (backend, open_backend keyword arguments), in the order they are timed.
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "onnxruntime cpu fp32": ("onnxruntime", {"device": "cpu"}),
    "torch cpu fp32 eager": ("torch", {"device": "cpu"}),
    "tensorrt fp32": ("tensorrt", {"precision": "fp32"}),
    "tensorrt fp16": ("tensorrt", {"precision": "fp16"}),
    "onnxruntime cuda fp32": ("onnxruntime", {"device": "cuda"}),
    "torch cuda fp32 eager": ("torch", {"device": "cuda", "compile": False}),
    "torch cuda fp16 compiled": ("torch", {"device": "cuda", "precision": "fp16", "compile": True}),
}
#: (name, faster, baseline, goal): ratio = baseline p50 / faster p50; the first ``faster`` present is used.
RATIOS = (
    ("onnxruntime vs torch eager, CPU", ("onnxruntime cpu fp32",), "torch cpu fp32 eager", 1.2),
    ("fp16 vs torch fp32 eager, GPU", ("tensorrt fp16", "torch cuda fp16 compiled"), "torch cuda fp32 eager", 4.0),
)
DEFAULT_SIZES = ("model", "640x192")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="models/dualdepth_default", help="model folder (model.onnx + model.json)")
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=("onnxruntime", "torch", "tensorrt"),
        default=["onnxruntime", "torch", "tensorrt"],
        help="backends to time (default: all that run here)",
    )
    parser.add_argument(
        "--sizes", nargs="+", default=list(DEFAULT_SIZES), help="WIDTHxHEIGHT or 'model' (default: model 640x192)"
    )
    parser.add_argument("--checkpoint", help="checkpoint to export other sizes from (default: the folder's weights.pt)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per configuration and size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for ONNX Runtime and torch (0: default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _parse_size(text: str, model: tuple[int, int]) -> tuple[int, int]:
    if text == "model":
        return model
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DualDepthError(f"--sizes: {text!r} is not WIDTHxHEIGHT or 'model'") from None
    if w < 1 or h < 1:
        raise DualDepthError(f"--sizes: {text!r} must be positive")
    return w, h


def machine() -> dict[str, Any]:
    """CPU model, cores, Python and the versions of the runtimes present (None when absent)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    for name in ("onnxruntime", "torch", "tensorrt"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken: not available
            info[name] = None
    return info


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _model_for_size(
    model_dir: Path, size: tuple[int, int], checkpoint: Any | None, tmp: Path, log: Callable[[str], None]
) -> Path:
    """The model folder for ``size``: ``model_dir`` itself, or an export at that size to ``tmp``.

    ``checkpoint`` is the :class:`~dualdepth_ros.training.checkpoint.LoadedModel` of ``--checkpoint``
    (already read), or None to export from the folder's ``weights.pt``.
    """
    from ..inference import load_metadata

    md = load_metadata(model_dir)
    if (md.input_width, md.input_height) == size:
        return model_dir
    out = tmp / f"{size[0]}x{size[1]}"
    w, h = size
    if checkpoint:
        from ..inference.export import export_model

        export_model(checkpoint, out, width=w, height=h, per_branch=md.per_branch, precision=md.precision, log=log)
    elif (model_dir / "weights.pt").is_file():
        from ..inference.export import export_resized

        export_resized(model_dir, out, width=w, height=h, log=log)
    else:
        raise DualDepthError(
            f"{model_dir} is {md.input_width}x{md.input_height} and has no weights.pt to export {w}x{h} from; "
            "give --checkpoint"
        )
    return out


def time_configs(
    backends: dict[str, Any], x: np.ndarray, repeats: int, warmup: int, sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """Seconds per ``infer(x)`` of each backend, interleaved (module docstring); warm-up runs dropped."""
    runs: dict[str, list[float]] = {name: [] for name in backends}
    for i in range(warmup + repeats):
        for name, backend in backends.items():
            t0 = time.perf_counter()
            backend.infer(x)
            sync()
            dt = time.perf_counter() - t0
            if i >= warmup:
                runs[name].append(dt)
    return runs


def summarise(seconds: list[float]) -> dict[str, float]:
    """``p50_ms``, ``p95_ms``, ``mean_ms``, ``fps`` (1 / mean) and ``runs`` of a list of latencies (s)."""
    a = np.asarray(seconds, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(a, 50)) * 1e3, 3),
        "p95_ms": round(float(np.percentile(a, 95)) * 1e3, 3),
        "mean_ms": round(float(a.mean()) * 1e3, 3),
        "fps": round(float(1.0 / a.mean()), 2),
        "runs": len(seconds),
    }


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The goal ratios of :data:`RATIOS` among the configurations that ran (baseline p50 / faster p50)."""
    out = {}
    for name, candidates, baseline, goal in RATIOS:
        base = results.get(baseline, {})
        fast = next((c for c in candidates if "p50_ms" in results.get(c, {})), None)
        if "p50_ms" not in base or fast is None:
            continue
        r = base["p50_ms"] / results[fast]["p50_ms"]
        out[name] = {"faster": fast, "baseline": baseline, "ratio": round(r, 3), "goal": goal, "met": r >= goal}
    return out


def run(args: argparse.Namespace) -> int:
    from ..inference import ModelError, load_metadata, open_backend

    if args.repeats < 2 or args.warmup < 0 or args.threads < 0:
        raise DualDepthError("--repeats must be ≥ 2, --warmup and --threads ≥ 0")
    model_dir = Path(args.model)
    md = load_metadata(model_dir)
    sizes = list(dict.fromkeys(_parse_size(s, (md.input_width, md.input_height)) for s in args.sizes))
    checkpoint = None
    if args.checkpoint:  # read it (weights only: no code in it runs) before anything is timed or exported
        from ..training.checkpoint import model_from_checkpoint

        checkpoint = model_from_checkpoint(args.checkpoint)
    names = [n for n, (b, _) in CONFIGS.items() if b in args.backend]
    threads = args.threads or None
    lines: list[str] = []
    log = lines.append if args.json else (lambda line: print(line, flush=True))
    report: dict[str, Any] = {
        "model": str(model_dir),
        "batch": 1,
        "threads": args.threads or "default",
        "timing": (
            f"{args.repeats} interleaved runs per configuration after {args.warmup} warm-up; "
            "Backend.infer end to end (host→device→host included); fps = 1 / mean latency"
        ),
        "machine": machine(),
        "load_average_before": _load(),
        "sizes": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="dualdepth-bench-infer-"))
    try:
        for size in sizes:
            label = f"{size[0]}x{size[1]}"
            folder = _model_for_size(model_dir, size, checkpoint, tmp, log)
            backends: dict[str, Any] = {}
            entry: dict[str, Any] = {}
            for name in names:
                backend_name, kwargs = CONFIGS[name]
                kwargs = dict(kwargs)
                if backend_name != "tensorrt":
                    kwargs["threads"] = threads
                try:
                    backends[name] = open_backend(folder, backend_name, **kwargs)
                except ModelError as err:
                    entry[name] = {"skipped": str(err)}
            sync = _cuda_sync() if any(b.device == "cuda" for b in backends.values()) else (lambda: None)
            x = np.random.default_rng(0).random((1, 3, size[1], size[0]), dtype=np.float32)
            runs = time_configs(backends, x, args.repeats, args.warmup, sync)
            for name, backend in backends.items():
                entry[name] = {**summarise(runs[name]), "precision": backend.precision, "device": backend.device}
                backend.close()
            entry = {n: entry[n] for n in names if n in entry}
            report["sizes"][label] = {"configs": entry, "ratios": ratios(entry)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["load_average_after"] = _load()
    gpu = _gpu_name()
    if gpu:
        report["machine"]["gpu"] = gpu
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print(report)
    return 0


def _cuda_sync() -> Callable[[], None]:
    """torch.cuda.synchronize when torch is present (every backend's infer already waits for its own results)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.synchronize
    except Exception:  # noqa: BLE001
        pass
    return lambda: None


def _gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001
        pass
    return None


def _print(report: dict[str, Any]) -> None:
    m = report["machine"]
    versions = ", ".join(f"{k} {m[k] or 'absent'}" for k in ("onnxruntime", "torch", "tensorrt"))
    print(f"inference, batch 1, {report['model']}; threads {report['threads']}")
    print(f"({report['timing']})")
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    print(f"machine: {m['cpu']}, {m['cores']} cores{gpu}; {versions}")
    print(f"load average before {report['load_average_before']}, after {report['load_average_after']}")
    print(f"{'size':>8}  {'configuration':<26} {'p50 ms':>9} {'p95 ms':>9} {'frames/s':>9}")
    for label, entry in report["sizes"].items():
        for name, r in entry["configs"].items():
            if "skipped" in r:
                why = re.sub(r"^backend '\w+' cannot run here \(device \w+\): (\w+ \w+: )?", "", r["skipped"])
                print(f"{label:>8}  {name:<26} not run: {why[:120]}")
            else:
                print(f"{label:>8}  {name:<26} {r['p50_ms']:>9.2f} {r['p95_ms']:>9.2f} {r['fps']:>9.1f}")
        for name, r in entry["ratios"].items():
            verdict = "met" if r["met"] else "NOT met"
            print(
                f"{label:>8}  {name}: {r['faster']} is {r['ratio']:.2f}× {r['baseline']} "
                f"(goal ≥ {r['goal']}×: {verdict})"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dualdepth bench infer", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
