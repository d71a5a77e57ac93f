"""``dualdepth gpu-cache``: decoded drives that training and evaluation read as they read the bags."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dualdepth_ros.cli import main
from dualdepth_ros.data import ClipDataset, DataConfig, expand_bag_paths, load_frames, resolve_gt_topics
from dualdepth_ros.data.bags import BagError
from dualdepth_ros.data.gpu_cache import (
    DRIVE_FILE,
    _dense,
    _sparse,
    build_cache,
    is_cached_drive,
    read_manifest,
)
from dualdepth_ros.errors import DualDepthError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "test" / "data" / "sample_drive"
SHIPPED = REPO / "models" / "dualdepth_default.pt"
KITTI_0009 = REPO.parent / "shared" / "data" / "kitti_raw_0009" / "bag"
ARRAYS = ("rgb", "stamps", "intrinsics", "motion", "source_intrinsics", "gt_depth", "gt_depth_native", "gt_moving")


@pytest.fixture(scope="module")
def frame_cache(tmp_path_factory) -> Path:
    """A frame cache of this module's own (DUALDEPTH_CACHE), so the bag is decoded here, not taken from elsewhere."""
    folder = tmp_path_factory.mktemp("frames")
    old = os.environ.get("DUALDEPTH_CACHE")
    os.environ["DUALDEPTH_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("DUALDEPTH_CACHE", None)
    else:
        os.environ["DUALDEPTH_CACHE"] = old


@pytest.fixture(scope="module")
def cache(tmp_path_factory, frame_cache) -> Path:
    """The sample drive as a scoring drive of a gpu cache at the default recipe's size (160x48)."""
    out = tmp_path_factory.mktemp("gpu") / "cache"
    manifest = build_cache(out, [], [SAMPLE], log=lambda _line: None)
    assert manifest["input"] == {"width": 160, "height": 48, "resize_mode": "crop_center"}
    return out


def request_all() -> dict:
    return {"gt_depth_topic": "/gt/depth", "gt_pose_topic": "/gt/pose", "gt_moving_mask_topic": "/gt/moving_mask"}


def test_a_cached_drive_is_the_bags_frames_array_for_array(cache, frame_cache) -> None:
    pre = DataConfig().preprocessor(160, 48)
    drive = cache / "score" / "sample_drive"
    assert is_cached_drive(drive) and not is_cached_drive(SAMPLE)
    from_bag = load_frames(SAMPLE, pre, cache_dir=frame_cache, **request_all())
    cached = load_frames(drive, pre, cache_dir=frame_cache, **request_all())
    assert cached.from_cache and cached.decoded == 0 and len(cached) == len(from_bag) == 100
    for name in ARRAYS:
        a, b = getattr(from_bag, name), getattr(cached, name)
        assert a is not None and b is not None, name
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name  # motion[0] is NaN
    assert np.array_equal(from_bag.gt_pose, cached.gt_pose, equal_nan=True)
    assert cached.topics == from_bag.topics
    for attr in ("width", "height", "source_width", "source_height", "frame_id", "n_messages"):
        assert getattr(cached, attr) == getattr(from_bag, attr), attr
    # Ground truth not asked for is left out, as when decoding the bag.
    bare_bag, bare = load_frames(SAMPLE, pre, cache_dir=frame_cache), load_frames(drive, pre)
    assert bare.gt_depth is None and bare.gt_depth_native is None and bare.gt_moving is None and bare.gt_pose is None
    assert bare.topics == bare_bag.topics and bare.topics.gt_depth is None


def test_training_clips_from_the_cache_equal_those_from_the_bag(cache, frame_cache) -> None:
    pre = DataConfig().preprocessor(160, 48)
    cfg = DataConfig(color_aug=False, flip=False)
    stores = [load_frames(p, pre, cache_dir=frame_cache) for p in (SAMPLE, cache / "score" / "sample_drive")]
    a, b = (ClipDataset([s], cfg, split="train", augment=False) for s in stores)
    assert len(a) == len(b) >= 40 and a.totals() == b.totals()
    for i in (0, len(a) // 2, len(a) - 1):
        x, y = a[i], b[i]
        assert x.keys() == y.keys()
        for key in x:
            assert np.array_equal(np.asarray(x[key]), np.asarray(y[key])), key


def test_eval_from_the_cache_gives_the_bags_numbers(cache, tmp_path) -> None:
    results = []
    for bag in (SAMPLE, cache / "score" / "sample_drive"):
        out = tmp_path / f"{bag.name}.json"
        assert main(["eval", "--checkpoint", str(SHIPPED), "--bag", str(bag), "--json", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    bag, cached = results
    for key in ("median_scaled", "branches", "confidence", "temporal", "pose", "n_images", "gt_points", "protocol"):
        assert cached[key] == bag[key], key
    assert cached["bags"][0]["notes"]["gt_depth"] == "from the gpu cache"


def test_expand_bag_paths_and_gt_topics_know_cached_drives(cache) -> None:
    drive = cache / "score" / "sample_drive"
    assert expand_bag_paths([cache / "score"]) == [drive]
    assert expand_bag_paths(drive) == [drive]
    topics = resolve_gt_topics(drive)
    assert (topics.gt_depth, topics.gt_pose, topics.gt_moving_mask) == ("/gt/depth", "/gt/pose", "/gt/moving_mask")
    with pytest.raises(BagError, match="holds gt depth /gt/depth, not /other/depth"):
        resolve_gt_topics(drive, gt_depth_topic="/other/depth")
    manifest = read_manifest(cache)
    assert [d["name"] for d in manifest["drives"]["score"]] == ["sample_drive"] and manifest["drives"]["train"] == []
    assert manifest["drives"]["score"][0]["dir"] == str(drive.resolve())


def test_another_size_topic_or_a_damaged_folder_is_one_line(cache, tmp_path) -> None:
    drive = cache / "score" / "sample_drive"
    with pytest.raises(BagError, match=r"prepared as 160x48 crop_center.*needs 320x96 crop_center.*rebuild") as err:
        load_frames(drive, DataConfig().preprocessor(320, 96))
    assert "\n" not in str(err.value)
    pre = DataConfig().preprocessor(160, 48)
    with pytest.raises(BagError, match="holds /camera/image_raw as its image topic, not /other/image"):
        load_frames(drive, pre, image_topic="/other/image")
    broken = tmp_path / "broken"
    shutil.copytree(drive, broken)
    data = bytearray((broken / "rgb.png").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "rgb.png").write_bytes(bytes(data))
    with pytest.raises(BagError, match="rgb.png is missing or damaged.*rebuild"):
        load_frames(broken, pre)
    meta = json.loads((broken / DRIVE_FILE).read_text())
    (broken / DRIVE_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(BagError, match="version 99.*rebuild"):
        load_frames(broken, pre)
    with pytest.raises(DualDepthError, match="is not a gpu-cache folder.*make gpu-cache"):
        read_manifest(tmp_path)


def test_sparse_depth_round_trips_exactly() -> None:
    rng = np.random.default_rng(0)
    mm = np.where(rng.random((3, 7, 11)) < 0.1, rng.integers(1, 65535, (3, 7, 11)), 0).astype(np.uint16)
    metres = mm.astype(np.float32) / 1000.0  # what the data layer makes of a 16UC1 depth image
    packed = _sparse(metres, "d")
    assert "d_mm" in packed and packed["d_mm"].dtype == np.uint16
    assert np.array_equal(_dense(packed, "d", metres.shape), metres)
    odd = metres * np.float32(1.0001)  # not whole millimetres: kept as float32 metres
    packed = _sparse(odd, "d")
    assert "d_metres" in packed and np.array_equal(_dense(packed, "d", odd.shape), odd)
    empty = np.zeros((2, 3, 4), np.float32)
    assert np.array_equal(_dense(_sparse(empty, "d"), "d", empty.shape), empty)


def test_the_command_line(tmp_path, capsys, frame_cache) -> None:
    assert main(["gpu-cache", "--out", str(tmp_path / "c")]) == 2
    assert "give --data DIR" in capsys.readouterr().err
    assert main(["gpu-cache", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    small = ["gpu-cache", "--score-bag", str(SAMPLE), "--out", str(tmp_path / "c"), "--max-mib", "0.01"]
    assert main(small) == 2
    assert "over --max-mib 0.01" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary folder left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    argv = ["gpu-cache", "--train-bag", str(SAMPLE), "--out", str(tmp_path / "mine"), "--overwrite"]
    assert main(argv) == 2
    assert "does not look like a gpu-cache folder" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    argv = ["gpu-cache", "--train-bag", str(SAMPLE), "--out", str(tmp_path / "ok")]
    assert main(argv) == 0
    assert "train with --bag" in capsys.readouterr().out
    assert main(argv + ["--overwrite"]) == 0  # a gpu-cache folder is replaced
    assert is_cached_drive(tmp_path / "ok" / "train" / "sample_drive")


@pytest.mark.skipif(not KITTI_0009.exists(), reason="../shared/data/kitti_raw_0009 is not beside this clone")
def test_kitti_0009_scores_the_same_from_the_cache(tmp_path, frame_cache) -> None:
    """The scoring drive: LiDAR depth kept sparse on its 1242x375 grid, AbsRel equal to the bag's."""
    build_cache(tmp_path / "cache", [], [KITTI_0009], log=lambda _line: None)
    drive = tmp_path / "cache" / "score" / "kitti_raw_0009"
    gt = np.load(drive / "gt.npz")
    assert "native_mm" in gt.files  # whole millimetres, as in the bag's 16UC1 images
    size = sum(f.stat().st_size for f in drive.iterdir())
    assert size < 4 * 2**20  # 51 frames; their dense float32 GT alone would be 95 MB
    scores = []
    for bag in (KITTI_0009, drive):
        out = tmp_path / f"{bag.parent.name if bag.name == 'bag' else bag.name}.json"
        assert main(["eval", "--checkpoint", str(SHIPPED), "--bag", str(bag), "--json", str(out)]) == 0
        scores.append(json.loads(out.read_text()))
    assert scores[1]["median_scaled"] == scores[0]["median_scaled"]
    assert scores[0]["n_images"] == 51 and scores[0]["protocol"]["name"] == "kitti"
