"""The data pipeline on the committed synthetic drive: its ground truth checks our geometry.

If topics, intrinsics (after resize), GT depth and the ``("gt_pose", o)`` convention all agree,
warping a neighbour frame into the target with the GT reproduces the target image, flipped or not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualdepth_ros import evaluation as ev
from dualdepth_ros.data import Bag, ClipDataset, DataConfig, FrameSequence, load_stores, select_topics
from dualdepth_ros.geometry import invert_pose, relative_pose, warp

OUT_W, OUT_H = 160, 48


@pytest.fixture(scope="module")
def sample_setup(sample_bag, tmp_path_factory):
    cfg = DataConfig(
        gt_depth_topic="/gt/depth",
        gt_pose_topic="/gt/pose",
        gt_moving_mask_topic="/gt/moving_mask",
        frame_offsets=[-1, 0, 1],
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    (store,) = load_stores(sample_bag, cfg, OUT_W, OUT_H)
    return cfg, store


def test_auto_detection_on_the_sample(sample_bag):
    with Bag(sample_bag) as bag:  # /gt/moving_mask (mono8) has a /gt/camera_info beside it too
        sel = select_topics(bag)
    assert (sel.image, sel.camera_info) == ("/camera/image_raw", "/camera/camera_info")


def test_standstill_is_removed(sample_setup):
    cfg, store = sample_setup
    ds = ClipDataset([store], cfg, split="all")
    st = ds.stats[0]
    assert st["frames"] == 100 and 70 <= st["kept"] <= 90  # the car stands still for about a second
    times = (store.stamps - store.stamps[0]) / 1e9
    used = {f for i in range(len(ds)) for f in ds.clip_frames(i)[1]}
    assert not any(4.05 < times[f] < 4.95 for f in used)


def _photometric(item, o):
    target = item[("color", 0)][None]
    source = item[("color", o)][None]
    depth = item[("gt_depth", 0)][None]
    res = warp(source, depth.clamp(min=1e-3), item[("gt_pose", o)][None], item["K"][None])
    ok = (res.valid[0, 0] > 0) & (depth[0, 0] > 0) & (item[("gt_moving_mask", 0)][0] == 0)
    warped = (res.image - target).abs().mean(1)[0][ok].mean()
    identity = (source - target).abs().mean(1)[0][ok].mean()
    return float(warped), float(identity), int(ok.sum())


@pytest.mark.parametrize("flip", [False, True])
def test_ground_truth_warp_reconstructs_the_target(sample_setup, flip):
    cfg, store = sample_setup
    cfg_flip = DataConfig(**{**cfg.__dict__, "flip_p": 1.0 if flip else 0.0, "color_aug": False})
    ds = ClipDataset([store], cfg_flip, split="all", augment=True)
    torch.manual_seed(0)
    for index in (5, len(ds) // 2, len(ds) - 5):
        item = ds[index]
        assert item["flipped"] is flip
        for o in (-1, 1):
            warped, identity, n = _photometric(item, o)
            assert n > 0.3 * OUT_W * OUT_H
            assert warped < 0.5 * identity and warped < 0.035, (index, o, warped, identity)
            # The opposite pose convention (T_{o→0} instead of T_{0→o}) does not reconstruct.
            wrong = dict(item)
            wrong[("gt_pose", o)] = invert_pose(item[("gt_pose", o)][None])[0]
            assert _photometric(wrong, o)[0] > 2.5 * warped


def test_ground_truth_is_temporally_stable(sample_setup):
    cfg, store = sample_setup
    seq = FrameSequence(store)
    report = ev.EvaluationReport()
    for i in range(10, 90, 8):
        a, b = seq[i - 1], seq[i]
        T = relative_pose(torch.tensor(b.gt_pose)[None], torch.tensor(a.gt_pose)[None])[0].numpy()
        K = b.intrinsics.matrix()
        report.add_temporal(
            ev.temporal_stability(b.gt_depth, a.gt_depth, b.gt_depth, a.gt_depth, T, K, moving_t=b.moving_mask)
        )
        # A prediction that flickers by ±5 % per frame is clearly less stable than the GT.
        flicker = ev.temporal_stability(
            b.gt_depth, a.gt_depth * 1.05, b.gt_depth, a.gt_depth, T, K, moving_t=b.moving_mask, scale=1.0
        )
        if flicker is not None:
            assert flicker["pred"] > 0.03 > 3 * flicker["gt"]
    t = report.summary()["temporal"]
    assert t["n_pairs"] >= 8 and t["gt"] < 0.01 and t["pred"] == pytest.approx(t["gt"])
    np.testing.assert_allclose(t["ratio"], 1.0)


def test_rectified_lens_matches_the_pinhole_render(tmp_path):
    """The same synthetic world through a distorting lens, rectified by us, looks like the pinhole render."""
    from dualdepth_ros.synth.config import DEFAULT_DISTORTION, SynthConfig
    from dualdepth_ros.synth.record import record

    for name, dist in (("lens", DEFAULT_DISTORTION), ("pinhole", None)):
        cfg = SynthConfig(width=192, height=64, distortion=dist, supersample=2)
        record(tmp_path / name, cfg, seed=3, frames=2, progress=False)
    rect = DataConfig(cache_dir="memory")
    (lens,) = load_stores(tmp_path / "lens", rect, 192, 64)
    (pinhole,) = load_stores(tmp_path / "pinhole", rect, 192, 64)
    (raw,) = load_stores(tmp_path / "lens", DataConfig(cache_dir="memory", rectify=False), 192, 64)
    assert lens.K(1) == pinhole.K(1)
    centre = (slice(8, 56), slice(16, 176))

    def diff(store):
        return np.abs(np.asarray(store.rgb[1], dtype=float) - np.asarray(pinhole.rgb[1]))[centre].mean()

    assert diff(lens) < 6 and diff(lens) < 0.35 * diff(raw)
