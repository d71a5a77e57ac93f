"""The ground-truth-free collapse check (dualdepth_ros.evaluation.collapse, issue 14 §3).

True depth passes (the committed synthetic drive, a traffic drive with a truck beside the car, a real
KITTI frame with its LiDAR depth); the same depth inverted, flipped, constant or pinned at the head's
limits fails, each for its own reason.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dualdepth_ros import bagio
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.evaluation import collapse
from dualdepth_ros.evaluation.collapse import CollapseSettings, check_depth, check_model, vertical_order_counts
from dualdepth_ros.images import decode_image
from dualdepth_ros.intrinsics import Intrinsics
from dualdepth_ros.synth import SynthConfig, World, render_frame

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BAG = ROOT / "test" / "data" / "sample_drive"
SAMPLE_K = Intrinsics(160.0, 160.0, 159.5, 47.5, 320, 96)  # the sample drive's README: 320×96, fx = fy = 160
KITTI_BAG = ROOT.parent / "shared" / "data" / "kitti_raw_0009" / "bag"
# ../shared/data/kitti_raw_0009/README.md: P_rect_02 of the drive's calib_cam_to_cam.txt, 1242×375.
KITTI_K = Intrinsics(721.5377, 721.5377, 609.5593, 172.8540, 1242, 375)
LIMITS = (1 / 10.01, 100.0)  # the depth head's range: 1 / (10·sigmoid + 0.01)


@pytest.fixture(scope="module")
def sample_depth() -> np.ndarray:
    """Every 10th ground-truth depth map of the committed sample drive: 10×96×320 metres, NaN sky."""
    maps = [decode_image(m.msg) for m in bagio.read_messages(SAMPLE_BAG, ["/gt/depth"])][::10]
    assert len(maps) == 10
    return np.stack(maps).astype(np.float32)


def _as_model_output(depth: np.ndarray) -> np.ndarray:
    """GT as a network would give it: the sky (NaN) at the head's largest depth."""
    return np.where(np.isfinite(depth), np.clip(depth, *LIMITS), LIMITS[1]).astype(np.float32)


def _names(report) -> dict[str, bool]:
    return {t.name: t.passed for t in report.tests}


def test_true_depth_of_the_sample_drive_passes(sample_depth):
    for depth in (sample_depth, _as_model_output(sample_depth)):
        r = check_depth(depth, SAMPLE_K, limits=LIMITS)
        assert r.passed, r.summary()
        assert r.n_frames == 10 and r.road_order > 0.9 and r.plane_frames == 1.0
        assert r.plane_tilt_deg < 2.0 and r.plane_height == pytest.approx(1.5, rel=0.02)  # 1.5 m camera height
        assert r.spread > 2.0 and r.health > 0.9
        assert r.summary().startswith("collapse check passed")


def test_inverted_depth_fails(sample_depth):
    good = _as_model_output(sample_depth)
    inverted = (1.0 / good) * 10.0  # the road near the car far, the sky near (the failure), rescaled
    r = check_depth(inverted, SAMPLE_K, limits=LIMITS)
    assert not r.passed
    assert _names(r) == {"road_order": False, "road_plane": False, "spread": True, "pinned": True}
    assert r.road_order < -0.9 and r.plane_frames == 0.0
    assert "inverted" in r.summary() and r.summary().startswith("collapse check FAILED")
    assert r.health < 0.5 * check_depth(good, SAMPLE_K, limits=LIMITS).health


def test_flipped_depth_fails(sample_depth):
    flipped = _as_model_output(sample_depth)[:, ::-1]  # sky and roofs at the bottom, the road at the top
    r = check_depth(flipped, SAMPLE_K)
    assert not r.passed and not _names(r)["road_order"] and not _names(r)["road_plane"]
    assert "pinned" not in _names(r)  # no limits given: not tested


def test_constant_and_pinned_depth_fail(sample_depth):
    r = check_depth(np.full_like(sample_depth, 7.0), SAMPLE_K, limits=LIMITS)
    assert _names(r) == {"road_order": False, "road_plane": False, "spread": False, "pinned": True}
    assert r.spread == 0.0 and r.order_pairs == 0 and r.health == 0.0
    assert "collapsed" in r.summary()
    # At the head's largest depth everywhere except a road-like lower image: pinned.
    pinned = _as_model_output(sample_depth)
    pinned[:, :60] = LIMITS[1]
    r = check_depth(pinned, SAMPLE_K, limits=LIMITS)
    assert _names(r)["pinned"] is False and r.pinned > 0.5 and "depth pinned" in r.summary()
    assert check_depth(pinned, SAMPLE_K).passed  # without the limits that test is not run


def test_noise_is_not_a_road():
    noise = np.random.default_rng(0).uniform(1.0, 50.0, (4, 96, 320)).astype(np.float32)
    r = check_depth(noise, SAMPLE_K)
    assert not r.passed and abs(r.road_order) < 0.1 and r.plane_frames == 0.0


def test_traffic_that_fills_the_rows_still_passes():
    """A truck beside the car and cars ahead (make-sample's jam): true depth passes."""
    cfg = SynthConfig(width=160, height=48, supersample=1, lead_vehicles=2, side_vehicles=3, speed=4.0)
    world = World.from_seed(7, cfg)
    frames = [render_frame(world, t) for t in (0.0, 1.0, 2.0)]
    assert np.mean([f.moving_mask.mean() for f in frames]) > 0.2
    r = check_depth(np.stack([f.depth for f in frames]), frames[0].intrinsics)
    assert r.passed, r.summary()
    # A rank correlation between the row and the row's median depth (not used by the check) would call this true
    # depth inverted: the truck's flank fills the rows, so the medians grow going down the lower image.
    medians = np.nanmedian(frames[0].depth[30:], axis=1)  # rows below the horizon (cy = 23.5) in the lower 40 %
    ranks = np.argsort(np.argsort(medians, kind="stable"))
    assert np.corrcoef(np.arange(len(medians)), ranks)[0, 1] > 0.5


@pytest.mark.skipif(not KITTI_BAG.exists(), reason="../shared/data/kitti_raw_0009 is absent (a user's clone)")
def test_a_real_kitti_frame_with_its_lidar_depth_passes():
    depth = None
    for m in bagio.read_messages(KITTI_BAG, ["/gt/depth", "/camera/camera_info"]):
        if m.topic == "/camera/camera_info":
            np.testing.assert_allclose(np.asarray(m.msg.k).reshape(3, 3), KITTI_K.matrix(), rtol=1e-6)
        else:
            mm = decode_image(m.msg).astype(np.float32)  # 16UC1 millimetres, 0 = no LiDAR point
            depth = np.where(mm > 0, mm / 1000.0, np.nan).astype(np.float32)
        if depth is not None and m.topic == "/gt/depth":
            break
    assert depth is not None and depth.shape == (375, 1242)
    assert 0.02 < np.isfinite(depth).mean() < 0.06  # sparse: about 4 % of the pixels
    r = check_depth(depth, KITTI_K)
    assert r.passed, r.summary()
    assert r.road_order > 0.9 and r.plane_tilt_deg < 6.0
    assert r.plane_height == pytest.approx(1.65, rel=0.05)  # KITTI's camera is 1.65 m above the road
    inverted = np.where(np.isfinite(depth), 100.0 / depth, np.nan)
    r = check_depth(inverted, KITTI_K)
    assert not r.passed and r.road_order < -0.9 and r.plane_frames == 0.0


def _brute_order(depth: np.ndarray, first_row: int, max_gap: int, tol: float) -> tuple[int, int]:
    farther = nearer = 0
    for c in range(depth.shape[1]):
        rows = [r for r in range(first_row, depth.shape[0]) if np.isfinite(depth[r, c]) and depth[r, c] > 0]
        for a, b in zip(rows, rows[1:]):
            if b - a > max_gap:
                continue
            ratio = depth[a, c] / depth[b, c]
            farther += ratio > 1 + tol
            nearer += ratio < 1 / (1 + tol)
    return farther, nearer


def test_vertical_order_matches_a_per_column_loop_on_sparse_depth():
    rng = np.random.default_rng(4)
    K = Intrinsics(50.0, 50.0, 31.5, 19.5, 64, 40)
    depth = rng.uniform(1.0, 30.0, (40, 64))
    depth[rng.random((40, 64)) < 0.7] = np.nan  # sparse
    depth[rng.random((40, 64)) < 0.05] = 0.0  # invalid
    got = vertical_order_counts(depth, K, CollapseSettings(tolerance=0.01, max_gap=0.1))
    # the lower 40 % (from row 24), below the principal point (19.5): rows 24..39; gaps of at most 4 rows
    expected = _brute_order(depth, 24, 4, 0.01)
    assert got == expected and sum(got) > 50


def test_check_model_batches_a_predictor(sample_depth):
    good = _as_model_output(sample_depth)
    calls = []

    def predict(batch):
        calls.append(list(batch))
        return torch.from_numpy(good[batch][:, None])  # N×1×H×W tensor, like the depth net's output

    r = check_model(predict, range(10), SAMPLE_K, batch_size=4, limits=LIMITS)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert r.passed and r.n_frames == 10
    assert r.as_dict() == check_depth(good, SAMPLE_K, limits=LIMITS).as_dict()

    def inverted(batch):
        return 10.0 / good[batch]

    bad = check_model(inverted, range(10), [SAMPLE_K] * 10)
    assert not bad.passed and bad.health < r.health
    d = bad.as_dict()
    assert (
        d["passed"] is False
        and d["pinned"] is None
        and {t["name"] for t in d["tests"]}
        == {
            "road_order",
            "road_plane",
            "spread",
        }
    )


def test_bad_input_is_one_clear_error(sample_depth):
    with pytest.raises(DualDepthError, match="returned 1 depth maps for 2 frames"):
        check_model(lambda b: sample_depth[:1], range(2), SAMPLE_K)
    with pytest.raises(DualDepthError, match="intrinsics are for 320x96"):
        check_depth(sample_depth[:, :48, :160], SAMPLE_K)
    with pytest.raises(DualDepthError, match="no depth maps"):
        check_depth([], SAMPLE_K)
    with pytest.raises(DualDepthError, match="3 depth maps but 2 intrinsics"):
        check_depth(sample_depth[:3], [SAMPLE_K] * 2)
    with pytest.raises(DualDepthError, match="limits must be"):
        check_depth(sample_depth[:1], SAMPLE_K, limits=(100.0, 0.1))
    with pytest.raises(DualDepthError, match="region"):
        CollapseSettings(region=0.0)


def test_the_module_imports_no_torch():
    tree = ast.parse(Path(collapse.__file__).read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.split(".")[0] == "torch" for m in modules)
    assert math.isfinite(check_depth(np.ones((48, 64)), Intrinsics(40.0, 40.0, 31.5, 23.5, 64, 48)).health)
