"""A collapse check that needs no ground truth: is a depth model's output inverted, flat or pinned to a limit.

Self-supervised depth can converge to a degenerate solution that the photometric loss does not
punish, e.g. when other vehicles keep pace with the camera or the car stands: depth inverted (the
road near the car far, the sky near), collapsed to a constant, or stuck at the depth head's limits.
Every street camera sees a road in the lower image, and that is enough to tell. From predicted depth
maps and the intrinsics only (numpy; no torch, no ground truth), :func:`check_depth` runs

``road_order``
    In the lower image (rows below the principal point, in the lower ``region`` of the image), going
    up a column the depth must grow: the road recedes towards the horizon, and whatever stands on it
    (cars, trucks, walls) is at least as far as the road in front of it. For every pair of vertically
    consecutive valid pixels of a column (at most ``max_gap`` rows apart, so sparse LiDAR-like depth
    works too) whose depths differ by more than ``tolerance`` (relative), count whether the upper one
    is farther. The score is ``(farther − nearer) / (farther + nearer)`` pooled over all frames, in
    [−1, 1]: about +0.95 on true depth, −0.95 on inverted depth, undefined (fails) on a constant.
    (A rank correlation between the row and the row's median depth is not robust: a truck beside
    the car fills the row medians, and on frames of a synthetic traffic drive true depth scores up
    to +0.7 by it, i.e. "inverted".)
``road_plane``
    :func:`dualdepth_ros.ros.scale.fit_road_plane` (RANSAC on the back-projected lower image, a
    plane below the camera whose normal is within ``max_tilt_deg`` of the optical frame's down axis
    ``+y``) must find the road in at least ``min_plane_frames`` of the frames. Inverted or flipped
    depth bends the road into a curve or a wall: no such plane.
``spread``
    ``log(p95 / p5)`` of the valid depth of each frame (median over frames) must reach
    ``min_spread``: a street spans more than a factor of 1.28 in depth (true depth: 2–3.7).
``pinned`` (only with the depth head's ``limits``)
    at most ``max_pinned`` of the valid pixels may lie within ``limit_tolerance`` (relative) of the
    smallest or largest depth the head can output.

One scalar, ``health`` in [0, 1] (higher is better), combines them to pick the best checkpoint:
the mean of ``(1 + road_order) / 2``, the frames' mean of ``min(1, inliers / 0.5)`` of the road
plane (0 where none is found), and ``min(1, spread) × (1 − pinned)``.

:func:`check_model` runs a depth model (any callable) over frames in batches and checks its output.

All tests are scale-invariant: depth may be in metres or in the model's own units.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import DualDepthError
from ..intrinsics import Intrinsics
from ..ros.scale import fit_road_plane

__all__ = [
    "CollapseSettings",
    "CollapseTest",
    "CollapseReport",
    "vertical_order_counts",
    "depth_spread",
    "check_depth",
    "check_model",
]


@dataclasses.dataclass(frozen=True)
class CollapseSettings:
    """Thresholds and regions of the collapse check (defaults calibrated on true depth, see tests).

    Attributes
    ----------
    region : lower fraction of the image rows that holds the road, in (0, 1]; rows above the
        principal point are never used.
    tolerance : relative depth difference below which two pixels count as equally far.
    max_gap : largest row distance (as a fraction of the image height) between two valid pixels of a
        column that are compared (sparse depth).
    min_order : ``road_order`` needed to pass, in (−1, 1].
    min_pairs : fewer compared pixel pairs (all frames together) → ``road_order`` fails (no road).
    max_tilt_deg : largest angle between the road plane's normal and the camera's down axis.
    min_plane_frames : share of the frames in which a road plane must be found, in [0, 1].
    min_spread : smallest accepted median ``log(p95 / p5)`` of a frame's depth.
    max_pinned : largest accepted share of pixels at the depth head's limits, in [0, 1].
    limit_tolerance : relative distance from a limit that counts as pinned.
    """

    region: float = 0.4
    tolerance: float = 0.01
    max_gap: float = 0.1
    min_order: float = 0.5
    min_pairs: int = 20
    max_tilt_deg: float = 20.0
    min_plane_frames: float = 0.5
    min_spread: float = 0.25
    max_pinned: float = 0.5
    limit_tolerance: float = 0.02

    def __post_init__(self) -> None:
        if not 0 < self.region <= 1:
            raise DualDepthError(f"collapse check: region must be in (0, 1], got {self.region}")
        if not (-1 < self.min_order <= 1 and 0 <= self.min_plane_frames <= 1 and 0 <= self.max_pinned <= 1):
            raise DualDepthError("collapse check: min_order in (-1, 1], min_plane_frames and max_pinned in [0, 1]")
        if self.tolerance < 0 or self.max_gap <= 0 or self.min_spread < 0 or self.limit_tolerance < 0:
            raise DualDepthError("collapse check: tolerance, max_gap, min_spread, limit_tolerance must be positive")


@dataclasses.dataclass(frozen=True)
class CollapseTest:
    """One test of the check: its score, whether it passed, and why (one readable line)."""

    name: str
    score: float
    passed: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class CollapseReport:
    """The result of :func:`check_depth` / :func:`check_model`.

    Attributes
    ----------
    road_order : pooled vertical-order score of the lower image, in [−1, 1] (NaN: no pair differs).
    order_pairs : pixel pairs that decided it.
    plane_frames : share of the frames with a road plane below the camera, in [0, 1].
    plane_inliers : median inlier fraction of the found planes (NaN: none).
    plane_tilt_deg : median angle of their normals from the camera's down axis, degrees (NaN: none).
    plane_height : median distance of the camera above them, in the depth's units (NaN: none).
    spread : median over frames of ``log(p95 / p5)`` of the valid depth (0: constant).
    pinned : share of the valid pixels at the depth head's limits (NaN: limits not given).
    health : one score in [0, 1] to rank checkpoints, higher is better (module docstring).
    passed : every test passed.
    tests : the tests, each with its reason.
    n_frames : depth maps checked.
    """

    road_order: float
    order_pairs: int
    plane_frames: float
    plane_inliers: float
    plane_tilt_deg: float
    plane_height: float
    spread: float
    pinned: float
    health: float
    passed: bool
    tests: tuple[CollapseTest, ...]
    n_frames: int

    @property
    def failures(self) -> list[str]:
        """The reasons of the failed tests (empty when the check passed)."""
        return [t.reason for t in self.tests if not t.passed]

    def summary(self) -> str:
        """One line for logs and the run summary."""
        if self.passed:
            return f"collapse check passed (health {self.health:.3f}): " + "; ".join(t.reason for t in self.tests)
        return f"collapse check FAILED (health {self.health:.3f}): " + "; ".join(self.failures)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN → None)."""

        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        out = {k: clean(v) for k, v in dataclasses.asdict(self).items() if k != "tests"}
        out["tests"] = [{**dataclasses.asdict(t), "score": clean(t.score)} for t in self.tests]
        return out


# ---------------------------------------------------------------------------------------
# Scores of one depth map
# ---------------------------------------------------------------------------------------
def _first_road_row(intrinsics: Intrinsics, region: float) -> int:
    """First image row of the road region: the lower ``region`` of the rows, below the principal point."""
    h = intrinsics.height
    return min(h - 1, max(int(math.floor(h * (1.0 - region))), int(math.floor(intrinsics.cy)) + 1))


def _valid(depth: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth) & (depth > 0)


def vertical_order_counts(
    depth: np.ndarray, intrinsics: Intrinsics, settings: CollapseSettings | None = None
) -> tuple[int, int]:
    """Pixel pairs of the road region whose upper pixel is farther / nearer than the lower one.

    Parameters
    ----------
    depth : ``H×W`` z-depth (any unit; NaN, inf or ≤ 0 invalid).
    intrinsics : the camera at the depth's ``W×H`` (only ``cy`` and the height are used).
    settings : region, tolerance and ``max_gap`` (defaults: :class:`CollapseSettings`).

    Returns
    -------
    ``(farther, nearer)``: counts over vertically consecutive valid pixels of each column at most
    ``max_gap·H`` rows apart whose depths differ by more than ``tolerance`` (relative).
    """
    s = settings or CollapseSettings()
    depth = np.asarray(depth, dtype=np.float64)
    sub = depth[_first_road_row(intrinsics, s.region) :]
    valid = _valid(sub)
    rows = np.arange(sub.shape[0])[:, None]
    last = np.maximum.accumulate(np.where(valid, rows, -1), axis=0)  # last valid row at or above each row
    above = np.vstack([np.full((1, sub.shape[1]), -1), last[:-1]])  # ... strictly above
    max_gap = max(1, int(round(s.max_gap * intrinsics.height)))
    pair = valid & (above >= 0) & (rows - above <= max_gap)
    logd = np.log(np.where(valid, sub, 1.0))
    upper = np.take_along_axis(logd, np.maximum(above, 0), axis=0)
    diff = (upper - logd)[pair]  # log(upper / lower)
    step = math.log1p(s.tolerance)
    return int((diff > step).sum()), int((diff < -step).sum())


def depth_spread(depth: np.ndarray) -> float:
    """``log(p95 / p5)`` of the valid pixels of an ``H×W`` depth map (0 for a constant; NaN when empty)."""
    depth = np.asarray(depth, dtype=np.float64)
    d = depth[_valid(depth)]
    if d.size == 0:
        return float("nan")
    p5, p95 = np.percentile(d, [5, 95])
    return float(math.log(p95 / p5))


# ---------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def _intrinsics_list(intrinsics: Intrinsics | Sequence[Intrinsics], n: int) -> list[Intrinsics]:
    if isinstance(intrinsics, Intrinsics):
        return [intrinsics] * n
    out = list(intrinsics)
    if len(out) != n:
        raise DualDepthError(f"collapse check: {n} depth maps but {len(out)} intrinsics")
    return out


def check_depth(
    depths: np.ndarray | Sequence[np.ndarray],
    intrinsics: Intrinsics | Sequence[Intrinsics],
    *,
    limits: tuple[float, float] | None = None,
    settings: CollapseSettings | None = None,
) -> CollapseReport:
    """Check predicted depth maps for inversion and collapse, without ground truth.

    Parameters
    ----------
    depths : ``N×H×W`` (or ``N×1×H×W``, or one ``H×W``) z-depth, metres or model units; NaN, inf
        and ≤ 0 are invalid pixels (a model's output has none; ground truth may be sparse).
    intrinsics : the camera at the depths' resolution ``W×H`` (pixels), one for all maps or one per map.
    limits : ``(min_depth, max_depth)`` the depth head can output, in the depths' units; enables the
        ``pinned`` test.
    settings : thresholds (defaults: :class:`CollapseSettings`).

    Returns
    -------
    :class:`CollapseReport` with the scores, a reason per test, ``passed`` and ``health``.

    Raises
    ------
    DualDepthError : no depth maps, or a map whose size differs from its intrinsics.
    """
    s = settings or CollapseSettings()
    if isinstance(depths, np.ndarray):
        maps = [depths] if depths.ndim == 2 else list(depths.reshape(-1, *depths.shape[-2:]))
    else:
        maps = [np.asarray(d).reshape(np.asarray(d).shape[-2:]) for d in depths]
    if not maps:
        raise DualDepthError("collapse check: no depth maps to check")
    cams = _intrinsics_list(intrinsics, len(maps))
    if limits is not None and not (0 <= limits[0] < limits[1]):
        raise DualDepthError(f"collapse check: limits must be (min_depth, max_depth) with 0 <= min < max, got {limits}")
    farther = nearer = 0
    plane_found, inliers, tilts, heights, spreads = [], [], [], [], []
    pinned_n = valid_n = 0
    for depth, K in zip(maps, cams):
        depth = np.asarray(depth, dtype=np.float32)
        if depth.shape != (K.height, K.width):
            raise DualDepthError(
                f"collapse check: a depth map is {depth.shape[1]}x{depth.shape[0]} but its intrinsics are for "
                f"{K.width}x{K.height}: pass the intrinsics at the depth's resolution"
            )
        f, n = vertical_order_counts(depth, K, s)
        farther += f
        nearer += n
        fit = fit_road_plane(depth, K, region=s.region, max_tilt_deg=s.max_tilt_deg)
        plane_found.append(fit is not None)
        if fit is not None:
            inliers.append(fit.inlier_fraction)
            tilts.append(fit.tilt_deg)
            heights.append(fit.height)
        spreads.append(depth_spread(depth))
        if limits is not None:
            d = depth[_valid(depth)].astype(np.float64)
            lo, hi = limits
            pinned_n += int(((d <= lo * (1 + s.limit_tolerance)) | (d >= hi * (1 - s.limit_tolerance))).sum())
            valid_n += d.size

    pairs = farther + nearer
    order = (farther - nearer) / pairs if pairs else float("nan")
    n_frames = len(maps)
    plane_share = float(np.mean(plane_found))
    finite_spreads = [v for v in spreads if math.isfinite(v)]
    spread = _median(finite_spreads)
    pinned = pinned_n / valid_n if limits is not None and valid_n else float("nan")

    tests = []
    if pairs < s.min_pairs:
        tests.append(
            CollapseTest(
                "road_order",
                order,
                False,
                f"depth does not change going up the lower image ({pairs} pixel pairs differ by more than "
                f"{s.tolerance:g}, need {s.min_pairs}): collapsed, or no valid depth there",
            )
        )
    elif order < s.min_order:
        what = "inverted: it shrinks towards the horizon" if order <= -0.2 else "not growing towards the horizon"
        tests.append(
            CollapseTest(
                "road_order",
                order,
                False,
                f"depth is {what} in the lower image (road order {order:+.2f} < {s.min_order:g})",
            )
        )
    else:
        tests.append(
            CollapseTest("road_order", order, True, f"depth grows towards the horizon (road order {order:+.2f})")
        )
    plane_text = f"a road plane below the camera in {sum(plane_found)}/{n_frames} frames"
    if any(plane_found) and plane_share >= s.min_plane_frames:
        tests.append(
            CollapseTest(
                "road_plane",
                plane_share,
                True,
                f"{plane_text} (inliers {_median(inliers):.2f}, tilt {_median(tilts):.1f}°)",
            )
        )
    else:
        tests.append(
            CollapseTest(
                "road_plane",
                plane_share,
                False,
                f"only {plane_text} (need {s.min_plane_frames:.0%}, normal within {s.max_tilt_deg:g}° of down)",
            )
        )
    if math.isfinite(spread) and spread >= s.min_spread:
        tests.append(CollapseTest("spread", spread, True, f"depth spread log(p95/p5) {spread:.2f}"))
    else:
        tests.append(
            CollapseTest(
                "spread",
                spread,
                False,
                f"depth collapsed to a constant: log(p95/p5) {spread:.3f} < {s.min_spread:g}"
                if math.isfinite(spread)
                else "no valid depth",
            )
        )
    if limits is not None:
        ok = math.isfinite(pinned) and pinned <= s.max_pinned
        where = f"{pinned:.0%} of the pixels at the depth head's limits {limits[0]:g}/{limits[1]:g}"
        if not math.isfinite(pinned):
            reason = "no valid depth"
        else:
            reason = where if ok else f"depth pinned: {where} (> {s.max_pinned:.0%})"
        tests.append(CollapseTest("pinned", pinned, ok, reason))

    g = (1.0 + order) / 2.0 if math.isfinite(order) and pairs >= s.min_pairs else 0.0
    p = float(np.mean([min(1.0, fi / 0.5) for fi in inliers] + [0.0] * (n_frames - len(inliers))))
    sp = min(1.0, spread) if math.isfinite(spread) else 0.0
    sp *= 1.0 - (pinned if math.isfinite(pinned) else 0.0)
    health = (g + p + sp) / 3.0
    return CollapseReport(
        road_order=float(order),
        order_pairs=int(pairs),
        plane_frames=plane_share,
        plane_inliers=_median(inliers),
        plane_tilt_deg=_median(tilts),
        plane_height=_median(heights),
        spread=spread,
        pinned=float(pinned),
        health=float(health),
        passed=all(t.passed for t in tests),
        tests=tuple(tests),
        n_frames=n_frames,
    )


def _to_numpy(x: Any) -> np.ndarray:
    """A predictor's output as numpy (a torch tensor on any device is detached and copied to the host)."""
    if hasattr(x, "detach"):
        x = x.detach()
        x = x.float().cpu() if hasattr(x, "float") else x.cpu()
        return x.numpy()
    return np.asarray(x)


def check_model(
    predict: Callable[[list[Any]], Any],
    frames: Iterable[Any],
    intrinsics: Intrinsics | Sequence[Intrinsics],
    *,
    batch_size: int = 8,
    limits: tuple[float, float] | None = None,
    settings: CollapseSettings | None = None,
) -> CollapseReport:
    """Run a depth model over frames and :func:`check_depth` its output.

    Parameters
    ----------
    predict : called with a list of up to ``batch_size`` frames (as given in ``frames``); returns
        their depth as ``N×H×W`` or ``N×1×H×W`` (numpy, or a torch tensor on any device).
        Runs under whatever mode the caller set (e.g. wrap it in ``torch.no_grad`` and ``eval()``).
    frames : the model's inputs, one per frame (images, tensors: whatever ``predict`` takes).
    intrinsics : the camera at the predicted depth's resolution, one for all frames or one per frame.
    batch_size : frames per call of ``predict``.
    limits, settings : as in :func:`check_depth`.

    Returns
    -------
    :class:`CollapseReport`.
    """
    if batch_size < 1:
        raise DualDepthError(f"collapse check: batch_size must be at least 1, got {batch_size}")
    maps: list[np.ndarray] = []
    batch: list[Any] = []

    def flush() -> None:
        if not batch:
            return
        out = _to_numpy(predict(list(batch)))
        out = out.reshape(-1, *out.shape[-2:])
        if out.shape[0] != len(batch):
            raise DualDepthError(
                f"collapse check: the model returned {out.shape[0]} depth maps for {len(batch)} frames"
            )
        maps.extend(out)
        batch.clear()

    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            flush()
    flush()
    return check_depth(maps, intrinsics, limits=limits, settings=settings)
