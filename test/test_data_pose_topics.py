"""Ground-truth camera poses from every common message type, found automatically (:mod:`dualdepth_ros.data.bags`).

Each bag holds a panning camera (``frame_id`` ``cam``) and poses of a known trajectory in one
or more of: ``PoseStamped``, ``PoseWithCovarianceStamped``, ``Odometry``, ``TransformStamped``
and TF (``tf2_msgs/TFMessage`` on ``/tf``). The decoded store must hold exactly the written
poses, and auto-detection must take the source that describes the camera, list the
candidates when several fit, and say why a source of another frame is not used.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_data_bags import K_DEFAULT, PERIOD, T0, moving_frames

from dualdepth_ros import bagio
from dualdepth_ros.data import BagError, load_frames, resolve_gt_topics
from dualdepth_ros.preprocess import Preprocessor

N = 6


def _trajectory() -> list[np.ndarray]:
    poses = []
    for i in range(N):
        a = 0.05 * i
        T = np.eye(4)
        T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        T[:3, 3] = [0.3 * i, -0.02 * i, 1.1 * i]
        poses.append(T)
    return poses


def _pose(T):
    q = bagio.rotation_to_quaternion(T[:3, :3])
    point = bagio.msg_class("geometry_msgs/msg/Point")(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3]))
    quat = bagio.msg_class("geometry_msgs/msg/Quaternion")(x=q[0], y=q[1], z=q[2], w=q[3])
    return bagio.msg_class("geometry_msgs/msg/Pose")(position=point, orientation=quat)


def _transform(T, ts, parent, child):
    q = bagio.rotation_to_quaternion(T[:3, :3])
    cls = bagio.msg_class
    tf = cls("geometry_msgs/msg/Transform")(
        translation=cls("geometry_msgs/msg/Vector3")(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
        rotation=cls("geometry_msgs/msg/Quaternion")(x=q[0], y=q[1], z=q[2], w=q[3]),
    )
    return cls("geometry_msgs/msg/TransformStamped")(
        header=bagio.header(ts, parent), child_frame_id=child, transform=tf
    )


def _message(kind: str, T, ts, child: str = "cam"):
    cls = bagio.msg_class
    if kind == "pose":
        return "geometry_msgs/msg/PoseStamped", cls("geometry_msgs/msg/PoseStamped")(
            header=bagio.header(ts, "world"), pose=_pose(T)
        )
    if kind == "pose_cov":
        pwc = cls("geometry_msgs/msg/PoseWithCovariance")(pose=_pose(T), covariance=np.zeros(36))
        return "geometry_msgs/msg/PoseWithCovarianceStamped", cls("geometry_msgs/msg/PoseWithCovarianceStamped")(
            header=bagio.header(ts, "world"), pose=pwc
        )
    if kind == "odom":
        zero = cls("geometry_msgs/msg/Vector3")(x=0.0, y=0.0, z=0.0)
        twist = cls("geometry_msgs/msg/TwistWithCovariance")(
            twist=cls("geometry_msgs/msg/Twist")(linear=zero, angular=zero), covariance=np.zeros(36)
        )
        pwc = cls("geometry_msgs/msg/PoseWithCovariance")(pose=_pose(T), covariance=np.zeros(36))
        return "nav_msgs/msg/Odometry", cls("nav_msgs/msg/Odometry")(
            header=bagio.header(ts, "odom"), child_frame_id=child, pose=pwc, twist=twist
        )
    if kind == "transform":
        return "geometry_msgs/msg/TransformStamped", _transform(T, ts, "world", child)
    if kind == "tf":  # another frame's transform first, then the camera's
        other = _transform(np.eye(4), ts, "world", "base_link")
        return "tf2_msgs/msg/TFMessage", cls("tf2_msgs/msg/TFMessage")(
            transforms=[other, _transform(T, ts, "map", child)]
        )
    raise ValueError(kind)


def _bag(path, sources: dict[str, tuple[str, str]]):
    """A panning camera plus pose sources ``{topic: (kind, child_frame)}``."""
    frames, poses = moving_frames(N), _trajectory()
    types = {topic: _message(kind, poses[0], T0, child)[0] for topic, (kind, child) in sources.items()}
    with bagio.BagWriter(path) as bag:
        bag.add_topic("/cam/image_raw", bagio.IMAGE)
        bag.add_topic("/cam/camera_info", bagio.CAMERA_INFO)
        for topic, ty in types.items():
            bag.add_topic(topic, ty)
        for i, img in enumerate(frames):
            ts = T0 + i * PERIOD
            bag.write("/cam/camera_info", bagio.camera_info_msg(64, 48, K_DEFAULT, ts, "cam"), ts)
            bag.write("/cam/image_raw", bagio.image_msg(img, "rgb8", ts, "cam"), ts)
            for topic, (kind, child) in sources.items():
                bag.write(topic, _message(kind, poses[i], ts, child)[1], ts)
    return path, poses


@pytest.mark.parametrize(
    ("kind", "topic", "spec", "how"),
    [
        ("pose", "/mocap/camera", "/mocap/camera", "PoseStamped"),
        ("pose_cov", "/amcl_pose", "/amcl_pose", "PoseWithCovarianceStamped"),
        ("odom", "/odom", "/odom", "Odometry"),
        ("transform", "/camera_pose", "/camera_pose", "TransformStamped"),
        ("tf", "/tf", "/tf:cam", "TFMessage child"),
    ],
)
def test_each_pose_type_is_found_and_read_exactly(tmp_path, kind, topic, spec, how):
    path, poses = _bag(tmp_path / "bag", {topic: (kind, "cam")})
    found = resolve_gt_topics(path)
    assert found.gt_pose == spec and found.notes["gt_pose"] == f"auto-detected {how}"
    assert found.gt_depth is None and "no ground-truth depth" in found.notes["gt_depth"]
    store = load_frames(path, Preprocessor(32, 24), gt_pose_topic=found.gt_pose)
    np.testing.assert_allclose(store.gt_pose, np.stack(poses), atol=1e-12)


def test_sources_of_other_frames_are_named_not_used(tmp_path):
    path, _ = _bag(tmp_path / "bag", {"/odom": ("odom", "base_link"), "/tf": ("tf", "camera_link")})
    found = resolve_gt_topics(path)
    assert found.gt_pose is None
    note = found.notes["gt_pose"]
    assert "no pose of the camera frame 'cam'" in note and "/odom: Odometry of base_link" in note
    assert "/tf: TF of base_link, camera_link" in note
    # Named explicitly, the TF child frame is followed.
    store = load_frames(path, Preprocessor(32, 24), gt_pose_topic="/tf:camera_link")
    assert np.isfinite(store.gt_pose).all()


def test_several_candidates_are_listed(tmp_path):
    path, _ = _bag(tmp_path / "bag", {"/a/pose": ("pose", ""), "/b/odom": ("odom", "cam")})
    with pytest.raises(BagError) as err:
        resolve_gt_topics(path)
    msg = str(err.value)
    assert "several ground-truth pose sources fit" in msg and "/a/pose (PoseStamped)" in msg
    assert "/b/odom (Odometry)" in msg and "--gt-pose-topic" in msg and "Topics in the bag" in msg
    assert resolve_gt_topics(path, gt_pose_topic="/b/odom").gt_pose == "/b/odom"  # a given one is taken


def test_default_name_wins_and_tf_needs_a_child_frame(tmp_path):
    path, _ = _bag(tmp_path / "bag", {"/gt/pose": ("pose", ""), "/odom": ("odom", "cam"), "/tf": ("tf", "cam")})
    found = resolve_gt_topics(path)
    assert found.gt_pose == "/gt/pose" and found.notes["gt_pose"] == "default name"
    from_config = resolve_gt_topics(path, preferred={"gt_pose": "/tf:cam"})  # e.g. the checkpoint's data config
    assert from_config.gt_pose == "/tf:cam" and from_config.notes["gt_pose"] == "from the config"
    assert resolve_gt_topics(path, preferred={"gt_pose": "/tf"}).gt_pose == "/gt/pose"  # TF without a child: no pose
    with pytest.raises(BagError, match="TF stream; name the camera's frame as /tf:CHILD_FRAME"):
        load_frames(path, Preprocessor(32, 24), gt_pose_topic="/tf")
