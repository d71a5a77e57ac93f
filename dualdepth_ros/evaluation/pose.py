"""Pose evaluation: the PoseNet between consecutive frames, and ATE on 5-frame snippets.

* :class:`RelativePoses` runs a PoseNet the way :class:`~dualdepth_ros.networks.DepthModel`
  runs it in training (a pair ``(I_{t−1}, I_t)`` gives ``T_{t−1→t}``, which is inverted; a
  clip PoseNet sees a window whose anchor is ``t`` where possible) and returns ``T_{t→t−1}``
  for every consecutive pair of a sequence.
* ATE (SfMLearner, monodepth2): a snippet's positions are chained from its relative poses
  starting at the origin, the predicted ones are least-squares scaled onto the GT ones, and the
  snippet's ATE is ``sqrt(Σ‖s·p − g‖²) / n_frames``; mean and std over all full snippets.
  Ground-truth poses must be those of the camera's optical frame (the predicted motion is
  expressed in it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..geometry import invert_pose, pose_vec_to_mat

__all__ = ["chain_positions", "snippet_ate", "pose_ate", "RelativePoses", "relative_poses", "ate_runs", "pool_ate"]


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


class RelativePoses:
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
    tracker = RelativePoses(pose_net, batch_size)
    for img in images:
        tracker.push(img)
    return tracker.finish()


def ate_runs(
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


def pool_ate(stats: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    """Mean and std over all snippets of several :func:`pose_ate` results."""
    if not stats:
        return None
    counts = np.array([s["n_snippets"] for s in stats], dtype=np.float64)
    means = np.array([s["ate_mean"] for s in stats])
    stds = np.array([s["ate_std"] for s in stats])
    mean = float((counts * means).sum() / counts.sum())
    var = float((counts * (stds**2 + means**2)).sum() / counts.sum() - mean**2)
    return {"ate_mean": mean, "ate_std": math.sqrt(max(var, 0.0)), "n_snippets": int(counts.sum())}
