"""Tests of :mod:`dualdepth_ros.preprocess`: resize/crop intrinsics, rectification, errors, one tensor."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from dualdepth_ros import bagio
from dualdepth_ros.geometry import Intrinsics
from dualdepth_ros.preprocess import (
    CameraModel,
    FrameDecodeError,
    PreprocessError,
    Preprocessor,
    plan_resize,
)

T0 = 1_700_000_000_000_000_000


def _info(width, height, K, D=(), model="plumb_bob", P=None, **kw):
    return bagio.camera_info_msg(width, height, K, T0, "cam", D=D, distortion_model=model, P=P, **kw)


def _K(fx, fy, cx, cy):
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def _blob(width, height, u, v, sigma):
    yy, xx = np.mgrid[0:height, 0:width]
    g = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma**2))
    return np.repeat((g * 250).round().astype(np.uint8)[:, :, None], 3, axis=2)


def _centroid(rgb):
    w = rgb[:, :, 0].astype(np.float64)
    w = np.where(w > 10, w, 0)
    yy, xx = np.mgrid[0 : w.shape[0], 0 : w.shape[1]]
    return (xx * w).sum() / w.sum(), (yy * w).sum() / w.sum()


# ---------------------------------------------------------------------------------------
# Resize / crop
# ---------------------------------------------------------------------------------------
def test_plan_resize_modes():
    p = plan_resize(1280, 720, 640, 192, "resize")
    assert (p.scaled_width, p.scaled_height, p.x0, p.y0) == (640, 192, 0, 0)
    p = plan_resize(1280, 720, 640, 192, "crop_bottom")  # s = max(0.5, 0.267) = 0.5 → 640×360, keep rows 168..359
    assert (p.scaled_width, p.scaled_height, p.x0, p.y0, p.width, p.height) == (640, 360, 0, 168, 640, 192)
    p = plan_resize(1280, 720, 640, 192, "crop_center")
    assert (p.x0, p.y0) == (0, 84)
    p = plan_resize(400, 400, 640, 192, "crop_bottom")  # upscale by 1.6 → 640×640
    assert (p.scaled_width, p.scaled_height, p.y0) == (640, 640, 448)
    with pytest.raises(ValueError, match="resize_mode"):
        plan_resize(10, 10, 5, 5, "stretch")


@pytest.mark.parametrize("mode", ["resize", "crop_bottom", "crop_center"])
def test_intrinsics_follow_the_pixels(mode):
    """A 3-D point's blob lands where the output intrinsics project it (half-pixel rule)."""
    W, H = 480, 300
    K = _K(300.0, 310.0, 251.3, 140.7)
    info = _info(W, H, K)
    pre = Preprocessor(160, 64, mode)
    for X, Y, Z in [(0.4, 0.3, 2.0), (-0.5, 0.1, 1.5)]:
        u, v = K[0, 0] * X / Z + K[0, 2], K[1, 1] * Y / Z + K[1, 2]
        out, Ko = pre.prepare(_blob(W, H, u, v, 9.0), info)
        assert out.shape == (64, 160, 3) and (Ko.width, Ko.height) == (160, 64)
        eu, ev = Ko.fx * X / Z + Ko.cx, Ko.fy * Y / Z + Ko.cy
        cu, cv = _centroid(out)
        assert abs(cu - eu) < 0.1 and abs(cv - ev) < 0.1, (mode, cu, eu, cv, ev)


def test_flip_intrinsics_follow_the_pixels_and_flip_twice_is_identity():
    K = Intrinsics(50.0, 52.0, 20.3, 15.2, 64, 48)
    assert K.flipped().flipped().as_tuple() == pytest.approx(K.as_tuple(), abs=1e-12)
    img = _blob(64, 48, 40.0, 20.0, 3.0)
    flipped = np.ascontiguousarray(img[:, ::-1])
    X, Y, Z = (40.0 - K.cx) / K.fx, (20.0 - K.cy) / K.fy, 1.0
    Kf = K.flipped()
    cu, cv = _centroid(flipped)
    assert cu == pytest.approx(Kf.fx * -X / Z + Kf.cx, abs=1e-6)  # the mirrored world has x → −x
    assert cv == pytest.approx(Kf.fy * Y / Z + Kf.cy, abs=1e-6)


def test_prepare_map_uses_nearest():
    pre = Preprocessor(30, 20, "resize")
    depth = np.where(np.arange(64)[None, :] < 32, 5.0, 50.0).repeat(48, axis=0).astype(np.float32)
    depth[0, 0] = np.nan
    out = pre.prepare_map(depth, _info(64, 48, _K(40, 40, 31.5, 23.5)))
    assert out.shape == (20, 30) and out.dtype == np.float32
    assert set(np.unique(out[np.isfinite(out)])) <= {5.0, 50.0}


# ---------------------------------------------------------------------------------------
# Rectification
# ---------------------------------------------------------------------------------------
def _float_maps(cam: CameraModel) -> tuple[np.ndarray, np.ndarray]:
    m1, m2 = cam.maps()
    return cv2.convertMaps(m1, m2, cv2.CV_32FC1)


@pytest.mark.parametrize(
    ("model", "D"),
    [
        ("plumb_bob", [-0.25, 0.07, 0.001, -0.0008, 0.0]),
        ("rational_polynomial", [-0.2, 0.05, 0.001, -0.0005, 0.0, 0.02, -0.01, 0.003]),
        ("equidistant", [0.05, -0.01, 0.002, -0.0005]),
    ],
)
def test_rectification_map_round_trip(model, D):
    W, H = 160, 120
    K = _K(110.0, 112.0, 79.2, 60.7)
    P = np.hstack([_K(100.0, 100.0, 80.0, 60.0), np.zeros((3, 1))])
    pre = Preprocessor(W, H)
    cam = pre.camera(_info(W, H, K, D=D, model=model, P=P))
    assert cam.needs_remap and pre.camera(_info(W, H, K, D=D, model=model, P=P)) is cam  # cached
    assert (cam.rectified.fx, cam.rectified.cx) == (100.0, 80.0)
    mx, my = _float_maps(cam)
    # Rectified pixels q → normalised rays → distorted raw pixels r (independently via cv2's projectors).
    q = np.array([[20.0, 15.0], [80.0, 60.0], [140.0, 100.0], [35.0, 90.0]])
    rays = np.stack([(q[:, 0] - 80.0) / 100.0, (q[:, 1] - 60.0) / 100.0, np.ones(len(q))], axis=1)
    if model == "equidistant":
        r = cv2.fisheye.distortPoints(rays[:, None, :2], K, np.asarray(D)).reshape(-1, 2)
    else:
        r, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), K, np.asarray(D))
        r = r.reshape(-1, 2)
    for (qu, qv), (ru, rv) in zip(q.astype(int), r):
        assert mx[qv, qu] == pytest.approx(ru, abs=0.05) and my[qv, qu] == pytest.approx(rv, abs=0.05)
    if model != "equidistant":
        back = cv2.undistortPoints(r[:, None, :], K, np.asarray(D), P=P[:, :3]).reshape(-1, 2)
        np.testing.assert_allclose(back, q, atol=5e-3)  # undistortPoints iterates to ~1e-3 px


def test_rectified_grid_lines_are_straight():
    W, H = 200, 150
    K = _K(120.0, 120.0, 99.5, 74.5)
    D = np.array([-0.3, 0.09, 0.0, 0.0, 0.0])
    # Raw (distorted) image of vertical stripes that are straight in the ideal pinhole image.
    raw_px = np.stack(np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64)), -1).reshape(-1, 1, 2)
    ideal = cv2.undistortPoints(raw_px, K, D, P=K).reshape(H, W, 2)
    stripes = (127.5 + 127 * np.cos(2 * np.pi * ideal[:, :, 0] / 24)).round().astype(np.uint8)  # no aliasing
    raw = np.repeat(stripes[:, :, None], 3, axis=2)
    pre = Preprocessor(W, H)
    rect, Ko = pre.prepare(raw, _info(W, H, K, D=D))
    assert (Ko.fx, Ko.cx) == (120.0, 99.5)

    def bend(img):  # mean column-profile difference between rows and the centre row
        g = img[:, :, 0].astype(np.float64)[25:125, 40:160]
        return np.mean(np.abs(g - g[50:51]))

    assert bend(raw) > 10
    assert bend(rect) < 0.1 * bend(raw)


def test_no_remap_for_an_ideal_camera():
    pre = Preprocessor(64, 48)
    cam = pre.camera(_info(64, 48, _K(40, 40, 31.5, 23.5), D=[0, 0, 0, 0, 0]))
    assert not cam.needs_remap
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    out, K = pre.prepare(img, _info(64, 48, _K(40, 40, 31.5, 23.5), D=[0, 0, 0, 0, 0]))
    np.testing.assert_array_equal(out, img)
    assert K.as_tuple() == (40, 40, 31.5, 23.5, 64, 48)


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------
def test_size_mismatch_is_a_clear_error():
    pre = Preprocessor(32, 24)
    with pytest.raises(PreprocessError, match="image is 64x48 but its camera_info describes 640x480"):
        pre.prepare(np.zeros((48, 64, 3), np.uint8), _info(640, 480, _K(400, 400, 320, 240)))


def test_uncalibrated_camera_info():
    img = np.zeros((48, 64, 3), np.uint8)
    zero = _info(64, 48, np.zeros((3, 3)), P=np.zeros((3, 4)))
    with pytest.raises(PreprocessError, match="uncalibrated"):
        Preprocessor(32, 24).prepare(img, zero)
    with pytest.raises(PreprocessError, match="no camera_info"):
        Preprocessor(32, 24).prepare(img, None)
    out, K = Preprocessor(32, 24, intrinsics="40,41,31.5,23.5").prepare(img, zero)
    assert out.shape == (24, 32, 3)
    assert K.as_tuple() == pytest.approx((20.0, 20.5, 15.5, 11.5, 32, 24))
    with pytest.raises(PreprocessError, match="fx,fy,cx,cy"):
        Preprocessor(32, 24, intrinsics="40,41,31.5")


def test_unsupported_calibrations():
    pre = Preprocessor(32, 24)
    with pytest.raises(PreprocessError, match="not supported"):
        pre.camera(_info(64, 48, _K(40, 40, 31, 23), D=[0.1, 0, 0, 0, 0], model="fancy_lens"))
    binned = _info(64, 48, _K(40, 40, 31, 23))
    binned.binning_x = 2
    with pytest.raises(PreprocessError, match="binning"):
        pre.camera(binned)


def test_undecodable_frame():
    bad = SimpleNamespace(format="png", data=np.frombuffer(b"not a png", np.uint8))
    with pytest.raises(FrameDecodeError):
        Preprocessor(32, 24, intrinsics="1,1,1,1").prepare(bad)


# ---------------------------------------------------------------------------------------
# One tensor
# ---------------------------------------------------------------------------------------
def test_message_kinds_give_the_same_tensor():
    rng = np.random.default_rng(1)
    rgb = cv2.GaussianBlur(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), (5, 5), 0)
    info = _info(64, 48, _K(40, 40, 31.5, 23.5), D=[-0.1, 0.01, 0, 0, 0])
    pre = Preprocessor(40, 24, "crop_bottom")
    ref = pre(rgb, info)
    msgs = [
        bagio.image_msg(rgb, "rgb8", T0, "cam"),
        bagio.image_msg(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr8", T0, "cam"),
        bagio.compressed_image_msg(rgb, T0, "cam", "png"),
    ]
    for msg in msgs:
        frame = pre(msg, info)
        np.testing.assert_array_equal(frame.image, ref.image)
        assert frame.intrinsics == ref.intrinsics
    assert ref.image.dtype == np.float32 and ref.image.shape == (3, 24, 40)
    assert 0.0 <= ref.image.min() and ref.image.max() <= 1.0
    np.testing.assert_array_equal(ref.image, Preprocessor.to_chw(ref.rgb))
    assert tuple(ref.tensor().shape) == (1, 3, 24, 40)
    assert pre.output_intrinsics(info) == ref.intrinsics


def test_default_crops_to_the_model_aspect_and_says_so():
    """A 4:3 camera fed to a 10:3 model: the default keeps the geometry (no squashing); the plan says what it did."""
    W, H = 640, 480
    K = _K(500.0, 500.0, 319.5, 239.5)
    info = _info(W, H, K)
    pre = Preprocessor(160, 48)
    assert pre.resize_mode == "crop_center"
    Ko = pre.output_intrinsics(info)  # what a node publishes as depth/camera_info
    assert Ko.fx == pytest.approx(Ko.fy) and Ko.fx == pytest.approx(125.0)  # one scale for both axes
    out, Kp = pre.prepare(_blob(W, H, 320.0, 240.0, 8.0), info)
    assert Kp == Ko and out.shape == (48, 160, 3)
    plan = pre.plan(W, H)
    assert plan.source_region() == pytest.approx((0.0, 144.0, 640.0, 336.0))  # the centre 40 % of the rows
    text = plan.describe()
    assert "640x480 cropped to the model's aspect (centre: x 0.0-640.0, y 144.0-336.0, 40% of the image)" in text
    bottom = plan_resize(W, H, 160, 48, "crop_bottom")
    assert bottom.source_region()[1:] == pytest.approx((288.0, 640.0, 480.0)) and "bottom" in bottom.describe()
    squash = plan_resize(W, H, 160, 48, "resize")
    assert "aspect 1.33 -> 3.33: the image is distorted" in squash.describe()
    assert "aspect kept" in plan_resize(1242, 375, 160, 48, "resize").describe()
    assert "used as is" in plan_resize(160, 48, 160, 48).describe()


def test_rectified_is_the_first_half_of_prepare():
    W, H = 120, 90
    K = _K(100.0, 100.0, 60.2, 44.8)
    info = _info(W, H, K, D=(-0.2, 0.05, 0.001, 0.0, 0.0))
    pre = Preprocessor(64, 32, "crop_bottom")
    img = _blob(W, H, 70.0, 50.0, 6.0)
    full, K_full = pre.rectified(img, info)
    assert full.shape == (H, W, 3) and K_full == pre.source_intrinsics(info)
    out, K_out = pre.prepare(img, info)
    plan = pre.plan(W, H)
    np.testing.assert_array_equal(out, plan.apply(full))
    assert K_out == plan.intrinsics(K_full)
