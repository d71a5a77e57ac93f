"""``weights.pt``: the depth net's weights and the config to rebuild it, loadable with ``weights_only=True``.

The file is one ``torch.save`` of plain types only (``dict``, ``list``, ``str``, ``int``,
``float``, ``bool``, tensors), so ``torch.load(path, weights_only=True)`` reads it without
unpickling any code — a path named by a ROS parameter can never run code. Layout::

    format          "dualdepth_ros.weights/1"
    model           the DepthNet constructor arguments (encoder, encoder_width, num_branches, …), plain values
    state_dict      the depth net's state dict (the ``depth.*`` entries of the checkpoint, prefix
                    removed), in the checkpoint's dtype (float16 for a packed model)
    weights_sha256  :func:`state_dict_sha256` of ``state_dict``
    config_hash     the training config's hash
    input           {"width", "height", "resize_mode"} the model was trained at
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .backend import ModelError

__all__ = ["WEIGHTS_FORMAT", "depth_state_dict", "state_dict_sha256", "save_weights", "load_weights"]

WEIGHTS_FORMAT = "dualdepth_ros.weights/1"
_PREFIX = "depth."


def depth_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The depth net's entries of a checkpoint's ``model`` state dict, ``depth.`` prefix removed."""
    state = checkpoint["model"]
    out = {k[len(_PREFIX) :]: v for k, v in state.items() if k.startswith(_PREFIX)}
    if not out:
        raise ModelError("the checkpoint holds no depth-net weights (no 'depth.*' entries)")
    return out


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 over a state dict: for each key in sorted order its name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_weights(
    path: str | os.PathLike, state: Mapping[str, torch.Tensor], model_cfg: Any, config_hash: str, input_: Mapping
) -> str:
    """Write ``weights.pt`` (flushed to disk); returns its ``weights_sha256``.

    Parameters
    ----------
    state : the depth net's state dict (:func:`depth_state_dict`).
    model_cfg : the :class:`~dualdepth_ros.config.ModelConfig` (or a dict of its fields); only the
        fields that are :class:`~dualdepth_ros.networks.DepthNet` arguments are stored.
    config_hash : the training config's hash.
    input_ : ``{"width", "height", "resize_mode"}``.
    """
    from ..networks import DepthNet

    cfg = dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else dict(model_cfg)
    params = [p for p in inspect.signature(DepthNet.__init__).parameters if p != "self"]
    cfg = {k: cfg[k] for k in params if k in cfg}  # what rebuilds the net, nothing training-only
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    digest = state_dict_sha256(tensors)
    obj = {
        "format": WEIGHTS_FORMAT,
        "model": _plain(cfg),
        "state_dict": tensors,
        "weights_sha256": digest,
        "config_hash": str(config_hash),
        "input": _plain(dict(input_)),
    }
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return digest


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"weights.pt holds plain types only, got {type(obj).__name__}")


def load_weights(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the depth net from ``weights.pt`` (``torch.load(..., weights_only=True)``), in eval mode, float32.

    Returns
    -------
    net : the :class:`~dualdepth_ros.networks.DepthNet` with the weights loaded.
    info : the file's other entries (``model``, ``weights_sha256``, ``config_hash``, ``input``).

    Raises
    ------
    ModelError : missing or unreadable file, another format, weights that do not fit the config,
        or weights whose digest is not the recorded one.
    """
    from ..networks import DepthNet

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no weights file {path} (dualdepth export writes weights.pt for the torch backend)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        from ..training.checkpoint import _refuses_an_object, _unpickling_reason

        if _refuses_an_object(err):
            raise ModelError(
                f"refusing {path}: it holds Python objects other than tensors and plain data "
                f"({_unpickling_reason(err)}), and loading them could run code; use the weights.pt "
                "that dualdepth export writes"
            ) from None
        raise ModelError(
            f"cannot read {path} as weights (corrupt or not a weights.pt: {_unpickling_reason(err)})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != WEIGHTS_FORMAT:
        fmt = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ModelError(f"{path} is not a dualdepth_ros weights file (format {fmt!r}, expected {WEIGHTS_FORMAT!r})")
    try:
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in obj["model"].items()}
        net = DepthNet(**args)
        state = obj["state_dict"]
        net.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        msg = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelError(f"{path}: the weights do not fit their model config: {msg}") from None
    digest = state_dict_sha256(state)
    if digest != obj.get("weights_sha256"):
        raise ModelError(f"{path} is damaged: its weights' SHA-256 is not the one it records")
    info = {k: v for k, v in obj.items() if k != "state_dict"}
    return net.float().eval(), info
