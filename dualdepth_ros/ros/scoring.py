"""The evaluation code the ROS side reuses, imported in this one place.

``dualdepth infer --gt-depth-topic``, ``dualdepth demo``, the node's preview image and the
tests score and draw with the package's evaluation helpers (:mod:`dualdepth_ros.evaluation`:
the report, its tables, the ground-truth grid map, the colourisers and the mosaic). They are
re-exported from here so the rest of ``dualdepth_ros.ros`` never names the evaluation package
(it imports torch: import this module lazily, only where scoring or pictures are needed).

:class:`GroundTruthScorer` scores *published* depth maps as ``dualdepth eval`` scores the
network's: against the ground truth on its own grid (the rectified camera image at full
resolution), the prediction carried there by a :class:`~dualdepth_ros.evaluation.GridMap`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..evaluation import (
    EvaluationReport,
    Example,
    GridMap,
    colorize_confidence,
    colorize_inverse_depth,
    format_evaluation,
    make_mosaic,
    mosaic_rows,
    save_png,
)
from ..images import decode_image

__all__ = [
    "GroundTruthScorer",
    "EvaluationReport",
    "Example",
    "GridMap",
    "colorize_confidence",
    "colorize_inverse_depth",
    "format_evaluation",
    "make_mosaic",
    "mosaic_rows",
    "save_png",
]


def depth_metres(msg_or_array: Any) -> np.ndarray:
    """A ground-truth depth map in metres: ``16UC1``/``mono16`` are millimetres (REP 118), floats metres."""
    arr = msg_or_array if isinstance(msg_or_array, np.ndarray) else decode_image(msg_or_array)
    if arr.ndim == 3:
        arr = arr[:, :, 0]
    return arr.astype(np.float32) / 1000.0 if arr.dtype == np.uint16 else arr.astype(np.float32)


class GroundTruthScorer:
    """Accumulates published depths against ground-truth depth messages.

    Parameters
    ----------
    preprocessor : the model's :class:`~dualdepth_ros.preprocess.Preprocessor` (gives the
        ground truth's grid and the published one for each CameraInfo).
    metric : also score without median scaling (the published depth is in metres).

    Published NaN pixels (invalid) are not scored; everything else follows ``dualdepth eval``.
    """

    def __init__(self, preprocessor: Any, metric: bool) -> None:
        self.pre = preprocessor
        self.report = EvaluationReport(metric_scale=1.0 if metric else None)
        self._grids: dict[tuple, GridMap] = {}

    def add(self, depth: np.ndarray, confidence: np.ndarray | None, gt: Any, info: Any) -> Any:
        """Score one published ``h×w`` depth (and confidence) against a GT depth message or array.

        ``gt`` lies on the rectified camera image's grid (as ``dualdepth eval`` assumes);
        ``info`` is the image's CameraInfo. Returns the evaluation's per-image result (or None).
        """
        native = self.pre.prepare_map(depth_metres(gt), info, full_size=True).astype(np.float32)
        k_gt, k_pred = self.pre.source_intrinsics(info), self.pre.output_intrinsics(info)
        key = (k_gt.as_tuple(), k_pred.as_tuple())
        grid = self._grids.get(key)
        if grid is None:
            grid = self._grids[key] = GridMap.between(k_gt, k_pred)
        published = grid.sample(np.isfinite(depth).astype(np.float64), "nearest") > 0.5
        return self.report.add(depth, native, confidence=confidence, mask=published, grid=grid)

    def summary(self) -> dict[str, Any]:
        return self.report.summary()
