"""Helpers of the node tests: synthetic depth, test-double backends, messages, processes.

The test doubles implement the inference ``Backend`` interface (``name``, ``metadata``,
``reason``, ``infer``, ``describe``, ``close``) for the fault-handling tests only: a backend
that raises on demand, or that is slow. Everything that checks depth itself runs the real
shipped model through the real ONNX Runtime backend.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from dualdepth_ros.geometry import Intrinsics
from dualdepth_ros.preprocess import Preprocessor

REPO = Path(__file__).resolve().parents[1]
SAMPLE_BAG = REPO / "test" / "data" / "sample_drive"
DEFAULT_MODEL = REPO / "models" / "dualdepth_default"
#: ``depth_node`` parameters of a light node: the ONNX Runtime backend, one thread, no metric scale.
ORT_ONE_THREAD = ["-p", "backend:=onnxruntime", "-p", "threads:=1", "-p", "scale_mode:=none"]


def road_depth(K: Intrinsics, height: float, far: float = 50.0, pitch_deg: float = 0.0) -> np.ndarray:
    """``H×W`` float32 z-depth of a flat road ``height`` below a camera pitched down by ``pitch_deg``.

    Rows that do not see the road within ``far`` get ``far`` (a wall at that depth).
    """
    v, u = np.mgrid[0 : K.height, 0 : K.width].astype(np.float64)
    rays = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], axis=-1)
    p = np.radians(pitch_deg)
    # Road normal (down) in the camera frame of a camera pitched down by p: rotate +y about x.
    n = np.array([0.0, np.cos(p), np.sin(p)])
    denom = rays @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(denom > 1e-9, height / denom, np.inf)  # ray scale where it meets the plane (z = t)
    return np.where(np.isfinite(t) & (t < far), t, far).astype(np.float32)


@dataclasses.dataclass
class FakeMetadata:
    """The metadata fields the node reads, for test doubles."""

    input_width: int = 160
    input_height: int = 48
    resize_mode: str = "resize"
    rectify: bool = True

    def preprocessor(self, rectify: bool | None = None) -> Preprocessor:
        return Preprocessor(
            self.input_width, self.input_height, self.resize_mode, rectify=self.rectify if rectify is None else rectify
        )


@dataclasses.dataclass
class FakeResult:
    depth: np.ndarray
    confidence: np.ndarray
    branches: Any = None


class FakeBackend:
    """A test double: depth of a flat road ``height`` model units below the camera.

    ``fail`` (settable at any time) makes :meth:`infer` raise; ``delay`` makes it slow.
    The intrinsics assumed are those of a 90° horizontal field of view at the input size.
    """

    name = "fake"
    reason = "test double"

    def __init__(self, metadata: Any = None, height: float = 0.15, delay: float = 0.0, confidence: float = 0.8) -> None:
        self.metadata = metadata or FakeMetadata()
        self.height = height
        self.delay = delay
        self.fail = False
        self.calls = 0
        self.closed = False
        self._confidence = confidence
        w, h = int(self.metadata.input_width), int(self.metadata.input_height)
        self.K = Intrinsics(w / 2, w / 2, (w - 1) / 2, (h - 1) / 2, w, h)

    def infer(self, image: np.ndarray) -> FakeResult:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("simulated device failure")
        n, _, h, w = image.shape
        depth = np.broadcast_to(road_depth(self.K, self.height, far=10.0), (n, 1, h, w)).copy()
        conf = np.full((n, 1, h, w), self._confidence, np.float32)
        conf[:, :, : h // 4] = 0.1  # the top quarter is "unsure"
        return FakeResult(depth, conf)

    def describe(self) -> dict[str, Any]:
        w, h = int(self.metadata.input_width), int(self.metadata.input_height)
        return {"name": self.name, "device": "cpu", "precision": "fp32", "input": [w, h], "reason": self.reason}

    def close(self) -> None:
        self.closed = True


class FlakyBackend:
    """Wraps a real backend; raises while :attr:`fail` is set (the fault test's runtime failure)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.metadata = inner.metadata
        self.reason = getattr(inner, "reason", "")
        self.fail = False

    def infer(self, image: np.ndarray) -> Any:
        if self.fail:
            raise RuntimeError("simulated CUDA error: device lost")
        return self.inner.infer(image)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------
def rclpy_image(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera_optical_frame", encoding: str = "rgb8") -> Any:
    from sensor_msgs.msg import Image

    from dualdepth_ros.images import image_fields

    f = image_fields(rgb, encoding)
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.encoding, msg.step = f["height"], f["width"], encoding, f["step"]
    msg.data = f["data"].tobytes()
    return msg


def rclpy_camera_info(K: Intrinsics, stamp_ns: int = 0, frame_id: str = "camera_optical_frame") -> Any:
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.width, msg.height = K.width, K.height
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = K.matrix().reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.hstack([K.matrix(), np.zeros((3, 1))]).reshape(-1).tolist()
    return msg


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def image_array(msg: Any) -> np.ndarray:
    """A received 32FC1 / rgb8 Image as a numpy array (copied)."""
    from dualdepth_ros.images import decode_image

    return np.array(decode_image(msg))


# ---------------------------------------------------------------------------------------
# Processes and executors
# ---------------------------------------------------------------------------------------
def node_command(*ros_args: str) -> list[str]:
    """The ``depth_node`` executable of the code under test, with ``--ros-args …``.

    The venv's console script when it exists (``make setup`` installs it), else ``python -m``;
    either runs this checkout's code because the tests put it first on ``PYTHONPATH``.
    """
    exe = Path(sys.executable).with_name("depth_node")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dualdepth_ros.ros.node"]
    return [*cmd, "--ros-args", *ros_args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child ROS process: this checkout first on PYTHONPATH, one CPU thread."""
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class NodeProcess:
    """``depth_node`` as a child process whose output is collected (context manager)."""

    def __init__(self, *ros_args: str, env: dict[str, str] | None = None) -> None:
        self.cmd = node_command(*ros_args)
        self.proc = subprocess.Popen(
            self.cmd,
            env=env or child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            if self.proc.poll() is not None:
                time.sleep(0.2)
                return any(text in line for line in self.lines)
            time.sleep(0.05)
        return False

    def rss_bytes(self) -> int:
        """Resident memory of the node process (Linux ``/proc``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int | None = None, timeout: float = 20.0) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if sig is None else sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return int(self.proc.returncode)

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Spinner:
    """Spin rclpy nodes in a background thread (context manager)."""

    def __init__(self, *nodes: Any) -> None:
        from rclpy.executors import MultiThreadedExecutor

        self.executor = MultiThreadedExecutor(num_threads=2)
        for n in nodes:
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)

    def __enter__(self) -> Spinner:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.thread.join(timeout=5)


def publish_until(pub: Any, msg: Any, predicate: Any, timeout: float = 30.0, period: float = 0.1) -> bool:
    """Publish ``msg`` every ``period`` s until ``predicate()`` (a message sent just after discovery can be lost)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.publish(msg)
        if wait_until(predicate, period, 0.01):
            return True
    return bool(predicate())


def wait_until(predicate: Any, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


class Client:
    """A test node that talks to a depth_node in namespace ``ns``: publishes frames, collects outputs.

    Outputs are kept per stamp: ``outputs[stamp] = {"depth": msg, "depth_info": …, "conf": …,
    "conf_info": …, "t": arrival time of the depth}``; :attr:`diag` holds the node's statuses.
    """

    def __init__(self, ns: str, compressed: bool = False, name: str = "test_client") -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        self.ns = ns
        self.node = rclpy.create_node(name)
        q = 10
        self.image_pub = self.node.create_publisher(
            CompressedImage if compressed else Image, f"{ns}/image/compressed" if compressed else f"{ns}/image", q
        )
        self.info_pub = self.node.create_publisher(CameraInfo, f"{ns}/camera_info", q)
        self.outputs: dict[int, dict[str, Any]] = {}
        self.sent: dict[int, float] = {}
        self.diag: list[Any] = []
        self._lock = threading.Lock()
        for key, kind, topic in (
            ("depth", Image, "depth/image"),
            ("depth_info", CameraInfo, "depth/camera_info"),
            ("conf", Image, "confidence/image"),
            ("conf_info", CameraInfo, "confidence/camera_info"),
        ):
            self.node.create_subscription(kind, f"{ns}/{topic}", self._store(key), 50)

        def on_diag(msg: Any) -> None:
            self.diag.extend(s for s in msg.status if s.name.endswith(": depth"))

        self.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        self.spinner = Spinner(self.node)
        self.spinner.__enter__()

    def _store(self, key: str) -> Any:
        def cb(msg: Any) -> None:
            with self._lock:
                entry = self.outputs.setdefault(stamp_ns(msg.header), {})
                entry[key] = msg
                if key == "depth":
                    entry["t"] = time.monotonic()

        return cb

    def wait_connected(self, timeout: float = 60.0) -> bool:
        """The node's image and camera_info subscriptions and its depth publisher are matched."""
        return wait_until(
            lambda: (
                self.image_pub.get_subscription_count() > 0
                and self.info_pub.get_subscription_count() > 0
                and self.node.count_publishers(f"{self.ns}/depth/image") > 0
            ),
            timeout,
            0.1,
        )

    def send_info(self, info: Any, settle: float = 0.3, repeat: int = 3) -> None:
        """Publish a camera_info ``repeat`` times over ``settle`` seconds, so the node has it before the next image.

        (A separate topic; and a message sent just after discovery can still be lost, as a camera driver's
        first camera_info can: drivers publish one with every frame.)
        """
        for _ in range(repeat):
            self.info_pub.publish(info)
            time.sleep(settle / repeat)

    def send(self, image: Any) -> int:
        stamp = stamp_ns(image.header)
        self.sent[stamp] = time.monotonic()
        self.image_pub.publish(image)
        return stamp

    def complete(self, stamp: int) -> bool:
        with self._lock:
            return len(self.outputs.get(stamp, {})) == 5

    def send_and_wait(self, image: Any, timeout: float = 10.0) -> dict[str, Any] | None:
        """Publish one image and wait for all four outputs of its stamp (None on timeout)."""
        stamp = self.send(image)
        if not wait_until(lambda: self.complete(stamp), timeout, 0.005):
            return None
        return self.outputs[stamp]

    def close(self) -> None:
        self.spinner.__exit__()
        self.node.destroy_node()


def set_node_parameters(client_node: Any, node_fqn: str, values: dict[str, Any], timeout: float = 10.0) -> list[Any]:
    """Set parameters of a running node through its ``set_parameters`` service; returns the results."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    cli = client_node.create_client(SetParameters, f"{node_fqn}/set_parameters")
    try:
        if not cli.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"no {node_fqn}/set_parameters service")
        req = SetParameters.Request()
        req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        future = cli.call_async(req)
        if not wait_until(future.done, timeout):
            raise TimeoutError("set_parameters did not answer")
        return list(future.result().results)
    finally:
        client_node.destroy_client(cli)


def sample_frames(n: int | None = None) -> list[Any]:
    """The sample drive's frames as rclpy messages (``player.PlayFrame``: image, info, stamps)."""
    from dualdepth_ros.ros.player import load_stream

    return load_stream(SAMPLE_BAG, max_frames=n).frames


def sample_gt() -> dict[int, Any]:
    """The sample drive's ``/gt/depth`` messages (rosbags) by header stamp."""
    from dualdepth_ros.bagio import read_messages, stamp_to_ns

    return {stamp_to_ns(m.msg.header.stamp): m.msg for m in read_messages(SAMPLE_BAG, ["/gt/depth"])}
