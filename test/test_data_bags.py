"""Tests of bag reading in :mod:`dualdepth_ros.data`: topic selection, errors, encodings, ground truth.

Bags are written with :mod:`dualdepth_ros.bagio`; :func:`write_bag` is shared with the other
``test_data_*`` modules.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from dualdepth_ros import bagio
from dualdepth_ros.data import Bag, load_frames, select_topics
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.preprocess import Preprocessor

T0 = 1_700_000_000_000_000_000
PERIOD = 100_000_000  # 10 Hz
W, H = 64, 48
K_DEFAULT = np.array([[40.0, 0, 31.5], [0, 40.0, 23.5], [0, 0, 1]])


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture (uint8) that gives a clear signal when shifted."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 2.0)


def moving_frames(n: int, shift: int = 3, seed: int = 0, height: int = H, width: int = W) -> list[np.ndarray]:
    """``n`` crops of a wide texture, each ``shift`` pixels right of the previous one (a panning camera)."""
    big = texture(height, width + n * shift, seed)
    return [np.ascontiguousarray(big[:, i * shift : i * shift + width]) for i in range(n)]


def write_bag(
    path: Path,
    frames: list[np.ndarray],
    *,
    storage: str = "mcap",
    image_topic: str = "/cam/image_raw",
    info_topic: str | None = "/cam/camera_info",
    encoding: str = "rgb8",
    compressed: str | None = None,
    K: np.ndarray = K_DEFAULT,
    D: np.ndarray | tuple = (),
    stamps: list[int] | None = None,
    depths: list[np.ndarray] | None = None,
    depth_encoding: str = "32FC1",
    masks: list[np.ndarray] | None = None,
    poses: list[np.ndarray] | None = None,
    extra_images: dict[str, list[np.ndarray]] | None = None,
) -> Path:
    """Write a small bag: images (+ camera_info, GT depth/mask/pose, extra image topics)."""
    stamps = stamps or [T0 + i * PERIOD for i in range(len(frames))]
    h, w = frames[0].shape[:2]
    with bagio.BagWriter(path, storage=storage) as bag:
        img_type = bagio.COMPRESSED_IMAGE if compressed else bagio.IMAGE
        bag.add_topic(image_topic, img_type)
        if info_topic:
            bag.add_topic(info_topic, bagio.CAMERA_INFO)
        if depths is not None:
            bag.add_topic("/gt/depth", bagio.IMAGE)
        if masks is not None:
            bag.add_topic("/gt/moving_mask", bagio.IMAGE)
        if poses is not None:
            bag.add_topic("/gt/pose", bagio.POSE_STAMPED)
        for topic in extra_images or {}:
            bag.add_topic(topic, bagio.IMAGE)
        for i, (img, ts) in enumerate(zip(frames, stamps)):
            if info_topic:
                bag.write(info_topic, bagio.camera_info_msg(w, h, K, ts, "cam", D=D), ts)
            if compressed:
                bag.write(image_topic, bagio.compressed_image_msg(img, ts, "cam", compressed), ts)
            else:
                bag.write(image_topic, bagio.image_msg(img, encoding, ts, "cam"), ts)
            if depths is not None:
                bag.write("/gt/depth", bagio.image_msg(depths[i], depth_encoding, ts, "cam"), ts)
            if masks is not None:
                bag.write("/gt/moving_mask", bagio.image_msg(masks[i], "mono8", ts, "cam"), ts)
            if poses is not None:
                bag.write("/gt/pose", bagio.pose_stamped_msg(poses[i], ts, "world"), ts)
            for topic, imgs in (extra_images or {}).items():
                bag.write(topic, bagio.image_msg(imgs[i], "rgb8", ts, "cam"), ts)
    return path


def _topics(path: Path, **kw):
    with Bag(path) as bag:
        return select_topics(bag, **kw)


# ---------------------------------------------------------------------------------------
# Topic selection
# ---------------------------------------------------------------------------------------
def test_auto_detection_with_ground_truth_topics(tmp_path):
    n = 3
    depth = np.full((H, W), 5.0, np.float32)
    mask = np.zeros((H, W), np.uint8)
    path = write_bag(tmp_path / "bag", moving_frames(n), depths=[depth] * n, masks=[mask] * n, poses=[np.eye(4)] * n)
    sel = _topics(path)  # the mono8 mask is an image topic too, but has no camera_info beside it
    assert (sel.image, sel.camera_info, sel.image_type) == ("/cam/image_raw", "/cam/camera_info", bagio.IMAGE)
    assert sel.gt_depth is None
    sel = _topics(path, gt_depth_topic="/gt/depth", gt_pose_topic="/gt/pose", gt_moving_mask_topic="/gt/moving_mask")
    assert (sel.gt_depth, sel.gt_pose, sel.gt_moving_mask) == ("/gt/depth", "/gt/pose", "/gt/moving_mask")


def test_raw_preferred_over_its_compressed_twin(tmp_path):
    frames = moving_frames(2)
    path2 = tmp_path / "bag2"
    with bagio.BagWriter(path2) as bag:
        bag.add_topic("/cam/image_raw", bagio.IMAGE)
        bag.add_topic("/cam/image_raw/compressed", bagio.COMPRESSED_IMAGE)
        bag.add_topic("/cam/camera_info", bagio.CAMERA_INFO)
        bag.write("/cam/image_raw", bagio.image_msg(frames[0], "rgb8", T0, "cam"), T0)
        bag.write("/cam/image_raw/compressed", bagio.compressed_image_msg(frames[0], T0, "cam"), T0)
        bag.write("/cam/camera_info", bagio.camera_info_msg(W, H, K_DEFAULT, T0, "cam"), T0)
    assert _topics(path2).image == "/cam/image_raw"


def test_ambiguous_cameras_list_the_topics(tmp_path):
    frames = moving_frames(2)
    path = tmp_path / "bag"
    with bagio.BagWriter(path) as bag:
        for cam in ("left", "right"):
            bag.add_topic(f"/{cam}/image_raw", bagio.IMAGE)
            bag.add_topic(f"/{cam}/camera_info", bagio.CAMERA_INFO)
        for cam in ("left", "right"):
            bag.write(f"/{cam}/image_raw", bagio.image_msg(frames[0], "rgb8", T0, cam), T0)
            bag.write(f"/{cam}/camera_info", bagio.camera_info_msg(W, H, K_DEFAULT, T0, cam), T0)
    with pytest.raises(DualDepthError) as info:
        _topics(path)
    msg = str(info.value)
    assert "several camera image topics" in msg and str(path) in msg
    assert re.search(r"/left/image_raw +sensor_msgs/msg/Image", msg)
    assert re.search(r"/right/camera_info +sensor_msgs/msg/CameraInfo", msg)
    assert _topics(path, image_topic="/right/image_raw").camera_info == "/right/camera_info"


def test_missing_topic_lists_present_topics(tmp_path):
    path = write_bag(tmp_path / "bag", moving_frames(2))
    with pytest.raises(DualDepthError) as info:
        load_frames(path, Preprocessor(32, 24), image_topic="/camera/image_color")
    msg = str(info.value)
    assert "'/camera/image_color'" in msg and str(path) in msg
    assert re.search(r"/cam/image_raw +sensor_msgs/msg/Image +\(2 messages\)", msg)
    assert re.search(r"/cam/camera_info +sensor_msgs/msg/CameraInfo", msg)
    with pytest.raises(DualDepthError, match="is sensor_msgs/msg/CameraInfo, expected"):
        load_frames(path, Preprocessor(32, 24), image_topic="/cam/camera_info")


def test_no_camera_info_needs_intrinsics(tmp_path):
    path = write_bag(tmp_path / "bag", moving_frames(2), info_topic=None)
    with pytest.raises(DualDepthError, match="no sensor_msgs/CameraInfo topic .*fx,fy,cx,cy"):
        load_frames(path, Preprocessor(32, 24))
    store = load_frames(path, Preprocessor(32, 24, intrinsics="40,40,31.5,23.5"))
    assert len(store) == 2 and store.K(0).as_tuple() == pytest.approx((20, 20, 15.5, 11.5, 32, 24))


def test_uncalibrated_camera_info_is_reported_with_the_bag(tmp_path):
    path = write_bag(tmp_path / "bag", moving_frames(2), K=np.zeros((3, 3)))
    with pytest.raises(DualDepthError, match=r"bag .*bag, topic /cam/image_raw: .*uncalibrated"):
        load_frames(path, Preprocessor(32, 24))


def test_image_size_differs_from_camera_info(tmp_path):
    path = tmp_path / "bag"
    with bagio.BagWriter(path) as bag:
        bag.add_topic("/cam/image_raw", bagio.IMAGE)
        bag.add_topic("/cam/camera_info", bagio.CAMERA_INFO)
        bag.write("/cam/camera_info", bagio.camera_info_msg(640, 480, K_DEFAULT, T0, "cam"), T0)
        bag.write("/cam/image_raw", bagio.image_msg(moving_frames(1)[0], "rgb8", T0, "cam"), T0)
    with pytest.raises(DualDepthError, match="image is 64x48 but its camera_info describes 640x480"):
        load_frames(path, Preprocessor(32, 24))


# ---------------------------------------------------------------------------------------
# Broken bags
# ---------------------------------------------------------------------------------------
def _storage_file(path: Path) -> Path:
    return next(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bag_names_the_file(tmp_path, storage):
    path = write_bag(tmp_path / "bag", moving_frames(8), storage=storage)
    f = _storage_file(path)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(DualDepthError) as info:
        load_frames(path, Preprocessor(32, 24))
    assert str(path) in str(info.value) and "corrupt" in str(info.value)
    assert "Traceback" not in str(info.value)


def test_corrupt_and_missing_bags(tmp_path):
    path = write_bag(tmp_path / "bag", moving_frames(2))
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: [unterminated\n")
    with pytest.raises(DualDepthError, match=str(broken)):
        load_frames(broken, Preprocessor(32, 24))
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 100)
    with pytest.raises(DualDepthError, match="garbage.mcap"):
        load_frames(garbage, Preprocessor(32, 24))
    with pytest.raises(DualDepthError, match="does not exist"):
        load_frames(tmp_path / "nope", Preprocessor(32, 24))


# ---------------------------------------------------------------------------------------
# Encodings and ground truth
# ---------------------------------------------------------------------------------------
def _bayer_rggb(rgb: np.ndarray) -> np.ndarray:
    out = np.empty(rgb.shape[:2], np.uint8)
    out[0::2, 0::2] = rgb[0::2, 0::2, 0]
    out[0::2, 1::2] = rgb[0::2, 1::2, 1]
    out[1::2, 0::2] = rgb[1::2, 0::2, 1]
    out[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return out


@pytest.mark.parametrize("kind", ["rgb8", "bgr8", "mono8", "bayer_rggb8", "mono16", "rgb16", "png", "jpeg"])
def test_encodings_decode_correctly(tmp_path, kind):
    rgb = moving_frames(1)[0]
    if kind == "bayer_rggb8":
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[:] = (200, 100, 50)
        rgb[:, W // 2 :] = (30, 60, 220)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    stored, expect, enc, comp = {
        "rgb8": (rgb, rgb, "rgb8", None),
        "bgr8": (np.ascontiguousarray(rgb[:, :, ::-1]), rgb, "bgr8", None),
        "mono8": (grey, np.repeat(grey[:, :, None], 3, 2), "mono8", None),
        "bayer_rggb8": (_bayer_rggb(rgb), rgb, "bayer_rggb8", None),
        "mono16": (grey.astype(np.uint16) * 257, np.repeat(grey[:, :, None], 3, 2), "mono16", None),
        "rgb16": (rgb.astype(np.uint16) * 257, rgb, "rgb16", None),
        "png": (rgb, rgb, "rgb8", "png"),
        "jpeg": (rgb, rgb, "rgb8", "jpeg"),
    }[kind]
    topic = "/cam/image_raw/compressed" if comp else "/cam/image_raw"
    path = write_bag(tmp_path / "bag", [stored], image_topic=topic, encoding=enc, compressed=comp)
    store = load_frames(path, Preprocessor(W, H))
    got = np.asarray(store.rgb[0])
    assert got.shape == (H, W, 3) and got.dtype == np.uint8
    if kind == "jpeg":
        assert np.mean(np.abs(got.astype(int) - expect)) < 3
    elif kind == "bayer_rggb8":  # demosaicing is exact away from the colour edge and the border
        np.testing.assert_allclose(got[4:-4, 4 : W // 2 - 4], expect[4:-4, 4 : W // 2 - 4], atol=1)
        np.testing.assert_allclose(got[4:-4, W // 2 + 4 : -4], expect[4:-4, W // 2 + 4 : -4], atol=1)
    else:
        np.testing.assert_array_equal(got, expect)


def test_ground_truth_is_matched_and_converted(tmp_path):
    n = 4
    frames = moving_frames(n)
    depths = []
    for i in range(n):
        d = np.full((H, W), 10.0 + i, np.float32)
        d[:4] = np.nan
        d[4:8] = -1
        depths.append(d)
    masks = [np.where(np.arange(W)[None, :] < 16 + i, 255, 0).repeat(H, 0).astype(np.uint8) for i in range(n)]
    poses = []
    for i in range(n):
        T = np.eye(4)
        T[:3, 3] = (0.0, 0.0, 1.5 * i)
        poses.append(T)
    path = write_bag(tmp_path / "bag", frames, depths=depths, masks=masks, poses=poses)
    store = load_frames(
        path,
        Preprocessor(32, 24),
        gt_depth_topic="/gt/depth",
        gt_pose_topic="/gt/pose",
        gt_moving_mask_topic="/gt/moving_mask",
    )
    assert store.gt_depth.shape == (n, 24, 32) and store.gt_depth.dtype == np.float32
    for i in range(n):
        assert np.all(store.gt_depth[i, :4] == 0)  # NaN and negative → 0 (invalid)
        assert np.all(store.gt_depth[i, 4:] == 10.0 + i)
        assert set(np.unique(store.gt_moving[i])) == {0, 1}
        np.testing.assert_allclose(store.gt_pose[i], poses[i], atol=1e-12)
    # 16UC1 depth is millimetres (REP 118).
    mm = [np.full((H, W), 12_345, np.uint16)] * 2
    path2 = write_bag(tmp_path / "bag2", frames[:2], depths=mm, depth_encoding="16UC1")
    store2 = load_frames(path2, Preprocessor(32, 24), gt_depth_topic="/gt/depth")
    np.testing.assert_allclose(store2.gt_depth, 12.345, rtol=1e-6)


def test_rosbag2_sqlite3_and_bare_mcap_file(tmp_path):
    frames = moving_frames(3)
    sq = write_bag(tmp_path / "sq", frames, storage="sqlite3")
    mc = write_bag(tmp_path / "mc", frames, storage="mcap")
    a = load_frames(sq, Preprocessor(32, 24))
    b = load_frames(_storage_file(mc), Preprocessor(32, 24))  # a bare .mcap file works too
    np.testing.assert_array_equal(np.asarray(a.rgb), np.asarray(b.rgb))
    assert list(a.stamps) == [T0 + i * PERIOD for i in range(3)]
    assert a.frame_id == "cam" and a.n_messages == 3


def test_ros1_bag(tmp_path):
    """ROS 1 bags (``.bag``) work too, with ROS 1 field names (``K``, ``D``, ``P`` …)."""
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC)
    T = ts.types
    frames = moving_frames(3)
    path = tmp_path / "drive.bag"
    with Writer(path) as writer:
        img_c = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        info_c = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        for i, rgb in enumerate(frames):
            stamp = T0 + i * PERIOD
            hdr = T["std_msgs/msg/Header"](
                seq=i, stamp=T["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="cam"
            )
            img = T["sensor_msgs/msg/Image"](
                header=hdr, height=H, width=W, encoding="rgb8", is_bigendian=0, step=W * 3, data=rgb.reshape(-1)
            )
            roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
            info = T["sensor_msgs/msg/CameraInfo"](
                header=hdr,
                height=H,
                width=W,
                distortion_model="plumb_bob",
                D=np.zeros(5),
                K=K_DEFAULT.reshape(-1),
                R=np.eye(3).reshape(-1),
                P=np.hstack([K_DEFAULT, np.zeros((3, 1))]).reshape(-1),
                binning_x=0,
                binning_y=0,
                roi=roi,
            )
            writer.write(info_c, stamp, ts.serialize_ros1(info, "sensor_msgs/msg/CameraInfo"))
            writer.write(img_c, stamp, ts.serialize_ros1(img, "sensor_msgs/msg/Image"))
    ros1 = load_frames(path, Preprocessor(32, 24))
    ros2 = load_frames(write_bag(tmp_path / "ros2", frames), Preprocessor(32, 24))
    np.testing.assert_array_equal(np.asarray(ros1.rgb), np.asarray(ros2.rgb))
    np.testing.assert_array_equal(ros1.stamps, ros2.stamps)
    np.testing.assert_array_equal(ros1.intrinsics, ros2.intrinsics)
