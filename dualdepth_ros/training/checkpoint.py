"""Checkpoints that are written atomically and resume a run exactly.

A checkpoint is one ``torch.save`` file holding the model and optimiser state, the
learning-rate schedule, the step, every RNG state (Python, numpy, torch CPU and CUDA)
and what is needed to rebuild the model and its input pipeline: the training config,
the input size and the intrinsics convention. It is written to a temporary file in the
same directory, flushed to disk, then renamed over the target, so an interrupted run
never leaves a half-written checkpoint.

Checkpoints are what people download and share, so reading one never runs code from it:
:func:`load_checkpoint` unpickles with ``torch.load(..., weights_only=True)`` (tensors and plain
Python data only). Every entry is written in that form, RNG states included (numpy's key as a
tensor). Checkpoints written before that hold numpy's RNG state as an ``ndarray``; for them only
numpy's data-only reconstruction functions (array, dtype, scalar) are allowed, nothing that can
import or call anything else.
"""

from __future__ import annotations

import io
import os
import pickle
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
    "check_writable",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "INTRINSICS_CONVENTION",
    "FORMAT",
    "make_checkpoint",
    "LoadedModel",
    "model_from_checkpoint",
    "weights_mismatch",
]

#: Written into every checkpoint so that evaluation/export rebuild the input pipeline the same way.
INTRINSICS_CONVENTION = (
    "pinhole K at the network input resolution, pixel centres at integer coordinates, "
    "resize rule c' = (c + 0.5) * s - 0.5, f' = f * s; optical frame x right, y down, z forward"
)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (temp file + fsync + rename).

    The object is serialised in memory first, so a full or read-only disk raises a plain
    :class:`OSError` (its errno, naming ``path``) and leaves no temporary file behind.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    return path


def _numpy_data_globals() -> list[Any]:
    """The data-only unpickling globals of numpy (old checkpoints' RNG state), under numpy 1 and numpy 2 names.

    ``_reconstruct`` makes an empty array of a given dtype and shape, ``scalar`` one value from its
    bytes, ``dtype`` a data type from its code; the array's contents and the dtype's byte order are
    then set from plain data (the numeric and bool dtype classes only: no object arrays). None of
    them imports a module or calls a function named by the file.
    """
    try:
        from numpy._core import multiarray  # numpy >= 2 (numpy.core is its deprecated alias)
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray

    numeric = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *numeric]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # pickled by numpy 1.x / 2.x
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    return allowed


def _refuses_an_object(err: BaseException) -> bool:
    """True when a ``weights_only`` load failed because the file names a Python object (not corruption)."""
    return any(w in str(err) for w in ("GLOBAL", "Can only build", "Unsupported global"))


def _unpickling_reason(err: BaseException) -> str:
    """The line of a ``weights_only`` refusal that names what was refused (torch's message is a paragraph)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    skip = ("Weights only load failed", "Please file an issue", "Check the documentation")
    named = [ln for ln in lines if any(w in ln for w in ("GLOBAL", "Unsupported", "Can only build"))]
    named = named or [ln for ln in lines if not ln.startswith(skip)]
    line = (named or lines or [type(err).__name__])[0]
    return line.split(". ")[0].rstrip(".")[:200]


def check_writable(folder: str | os.PathLike, target: str | os.PathLike | None = None) -> None:
    """Raise the :class:`OSError` that writing a file into ``folder`` would raise (read-only, forbidden).

    Probes with a temporary file in ``folder``, or in its nearest existing parent when it does not
    exist yet (nothing is left behind, no folder is created). The error names ``target`` (default
    ``folder``), the path the user gave. A full disk is found only when a write fails.
    """
    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise DualDepthError(f"{target if target is not None else folder}: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(target if target is not None else folder)) from None


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save` without running any code stored in it.

    ``torch.load(..., weights_only=True)`` (module docstring): a file whose pickle names any other
    Python object (a class, a function such as ``os.system``) is refused, in the zip and in the
    legacy format.

    Raises
    ------
    DualDepthError : the file is missing, is not a checkpoint, is corrupt, or holds objects
        other than tensors and plain data (one line, naming the refused object).
    """
    path = Path(path)
    if not path.is_file():
        raise DualDepthError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if not _refuses_an_object(err):
            reason = _unpickling_reason(err) if "weights only" in text.lower() else text.strip()[:200]
            raise DualDepthError(f"cannot read checkpoint {path} (corrupt or not a .pt file: {reason})") from None
        raise DualDepthError(
            f"refusing checkpoint {path}: it holds Python objects other than tensors and plain data "
            f"({_unpickling_reason(err)}), and loading them could run code; use a checkpoint written by "
            "dualdepth train or dualdepth pack"
        ) from None
    except Exception as err:  # noqa: BLE001 - any other failure to read it means a corrupt or foreign file
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise DualDepthError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {reason}); is it a dualdepth_ros .pt file?"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DualDepthError(f"{path} is not a dualdepth_ros checkpoint (no 'model' entry)")
    weights = ckpt["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        what = type(weights).__name__ if not isinstance(weights, dict) else "a dict holding other things than tensors"
        raise DualDepthError(
            f"{path} is not a dualdepth_ros checkpoint: its 'model' entry is {what}, not a state dict of tensors"
        )
    return ckpt


def rng_state() -> dict[str, Any]:
    """Every RNG state a training step can consume, in a form ``weights_only`` loading reads back.

    ``python``: :func:`random.getstate` (a tuple of ints); ``numpy``: the legacy global
    ``MT19937`` state as a dict whose 624-word key is an int64 tensor; ``torch`` (and ``cuda``):
    uint8 tensors.
    """
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state` (or by older versions: numpy's state as a tuple)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal), gauss))
    npstate = state["numpy"]
    if isinstance(npstate, dict):
        key = torch.as_tensor(npstate["key"]).cpu().numpy().astype(np.uint32)
        npstate = (npstate["bit_generator"], key, npstate["pos"], npstate["has_gauss"], npstate["cached_gaussian"])
    np.random.set_state(npstate)
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint loaded with map_location=cuda moved it
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into Python numbers and lists (for ``weights_only``)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


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
        **{k: (v if k in ("optimizer", "scheduler", "scaler", "rng") else _plain(v)) for k, v in state.items()},
    }


def weights_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """The first difference between two state dicts' keys and shapes, in words; None when they fit.

    Parameters
    ----------
    expected : the state dict of the network to load into (its keys and shapes are the reference).
    given : the weights to load (dtypes may differ: float16 weights load into float32 networks).
    """
    for key, ref in expected.items():
        if key not in given:
            return f"missing key {key!r} (shape {tuple(ref.shape)})"
        if tuple(given[key].shape) != tuple(ref.shape):
            return f"{key!r} has shape {tuple(given[key].shape)}, the network expects {tuple(ref.shape)}"
    for key, value in given.items():
        if key not in expected:
            return f"unexpected key {key!r} (shape {tuple(value.shape)})"
    return None


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
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt.get("model"), dict):
        raise DualDepthError("the checkpoint lacks its training config or its weights ('config' and 'model')")
    cfg_dict = dict(ckpt["config"])
    data = DataConfig.coerce(cfg_dict.pop("data", None))
    cfg = config_from_dict(cfg_dict)
    model = DepthModel(cfg)
    mismatch = weights_mismatch(model.state_dict(), ckpt["model"])
    if mismatch:
        raise DualDepthError(f"the checkpoint's weights do not fit its own config: {mismatch}")
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return LoadedModel(model=model, cfg=cfg, data=data, checkpoint=ckpt)
