"""``dualdepth export``: a checkpoint → a model folder (``model.onnx``, ``model.json``, ``weights.pt``).

See :mod:`dualdepth_ros.inference.export` for what is written and checked.
"""

from __future__ import annotations

import argparse
import sys
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
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--device", default="cpu", help="where the model is traced: cpu (default), cuda or cuda:N")
    p.add_argument(
        "--training-intrinsics",
        metavar="FX,FY,CX,CY",
        help="the training camera at the exported input size, recorded in model.json (informative; default: unknown)",
    )


def run(args: argparse.Namespace) -> int:
    from .export import export_model

    def log(line: str) -> None:
        print(line, file=sys.stderr)

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
    return 0
