"""Tests of the synthetic world against independent ground truth.

The strongest check is photometric: warping frame t+1 into frame t with the ground-truth depth
of frame t, the ground-truth relative pose and ``K`` (all through ``geometry.warp``, nothing
re-derived here) must reproduce frame t on static, visible pixels at every distance, and must
fail on moving cars. It catches wrong poses, wrong depth, a depth/image misalignment, a wrong
pose convention, and textures that alias (which break brightness constancy between frames).
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch

from dualdepth_ros import geometry
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.synth import (
    CLASSES,
    DEFAULT_DISTORTION,
    SynthConfig,
    World,
    distort_points,
    render_frame,
    undistort_points,
)
from dualdepth_ros.synth import render as render_mod
from dualdepth_ros.synth.road import SpeedProfile
from dualdepth_ros.synth.textures import box, pulse_train

W, H = 320, 96
BANDS = {"near": (0.0, 10.0), "mid": (10.0, 30.0), "far": (30.0, np.inf)}
# Mean L1 error (RGB in [0, 1]) on static, visible pixels. Measured at 320x96 over 4 seeds × 2 frame
# pairs (supersample 2): near ≤ 0.0073, mid ≤ 0.0097, far ≤ 0.023 (the rest is the bilinear resampling
# of sharp, anti-aliased edges, largest where everything is small). The bounds leave ~1.6-2× margin;
# point-sampled textures score near 0.012-0.022, mid 0.021-0.038, far 0.028-0.049.
BOUNDS = {"near": 0.012, "mid": 0.016, "far": 0.035}
# Moving cars measured 0.053-0.084: several times any static band.
MOVING_MIN = 0.035


@pytest.fixture(scope="module")
def world() -> World:
    return World.from_seed(1, SynthConfig(width=W, height=H))


@pytest.fixture(scope="module")
def pair(world):
    return render_frame(world, 1.0), render_frame(world, 1.1)


def warp_errors(f0, f1, tol: float = 0.01):
    """Per-pixel L1 error of frame 1 warped into frame 0 with GT, and the static-visible mask."""
    K = f0.intrinsics.tensor(batch=1, dtype=torch.float64)
    T_0_to_1 = geometry.relative_pose(
        torch.from_numpy(f0.T_cam_to_world)[None], torch.from_numpy(f1.T_cam_to_world)[None]
    )
    depth0 = torch.from_numpy(np.nan_to_num(f0.depth, nan=1e6).astype(np.float64))[None, None]

    def img(f):
        return torch.from_numpy(f.rgb.astype(np.float64) / 255).permute(2, 0, 1)[None]

    res = geometry.warp(img(f1), depth0, T_0_to_1, K)
    err = (res.image - img(f0)).abs().mean(1)[0].numpy()
    # Occlusion from GT: the warped point's depth in camera 1 must match camera 1's depth there.
    # Inverse depth of a plane is affine in the image, so bilinear interpolation of it is exact on
    # planes; across a depth edge it is not, which also drops pixels whose colour mixes two surfaces.
    inv1 = torch.from_numpy(np.nan_to_num(1.0 / f1.depth.astype(np.float64), nan=0.0))[None, None]
    inv_at = geometry.sample(inv1, res.pix)[0, 0].numpy()
    moving1 = geometry.sample(torch.from_numpy(f1.moving_mask.astype(np.float64))[None, None], res.pix)[0, 0]
    z = res.z[0, 0].numpy()
    visible = np.abs(inv_at * z - 1) < tol
    valid = res.valid[0, 0].numpy() > 0
    static = valid & np.isfinite(f0.depth) & ~f0.moving_mask & (moving1.numpy() == 0) & visible
    return err, static, valid


def band_means(f0, f1):
    err, static, valid = warp_errors(f0, f1)
    out = {}
    for name, (lo, hi) in BANDS.items():
        m = static & (f0.depth >= lo) & (f0.depth < hi)
        out[name] = (float(err[m].mean()), int(m.sum()))
    mv = valid & f0.moving_mask
    out["moving"] = (float(err[mv].mean()), int(mv.sum()))
    return out


def test_gt_warp_reproduces_static_scene_at_every_depth_and_fails_on_moving_cars(pair):
    stats = band_means(*pair)
    for name, bound in BOUNDS.items():
        mean, count = stats[name]
        assert count > 500, f"too few {name} pixels to judge ({count})"
        assert mean < bound, f"{name}: mean photometric error {mean:.4f} >= {bound} ({stats})"
    mean_moving, count = stats["moving"]
    assert count > 100
    assert mean_moving > MOVING_MIN and mean_moving > 3 * max(stats[b][0] for b in BOUNDS), stats


def test_warp_with_a_wrong_pose_is_much_worse(pair):
    """The same check with the pose a few centimetres off must fail: the test has teeth."""
    f0, f1 = pair
    T = f1.T_cam_to_world.copy()
    T[:3, 3] += T[:3, :3] @ np.array([0.0, 0.0, 0.15])  # 15 cm further along the optical axis
    stats = band_means(f0, dataclasses.replace(f1, T_cam_to_world=T))
    assert stats["near"][0] > 2 * BOUNDS["near"], stats


def test_texture_filtering_is_what_keeps_frames_consistent(pair, world, monkeypatch):
    """Point-sampled textures (no footprint filtering) alias and raise the far-band error."""
    filtered = band_means(*pair)["far"][0]
    monkeypatch.setattr(render_mod, "_footprint", lambda t, *a: np.full_like(t, 1e-5))
    point = band_means(render_frame(world, 1.0), render_frame(world, 1.1))["far"][0]
    assert point > 1.4 * filtered, (point, filtered)


def _plane_depth(frame, height_above_plane: float) -> np.ndarray:
    """Analytic z-depth of the horizontal plane ``height_above_plane`` below the camera, for every pixel."""
    K = frame.intrinsics
    v, u = np.mgrid[0 : K.height, 0 : K.width].astype(np.float64)
    rays = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], axis=-1)
    down_cam = frame.T_cam_to_world[:3, :3].T @ np.array([0.0, 0.0, -1.0])  # world "down" in the camera
    with np.errstate(divide="ignore"):
        return height_above_plane / (rays @ down_cam)


@pytest.mark.parametrize("pitch", [0.0, 4.0])
def test_gt_depth_is_the_analytic_road_plane(pitch):
    cfg = SynthConfig(width=160, height=64, pitch_deg=pitch, supersample=1, camera_height=1.6)
    f = render_frame(World.from_seed(2, cfg), 0.5)
    road = f.semantic == CLASSES.index("road")
    assert road.sum() > 1500
    if pitch == 0:  # level camera: z = h·fy / (v − cy)
        v = np.mgrid[0:64, 0:160][0].astype(np.float64)
        expected = 1.6 * f.intrinsics.fy / (v - f.intrinsics.cy)
        np.testing.assert_allclose(f.depth[road], expected[road], rtol=2e-5)
    np.testing.assert_allclose(f.depth[road], _plane_depth(f, 1.6)[road], rtol=2e-5)
    sidewalk = f.semantic == CLASSES.index("sidewalk")
    assert sidewalk.sum() > 50
    np.testing.assert_allclose(f.depth[sidewalk], _plane_depth(f, 1.6 - 0.15)[sidewalk], rtol=2e-5)
    # Sky only above the horizon, and its depth is NaN.
    sky = f.semantic == CLASSES.index("sky")
    assert sky.any() and np.isnan(f.depth[sky]).all() and np.isfinite(f.depth[~sky]).all()
    assert np.all(_plane_depth(f, 1.6)[sky] <= 0) or pitch != 0


def test_same_seed_is_bit_identical_and_seeds_differ():
    cfg = SynthConfig(width=96, height=48, noise_std=2.0, exposure_jitter=0.1, distortion=DEFAULT_DISTORTION)
    a = render_frame(World.from_seed(11, cfg), 0.7)
    b = render_frame(World.from_seed(11, cfg), 0.7)
    c = render_frame(World.from_seed(12, cfg), 0.7)
    assert a.rgb.tobytes() == b.rgb.tobytes()
    assert a.depth.tobytes() == b.depth.tobytes()
    assert a.moving_mask.tobytes() == b.moving_mask.tobytes()
    assert a.T_cam_to_world.tobytes() == b.T_cam_to_world.tobytes()
    assert np.abs(a.rgb.astype(int) - c.rgb.astype(int)).mean() > 10
    assert not np.array_equal(a.depth, c.depth, equal_nan=True)
    assert a.rgb.dtype == np.uint8 and a.rgb.shape == (48, 96, 3)
    assert a.depth.dtype == np.float32 and a.depth.shape == (48, 96)


def test_distorted_image_rectifies_onto_the_gt_grid_with_opencv():
    """K, D and P describe the raw image exactly as OpenCV understands them."""
    base = SynthConfig(width=160, height=64)
    distorted = dataclasses.replace(base, distortion=DEFAULT_DISTORTION)
    pin = render_frame(World.from_seed(3, base), 1.0)
    raw = render_frame(World.from_seed(3, distorted), 1.0)
    assert np.array_equal(pin.depth, raw.depth, equal_nan=True)  # GT stays on the pinhole grid
    K, D = base.intrinsics().matrix(), np.asarray(DEFAULT_DISTORTION)
    m1, m2 = cv2.initUndistortRectifyMap(K, D, np.eye(3), K, (160, 64), cv2.CV_32FC1)
    rect = cv2.remap(raw.rgb, m1, m2, cv2.INTER_LINEAR)
    err_rect = np.abs(rect.astype(float) - pin.rgb).mean() / 255
    err_raw = np.abs(raw.rgb.astype(float) - pin.rgb).mean() / 255
    assert err_rect < 0.02 and err_raw > 2.5 * err_rect, (err_rect, err_raw)


def test_plumb_bob_matches_opencv_and_inverts():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1.0, 1.0, size=(200, 2)) * [1.0, 0.4]
    D = np.asarray(DEFAULT_DISTORTION)
    xd, yd = distort_points(pts[:, 0], pts[:, 1], D)
    cv, _ = cv2.projectPoints(
        np.hstack([pts, np.ones((200, 1))]), np.zeros(3), np.zeros(3), np.eye(3), D
    )  # identity K: normalised coordinates
    np.testing.assert_allclose(np.stack([xd, yd], 1), cv.reshape(-1, 2), atol=1e-12)
    xu, yu = undistort_points(xd, yd, D)
    np.testing.assert_allclose(np.stack([xu, yu], 1), pts, atol=1e-9)
    with pytest.raises(DualDepthError, match="cannot be inverted"):
        undistort_points(np.array([1.5]), np.array([0.5]), np.array([-0.9, 0.0, 0.0, 0.0, 0.0]))


def test_stop_holds_the_camera_still_while_traffic_moves():
    cfg = SynthConfig(width=96, height=48, stops=((3.0, 1.0),), supersample=1)
    world = World.from_seed(4, cfg)
    poses = [world.camera_pose(t) for t in (3.0, 3.5, 4.0)]
    assert all(np.array_equal(poses[0], p) for p in poses[1:])
    assert not np.allclose(world.camera_pose(2.5)[:3, 3], poses[0][:3, 3])
    # The speed profile is smooth, reaches zero and integrates to the distance travelled.
    prof = SpeedProfile(10.0, ((3.0, 1.0),), 2.0)
    ts = np.linspace(0, 8, 8001)
    v = prof.velocity(ts)
    assert v.min() == pytest.approx(0.0, abs=1e-6) and v.max() == pytest.approx(10.0, abs=1e-6)
    dist = np.concatenate([[0.0], np.cumsum((v[1:] + v[:-1]) / 2 * np.diff(ts))])
    np.testing.assert_allclose(dist, prof.distance(ts), atol=1e-4)
    # Oncoming cars keep moving during the stop: the moving mask changes between frames.
    a, b = world.objects_at(3.2), world.objects_at(3.8)
    assert np.array_equal(a.centre[~a.moving], b.centre[~b.moving])
    moved = np.linalg.norm(a.centre[a.moving][4:] - b.centre[b.moving][4:], axis=1)  # skip the lead car
    assert moved.size and moved.min() > 3.0  # ≥ 7 m/s for 0.6 s


def test_lead_car_moves_with_the_ego_and_is_marked_moving(world):
    s0, s1 = world.ego_s(2.0), world.ego_s(2.4)
    lead0 = world.objects_at(2.0, s0 + 5, s0 + 25)
    lead1 = world.objects_at(2.4, s1 + 5, s1 + 25)
    ego0, ego1 = world.camera_pose(2.0), world.camera_pose(2.4)
    body0 = lead0.centre[lead0.moving][0]
    body1 = lead1.centre[lead1.moving][0]
    cam0 = np.linalg.inv(ego0) @ np.append(body0, 1)
    cam1 = np.linalg.inv(ego1) @ np.append(body1, 1)
    assert cam0[2] == pytest.approx(world.config.lead_gap, abs=0.3)
    np.testing.assert_allclose(cam0[:3], cam1[:3], atol=0.05)  # same place in the camera


def test_box_filters_are_exact_averages():
    x = np.linspace(-3, 7, 41)
    fp = np.full_like(x, 0.37)
    fine = x[:, None] + np.linspace(-0.5, 0.5, 20001)[None] * fp[:, None]

    def brute(ind):
        return ind(fine).mean(axis=1)

    np.testing.assert_allclose(box(x, 0.2, 0.5, fp), brute(lambda y: (y >= 0.2) & (y <= 0.5)), atol=2e-4)
    got = pulse_train(x, 1.3, 0.4, 0.25, fp)
    expected = brute(lambda y: (np.mod(y, 1.3) >= 0.4) & (np.mod(y, 1.3) <= 0.65))
    np.testing.assert_allclose(got, expected, atol=2e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0}, "at least 16x16"),
        ({"height": 8}, "at least 16x16"),
        ({"width": 10000, "height": 10000}, "too large"),
        ({"supersample": 0}, "supersample"),
        ({"distortion": (0.1, 0.2)}, "5 plumb_bob"),
        ({"stops": ((3.0, 1.0), (4.0, 1.0))}, "overlap"),
        ({"fps": 0.0}, "fps"),
    ],
)
def test_config_rejects_impossible_values(kwargs, match):
    with pytest.raises(DualDepthError, match=match):
        SynthConfig(**kwargs)


def test_bench_render_reports_json(capsys):
    from dualdepth_ros import cli

    assert cli.main(["bench", "render", "--sizes", "48x32,32x16", "--frames", "2", "--warmup", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["width"], r["height"]) for r in report["results"]] == [(48, 32), (32, 16)]
    assert all(r["frames_per_second"] > 0 and r["min_s"] <= r["median_s"] <= r["max_s"] for r in report["results"])
    assert cli.main(["bench", "render", "--sizes", "big"]) == 2
    assert "--sizes expects WxH" in capsys.readouterr().err
