"""Text and JSON presentation of evaluation results (monodepth2's table layout, method.md §8)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import DEPTH_METRICS

__all__ = ["METRIC_TITLES", "format_evaluation", "format_protocol", "json_ready"]

#: Column titles of the depth table (``DEPTH_METRICS`` order).
METRIC_TITLES = ("AbsRel", "SqRel", "RMSE", "RMSE log", "δ<1.25", "δ<1.25²", "δ<1.25³")


def _row(title: str, metrics: Mapping[str, float], width: int) -> str:
    return f"{title:<{width}}" + "".join(f"{metrics[m]:>10.4f}" for m in DEPTH_METRICS)


def _span(pair: list[int] | None) -> str:
    return f"{pair[0]}-{pair[1]}" if pair else "none"


def format_protocol(summary: Mapping[str, Any]) -> str:
    """What was scored, in words: the protocol, the grid, the region the network saw, the upsampling."""
    proto = summary.get("protocol")
    if not proto:
        return ""
    protos = proto.get("mixed", [proto])
    lines = []
    for p in protos:
        region = "Garg crop" if p.get("crop") == "garg" else "full image"
        why = f"; {p['reason']}" if p.get("reason") else ""
        lines.append(f"protocol: {p['name']} ({region}, depth {p['min_depth']:g}-{p['max_depth']:g} m{why})")
    cov = summary.get("gt_coverage")
    if cov:
        w, h = cov.get("gt_size") or ("?", "?")
        points = summary.get("gt_points")
        per = f", {points:.0f} points per image on average" if points is not None else ""
        lines.append(
            f"scored on the ground truth's own {w}x{h} grid: every valid point inside the region the network saw "
            f"(columns {_span(cov.get('columns'))}, rows {_span(cov.get('rows'))}: {100 * cov['fraction']:.0f}% "
            f"of the grid){per}; the prediction is upsampled to it by "
            + (
                "bilinear interpolation of inverse depth"
                if summary.get("interpolation", "bilinear") == "bilinear"
                else "nearest neighbour"
            )
        )
    return "\n".join(lines)


def format_evaluation(summary: Mapping[str, Any]) -> str:
    """The tables of an evaluation summary (``EvaluationResult.summary`` or ``EvaluationReport.summary``)."""
    n_frames = summary.get("n_frames", summary["n_images"] + summary["n_skipped"])
    lines = [f"frames: {n_frames}, scored: {summary['n_images']}, skipped (no valid GT depth): {summary['n_skipped']}"]
    if summary.get("depth_absent"):
        lines.append(f"depth metrics: none — {summary['depth_absent']}")
    protocol = format_protocol(summary)
    if protocol:
        lines.append(protocol)
    rows: list[tuple[str, Mapping[str, float]]] = []
    if summary.get("median_scaled"):
        rows.append(("fused, median-scaled", summary["median_scaled"]))
    if summary.get("metric_scale"):
        factor = summary.get("metric_scale_factor")
        rows.append(
            (f"fused, × {factor:g} (no median)" if factor else "fused, no median scaling", summary["metric_scale"])
        )
    for b, metrics in (summary.get("branches") or {}).items():
        if metrics:
            rows.append((f"branch {b}, median-scaled", metrics))
    if rows:
        width = max(len(t) for t, _ in rows) + 2
        lines += ["", " " * width + "".join(f"{t:>10}" for t in METRIC_TITLES)]
        lines += [_row(t, m, width) for t, m in rows]
    sr = summary.get("scale_ratio")
    if sr:
        lines.append(f"median scale gt/pred: {sr['median']:.4f} (relative std over frames {sr['std']:.4f})")
    conf = summary.get("confidence")
    if conf:
        lines += ["", f"confidence (sparsification, {conf['steps']} steps)"]
        ratio = conf.get("aurg_ratio") or {}
        for m in conf["ause"]:
            r = ratio.get(m)
            tail = f"  AURG/(AURG+AUSE) {r:.3f}" if r is not None else ""
            lines.append(f"  {m:>8}: AUSE {conf['ause'][m]:.4f}  AURG {conf['aurg'][m]:.4f}{tail}")
    tmp = summary.get("temporal")
    if tmp:
        lines += [
            "",
            f"temporal stability (mean |ẑ−d̂|/d̂ on static pixels at the network's resolution, {tmp['n_pairs']} pairs): "
            f"prediction {tmp['pred']:.4f}, GT floor {tmp['gt']:.4f}, ratio {tmp['ratio']:.2f}",
        ]
    pose = summary.get("pose")
    if pose:
        lines += [
            "",
            f"pose ATE (5-frame snippets, scale-aligned, {pose['n_snippets']} snippets): "
            f"{pose['ate_mean']:.4f} ± {pose['ate_std']:.4f} m",
        ]
    elif summary.get("pose_absent"):
        lines += ["", f"pose ATE: none — {summary['pose_absent']}"]
    return "\n".join(lines)


def json_ready(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
