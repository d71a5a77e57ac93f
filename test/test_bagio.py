"""Tests of :mod:`dualdepth_ros.bagio`: message round trips, atomic writes, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from dualdepth_ros import bagio
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.images import decode_image, decode_rgb

T0 = 1_700_000_000_123_456_789


def _arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 80.0, (32, 64)).astype(np.float32)
    depth[:5] = np.nan
    mask = (rng.random((32, 64)) > 0.5).astype(np.uint8) * 255
    return rgb, depth, mask


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    T = np.eye(4)
    T[:3, :3] = bagio.quaternion_to_rotation(q)
    T[:3, 3] = rng.normal(size=3) * 100
    return T


@pytest.mark.parametrize(
    ("storage", "compression"), [("mcap", None), ("mcap", "none"), ("sqlite3", None), ("sqlite3", "zstd")]
)
def test_round_trip_every_message_type(tmp_path, storage, compression):
    path = tmp_path / "bag"
    rng = np.random.default_rng(1)
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 15.5], [0, 0, 1]])
    D = np.array([-0.2, 0.05, 1e-3, -5e-4, 0.0])
    written = []
    with bagio.BagWriter(path, storage=storage, compression=compression) as bag:
        for topic, typ in [
            ("/img", bagio.IMAGE),
            ("/img/compressed", bagio.COMPRESSED_IMAGE),
            ("/depth", bagio.IMAGE),
            ("/mask", bagio.IMAGE),
            ("/info", bagio.CAMERA_INFO),
            ("/pose", bagio.POSE_STAMPED),
        ]:
            bag.add_topic(topic, typ)
        for i in range(3):
            ts = T0 + i * 100_000_000
            rgb, depth, mask = _arrays(i)
            T = _random_pose(rng)
            written.append((ts, rgb, depth, mask, T))
            bag.write("/img", bagio.image_msg(rgb, "rgb8", ts, "cam"), ts)
            bag.write("/img/compressed", bagio.compressed_image_msg(rgb, ts, "cam"), ts)
            bag.write("/depth", bagio.image_msg(depth, "32FC1", ts, "cam"), ts)
            bag.write("/mask", bagio.image_msg(mask, "mono8", ts, "cam"), ts)
            bag.write("/info", bagio.camera_info_msg(64, 32, K, ts, "cam", D=D), ts)
            bag.write("/pose", bagio.pose_stamped_msg(T, ts, "world"), ts)
        assert bag.counts["/img"] == 3
    assert (path / "metadata.yaml").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["bag"], "temporary directories left behind"

    got: dict[str, list] = {}
    for m in bagio.read_messages(path):
        got.setdefault(m.topic, []).append(m)
    assert {k: len(v) for k, v in got.items()} == dict.fromkeys(got, 3) and len(got) == 6
    for i, (ts, rgb, depth, mask, T) in enumerate(written):
        for topic in got:
            assert got[topic][i].timestamp_ns == ts
            assert bagio.stamp_to_ns(got[topic][i].msg.header.stamp) == ts
        assert got["/pose"][i].msg.header.frame_id == "world"
        assert got["/img"][i].msg.encoding == "rgb8"
        np.testing.assert_array_equal(decode_image(got["/img"][i].msg), rgb)
        np.testing.assert_array_equal(decode_rgb(got["/img/compressed"][i].msg), rgb)
        d = decode_image(got["/depth"][i].msg)
        assert d.dtype == np.float32 and d.tobytes() == depth.tobytes()  # bit for bit, NaNs included
        np.testing.assert_array_equal(decode_image(got["/mask"][i].msg), mask)
        info = got["/info"][i].msg
        assert (info.width, info.height, info.distortion_model) == (64, 32, "plumb_bob")
        np.testing.assert_array_equal(info.k, K.reshape(-1))
        np.testing.assert_array_equal(info.d, D)
        np.testing.assert_array_equal(info.p, np.hstack([K, np.zeros((3, 1))]).reshape(-1))
        np.testing.assert_array_equal(info.r, np.eye(3).reshape(-1))
        np.testing.assert_allclose(bagio.pose_to_matrix(got["/pose"][i].msg), T, atol=1e-12)


def test_quaternion_round_trip_including_half_turns():
    rng = np.random.default_rng(3)
    rotations = [bagio.quaternion_to_rotation(rng.normal(size=4)) for _ in range(50)]
    rotations += [np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0]), np.eye(3)]
    for R in rotations:
        q = bagio.rotation_to_quaternion(R)
        assert abs(np.linalg.norm(q) - 1) < 1e-12 and q[3] >= 0
        np.testing.assert_allclose(bagio.quaternion_to_rotation(q), R, atol=1e-12)


def test_exception_leaves_no_bag_and_no_temp_dir(tmp_path):
    path = tmp_path / "bag"
    with pytest.raises(RuntimeError, match="boom"):
        with bagio.BagWriter(path) as bag:
            bag.add_topic("/img", bagio.IMAGE)
            bag.write("/img", bagio.image_msg(_arrays()[0], "rgb8", T0, "cam"), T0)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_exception_while_overwriting_keeps_old_bag(tmp_path):
    path = tmp_path / "bag"
    with bagio.BagWriter(path) as bag:
        bag.add_topic("/old", bagio.IMAGE)
        bag.write("/old", bagio.image_msg(_arrays()[0], "rgb8", T0, "cam"), T0)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        with bagio.BagWriter(path, overwrite=True) as bag:
            bag.add_topic("/new", bagio.IMAGE)
            raise KeyboardInterrupt
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bag"]


def test_non_empty_directory_refused_and_untouched(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    with pytest.raises(DualDepthError, match="not empty.*--overwrite"):
        bagio.BagWriter(path)
    # Even with overwrite, a directory that is not a bag is never deleted.
    with pytest.raises(DualDepthError, match="does not look like a rosbag2"):
        bagio.BagWriter(path, overwrite=True)
    assert [p.name for p in path.iterdir()] == ["notes.txt"]
    assert (path / "notes.txt").read_text() == "keep me"
    file_path = tmp_path / "file"
    file_path.write_text("x")
    with pytest.raises(DualDepthError, match="not a directory"):
        bagio.BagWriter(file_path, overwrite=True)


def test_overwrite_replaces_a_bag_and_empty_dir_is_fine(tmp_path):
    path = tmp_path / "bag"
    path.mkdir()  # an empty directory is accepted without overwrite
    for topic in ("/first", "/second"):
        with bagio.BagWriter(path, storage="sqlite3", overwrite=True) as bag:
            bag.add_topic(topic, bagio.POSE_STAMPED)
            bag.write(topic, bagio.pose_stamped_msg(np.eye(4), T0, "world"), T0)
    assert [m.topic for m in bagio.read_messages(path)] == ["/second"]
    assert sorted(p.name for p in path.iterdir()) == ["bag.db3", "metadata.yaml"]
    with pytest.raises(DualDepthError, match="not empty"):
        bagio.BagWriter(path, storage="mcap")


def test_bad_arguments_and_missing_topics(tmp_path):
    with pytest.raises(DualDepthError, match="storage"):
        bagio.BagWriter(tmp_path / "x", storage="bag")
    with pytest.raises(DualDepthError, match="compression"):
        bagio.BagWriter(tmp_path / "x", compression="lz4")
    with bagio.BagWriter(tmp_path / "x") as bag:
        with pytest.raises(DualDepthError, match="not added"):
            bag.write("/nope", bagio.pose_stamped_msg(np.eye(4), T0, "world"), T0)
        bag.add_topic("/pose", bagio.POSE_STAMPED)
        with pytest.raises(DualDepthError, match="already added"):
            bag.add_topic("/pose", bagio.POSE_STAMPED)
        bag.write("/pose", bagio.pose_stamped_msg(np.eye(4), T0, "world"), T0)
    with pytest.raises(DualDepthError, match="no topic /camera"):
        list(bagio.read_messages(tmp_path / "x", ["/camera"]))
    with pytest.raises(DualDepthError, match="does not exist"):
        list(bagio.read_messages(tmp_path / "missing"))


@pytest.mark.parametrize("version", [8, 9])
def test_metadata_versions(tmp_path, version):
    path = tmp_path / "bag"
    with bagio.BagWriter(path, version=version) as bag:
        bag.add_topic("/pose", bagio.POSE_STAMPED)
        bag.write("/pose", bagio.pose_stamped_msg(np.eye(4), T0, "world"), T0)
        bag.write_text("README.md", "# hello")
    meta = (path / "metadata.yaml").read_text()
    assert f"version: {version}" in meta
    # v8 keeps QoS profiles as a string (what Humble parses), v9 as a list.
    assert ("offered_qos_profiles: ''" in meta) == (version == 8)
    assert [m.topic for m in bagio.read_messages(path)] == ["/pose"]
    assert (path / "README.md").read_text() == "# hello"
    with pytest.raises(DualDepthError, match="version"):
        bagio.BagWriter(tmp_path / "other", version=7)


def test_typestore_is_shared():
    assert bagio.typestore() is bagio.typestore()
    assert "sensor_msgs/msg/CameraInfo" in bagio.typestore().types
