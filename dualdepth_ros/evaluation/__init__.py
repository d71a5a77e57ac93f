"""Evaluation of depth models (``docs/method.md`` §8): one module per job.

================== ==========================================================================
module             job
================== ==========================================================================
``protocols``      named protocols (``kitti``: Eigen/Garg crop, 1e-3–80 m; ``dense``; ``auto``)
``grid``           the prediction carried onto the ground truth's own grid (inverse of the
                   resize/crop, through the intrinsics)
``metrics``        the seven depth metrics of one image, median or metric scaling
``sparsification`` confidence: sparsification curves, AUSE, AURG
``temporal``       temporal stability of consecutive predictions
``pose``           the PoseNet over a sequence, ATE on 5-frame snippets
``report``         per-image results accumulated into one summary
``sequence``       the loop: a model over frames in order (``evaluate_sequence``)
``tables``         text tables and JSON
``plots``          the one depth colouriser, mosaics, sparsification plots
``reference``      the constant-depth reference network
``cli``            ``dualdepth eval``
================== ==========================================================================

The photometric floor (``dualdepth eval --photometric-floor``) is loss code and lives in
:mod:`dualdepth_ros.training.floor`.
"""

from .grid import INTERPOLATIONS, GridMap, resize_prediction
from .metrics import (
    DEPTH_METRICS,
    MAX_DEPTH,
    MIN_DEPTH,
    DepthResult,
    as_map,
    compute_depth_errors,
    evaluate_depth,
    valid_depth_mask,
)
from .plots import (
    MOSAIC_MIN_PANEL_WIDTH,
    colorize_confidence,
    colorize_inverse_depth,
    draw_sparsification_plot,
    make_mosaic,
    mosaic_rows,
    save_mosaic,
    save_png,
    save_sparsification_plot,
)
from .pose import RelativePoses, chain_positions, pose_ate, relative_poses, snippet_ate
from .protocols import PROTOCOL_NAMES, Protocol, garg_crop_mask, is_kitti_shaped, resolve_protocol
from .reference import ConstantDepthNet
from .report import EvaluationReport
from .sequence import EvaluationResult, Example, evaluate_sequence
from .sparsification import SPARSIFICATION_METRICS, SparsificationResult, pixel_errors, sparsification
from .tables import METRIC_TITLES, format_evaluation, json_ready
from .temporal import temporal_difference, temporal_stability

__all__ = [
    "ConstantDepthNet",
    "DEPTH_METRICS",
    "DepthResult",
    "EvaluationReport",
    "EvaluationResult",
    "Example",
    "GridMap",
    "INTERPOLATIONS",
    "MAX_DEPTH",
    "METRIC_TITLES",
    "MIN_DEPTH",
    "MOSAIC_MIN_PANEL_WIDTH",
    "PROTOCOL_NAMES",
    "Protocol",
    "RelativePoses",
    "SPARSIFICATION_METRICS",
    "SparsificationResult",
    "as_map",
    "chain_positions",
    "colorize_confidence",
    "colorize_inverse_depth",
    "compute_depth_errors",
    "draw_sparsification_plot",
    "evaluate_depth",
    "evaluate_sequence",
    "format_evaluation",
    "garg_crop_mask",
    "is_kitti_shaped",
    "json_ready",
    "make_mosaic",
    "mosaic_rows",
    "pixel_errors",
    "pose_ate",
    "relative_poses",
    "resize_prediction",
    "resolve_protocol",
    "save_mosaic",
    "save_png",
    "save_sparsification_plot",
    "snippet_ate",
    "sparsification",
    "temporal_difference",
    "temporal_stability",
    "valid_depth_mask",
]
