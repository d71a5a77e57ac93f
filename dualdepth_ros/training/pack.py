"""``dualdepth pack``: turn a training checkpoint into a small model file to ship.

Keeps what inference, evaluation and export need (weights, config, input size, intrinsics
convention, metrics) and drops the optimiser, schedule and RNG states; ``--fp16`` stores the
weights in half precision (they are loaded back into float32 networks). The result is still a
checkpoint that :func:`~dualdepth_ros.training.checkpoint.model_from_checkpoint` reads.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import DualDepthError
from .checkpoint import atomic_save, load_checkpoint, model_from_checkpoint

TRAINING_ONLY = ("optimizer", "scheduler", "scaler", "rng", "history")


def pack(ckpt: dict[str, Any], fp16: bool = True) -> dict[str, Any]:
    """A copy of ``ckpt`` without training state, weights optionally in float16."""
    out = {k: v for k, v in ckpt.items() if k not in TRAINING_ONLY}
    if fp16:
        out["model"] = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    out["weights_dtype"] = "float16" if fp16 else "float32"
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="training checkpoint (e.g. RUN_DIR/last.pt)")
    p.add_argument("--out", required=True, help="model file to write (e.g. models/dualdepth_default.pt)")
    p.add_argument("--fp32", action="store_true", help="keep float32 weights (default: float16)")


def _same_file(a: Path, b: Path) -> bool:
    """Whether paths ``a`` and ``b`` name one file (symlinks, ``..``, hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def run(args: argparse.Namespace) -> int:
    src, out = Path(args.checkpoint), Path(args.out)
    if _same_file(src, out):
        raise DualDepthError(
            f"--out {out} is the checkpoint itself ({src}): packing would replace the training state; "
            "write the model to another file, e.g. models/mymodel.pt"
        )
    if out.is_dir():
        raise DualDepthError(f"--out {out} is a folder; give the model file to write, e.g. {out / 'model.pt'}")
    packed = pack(load_checkpoint(src), fp16=not args.fp32)
    # Prove the weights rebuild their network and run before anything is written.
    loaded = model_from_checkpoint(packed)
    w, h = loaded.cfg.input.width, loaded.cfg.input.height
    with torch.inference_mode():
        depth = loaded.depth_net(torch.rand(1, 3, h, w))[("depth_fused", 0)]
    if not torch.isfinite(depth).all():
        raise DualDepthError(f"{src}: the packed model's depth is not finite on a test image; it was not written")
    path = atomic_save(packed, out)
    load_checkpoint(path)  # and that the file reads back (weights only)
    size = Path(path).stat().st_size
    print(f"wrote {path} ({size / 1e6:.2f} MB, {packed['weights_dtype']}, step {packed.get('step')}, {w}x{h})")
    return 0
