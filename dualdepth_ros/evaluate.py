"""``dualdepth eval``: score a checkpoint on bags with ground truth (``docs/method.md`` §8).

Two layers:

* :func:`evaluate_sequence` — the model over frames in order → an :class:`EvaluationResult`
  (an :class:`~dualdepth_ros.evaluation.EvaluationReport` plus a few example frames). No CLI,
  no files; the trainer's validation calls it with its own (training-mode) model.
* :func:`run` — the command: rebuild the model and its input pipeline from the checkpoint,
  read the bags, print the tables, write JSON and pictures.

What is measured, per frame ``t`` (maths in :mod:`dualdepth_ros.evaluation`):

* **depth** — the fused depth ``("depth_fused", 0)`` against the GT depth, median-scaled, and,
  with ``metric_scale``, multiplied by that factor instead; each branch ``("depth", b, 0)``
  median-scaled as well (two-branch models), to show what the fusion adds;
* **confidence** — ``("conf_fused", 0)`` ranks the pixels of the sparsification curves
  (AUSE/AURG for AbsRel and RMSE); skipped for a model without a confidence head;
* **temporal stability** — ``D_t`` against ``D_{t−1}`` moved by the GT pose, static pixels
  only (moving masks of both frames), the prediction pair scaled by one factor
  ``median(gt_t)/median(pred_t)``; needs GT depth and GT pose in both frames;
* **pose** — the PoseNet between consecutive frames gives ``T_{t→t−1}`` (the network is
  run the way :class:`~dualdepth_ros.networks.DepthModel` runs it in training: a pair
  ``(I_{t−1}, I_t)`` gives ``T_{t−1→t}``, which is inverted; a clip PoseNet sees a window
  whose anchor is ``t`` where possible), scored by ATE on 5-frame snippets where the GT poses
  are known.

GT depth, masks and intrinsics are those of the data pipeline: resampled to the network input
size (nearest neighbour), so the prediction is scored at the input resolution.

Frames of several bags can be chained into one iterable: a new *segment* starts whenever a
frame does not directly follow the previous one (its ``index`` is not the previous ``index +
1``, its stamp does not increase, or its ``frame_id`` changes). Temporal pairs and pose
snippets never cross a segment boundary.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DualDepthError
from .evaluation import (
    DEPTH_METRICS,
    EvaluationReport,
    make_mosaic,
    pose_ate,
    save_png,
    save_sparsification_plot,
    temporal_stability,
)
from .geometry import invert_pose, pose_vec_to_mat

__all__ = [
    "ConstantDepthNet",
    "photometric_floor",
    "Example",
    "EvaluationResult",
    "evaluate_sequence",
    "relative_poses",
    "resolve_gt_topics",
    "format_evaluation",
    "mosaic_rows",
    "add_arguments",
    "run",
]

#: Topic names used when present and no other is given (``dualdepth make-sample`` records them).
DEFAULT_GT_TOPICS = {"gt_depth": "/gt/depth", "gt_pose": "/gt/pose", "gt_moving_mask": "/gt/moving_mask"}
#: Image encodings of a depth map (auto-detection of the GT depth topic).
DEPTH_ENCODINGS = ("32FC1", "16UC1", "64FC1")
#: Column titles of the depth table (``DEPTH_METRICS`` order).
METRIC_TITLES = ("AbsRel", "SqRel", "RMSE", "RMSE log", "δ<1.25", "δ<1.25²", "δ<1.25³")


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Example:
    """One frame kept for pictures: ``rgb`` ``h×w×3`` uint8, ``depth`` (model units) and
    ``confidence`` ``h×w`` float32 network outputs, ``gt_depth`` ``h×w`` metres (0 invalid) or None.
    """

    index: int
    stamp: int
    rgb: np.ndarray
    depth: np.ndarray
    confidence: np.ndarray | None
    gt_depth: np.ndarray | None


@dataclasses.dataclass
class EvaluationResult:
    """What :func:`evaluate_sequence` returns.

    Attributes
    ----------
    report : the fused depth's :class:`EvaluationReport` (depth, confidence, temporal, pose).
    branches : per-branch reports (median-scaled depth only); empty for a single branch.
    examples : up to ``collect_examples`` frames spread over the sequence, in order.
    relative_poses : per segment, the predicted ``T_{i+1→i}`` (``4×4`` float64) of each
        consecutive pair, None where it could not be computed (a clip PoseNet on a segment
        shorter than its clip); empty without pose evaluation.
    n_frames : frames seen. n_segments : runs of consecutive frames (module docstring).
    seconds : wall time of the evaluation.
    """

    report: EvaluationReport
    branches: list[EvaluationReport]
    examples: list[Example]
    relative_poses: list[list[np.ndarray | None]]
    n_frames: int
    n_segments: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        """:meth:`EvaluationReport.summary` plus ``confidence.aurg_ratio`` (AURG/(AURG+AUSE) per
        metric: 1 = the confidence ranks like the oracle, 0 = no better than random),
        ``branches`` (``{"0": metrics, …}`` or None), ``metric_scale_factor``, ``n_frames``,
        ``n_segments``, ``seconds``, ``frames_per_second``.
        """
        out = self.report.summary()
        conf = out.get("confidence")
        if conf:
            conf["aurg_ratio"] = {m: _ratio(conf["aurg"][m], conf["ause"][m]) for m in conf["ause"]}
        out["branches"] = (
            {str(b): r.summary()["median_scaled"] for b, r in enumerate(self.branches)} if self.branches else None
        )
        out["metric_scale_factor"] = self.report.metric_scale
        out["n_frames"] = self.n_frames
        out["n_segments"] = self.n_segments
        out["seconds"] = self.seconds
        out["frames_per_second"] = self.n_frames / self.seconds if self.seconds > 0 else None
        return out


def _ratio(aurg: float, ause: float) -> float | None:
    den = aurg + ause
    return float(aurg / den) if den != 0 and math.isfinite(den) else None


# ---------------------------------------------------------------------------------------
# Pose between consecutive frames
# ---------------------------------------------------------------------------------------
class _RelativePoses:
    """``T_{i+1→i}`` for the consecutive frames of one segment, from the PoseNet, in batches.

    A PoseNet of ``n`` frames with anchor ``c`` (pairs: ``n = 2, c = 0``; clips: the centre)
    predicts ``T_{anchor→ref}`` for the other frames of a window; for the pair ``(a, b)`` of the
    window ``T_{b→a} = T_{anchor→a} · T_{anchor→b}⁻¹`` (``DepthModel.forward``). Pair ``i`` uses
    the window starting at ``s = clamp(i + 1 − c, i + 2 − n, i)`` (``b = i + 1`` is the anchor
    when it can be), moved back to the segment's last ``n`` frames at its end.
    """

    def __init__(self, pose_net: torch.nn.Module, batch_size: int) -> None:
        self.net = pose_net
        self.n = int(getattr(pose_net, "num_frames", 2))
        self.anchor = int(getattr(pose_net, "anchor", 0))
        self.batch_size = max(1, int(batch_size))
        self.images: dict[int, torch.Tensor] = {}
        self.count = 0
        self.next_pair = 0
        self.jobs: list[tuple[int, int]] = []  # (pair, window start)
        self.windows: list[list[torch.Tensor]] = []
        self.out: dict[int, np.ndarray] = {}

    def _start(self, i: int) -> int:
        return min(max(i + 1 - self.anchor, i + 2 - self.n, 0), i)

    def push(self, image: torch.Tensor) -> None:
        """Add the next frame (``3×H×W`` on the network's device)."""
        self.images[self.count] = image
        self.count += 1
        while self.next_pair <= self.count - 2:
            s = self._start(self.next_pair)
            if s + self.n > self.count:
                break
            self._schedule(self.next_pair, s)
            self.next_pair += 1
        keep_from = min(self._start(self.next_pair), self.count - self.n)
        for k in [k for k in self.images if k < keep_from]:
            del self.images[k]

    def _schedule(self, i: int, s: int) -> None:
        self.jobs.append((i, s))
        self.windows.append([self.images[s + k] for k in range(self.n)])
        if len(self.jobs) >= self.batch_size:
            self._run()

    def _run(self) -> None:
        if not self.jobs:
            return
        frames = [torch.stack([w[k] for w in self.windows]) for k in range(self.n)]
        vecs = self.net(frames)  # B×(n−1)×6: T_anchor_to_ref for the other frames in order
        eye = torch.eye(4, dtype=vecs.dtype, device=vecs.device)
        for j, (i, s) in enumerate(self.jobs):
            mats = pose_vec_to_mat(vecs[j].reshape(-1, 6))

            def from_anchor(x: int, mats: torch.Tensor = mats) -> torch.Tensor:
                return eye if x == self.anchor else mats[x if x < self.anchor else x - 1]

            a, b = i - s, i + 1 - s
            T = from_anchor(a) @ invert_pose(from_anchor(b)[None])[0]
            self.out[i] = T.double().cpu().numpy()
        self.jobs, self.windows = [], []

    def finish(self) -> list[np.ndarray | None]:
        """Schedule the pairs left at the segment's end; ``T_{i+1→i}`` for ``i = 0 … count−2``."""
        if self.count >= self.n:
            s = self.count - self.n
            for i in range(self.next_pair, self.count - 1):
                self._schedule(i, s)
            self.next_pair = max(self.count - 1, 0)
        self._run()
        self.images.clear()
        return [self.out.get(i) for i in range(max(self.count - 1, 0))]


def relative_poses(
    pose_net: torch.nn.Module, images: torch.Tensor | Sequence[torch.Tensor], batch_size: int = 8
) -> list[np.ndarray | None]:
    """``T_{i+1→i}`` between consecutive images (``N×3×H×W`` RGB in [0, 1]) of one sequence.

    Returns ``N−1`` ``4×4`` float64 transforms mapping points of camera ``i+1`` into camera ``i``
    (the input of :func:`~dualdepth_ros.evaluation.pose_ate`); None where a clip PoseNet has
    too few frames. Run under ``torch.inference_mode()`` by the caller if wanted.
    """
    tracker = _RelativePoses(pose_net, batch_size)
    for img in images:
        tracker.push(img)
    return tracker.finish()


def _ate_runs(
    gt_poses: Sequence[np.ndarray | None], rel: Sequence[np.ndarray | None], snippet: int = 5
) -> list[dict[str, float]]:
    """:func:`pose_ate` of each run of consecutive frames with GT poses and predicted relative poses."""
    stats: list[dict[str, float]] = []

    def flush(run: list[int]) -> None:
        if len(run) >= snippet:
            gt = np.stack([gt_poses[i] for i in run])
            pred = np.stack([rel[i] for i in run[:-1]])
            stats.append(pose_ate(gt, pred, snippet=snippet))

    run: list[int] = []
    for i, pose in enumerate(gt_poses):
        if pose is None or (run and rel[i - 1] is None):
            flush(run)
            run = []
        if pose is not None:
            run.append(i)
    flush(run)
    return stats


def _pool_ate(stats: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    """Mean and std over all snippets of several :func:`pose_ate` results."""
    if not stats:
        return None
    counts = np.array([s["n_snippets"] for s in stats], dtype=np.float64)
    means = np.array([s["ate_mean"] for s in stats])
    stds = np.array([s["ate_std"] for s in stats])
    mean = float((counts * means).sum() / counts.sum())
    var = float((counts * (stds**2 + means**2)).sum() / counts.sum() - mean**2)
    return {"ate_mean": mean, "ate_std": math.sqrt(max(var, 0.0)), "n_snippets": int(counts.sum())}


# ---------------------------------------------------------------------------------------
# The evaluation loop
# ---------------------------------------------------------------------------------------
def _batches(frames: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(frames)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _follows(frame: Any, prev: Any) -> bool:
    return (
        prev is not None
        and int(frame.index) == int(prev.index) + 1
        and int(frame.stamp) > int(prev.stamp)
        and frame.frame_id == prev.frame_id
    )


def _model_device(module: torch.nn.Module) -> torch.device:
    for p in itertools.chain(module.parameters(), module.buffers()):
        return p.device
    return torch.device("cpu")


@dataclasses.dataclass
class _Prev:
    frame: Any
    depth: np.ndarray


class _ExampleKeeper:
    """Picks up to ``k`` frames spread over a stream of unknown length.

    Positions ``0, s, 2s, …`` are kept, at most ``4k`` of them (``s`` doubles when more
    arrive); :meth:`pick` then takes ``k`` evenly spaced ones.
    """

    def __init__(self, k: int) -> None:
        self.k = max(0, int(k))
        self.stride = 1
        self.kept: list[tuple[int, Example]] = []

    def wants(self, position: int) -> bool:
        return self.k > 0 and position % self.stride == 0

    def add(self, position: int, example: Example) -> None:
        self.kept.append((position, example))
        while len(self.kept) > 4 * self.k:
            self.stride *= 2
            self.kept = [(p, e) for p, e in self.kept if p % self.stride == 0]

    def pick(self) -> list[Example]:
        if len(self.kept) <= self.k:
            return [e for _, e in self.kept]
        pos = np.array([p for p, _ in self.kept], dtype=np.float64)
        chosen: list[int] = []
        for target in np.linspace(pos[0], pos[-1], self.k):
            free = [i for i in range(len(pos)) if i not in chosen]
            chosen.append(min(free, key=lambda i: abs(pos[i] - target)))
        return [self.kept[i][1] for i in sorted(chosen)]


def evaluate_sequence(
    loaded: Any,
    frames: Iterable[Any],
    *,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    metric_scale: float | None = None,
    steps: int = 20,
    with_pose: bool = True,
    garg_crop: bool | None = False,
    collect_examples: int = 3,
    branches: bool = True,
) -> EvaluationResult:
    """Evaluate a model on frames in time order (module docstring for what is measured).

    Parameters
    ----------
    loaded : a :class:`~dualdepth_ros.training.checkpoint.LoadedModel` (anything with
        ``depth_net`` and ``model.pose``). Its networks are put in eval mode for the call and
        returned to their previous mode afterwards.
    frames : :class:`~dualdepth_ros.data.Frame` objects in time order (e.g. a
        ``FrameSequence``, or several chained): ``image`` ``3×h×w`` float32 at the network input
        size, ``gt_depth`` ``h×w`` metres (0 invalid) or None, ``gt_pose`` (camera → world) or
        None, ``moving_mask`` or None, ``intrinsics`` at ``w×h``.
    device : where the inputs go; None = the device of the depth net's parameters. The model
        is not moved.
    batch_size : frames per forward pass (also pairs per PoseNet pass).
    metric_scale : also score without median scaling, depth × this factor (1.0 for a
        metric model); None skips it.
    steps : sparsification steps.
    with_pose : run the PoseNet and score ATE (on segments whose first frame has a GT pose).
    garg_crop : Garg crop for depth metrics (None: for KITTI-shaped GT).
    collect_examples : frames to keep for pictures (:attr:`EvaluationResult.examples`).
    branches : also score each branch's depth (models with more than one branch).

    Frames without GT depth (or without a valid GT pixel) count in ``n_skipped``.
    """
    depth_net = loaded.depth_net
    pose_net = getattr(getattr(loaded, "model", None), "pose", None) if with_pose else None
    model_device = _model_device(depth_net)
    device = torch.device(device) if device is not None else model_device
    if device.type != model_device.type or (device.index is not None and device != model_device):
        raise ValueError(f"the model is on {model_device}, but evaluation was asked to run on {device}")
    report = EvaluationReport(garg_crop=garg_crop, metric_scale=metric_scale, steps=steps)
    n_branches = int(getattr(depth_net, "num_branches", 1))
    branch_reports = [EvaluationReport(garg_crop=garg_crop, metric_scale=None) for _ in range(n_branches)]
    if not branches or n_branches < 2:
        branch_reports = []
    with_conf = bool(getattr(depth_net, "predict_confidence", True))
    modules = [m for m in (depth_net, pose_net) if isinstance(m, torch.nn.Module)]
    was_training = [m.training for m in modules]
    keeper = _ExampleKeeper(collect_examples)
    all_rel: list[list[np.ndarray | None]] = []
    seg_gt_poses: list[np.ndarray | None] = []
    tracker: _RelativePoses | None = None
    prev: _Prev | None = None
    n_frames = 0
    n_segments = 0
    pose_runs: list[dict[str, float]] = []
    t0 = time.perf_counter()

    def close_segment() -> None:
        nonlocal tracker
        if tracker is None:
            return
        rel = tracker.finish()
        all_rel.append(rel)
        tracker = None
        pose_runs.extend(_ate_runs(seg_gt_poses, rel))

    try:
        for m in modules:
            m.eval()
        with torch.inference_mode():
            for batch in _batches(frames, max(1, int(batch_size))):
                images = torch.from_numpy(np.stack([np.asarray(f.image, dtype=np.float32) for f in batch])).to(device)
                out = depth_net(images)
                depth = out[("depth_fused", 0)][:, 0].float().cpu().numpy()
                conf = out[("conf_fused", 0)][:, 0].float().cpu().numpy() if with_conf else None
                branch_depth = [out[("depth", b, 0)][:, 0].float().cpu().numpy() for b in range(len(branch_reports))]
                for k, frame in enumerate(batch):
                    if not _follows(frame, prev.frame if prev else None):
                        close_segment()
                        seg_gt_poses = []
                        prev = None
                        n_segments += 1
                        if pose_net is not None and frame.gt_pose is not None:  # no GT pose: no ATE, no PoseNet
                            tracker = _RelativePoses(pose_net, batch_size)
                    gt = frame.gt_depth
                    c = conf[k] if conf is not None else None
                    if gt is None:
                        report.skipped += 1
                    else:
                        report.add(depth[k], gt, confidence=c)
                        for b, r in enumerate(branch_reports):
                            r.add(branch_depth[b][k], gt)
                    pose = frame.gt_pose
                    pose = np.asarray(pose, dtype=np.float64) if pose is not None else None
                    if pose is not None and not np.all(np.isfinite(pose)):
                        pose = None
                    if tracker is not None:
                        tracker.push(images[k])
                        seg_gt_poses.append(pose)
                    if prev is not None and gt is not None and prev.frame.gt_depth is not None:
                        prev_pose = prev.frame.gt_pose
                        if pose is not None and prev_pose is not None and np.all(np.isfinite(prev_pose)):
                            T_t_to_prev = np.linalg.inv(np.asarray(prev_pose, dtype=np.float64)) @ pose
                            report.add_temporal(
                                temporal_stability(
                                    depth[k],
                                    prev.depth,
                                    gt,
                                    prev.frame.gt_depth,
                                    T_t_to_prev,
                                    frame.intrinsics.matrix(),
                                    moving_t=frame.moving_mask,
                                    moving_prev=prev.frame.moving_mask,
                                )
                            )
                    if keeper.wants(n_frames):
                        keeper.add(
                            n_frames,
                            Example(
                                int(frame.index),
                                int(frame.stamp),
                                np.array(frame.rgb, dtype=np.uint8),
                                depth[k].copy(),
                                c.copy() if c is not None else None,
                                np.array(gt, dtype=np.float32) if gt is not None else None,
                            ),
                        )
                    prev = _Prev(frame, depth[k])
                    n_frames += 1
            close_segment()
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)
    pooled = _pool_ate(pose_runs)
    if pooled is not None:
        report.set_pose(pooled)
    return EvaluationResult(
        report=report,
        branches=branch_reports,
        examples=keeper.pick(),
        relative_poses=all_rel,
        n_frames=n_frames,
        n_segments=n_segments,
        seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------------------------
# Presentation
# ---------------------------------------------------------------------------------------
def _row(title: str, metrics: Mapping[str, float], width: int) -> str:
    return f"{title:<{width}}" + "".join(f"{metrics[m]:>10.4f}" for m in DEPTH_METRICS)


def format_evaluation(summary: Mapping[str, Any]) -> str:
    """The tables of :meth:`EvaluationResult.summary` (method.md §8 layout, monodepth2 order)."""
    lines = [
        f"frames: {summary.get('n_frames', summary['n_images'] + summary['n_skipped'])}, "
        f"scored: {summary['n_images']}, skipped (no valid GT depth): {summary['n_skipped']}"
    ]
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
            f"temporal stability (mean |ẑ−d̂|/d̂ on static pixels, {tmp['n_pairs']} pairs): "
            f"prediction {tmp['pred']:.4f}, GT floor {tmp['gt']:.4f}, ratio {tmp['ratio']:.2f}",
        ]
    pose = summary.get("pose")
    if pose:
        lines += [
            "",
            f"pose ATE (5-frame snippets, scale-aligned, {pose['n_snippets']} snippets): "
            f"{pose['ate_mean']:.4f} ± {pose['ate_std']:.4f} m",
        ]
    return "\n".join(lines)


#: Mosaic panels are enlarged (nearest neighbour, integer factor) to at least this width.
MOSAIC_MIN_PANEL_WIDTH = 320


def mosaic_rows(examples: Sequence[Example], min_panel_width: int = MOSAIC_MIN_PANEL_WIDTH) -> np.ndarray:
    """One ``RGB`` uint8 picture: a row ``image | inverse depth | confidence`` per example.

    Panels are the network input size times ``max(1, ceil(min_panel_width / w))`` (nearest
    neighbour), so small models stay legible; without confidence a row has two panels.
    """
    if not examples:
        raise ValueError("no example frames to draw")
    rows = []
    for e in examples:
        row = make_mosaic(e.rgb, e.depth, e.confidence, vertical=False)
        f = max(1, math.ceil(min_panel_width / e.rgb.shape[1]))
        rows.append(np.repeat(np.repeat(row, f, axis=0), f, axis=1) if f > 1 else row)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


def _json_ready(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------------------
def resolve_gt_topics(
    bag_path: str | Path,
    *,
    gt_depth_topic: str | None = None,
    gt_pose_topic: str | None = None,
    gt_moving_mask_topic: str | None = None,
    preferred: Mapping[str, str | None] | None = None,
) -> dict[str, str | None]:
    """The ground-truth topics to use from one bag.

    Each role takes, in order: the given topic (checked later by the data module, which names
    the bag's topics when it is missing); the ``preferred`` one (e.g. the training config's)
    when the bag has it; the default name (:data:`DEFAULT_GT_TOPICS`) when the bag has it;
    for the depth only, the one ``Image`` topic in a depth encoding (``32FC1``, ``16UC1``).
    Pose and moving mask are optional (None when absent).

    Raises
    ------
    BagError : no GT depth topic can be found; the message lists the bag's topics.
    """
    from .data.bags import IMAGE, POSE_TYPES, Bag, BagError

    preferred = dict(preferred or {})
    given = {"gt_depth": gt_depth_topic, "gt_pose": gt_pose_topic, "gt_moving_mask": gt_moving_mask_topic}
    types = {"gt_depth": (IMAGE,), "gt_pose": POSE_TYPES, "gt_moving_mask": (IMAGE,)}
    out: dict[str, str | None] = {}
    with Bag(bag_path) as bag:
        topics = bag.topics()
        for role in ("gt_depth", "gt_pose", "gt_moving_mask"):
            if given[role]:
                out[role] = given[role]
                continue
            out[role] = None
            for cand in (preferred.get(role), DEFAULT_GT_TOPICS[role]):
                if cand and cand in topics and topics[cand][0] in types[role] and topics[cand][1] > 0:
                    out[role] = cand
                    break
        if out["gt_depth"] is None:
            cands = []
            for name, (ty, count) in sorted(topics.items()):
                if ty == IMAGE and count > 0 and name not in (out["gt_moving_mask"],):
                    first = bag.first_message(name)
                    if first is not None and getattr(first, "encoding", "") in DEPTH_ENCODINGS:
                        cands.append(name)
            if len(cands) == 1:
                out["gt_depth"] = cands[0]
            else:
                problem = (
                    f"several depth image topics ({', '.join(cands)}); choose one with --gt-depth-topic"
                    if cands
                    else f"no ground-truth depth topic ({DEFAULT_GT_TOPICS['gt_depth']} or a sensor_msgs/Image "
                    f"in {'/'.join(DEPTH_ENCODINGS)}); name one with --gt-depth-topic"
                )
                raise BagError(f"bag {bag.path}: {problem}. Topics in the bag:\n{bag.describe_topics()}")
    return out


# ---------------------------------------------------------------------------------------
# Photometric floor: the training objective at the model's and at the ground truth's geometry
# ---------------------------------------------------------------------------------------
#: Depth given to ground-truth pixels without a value (sky): far enough to warp by rotation only.
FLOOR_FAR_DEPTH = 1000.0


def photometric_floor(
    loaded: Any,
    stores: Sequence[Any],
    *,
    max_clips: int = 64,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """The photometric term of the training loss with the model's and with the ground truth's geometry.

    On evenly spaced clips of ``stores`` (decoded bags with GT depth for every frame and GT
    pose), the loss of the checkpoint's configuration (two-branch gate off, so that every case
    averages the same samples) is computed three times:

    ``model``
        the networks' depth and pose, as training sees them;
    ``model_depth_gt_pose``
        the depth net's depth, median-scaled per clip to the GT depth of the target frame, with
        the GT relative poses (isolates the depth from the pose);
    ``gt_depth_gt_pose``
        GT depth (``FLOOR_FAR_DEPTH`` where it has no value) and GT poses: the value this loss
        takes at the true geometry of these frames, i.e. the floor a well-trained model
        approaches. A model far above it is under-trained; one *below* it found a geometry the
        loss prefers to the truth (e.g. a textureless road or a car moving with the camera).

    Returns ``{"clips": n, "model": …, "model_depth_gt_pose": …, "gt_depth_gt_pose": …}``.
    """
    from .config import config_from_dict, config_to_dict
    from .losses import compute_losses
    from .training.trainer import to_model_batch

    cfg_dict = config_to_dict(loaded.cfg)
    cfg_dict["loss"]["two_branch"]["gate"] = False
    cfg = config_from_dict(cfg_dict)
    missing = [str(st.bag) for st in stores if st.gt_depth is None or st.gt_pose is None]
    if missing:
        raise DualDepthError(f"the photometric floor needs GT depth and GT pose; missing in {', '.join(missing)}")
    clips = floor_clips(loaded, stores)
    usable = [i for i in range(len(clips)) if _clip_has_gt_pose(clips, i)]
    if not usable:
        raise DualDepthError("the photometric floor found no clip whose frames all have a GT pose")
    n = min(len(usable), max_clips)
    index = np.asarray(usable)[np.linspace(0, len(usable) - 1, n).round().astype(int)]
    model = loaded.model
    dev = torch.device(device) if device is not None else _model_device(model.depth)
    was_training = model.training
    model.eval()
    sums = {"model": 0.0, "model_depth_gt_pose": 0.0, "gt_depth_gt_pose": 0.0}
    try:  # seeded: the auto-mask's tie-break noise is random, the figures should not be
        cuda = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.inference_mode():
            torch.manual_seed(0)
            for start in range(0, n, batch_size):
                items = [clips[int(i)] for i in index[start : start + batch_size]]
                batch = to_model_batch(torch.utils.data.default_collate(items), dev)
                outputs = model(batch)
                cases = _floor_cases(batch, outputs, clips.offsets)
                for name, case in cases.items():
                    _, terms = compute_losses(batch, case, cfg)
                    sums[name] += float(terms["photometric"]) * len(items)
    finally:
        model.train(was_training)
    return {"clips": int(n), **{k: v / max(n, 1) for k, v in sums.items()}}


def floor_clips(loaded: Any, stores: Sequence[Any]) -> Any:
    """Every clip of ``stores`` in the layout ``loaded`` trains on, in order, GT depth for each frame."""
    from .data import ClipDataset
    from .losses import clip_layout

    data = dataclasses.replace(loaded.data, val_fraction=0.0, frame_offsets=list(clip_layout(loaded.cfg).frames))
    return ClipDataset(stores, data, "all", augment=False, gt_all_frames=True)


def _clip_has_gt_pose(clips: Any, index: int) -> bool:
    store, frames = clips.clip_frames(index)
    return bool(np.isfinite(np.asarray(store.gt_pose)[frames]).all())


def _floor_cases(
    batch: Mapping[Any, torch.Tensor], outputs: Mapping[Any, torch.Tensor], offsets: Sequence[int]
) -> dict[str, dict[Any, torch.Tensor]]:
    """The three geometries of :func:`photometric_floor` as network-output dictionaries."""
    gt_T = {o: batch[("gt_pose", o)] for o in offsets}  # T_target_to_o
    with_gt_pose = dict(outputs)
    for key in outputs:
        if isinstance(key, tuple) and key[0] == "T":
            a, b = key[1], key[2]
            with_gt_pose[key] = gt_T[b] @ invert_pose(gt_T[a])  # T_a_to_b
    gt0 = batch[("gt_depth", 0)]
    pred0 = outputs[("depth_fused", 0, 0)]
    valid = gt0 > 0
    ratio = torch.stack(
        [
            gt0[i][valid[i]].median() / pred0[i][valid[i]].median() if valid[i].any() else gt0.new_ones(())
            for i in range(len(gt0))
        ]
    ).view(-1, 1, 1, 1)
    scaled, at_gt = dict(with_gt_pose), dict(with_gt_pose)
    for key, value in outputs.items():
        if isinstance(key, tuple) and key[0] in ("depth_fused", "depth"):
            scaled[key] = value * ratio
            gt = batch[("gt_depth", key[1])]
            at_gt[key] = torch.where(gt > 0, gt, torch.full_like(gt, FLOOR_FAR_DEPTH))
    return {"model": dict(outputs), "model_depth_gt_pose": scaled, "gt_depth_gt_pose": at_gt}


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------
class ConstantDepthNet(torch.nn.Module):
    """A depth "network" that predicts 1 everywhere: after median scaling, the scene's median depth.

    ``dualdepth eval --constant-reference`` scores it on the same frames as a model, which shows
    how much of a model's score is structure rather than the scale alone.
    """

    num_branches = 1
    predict_confidence = False

    def forward(self, image: torch.Tensor) -> dict[Any, torch.Tensor]:
        ones = image.new_ones(image.shape[0], 1, *image.shape[2:])
        return {("depth_fused", 0): ones, ("depth", 0, 0): ones}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.pt) written by dualdepth train")
    parser.add_argument(
        "--bag", action="append", required=True, help="bag (or folder of bags) with ground truth; repeatable"
    )
    parser.add_argument("--gt-depth-topic", help="GT depth Image (32FC1 m / 16UC1 mm); default /gt/depth if present")
    parser.add_argument("--image-topic", help="camera image topic (default: the checkpoint's, else auto-detect)")
    parser.add_argument("--info-topic", help="camera_info topic (default: beside the image topic)")
    parser.add_argument("--gt-pose-topic", help="GT camera pose topic (default /gt/pose if present)")
    parser.add_argument("--moving-mask-topic", help="moving-object mask Image (default /gt/moving_mask if present)")
    parser.add_argument("--intrinsics", metavar="FX,FY,CX,CY", help="camera intrinsics instead of camera_info")
    parser.add_argument("--max-frames", type=int, metavar="N", help="evaluate at most the first N frames of each bag")
    parser.add_argument(
        "--metric-scale", type=float, metavar="S", help="also score depth × S without median scaling (1 = metric)"
    )
    parser.add_argument("--garg-crop", action="store_true", help="apply the Garg crop (KITTI-shaped images)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per forward pass (default 8)")
    parser.add_argument("--no-pose", action="store_true", help="skip the PoseNet / ATE")
    parser.add_argument(
        "--constant-reference",
        action="store_true",
        help="score a constant depth instead of the model (same frames, same pipeline): the floor a model must beat",
    )
    parser.add_argument(
        "--photometric-floor",
        nargs="?",
        type=int,
        const=64,
        metavar="CLIPS",
        help="also compute the training loss's photometric term with the model's and with the GT depth and pose on "
        "CLIPS clips spread over the bags (default 64; needs GT pose; ignores --max-frames): how far the model is "
        "from what the loss can reach",
    )
    parser.add_argument(
        "--cache-dir", help="decoded-frame cache folder, or 'memory' (default: the checkpoint's data.cache_dir)"
    )
    parser.add_argument("--json", metavar="FILE", help="write every number as JSON ('-' for stdout)")
    parser.add_argument(
        "--plots", metavar="DIR", help="write sparsification_abs_rel.png and mosaic.png (image | depth | confidence)"
    )


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise DualDepthError(f"unknown device {name!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DualDepthError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return dev


def run(args: argparse.Namespace) -> int:
    from .data import FrameSequence, expand_bag_paths
    from .training.checkpoint import model_from_checkpoint

    device = _device(args.device)
    if args.max_frames is not None and args.max_frames < 1:
        raise DualDepthError("--max-frames must be at least 1")
    if args.batch_size < 1:
        raise DualDepthError("--batch-size must be at least 1")
    loaded = model_from_checkpoint(args.checkpoint, device)
    if args.constant_reference:
        loaded.model.depth = ConstantDepthNet().to(device)
        args.no_pose = True
    inp = loaded.checkpoint.get("input") or {}
    try:
        width, height = int(inp["width"]), int(inp["height"])
    except (KeyError, TypeError, ValueError):
        raise DualDepthError(f"checkpoint {args.checkpoint} does not record its input size") from None
    base = dataclasses.replace(loaded.data, resize_mode=inp.get("resize_mode", loaded.data.resize_mode))
    if args.image_topic:
        base = dataclasses.replace(base, image_topic=args.image_topic)
    if args.info_topic:
        base = dataclasses.replace(base, camera_info_topic=args.info_topic)
    if args.intrinsics:
        base = dataclasses.replace(base, intrinsics=args.intrinsics)
    if args.cache_dir:
        base = dataclasses.replace(base, cache_dir=args.cache_dir)
    preferred = {
        "gt_depth": base.gt_depth_topic,
        "gt_pose": base.gt_pose_topic,
        "gt_moving_mask": base.gt_moving_mask_topic,
    }
    out = sys.stderr if args.json == "-" else sys.stdout

    sequences = []
    stores = []
    bag_info = []
    for bag in expand_bag_paths(args.bag):
        topics = resolve_gt_topics(
            bag,
            gt_depth_topic=args.gt_depth_topic,
            gt_pose_topic=args.gt_pose_topic,
            gt_moving_mask_topic=args.moving_mask_topic,
            preferred=preferred,
        )
        cfg = dataclasses.replace(
            base,
            gt_depth_topic=topics["gt_depth"],
            gt_pose_topic=topics["gt_pose"],
            gt_moving_mask_topic=topics["gt_moving_mask"],
        )
        seq = FrameSequence.from_bag(bag, cfg, width, height)
        n = len(seq) if args.max_frames is None else min(len(seq), args.max_frames)
        sel = seq.store.topics
        bag_info.append(
            {
                "path": str(bag),
                "frames": n,
                "image_topic": sel.image,
                "camera_info_topic": sel.camera_info,
                "gt_depth_topic": sel.gt_depth,
                "gt_pose_topic": sel.gt_pose,
                "gt_moving_mask_topic": sel.gt_moving_mask,
            }
        )
        print(
            f"{bag}: {n} frames of {sel.image} at {width}x{height} ({cfg.resize_mode}); GT depth {sel.gt_depth}, "
            f"pose {sel.gt_pose or '-'}, moving mask {sel.gt_moving_mask or '-'}",
            file=out,
        )
        sequences.append(itertools.islice(seq, n))
        stores.append(seq.store)

    result = evaluate_sequence(
        loaded,
        itertools.chain.from_iterable(sequences),
        device=device,
        batch_size=args.batch_size,
        metric_scale=args.metric_scale,
        with_pose=not args.no_pose,
        garg_crop=args.garg_crop,
    )
    summary = result.summary()
    if summary["n_images"] == 0:
        raise DualDepthError(
            f"no frame had valid ground-truth depth ({summary['n_skipped']} frames skipped); "
            "check --gt-depth-topic and that its stamps match the images"
        )
    print("", file=out)
    print(format_evaluation(summary), file=out)
    print(
        f"\n{result.n_frames} frames in {result.seconds:.1f} s ({summary['frames_per_second']:.1f} frames/s)", file=out
    )

    floor = None
    if args.photometric_floor is not None:
        if args.photometric_floor < 1:
            raise DualDepthError("--photometric-floor needs at least 1 clip")
        floor = photometric_floor(loaded, stores, max_clips=args.photometric_floor, batch_size=args.batch_size)
        print(
            f"\nphotometric loss on {floor['clips']} clips (training objective, gate off): model "
            f"{floor['model']:.4f} | model depth (median-scaled) + GT pose {floor['model_depth_gt_pose']:.4f} | "
            f"GT depth + GT pose {floor['gt_depth_gt_pose']:.4f} (the floor)",
            file=out,
        )

    if args.plots:
        plots = Path(args.plots)
        sp = result.report.sparsification_mean()
        written = []
        if sp is not None and "abs_rel" in sp.curves:
            save_sparsification_plot(plots / "sparsification_abs_rel.png", sp, "abs_rel")
            written.append("sparsification_abs_rel.png")
        else:
            print("no confidence output: sparsification plot skipped", file=out)
        if result.examples:
            save_png(plots / "mosaic.png", mosaic_rows(result.examples))
            written.append("mosaic.png")
        print(f"wrote {', '.join(written) or 'nothing'} to {plots}", file=out)

    if args.json:
        sp = result.report.sparsification_mean()
        data = {
            "checkpoint": str(args.checkpoint),
            "checkpoint_step": loaded.checkpoint.get("step"),
            "config_hash": loaded.checkpoint.get("config_hash"),
            "input": {"width": width, "height": height, "resize_mode": base.resize_mode},
            "bags": bag_info,
            "garg_crop": bool(args.garg_crop),
            **summary,
        }
        if floor is not None:
            data["photometric_floor"] = floor
        if sp is not None:
            data["sparsification_curves"] = {
                "fractions": sp.fractions.tolist(),
                "curves": {m: {k: v.tolist() for k, v in c.items()} for m, c in sp.curves.items()},
            }
        text = json.dumps(_json_ready(data), indent=2, allow_nan=False, ensure_ascii=False)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n", encoding="utf-8")
            print(f"wrote {path}", file=out)
    return 0
