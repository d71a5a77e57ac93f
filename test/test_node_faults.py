"""Faults: a model that cannot be used stops depth_node at start with one clear line; a backend
that raises at runtime (the real ONNX Runtime backend behind a switch) turns the diagnostics to
ERROR while the node stays up, and it serves again when the backend recovers.
"""

import json
import shutil
import time
from pathlib import Path

import pytest
from node_harness import (
    DEFAULT_MODEL,
    FlakyBackend,
    NodeProcess,
    Spinner,
    publish_until,
    sample_frames,
    stamp_ns,
    wait_until,
)

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (make setup installs the ROS 2 Jazzy wheels)")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402


def _start_fails(*ros_args: str) -> str:
    node = NodeProcess(*ros_args)
    assert node.proc.wait(timeout=120) == 2, node.output
    node.stop()
    assert "Traceback" not in node.output
    return node.output


def test_missing_model_is_a_clear_error_at_start(tmp_path: Path) -> None:
    out = _start_fails("-p", f"model_path:={tmp_path / 'nope'}")
    assert f"cannot start: model folder {tmp_path / 'nope'} does not exist" in out


def test_mismatched_model_is_a_clear_error_at_start(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model)
    meta = json.loads((model / "model.json").read_text())
    meta["input_width"] = int(meta["input_width"]) * 2  # model.json no longer describes model.onnx
    (model / "model.json").write_text(json.dumps(meta))
    out = _start_fails("-p", f"model_path:={model}", "-p", "backend:=onnxruntime")
    assert "cannot start:" in out and "model" in out.split("cannot start:")[1]


def test_invalid_parameters_are_a_clear_error_at_start() -> None:
    out = _start_fails("-p", "scale_mode:=lidar")
    assert "cannot start: invalid parameters: scale_mode must be one of none, fixed, camera_height" in out
    out = _start_fails("-p", "camera_height_m:=2")
    assert "cannot start: parameter camera_height_m must be a double" in out


def test_backend_raising_at_runtime_then_recovering() -> None:
    from dualdepth_ros.inference import open_backend
    from dualdepth_ros.ros.node import DepthNode

    frames = sample_frames(20)
    rclpy.init()
    backend = FlakyBackend(open_backend(DEFAULT_MODEL, "onnxruntime", device="cpu", threads=1))
    node = DepthNode(
        namespace="/fault",
        backend=backend,
        parameter_overrides=[Parameter("diagnostics_period_s", value=0.1), Parameter("scale_mode", value="none")],
    )
    client = rclpy.create_node("fault_client")
    image_pub = client.create_publisher(Image, "/fault/image", 10)
    info_pub = client.create_publisher(CameraInfo, "/fault/camera_info", 10)
    depth: list[Image] = []
    diag: list[DiagnosticStatus] = []
    client.create_subscription(Image, "/fault/depth/image", depth.append, 10)
    client.create_subscription(
        DiagnosticArray,
        "/diagnostics",
        lambda m: diag.extend(s for s in m.status if s.name == "fault/depth_node: depth"),
        10,
    )
    try:
        with Spinner(node, client):
            assert wait_until(
                lambda: image_pub.get_subscription_count() and node.pub_depth.get_subscription_count(), 30
            )
            assert publish_until(info_pub, frames[0].info, lambda: node._info is not None)

            def send(i: int) -> None:
                image_pub.publish(frames[i].image)

            send(0)
            assert wait_until(lambda: len(depth) == 1, 30)
            assert wait_until(lambda: diag and diag[-1].level == DiagnosticStatus.OK, 30)
            dropped_before = node.stats.snapshot()["dropped"]
            backend.fail = True
            for i in range(1, 6):
                send(i)
                time.sleep(0.1)
            assert wait_until(lambda: diag[-1].level == DiagnosticStatus.ERROR, 30)
            assert "simulated CUDA error: device lost" in diag[-1].message
            assert len(depth) == 1
            backend.fail = False
            send(6)
            assert wait_until(lambda: len(depth) == 2, 30)
            assert stamp_ns(depth[-1].header) == frames[6].stamp_ns
            assert wait_until(lambda: diag[-1].level == DiagnosticStatus.OK, 30)
            values = {kv.key: kv.value for kv in diag[-1].values}
            # each of the 5 failing frames ran and failed, or (a slow run) was dropped for the next one
            dropped = int(values["frames dropped"]) - dropped_before
            assert int(values["backend errors"]) >= 1
            assert int(values["backend errors"]) + dropped == 5, values
            assert "device lost" in values["last error"]
    finally:
        node.destroy_node()
        client.destroy_node()
        rclpy.shutdown()
