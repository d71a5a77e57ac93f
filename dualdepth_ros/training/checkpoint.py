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
from dataclasses import dataclass as dataclasses_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DualDepthError

__all__ = [
    "atomic_save",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "INTRINSICS_CONVENTION",
    "FORMAT",
    "make_checkpoint",
    "LoadedModel",
    "model_from_checkpoint",
]

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
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is an ordinary file
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


# ---------------------------------------------------------------------------------------
# The checkpoint contract shared by training, evaluation and export
# ---------------------------------------------------------------------------------------
FORMAT = "dualdepth_ros.checkpoint/1"


def make_checkpoint(model: torch.nn.Module, cfg: Any, data_cfg: Any, **state: Any) -> dict[str, Any]:
    """The dict that :func:`atomic_save` writes for a :class:`~dualdepth_ros.networks.DepthModel`.

    Keys: ``format``, ``model`` (state dict, ``depth.*`` and ``pose.*``), ``config`` (the full
    training config as a plain dict, ``data`` section included), ``config_hash``, ``input``
    (``width``, ``height``, ``resize_mode``: what the node and export must feed the network),
    ``intrinsics_convention``, ``package_version``, plus whatever ``state`` adds (``step``,
    ``epoch``, ``optimizer``, ``scheduler``, ``rng``, ``metrics`` …).
    """
    import dataclasses

    from .. import __version__
    from ..config import config_hash, config_to_dict

    model = getattr(model, "module", model)  # unwrap DDP
    cfg_dict = config_to_dict(cfg)
    cfg_dict["data"] = dataclasses.asdict(data_cfg)
    return {
        "format": FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": cfg_dict,
        "config_hash": config_hash(cfg),
        "input": {"width": cfg.input.width, "height": cfg.input.height, "resize_mode": data_cfg.resize_mode},
        "intrinsics_convention": INTRINSICS_CONVENTION,
        "package_version": __version__,
        **state,
    }


@dataclasses_dataclass
class LoadedModel:
    """A trained model rebuilt from a checkpoint (in eval mode)."""

    model: Any  # DepthModel
    cfg: Any  # Config
    data: Any  # DataConfig
    checkpoint: dict[str, Any]

    @property
    def depth_net(self) -> Any:
        return self.model.depth


def model_from_checkpoint(path_or_ckpt: str | os.PathLike | dict[str, Any], device: Any = "cpu") -> LoadedModel:
    """Rebuild the :class:`DepthModel` (and its config) that wrote a checkpoint."""
    from ..config import config_from_dict
    from ..data import DataConfig
    from ..networks import DepthModel

    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    if ckpt.get("format") != FORMAT:
        raise DualDepthError(f"unsupported checkpoint format {ckpt.get('format')!r} (expected {FORMAT})")
    cfg_dict = dict(ckpt["config"])
    data = DataConfig.coerce(cfg_dict.pop("data", None))
    cfg = config_from_dict(cfg_dict)
    model = DepthModel(cfg)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise DualDepthError(
            f"checkpoint weights do not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.to(device).eval()
    return LoadedModel(model=model, cfg=cfg, data=data, checkpoint=ckpt)
