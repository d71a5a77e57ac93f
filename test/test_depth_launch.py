"""launch_testing: ``depth.launch.py`` from the colcon install space, fed the sample drive.

The launch file is included as ``ros2 launch`` would run it (its Node action finds ``depth_node``
through the ament index of the install space), next to a player process that loops the bundled
sample drive on ``/camera/image_raw`` + ``/camera/camera_info``; the test checks that depth,
confidence and their camera_info arrive with the right encodings, sizes and headers.

Needs ``launch``/``launch_ros``/``launch_testing`` (``make test`` installs them from
``../shared/ros2-launch`` when that folder exists; a ROS 2 installation has them) and a colcon
build of this checkout (``make build``, part of ``make test``); without them it is skipped with
the reason.
"""

import os
import sys
import time
import unittest
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "install" / "dualdepth_ros"
SAMPLE_BAG = REPO / "test" / "data" / "sample_drive"
NS = "launch_test"

pytest.importorskip(
    "launch_testing",
    reason="launch_testing is not installed: `make test` installs the ROS 2 launch wheels from "
    "../shared/ros2-launch (ROS2_LAUNCH_WHEELS) when that folder exists, and a ROS 2 installation provides it; "
    "neither is present",
)
import launch_testing  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch import LaunchDescription  # noqa: E402
from launch.actions import ExecuteProcess, GroupAction, IncludeLaunchDescription, SetEnvironmentVariable  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402


def _site_packages() -> Path | None:
    found = sorted((INSTALL / "lib").glob("python3*/site-packages"))
    return found[0] if found else None


def _locate() -> tuple[Path | None, str]:
    """The installed launch file and where it comes from, or None and why not."""
    local = INSTALL / "share" / "dualdepth_ros" / "launch" / "depth.launch.py"
    if local.exists():
        return local, "colcon install space"
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory("dualdepth_ros")) / "launch" / "depth.launch.py"
        if share.exists():
            return share, "ament index"
    except Exception:  # noqa: BLE001 - not found, or AMENT_PREFIX_PATH unset
        pass
    return None, f"dualdepth_ros is not built: run `make build` (colcon) first; no {local}"


LAUNCH_FILE, WHERE = _locate()
ENV_BEFORE = dict(os.environ)


@pytest.mark.launch_test
@pytest.mark.skipif(LAUNCH_FILE is None, reason=WHERE)
def generate_test_description():
    env = []
    if WHERE == "colcon install space":  # as `source install/setup.bash` would, scoped to this launch
        prefixes = [str(INSTALL), sys.prefix, os.environ.get("AMENT_PREFIX_PATH", "")]
        env.append(SetEnvironmentVariable("AMENT_PREFIX_PATH", os.pathsep.join(p for p in prefixes if p)))
        paths = [str(_site_packages()), os.environ.get("PYTHONPATH", "")]
        env.append(SetEnvironmentVariable("PYTHONPATH", os.pathsep.join(p for p in paths if p)))
    env.append(SetEnvironmentVariable("OMP_NUM_THREADS", "1"))
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={
            "namespace": NS,
            "image": "/camera/image_raw",
            "camera_info": "/camera/camera_info",
            "backend": "onnxruntime",
            "camera_height_m": "1.5",
            "rviz": "false",
        }.items(),
    )
    player = ExecuteProcess(
        cmd=[sys.executable, "-m", "dualdepth_ros.ros.player", "--bag", str(SAMPLE_BAG), "--rate", "10", "--loop"],
        name="player",
        output="screen",
    )
    group = GroupAction([*env, include, player], scoped=True)
    return LaunchDescription([group, launch_testing.actions.ReadyToTest()]), {"player": player}


class TestDepthLaunch(unittest.TestCase):
    """While the launch runs: the outputs arrive, well-formed."""

    @classmethod
    def setUpClass(cls) -> None:
        import rclpy

        rclpy.init()
        cls.node = rclpy.create_node("depth_launch_checker")

    @classmethod
    def tearDownClass(cls) -> None:
        import rclpy

        cls.node.destroy_node()
        rclpy.shutdown()

    def test_outputs_arrive_with_encodings_sizes_and_headers(self) -> None:
        import numpy as np
        import rclpy
        from sensor_msgs.msg import CameraInfo, Image

        from dualdepth_ros.bagio import read_messages, stamp_to_ns

        got: dict[str, list] = {"depth": [], "depth_info": [], "conf": [], "conf_info": []}
        topics = {
            "depth": (Image, f"/{NS}/depth/image"),
            "depth_info": (CameraInfo, f"/{NS}/depth/camera_info"),
            "conf": (Image, f"/{NS}/confidence/image"),
            "conf_info": (CameraInfo, f"/{NS}/confidence/camera_info"),
        }
        for key, (kind, topic) in topics.items():
            self.node.create_subscription(kind, topic, got[key].append, 50)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and min(len(v) for v in got.values()) < 5:
            rclpy.spin_once(self.node, timeout_sec=0.1)
        self.assertGreaterEqual(min(len(v) for v in got.values()), 5, {k: len(v) for k, v in got.items()})

        sample_stamps = {stamp_to_ns(m.msg.header.stamp) for m in read_messages(SAMPLE_BAG, ["/camera/image_raw"])}

        def stamp(msg) -> int:
            return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

        infos = {stamp(m): m for m in got["depth_info"]}
        conf_infos = {stamp(m): m for m in got["conf_info"]}
        for d in got["depth"]:
            self.assertEqual((d.encoding, d.width, d.height, d.step), ("32FC1", 160, 48, 640))
            self.assertEqual(d.header.frame_id, "camera_optical_frame")
            self.assertIn(stamp(d), sample_stamps)
            if stamp(d) in infos:
                self.assertEqual(infos[stamp(d)].header, d.header)
        for c in got["conf"]:
            self.assertEqual((c.encoding, c.width, c.height), ("32FC1", 160, 48))
            values = np.frombuffer(bytes(c.data), np.float32)
            self.assertTrue(np.all((values >= 0) & (values <= 1)))
            if stamp(c) in conf_infos:
                self.assertEqual(conf_infos[stamp(c)].header, c.header)
        common = set(infos) & {stamp(d) for d in got["depth"]}
        self.assertTrue(common)
        for info in got["depth_info"] + got["conf_info"]:
            self.assertEqual((info.width, info.height), (160, 48))
            np.testing.assert_allclose(info.k, [80, 0, 79.5, 0, 80, 23.5, 0, 0, 1])
            np.testing.assert_allclose(info.p, [80, 0, 79.5, 0, 0, 80, 23.5, 0, 0, 0, 1, 0])
            self.assertEqual(list(info.d), [0.0] * 5)
        depth = np.frombuffer(bytes(got["depth"][-1].data), np.float32)
        self.assertGreater(np.isfinite(depth).mean(), 0.5)


@launch_testing.post_shutdown_test()
class TestDepthLaunchShutdown(unittest.TestCase):
    def test_processes_exit_cleanly(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])

    def test_environment_is_restored(self) -> None:
        for key in ("AMENT_PREFIX_PATH", "PYTHONPATH"):
            self.assertEqual(os.environ.get(key), ENV_BEFORE.get(key), key)
