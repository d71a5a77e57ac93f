"""ROS 2 from the environment: discovery stays on localhost and pub/sub works across processes."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (make setup installs the ROS 2 Jazzy wheels)")
from std_msgs.msg import String  # noqa: E402


def test_discovery_is_limited_to_localhost() -> None:
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert os.environ["ROS_LOCALHOST_ONLY"] == "1"


def test_pub_sub_across_processes() -> None:
    publisher = textwrap.dedent(
        """
        import time, rclpy
        from std_msgs.msg import String
        rclpy.init()
        node = rclpy.create_node("dd_test_talker")
        pub = node.create_publisher(String, "dd_test_chatter", 10)
        for i in range(150):
            pub.publish(String(data=f"hello {i}"))
            rclpy.spin_once(node, timeout_sec=0.05)
        rclpy.shutdown()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", publisher], env=os.environ.copy())
    received: list[str] = []
    rclpy.init()
    try:
        node = rclpy.create_node("dd_test_listener")
        node.create_subscription(String, "dd_test_chatter", lambda m: received.append(m.data), 10)
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        node.destroy_node()
    finally:
        rclpy.shutdown()
        proc.kill()
        proc.wait()
    assert received and received[0].startswith("hello")
