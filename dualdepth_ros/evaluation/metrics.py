"""Depth metrics of one image (``docs/method.md`` §8, the field's standard).

Per image: the prediction is carried onto the ground truth's grid
(:class:`~dualdepth_ros.evaluation.grid.GridMap`: inside the region the network saw,
inverse depth interpolated), the valid ground-truth pixels are those in ``(min_depth,
max_depth]`` (and inside the protocol's crop, :mod:`.protocols`), the prediction is
median-scaled (``median(gt) / median(pred)`` over those pixels) or multiplied by a given
factor (metric scale), then clamped to ``[min_depth, max_depth]``; AbsRel, SqRel, RMSE,
RMSE log, δ<1.25, δ<1.25², δ<1.25³. A report averages the per-image values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from .grid import GridMap
from .protocols import MAX_DEPTH, MIN_DEPTH, garg_crop_mask

__all__ = [
    "MIN_DEPTH",
    "MAX_DEPTH",
    "DEPTH_METRICS",
    "as_map",
    "compute_depth_errors",
    "valid_depth_mask",
    "DepthResult",
    "evaluate_depth",
]

#: Metric names in the order monodepth2 prints them (errors, then accuracies).
DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def as_map(a: Any, name: str) -> np.ndarray:
    """An ``H×W`` numpy array from an array or tensor with leading axes of size 1."""
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy()
    a = np.asarray(a)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name} must be an H×W map (leading axes of size 1 allowed), got shape {a.shape}")
    return a


def compute_depth_errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The seven standard metrics between matching 1-D arrays of positive depths.

    ``abs_rel = mean(|g − p| / g)``, ``sq_rel = mean((g − p)² / g)``, ``rmse = sqrt(mean((g − p)²))``,
    ``rmse_log = sqrt(mean((ln g − ln p)²))``, ``a_k = mean(max(g/p, p/g) < 1.25^k)``.
    """
    gt = np.asarray(gt, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if gt.shape != pred.shape or gt.size == 0:
        raise ValueError(f"need two non-empty arrays of equal size, got {gt.shape} and {pred.shape}")
    thresh = np.maximum(gt / pred, pred / gt)
    diff = gt - pred
    return {
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff**2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        "a1": float(np.mean(thresh < 1.25)),
        "a2": float(np.mean(thresh < 1.25**2)),
        "a3": float(np.mean(thresh < 1.25**3)),
    }


def valid_depth_mask(
    gt: np.ndarray,
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
    garg_crop: bool = False,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Pixels with finite GT in ``(min_depth, max_depth]``, inside the Garg crop if asked, and in ``mask``."""
    gt = np.asarray(gt)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(gt) & (gt > min_depth) & (gt <= max_depth)
    if garg_crop:
        valid &= garg_crop_mask(*gt.shape)
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    return valid


@dataclasses.dataclass
class DepthResult:
    """One image's depth evaluation.

    Attributes
    ----------
    metrics : :data:`DEPTH_METRICS` → value.
    scale : the factor applied to the prediction (the median ratio, or the given scale).
    n_valid : number of ground-truth pixels evaluated.
    gt, pred : the evaluated 1-D arrays (pred scaled and clamped), for sparsification.
    valid : the ``H×W`` mask (ground-truth grid) of evaluated pixels.
    """

    metrics: dict[str, float]
    scale: float
    n_valid: int
    gt: np.ndarray
    pred: np.ndarray
    valid: np.ndarray


def evaluate_depth(
    pred: Any,
    gt: Any,
    *,
    grid: GridMap | None = None,
    interpolation: str = "bilinear",
    median_scaling: bool = True,
    scale: float = 1.0,
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
    garg_crop: bool = False,
    mask: np.ndarray | None = None,
) -> DepthResult | None:
    """Depth metrics of one image, on the ground truth's grid.

    Parameters
    ----------
    pred : ``h×w`` predicted depth (model units or metres) on the network's grid.
    gt : ``H×W`` ground-truth depth, metres; 0, NaN or out-of-range pixels are invalid.
    grid : where each ground-truth pixel lies in ``pred``'s grid (:class:`GridMap`); only
        pixels inside the region the network saw are scored. None: ``pred`` shows the whole
        ground-truth image (a plain resize, monodepth2's case).
    interpolation : ``"bilinear"`` (of inverse depth) or ``"nearest"``.
    median_scaling : multiply ``pred`` by ``median(gt) / median(pred)`` over the valid pixels
        (monocular protocol); otherwise by ``scale`` (metric evaluation).
    min_depth, max_depth, garg_crop : the protocol (:class:`~.protocols.Protocol`).
    mask : optional extra ``H×W`` bool mask of pixels to evaluate.

    Returns
    -------
    A :class:`DepthResult`, or None when the image has no valid GT pixel.
    """
    gt = as_map(gt, "gt").astype(np.float64)
    pred = as_map(pred, "pred")
    if grid is None:
        grid = GridMap.resize(*gt.shape, *pred.shape)
    elif grid.shape != gt.shape:
        raise ValueError(f"the grid map is for ground truth of {grid.shape}, got {gt.shape}")
    valid = valid_depth_mask(gt, min_depth, max_depth, garg_crop, mask) & grid.inside()
    if not valid.any():
        return None
    g = gt[valid]
    p = grid.sample_depth(pred, interpolation, where=valid)
    p = np.where(np.isfinite(p), p, min_depth)
    if median_scaling:
        med = float(np.median(p))
        ratio = float(np.median(g)) / med if med > 0 else 1.0
    else:
        ratio = float(scale)
    p = np.clip(p * ratio, min_depth, max_depth)
    return DepthResult(compute_depth_errors(g, p), ratio, int(g.size), g, p, valid)
