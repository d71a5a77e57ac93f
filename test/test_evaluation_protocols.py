"""The standard protocol at the ground truth's own resolution, on synthetic drives re-recorded like real ones.

* KITTI-shaped images (331×100, and one 1242×375 check) with the depth thinned to a LiDAR
  pattern (64 scanlines, random dropout): auto picks ``kitti``; every valid point on the
  ground truth's grid is scored, and the figures equal an independent evaluator's
  (``test/independent_eval.py``, plain loops from the definitions).
* 4:3 images cropped to the network's aspect ratio: only ground truth inside the region the
  network saw is scored (``dense`` protocol, a custom depth cap), again equal to the
  independent evaluator; the crop's intrinsics reproject known points onto the full image.
* A drive with poses but no depth: ``dualdepth eval`` scores the pose and says why there
  are no depth metrics.
"""

from __future__ import annotations

import json

import cv2
import independent_eval
import numpy as np
import pytest
import torch
from synthetic_drives import drive, lidar_pattern, rewrite_bag, thin_to_lidar

from dualdepth_ros import bagio, cli
from dualdepth_ros.config import load_config
from dualdepth_ros.data import DataConfig, FrameSequence
from dualdepth_ros.evaluation import (
    GridMap,
    evaluate_sequence,
    is_kitti_shaped,
    resize_prediction,
    resolve_protocol,
)
from dualdepth_ros.evaluation.reference import ConstantDepthNet
from dualdepth_ros.geometry import Intrinsics
from dualdepth_ros.images import decode_image
from dualdepth_ros.networks import DepthModel
from dualdepth_ros.preprocess import plan_resize
from dualdepth_ros.training.checkpoint import LoadedModel, atomic_save, make_checkpoint

GT = {"gt_depth_topic": "/gt/depth", "gt_pose_topic": "/gt/pose", "gt_moving_mask_topic": "/gt/moving_mask"}
LIGHT = [
    "model.encoder=resnet10",
    "model.encoder_width=8",
    "model.decoder_channels=[4, 8, 8, 16, 16]",
    "pose.encoder=resnet10",
    "pose.encoder_width=8",
]


# ---------------------------------------------------------------------------------------
# Protocols and the grid map (pure)
# ---------------------------------------------------------------------------------------
def test_kitti_shape_rule_and_protocol_choice():
    for w, h in ((1242, 375), (1241, 376), (1226, 370), (1224, 370), (331, 100), (320, 96), (640, 192)):
        assert is_kitti_shaped(h, w), (w, h)
        p = resolve_protocol("auto", h, w)
        assert (p.name, p.garg_crop, p.max_depth) == ("kitti", True, 80.0) and "auto" in p.reason
        p = resolve_protocol("auto", h, w, valid_fraction=0.05)  # projected LiDAR
        assert p.name == "kitti" and "sparse" in p.reason
        p = resolve_protocol("auto", h, w, valid_fraction=0.7)  # a simulator's dense depth: the whole image
        assert (p.name, p.garg_crop) == ("dense", False) and "dense" in p.reason
    for w, h in ((640, 480), (1280, 720), (1920, 1080), (512, 256)):
        assert not is_kitti_shaped(h, w), (w, h)
        p = resolve_protocol("auto", h, w, max_depth=40)
        assert (p.name, p.garg_crop, p.max_depth) == ("dense", False, 40.0)
    assert resolve_protocol("kitti", 480, 640).garg_crop  # named protocols ignore the shape
    assert not resolve_protocol("dense", 375, 1242).garg_crop
    with pytest.raises(ValueError, match="fixed"):
        resolve_protocol("kitti", 375, 1242, max_depth=50)
    with pytest.raises(ValueError, match="protocol must be"):
        resolve_protocol("eigen", 375, 1242)


def test_grid_map_of_a_resize_samples_where_cv2_resize_does():
    rng = np.random.default_rng(0)
    disp = cv2.GaussianBlur(rng.uniform(0.02, 0.5, (24, 80)), (0, 0), 2.0)
    grid = GridMap.resize(96, 320, 24, 80)
    ours = 1.0 / grid.sample_depth(1.0 / disp)
    ref = cv2.resize(disp.astype(np.float32), (320, 96), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, ref, rtol=2e-3)  # cv2 quantises its weights to 1/32 px
    assert grid.inside().all() and grid.coverage()["fraction"] == 1.0
    np.testing.assert_allclose(resize_prediction(1.0 / disp, 96, 320), 1.0 / ours, rtol=1e-6)


@pytest.mark.parametrize("mode", ["crop_bottom", "crop_center", "resize"])
def test_grid_map_carries_a_plane_exactly_through_a_crop(mode):
    """A plane's inverse depth is affine in pixels: predicted on the network's crop with its intrinsics,
    upsampled to the full camera image it must equal the plane there, wherever the network saw it.
    """
    K = Intrinsics(200.0, 205.0, 161.3, 118.9, 320, 240)  # a 4:3 camera
    plan = plan_resize(320, 240, 96, 32, mode)
    Kp = plan.intrinsics(K)
    n, d = np.array([0.15, -0.3, 1.0]), 12.0  # the plane n·X = d: a slanted wall, in front of the whole view

    def depth(Ki: Intrinsics) -> np.ndarray:
        v, u = np.mgrid[0 : Ki.height, 0 : Ki.width].astype(np.float64)
        ray = np.stack([(u - Ki.cx) / Ki.fx, (v - Ki.cy) / Ki.fy, np.ones_like(u)])
        return d / np.tensordot(n, ray, axes=1)

    grid = GridMap.between(K, Kp)
    inside = grid.inside()
    # Interior only: at the crop's outer half pixel the prediction is clamped, not extrapolated.
    interior = (grid.u >= 0) & (grid.u <= Kp.width - 1) & (grid.v >= 0) & (grid.v <= Kp.height - 1)
    up = grid.sample_depth(depth(Kp), where=interior)
    np.testing.assert_allclose(up, depth(K)[interior], rtol=1e-9)
    left, top, right, bottom = plan.source_region()
    cov = grid.coverage()
    assert cov["rows"] == [int(np.ceil(top - 0.5)), int(np.floor(bottom - 0.5)) + 1]
    assert cov["columns"] == [int(np.ceil(left - 0.5)), int(np.floor(right - 0.5)) + 1]
    assert inside.sum() == (cov["rows"][1] - cov["rows"][0]) * (cov["columns"][1] - cov["columns"][0])
    if mode == "crop_bottom":
        assert cov["rows"][0] > 100 and cov["rows"][1] == 240  # the bottom 40 % of a 4:3 image


# ---------------------------------------------------------------------------------------
# A positional "network" whose depth the independent evaluator can compute without the image
# ---------------------------------------------------------------------------------------
def _positional_depth(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return (4.0 + 0.3 * x + 25.0 * (y / h) ** 2 + 2.0 * np.sin(x / 3.0)).astype(np.float32)


class _Positional(torch.nn.Module):
    num_branches = 1
    predict_confidence = False

    def forward(self, image):
        d = torch.from_numpy(_positional_depth(*image.shape[2:]))[None, None].expand(image.shape[0], 1, -1, -1)
        return {("depth_fused", 0): d, ("depth", 0, 0): d}


class _Stub(torch.nn.Module):
    def __init__(self, depth) -> None:
        super().__init__()
        self.depth, self.pose = depth, None


def _loaded(net) -> LoadedModel:
    return LoadedModel(model=_Stub(net), cfg=None, data=None, checkpoint={})


def _bag_depths(bag) -> list[np.ndarray]:
    return [decode_image(m.msg) for m in bagio.read_messages(bag, ["/gt/depth"])]


# ---------------------------------------------------------------------------------------
# KITTI-shaped, sparse LiDAR-like ground truth
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sparse_kitti_bag(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti_like")
    dense = drive(root / "dense", 331, 100, 8, seed=4)
    return thin_to_lidar(dense, root / "lidar")


def test_sparse_ground_truth_is_scored_at_its_own_resolution(sparse_kitti_bag, tmp_path):
    seq = FrameSequence.from_bag(sparse_kitti_bag, DataConfig(cache_dir=str(tmp_path), **GT), 160, 48)
    frames = list(seq)
    result = evaluate_sequence(_loaded(_Positional()), frames, with_pose=False)
    s = result.summary()
    assert s["protocol"]["name"] == "kitti" and s["n_images"] == len(frames) == 8

    depths = _bag_depths(sparse_kitti_bag)
    assert np.mean([(d > 0).mean() for d in depths]) < 0.35  # really sparse: ~1/3 of the rows, every 2nd column
    plan = plan_resize(331, 100, 160, 48, "crop_center")
    window = (plan.scaled_width, plan.scaled_height, plan.x0, plan.y0)
    expected, points = independent_eval.score(depths, [_positional_depth(48, 160)] * 8, window, garg=True)
    for key, value in expected.items():
        assert s["median_scaled"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert s["gt_points"] == pytest.approx(points)
    # The old way (GT resampled to the network's 160×48 with nearest neighbour) keeps a fraction of the points.
    garg_small = np.zeros((48, 160), bool)
    garg_small[int(0.40810811 * 48) : int(0.99189189 * 48), int(0.03594771 * 160) : int(0.96405229 * 160)] = True
    at_network = np.mean([((f.gt_depth > 0) & (f.gt_depth <= 80) & garg_small).sum() for f in frames])
    assert points > 3 * at_network


def test_kitti_size_check_with_the_constant_reference(tmp_path):
    """One real-size 1242×375 drive (two frames): the shape rule, the grid, the independent figures."""
    bag = thin_to_lidar(drive(tmp_path / "dense", 1242, 375, 2, seed=5), tmp_path / "lidar")
    frames = list(FrameSequence.from_bag(bag, DataConfig(cache_dir="memory", **GT), 160, 48))
    s = evaluate_sequence(_loaded(ConstantDepthNet()), frames, with_pose=False).summary()
    assert s["protocol"]["name"] == "kitti" and s["gt_coverage"]["gt_size"] == [1242, 375]
    plan = plan_resize(1242, 375, 160, 48, "crop_center")
    window = (plan.scaled_width, plan.scaled_height, plan.x0, plan.y0)
    expected, points = independent_eval.score(_bag_depths(bag), [np.ones((48, 160))] * 2, window, garg=True)
    assert s["median_scaled"]["abs_rel"] == pytest.approx(expected["abs_rel"], rel=1e-9)
    at_network = np.mean([(f.gt_depth > 0).sum() for f in frames])
    assert points > 15 * at_network  # 1242×375 → 160×48: most LiDAR points vanish at the network's size


# ---------------------------------------------------------------------------------------
# 4:3 images cropped to the network's aspect ratio
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def four_three_bag(tmp_path_factory):
    return drive(tmp_path_factory.mktemp("four_three") / "bag", 160, 120, 6, seed=6)


def test_crop_scores_only_what_the_network_saw(four_three_bag, tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path), resize_mode="crop_bottom", **GT)
    frames = list(FrameSequence.from_bag(four_three_bag, cfg, 96, 32))
    s = evaluate_sequence(_loaded(_Positional()), frames, with_pose=False, max_depth=40.0).summary()
    assert s["protocol"]["name"] == "dense" and s["protocol"]["max_depth"] == 40.0
    plan = plan_resize(160, 120, 96, 32, "crop_bottom")  # ×0.6 → 96×72, the bottom 32 rows
    assert (plan.scaled_width, plan.scaled_height, plan.x0, plan.y0) == (96, 72, 0, 40)
    assert s["gt_coverage"]["rows"] == [67, 120] and s["gt_coverage"]["columns"] == [0, 160]
    assert s["gt_coverage"]["fraction"] == pytest.approx(53 / 120)
    expected, points = independent_eval.score(
        _bag_depths(four_three_bag), [_positional_depth(32, 96)] * 6, (96, 72, 0, 40), garg=False, max_depth=40.0
    )
    for key, value in expected.items():
        assert s["median_scaled"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert s["gt_points"] == pytest.approx(points)
    nearest = evaluate_sequence(_loaded(_Positional()), frames, with_pose=False, interpolation="nearest").summary()
    assert nearest["interpolation"] == "nearest"
    assert nearest["median_scaled"]["abs_rel"] != s["median_scaled"]["abs_rel"]


def test_crop_intrinsics_reproject_known_points(four_three_bag, tmp_path):
    """Every network pixel, back-projected with the crop's intrinsics at its GT depth and projected with the
    camera's full-size intrinsics, lands on the full-size GT pixel of the same depth.
    """
    cfg = DataConfig(cache_dir=str(tmp_path), resize_mode="crop_bottom", gt_depth_topic="/gt/depth")
    store = FrameSequence.from_bag(four_three_bag, cfg, 96, 32).store
    K_crop, K_full = store.K(3), store.source_K(3)
    info = next(iter(bagio.read_messages(four_three_bag, ["/camera/camera_info"]))).msg
    assert K_full == Intrinsics.from_camera_info(info)  # the full grid is the camera's own
    assert (K_crop.fx, K_crop.fy) == pytest.approx((0.6 * K_full.fx, 0.6 * K_full.fy))
    z = np.asarray(store.gt_depth[3], dtype=np.float64)
    y, x = np.nonzero(z > 0)
    X = (x - K_crop.cx) / K_crop.fx * z[y, x]
    Y = (y - K_crop.cy) / K_crop.fy * z[y, x]
    u = K_full.fx * X / z[y, x] + K_full.cx
    v = K_full.fy * Y / z[y, x] + K_full.cy
    assert v.min() > 66 and u.min() > -0.5  # inside the bottom band the crop keeps
    native = np.asarray(store.gt_depth_native[3])
    hit = native[np.rint(v).astype(int), np.rint(u).astype(int)] == z[y, x]
    assert hit.mean() > 0.99 and len(hit) > 0.8 * 96 * 32


# ---------------------------------------------------------------------------------------
# A drive with poses and no depth (like ../shared/data/kitti_odometry_03)
# ---------------------------------------------------------------------------------------
def test_eval_without_depth_reports_pose_and_says_why(tmp_path, capsys):
    src = drive(tmp_path / "full", 331, 100, 12, seed=7)
    bag = rewrite_bag(src, tmp_path / "pose_only", drop=("/gt/depth", "/gt/camera_info", "/gt/moving_mask"))
    torch.manual_seed(0)
    cfg = load_config("config/train.yaml", overrides=[*LIGHT, "input.width=96", "input.height=32"])
    ckpt = tmp_path / "small.pt"
    atomic_save(make_checkpoint(DepthModel(cfg), cfg, DataConfig(cache_dir=str(tmp_path / "c"))), ckpt)
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--bag", str(bag), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "depth metrics: none" in text and "no ground-truth depth" in text and "pose ATE" in text
    assert "auto-detected PoseStamped" not in text  # /gt/pose is found by its default name
    data = json.loads(out.read_text())
    assert data["n_images"] == 0 and data["median_scaled"] is None and data["pose"]["n_snippets"] == 8
    assert "no ground-truth depth" in data["depth_absent"] and data["bags"][0]["gt_pose_topic"] == "/gt/pose"
    # Without a pose either, there is nothing to evaluate: one clear error that lists the bag's topics.
    bare = rewrite_bag(src, tmp_path / "bare", drop=("/gt/depth", "/gt/camera_info", "/gt/moving_mask", "/gt/pose"))
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--bag", str(bare)]) == 2
    err = capsys.readouterr().err
    assert "nothing to evaluate" in err and "/camera/image_raw" in err and err.count("\n") > 2


def test_lidar_pattern_is_sparse_and_varies():
    a, b = lidar_pattern(100, 331, 0), lidar_pattern(100, 331, 1)
    assert 0.2 < a.mean() < 0.25 and not np.array_equal(a, b)  # 64 of 100 rows × every 2nd column × 70 %
    assert not a[:29].any()  # nothing above the top scanline


def test_eval_says_when_resize_squashes_and_lets_the_user_crop(four_three_bag, tmp_path, capsys):
    torch.manual_seed(0)
    cfg = load_config("config/train.yaml", overrides=[*LIGHT, "input.width=96", "input.height=32"])
    ckpt = tmp_path / "resize.pt"
    data = DataConfig(cache_dir=str(tmp_path / "c"), resize_mode="resize")  # trained squashing a 4:3 camera
    atomic_save(make_checkpoint(DepthModel(cfg), cfg, data), ckpt)
    base = ["eval", "--checkpoint", str(ckpt), "--bag", str(four_three_bag), "--no-pose", "--json", "-"]
    assert cli.main(base) == 0
    captured = capsys.readouterr()
    assert "160x120 resized to 96x32" in captured.err and "the image is distorted" in captured.err
    assert "changes the image's aspect ratio by +125%; --resize-mode crop_center keeps the geometry" in captured.err
    squashed = json.loads(captured.out)
    assert squashed["gt_coverage"]["fraction"] == 1.0 and squashed["protocol"]["name"] == "dense"
    assert cli.main([*base, "--resize-mode", "crop_bottom", "--protocol", "kitti"]) == 0
    captured = capsys.readouterr()
    cropped = json.loads(captured.out)
    assert cropped["input"]["resize_mode"] == "crop_bottom" and "note:" not in captured.err
    assert cropped["gt_coverage"]["rows"] == [67, 120] and cropped["protocol"]["reason"] == "--protocol kitti"
    assert cli.main([*base, "--protocol", "kitti", "--max-depth", "50"]) == 2
    assert "the kitti protocol's range is fixed" in capsys.readouterr().err
