"""``dualdepth eval`` and :func:`evaluate_sequence`: the CLI end to end, oracle wiring, pose directions, errors.

The oracle tests read the ground truth straight from the sample bag (``bagio``, not the data
module), resample it to the network size themselves, and put it behind stub networks that
recognise each input image by content. Through :func:`evaluate_sequence` they must then score
perfectly: any misalignment of frames and GT, a wrong resize, or a pose in the wrong
direction shows up as a non-zero error.
"""

from __future__ import annotations

import dataclasses
import json
import math

import cv2
import independent_eval
import numpy as np
import pytest
import torch
from small_model import GT_TOPICS, LIGHT, H, W, eval_cli, write_small_checkpoint

from dualdepth_ros import bagio
from dualdepth_ros.config import load_config
from dualdepth_ros.data import DataConfig, FrameSequence
from dualdepth_ros.evaluation import MOSAIC_MIN_PANEL_WIDTH, evaluate_sequence, relative_poses
from dualdepth_ros.evaluation.sequence import _ExampleKeeper
from dualdepth_ros.geometry import mat_to_pose_vec
from dualdepth_ros.images import decode_image
from dualdepth_ros.networks import DepthModel
from dualdepth_ros.preprocess import plan_resize
from dualdepth_ros.training.checkpoint import LoadedModel

OW, OH = 320, 96  # the oracle's input: the sample's own size, so the GT grid is the network's


@pytest.fixture(autouse=True)
def one_thread():
    """Two torch threads on a shared 2-core machine make tiny convolutions ~100× slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("frame_cache")


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, cache_dir):
    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt"), cache_dir)


def _numbers(obj, where="$"):
    """Every number in a JSON document, with its path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{where}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield where, obj


# ---------------------------------------------------------------------------------------
# The command end to end
# ---------------------------------------------------------------------------------------
def test_cli_end_to_end(small_checkpoint, sample_bag, tmp_path, capsys):
    out_json = tmp_path / "res" / "eval.json"
    plots = tmp_path / "plots"
    rc = eval_cli(
        "--checkpoint", small_checkpoint, "--bag", sample_bag, "--max-frames", 30, "--metric-scale", 1,
        "--json", out_json, "--plots", plots,
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    text = captured.out
    for needle in ("AbsRel", "SqRel", "RMSE log", "δ<1.25", "δ<1.25²", "δ<1.25³", "fused, median-scaled",
                   "fused, × 1 (no median)", "branch 0", "branch 1", "AUSE", "AURG/(AURG+AUSE)",
                   "temporal stability", "GT floor", "pose ATE", "/gt/depth", "/gt/moving_mask"):  # fmt: skip
        assert needle in text, needle
    # The fused median-scaled row holds 7 numbers.
    row = next(line for line in text.splitlines() if line.startswith("fused, median-scaled"))
    assert len(row.split()[2:]) == 7

    data = json.loads(out_json.read_text())
    for key in ("checkpoint", "input", "bags", "n_images", "n_skipped", "median_scaled", "metric_scale",
                "scale_ratio", "confidence", "temporal", "pose", "branches", "sparsification_curves",
                "n_frames", "seconds"):  # fmt: skip
        assert key in data, key
    assert data["input"] == {"width": W, "height": H, "resize_mode": "crop_center"}  # the data default keeps the aspect
    # 320×96 is KITTI-shaped but its ground truth is dense (a simulator): auto scores the whole image
    assert data["protocol"]["name"] == "dense" and data["protocol"]["crop"] is None
    assert "dense" in data["protocol"]["reason"]
    assert "cropped to the model's aspect" in data["bags"][0]["preprocessing"]
    assert data["checkpoint_step"] == 7
    assert data["bags"][0]["gt_depth_topic"] == "/gt/depth" and data["bags"][0]["gt_pose_topic"] == "/gt/pose"
    assert data["n_frames"] == data["n_images"] == 30 and data["n_skipped"] == 0
    ms = data["median_scaled"]
    assert set(ms) == {"abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"}
    assert ms["abs_rel"] > 0 and 0 <= ms["a1"] <= ms["a2"] <= ms["a3"] <= 1
    assert set(data["branches"]) == {"0", "1"}
    conf = data["confidence"]
    assert set(conf["ause"]) == set(conf["aurg"]) == set(conf["aurg_ratio"]) == {"abs_rel", "rmse"}
    assert data["temporal"]["n_pairs"] == 29 and data["temporal"]["gt"] > 0
    assert data["pose"]["n_snippets"] == 26  # 30 frames, 5-frame windows
    assert len(data["sparsification_curves"]["fractions"]) == 21
    numbers = list(_numbers(data))
    assert len(numbers) > 100
    bad = [(p, v) for p, v in numbers if not math.isfinite(v)]
    assert not bad

    spars = cv2.imread(str(plots / "sparsification_abs_rel.png"))
    assert spars is not None and spars.shape == (480, 640, 3)
    mosaic = cv2.imread(str(plots / "mosaic.png"))
    f = math.ceil(MOSAIC_MIN_PANEL_WIDTH / W)
    assert mosaic is not None and mosaic.shape == (3 * H * f, 3 * W * f, 3)  # 3 rows of image | depth | confidence
    assert mosaic.std() > 10  # not blank


def test_cli_json_to_stdout(small_checkpoint, sample_bag, capsys):
    rc = eval_cli("--checkpoint", small_checkpoint, "--bag", sample_bag, "--max-frames", 4, "--no-pose", "--json", "-")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = json.loads(captured.out)  # nothing but the JSON on stdout; the table went to stderr
    assert data["n_images"] == 4 and data["pose"] is None and data["metric_scale"] is None
    assert "AbsRel" in captured.err


def test_constant_reference_matches_an_independent_computation(small_checkpoint, sample_bag, capsys):
    rc = eval_cli(
        "--checkpoint", small_checkpoint, "--bag", sample_bag, "--max-frames", 6, "--constant-reference",
        "--protocol", "kitti", "--json", "-",
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = json.loads(captured.out)
    assert data["confidence"] is None and data["pose"] is None  # no confidence, no PoseNet for the reference
    assert data["protocol"]["name"] == "kitti" and data["protocol"]["reason"] == "--protocol kitti"
    assert "protocol: kitti" in captured.err
    # Independently (test/independent_eval.py): the GT of the same frames read from the bag at its own 320×96,
    # inside Garg's crop, on the columns the 96×32 centre crop sees, against a constant median-scaled prediction.
    depths = [decode_image(m.msg) for m in bagio.read_messages(sample_bag, ["/gt/depth"])][:6]
    plan = plan_resize(320, 96, W, H, "crop_center")
    window = (plan.scaled_width, plan.scaled_height, plan.x0, plan.y0)
    expected, points = independent_eval.score(depths, [np.ones((H, W))] * 6, window, garg=True)
    for key, value in expected.items():
        assert data["median_scaled"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert expected["abs_rel"] > 0.2  # the synthetic street has depth structure a constant cannot explain
    assert data["gt_points"] == pytest.approx(points)
    assert data["gt_coverage"]["columns"] == [15, 302] and points > 0.3 * 320 * 96


# ---------------------------------------------------------------------------------------
# Oracle: the GT behind stub networks scores perfectly
# ---------------------------------------------------------------------------------------
def _raw_ground_truth(bag, width, height):
    """Images, GT depth (0 invalid) and poses read with bagio and resampled here, in recording order."""
    by_topic: dict[str, list] = {}
    for m in bagio.read_messages(bag, ["/camera/image_raw", "/gt/depth", "/gt/pose"]):
        by_topic.setdefault(m.topic, []).append(m.msg)
    imgs, depths, poses = by_topic["/camera/image_raw"], by_topic["/gt/depth"], by_topic["/gt/pose"]
    assert len(imgs) == len(depths) == len(poses)
    for a, b in zip(imgs, depths):
        assert bagio.stamp_to_ns(a.header.stamp) == bagio.stamp_to_ns(b.header.stamp)
    rgb = np.stack([cv2.resize(decode_image(m), (width, height), interpolation=cv2.INTER_AREA) for m in imgs])
    depth = np.stack(
        [cv2.resize(decode_image(m), (width, height), interpolation=cv2.INTER_NEAREST_EXACT) for m in depths]
    )
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
    pose = np.stack([bagio.pose_to_matrix(m) for m in poses])
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0, torch.from_numpy(depth), torch.from_numpy(pose)


class _Lookup:
    """Index of the nearest reference image (mean absolute difference) for each image of a batch."""

    def __init__(self, refs: torch.Tensor) -> None:
        self.refs = torch.nn.functional.avg_pool2d(refs, 4)  # small signatures: the batch × frames difference fits

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        d = (torch.nn.functional.avg_pool2d(images, 4)[:, None] - self.refs[None]).abs().mean(dim=(2, 3, 4))
        assert bool((d.min(dim=1).values < 2 / 255).all()), "an input image matches no frame of the bag"
        return d.argmin(dim=1)


class _OracleDepth(torch.nn.Module):
    """Returns the frame's GT depth (1000 where invalid); optionally × (1 + noise) with confidence
    ``1 − |noise|`` (``reverse``: ``|noise|``, the worst ranking).
    """

    num_branches = 1
    predict_confidence = True

    def __init__(self, lookup: _Lookup, depths: torch.Tensor, noise: float = 0.0, reverse: bool = False) -> None:
        super().__init__()
        self.lookup, self.depths, self.noise, self.reverse = lookup, depths, noise, reverse

    def forward(self, image):
        idx = self.lookup(image)
        d = self.depths[idx]
        d = torch.where(d > 0, d, torch.full_like(d, 1000.0))[:, None]
        if self.noise:
            gen = torch.Generator().manual_seed(0)
            n = self.noise * torch.randn(d.shape, generator=gen)
            d, conf = d * (1 + n), (n.abs() if self.reverse else 1 - n.abs())
        else:
            conf = torch.full_like(d, 0.5)
        return {("depth_fused", 0): d, ("conf_fused", 0): conf, ("depth", 0, 0): d, ("conf", 0, 0): conf}


class _OraclePose(torch.nn.Module):
    """A pair PoseNet that returns the GT ``T_a_to_b = P_b⁻¹ P_a`` for the input pair ``(I_a, I_b)``."""

    num_frames = 2
    anchor = 0

    def __init__(self, lookup: _Lookup, poses: torch.Tensor) -> None:
        super().__init__()
        self.lookup, self.poses = lookup, poses

    def forward(self, frames):
        a, b = self.lookup(frames[0]), self.lookup(frames[1])
        T_a_to_b = torch.linalg.inv(self.poses[b]) @ self.poses[a]
        return mat_to_pose_vec(T_a_to_b)[:, None]


class _Stub(torch.nn.Module):
    def __init__(self, depth, pose) -> None:
        super().__init__()
        self.depth, self.pose = depth, pose


@pytest.fixture(scope="module")
def oracle_setup(sample_bag, cache_dir):
    images, depths, poses = _raw_ground_truth(sample_bag, OW, OH)
    seq = FrameSequence.from_bag(sample_bag, DataConfig(cache_dir=str(cache_dir), **GT_TOPICS), OW, OH)
    assert len(seq) == images.shape[0]
    return seq, _Lookup(images), depths, poses


def _oracle(setup, noise=0.0, reverse=False):
    seq, lookup, depths, poses = setup
    model = _Stub(_OracleDepth(lookup, depths, noise, reverse), _OraclePose(lookup, poses))
    return LoadedModel(model=model, cfg=None, data=None, checkpoint={})


def test_oracle_scores_perfectly(oracle_setup):
    seq, _, _, poses = oracle_setup
    loaded = _oracle(oracle_setup)
    loaded.model.train()
    frames = [seq[i] for i in range(40)]  # the drive before its standstill (4–5 s)
    frames[5] = dataclasses.replace(frames[5], gt_depth=None, gt_depth_native=None)  # a frame without GT depth
    result = evaluate_sequence(loaded, frames, batch_size=7, metric_scale=1.0, collect_examples=3)
    assert loaded.model.training  # the caller's mode is restored (the trainer's validation)
    s = result.summary()
    assert s["n_images"] == 39 and s["n_skipped"] == 1 and s["n_frames"] == 40 and s["n_segments"] == 1
    for key in ("median_scaled", "metric_scale"):
        assert s[key]["abs_rel"] < 1e-7 and s[key]["rmse"] < 1e-5, key
        assert s[key]["a1"] == 1.0, key
    assert s["scale_ratio"]["median"] == pytest.approx(1.0, abs=1e-9)
    # Temporal: the prediction is the GT, so it is exactly as stable as the GT (pairs need GT in both frames).
    assert s["temporal"]["n_pairs"] == 37
    assert s["temporal"]["ratio"] == pytest.approx(1.0, abs=1e-9) and s["temporal"]["gt"] > 0
    # Pose: T_{i+1→i} = P_i⁻¹ P_{i+1} in the right direction, hence zero ATE.
    (rel,) = result.relative_poses
    expected = [np.linalg.inv(poses[i].numpy()) @ poses[i + 1].numpy() for i in range(39)]
    np.testing.assert_allclose(np.stack(rel), np.stack(expected), atol=1e-9)
    assert np.linalg.norm(expected[10][:3, 3]) > 0.5  # the camera really moves between these frames
    assert s["pose"]["n_snippets"] == 36 and s["pose"]["ate_mean"] < 1e-9
    # Examples spread over the sequence, with their own GT.
    assert [e.index for e in result.examples] == [0, 16, 36]
    np.testing.assert_array_equal(result.examples[1].gt_depth, frames[16].gt_depth)


def test_oracle_confidence_ranks_errors(oracle_setup):
    """Noisy oracle depth whose confidence follows its noise: the confidence reaches the right pixels.

    (Not exactly the oracle ranking: median scaling and the 80 m clamp reorder a few pixels.)
    """
    seq, *_ = oracle_setup
    frames = [seq[i] for i in range(0, 100, 10)]  # non-consecutive: no pairs, no pose
    good = evaluate_sequence(_oracle(oracle_setup, noise=0.2), frames, with_pose=False).summary()
    result = evaluate_sequence(_oracle(oracle_setup, noise=0.2, reverse=True), frames, with_pose=False)
    bad = result.summary()
    assert bad["n_segments"] == 10 and bad["temporal"] is None and bad["pose"] is None
    assert result.relative_poses == []
    assert good["median_scaled"]["abs_rel"] == pytest.approx(0.17, abs=0.03)  # E|0.2·N(0,1)| ≈ 0.16
    assert good["confidence"]["aurg"]["abs_rel"] > 0.05 and good["confidence"]["aurg_ratio"]["abs_rel"] > 0.7
    assert good["confidence"]["ause"]["abs_rel"] < 0.3 * bad["confidence"]["ause"]["abs_rel"]
    assert bad["confidence"]["aurg"]["abs_rel"] < -0.05  # removing the best pixels first makes it worse


def test_segments_do_not_cross_bags(oracle_setup):
    """Two chained runs (as two bags): no temporal pair or pose snippet spans the join."""
    seq, *_ = oracle_setup
    frames = [seq[i] for i in range(10)] + [seq[i] for i in range(10)]
    frames += [dataclasses.replace(seq[i], gt_pose=None) for i in range(30, 36)]  # a third run without GT poses
    result = evaluate_sequence(_oracle(oracle_setup), frames, batch_size=4)
    s = result.summary()
    assert s["n_segments"] == 3 and s["n_images"] == 26 and s["temporal"]["n_pairs"] == 18
    assert [len(r) for r in result.relative_poses] == [9, 9] and s["pose"]["n_snippets"] == 12


# ---------------------------------------------------------------------------------------
# The PoseNet is used as in training
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["pairs", "clip"])
def test_relative_poses_match_depth_model(mode):
    torch.manual_seed(1)
    cfg = load_config("config/train.yaml", overrides=[*LIGHT, f"pose.mode={mode}", "pose.output_scale=1.0"])
    model = DepthModel(cfg).eval()
    frames = model.layout.frames  # -2 … 2
    images = torch.rand(len(frames), 3, H, W)
    with torch.inference_mode():
        ref = model({("color", f, 0): images[i : i + 1] for i, f in enumerate(frames)})
        rel = relative_poses(model.pose, images, batch_size=3)
    assert len(rel) == len(frames) - 1
    for i, (a, b) in enumerate(zip(frames[:-1], frames[1:])):
        T_b_to_a = ref[("T", b, a)][0].double().numpy()
        assert np.abs(T_b_to_a[:3, 3]).max() > 1e-4  # not trivially the identity
        np.testing.assert_allclose(rel[i], T_b_to_a, atol=1e-5)


def test_example_keeper_spreads_over_unknown_length():
    for n in (1, 2, 3, 7, 40, 100, 1000, 1234):
        keeper = _ExampleKeeper(3)
        for pos in range(n):
            if keeper.wants(pos):
                keeper.add(pos, pos)
        picked = keeper.pick()
        assert picked == sorted(set(picked)) and len(picked) == min(n, 3), (n, picked)
        assert picked[0] == 0 and picked[-1] >= 0.7 * (n - 1), (n, picked)
        assert max(np.diff(picked), default=0) <= 0.6 * n, (n, picked)


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------
def _bag_without_gt(path):
    K = np.array([[20.0, 0, 15.5], [0, 20.0, 7.5], [0, 0, 1]])
    with bagio.BagWriter(path) as bag:
        bag.add_topic("/camera/image_raw", bagio.IMAGE)
        bag.add_topic("/camera/camera_info", bagio.CAMERA_INFO)
        for i in range(3):
            t = (i + 1) * 100_000_000
            rgb = np.full((16, 32, 3), 40 * i, np.uint8)
            bag.write("/camera/image_raw", bagio.image_msg(rgb, "rgb8", t, "cam"), t)
            bag.write("/camera/camera_info", bagio.camera_info_msg(32, 16, K, t, "cam"), t)
    return path


def test_missing_checkpoint(sample_bag, tmp_path, capsys):
    assert eval_cli("--checkpoint", tmp_path / "nope.pt", "--bag", sample_bag) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert eval_cli("--checkpoint", tmp_path / "bad.pt", "--bag", sample_bag) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_missing_gt_topic_lists_topics(small_checkpoint, sample_bag, tmp_path, capsys):
    bag = _bag_without_gt(tmp_path / "no_gt")
    assert eval_cli("--checkpoint", small_checkpoint, "--bag", bag) == 2
    err = capsys.readouterr().err
    assert "no ground-truth depth topic" in err and "--gt-depth-topic" in err
    assert "/camera/image_raw" in err and "/camera/camera_info" in err  # the topics present
    # A named topic that the bag lacks.
    assert eval_cli("--checkpoint", small_checkpoint, "--bag", sample_bag, "--gt-depth-topic", "/lidar/depth") == 2
    err = capsys.readouterr().err
    assert "/lidar/depth" in err and "/gt/depth" in err and "/gt/pose" in err


def test_corrupt_bag(small_checkpoint, tmp_path, capsys):
    bag = _bag_without_gt(tmp_path / "broken")
    (mcap,) = bag.glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[:200])
    assert eval_cli("--checkpoint", small_checkpoint, "--bag", bag) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "broken" in err and "corrupt" in err
