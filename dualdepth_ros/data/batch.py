"""Batching for the model: a collated :class:`~dualdepth_ros.data.ClipDataset` batch → the losses' layout.

Lives in ``data/`` (not in the trainer) because training, validation and the photometric
floor of ``dualdepth eval`` all feed clips to the model the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["to_model_batch"]


def to_model_batch(items: Mapping[Any, Any], device: torch.device, channels_last: bool = False) -> dict[Any, Any]:
    """A collated :class:`~dualdepth_ros.data.ClipDataset` batch → the losses' batch layout.

    ``("color", o)`` → ``("color", o, 0)``, ``("color_aug", o)`` → ``("color_aug", o, 0)``,
    ``"K"`` → ``("K", 0)``; ground truth keys are kept as they are.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out: dict[Any, Any] = {}
    for key, value in items.items():
        if isinstance(key, tuple) and key[0] in ("color", "color_aug"):
            out[(key[0], key[1], 0)] = value.to(device, non_blocking=True).contiguous(memory_format=fmt)
        elif key == "K":
            out[("K", 0)] = value.to(device, non_blocking=True)
        elif isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        else:
            out[key] = value
    return out
