"""Depth scale recovery for the node and ``dualdepth infer`` (numpy only, no ROS, no torch).

Self-supervised depth is known only up to scale. :class:`ScaleEstimator` turns the network's
depth (model units) into published depth with one of three ``scale_mode`` values:

``none``
    factor 1: the published depth is in model units (not metres).
``fixed``
    a constant factor ``fixed_scale`` (e.g. measured once against a lidar).
``camera_height``
    metres from the camera's mounting height. Every frame, :func:`fit_road_plane` fits the road
    plane to the depth's 3-D points in the lower image; the plane's distance from the camera
    centre is the camera height in model units ``h``, and the frame's scale is
    ``camera_height_m / h``. The published scale is smoothed over time (see below).

Road-plane fit (:func:`fit_road_plane`)
---------------------------------------
Points: the rows of the lower ``region`` fraction of the image, back-projected with the
intrinsics at the depth's resolution (:meth:`~dualdepth_ros.intrinsics.Intrinsics.backproject`),
keeping finite points below the camera centre (``Y > 0`` in the optical frame, y down), at most
``max_points`` of them (evenly spread; the random draws below use a fixed seed, so the fit is
deterministic). RANSAC: ``iterations`` planes through three random points, kept only when
their normal is within ``max_tilt_deg`` of the optical frame's down axis ``+y`` (the road is
roughly horizontal, the camera roughly level), each scored on the same random ``score_points``
points; a point is an inlier when its distance to the plane is below ``inlier_tolerance`` × the
plane's distance from the camera (a relative tolerance, so the fit does not depend on the
unknown scale). The plane with most inliers is refined by least squares (the smallest
eigenvector of the inliers' scatter) on all its inliers, twice. The fit is rejected when fewer
than ``min_inlier_fraction`` of the points support it.

Smoothing (:class:`ScaleEstimator`)
-----------------------------------
An exponential moving average of ``log(scale)`` with weight ``smoothing`` for each new frame.
A frame whose scale differs from the current estimate by more than the factor ``gate`` is an
outlier and is ignored; after ``max_rejections`` outliers in a row the estimate restarts from
the new value (the scene or the model really changed). Until the first successful fit the
scale is unknown (``None``): callers must not publish metres then.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..errors import DualDepthError
from ..intrinsics import Intrinsics

__all__ = [
    "SCALE_MODES",
    "ScaleSettings",
    "PlaneFit",
    "fit_road_plane",
    "ScaleEstimator",
]

#: Accepted values of ``scale_mode``.
SCALE_MODES = ("none", "fixed", "camera_height")


@dataclasses.dataclass(frozen=True)
class ScaleSettings:
    """How published depth is scaled (the node's runtime-changeable scale parameters).

    Attributes
    ----------
    mode : one of :data:`SCALE_MODES`.
    fixed_scale : factor of ``fixed`` mode (model units → published units).
    camera_height_m : camera height above the road, metres (``camera_height`` mode).
    smoothing : EMA weight of a new frame's log-scale, in (0, 1]; 1 = no smoothing.
    gate : a frame's scale more than this factor away from the estimate is an outlier (> 1).
    max_rejections : consecutive outliers after which the estimate restarts.
    region : lower fraction of the image rows searched for the road, in (0, 1].
    """

    mode: str = "camera_height"
    fixed_scale: float = 1.0
    camera_height_m: float = 1.5
    smoothing: float = 0.2
    gate: float = 1.5
    max_rejections: int = 10
    region: float = 0.4

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise DualDepthError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid field, as one readable line each (empty when valid)."""
        out = []
        if self.mode not in SCALE_MODES:
            out.append(f"scale_mode must be one of {', '.join(SCALE_MODES)}, got {self.mode!r}")
        if not (math.isfinite(self.fixed_scale) and self.fixed_scale > 0):
            out.append(f"fixed_scale must be a positive number, got {self.fixed_scale}")
        if not (math.isfinite(self.camera_height_m) and self.camera_height_m > 0):
            out.append(f"camera_height_m must be a positive number of metres, got {self.camera_height_m}")
        if not (0 < self.smoothing <= 1):
            out.append(f"scale_smoothing must be in (0, 1], got {self.smoothing}")
        if not (math.isfinite(self.gate) and self.gate > 1):
            out.append(f"scale_gate must be a factor above 1, got {self.gate}")
        if self.max_rejections < 1:
            out.append(f"scale_max_rejections must be at least 1, got {self.max_rejections}")
        if not (0 < self.region <= 1):
            out.append(f"scale_region must be in (0, 1], got {self.region}")
        return out

    @property
    def metric(self) -> bool:
        """True when the published depth is in metres (``camera_height``; ``fixed`` is the user's claim)."""
        return self.mode != "none"


@dataclasses.dataclass(frozen=True)
class PlaneFit:
    """A road plane ``n·P = height`` in the camera's optical frame.

    Attributes
    ----------
    normal : unit normal (3,), pointing from the camera down to the road (``normal[1] > 0``).
    height : distance of the camera centre from the plane, in the depth's units.
    inlier_fraction : share of the candidate points within the inlier tolerance.
    n_points : candidate points used.
    """

    normal: np.ndarray
    height: float
    inlier_fraction: float
    n_points: int

    @property
    def tilt_deg(self) -> float:
        """Angle between the normal and the optical frame's down axis, degrees."""
        return float(np.degrees(np.arccos(np.clip(self.normal[1], -1.0, 1.0))))


def _refit(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares plane (unit normal with ``n_y ≥ 0``, offset) through ``N×3`` points."""
    centre = points.mean(axis=0)
    q = points - centre
    _, vecs = np.linalg.eigh(q.T @ q)  # the normal: the scatter's smallest eigenvector
    n = vecs[:, 0]
    if n[1] < 0:
        n = -n
    return n, float(n @ centre)


def fit_road_plane(
    depth: np.ndarray,
    intrinsics: Intrinsics,
    *,
    region: float = 0.4,
    max_tilt_deg: float = 20.0,
    inlier_tolerance: float = 0.05,
    iterations: int = 128,
    max_points: int = 3000,
    score_points: int = 300,
    min_points: int = 50,
    min_inlier_fraction: float = 0.15,
    seed: int = 0,
) -> PlaneFit | None:
    """Fit the road plane to a depth map (module docstring for the method).

    Parameters
    ----------
    depth : ``H×W`` z-depth (model units or metres; NaN or ≤ 0 invalid).
    intrinsics : the camera at ``W×H`` (the depth's resolution).
    region : lower fraction of the rows that holds the road.
    max_tilt_deg : largest accepted angle between the plane normal and the camera's down axis.
    inlier_tolerance : inlier distance as a fraction of the plane's distance from the camera.
    iterations : RANSAC hypotheses.
    max_points : subsample the candidate points to at most this many.
    score_points : hypotheses are scored on a random subset of this many points.
    min_points : fewer valid candidate points → no fit.
    min_inlier_fraction : a best plane supported by fewer points → no fit.
    seed : RNG seed of the subsample and the hypotheses (deterministic fits).

    Returns
    -------
    The :class:`PlaneFit`, or None when there are too few points or no plane is supported.
    """
    h = intrinsics.height
    first_row = min(h - 1, int(math.floor(h * (1.0 - region))))
    pts = intrinsics.backproject(depth, slice(first_row, None)).reshape(-1, 3)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(pts).all(axis=1) & (pts[:, 2] > 0) & (pts[:, 1] > 0)
    pts = pts[ok].astype(np.float64)
    if len(pts) < min_points:
        return None
    rng = np.random.default_rng(seed)
    if len(pts) > max_points:  # an even spread over the region
        pts = pts[np.linspace(0, len(pts) - 1, max_points).astype(np.int64)]
    n_pts = len(pts)
    idx = rng.integers(0, n_pts, size=(iterations, 3))
    a, b, c = pts[idx[:, 0]], pts[idx[:, 1]], pts[idx[:, 2]]
    normals = np.cross(b - a, c - a)
    norms = np.linalg.norm(normals, axis=1)
    good = norms > 1e-12
    normals = normals[good] / norms[good, None]
    a = a[good]
    normals *= np.where(normals[:, 1:2] < 0, -1.0, 1.0)
    offsets = np.einsum("ij,ij->i", normals, a)
    keep = (normals[:, 1] >= math.cos(math.radians(max_tilt_deg))) & (offsets > 0)
    normals, offsets = normals[keep], offsets[keep]
    if len(normals) == 0:
        return None
    # Score the hypotheses on a random subset (preemptive RANSAC); refine on all points below.
    probe = pts if n_pts <= score_points else pts[rng.integers(0, n_pts, score_points)]
    residual = np.abs(probe @ normals.T - offsets[None, :])  # probe points × hypotheses
    counts = (residual < inlier_tolerance * offsets[None, :]).sum(axis=0)
    best = int(np.argmax(counts))
    n, d = normals[best], float(offsets[best])
    inliers = np.abs(pts @ n - d) < inlier_tolerance * d
    for _ in range(2):
        if inliers.sum() < 3:
            return None
        n, d = _refit(pts[inliers])
        if d <= 0:
            return None
        inliers = np.abs(pts @ n - d) < inlier_tolerance * d
    frac = float(inliers.mean())
    tilt_ok = n[1] >= math.cos(math.radians(max_tilt_deg))
    if frac < min_inlier_fraction or not tilt_ok:
        return None
    return PlaneFit(n.astype(np.float64), d, frac, n_pts)


class ScaleEstimator:
    """The published depth's scale, per :class:`ScaleSettings` (module docstring).

    Not thread-safe: one worker updates it; :attr:`settings` may be replaced at any time
    (a new mode or camera height restarts the smoothing).
    """

    def __init__(self, settings: ScaleSettings | None = None) -> None:
        self._settings = settings or ScaleSettings()
        self._log_scale: float | None = None
        self._rejections = 0
        #: The last frame's road-plane fit (None: none yet or it failed).
        self.last_fit: PlaneFit | None = None
        #: What happened to the last frame, for diagnostics ("fitted", "outlier", "no road plane" …).
        self.last_status = "no frame yet"
        #: Frames whose road-plane fit was accepted / rejected as an outlier / failed.
        self.counts = {"fitted": 0, "outlier": 0, "failed": 0}

    @property
    def settings(self) -> ScaleSettings:
        return self._settings

    @settings.setter
    def settings(self, value: ScaleSettings) -> None:
        old, self._settings = self._settings, value
        if (old.mode, old.camera_height_m) != (value.mode, value.camera_height_m):
            self.reset()

    def reset(self) -> None:
        """Forget the smoothed estimate (the next fitted frame starts it again)."""
        self._log_scale = None
        self._rejections = 0
        self.last_fit = None
        self.last_status = "reset"

    @property
    def scale(self) -> float | None:
        """The current factor (model units → published units), or None while unknown."""
        s = self._settings
        if s.mode == "none":
            return 1.0
        if s.mode == "fixed":
            return s.fixed_scale
        return None if self._log_scale is None else math.exp(self._log_scale)

    def update(self, depth: np.ndarray, intrinsics: Intrinsics) -> float | None:
        """Take one frame's model-unit depth (``H×W``) into account; return the scale to apply to it."""
        s = self._settings
        if s.mode != "camera_height":
            self.last_status = s.mode
            return self.scale
        fit = fit_road_plane(depth, intrinsics, region=s.region)
        self.last_fit = fit
        if fit is None:
            self.counts["failed"] += 1
            self.last_status = "no road plane in this frame"
            return self.scale
        log_new = math.log(s.camera_height_m / fit.height)
        if self._log_scale is None:
            self._log_scale = log_new
            self._rejections = 0
            self.counts["fitted"] += 1
            self.last_status = "fitted"
        elif abs(log_new - self._log_scale) > math.log(s.gate):
            self._rejections += 1
            self.counts["outlier"] += 1
            self.last_status = f"outlier ({math.exp(log_new):.4g} vs {math.exp(self._log_scale):.4g})"
            if self._rejections >= s.max_rejections:
                self._log_scale = log_new
                self._rejections = 0
                self.last_status = "restarted after repeated outliers"
        else:
            self._log_scale += s.smoothing * (log_new - self._log_scale)
            self._rejections = 0
            self.counts["fitted"] += 1
            self.last_status = "fitted"
        return self.scale

    def describe(self) -> dict[str, Any]:
        """Diagnostics of the scale: mode, value, last status, last plane."""
        out: dict[str, Any] = {"mode": self._settings.mode, "scale": self.scale, "status": self.last_status}
        if self._settings.mode == "camera_height":
            out["camera_height_m"] = self._settings.camera_height_m
            if self.last_fit is not None:
                out["plane_tilt_deg"] = self.last_fit.tilt_deg
                out["plane_inliers"] = self.last_fit.inlier_fraction
            out.update({f"frames_{k}": v for k, v in self.counts.items()})
        return out
