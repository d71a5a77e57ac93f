"""A GPU run in one command: CUDA tests, inference and training figures, a training run, pack, export, score.

``scripts/gpu_run.sh --out DIR`` (``make gpu-run``) runs the stages of :data:`STAGES` in order, each in
its own process with a deadline, within ``--minutes`` (default 9) in all, and writes into ``DIR``:

* ``summary.json``: every stage with its status (``ok``, ``failed``, ``timeout``, ``skipped``), its
  seconds, its deadline, the error when it failed, and every figure it measured;
* ``gpu_run.log``: everything the stages printed;
* ``model.pt``: the model the training run produced, packed (split into ``model.pt.part-NN`` files of
  at most :data:`PART_BYTES` when larger; ``cat model.pt.part-* > model.pt``).

The stages:

``environment``
    GPU name, driver, CUDA, cuDNN, torch, onnxruntime (and its providers), Python, CPU.
``cuda_tests``
    The tests of ``test/`` that skip without a GPU (:func:`is_gpu_test`: a ``skipif`` whose reason
    says it needs a CUDA device or a GPU, or a real-TensorRT fixture), with pytest.
``inference``
    Batch-1 latency (p50/p95) at the default model's size and at 640×192, every row beside PyTorch
    fp32 eager in the same interleaved run: the rows of ``dualdepth bench infer``
    (:mod:`dualdepth_ros.bench.infer`: ONNX Runtime, PyTorch eager, PyTorch fp16 compiled with CUDA
    graphs, TensorRT where present) and the ones it lacks (:class:`NetRunner`): fp16 and bf16
    autocast, ``torch.compile`` alone, and CUDA graphs alone (fp32 and bf16).
``train_bench``
    Clips/s of the full method and of the monodepth2 baseline at 640×192, batch 12, bf16 autocast and
    channels_last (the trainer's CUDA defaults), with the peak GPU memory and the memory per clip that
    the trainer measured (:mod:`dualdepth_ros.bench.train`).
``train``
    The default recipe (the configs the gpu cache was made with: ``config/train.yaml`` +
    ``config/default_model.yaml``) on the cache's training drives, for the time that is left; at its
    deadline the run is stopped with SIGINT, which saves its checkpoint.
``pack_export``
    ``dualdepth pack`` and ``dualdepth export`` of that checkpoint; the packed model is copied to ``DIR``.
``score``
    ``dualdepth eval`` of the new model and of the shipped one on the cache's scoring drives.

With ``--device cpu --smoke`` every stage runs with tiny sizes (:data:`SMOKE`) in well under a minute,
and the run checks that its summary is complete (:func:`check_summary`); ``test/test_gpu_run.py`` does
that in ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "test" / "data" / "sample_drive"
SHIPPED_CHECKPOINT = REPO / "models" / "dualdepth_default.pt"
SHIPPED_MODEL = REPO / "models" / "dualdepth_default"
DEFAULT_CACHE = REPO / "runs" / "gpu_cache"
#: Files brought back from a device machine are at most 16 MiB each: larger ones are split.
PART_BYTES = 15 * 2**20
SUMMARY = "summary.json"
LOG = "gpu_run.log"
FORMAT = "dualdepth-gpu-run"
STATUSES = ("ok", "failed", "timeout", "skipped")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the run.

    Attributes
    ----------
    budget_s : its time box in seconds (full run, smoke run); None = what is left.
    min_s : the least time worth starting it with (full, smoke).
    keys : what its result must hold (:func:`check_summary`).
    """

    name: str
    budget_s: tuple[float | None, float | None]
    min_s: tuple[float, float]
    keys: tuple[str, ...]
    what: str

    def budget(self, smoke: bool) -> float | None:
        return self.budget_s[1 if smoke else 0]

    def least(self, smoke: bool) -> float:
        return self.min_s[1 if smoke else 0]


STAGES: tuple[Stage, ...] = (
    Stage(
        "environment",
        (30, 20),
        (10, 5),
        ("device", "gpu", "driver", "cuda", "torch", "onnxruntime", "python", "cpu"),
        "versions",
    ),
    Stage(
        "cuda_tests", (120, 45), (30, 10), ("selected", "passed", "failed", "skipped", "errors", "tests"), "CUDA tests"
    ),
    Stage("inference", (180, 40), (30, 10), ("sizes", "machine", "timing"), "inference latency, batch 1"),
    Stage("train_bench", (90, 40), (30, 10), ("results", "ratio"), "training throughput and memory"),
    Stage(
        "train", (None, None), (60, 10), ("steps", "total_steps", "seconds", "stopped", "checkpoint"), "training run"
    ),
    Stage("pack_export", (75, 40), (30, 10), ("packed", "packed_bytes", "exported", "out_files"), "pack and export"),
    Stage("score", (45, 30), (20, 5), ("drives",), "score on the scoring drives"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)

#: What ``--smoke`` replaces with tiny sizes (recorded in the summary).
SMOKE = {
    "inference": "the model's size only (no 640x192 export), 3 timed runs after 1 warm-up; no torch.compile",
    "train_bench": "96x32, batch 2, 1 timed step after 2 warm-up (not 640x192, batch 12, 6 steps)",
    "train": "2 steps of batch 2, validation on 4 clips (not the recipe's steps for the time left, 64 clips)",
    "cuda_tests": "the same selection; without CUDA every selected test skips",
    "score": "the first 8 frames of each scoring drive",
}
FULL = {
    "inference_sizes": ("640x192", "model"),
    "inference_repeats": 50,
    "inference_warmup": 5,
    "bench_size": (640, 192),
    "bench_batch": 12,
    "bench_steps": 6,
}
SMOKE_SIZES = {
    "inference_sizes": ("model",),
    "inference_repeats": 3,
    "inference_warmup": 1,
    "bench_size": (96, 32),
    "bench_batch": 2,
    "bench_steps": 1,
}


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _one_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _python_env() -> dict[str, str]:
    """The environment for child processes: this package importable, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Deadline:
    """Seconds left until a ``time.time()`` deadline."""

    def __init__(self, at: float) -> None:
        self.at = float(at)

    def left(self) -> float:
        return self.at - time.time()


class _Tee(io.TextIOBase):
    """Writes to a stream and keeps a copy (the last lines of a command's output, for its error line)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buf = io.StringIO()

    def write(self, text: str) -> int:
        self.stream.write(text)
        return self.buf.write(text)

    def flush(self) -> None:
        self.stream.flush()


def _run_cli(argv: list[str], log: Callable[[str], None]) -> tuple[int, str]:
    """``dualdepth ARGV`` in this process (its output to the log); returns the exit code and its last stderr line.

    The stage's deadline is kept by the process running it (the orchestrator stops the stage).
    """
    from ..cli import main

    log("$ dualdepth " + " ".join(argv))
    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = int(main(argv) or 0)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    lines = err.buf.getvalue().strip().splitlines()
    return code, (lines[-1] if lines else "")[:300]


# ---------------------------------------------------------------------------------------
# Stage: environment
# ---------------------------------------------------------------------------------------
def _nvidia_smi() -> dict[str, Any]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"error": _one_line(err)}
    if out.returncode != 0:
        return {"error": (out.stderr.strip() or f"exit {out.returncode}")[:200]}
    first = out.stdout.strip().splitlines()[0].split(", ")
    keys = ("name", "driver", "memory_total", "power_limit")
    return dict(zip(keys, (v.strip() for v in first)))


def stage_environment(plan: dict[str, Any], deadline: Deadline, log: Callable[[str], None]) -> dict[str, Any]:
    """GPU, driver and library versions (``environment``)."""
    import numpy as np
    import torch

    from .infer import machine

    info = machine()
    result: dict[str, Any] = {
        "device": plan["device"],
        "cpu": info["cpu"],
        "cores": info["cores"],
        "python": info["python"],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "onnxruntime": info["onnxruntime"],
        "tensorrt": info["tensorrt"],
        "gpu": None,
        "driver": None,
    }
    from importlib import metadata

    for name, dist in (("onnx", "onnx"), ("onnxscript", "onnxscript"), ("cv2", None), ("rosbags", "rosbags")):
        try:
            module = __import__(name)
            result[name] = metadata.version(dist) if dist else module.__version__
        except Exception as err:  # noqa: BLE001 - absent or broken: say so
            result[name] = f"absent ({_one_line(err)})"
    try:
        import onnxruntime

        result["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception as err:  # noqa: BLE001
        result["onnxruntime_providers"] = f"unavailable ({_one_line(err)})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        result.update(
            gpu=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 2),
            multiprocessors=props.multi_processor_count,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
        smi = _nvidia_smi()
        result["nvidia_smi"] = smi
        result["driver"] = smi.get("driver")
    elif plan["device"] == "cuda":
        raise RuntimeError(f"PyTorch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda})")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, timeout=10)
        result["commit"] = commit.stdout.strip() if commit.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        result["commit"] = None
    from ..data.gpu_cache import read_manifest

    manifest = read_manifest(plan["cache"])
    result["gpu_cache"] = {
        "path": plan["cache"],
        "input": manifest["input"],
        "bytes": manifest.get("bytes"),
        "drives": {role: [d["name"] for d in manifest["drives"][role]] for role in ("train", "score")},
    }
    log(
        f"device {result['device']}: GPU {result['gpu']}, driver {result['driver']}, CUDA {result['cuda']}, "
        f"torch {result['torch']}, onnxruntime {result['onnxruntime']}"
    )
    return result


# ---------------------------------------------------------------------------------------
# Stage: CUDA tests
# ---------------------------------------------------------------------------------------
#: A ``skipif`` reason that means "runs only with a GPU" ("needs a machine without CUDA" does not match).
GPU_REASON = re.compile(r"needs an? (CUDA|GPU)\b|CUDA device")
#: Test files that may hold GPU tests (only these are collected: the others need ROS, which a GPU box lacks).
GPU_FILE_HINT = re.compile(r"needs an? (CUDA|GPU)\b|CUDA device|def real_\w+\(")


def is_gpu_test(item: Any) -> bool:
    """Whether a collected pytest item runs only with a GPU (and skips everywhere else).

    True when one of its ``skipif`` marks gives a reason that says it needs a CUDA device or a GPU,
    or when it uses a ``real_*`` fixture (the real-TensorRT fixtures, which skip without TensorRT and CUDA).
    """
    for mark in item.iter_markers("skipif"):
        if GPU_REASON.search(str(mark.kwargs.get("reason", ""))):
            return True
    return any(name.startswith("real_") for name in getattr(item, "fixturenames", ()))


def gpu_test_files(test_dir: Path = REPO / "test") -> list[Path]:
    """The test files that mention CUDA, a GPU or the real-TensorRT fixtures."""
    return sorted(p for p in test_dir.glob("test_*.py") if GPU_FILE_HINT.search(p.read_text(errors="replace")))


class _Selector:
    """pytest plugin: keep only the GPU tests (:func:`is_gpu_test`)."""

    def __init__(self) -> None:
        self.selected: list[str] = []

    def pytest_collection_modifyitems(self, session: Any, config: Any, items: list[Any]) -> None:
        keep = [i for i in items if is_gpu_test(i)]
        drop = [i for i in items if not is_gpu_test(i)]
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep
        self.selected = [i.nodeid for i in keep]


def _junit(path: Path) -> list[dict[str, Any]]:
    import xml.etree.ElementTree as ET

    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (
                    (el.get("message") or el.text or "").strip().splitlines()[0][:300]
                    if (el.get("message") or el.text)
                    else ""
                )
                break
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        tests.append({"test": name, "outcome": outcome, "seconds": float(case.get("time", 0)), "message": message})
    return tests


def stage_cuda_tests(plan: dict[str, Any], deadline: Deadline, log: Callable[[str], None]) -> dict[str, Any]:
    """The GPU-only tests of ``test/`` (``cuda_tests``)."""
    import pytest

    files = gpu_test_files()
    xml = Path(plan["work"]) / "cuda_tests.xml"
    selector = _Selector()
    args = ["-q", "-rA", "-p", "no:cacheprovider", f"--junitxml={xml}", *map(str, files)]
    log("$ pytest " + " ".join(args))
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        code = int(pytest.main(args, plugins=[selector]))
    finally:
        os.chdir(cwd)
    tests = _junit(xml) if xml.exists() else []
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped", "error")}
    result = {
        "files": [str(f.relative_to(REPO)) for f in files],
        "selected": selector.selected,
        "passed": counts["passed"],
        "failed": counts["failed"],
        "skipped": counts["skipped"],
        "errors": counts["error"],
        "exit_code": code,
        "tests": tests,
    }
    if not selector.selected:
        raise RuntimeError(f"no GPU test was selected in {len(files)} files: the selection rule (is_gpu_test) is stale")
    if counts["failed"] or counts["error"] or code not in (0, 5):
        raise StageError(
            f"{counts['failed']} failed, {counts['error']} errors of {len(selector.selected)} GPU tests", result
        )
    return result


class StageError(RuntimeError):
    """A stage that measured something and failed: its partial result is kept."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------------------------------
# Stage: inference
# ---------------------------------------------------------------------------------------
class NetRunner:
    """The exported depth net (``weights.pt``) run by PyTorch in a way the torch backend does not offer.

    ``infer(x)`` is timed like :meth:`Backend.infer <dualdepth_ros.inference.Backend.infer>`: a
    ``1×3×H×W`` float32 array in, host → device → host, the outputs as float32 arrays.

    Parameters
    ----------
    folder : a model folder with ``weights.pt``.
    device : ``"cpu"`` or ``"cuda"``.
    autocast : None (fp32), ``"fp16"`` or ``"bf16"``: ``torch.autocast`` around the net (fp32 weights).
    mode : ``"eager"``; ``"compiled"`` (``torch.compile``, default mode: no CUDA graphs); ``"graph"``
        (the eager kernels captured once in a CUDA graph and replayed).
    """

    def __init__(self, folder: Path, device: str, autocast: str | None = None, mode: str = "eager") -> None:
        import numpy as np
        import torch

        from ..inference import load_metadata
        from ..inference.metadata import WEIGHTS_FILE
        from ..inference.weights import load_weights
        from ..networks import ExportModule

        if mode == "graph" and device != "cuda":
            raise RuntimeError("CUDA graphs need CUDA")
        md = load_metadata(folder)
        net, _ = load_weights(Path(folder) / WEIGHTS_FILE)
        self.device = device
        self.precision = autocast or "fp32"
        self._torch = torch
        self._dev = torch.device(device)
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, None: None}[autocast]
        self._module = ExportModule(net.to(self._dev), per_branch=False, precision="fp32").eval()
        self._fn: Any = torch.compile(self._module, fullgraph=True) if mode == "compiled" else self._module
        self._graph = None
        self._graph_mode = mode == "graph"
        x0 = np.zeros(md.input_shape, np.float32)
        if mode == "graph":
            self._static_in = torch.zeros(md.input_shape, device=self._dev)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(3):  # warm-up outside the graph (cuDNN picks its kernels)
                    self._forward(self._static_in)
            torch.cuda.current_stream().wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph), torch.no_grad():
                self._static_out = self._forward(self._static_in)
        else:
            self.infer(x0)  # compile (or load the kernels) now, not in the timed runs
            self.infer(x0)

    def _forward(self, x: Any) -> Any:
        torch = self._torch
        # Autocast's weight cache must be off while a CUDA graph is captured (PyTorch's CUDA graphs notes).
        with torch.autocast(
            self._dev.type,
            dtype=self._dtype or torch.float32,
            enabled=bool(self._dtype),
            cache_enabled=self._graph_mode is False,
        ):
            return self._fn(x)

    def infer(self, x: Any) -> list[Any]:
        torch = self._torch
        with torch.no_grad():
            if self._graph is not None:
                self._static_in.copy_(torch.from_numpy(x))
                self._graph.replay()
                outs = self._static_out
            else:
                outs = self._forward(torch.from_numpy(x).to(self._dev))
            return [o.float().cpu().numpy() for o in outs]

    def close(self) -> None:
        self._graph = self._fn = self._module = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()


#: Rows :class:`NetRunner` adds to the torch backend's: name (``{device}`` filled in) → (autocast, mode).
EXTRA_ROWS: dict[str, tuple[str | None, str]] = {
    "torch {device} fp16 autocast eager": ("fp16", "eager"),
    "torch {device} bf16 autocast eager": ("bf16", "eager"),
    "torch {device} fp32 compiled (no CUDA graphs)": (None, "compiled"),
    "torch {device} fp32 CUDA graph (eager kernels)": (None, "graph"),
    "torch {device} bf16 autocast CUDA graph": ("bf16", "graph"),
}
#: Seconds of the stage that must be left to start a ``torch.compile`` row.
COMPILE_MIN_S = 45.0


def _model_folder() -> tuple[Path, Any]:
    """The shipped model folder (derived from ``models/dualdepth_default.pt`` at first use) and that checkpoint."""
    from ..inference import load_metadata
    from ..training.checkpoint import model_from_checkpoint

    load_metadata(SHIPPED_MODEL)  # derives the folder when only the checkpoint is here (inference/derive.py)
    checkpoint = model_from_checkpoint(str(SHIPPED_CHECKPOINT)) if SHIPPED_CHECKPOINT.exists() else None
    return SHIPPED_MODEL, checkpoint


def _depth_of(output: Any) -> Any:
    """The fused depth of a backend's :class:`InferenceResult` or of :meth:`NetRunner.infer`'s list."""
    return output.depth if hasattr(output, "depth") else output[0]


def stage_inference(plan: dict[str, Any], deadline: Deadline, log: Callable[[str], None]) -> dict[str, Any]:
    """Batch-1 latency of every configuration at each size, beside PyTorch fp32 eager (``inference``)."""
    import numpy as np

    from ..inference import ModelError, load_metadata, open_backend
    from .infer import CONFIGS, _cuda_sync, _model_for_size, machine, ratios, summarise, time_configs

    sizes_cfg = SMOKE_SIZES if plan["smoke"] else FULL
    device = plan["device"]
    work = Path(plan["work"])
    folder0, checkpoint = _model_folder()
    md = load_metadata(folder0)
    repeats, warmup = sizes_cfg["inference_repeats"], sizes_cfg["inference_warmup"]
    names = [n for n in CONFIGS if device == "cuda" or "cuda" not in n and not n.startswith("tensorrt")]
    baseline = f"torch {device} fp32 eager"
    report: dict[str, Any] = {
        "model": str(folder0.relative_to(REPO) if folder0.is_relative_to(REPO) else folder0),
        "batch": 1,
        "baseline": baseline,
        "timing": (
            f"{repeats} interleaved runs per configuration after {warmup} warm-up; infer() end to end "
            "(host→device→host included); fps = 1 / mean latency; vs_fp32_eager = its p50 / this p50; "
            "depth_rel_diff_p50/p99: |depth - fp32 eager's| / fp32 eager's over the pixels of one frame"
        ),
        "machine": machine(),
        "sizes": {},
    }
    tmp = work / "inference_models"
    tmp.mkdir(parents=True, exist_ok=True)
    for text in sizes_cfg["inference_sizes"]:
        size = (md.input_width, md.input_height) if text == "model" else tuple(int(v) for v in text.split("x"))
        label = f"{size[0]}x{size[1]}"
        folder = _model_for_size(folder0, size, checkpoint, tmp, log)
        runners: dict[str, Any] = {}
        entry: dict[str, Any] = {}
        for name in names:
            backend, kwargs = CONFIGS[name]
            if "compiled" in name and plan["smoke"]:
                entry[name] = {"skipped": "smoke run: torch.compile takes minutes on a CPU"}
                continue
            if "compiled" in name and deadline.left() < COMPILE_MIN_S:
                entry[name] = {"skipped": f"not started: {deadline.left():.0f} s left of the stage"}
                continue
            try:
                runners[name] = open_backend(folder, backend, **kwargs)
            except ModelError as err:
                entry[name] = {"skipped": str(err)}
        for pattern, (autocast, mode) in EXTRA_ROWS.items():
            name = pattern.format(device=device)
            if mode == "graph" and device != "cuda":
                entry[name] = {"skipped": "CUDA graphs need CUDA"}
                continue
            if mode == "compiled" and plan["smoke"]:
                entry[name] = {"skipped": "smoke run: torch.compile takes minutes on a CPU"}
                continue
            if mode == "compiled" and deadline.left() < COMPILE_MIN_S:
                entry[name] = {"skipped": f"not started: {deadline.left():.0f} s left of the stage"}
                continue
            try:
                runners[name] = NetRunner(folder, device, autocast, mode)
            except Exception as err:  # noqa: BLE001 - a configuration that cannot run here is a row that says why
                entry[name] = {"skipped": _one_line(err)}
        sync = _cuda_sync() if device == "cuda" else (lambda: None)
        x = np.random.default_rng(0).random((1, 3, size[1], size[0]), dtype=np.float32)
        runs = time_configs(runners, x, repeats, warmup, sync)
        depths = {name: _depth_of(runner.infer(x)) for name, runner in runners.items()}
        for name, runner in runners.items():
            entry[name] = {**summarise(runs[name]), "precision": runner.precision, "device": runner.device}
            if baseline in depths:  # how far its depth is from fp32 eager's on the same frame (relative)
                rel = np.abs(depths[name] - depths[baseline]) / depths[baseline]
                entry[name]["depth_rel_diff_p50"] = float(np.percentile(rel, 50))
                entry[name]["depth_rel_diff_p99"] = float(np.percentile(rel, 99))
            runner.close()
        base = entry.get(baseline, {}).get("p50_ms")
        for row in entry.values():
            if "p50_ms" in row and base:
                row["vs_fp32_eager"] = round(base / row["p50_ms"], 3)
        report["sizes"][label] = {"configs": entry, "ratios": ratios(entry)}
        for name, row in entry.items():
            if "p50_ms" in row:
                log(
                    f"{label:>8} {name:<48} p50 {row['p50_ms']:8.3f} ms  p95 {row['p95_ms']:8.3f} ms  "
                    f"×{row.get('vs_fp32_eager', float('nan')):.2f} vs fp32 eager"
                )
            else:
                log(f"{label:>8} {name:<48} not run: {row['skipped'][:100]}")
    if device == "cuda":
        from .infer import _gpu_name

        report["machine"]["gpu"] = _gpu_name()
    return report


# ---------------------------------------------------------------------------------------
# Stage: training throughput and memory
# ---------------------------------------------------------------------------------------
def stage_train_bench(plan: dict[str, Any], deadline: Deadline, log: Callable[[str], None]) -> dict[str, Any]:
    """Clips/s and GPU memory of the full method and the monodepth2 baseline (``train_bench``)."""
    import torch

    from .train import CONFIGS, _measure

    sizes_cfg = SMOKE_SIZES if plan["smoke"] else FULL
    w, h = sizes_cfg["bench_size"]
    cuda = plan["device"] == "cuda"
    args = argparse.Namespace(
        batch_size=sizes_cfg["bench_batch"], steps=sizes_cfg["bench_steps"], device=plan["device"], amp=True
    )
    amp_dtype = None
    if cuda:
        amp_dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    results = []
    for name in ("monodepth2", "two-branch"):
        if deadline.left() < 15:
            raise StageError(f"no time left for {name}", {"results": results, "ratio": None})
        r = {"config": name, **_measure(str(SAMPLE), CONFIGS[name], (w, h), args)}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        results.append(r)
        peak = f", peak GPU {r['peak_gpu_mib']:.0f} MiB" if r["peak_gpu_mib"] is not None else ""
        per_clip = f", {r['per_clip_mib']:.0f} MiB per clip" if r.get("per_clip_mib") is not None else ""
        log(
            f"{name:>11} {r['size']} batch {r['batch']} on {r['device']}: "
            f"{r['clips_per_s']:.2f} clips/s{peak}{per_clip}"
        )
    base, full = results
    return {
        "bag": str(SAMPLE.relative_to(REPO)),
        "amp": cuda,
        "amp_dtype": amp_dtype,
        "channels_last": cuda,
        "note": "amp and channels_last are the trainer's CUDA defaults (train.amp, train.channels_last); "
        "per_clip_mib/fixed_mib: the trainer's own trial steps on 1 and 2 clips (GPU: allocator peak; CPU: RSS)",
        "results": results,
        "ratio": {
            "step_time_full_vs_baseline": base["clips_per_s"] / full["clips_per_s"],
            "per_clip_memory_full_vs_baseline": (
                full["per_clip_mib"] / base["per_clip_mib"]
                if base.get("per_clip_mib") and full.get("per_clip_mib")
                else None
            ),
        },
    }


# ---------------------------------------------------------------------------------------
# Stage: the training run
# ---------------------------------------------------------------------------------------
#: Seconds before its deadline at which the training run is asked to stop (SIGINT: it saves its checkpoint).
STOP_GRACE_S = 25.0


def stage_train(plan: dict[str, Any], deadline: Deadline, log: Callable[[str], None]) -> dict[str, Any]:
    """The default recipe on the cache's training drives for the time that is left (``train``)."""
    from ..data.gpu_cache import read_manifest

    manifest = read_manifest(plan["cache"])
    run = Path(plan["work"]) / "train"
    argv = ["train", "--bag", str(Path(plan["cache"]) / "train"), "--out", str(run), "--device", plan["device"]]
    for cfg in manifest["configs"]:
        argv += ["--config", str(cfg if os.path.isabs(cfg) else REPO / cfg)]
    if plan["smoke"]:
        argv += ["--max-steps", "2", "--batch-size", "2", "--set", "train.val_max_clips=4"]
    if plan.get("train_steps"):
        argv += ["--max-steps", str(plan["train_steps"])]
    argv += ["--no-progress"]
    t0 = time.monotonic()
    # At STOP_GRACE_S before the deadline, SIGINT: the trainer stops after its current step and saves its
    # checkpoint (its handler is installed once it trains; before that the run ends without one).
    stop = threading.Timer(max(0.0, deadline.left() - STOP_GRACE_S), os.kill, (os.getpid(), signal.SIGINT))
    stop.daemon = True
    stop.start()
    try:
        try:
            code, why = _run_cli(argv, log)
        finally:
            stop.cancel()
    except KeyboardInterrupt:  # the stop came as the run was ending, after its own handler was gone
        code, why = 128 + signal.SIGINT, "stopped"
    stopped = "deadline: stopped with SIGINT, checkpoint saved" if code == 128 + signal.SIGINT else "finished"
    metrics = run / "metrics.json"  # the trainer's final summary (written also when a signal stopped it)
    summary = json.loads(metrics.read_text()) if metrics.exists() else {}
    ckpt = run / "last.pt"
    result = {
        "command": "dualdepth " + " ".join(argv),
        "exit_code": code,
        "stopped": stopped,
        "steps": summary.get("step"),
        "total_steps": summary.get("total_steps"),
        "seconds": round(time.monotonic() - t0, 1),
        "train_seconds": summary.get("train_seconds"),
        "checkpoint": str(ckpt) if ckpt.exists() else None,
        "last_validation": summary.get("last_validation"),
    }
    if not ckpt.exists():
        raise StageError(f"the training run wrote no checkpoint (exit {code}: {why}); see the log", result)
    log(f"trained {result['steps']}/{result['total_steps']} steps in {result['seconds']} s ({stopped})")
    return result


# ---------------------------------------------------------------------------------------
# Stage: pack, export
# ---------------------------------------------------------------------------------------
def split_file(path: Path, out_dir: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """Copy ``path`` into ``out_dir``: as is when at most ``part_bytes``, else as ``NAME.part-NN`` pieces."""
    size = path.stat().st_size
    if size <= part_bytes:
        dest = out_dir / path.name
        shutil.copyfile(path, dest)
        return [dest]
    parts = []
    with open(path, "rb") as fh:
        for i in range(-(-size // part_bytes)):
            dest = out_dir / f"{path.name}.part-{i:02d}"
            dest.write_bytes(fh.read(part_bytes))
            parts.append(dest)
    return parts


def stage_pack_export(plan: dict[str, Any], deadline: Deadline, log: Callable[[str], None]) -> dict[str, Any]:
    """``dualdepth pack`` and ``export`` of the training run; the packed model to ``--out`` (``pack_export``)."""
    work, out = Path(plan["work"]), Path(plan["out"])
    ckpt = work / "train" / "last.pt"
    if not ckpt.exists():
        raise RuntimeError(f"no checkpoint {ckpt}: the training run failed")
    packed, exported = work / "model.pt", work / "model"
    code, why = _run_cli(["pack", "--checkpoint", str(ckpt), "--out", str(packed)], log)
    if code != 0:
        raise RuntimeError(f"dualdepth pack exited {code}: {why}")
    from ..inference.metadata import file_sha256

    files = split_file(packed, out)
    result: dict[str, Any] = {
        "packed": str(packed),
        "packed_bytes": packed.stat().st_size,
        "sha256": file_sha256(packed),
        "out_files": [f.name for f in files],
        "exported": None,
    }
    if len(files) > 1:
        result["join"] = f"cat {packed.name}.part-* > {packed.name}"
    argv = ["export", "--checkpoint", str(packed), "--out", str(exported), "--per-branch", "--overwrite"]
    code, why = _run_cli(argv, log)
    if code != 0:
        raise StageError(f"dualdepth export exited {code}: {why}", result)
    result["exported"] = str(exported)
    result["onnx_bytes"] = (exported / "model.onnx").stat().st_size
    return result


# ---------------------------------------------------------------------------------------
# Stage: score
# ---------------------------------------------------------------------------------------
def _metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    pose = evaluation.get("pose") or {}
    conf = evaluation.get("confidence") or {}
    return {
        **(evaluation.get("median_scaled") or {}),
        "frames": evaluation.get("n_images"),
        "protocol": (evaluation.get("protocol") or {}).get("name"),
        "pose_ate_m": pose.get("ate_mean"),
        "aurg_ratio_abs_rel": (conf.get("aurg_ratio") or {}).get("abs_rel"),
        "checkpoint_step": evaluation.get("checkpoint_step"),
    }


def stage_score(plan: dict[str, Any], deadline: Deadline, log: Callable[[str], None]) -> dict[str, Any]:
    """``dualdepth eval`` of the new and the shipped model on every scoring drive (``score``)."""
    from ..data.gpu_cache import read_manifest

    work = Path(plan["work"])
    models = {"new": work / "model.pt", "shipped": SHIPPED_CHECKPOINT}
    drives: dict[str, Any] = {}
    for drive in read_manifest(plan["cache"])["drives"]["score"]:
        rows: dict[str, Any] = {}
        for label, ckpt in models.items():
            if not ckpt.exists():
                rows[label] = {"skipped": f"no {ckpt}"}
                continue
            js = work / f"eval_{drive['name']}_{label}.json"
            argv = [
                "eval",
                "--checkpoint",
                str(ckpt),
                "--bag",
                drive["dir"],
                "--json",
                str(js),
                "--device",
                plan["device"],
            ]
            if plan["smoke"]:
                argv += ["--max-frames", "8"]
            code, why = _run_cli(argv, log)
            if code != 0 or not js.exists():
                rows[label] = {"error": why or f"exit {code}"}
                continue
            rows[label] = _metrics(json.loads(js.read_text()))
        if "abs_rel" in rows.get("new", {}) and "abs_rel" in rows.get("shipped", {}):
            rows["abs_rel_new_minus_shipped"] = rows["new"]["abs_rel"] - rows["shipped"]["abs_rel"]
        drives[drive["name"]] = rows
    result = {"drives": drives}
    failed = [f"{d} {m}" for d, rows in drives.items() for m, r in rows.items() if isinstance(r, dict) and "error" in r]
    if failed:
        raise StageError(f"eval failed for {', '.join(failed)}", result)
    return result


STAGE_FUNCTIONS: dict[str, Callable[[dict[str, Any], Deadline, Callable[[str], None]], dict[str, Any]]] = {
    "environment": stage_environment,
    "cuda_tests": stage_cuda_tests,
    "inference": stage_inference,
    "train_bench": stage_train_bench,
    "train": stage_train,
    "pack_export": stage_pack_export,
    "score": stage_score,
}


# ---------------------------------------------------------------------------------------
# One stage (child process)
# ---------------------------------------------------------------------------------------
def run_stage(name: str, plan_path: Path, deadline_at: float) -> int:
    """Run one stage in this process; write ``work/stages/NAME.json`` (status, result, error). Exit 0 when ok."""
    plan = json.loads(plan_path.read_text())
    deadline = Deadline(deadline_at)
    if plan["device"] == "cpu":
        import torch

        torch.set_num_threads(max(1, int(plan.get("threads") or 1)))

    def log(line: str) -> None:
        print(line, flush=True)

    t0 = time.monotonic()
    record: dict[str, Any] = {"name": name}
    try:
        record["result"] = STAGE_FUNCTIONS[name](plan, deadline, log)
        record["status"] = "ok"
    except StageError as err:
        record.update(status="failed", error=str(err), result=err.result)
    except Exception as err:  # noqa: BLE001 - every failure becomes the stage's error line, the run goes on
        import traceback

        traceback.print_exc()
        record.update(status="failed", error=_one_line(err))
    record["seconds"] = round(time.monotonic() - t0, 1)
    _write_json(Path(plan["work"]) / "stages" / f"{name}.json", record)
    return 0 if record["status"] == "ok" else 1


#: Imported once by the fork server that starts the stages (each stage is then a fork of it: no import cost).
#: The fork server never touches CUDA, so each stage starts CUDA itself, as PyTorch requires.
PRELOAD = (
    "numpy",
    "cv2",
    "torch",
    "dualdepth_ros.data",
    "dualdepth_ros.networks",
    "dualdepth_ros.losses",
    "dualdepth_ros.training.trainer",
    "dualdepth_ros.evaluation.cli",
    "dualdepth_ros.inference",
)


def _stage_child(name: str, plan_path: str, deadline_at: float, log_path: str) -> None:
    """Run a stage as a child of the fork server: in its own session, its output appended to the log.

    Its own session lets the orchestrator stop it with everything it started (compiler workers, tests).
    """
    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(REPO)
    code = run_stage(name, Path(plan_path), deadline_at)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


class _StageProcess:
    """One running stage: a fork-server child (default) or a fresh interpreter (``--isolation exec``)."""

    def __init__(self, isolation: str, name: str, plan_path: Path, deadline: float, log_path: Path, logf: Any) -> None:
        if isolation == "exec":
            cmd = [sys.executable, "-m", "dualdepth_ros.bench.gpu_run", "--stage", name, "--plan", str(plan_path)]
            cmd += ["--deadline", f"{deadline:.3f}"]
            self._popen: Any = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, env=_python_env(), cwd=REPO, start_new_session=True
            )
            self.pid = self._popen.pid
            return
        import multiprocessing

        from dualdepth_ros.bench import gpu_run as module  # by its import name, also when this runs as __main__

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))
        self._process = ctx.Process(
            target=module._stage_child, args=(name, str(plan_path), deadline, str(log_path)), name=f"stage-{name}"
        )
        self._popen = None
        self._process.start()
        self.pid = self._process.pid

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None when still running after ``timeout`` seconds."""
        if self._popen is not None:
            try:
                return self._popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        self._process.join(timeout)
        return self._process.exitcode

    def stop(self) -> None:
        """SIGTERM to the stage and everything it started (its session), SIGKILL if it does not end."""
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            if self.wait(wait) is not None:
                break


# ---------------------------------------------------------------------------------------
# The whole run (orchestrator)
# ---------------------------------------------------------------------------------------
def plan_deadline(
    index: int,
    now: float,
    end: float,
    smoke: bool,
    skipped: tuple[str, ...] = (),
    budgets: dict[str, float] | None = None,
    stages: tuple[Stage, ...] = STAGES,
) -> float:
    """When stage ``index`` must end (``time.time()`` seconds): its own budget, and early enough for the later ones.

    Each later stage (not ``skipped``) is left its least time (:attr:`Stage.min_s`) when it comes before
    the training run (the stage without a budget), and its whole budget when it comes after it: the stages
    that turn the training run into a scored model always get their time. The training run gets what is
    left. ``budgets`` (stage name → seconds) replaces stages' own budgets.
    """
    budgets = budgets or {}

    def budget(s: Stage) -> float | None:
        return budgets.get(s.name, s.budget(smoke))

    untimed = [i for i, s in enumerate(stages) if budget(s) is None and s.name not in skipped]
    train_at = untimed[0] if untimed else len(stages)
    reserve = sum(
        (budget(s) or s.least(smoke)) if j > train_at else min(s.least(smoke), budget(s) or s.least(smoke))
        for j, s in enumerate(stages)
        if j > index and s.name not in skipped
    )
    own = budget(stages[index])
    limit = end - reserve
    return min(now + own, limit) if own is not None else limit


def check_summary(summary: dict[str, Any], skipped: tuple[str, ...] = ()) -> list[str]:
    """What is missing from a run's summary: every stage present, with a status, and an ok stage's keys."""
    problems = []
    for key in ("format", "device", "smoke", "started", "finished", "seconds", "budget_s", "status", "stages"):
        if key not in summary:
            problems.append(f"summary: no {key!r}")
    stages = {s.get("name"): s for s in summary.get("stages", [])}
    for stage in STAGES:
        got = stages.get(stage.name)
        if got is None:
            problems.append(f"stage {stage.name}: missing")
            continue
        if got.get("status") not in STATUSES:
            problems.append(f"stage {stage.name}: status {got.get('status')!r}")
        for key in ("seconds", "deadline_s"):
            if key not in got:
                problems.append(f"stage {stage.name}: no {key!r}")
        if got.get("status") in ("failed", "timeout") and not got.get("error"):
            problems.append(f"stage {stage.name}: {got['status']} without an error")
        if got.get("status") == "skipped" and stage.name not in skipped:
            problems.append(f"stage {stage.name}: skipped but not asked to be")
        if got.get("status") == "ok":
            result = got.get("result") or {}
            missing = [k for k in stage.keys if k not in result]
            if missing:
                problems.append(f"stage {stage.name}: result lacks {missing}")
    inference = (stages.get("inference") or {}).get("result") or {}
    for label, size in (inference.get("sizes") or {}).items():
        configs = size.get("configs") or {}
        for pattern in EXTRA_ROWS:
            if pattern.format(device=summary.get("device")) not in configs:
                problems.append(f"inference {label}: no row {pattern.format(device=summary.get('device'))!r}")
        for name, row in configs.items():
            if not ({"p50_ms", "p95_ms"} <= set(row) or "skipped" in row):
                problems.append(f"inference {label} {name}: neither timings nor a reason")
    bench = (stages.get("train_bench") or {}).get("result") or {}
    for row in bench.get("results") or []:
        for key in ("clips_per_s", "peak_gpu_mib", "per_clip_mib", "batch", "size"):
            if key not in row:
                problems.append(f"train_bench {row.get('config')}: no {key!r}")
    return problems


def _tail(path: Path, start: int, lines: int = 8) -> str:
    with open(path, "rb") as fh:
        fh.seek(start)
        text = fh.read().decode(errors="replace")
    return " | ".join(text.strip().splitlines()[-lines:])[-600:]


def orchestrate(args: argparse.Namespace) -> int:
    """Run every stage (module docstring), time-boxed; write ``summary.json`` after each; return 0 when all ok."""
    t_start = time.time()
    budget_s = args.minutes * 60.0
    # The last stage ends by `end`; stopping one that overruns takes at most its grace (5 s) + 3 s + a kill.
    end = t_start + budget_s - 10.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dualdepth-gpu-run-"))
    (work / "stages").mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("model.pt*")) + [out / SUMMARY, out / LOG]:
        old.unlink(missing_ok=True)
    plan = {
        "device": args.device,
        "smoke": bool(args.smoke),
        "cache": str(Path(args.cache).resolve()),
        "work": str(work.resolve()),
        "out": str(out.resolve()),
        "threads": args.threads,
        "train_steps": args.train_steps,
    }
    plan_path = work / "plan.json"
    _write_json(plan_path, plan)
    if args.device == "cpu":  # every child (stages, train, eval): on a small shared CPU more threads thrash
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    skipped = tuple(args.skip or ())
    budgets = dict(args.stage_budget or {})
    summary: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "device": args.device,
        "smoke": bool(args.smoke),
        "smoke_replaces": SMOKE if args.smoke else None,
        "started": _now(),
        "budget_s": budget_s,
        "stage_budgets": budgets,
        "gpu_cache": plan["cache"],
        "work": plan["work"],
        "stages": [],
    }
    log_path = out / LOG
    with open(log_path, "ab") as logf:

        def say(line: str) -> None:
            text = f"[{time.time() - t_start:6.1f} s] {line}"
            print(text, flush=True)
            logf.write((text + "\n").encode())
            logf.flush()

        say(
            f"gpu run: device {args.device}{' (smoke)' if args.smoke else ''}, {args.minutes:g} min, "
            f"out {out}, work {work}"
        )
        for i, stage in enumerate(STAGES):
            now = time.time()
            deadline = plan_deadline(i, now, end, bool(args.smoke), skipped, budgets)
            record: dict[str, Any] = {"name": stage.name, "what": stage.what, "deadline_s": round(deadline - now, 1)}
            env_record = summary["stages"][0] if summary["stages"] else None
            if env_record is not None and env_record["status"] not in ("ok", "skipped") and stage.name != "environment":
                record.update(status="failed", seconds=0.0, error=f"not run: environment {env_record['status']}")
                summary["stages"].append(record)
                say(f"{stage.name}: not run (the environment stage {env_record['status']})")
                continue
            if stage.name in skipped:
                record.update(status="skipped", seconds=0.0, reason="--skip")
                summary["stages"].append(record)
                say(f"{stage.name}: skipped (--skip)")
                continue
            own = budgets.get(stage.name, stage.budget(bool(args.smoke)))
            if deadline - now < min(stage.least(bool(args.smoke)), own or float("inf")):
                record.update(status="timeout", seconds=0.0, error=f"not started: {deadline - now:.0f} s left for it")
                summary["stages"].append(record)
                say(f"{stage.name}: not started ({deadline - now:.0f} s left)")
                continue
            say(f"{stage.name}: {stage.what} (deadline {deadline - now:.0f} s)")
            result_file = work / "stages" / f"{stage.name}.json"
            result_file.unlink(missing_ok=True)
            logf.flush()
            log_start = log_path.stat().st_size
            t0 = time.monotonic()
            proc = _StageProcess(args.isolation, stage.name, plan_path, deadline, log_path, logf)
            # A stage writes its result by its deadline; a little grace for that, then it is stopped.
            grace = min(5.0, max(0.5, 0.1 * (deadline - now)))
            code = proc.wait(timeout=max(0.5, deadline - time.time() + grace))
            timed_out = code is None
            if timed_out:
                proc.stop()
            seconds = round(time.monotonic() - t0, 1)
            if result_file.exists() and not timed_out:
                got = json.loads(result_file.read_text())
                record.update(status=got["status"], seconds=seconds, result=got.get("result"))
                if got.get("error"):
                    record["error"] = got["error"]
            elif timed_out:
                record.update(
                    status="timeout",
                    seconds=seconds,
                    error=f"stopped at its deadline ({record['deadline_s']:.0f} s); last output: "
                    + _tail(log_path, log_start),
                )
            else:
                record.update(
                    status="failed",
                    seconds=seconds,
                    error=f"exited {code} without a result; last output: " + _tail(log_path, log_start),
                )
            summary["stages"].append(record)
            say(
                f"{stage.name}: {record['status']} in {seconds} s"
                + (f": {record['error']}" if "error" in record else "")
            )
            summary["seconds"] = round(time.time() - t_start, 1)
            _write_json(out / SUMMARY, summary)
        env = next((s.get("result") for s in summary["stages"] if s["name"] == "environment"), None) or {}
        summary["versions"] = {
            k: env.get(k) for k in ("gpu", "driver", "cuda", "cudnn", "torch", "onnxruntime", "python")
        }
        summary["finished"] = _now()
        summary["seconds"] = round(time.time() - t_start, 1)
        ok = all(s["status"] in ("ok", "skipped") for s in summary["stages"])
        summary["status"] = "ok" if ok else "failed"
        summary["files"] = sorted({p.name for p in out.iterdir() if p.is_file()} | {SUMMARY})
        problems = check_summary(summary, skipped)
        summary["complete"] = not problems
        summary["problems"] = problems
        _write_json(out / SUMMARY, summary)
        for s in summary["stages"]:
            say(f"  {s['name']:<12} {s['status']:<8} {s['seconds']:7.1f} s / {s['deadline_s']:6.1f} s")
        say(
            f"wrote {out / SUMMARY} and {log_path}: {summary['status']} in {summary['seconds']} s"
            + (f"; incomplete: {'; '.join(problems)}" if problems else "")
        )
    if problems:
        return 2
    return 0 if ok else 1


def _stage_budget(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or name not in STAGE_NAMES:
        raise argparse.ArgumentTypeError(f"{text!r}: give STAGE=SECONDS with STAGE one of {', '.join(STAGE_NAMES)}")
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number of seconds") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must not be negative")
    return name, seconds


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="folder for summary.json, gpu_run.log and the trained model.pt")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default) or cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: check the script end to end (CPU, < 1 min)")
    p.add_argument("--minutes", type=float, default=9.0, help="the whole run's budget (default 9)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="the gpu-cache folder (make gpu-cache)")
    p.add_argument("--work", help="folder for the training run and exports (default: a new temporary folder)")
    p.add_argument("--skip", nargs="+", choices=STAGE_NAMES, help="stages not to run")
    p.add_argument(
        "--train-steps", type=int, help="steps of the training run (default: the recipe's; stopped at its deadline)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in --device cpu stages (default 1)")
    p.add_argument(
        "--stage-budget",
        type=_stage_budget,
        action="append",
        metavar="STAGE=SECONDS",
        help="replace a stage's time box in seconds (e.g. inference=60, train=120); repeat for more",
    )
    p.add_argument(
        "--isolation",
        choices=("forkserver", "exec"),
        default="forkserver",
        help="how stages start: forks of a server that imported torch once (default), or fresh interpreters",
    )
    p.add_argument("--stage", choices=STAGE_NAMES, help=argparse.SUPPRESS)
    p.add_argument("--plan", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_run", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.stage:
        return run_stage(args.stage, Path(args.plan), args.deadline)
    if not args.out:
        parser.error("--out is required")
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    manifest = Path(args.cache) / "manifest.json"  # read in full by the stages; here only: is it there
    if not manifest.is_file():
        print(
            f"error: no gpu cache at {args.cache} ({manifest} is missing): build it with `make gpu-cache` "
            "(or give --cache DIR)",
            file=sys.stderr,
        )
        return 2
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
