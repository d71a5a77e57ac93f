"""``dualdepth export``: a checkpoint → a model folder (``model.onnx``, ``model.json``, ``weights.pt``).

See :mod:`dualdepth_ros.inference.export` for what is written and checked. With ``--engine`` the
folder also gets a TensorRT plan and its sidecar (``model.<key>.plan`` + ``.json``, built with
:mod:`dualdepth_ros.inference.tensorrt_build` through the TensorRT backend, which then loads it
once to check that it runs); TensorRT and a GPU are checked for before anything is exported.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pt) from dualdepth train or dualdepth pack")
    p.add_argument("--out", required=True, help="model folder to write (refused if not empty, unless --overwrite)")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        default="fp32",
        help="weights and compute of the graph (input/outputs stay float32); fp32 (default) is what TensorRT "
        "should be given: it builds fp16 engines itself",
    )
    p.add_argument("--height", type=int, help="input height of the graph (default: the checkpoint's)")
    p.add_argument("--width", type=int, help="input width of the graph (default: the checkpoint's)")
    p.add_argument(
        "--per-branch", action="store_true", help="also output depth_branch{b} / confidence_branch{b} per branch"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing model folder at --out (any other folder is refused)",
    )
    p.add_argument("--device", default="cpu", help="where the model is traced: cpu (default), cuda or cuda:N")
    p.add_argument(
        "--engine",
        action="store_true",
        help="also build the TensorRT engine (DIR/model.<key>.plan + sidecar) on this machine's GPU",
    )
    p.add_argument(
        "--engine-precision",
        choices=("fp32", "fp16"),
        default="fp16",
        help="precision of the TensorRT engine (default fp16; the branch comparison stays fp32)",
    )
    p.add_argument(
        "--workspace-mb", type=int, default=None, help="TensorRT builder workspace limit, MiB (default 1024)"
    )
    p.add_argument(
        "--training-intrinsics",
        metavar="FX,FY,CX,CY",
        help="the training camera at the exported input size, recorded in model.json (informative; default: unknown)",
    )


def _check_tensorrt() -> None:
    """Fail before exporting when ``--engine`` cannot be honoured here (one line: what is missing)."""
    from .backend import BackendUnavailableError
    from .tensorrt_cuda import import_tensorrt, open_cuda

    try:
        import_tensorrt()
        open_cuda().close()
    except BackendUnavailableError as err:
        raise BackendUnavailableError(f"--engine needs TensorRT and a GPU here: {err}") from None


def _build_engine(out: Path, precision: str, workspace_mb: int | None, log: Callable[[str], None]) -> str:
    from .metadata import load_metadata
    from .tensorrt_backend import TensorRTBackend
    from .tensorrt_build import DEFAULT_WORKSPACE_MB

    backend = TensorRTBackend(
        out,
        load_metadata(out),
        precision=precision,
        force_engine_update=True,
        workspace_mb=workspace_mb or DEFAULT_WORKSPACE_MB,
        log=log,
    )
    try:
        return Path(backend.describe()["engine"]).name
    finally:
        backend.close()


def run(args: argparse.Namespace) -> int:
    from .export import export_model

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    if args.workspace_mb is not None and args.workspace_mb < 1:
        from ..errors import DualDepthError

        raise DualDepthError(f"--workspace-mb must be a positive number of MiB, got {args.workspace_mb}")
    if args.engine:
        _check_tensorrt()
    md = export_model(
        args.checkpoint,
        args.out,
        precision=args.precision,
        height=args.height,
        width=args.width,
        per_branch=args.per_branch,
        overwrite=args.overwrite,
        device=args.device,
        training_intrinsics=args.training_intrinsics,
        log=log,
    )
    out = Path(args.out)
    size = (out / "model.onnx").stat().st_size / 1e6
    print(
        f"wrote {out}: model.onnx ({size:.1f} MB, opset {md.opset}, {md.precision}, "
        f"{md.input_width}x{md.input_height} {md.resize_mode}, outputs {', '.join(md.output_names)}), "
        f"model.json, weights.pt"
    )
    if args.engine:
        plan = _build_engine(out, args.engine_precision, args.workspace_mb, log)
        print(f"wrote {out / plan} and its sidecar ({args.engine_precision} TensorRT engine)")
    return 0
