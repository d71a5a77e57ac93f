"""Scale recovery (dualdepth_ros.ros.scale): the road-plane fit against analytic planes and the
sample drive's ground truth, and the smoothing / gating of the camera_height scale.
"""

import math

import numpy as np
import pytest
from node_harness import SAMPLE_BAG, road_depth

from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.geometry import Intrinsics
from dualdepth_ros.ros.scale import ScaleEstimator, ScaleSettings, fit_road_plane

K = Intrinsics(80.0, 80.0, 79.5, 23.5, 160, 48)


def test_backproject_matches_the_pinhole_model() -> None:
    depth = np.full((48, 160), 2.0, np.float32)
    pts = K.backproject(depth)
    assert pts.shape == (48, 160, 3)
    # pixel (u=0, v=47): X = (0 - 79.5) * 2 / 80, Y = (47 - 23.5) * 2 / 80
    np.testing.assert_allclose(pts[47, 0], [-79.5 * 2 / 80, 23.5 * 2 / 80, 2.0], rtol=1e-6)
    np.testing.assert_allclose(K.backproject(depth, slice(40, None)), pts[40:])
    with pytest.raises(ValueError, match="intrinsics are for 160x48"):
        K.backproject(np.ones((10, 10)))


@pytest.mark.parametrize("height,pitch", [(1.5, 0.0), (0.12, 0.0), (1.65, 3.0), (40.0, -2.0)])
def test_fit_recovers_a_flat_road_exactly(height: float, pitch: float) -> None:
    depth = road_depth(K, height, far=1000.0 * height, pitch_deg=pitch)
    fit = fit_road_plane(depth, K)
    assert fit is not None
    assert fit.height == pytest.approx(height, rel=1e-4)
    assert fit.tilt_deg == pytest.approx(abs(pitch), abs=0.05)
    assert fit.inlier_fraction > 0.95


def test_fit_ignores_obstacles_on_the_road() -> None:
    depth = road_depth(K, 1.5, far=60.0)
    rng = np.random.default_rng(3)
    depth[30:48, 20:70] = 6.0  # a car close ahead: a fronto-parallel surface over a third of the region
    noisy = depth * rng.normal(1.0, 0.01, depth.shape).astype(np.float32)
    fit = fit_road_plane(noisy, K)
    assert fit is not None and fit.height == pytest.approx(1.5, rel=0.02)
    assert fit.inlier_fraction < 0.8  # the car is not part of the plane


def test_fit_gives_none_without_a_road() -> None:
    assert fit_road_plane(np.full((48, 160), 5.0, np.float32), K) is None  # a wall
    assert fit_road_plane(np.full((48, 160), np.nan, np.float32), K) is None  # nothing valid
    tilted = road_depth(K, 1.5, far=60.0, pitch_deg=40.0)  # a "road" 40° off: not a road for a car camera
    assert fit_road_plane(tilted, K) is None


def test_fit_on_the_sample_drive_ground_truth_gives_the_recorded_camera_height() -> None:
    """Independent check: the synthetic world's camera is 1.5 m above a flat road (the bag's README)."""
    from dualdepth_ros.bagio import read_messages
    from dualdepth_ros.images import decode_image

    heights = []
    for i, m in enumerate(read_messages(SAMPLE_BAG, ["/gt/depth"])):
        if i % 10:
            continue
        gt = decode_image(m.msg).astype(np.float32)  # 320×96, fx = fy = 160
        fit = fit_road_plane(gt, Intrinsics(160.0, 160.0, 159.5, 47.5, 320, 96))
        assert fit is not None
        heights.append(fit.height)
    assert len(heights) == 10
    assert np.median(heights) == pytest.approx(1.5, rel=0.01)
    assert max(abs(h - 1.5) for h in heights) < 0.1


def test_fixed_and_none_modes() -> None:
    depth = road_depth(K, 0.2)
    assert ScaleEstimator(ScaleSettings(mode="none")).update(depth, K) == 1.0
    assert ScaleEstimator(ScaleSettings(mode="fixed", fixed_scale=7.5)).update(depth, K) == 7.5


def test_camera_height_scale_smoothing_gating_and_restart() -> None:
    est = ScaleEstimator(
        ScaleSettings(mode="camera_height", camera_height_m=1.5, smoothing=0.5, gate=1.5, max_rejections=3)
    )
    assert est.scale is None  # unknown until a plane is fitted
    assert est.update(np.full((48, 160), 5.0, np.float32), K) is None
    assert est.counts["failed"] == 1
    assert est.update(road_depth(K, 0.15), K) == pytest.approx(10.0, rel=1e-3)
    # a frame at 12 (within the 1.5× gate) moves the average half-way in log space
    assert est.update(road_depth(K, 0.125), K) == pytest.approx(math.sqrt(10.0 * 12.0), rel=1e-3)
    s = est.scale
    # an outlier (scale 30, beyond the gate) is ignored …
    assert est.update(road_depth(K, 0.05), K) == pytest.approx(s)
    assert est.counts["outlier"] == 1
    # … unless it persists: after max_rejections outliers in a row the estimate restarts there
    est.update(road_depth(K, 0.05), K)
    assert est.update(road_depth(K, 0.05), K) == pytest.approx(30.0, rel=1e-3)
    assert "restarted" in est.last_status
    d = est.describe()
    assert d["mode"] == "camera_height" and d["scale"] == pytest.approx(30.0, rel=1e-3)
    # a new camera height restarts the smoothing
    est.settings = ScaleSettings(mode="camera_height", camera_height_m=3.0)
    assert est.scale is None
    assert est.update(road_depth(K, 0.15), K) == pytest.approx(20.0, rel=1e-3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "lidar"}, "scale_mode must be one of"),
        ({"camera_height_m": 0.0}, "camera_height_m must be a positive"),
        ({"fixed_scale": float("nan")}, "fixed_scale must be a positive"),
        ({"smoothing": 0.0}, "scale_smoothing"),
        ({"gate": 1.0}, "scale_gate"),
    ],
)
def test_invalid_scale_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(DualDepthError, match=match):
        ScaleSettings(**kwargs)


def test_camera_height_scale_is_metric_when_the_depth_geometry_is_right() -> None:
    """End to end through FrameProcessor with a depth that has the right geometry (the sample drive's
    ground truth in arbitrary "model units", ÷ 7.3) and the camera's real height: the published depth is
    metric: its AbsRel without median scaling is within the issue's 15 % of the median-scaled one (measured
    0.034 vs 0.031) and the recovered scale is the true one within 3 %. With the shipped, under-trained model
    the road geometry is wrong and the bound is missed: see test_node_integration.py.
    """
    from node_harness import DEFAULT_MODEL, FakeResult, sample_frames, sample_gt

    from dualdepth_ros.inference import load_metadata
    from dualdepth_ros.ros.params import OutputSettings
    from dualdepth_ros.ros.processing import FrameProcessor
    from dualdepth_ros.ros.scoring import GroundTruthScorer, depth_metres

    metadata = load_metadata(DEFAULT_MODEL)
    frames, gt = sample_frames(), sample_gt()
    pre = metadata.preprocessor()
    maps = [pre.prepare_map(depth_metres(gt[f.stamp_ns]), f.info) / 7.3 for f in frames]

    class GroundTruthBackend:
        name, reason = "ground truth", "test double"

        def __init__(self) -> None:
            self.metadata = metadata
            self.i = 0

        def infer(self, image: np.ndarray) -> FakeResult:
            d = np.where(np.isfinite(maps[self.i]), maps[self.i], np.nan).astype(np.float32)[None, None]
            self.i += 1
            return FakeResult(d, np.ones_like(d))

    p = FrameProcessor(GroundTruthBackend(), OutputSettings(), ScaleSettings(camera_height_m=1.5))
    scorer = GroundTruthScorer(pre, metric=True)
    for f in frames:
        out = p.process(f.image, f.info)
        p.update_scale(out)
        scorer.add(out.depth, out.confidence, gt[f.stamp_ns], f.info)
    s = scorer.summary()
    assert s["n_images"] == 100
    assert p.scaler.scale == pytest.approx(7.3, rel=0.03)
    assert s["metric_scale"]["abs_rel"] <= 1.15 * s["median_scaled"]["abs_rel"]
    assert s["scale_ratio"]["median"] == pytest.approx(1.0, abs=0.03)
