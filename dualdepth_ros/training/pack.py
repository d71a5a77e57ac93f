"""``dualdepth pack``: turn a training checkpoint into a small model file to ship.

Keeps what inference, evaluation and export need (weights, config, input size, intrinsics
convention, metrics) and drops the optimiser, schedule and RNG states; ``--fp16`` stores the
weights in half precision (they are loaded back into float32 networks). The result is still a
checkpoint that :func:`~dualdepth_ros.training.checkpoint.model_from_checkpoint` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

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


def run(args: argparse.Namespace) -> int:
    packed = pack(load_checkpoint(args.checkpoint), fp16=not args.fp32)
    path = atomic_save(packed, args.out)
    # Prove the file loads and runs before anyone ships it.
    loaded = model_from_checkpoint(path)
    w, h = loaded.cfg.input.width, loaded.cfg.input.height
    with torch.inference_mode():
        out = loaded.depth_net(torch.rand(1, 3, h, w))
    assert torch.isfinite(out[("depth_fused", 0)]).all()
    size = Path(path).stat().st_size
    print(f"wrote {path} ({size / 1e6:.2f} MB, {packed['weights_dtype']}, step {packed.get('step')}, {w}x{h})")
    return 0
