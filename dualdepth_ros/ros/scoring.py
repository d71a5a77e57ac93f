"""The evaluation code the ROS side reuses, imported in this one place.

``dualdepth infer --gt-depth-topic``, ``dualdepth demo``, the node's preview image and the
tests score and draw with the package's evaluation helpers (median-scaled and metric depth
metrics, the colourisers, the mosaic and ``dualdepth eval``'s mosaic rows). They are
re-exported from here so the rest of ``dualdepth_ros.ros`` never names the evaluation modules
(they import torch: import this module lazily, only where scoring or pictures are needed).
"""

from __future__ import annotations

from ..evaluate import Example, mosaic_rows
from ..evaluation import (
    EvaluationReport,
    colorize_confidence,
    colorize_inverse_depth,
    evaluate_depth,
    format_depth_table,
    make_mosaic,
    save_png,
)

__all__ = [
    "Example",
    "mosaic_rows",
    "EvaluationReport",
    "colorize_confidence",
    "colorize_inverse_depth",
    "evaluate_depth",
    "format_depth_table",
    "make_mosaic",
    "save_png",
]
