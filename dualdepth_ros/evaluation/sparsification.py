"""Confidence evaluation: sparsification curves, AUSE and AURG.

Poggi et al., *On the uncertainty of self-supervised monocular depth estimation* (CVPR 2020):
remove the least confident fraction ``x`` of the valid pixels, ``x = 0, 1/steps, …,
(steps−1)/steps``, recompute the metric on the rest; the curve ends with 0 at ``x = 1``. The
oracle removes pixels by true error, the random curve is the expectation of random removal
(the full-image metric). AUSE = area(model) − area(oracle); AURG = area(random) −
area(model) (positive: the confidence helps), both by the trapezoid rule, per image then
averaged. Poggi's code integrates the random curve without the final 0; its AURG equals ours
plus ``metric / (2·steps)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["SPARSIFICATION_METRICS", "SparsificationResult", "pixel_errors", "sparsification"]

#: Metrics a sparsification curve can track (``a1`` here is the outlier rate ``1 − δ<1.25``).
SPARSIFICATION_METRICS = ("abs_rel", "rmse", "a1")


def pixel_errors(gt: np.ndarray, pred: np.ndarray, metric: str) -> np.ndarray:
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
        err = pixel_errors(gt, pred, m)
        model = _curve(err[order], fractions, m)
        oracle = _curve(err[np.lexsort((tie, -err))], fractions, m)
        random = np.full(fractions.size, model[0])
        random[-1] = 0.0
        curves[m] = {"model": model, "oracle": oracle, "random": random}
        ause[m] = _trapz(model, fractions) - _trapz(oracle, fractions)
        aurg[m] = _trapz(random, fractions) - _trapz(model, fractions)
    return SparsificationResult(fractions, curves, ause, aurg)
