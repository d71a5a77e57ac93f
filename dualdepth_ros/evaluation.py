"""Evaluation: depth metrics, confidence sparsification (AUSE/AURG), temporal stability, pose ATE.

Pure functions on numpy arrays (depths in metres, ``H×W`` float), a small accumulating
report (:class:`EvaluationReport`) for the ``dualdepth eval`` command, and PNG helpers drawn
with OpenCV (:func:`save_sparsification_plot`, :func:`save_mosaic`).

Protocol (``docs/method.md`` §8, the field's standard):

* **Depth** — per image: valid ground truth in ``(min_depth, max_depth]`` (1e-3, 80 m), optionally
  inside the Garg crop (KITTI-shaped images); the prediction is median-scaled
  (``median(gt) / median(pred)`` over the valid pixels) or left as is (metric scale), then
  clamped to ``[min_depth, max_depth]``; AbsRel, SqRel, RMSE, RMSE log, δ<1.25, δ<1.25²,
  δ<1.25³; the report averages the per-image values.
* **Confidence** — sparsification curves (Poggi et al., *On the uncertainty of self-supervised
  monocular depth estimation*, CVPR 2020): remove the least confident fraction ``x`` of the
  valid pixels, ``x = 0, 1/steps, …, (steps−1)/steps``, recompute the metric on the rest;
  the curve ends with 0 at ``x = 1``. The oracle removes pixels by true error, the random
  curve is the expectation of random removal (the full-image metric). AUSE = area(model) −
  area(oracle); AURG = area(random) − area(model) (positive: the confidence helps), both by
  the trapezoid rule, per image then averaged. Poggi's code integrates the random curve
  without the final 0; its AURG equals ours plus ``metric / (2·steps)``.
* **Temporal stability** — for consecutive frames ``t−1, t`` and the GT relative pose: each
  pixel of ``t`` is back-projected with a depth map, moved into camera ``t−1`` (its depth
  there is ``ẑ``) and ``D_{t−1}`` is sampled where it lands (bilinear, ``d̂``); the figure is the
  mean of ``|ẑ − d̂| / d̂`` over static pixels (not in the moving mask of either frame) with
  valid GT that the GT shows visible in both frames (occlusions removed). It is computed for
  the prediction and for the GT depths (the resampling floor); the report gives both and
  their ratio (1 = as stable as the ground truth).
* **Pose** — ATE on 5-frame snippets (SfMLearner, monodepth2): the snippet's positions are
  chained from its relative poses starting at the origin, the predicted ones are
  least-squares scaled onto the GT ones, and the snippet's ATE is
  ``sqrt(Σ‖s·p − g‖²) / n_frames``; mean and std over all full snippets.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from .geometry import backproject, project, sample, transform_points

__all__ = [
    "MIN_DEPTH",
    "MAX_DEPTH",
    "DEPTH_METRICS",
    "SPARSIFICATION_METRICS",
    "compute_depth_errors",
    "garg_crop_mask",
    "is_kitti_shaped",
    "valid_depth_mask",
    "resize_prediction",
    "DepthResult",
    "evaluate_depth",
    "SparsificationResult",
    "sparsification",
    "temporal_difference",
    "temporal_stability",
    "chain_positions",
    "snippet_ate",
    "pose_ate",
    "EvaluationReport",
    "format_depth_table",
    "colorize_inverse_depth",
    "colorize_confidence",
    "make_mosaic",
    "draw_sparsification_plot",
    "save_png",
    "save_mosaic",
    "save_sparsification_plot",
]

MIN_DEPTH = 1e-3
MAX_DEPTH = 80.0
#: Metric names in the order monodepth2 prints them (errors, then accuracies).
DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
#: Metrics a sparsification curve can track (``a1`` here is the outlier rate ``1 − δ<1.25``).
SPARSIFICATION_METRICS = ("abs_rel", "rmse", "a1")


# ---------------------------------------------------------------------------------------
# Depth metrics
# ---------------------------------------------------------------------------------------
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


def is_kitti_shaped(height: int, width: int) -> bool:
    """True for images with KITTI's aspect ratio (≈ 1242×375, 3.31:1), where the Garg crop applies."""
    return 3.0 <= width / height <= 3.6


def garg_crop_mask(height: int, width: int) -> np.ndarray:
    """``H×W`` bool mask of the Garg/Eigen crop (rows 40.8–99.2 %, columns 3.6–96.4 %)."""
    crop = np.array([0.40810811 * height, 0.99189189 * height, 0.03594771 * width, 0.96405229 * width]).astype(np.int32)
    mask = np.zeros((height, width), dtype=bool)
    mask[crop[0] : crop[1], crop[2] : crop[3]] = True
    return mask


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


def resize_prediction(pred: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a predicted depth to the GT's size by bilinear interpolation of inverse depth (monodepth2)."""
    pred = np.asarray(pred)
    if pred.shape == (height, width):
        return pred
    pred = pred.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = np.where(np.isfinite(pred) & (pred > 0), 1.0 / pred, 0.0).astype(np.float32)
    disp = cv2.resize(disp, (width, height), interpolation=cv2.INTER_LINEAR)
    with np.errstate(divide="ignore"):
        return np.where(disp > 0, 1.0 / disp, np.nan).astype(np.float32)


def _resize_map(values: np.ndarray, height: int, width: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if values.shape == (height, width):
        return values
    return cv2.resize(values, (width, height), interpolation=cv2.INTER_LINEAR)


def _squeeze2d(a: Any, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name} must be an H×W map (leading axes of size 1 allowed), got shape {a.shape}")
    return a


@dataclasses.dataclass
class DepthResult:
    """One image's depth evaluation.

    Attributes
    ----------
    metrics : :data:`DEPTH_METRICS` → value.
    scale : the factor applied to the prediction (the median ratio, or the given scale).
    n_valid : number of pixels evaluated.
    gt, pred : the evaluated 1-D arrays (pred scaled and clamped), for sparsification.
    valid : the ``H×W`` mask of evaluated pixels.
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
    median_scaling: bool = True,
    scale: float = 1.0,
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
    garg_crop: bool = False,
    mask: np.ndarray | None = None,
) -> DepthResult | None:
    """Depth metrics of one image.

    Parameters
    ----------
    pred : ``H'×W'`` predicted depth (model units or metres); resized to the GT's size with
        :func:`resize_prediction` if it differs. Non-positive or non-finite values count as
        ``min_depth`` after clamping.
    gt : ``H×W`` ground-truth depth, metres; 0, NaN or out-of-range pixels are invalid.
    median_scaling : multiply ``pred`` by ``median(gt) / median(pred)`` over the valid pixels
        (monocular protocol); otherwise by ``scale`` (metric evaluation).
    mask : optional extra ``H×W`` bool mask of pixels to evaluate.

    Returns
    -------
    A :class:`DepthResult`, or None when the image has no valid GT pixel.
    """
    gt = _squeeze2d(gt, "gt").astype(np.float64)
    pred = resize_prediction(_squeeze2d(pred, "pred"), *gt.shape).astype(np.float64)
    valid = valid_depth_mask(gt, min_depth, max_depth, garg_crop, mask)
    if not valid.any():
        return None
    g = gt[valid]
    p = pred[valid]
    p = np.where(np.isfinite(p), p, min_depth)
    if median_scaling:
        med = float(np.median(p))
        ratio = float(np.median(g)) / med if med > 0 else 1.0
    else:
        ratio = float(scale)
    p = np.clip(p * ratio, min_depth, max_depth)
    return DepthResult(compute_depth_errors(g, p), ratio, int(g.size), g, p, valid)


# ---------------------------------------------------------------------------------------
# Sparsification (confidence)
# ---------------------------------------------------------------------------------------
def _pixel_errors(gt: np.ndarray, pred: np.ndarray, metric: str) -> np.ndarray:
    """Per-pixel quantity whose mean (RMSE: whose mean before the square root) is the metric."""
    if metric == "abs_rel":
        return np.abs(gt - pred) / gt
    if metric == "rmse":
        return (gt - pred) ** 2
    if metric == "a1":
        return (np.maximum(gt / pred, pred / gt) >= 1.25).astype(np.float64)
    raise ValueError(f"unknown sparsification metric {metric!r}; use one of {SPARSIFICATION_METRICS}")


def _curve(errors_in_removal_order: np.ndarray, fractions: np.ndarray, metric: str) -> np.ndarray:
    """Metric of the pixels left after removing the first ``floor(x·N)`` pixels, for each x < 1; 0 at x = 1."""
    n = errors_in_removal_order.size
    suffix = np.concatenate([np.cumsum(errors_in_removal_order[::-1])[::-1], [0.0]])
    out = np.zeros(fractions.size)
    for i, x in enumerate(fractions):
        if x >= 1.0:
            out[i] = 0.0
            continue
        k = min(int(math.floor(x * n + 1e-9)), n - 1)
        value = suffix[k] / (n - k)
        out[i] = math.sqrt(max(value, 0.0)) if metric == "rmse" else value
    return out


@dataclasses.dataclass
class SparsificationResult:
    """Sparsification of one image (or the mean over images).

    Attributes
    ----------
    fractions : ``steps+1`` removed fractions ``0, 1/steps, …, 1``.
    curves : metric → ``{"model", "oracle", "random"}`` → ``steps+1`` values.
    ause, aurg : metric → area (trapezoid rule over ``fractions``).
    """

    fractions: np.ndarray
    curves: dict[str, dict[str, np.ndarray]]
    ause: dict[str, float]
    aurg: dict[str, float]

    @staticmethod
    def mean(results: Sequence[SparsificationResult]) -> SparsificationResult:
        """Average curves and areas over images."""
        if not results:
            raise ValueError("no sparsification results to average")
        first = results[0]
        curves = {
            m: {k: np.mean([r.curves[m][k] for r in results], axis=0) for k in first.curves[m]} for m in first.curves
        }
        ause = {m: float(np.mean([r.ause[m] for r in results])) for m in first.ause}
        aurg = {m: float(np.mean([r.aurg[m] for r in results])) for m in first.aurg}
        return SparsificationResult(first.fractions.copy(), curves, ause, aurg)


def _trapz(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def sparsification(
    gt: np.ndarray,
    pred: np.ndarray,
    confidence: np.ndarray,
    *,
    steps: int = 20,
    metrics: Sequence[str] = ("abs_rel", "rmse"),
    seed: int = 0,
) -> SparsificationResult:
    """Sparsification curves, AUSE and AURG of one image.

    Parameters
    ----------
    gt, pred : matching 1-D arrays of the evaluated pixels (e.g. :attr:`DepthResult.gt` and
        ``.pred``: valid, scaled, clamped).
    confidence : 1-D confidences of the same pixels (higher = more trusted); the least
        confident are removed first. Ties are broken in a fixed random order (``seed``), so a
        constant confidence behaves like random removal.
    steps : number of removal steps (the curves have ``steps + 1`` points).
    """
    gt = np.asarray(gt, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    if not (gt.size == pred.size == conf.size) or gt.size == 0:
        raise ValueError(
            f"gt, pred and confidence need the same non-zero size, got {gt.size}, {pred.size}, {conf.size}"
        )
    if steps < 1:
        raise ValueError("steps must be at least 1")
    conf = np.where(np.isfinite(conf), conf, -np.inf)
    fractions = np.arange(steps + 1, dtype=np.float64) / steps
    tie = np.random.default_rng(seed).permutation(gt.size)
    order = np.lexsort((tie, conf))  # ascending confidence: least confident first
    curves: dict[str, dict[str, np.ndarray]] = {}
    ause: dict[str, float] = {}
    aurg: dict[str, float] = {}
    for m in metrics:
        err = _pixel_errors(gt, pred, m)
        model = _curve(err[order], fractions, m)
        oracle = _curve(err[np.lexsort((tie, -err))], fractions, m)
        random = np.full(fractions.size, model[0])
        random[-1] = 0.0
        curves[m] = {"model": model, "oracle": oracle, "random": random}
        ause[m] = _trapz(model, fractions) - _trapz(oracle, fractions)
        aurg[m] = _trapz(random, fractions) - _trapz(model, fractions)
    return SparsificationResult(fractions, curves, ause, aurg)


# ---------------------------------------------------------------------------------------
# Temporal stability
# ---------------------------------------------------------------------------------------
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
    dt = _squeeze2d(depth_t, "depth_t").astype(np.float64)
    dp = _squeeze2d(depth_prev, "depth_prev").astype(np.float64)
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
    gt_t = _squeeze2d(gt_t, "gt_t").astype(np.float64)
    gt_prev = _squeeze2d(gt_prev, "gt_prev").astype(np.float64)
    h, w = gt_t.shape
    pt = resize_prediction(_squeeze2d(pred_t, "pred_t"), h, w).astype(np.float64)
    pp = resize_prediction(_squeeze2d(pred_prev, "pred_prev"), h, w).astype(np.float64)
    valid_t = valid_depth_mask(gt_t, min_depth, max_depth)
    if moving_t is not None:
        valid_t &= _squeeze2d(moving_t, "moving_t") == 0
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
            (_squeeze2d(moving_prev, "moving_prev") != 0).astype(np.float64),
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


# ---------------------------------------------------------------------------------------
# Pose ATE
# ---------------------------------------------------------------------------------------
def chain_positions(relative_poses: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Positions ``(n+1)×3`` of a snippet from ``n`` consecutive relative poses.

    ``relative_poses[i]`` is ``T_{i+1 → i}`` (4×4: maps points of camera ``i+1`` into camera
    ``i``, i.e. the pose of frame ``i+1`` seen from frame ``i``). Frame 0 is the origin.
    """
    pose = np.eye(4)
    out = [pose[:3, 3].copy()]
    for T in relative_poses:
        pose = pose @ np.asarray(T, dtype=np.float64)
        out.append(pose[:3, 3].copy())
    return np.array(out)


def snippet_ate(gt_xyz: np.ndarray, pred_xyz: np.ndarray) -> float:
    """ATE of one snippet after aligning the first frames and the least-squares scale.

    ``sqrt(Σ_i ‖s·p_i − g_i‖²) / n`` with ``s = Σ g·p / Σ p·p`` (SfMLearner's ``compute_ate``).
    """
    gt_xyz = np.asarray(gt_xyz, dtype=np.float64)
    pred_xyz = np.asarray(pred_xyz, dtype=np.float64) + (gt_xyz[0] - np.asarray(pred_xyz, dtype=np.float64)[0])
    denom = float(np.sum(pred_xyz**2))
    s = float(np.sum(gt_xyz * pred_xyz)) / denom if denom > 0 else 0.0
    return float(np.sqrt(np.sum((pred_xyz * s - gt_xyz) ** 2)) / gt_xyz.shape[0])


def pose_ate(
    gt_poses: Sequence[np.ndarray] | np.ndarray,
    pred_relative: Sequence[np.ndarray] | np.ndarray,
    snippet: int = 5,
) -> dict[str, float]:
    """ATE over all full ``snippet``-frame windows of a sequence.

    Parameters
    ----------
    gt_poses : ``N×4×4`` ground-truth camera poses ``T_cam_to_world``.
    pred_relative : ``(N−1)×4×4`` predicted ``T_{i+1 → i}`` between consecutive frames (as
        in :func:`chain_positions`; from ours, ``T_{i+1→i} = relative_pose(T_{i+1}, T_i)``).
    snippet : frames per window (5 in the SfMLearner/monodepth2 protocol).

    Returns
    -------
    ``{"ate_mean", "ate_std", "n_snippets"}``.
    """
    gt = np.asarray(gt_poses, dtype=np.float64)
    pred = np.asarray(pred_relative, dtype=np.float64)
    if gt.ndim != 3 or gt.shape[1:] != (4, 4) or pred.shape != (gt.shape[0] - 1, 4, 4):
        raise ValueError(f"need N×4×4 GT poses and (N−1)×4×4 relative predictions, got {gt.shape} and {pred.shape}")
    gt_rel = np.array([np.linalg.inv(gt[i]) @ gt[i + 1] for i in range(gt.shape[0] - 1)])
    ates = []
    for i in range(0, gt.shape[0] - snippet + 1):
        ates.append(
            snippet_ate(chain_positions(gt_rel[i : i + snippet - 1]), chain_positions(pred[i : i + snippet - 1]))
        )
    if not ates:
        raise ValueError(f"sequence of {gt.shape[0]} frames is shorter than one {snippet}-frame snippet")
    return {"ate_mean": float(np.mean(ates)), "ate_std": float(np.std(ates)), "n_snippets": len(ates)}


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
class EvaluationReport:
    """Accumulates per-image results and summarises them.

    Parameters
    ----------
    min_depth, max_depth : GT validity range and prediction clamp.
    garg_crop : apply the Garg crop; None = apply it to KITTI-shaped GT (:func:`is_kitti_shaped`).
    metric_scale : also evaluate without median scaling, multiplying by this factor (1.0 for
        a model whose depth is already metric; None to skip).
    steps : sparsification steps.

    Examples
    --------
    >>> report = EvaluationReport()
    >>> for frame, (depth, conf) in zip(frames, predictions):     # doctest: +SKIP
    ...     report.add(depth, frame.gt_depth, confidence=conf)
    >>> print(format_depth_table(report.summary()))               # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        min_depth: float = MIN_DEPTH,
        max_depth: float = MAX_DEPTH,
        garg_crop: bool | None = False,
        metric_scale: float | None = 1.0,
        steps: int = 20,
        sparsification_metrics: Sequence[str] = ("abs_rel", "rmse"),
    ) -> None:
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.garg_crop = garg_crop
        self.metric_scale = metric_scale
        self.steps = steps
        self.sparsification_metrics = tuple(sparsification_metrics)
        self.scaled: list[dict[str, float]] = []
        self.metric: list[dict[str, float]] = []
        self.ratios: list[float] = []
        self.sparse: list[SparsificationResult] = []
        self.temporal: list[dict[str, float]] = []
        self.pose: dict[str, float] | None = None
        self.skipped = 0

    def add(self, pred: Any, gt: Any, confidence: Any = None, mask: np.ndarray | None = None) -> DepthResult | None:
        """Evaluate one image (shapes as :func:`evaluate_depth`; ``confidence`` like ``pred``)."""
        gt2 = _squeeze2d(gt, "gt")
        crop = is_kitti_shaped(*gt2.shape) if self.garg_crop is None else self.garg_crop
        kw = {"min_depth": self.min_depth, "max_depth": self.max_depth, "garg_crop": crop, "mask": mask}
        res = evaluate_depth(pred, gt2, median_scaling=True, **kw)
        if res is None:
            self.skipped += 1
            return None
        self.scaled.append(res.metrics)
        self.ratios.append(res.scale)
        if self.metric_scale is not None:
            met = evaluate_depth(pred, gt2, median_scaling=False, scale=self.metric_scale, **kw)
            if met is not None:
                self.metric.append(met.metrics)
        if confidence is not None:
            conf = _resize_map(_squeeze2d(confidence, "confidence"), *gt2.shape)[res.valid]
            self.sparse.append(
                sparsification(res.gt, res.pred, conf, steps=self.steps, metrics=self.sparsification_metrics)
            )
        return res

    def add_temporal(self, result: dict[str, float] | None) -> None:
        """Record one :func:`temporal_stability` result (None is ignored)."""
        if result is not None:
            self.temporal.append(result)

    def set_pose(self, result: dict[str, float]) -> None:
        """Record the :func:`pose_ate` result."""
        self.pose = dict(result)

    def sparsification_mean(self) -> SparsificationResult | None:
        return SparsificationResult.mean(self.sparse) if self.sparse else None

    def summary(self) -> dict[str, Any]:
        """Means over images, JSON-ready.

        Keys: ``n_images``, ``n_skipped``, ``median_scaled`` (metrics), ``scale_ratio``
        (``median``, ``std`` of the per-image median ratios), ``metric_scale`` (metrics without
        median scaling, or None), ``confidence`` (``{"ause": {...}, "aurg": {...}}`` or None),
        ``temporal`` (``{"pred", "gt", "ratio", "n_pairs"}`` or None), ``pose`` (or None).
        """

        def mean(rows: list[dict[str, float]]) -> dict[str, float] | None:
            return {k: float(np.mean([r[k] for r in rows])) for k in DEPTH_METRICS} if rows else None

        sp = self.sparsification_mean()
        temporal = None
        if self.temporal:
            p = float(np.mean([r["pred"] for r in self.temporal]))
            g = float(np.mean([r["gt"] for r in self.temporal]))
            temporal = {"pred": p, "gt": g, "ratio": p / g if g > 0 else float("inf"), "n_pairs": len(self.temporal)}
        ratios = np.array(self.ratios)
        return {
            "n_images": len(self.scaled),
            "n_skipped": self.skipped,
            "median_scaled": mean(self.scaled),
            "scale_ratio": (
                {"median": float(np.median(ratios)), "std": float(np.std(ratios / np.median(ratios)))}
                if ratios.size
                else None
            ),
            "metric_scale": mean(self.metric),
            "confidence": ({"ause": sp.ause, "aurg": sp.aurg, "steps": self.steps} if sp else None),
            "temporal": temporal,
            "pose": self.pose,
        }

    def write_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`summary` (and the mean sparsification curves) as JSON."""
        data = self.summary()
        sp = self.sparsification_mean()
        if sp is not None:
            data["sparsification_curves"] = {
                "fractions": sp.fractions.tolist(),
                "curves": {m: {k: v.tolist() for k, v in c.items()} for m, c in sp.curves.items()},
            }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")


def format_depth_table(summary: Mapping[str, Any]) -> str:
    """Human-readable tables of an :meth:`EvaluationReport.summary`."""
    lines = [f"images: {summary['n_images']} (skipped without valid GT: {summary['n_skipped']})"]
    header = " | ".join(f"{m:>8}" for m in DEPTH_METRICS)
    for key, title in (("median_scaled", "median-scaled"), ("metric_scale", "without median scaling")):
        rows = summary.get(key)
        if rows:
            lines += [f"\n{title}", header, " | ".join(f"{rows[m]:8.4f}" for m in DEPTH_METRICS)]
    if summary.get("scale_ratio"):
        sr = summary["scale_ratio"]
        lines.append(f"scale ratio: median {sr['median']:.4f}, std {sr['std']:.4f}")
    conf = summary.get("confidence")
    if conf:
        lines.append(f"\nconfidence (sparsification, {conf['steps']} steps)")
        for m in conf["ause"]:
            lines.append(f"  {m:>8}: AUSE {conf['ause'][m]:.4f}  AURG {conf['aurg'][m]:.4f}")
    tmp = summary.get("temporal")
    if tmp:
        lines.append(
            f"\ntemporal stability (mean |ẑ−d̂|/d̂, static pixels): prediction {tmp['pred']:.4f}, "
            f"ground truth {tmp['gt']:.4f}, ratio {tmp['ratio']:.2f} over {tmp['n_pairs']} pairs"
        )
    pose = summary.get("pose")
    if pose:
        lines.append(
            f"\npose ATE (5-frame snippets): {pose['ate_mean']:.4f} ± {pose['ate_std']:.4f} over {pose['n_snippets']}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Pictures (OpenCV only)
# ---------------------------------------------------------------------------------------
def colorize_inverse_depth(
    depth: np.ndarray, vmax_percentile: float = 95.0, colormap: int = cv2.COLORMAP_MAGMA
) -> np.ndarray:
    """``H×W×3`` uint8 RGB of the inverse depth (near = bright).

    Normalised to ``[min, percentile]`` of the valid inverse depths; invalid pixels are black.
    """
    depth = _squeeze2d(depth, "depth").astype(np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    inv = np.zeros_like(depth)
    inv[valid] = 1.0 / depth[valid]
    if valid.any():
        lo = float(inv[valid].min())
        hi = float(np.percentile(inv[valid], vmax_percentile))
        norm = np.clip((inv - lo) / max(hi - lo, 1e-12), 0, 1)
    else:
        norm = inv
    out = cv2.applyColorMap((norm * 255).astype(np.uint8), colormap)
    out[~valid] = 0
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def colorize_confidence(confidence: np.ndarray, colormap: int = cv2.COLORMAP_VIRIDIS) -> np.ndarray:
    """``H×W×3`` uint8 RGB of a confidence map in [0, 1] (NaN black)."""
    conf = _squeeze2d(confidence, "confidence").astype(np.float32)
    valid = np.isfinite(conf)
    u8 = (np.clip(np.where(valid, conf, 0), 0, 1) * 255).astype(np.uint8)
    out = cv2.applyColorMap(u8, colormap)
    out[~valid] = 0
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def _as_rgb_u8(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3:
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image)


def make_mosaic(
    image: Any, depth: np.ndarray, confidence: np.ndarray | None = None, vertical: bool | None = None
) -> np.ndarray:
    """Image | colourised inverse depth | confidence, as one ``RGB`` uint8 array.

    ``image`` is ``H×W×3`` uint8 or float ``3×H×W`` in [0, 1]; the maps are resized to it.
    ``vertical`` stacks the panels top to bottom (default: for images wider than 2:1).
    """
    rgb = _as_rgb_u8(image)
    h, w = rgb.shape[:2]

    def fit(panel: np.ndarray) -> np.ndarray:
        return panel if panel.shape[:2] == (h, w) else cv2.resize(panel, (w, h), interpolation=cv2.INTER_NEAREST)

    panels = [rgb, fit(colorize_inverse_depth(depth))]
    if confidence is not None:
        panels.append(fit(colorize_confidence(confidence)))
    if vertical is None:
        vertical = w > 2 * h
    return np.concatenate(panels, axis=0 if vertical else 1)


_PLOT_COLOURS = {"model": (31, 119, 180), "oracle": (44, 160, 44), "random": (214, 39, 40)}


def draw_sparsification_plot(
    fractions: np.ndarray,
    curves: Mapping[str, np.ndarray],
    title: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (640, 480),
) -> np.ndarray:
    """A line plot (``RGB`` uint8, ``size = (width, height)``) of curves over removed fractions."""
    width, height = size
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 40, 50
    pw, ph = width - left - right, height - top - bottom
    ys = np.concatenate([np.asarray(c, dtype=np.float64) for c in curves.values()]) if curves else np.zeros(1)
    ys = ys[np.isfinite(ys)]
    ymax = float(ys.max()) if ys.size and ys.max() > 0 else 1.0
    ymax *= 1.05
    font = cv2.FONT_HERSHEY_SIMPLEX

    def to_px(x: float, y: float) -> tuple[int, int]:
        return int(round(left + x * pw)), int(round(top + ph - (y / ymax) * ph))

    for i in range(6):  # grid and ticks
        x = i / 5
        px, _ = to_px(x, 0)
        cv2.line(img, (px, top), (px, top + ph), (225, 225, 225), 1)
        cv2.putText(img, f"{x:.1f}", (px - 12, top + ph + 18), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        y = ymax * i / 5
        _, py = to_px(0, y)
        cv2.line(img, (left, py), (left + pw, py), (225, 225, 225), 1)
        cv2.putText(img, f"{y:.3g}", (5, py + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    cv2.putText(img, "fraction of pixels removed", (left + pw // 2 - 95, height - 12), font, 0.45, (0, 0, 0), 1)
    if ylabel:
        cv2.putText(img, ylabel, (5, top - 10), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if title:
        cv2.putText(img, title, (left + 60, 25), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    extra = [(0, 0, 0), (148, 103, 189), (255, 127, 14), (140, 86, 75)]
    for k, (name, values) in enumerate(curves.items()):
        colour = _PLOT_COLOURS.get(name, extra[k % len(extra)])
        pts = np.array([to_px(float(x), float(y)) for x, y in zip(fractions, values) if np.isfinite(y)], np.int32)
        if len(pts) > 1:
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        ly = top + 18 + 18 * k
        cv2.line(img, (left + pw - 130, ly - 4), (left + pw - 105, ly - 4), colour, 2)
        cv2.putText(img, name, (left + pw - 100, ly), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an ``RGB`` uint8 image as PNG (creating the folder)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    if not cv2.imwrite(path, bgr):
        raise OSError(f"could not write {path}")


def save_mosaic(
    path: str | os.PathLike, image: Any, depth: np.ndarray, confidence: np.ndarray | None = None
) -> np.ndarray:
    """Write :func:`make_mosaic` as a PNG and return it."""
    mosaic = make_mosaic(image, depth, confidence)
    save_png(path, mosaic)
    return mosaic


def save_sparsification_plot(
    path: str | os.PathLike, result: SparsificationResult, metric: str = "abs_rel", title: str | None = None
) -> np.ndarray:
    """Write the model/oracle/random sparsification curves of ``metric`` as a PNG and return it."""
    if metric not in result.curves:
        raise ValueError(f"no {metric!r} curves; have {sorted(result.curves)}")
    if title is None:
        title = f"{metric}: AUSE {result.ause[metric]:.4f}  AURG {result.aurg[metric]:.4f}"
    img = draw_sparsification_plot(result.fractions, result.curves[metric], title=title, ylabel=metric)
    save_png(path, img)
    return img
