"""Checkpoints that are written atomically and resume a run exactly.

A checkpoint is one ``torch.save`` file holding the model and optimiser state, the
learning-rate schedule, the step, every RNG state (Python, numpy, torch CPU and CUDA)
and what is needed to rebuild the model and its input pipeline: the training config,
the input size and the intrinsics convention. It is written to a temporary file in the
same directory, flushed to disk, then renamed over the target, so an interrupted run
never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DualDepthError

__all__ = ["atomic_save", "load_checkpoint", "rng_state", "set_rng_state", "INTRINSICS_CONVENTION"]

#: Written into every checkpoint so that evaluation/export rebuild the input pipeline the same way.
INTRINSICS_CONVENTION = (
    "pinhole K at the network input resolution, pixel centres at integer coordinates, "
    "resize rule c' = (c + 0.5) * s - 0.5, f' = f * s; optical frame x right, y down, z forward"
)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save`; a clear error if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DualDepthError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DualDepthError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DualDepthError(f"{path} is not a dualdepth_ros checkpoint (no 'model' entry)")
    return ckpt


def rng_state() -> dict[str, Any]:
    """Every RNG state a training step can consume."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
