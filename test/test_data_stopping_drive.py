"""Data handling that survives slow and stopping cars, on a synthetic drive whose car stops for its last third.

* the still-camera filter measures motion in camera pixels: two training sizes keep the same frames;
* the validation split is chosen among moving clips: it exists although the drive ends standing still;
* the trainer prints its clip layout, filter and split, reports ground-truth figures during
  training, explains too few clips, and trains without validation (no NaN) when there are too few.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from synthetic_drives import drive
from tiny_config import TINY_MODEL

from dualdepth_ros.config import DEFAULT_CONFIG, load_config
from dualdepth_ros.data import ClipDataset, DataConfig, load_stores
from dualdepth_ros.data.frames import MOTION_PERCENTILES, _motions
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.training.trainer import Trainer

FRAMES = 90  # 9 s at 10 Hz; braking from 4 s, standing still from 6 s to the end
TINY = [
    *TINY_MODEL,
    "train.log_every=1",
    "train.image_every=0",
    "train.checkpoint_every=100",
    "train.val_max_clips=4",
]


@pytest.fixture(scope="module")
def stopping_bag(tmp_path_factory):
    return drive(tmp_path_factory.mktemp("stop") / "bag", 331, 100, FRAMES, seed=8, stop_last_third=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _data(cache, **kw) -> DataConfig:
    cfg = DataConfig.coerce(load_config(DEFAULT_CONFIG).extra.get("data"))
    return dataclasses.replace(cfg, cache_dir=cache, **kw)


def test_still_camera_filter_keeps_the_same_frames_at_two_training_sizes(stopping_bag, cache):
    cfg = _data(cache)
    (big,) = load_stores(stopping_bag, cfg, 160, 48)
    (small,) = load_stores(stopping_bag, dataclasses.replace(cfg, resize_mode="crop_bottom"), 96, 32)
    np.testing.assert_array_equal(big.motion, small.motion)  # measured on the 331×100 camera image
    keep = ClipDataset([big], cfg, "all").stats[0]["kept"]
    assert keep == ClipDataset([small], cfg, "all").stats[0]["kept"]
    times = (big.stamps - big.stamps[0]) / 1e9
    moving = big.motion_at(cfg.static_percentile) >= cfg.static_threshold
    assert not moving[times > 6.05].any() and moving[(times > 0.05) & (times < 3.5)].all()
    # Measured at the network's size (the old way) the braking frames fall on different sides of the threshold.
    column = MOTION_PERCENTILES.index(cfg.static_percentile)
    old_big = int((_motions(big.rgb)[:, column] >= cfg.static_threshold).sum())
    old_small = int((_motions(small.rgb)[:, column] >= cfg.static_threshold).sum())
    assert old_small < old_big


def test_validation_split_exists_although_the_drive_ends_standing_still(stopping_bag, cache):
    cfg = _data(cache)
    stores = load_stores(stopping_bag, cfg, 96, 32)
    train, val = ClipDataset(stores, cfg, "train"), ClipDataset(stores, cfg, "val")
    assert len(val) >= 3 and len(train) > 3 * len(val)
    times = (stores[0].stamps - stores[0].stamps[0]) / 1e9
    va = {int(f) for i in range(len(val)) for f in val.clip_frames(i)[1]}
    tr = {int(f) for i in range(len(train)) for f in train.clip_frames(i)[1]}
    assert va.isdisjoint(tr) and max(times[sorted(va)]) < 6.0  # moving frames only
    assert min(abs(times[a] - times[b]) for a in tr for b in va) > cfg.split_gap_s
    last_tenth = times >= 0.9 * times[-1]  # where the old time-based split put validation: all standing still
    assert not (stores[0].motion_at(cfg.static_percentile)[last_tenth] >= cfg.static_threshold).any()


def _trainer(bag, out, cache, *overrides, **data):
    cfg = load_config(DEFAULT_CONFIG, overrides=TINY + list(overrides))
    return Trainer(cfg, [str(bag)], out, data_cfg=_data(cache, **data), progress=False)


def test_training_prints_the_layout_and_ground_truth_figures(stopping_bag, cache, tmp_path, capsys):
    torch.manual_seed(0)
    trainer = _trainer(stopping_bag, tmp_path / "run", cache, "train.max_steps=2", "train.val_every=1", **{
        "gt_depth_topic": "/gt/depth", "gt_pose_topic": "/gt/pose"})  # fmt: skip
    summary = trainer.fit()
    out = capsys.readouterr().out
    assert "clips: 5 frames at offsets [-2, -1, 0, 1, 2] (two-branch rule)" in out
    assert "still-camera filter:" in out and f"of {FRAMES} frames moving" in out and "331x100 camera image" in out
    assert f"validation: {len(trainer.val_set)} clips" in out and "images: 331x100" in out
    val_lines = [line for line in out.splitlines() if line.startswith("val @")]
    assert len(val_lines) == 2 and all("AbsRel" in line and "δ<1.25" in line for line in val_lines)
    assert "nan" not in out.lower()
    gt = summary["last_validation"]["val_gt"]
    assert gt["protocol"]["name"] == "dense" and gt["gt_coverage"]["gt_size"] == [331, 100]  # dense synthetic GT
    assert gt["n_images"] > 0 and 0 < gt["median_scaled"]["abs_rel"] < 2


def test_too_few_clips_name_the_filter_and_its_setting(stopping_bag, cache, tmp_path):
    with pytest.raises(DualDepthError) as err:
        _trainer(stopping_bag, tmp_path / "run", cache, "optim.batch_size=64")
    msg = str(err.value)
    assert f"{FRAMES} frames" in msg and "moving (optical flow p75 >= data.static_threshold = 1 px" in msg
    assert "331x100 camera image" in msg and "lower data.static_threshold" in msg and "set aside for validation" in msg
    with pytest.raises(DualDepthError, match="lacks \\[-2, 2\\]"):
        _trainer(stopping_bag, tmp_path / "run2", cache, frame_offsets=[-1, 0, 1])


def test_too_few_clips_for_validation_train_without_it(tmp_path, capsys):
    bag = drive(tmp_path / "short", 331, 100, 14, seed=9)  # 10 clips of 5 frames
    trainer = _trainer(bag, tmp_path / "run", str(tmp_path / "c"), "train.max_steps=2", "train.val_every=1",
                       val_fraction=0.04)  # fmt: skip
    trainer.fit()
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "no validation" in line]
    assert len(lines) == 1 and "10 clips are too few for val_fraction 0.04 (it needs 13)" in lines[0]
    assert "val @" not in out and "nan" not in out.lower() and len(trainer.train_set) == 10
