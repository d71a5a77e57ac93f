"""The evaluation loop: a model over frames in time order → an :class:`EvaluationResult`.

:func:`evaluate_sequence` has no CLI and writes no files; ``dualdepth eval``
(:mod:`.cli`), the trainer's validation and the ablation study call it. What is measured, per
frame ``t``:

* **depth** — the fused depth ``("depth_fused", 0)`` against the ground truth on *its own
  grid* (``Frame.gt_depth_native``, e.g. every LiDAR point of a 1242×375 image, not the few
  that survive a resize to the network's size): the prediction is carried to that grid
  through the intrinsics (:mod:`.grid`: inside the region the network saw, inverse depth
  interpolated), the protocol (:mod:`.protocols`) picks the pixels and the range, and the
  prediction is median-scaled, and, with ``metric_scale``, multiplied by that factor
  instead; each branch ``("depth", b, 0)`` median-scaled as well (two-branch models), to show
  what the fusion adds. Frames without native ground truth are scored on the network's grid.
* **confidence** — ``("conf_fused", 0)`` ranks the pixels of the sparsification curves
  (AUSE/AURG for AbsRel and RMSE); skipped for a model without a confidence head;
* **temporal stability** — ``D_t`` against ``D_{t−1}`` moved by the GT pose, static pixels
  only (moving masks of both frames), the prediction pair scaled by one factor
  ``median(gt_t)/median(pred_t)``; needs GT depth and GT pose in both frames; on the
  network's grid (:mod:`.temporal`);
* **pose** — the PoseNet between consecutive frames gives ``T_{t→t−1}`` (:mod:`.pose`),
  scored by ATE on 5-frame snippets where the GT poses are known.

Frames of several bags can be chained into one iterable: a new *segment* starts whenever a
frame does not directly follow the previous one (its ``index`` is not the previous ``index +
1``, its stamp does not increase, or its ``frame_id`` changes). Temporal pairs and pose
snippets never cross a segment boundary.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from ..geometry import Intrinsics
from .grid import GridMap
from .pose import RelativePoses, ate_runs, pool_ate
from .protocols import Protocol
from .report import EvaluationReport
from .temporal import temporal_stability

__all__ = ["Example", "EvaluationResult", "evaluate_sequence"]


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


class _Grids:
    """:class:`GridMap` of each (ground-truth grid, network grid) pair met, computed once."""

    def __init__(self) -> None:
        self.maps: dict[tuple, GridMap] = {}

    def __call__(self, gt: Intrinsics, pred: Intrinsics) -> GridMap:
        key = (gt.as_tuple(), pred.as_tuple())
        if key not in self.maps:
            self.maps[key] = GridMap.between(gt, pred)
        return self.maps[key]


def _ground_truth(frame: Any, grids: _Grids) -> tuple[np.ndarray | None, GridMap | None]:
    """The frame's ground truth to score (its own grid when it has one) and the map to it."""
    native = getattr(frame, "gt_depth_native", None)
    gt_K = getattr(frame, "gt_intrinsics", None)
    if native is not None and gt_K is not None:
        return native, grids(gt_K, frame.intrinsics)
    return frame.gt_depth, None


def evaluate_sequence(
    loaded: Any,
    frames: Iterable[Any],
    *,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    protocol: str | Protocol = "auto",
    max_depth: float | None = None,
    interpolation: str = "bilinear",
    metric_scale: float | None = None,
    steps: int = 20,
    with_pose: bool = True,
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
        size, ``gt_depth`` ``h×w`` metres (0 invalid) or None, ``gt_depth_native`` and
        ``gt_intrinsics`` (the ground truth on its own grid) or None, ``gt_pose`` (camera →
        world) or None, ``moving_mask`` or None, ``intrinsics`` at ``w×h``.
    device : where the inputs go; None = the device of the depth net's parameters. The model
        is not moved.
    batch_size : frames per forward pass (also pairs per PoseNet pass).
    protocol, max_depth : the depth protocol (:mod:`.protocols`; ``"auto"`` from each
        ground truth's shape) and the ``dense`` cap.
    interpolation : upsampling of the prediction to the ground truth's grid (:mod:`.grid`).
    metric_scale : also score without median scaling, depth × this factor (1.0 for a
        metric model); None skips it.
    steps : sparsification steps.
    with_pose : run the PoseNet and score ATE (on segments whose first frame has a GT pose).
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
    common = {"protocol": protocol, "max_depth": max_depth, "interpolation": interpolation, "steps": steps}
    report = EvaluationReport(metric_scale=metric_scale, **common)
    n_branches = int(getattr(depth_net, "num_branches", 1))
    branch_reports = [EvaluationReport(metric_scale=None, **common) for _ in range(n_branches)]
    if not branches or n_branches < 2:
        branch_reports = []
    with_conf = bool(getattr(depth_net, "predict_confidence", True))
    modules = [m for m in (depth_net, pose_net) if isinstance(m, torch.nn.Module)]
    was_training = [m.training for m in modules]
    keeper = _ExampleKeeper(collect_examples)
    grids = _Grids()
    all_rel: list[list[np.ndarray | None]] = []
    seg_gt_poses: list[np.ndarray | None] = []
    tracker: RelativePoses | None = None
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
        pose_runs.extend(ate_runs(seg_gt_poses, rel))

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
                            tracker = RelativePoses(pose_net, batch_size)
                    gt = frame.gt_depth
                    c = conf[k] if conf is not None else None
                    scored, grid = _ground_truth(frame, grids)
                    if scored is None:
                        report.skipped += 1
                    else:
                        report.add(depth[k], scored, confidence=c, grid=grid)
                        for b, r in enumerate(branch_reports):
                            r.add(branch_depth[b][k], scored, grid=grid)
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
    pooled = pool_ate(pose_runs)
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
