"""Accumulating per-image results into one report (:class:`EvaluationReport`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .grid import INTERPOLATIONS, GridMap
from .metrics import DEPTH_METRICS, DepthResult, as_map, evaluate_depth
from .protocols import Protocol, resolve_protocol
from .sparsification import SparsificationResult, sparsification

__all__ = ["EvaluationReport"]


class EvaluationReport:
    """Accumulates per-image results and summarises them.

    Parameters
    ----------
    protocol : ``"auto"``, ``"kitti"``, ``"dense"`` or a :class:`~.protocols.Protocol`;
        ``"auto"`` is resolved from each ground-truth image's shape
        (:func:`~.protocols.resolve_protocol`).
    max_depth : the ``dense`` protocol's cap (default 80 m).
    interpolation : how the prediction reaches the ground truth's grid (``"bilinear"`` of
        inverse depth, or ``"nearest"``; :mod:`.grid`).
    metric_scale : also evaluate without median scaling, multiplying by this factor (1.0 for
        a model whose depth is already metric; None to skip).
    steps : sparsification steps.

    Examples
    --------
    >>> report = EvaluationReport(protocol="kitti")
    >>> for frame, (depth, conf) in zip(frames, predictions):     # doctest: +SKIP
    ...     report.add(depth, frame.gt_depth_native, confidence=conf, grid=grid)
    >>> print(format_depth_table(report.summary()))               # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        protocol: str | Protocol = "auto",
        max_depth: float | None = None,
        interpolation: str = "bilinear",
        metric_scale: float | None = 1.0,
        steps: int = 20,
        sparsification_metrics: Sequence[str] = ("abs_rel", "rmse"),
    ) -> None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {interpolation!r}")
        resolve_protocol(protocol, 1, 1, max_depth)  # fail early on a bad name or combination
        self.protocol = protocol
        self.max_depth = max_depth
        self.interpolation = interpolation
        self.metric_scale = metric_scale
        self.steps = steps
        self.sparsification_metrics = tuple(sparsification_metrics)
        self.scaled: list[dict[str, float]] = []
        self.metric: list[dict[str, float]] = []
        self.ratios: list[float] = []
        self.n_points: list[int] = []
        self.coverage: list[dict[str, Any]] = []
        self.sparse: list[SparsificationResult] = []
        self.temporal: list[dict[str, float]] = []
        self.pose: dict[str, float] | None = None
        self.skipped = 0
        self.protocols: dict[tuple[int, int], Protocol] = {}
        self._resize_grids: dict[tuple[int, ...], GridMap] = {}

    def protocol_for(self, height: int, width: int, valid_fraction: float | None = None) -> Protocol:
        """The protocol used for ground truth of ``height × width`` (resolved once per shape, on its first image)."""
        key = (int(height), int(width))
        if key not in self.protocols:
            self.protocols[key] = resolve_protocol(self.protocol, height, width, self.max_depth, valid_fraction)
        return self.protocols[key]

    def add(
        self,
        pred: Any,
        gt: Any,
        confidence: Any = None,
        mask: np.ndarray | None = None,
        grid: GridMap | None = None,
    ) -> DepthResult | None:
        """Evaluate one image.

        Parameters
        ----------
        pred, confidence : ``h×w`` maps on the network's grid.
        gt : ``H×W`` ground truth, metres, on its own grid.
        mask : optional ``H×W`` bool of pixels to score.
        grid : ``gt``'s pixels in ``pred``'s grid (:class:`~.grid.GridMap`); None when the
            prediction shows the whole ground-truth image (a plain resize).
        """
        gt2 = as_map(gt, "gt")
        pred2 = as_map(pred, "pred")
        if grid is None:
            key = (*gt2.shape, *pred2.shape)
            if key not in self._resize_grids:
                self._resize_grids[key] = GridMap.resize(*key)
            grid = self._resize_grids[key]
        proto = self.protocol_for(*gt2.shape, valid_fraction=float(np.mean(np.isfinite(gt2) & (gt2 > 0))))
        kw = {
            "grid": grid,
            "interpolation": self.interpolation,
            "min_depth": proto.min_depth,
            "max_depth": proto.max_depth,
            "garg_crop": proto.garg_crop,
            "mask": mask,
        }
        res = evaluate_depth(pred2, gt2, median_scaling=True, **kw)
        if res is None:
            self.skipped += 1
            return None
        self.scaled.append(res.metrics)
        self.ratios.append(res.scale)
        self.n_points.append(res.n_valid)
        self.coverage.append({**grid.coverage(), "gt_size": [gt2.shape[1], gt2.shape[0]]})
        if self.metric_scale is not None:
            met = evaluate_depth(pred2, gt2, median_scaling=False, scale=self.metric_scale, **kw)
            if met is not None:
                self.metric.append(met.metrics)
        if confidence is not None:
            conf = grid.sample(as_map(confidence, "confidence"), "bilinear", where=res.valid)
            self.sparse.append(
                sparsification(res.gt, res.pred, conf, steps=self.steps, metrics=self.sparsification_metrics)
            )
        return res

    def add_temporal(self, result: dict[str, float] | None) -> None:
        """Record one :func:`~.temporal.temporal_stability` result (None is ignored)."""
        if result is not None:
            self.temporal.append(result)

    def set_pose(self, result: dict[str, float]) -> None:
        """Record the :func:`~.pose.pose_ate` result."""
        self.pose = dict(result)

    def sparsification_mean(self) -> SparsificationResult | None:
        """The mean sparsification over the images (None without confidence)."""
        return SparsificationResult.mean(self.sparse) if self.sparse else None

    def protocol_summary(self) -> dict[str, Any] | None:
        """The protocol as JSON (``Protocol.as_dict``); with several GT shapes, ``{"mixed": [...]}``."""
        used = {p.as_dict()["name"] + p.reason: p for p in self.protocols.values()}
        if not used:
            return None
        if len(used) == 1:
            return next(iter(used.values())).as_dict()
        return {"mixed": [p.as_dict() for p in used.values()]}

    def summary(self) -> dict[str, Any]:
        """Means over images, JSON-ready.

        Keys: ``n_images``, ``n_skipped``, ``protocol`` (:meth:`protocol_summary`),
        ``interpolation``, ``gt_points`` (mean scored ground-truth points per image),
        ``gt_coverage`` (the share of the ground-truth grid the network saw, and its rows and
        columns), ``median_scaled`` (metrics), ``scale_ratio`` (``median``, ``std`` of the
        per-image median ratios), ``metric_scale`` (metrics without median scaling, or None),
        ``confidence`` (``{"ause": {...}, "aurg": {...}}`` or None), ``temporal`` (``{"pred",
        "gt", "ratio", "n_pairs"}`` or None), ``pose`` (or None).
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
        coverage = None
        if self.coverage:
            coverage = dict(self.coverage[0])
            coverage["fraction"] = float(np.mean([c["fraction"] for c in self.coverage]))
        return {
            "n_images": len(self.scaled),
            "n_skipped": self.skipped,
            "protocol": self.protocol_summary(),
            "interpolation": self.interpolation,
            "gt_points": float(np.mean(self.n_points)) if self.n_points else None,
            "gt_coverage": coverage,
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
