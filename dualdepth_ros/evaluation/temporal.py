"""Temporal stability: how much a predicted depth changes between consecutive frames beyond the motion.

For consecutive frames ``t−1, t`` and the GT relative pose: each pixel of ``t`` is
back-projected with a depth map, moved into camera ``t−1`` (its depth there is ``ẑ``) and
``D_{t−1}`` is sampled where it lands (bilinear, ``d̂``); the figure is the mean of ``|ẑ − d̂| /
d̂`` over static pixels (not in the moving mask of either frame) with valid GT that the GT shows
visible in both frames (occlusions removed). It is computed for the prediction and for the GT
depths (the resampling floor); a report gives both and their ratio (1 = as stable as the
ground truth). It needs dense ground truth in both frames, so it is computed on the network's
grid (the ground truth resampled to it by the data pipeline, nearest neighbour).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..geometry import backproject, project, sample, transform_points
from .grid import resize_prediction
from .metrics import MAX_DEPTH, MIN_DEPTH, as_map, valid_depth_mask

__all__ = ["temporal_difference", "temporal_stability"]


def _t(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def temporal_difference(
    depth_t: np.ndarray,
    depth_prev: np.ndarray,
    T_t_to_prev: np.ndarray,
    K: np.ndarray,
    mask: np.ndarray | None = None,
    mode: str = "bilinear",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel relative difference between ``D_t`` and ``D_{t−1}`` moved into the same view.

    Each pixel of frame ``t`` is back-projected with ``depth_t``, transformed by
    ``T_t_to_prev`` (4×4, camera ``t`` → camera ``t−1``) and projected; ``ẑ`` is its depth in
    camera ``t−1`` and ``d̂`` is ``depth_prev`` sampled there (``mode``: ``"bilinear"`` or
    ``"nearest"``; a sample touching an invalid pixel is invalid).

    Parameters
    ----------
    depth_t, depth_prev : ``H×W`` depths in the same units as the pose's translation.
    K : 3×3 intrinsics at this resolution.
    mask : optional ``H×W`` bool, pixels of ``t`` to consider.

    Returns
    -------
    diff : ``H×W`` ``|ẑ − d̂| / d̂`` (NaN where undefined).
    valid : ``H×W`` bool, where the pixel lands inside frame ``t−1``, in front of it, both
        depths are finite and positive, and ``mask`` holds.
    """
    dt = as_map(depth_t, "depth_t").astype(np.float64)
    dp = as_map(depth_prev, "depth_prev").astype(np.float64)
    h, w = dt.shape
    ok_t = np.isfinite(dt) & (dt > 0)
    d_in = torch.from_numpy(np.where(ok_t, dt, 1.0))[None, None]
    pts = transform_points(_t(T_t_to_prev)[None], backproject(d_in, _t(K)))
    pix, z = project(pts, _t(K))
    src = torch.from_numpy(np.where(np.isfinite(dp) & (dp > 0), dp, np.nan))[None, None]
    sampled = sample(src, pix, mode=mode, padding_mode="zeros")[0, 0].numpy()
    z = z[0, 0].numpy()
    u, v = pix[0, 0].numpy(), pix[0, 1].numpy()
    inside = (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = ok_t & inside & (z > 1e-6) & np.isfinite(sampled) & (sampled > 0)
        if mask is not None:
            valid &= np.asarray(mask, dtype=bool)
        diff = np.where(valid, np.abs(z - sampled) / sampled, np.nan)
    return diff, valid


def _sample_nearest(values: np.ndarray, depth_t: np.ndarray, T: np.ndarray, K: np.ndarray) -> np.ndarray:
    """``values`` (of frame t−1) at the pixel where each pixel of t lands (0 outside)."""
    pts = transform_points(_t(T)[None], backproject(torch.from_numpy(depth_t)[None, None], _t(K)))
    pix, _ = project(pts, _t(K))
    src = torch.from_numpy(np.asarray(values, dtype=np.float64))[None, None]
    return sample(src, pix, mode="nearest", padding_mode="zeros")[0, 0].numpy()


def temporal_stability(
    pred_t: np.ndarray,
    pred_prev: np.ndarray,
    gt_t: np.ndarray,
    gt_prev: np.ndarray,
    T_t_to_prev: np.ndarray,
    K: np.ndarray,
    *,
    moving_t: np.ndarray | None = None,
    moving_prev: np.ndarray | None = None,
    scale: float | None = None,
    visibility_tol: float = 0.1,
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
) -> dict[str, float] | None:
    """Temporal stability of a predicted depth pair against the GT pair (module docstring).

    Pixels are used when they are static (not in either moving mask), have valid GT, and the
    GT says the same surface is visible in both frames (its own relative difference is at
    most ``visibility_tol``; this removes occlusions and disocclusions, where a per-pixel
    comparison is meaningless and would dominate the mean).

    Parameters
    ----------
    pred_t, pred_prev : ``H×W`` predicted depths of frames ``t`` and ``t−1`` (GT size).
    gt_t, gt_prev : ``H×W`` ground-truth depths, metres (0/NaN invalid).
    T_t_to_prev : 4×4 GT transform camera ``t`` → camera ``t−1`` (metres), e.g.
        ``geometry.relative_pose(T_t_to_world, T_prev_to_world)``.
    K : 3×3 intrinsics.
    moving_t, moving_prev : optional ``H×W`` masks, non-zero on moving objects.
    scale : factor applied to both predictions; None = ``median(gt_t) / median(pred_t)``
        over the valid pixels of ``t`` (one factor for the pair, so scale flicker between
        the two frames still counts).

    Returns
    -------
    ``{"pred", "gt", "ratio", "n_pixels", "scale"}`` or None when no pixel qualifies.
    """
    gt_t = as_map(gt_t, "gt_t").astype(np.float64)
    gt_prev = as_map(gt_prev, "gt_prev").astype(np.float64)
    h, w = gt_t.shape
    pt = resize_prediction(as_map(pred_t, "pred_t"), h, w).astype(np.float64)
    pp = resize_prediction(as_map(pred_prev, "pred_prev"), h, w).astype(np.float64)
    valid_t = valid_depth_mask(gt_t, min_depth, max_depth)
    if moving_t is not None:
        valid_t &= as_map(moving_t, "moving_t") == 0
    if not valid_t.any():
        return None
    if scale is None:
        ok = valid_t & np.isfinite(pt) & (pt > 0)
        if not ok.any():
            return None
        scale = float(np.median(gt_t[ok]) / np.median(pt[ok]))
    gt_prev_valid = np.where(valid_depth_mask(gt_prev, min_depth, max_depth), gt_prev, np.nan)
    mask = valid_t.copy()
    if moving_prev is not None:
        landed = _sample_nearest(
            (as_map(moving_prev, "moving_prev") != 0).astype(np.float64),
            np.where(valid_t, gt_t, 1.0),
            T_t_to_prev,
            K,
        )
        mask &= landed < 0.5
    d_gt, v_gt = temporal_difference(gt_t, gt_prev_valid, T_t_to_prev, K, mask)
    with np.errstate(invalid="ignore"):
        visible = v_gt & (d_gt <= visibility_tol)  # the GT sees the same surface in both frames
    d_pr, v_pr = temporal_difference(pt * scale, pp * scale, T_t_to_prev, K, visible)
    both = visible & v_pr
    if not both.any():
        return None
    g = float(np.mean(d_gt[both]))
    p = float(np.mean(d_pr[both]))
    return {"pred": p, "gt": g, "ratio": p / g if g > 0 else float("inf"), "n_pixels": int(both.sum()), "scale": scale}
