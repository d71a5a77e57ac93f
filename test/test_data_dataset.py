"""Tests of the decoded-frame cache, :class:`ClipDataset` and :class:`FrameSequence`."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from test_data_bags import PERIOD, T0, H, W, moving_frames, write_bag

import dualdepth_ros.preprocess as preprocess_mod
from dualdepth_ros import bagio
from dualdepth_ros.data import ClipDataset, DataConfig, FrameSequence, load_frames, load_stores, make_datasets
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.geometry import Intrinsics
from dualdepth_ros.preprocess import Preprocessor

OUT_W, OUT_H = 32, 24


@pytest.fixture
def decode_counter(monkeypatch):
    """Counts calls of the image decoder used by the preprocessing."""
    calls = {"n": 0}
    real = preprocess_mod.decode_rgb

    def counting(msg):
        calls["n"] += 1
        return real(msg)

    monkeypatch.setattr(preprocess_mod, "decode_rgb", counting)
    return calls


def _cfg(tmp_path, **kw) -> DataConfig:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("val_fraction", 0.0)
    kw.setdefault("frame_offsets", [-1, 0, 1])  # 3-frame clips (the default is the two-branch layout, -2…2)
    return DataConfig(**kw)


# ---------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------
def test_cache_is_hit_then_invalidated(tmp_path, decode_counter):
    path = write_bag(tmp_path / "bag", moving_frames(6))
    pre = Preprocessor(OUT_W, OUT_H)
    cache = tmp_path / "cache"
    first = load_frames(path, pre, cache_dir=cache)
    assert decode_counter["n"] == 6 and first.decoded == 6 and not first.from_cache
    second = load_frames(path, pre, cache_dir=cache)
    assert decode_counter["n"] == 6, "the second load must not decode"
    assert second.from_cache and second.decoded == 0
    np.testing.assert_array_equal(np.asarray(first.rgb), np.asarray(second.rgb))
    np.testing.assert_array_equal(first.stamps, second.stamps)
    np.testing.assert_array_equal(first.intrinsics, second.intrinsics)
    # Other preprocessing parameters: another entry.
    load_frames(path, Preprocessor(OUT_W, OUT_H, "crop_bottom"), cache_dir=cache)
    assert decode_counter["n"] == 12
    # The bag changes (re-recorded in place): decoded again, and its stale entries go away.
    entries_before = {p.name for p in next(cache.iterdir()).iterdir()}
    assert len(entries_before) == 2
    write_bag(tmp_path / "bag2", moving_frames(5, seed=9))
    shutil.rmtree(path)
    shutil.move(tmp_path / "bag2", path)
    third = load_frames(path, pre, cache_dir=cache)
    assert not third.from_cache and third.decoded == 5 and decode_counter["n"] == 17
    entries_after = {p.name for p in next(cache.iterdir()).iterdir()}
    assert entries_before.isdisjoint(entries_after) and len(entries_after) == 1


def test_store_pickles_without_copying_the_memmap(tmp_path):
    path = write_bag(tmp_path / "bag", moving_frames(4))
    store = load_frames(path, Preprocessor(OUT_W, OUT_H), cache_dir=tmp_path / "cache")
    assert isinstance(store.rgb, np.memmap)
    assert isinstance(store.__getstate__()["rgb"], tuple)  # only a reference to the file is pickled
    back = pickle.loads(pickle.dumps(store))
    assert isinstance(back.rgb, np.memmap)
    np.testing.assert_array_equal(np.asarray(back.rgb), np.asarray(store.rgb))


# ---------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------
def _gt_bag(tmp_path, n=8):
    frames = moving_frames(n)
    depths = [np.full((H, W), 8.0 + i, np.float32) for i in range(n)]
    masks = [np.zeros((H, W), np.uint8) for _ in range(n)]
    for m in masks:
        m[:, :10] = 255
    rng = np.random.default_rng(3)
    poses = []
    for i in range(n):
        T = np.eye(4)
        T[:3, 3] = (0.1 * i, 0.0, 1.0 * i) + rng.normal(0, 0.01, 3)
        poses.append(T)
    path = write_bag(tmp_path / "bag", frames, depths=depths, masks=masks, poses=poses)
    return path, frames, poses


def test_item_layout(tmp_path):
    path, frames, poses = _gt_bag(tmp_path)
    cfg = _cfg(
        tmp_path,
        frame_offsets=[-1, 0, 1],
        gt_depth_topic="/gt/depth",
        gt_pose_topic="/gt/pose",
        gt_moving_mask_topic="/gt/moving_mask",
        resize_mode="crop_bottom",
    )
    (store,) = load_stores(path, cfg, OUT_W, OUT_H)
    ds = ClipDataset([store], cfg, split="all", augment=False)
    assert len(ds) == 6
    item = ds[2]
    _, idx = ds.clip_frames(2)
    assert idx.tolist() == [2, 3, 4]
    for o in (-1, 0, 1):
        for key in ("color", "color_aug"):
            t = item[(key, o)]
            assert t.dtype == torch.float32 and tuple(t.shape) == (3, OUT_H, OUT_W)
        assert item[("color_aug", o)] is item[("color", o)]
    # The one-tensor promise: the dataset gives exactly what the node's Preprocessor gives.
    info = bagio.camera_info_msg(W, H, np.array([[40.0, 0, 31.5], [0, 40.0, 23.5], [0, 0, 1]]), T0, "cam")
    live = Preprocessor(OUT_W, OUT_H, "crop_bottom")(bagio.image_msg(frames[3], "rgb8", T0, "cam"), info)
    np.testing.assert_array_equal(item[("color", 0)].numpy(), live.image)
    np.testing.assert_allclose(item["K"].numpy(), live.intrinsics.matrix(), rtol=1e-6)
    assert item["K"].dtype == torch.float32
    assert tuple(item[("gt_depth", 0)].shape) == (1, OUT_H, OUT_W)
    assert torch.all(item[("gt_depth", 0)] == 11.0)
    m = item[("gt_moving_mask", 0)]
    assert m.dtype == torch.float32 and set(m.unique().tolist()) == {0.0, 1.0}
    np.testing.assert_allclose(item[("gt_pose", 0)].numpy(), np.eye(4), atol=1e-6)
    for o, f in ((-1, 2), (1, 4)):  # T_{0→o} = P_o⁻¹ P_0
        np.testing.assert_allclose(item[("gt_pose", o)].numpy(), np.linalg.inv(poses[f]) @ poses[3], atol=1e-5)
    assert item["stamp"] == T0 + 3 * PERIOD and item["index"] == 2 and item["flipped"] is False
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert tuple(batch[("color", -1)].shape) == (4, 3, OUT_H, OUT_W) and tuple(batch["K"].shape) == (4, 3, 3)
    assert batch["stamp"].dtype == torch.int64


def test_flip_and_colour_augmentation(tmp_path):
    path, _, poses = _gt_bag(tmp_path)
    base = {"gt_depth_topic": "/gt/depth", "gt_pose_topic": "/gt/pose", "gt_moving_mask_topic": "/gt/moving_mask"}
    (store,) = load_stores(path, _cfg(tmp_path, **base), OUT_W, OUT_H)
    plain = ClipDataset([store], _cfg(tmp_path, **base), split="all", augment=False)[1]
    cfg = _cfg(tmp_path, flip_p=1.0, color_aug_p=1.0, contrast=0.0, saturation=0.0, hue=0.0, brightness=0.3, **base)
    torch.manual_seed(0)
    aug = ClipDataset([store], cfg, split="all", augment=True)[1]
    assert aug["flipped"] is True
    for o in (-1, 0, 1):
        np.testing.assert_array_equal(aug[("color", o)].numpy(), plain[("color", o)].numpy()[:, :, ::-1])
    np.testing.assert_array_equal(aug[("gt_moving_mask", 0)].numpy(), plain[("gt_moving_mask", 0)].numpy()[:, :, ::-1])
    Kp = Intrinsics.from_matrix(plain["K"].numpy(), OUT_W, OUT_H)
    np.testing.assert_allclose(aug["K"].numpy(), Kp.flipped().matrix(), rtol=1e-6)
    F = np.diag([-1.0, 1, 1, 1])
    np.testing.assert_allclose(aug[("gt_pose", 1)].numpy(), F @ plain[("gt_pose", 1)].numpy() @ F, atol=1e-6)
    # Brightness only: one factor for the whole clip, and the loss images stay unjittered.
    ratios = []
    for o in (-1, 0, 1):
        c, a = aug[("color", o)].numpy(), aug[("color_aug", o)].numpy()
        ok = (c > 0.05) & (a < 0.99)
        ratios.append(np.median(a[ok] / c[ok]))
    assert abs(ratios[0] - 1) > 1e-3 and np.ptp(ratios) < 1e-3


def test_static_run_is_dropped_and_clips_do_not_cross_it(tmp_path):
    frames = moving_frames(10)
    frames = frames[:5] + [frames[4]] * 6 + frames[5:]  # the camera stops for 6 frames (0.6 s)
    path = write_bag(tmp_path / "bag", frames)
    cfg = _cfg(tmp_path, frame_offsets=[-1, 0, 1])
    ds = ClipDataset(load_stores(path, cfg, OUT_W, OUT_H), cfg, split="all")
    clips = [ds.clip_frames(i)[1].tolist() for i in range(len(ds))]
    assert all(not (5 <= f <= 10) for c in clips for f in c)
    # Frames 5..10 repeat frame 4; 11..15 move on. Kept: 0..4 and 11..15, with a 0.7 s gap between.
    assert clips == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [11, 12, 13], [12, 13, 14], [13, 14, 15]]
    assert {k: ds.stats[0][k] for k in ("frames", "kept", "clips", "in_split")} == {
        "frames": 16,
        "kept": 10,
        "clips": 6,
        "in_split": 6,
    }


def test_train_val_split_blocks_are_disjoint_and_separated(tmp_path):
    path = write_bag(tmp_path / "bag", moving_frames(40))
    cfg = _cfg(tmp_path, val_fraction=0.25, split_gap_s=0.25, val_blocks=2)
    train, val = make_datasets([path], cfg, OUT_W, OUT_H)
    tr = {int(f) for i in range(len(train)) for f in train.clip_frames(i)[1]}
    va = {int(f) for i in range(len(val)) for f in val.clip_frames(i)[1]}
    assert tr and va and tr.isdisjoint(va)
    assert len(val) == round(0.25 * 38)  # 38 clips of 3 frames
    assert min(va) < 20 < max(va)  # two blocks, one in each half of the drive
    assert min(abs(a - b) for a in tr for b in va) > 2  # more than 0.25 s (2.5 frames) apart
    assert train.augment and not val.augment  # augmentation defaults by split
    assert val.stats[0]["val"] == len(val) and train.totals()["val"] == len(val)


def test_no_moving_frames_is_a_clear_error(tmp_path):
    frame = moving_frames(1)[0]
    path = write_bag(tmp_path / "bag", [frame] * 8)
    cfg = _cfg(tmp_path)
    with pytest.raises(DualDepthError, match="never moves"):
        ClipDataset(load_stores(path, cfg, OUT_W, OUT_H), cfg)


def test_frame_sequence_in_order_with_ground_truth(tmp_path):
    path, frames, poses = _gt_bag(tmp_path, n=5)
    cfg = _cfg(tmp_path, gt_depth_topic="/gt/depth", gt_pose_topic="/gt/pose")
    seq = FrameSequence.from_bag(path, cfg, OUT_W, OUT_H)
    assert len(seq) == 5
    got = list(seq)
    assert [f.stamp for f in got] == [T0 + i * PERIOD for i in range(5)]
    assert all(f.moving for f in got) and got[0].frame_id == "cam"
    np.testing.assert_allclose(got[2].gt_pose, poses[2], atol=1e-12)
    assert got[2].gt_depth.shape == (OUT_H, OUT_W) and np.all(got[2].gt_depth == 10.0)
    assert got[2].moving_mask is None
    np.testing.assert_array_equal(got[2].image, Preprocessor.to_chw(got[2].rgb))
    assert got[2].intrinsics.width == OUT_W


def test_data_config_from_mapping():
    cfg = DataConfig.coerce({"frame_offsets": [-2, -1, 0, 1, 2], "resize_mode": "crop_bottom"})
    assert cfg.frame_offsets == [-2, -1, 0, 1, 2]
    assert cfg.preprocessor(640, 192).resize_mode == "crop_bottom"
    with pytest.raises(DualDepthError, match="unknown key"):
        DataConfig.coerce({"frame_offset": [0]})
    with pytest.raises(DualDepthError, match="include 0"):
        DataConfig(frame_offsets=[-1, 1])
    assert DataConfig(cache_dir="memory").cache_path() is None


def test_a_folder_of_bags(tmp_path):
    root = tmp_path / "drives"
    write_bag(root / "a", moving_frames(6, seed=1))
    write_bag(root / "b", moving_frames(7, seed=2), storage="sqlite3")
    cfg = _cfg(tmp_path)
    stores = load_stores(root, cfg, OUT_W, OUT_H, progress=True)
    assert [s.bag.name for s in stores] == ["a", "b"] and [len(s) for s in stores] == [6, 7]
    ds = ClipDataset(stores, cfg, split="all")
    assert len(ds) == 4 + 5  # clips never span two bags
    assert {ds.clip_frames(i)[0].bag.name for i in range(len(ds))} == {"a", "b"}
    with pytest.raises(DualDepthError, match="neither a bag"):
        load_stores(tmp_path / "cache", cfg, OUT_W, OUT_H)
