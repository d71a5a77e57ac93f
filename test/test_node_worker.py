"""depth_node's threading and fault handling, in-process over real rclpy pub/sub.

A test-double backend (node_harness.FakeBackend) stands in for the model here, because these
tests need a backend that is slow or raises on demand: the newest-frame mailbox under a
100 Hz input, diagnostics ERROR while the backend raises and recovery after, runtime parameter
changes, no camera_info, and the preview published only while subscribed. The real model is
exercised by test_node_integration.py.
"""

import threading
import time

import numpy as np
import pytest
from node_harness import FakeBackend, Spinner, publish_until, rclpy_camera_info, rclpy_image, stamp_ns, wait_until

from dualdepth_ros.geometry import Intrinsics
from dualdepth_ros.ros.node import LatestSlot, ThrottledLog

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (make setup installs the ROS 2 Jazzy wheels)")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from dualdepth_ros.ros.node import DepthNode  # noqa: E402

CAM = Intrinsics(160.0, 160.0, 159.5, 47.5, 320, 96)
RGB = np.random.default_rng(0).integers(0, 255, (96, 320, 3), dtype=np.uint8)


def test_latest_slot_keeps_only_the_newest() -> None:
    slot = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True  # 1 was never taken: dropped
    assert slot.get(timeout=0.1) == 2
    assert slot.get(timeout=0.05) is None  # empty: times out
    got = []
    t = threading.Thread(target=lambda: got.append(slot.get()))
    t.start()
    slot.close()
    t.join(timeout=2)
    assert got == [None] and not t.is_alive()


def test_throttled_log_groups_messages_by_kind() -> None:
    lines = []
    log = ThrottledLog(lambda level, msg: lines.append((level, msg)), period=60.0)
    assert log("error", "image is 640x480 but its camera_info describes 320x96")
    assert not log("error", "image is 800x600 but its camera_info describes 320x96")  # same kind
    assert log("error", "unsupported image encoding '32FC1'")  # another kind
    assert log("warn", "image is 640x480 but its camera_info describes 320x96")  # another level
    assert len(lines) == 3
    log.period = 0.0
    assert log("error", "image is 1x1 but its camera_info describes 320x96")
    assert "1 more like this" in lines[-1][1]


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


class Rig:
    """A DepthNode with a fake backend in namespace ``ns``, and a client node that feeds and listens."""

    def __init__(self, ns: str, backend: FakeBackend, **params) -> None:
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.node = DepthNode(namespace=ns, backend=backend, parameter_overrides=overrides)
        self.client = rclpy.create_node(f"client_{ns.strip('/')}")
        self.image_pub = self.client.create_publisher(Image, f"{ns}/image", 10)
        self.info_pub = self.client.create_publisher(CameraInfo, f"{ns}/camera_info", 10)
        self.depth: list[tuple[float, Image]] = []
        self.infos: list[CameraInfo] = []
        self.diag: list[DiagnosticStatus] = []
        self.client.create_subscription(
            Image, f"{ns}/depth/image", lambda m: self.depth.append((time.monotonic(), m)), 50
        )
        self.client.create_subscription(CameraInfo, f"{ns}/depth/camera_info", self.infos.append, 50)
        name = f"{ns.strip('/')}/depth_node: depth"

        def on_diag(msg: DiagnosticArray) -> None:
            self.diag.extend(s for s in msg.status if s.name == name)

        self.client.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        self.spinner = Spinner(self.node, self.client)
        self.sent: dict[int, float] = {}

    def __enter__(self):
        self.spinner.__enter__()
        assert wait_until(lambda: self.image_pub.get_subscription_count() > 0, 30)
        assert wait_until(lambda: self.node.pub_depth.get_subscription_count() > 0, 30)
        return self

    def __exit__(self, *exc):
        self.spinner.__exit__(*exc)
        self.node.destroy_node()
        self.client.destroy_node()

    def send(self, stamp: int, info: bool = True) -> None:
        if info:
            # camera_info and image are separate topics: let the node take the info first
            assert publish_until(
                self.info_pub,
                rclpy_camera_info(CAM, stamp),
                lambda: self.node._info is not None and stamp_ns(self.node._info.header) == stamp,
            )
        self.sent[stamp] = time.monotonic()
        self.image_pub.publish(rclpy_image(RGB, stamp))

    def diag_value(self, status: DiagnosticStatus, key: str) -> str:
        return {kv.key: kv.value for kv in status.values}[key]


def test_newest_frame_only_under_a_fast_input(ros) -> None:
    """100 Hz into a 20 Hz backend: most frames dropped and counted, published latency stays one frame deep.

    Bounds are the node's guarantees against what it measured in this run (this process also runs the 100 Hz
    publisher and the client, so the worker's speed varies): the backend runs at most once per 0.05 s of the
    run, every received frame ran or was dropped, and no frame waited longer than the frame in progress.
    """
    backend = FakeBackend(delay=0.05)
    with Rig("/worker_load", backend, scale_mode="none", diagnostics_period_s=0.2) as rig:
        rig.send(0)
        assert wait_until(lambda: len(rig.depth) == 1, 30)
        rig.depth.clear()
        calls_before = backend.calls
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < 2.0:
            rig.send(1_000_000_000 + k * 10_000_000, info=False)
            k += 1
            time.sleep(0.01)

        # Wait until every received frame is accounted for (run and published, or dropped) and has arrived.
        def settled() -> bool:
            st = rig.node.stats.snapshot()
            return st["received"] == st["dropped"] + st["published"] and len(rig.depth) == st["published"] - 1

        assert wait_until(settled, 60), rig.node.stats.snapshot()
        elapsed = time.monotonic() - t0
        stats = rig.node.stats.snapshot()
        n_out = len(rig.depth)
        calls = backend.calls - calls_before
        # in one process (Fast DDS delivers within the participant): every frame sent reached the node
        assert stats["received"] == k + 1 and stats["lost"] == 0, (k, stats)
        # at most the backend's own rate (it sleeps 0.05 s per call), not the input's, and at least one
        assert 1 <= n_out == calls <= elapsed / 0.05 + 1, (n_out, calls, elapsed)
        assert stats["published"] == backend.calls, stats  # whatever ran was published
        assert n_out == stats["published"] - 1, (n_out, stats)  # and arrived (reliable; the first was cleared)
        assert stats["received"] == stats["dropped"] + backend.calls  # every frame either ran or was dropped
        assert stats["dropped"] >= k - calls
        stamps = [stamp_ns(m.header) for _, m in rig.depth]
        assert stamps == sorted(stamps) and set(stamps) <= set(rig.sent)
        # The node's own latency (receive → publish) stays one frame deep: a frame waits at most for the one in
        # progress, then its own (each >= 0.05 s here). A backlog of the ~100 frames sent would reach seconds.
        assert stats["latency_max_s"] <= 2 * stats["frame_time_max_s"] + 1e-3, stats
        assert wait_until(lambda: rig.diag and int(rig.diag_value(rig.diag[-1], "frames dropped")) > 0, 30)


def test_backend_failure_turns_diagnostics_to_error_and_recovers(ros) -> None:
    backend = FakeBackend()
    with Rig("/worker_fault", backend, scale_mode="none", diagnostics_period_s=0.1, error_log_period_s=0.0) as rig:
        rig.send(1)
        assert wait_until(lambda: len(rig.depth) == 1, 30)
        assert wait_until(lambda: rig.diag and rig.diag[-1].level == DiagnosticStatus.OK, 30)
        backend.fail = True
        for s in range(2, 6):
            rig.send(s)
            time.sleep(0.05)
        assert wait_until(lambda: rig.diag and rig.diag[-1].level == DiagnosticStatus.ERROR, 30)
        status = rig.diag[-1]
        assert "simulated device failure" in status.message
        assert "simulated device failure" in rig.diag_value(status, "last error")
        assert int(rig.diag_value(status, "backend errors")) >= 1
        assert len(rig.depth) == 1  # nothing published while failing

        def all_failed() -> bool:  # frames 2-5 each failed or were dropped for a newer one: none still waits
            st = rig.node.stats.snapshot()
            return st["received"] == 5 and st["backend_errors"] + st["dropped"] == 4

        assert wait_until(all_failed, 30), rig.node.stats.snapshot()
        assert len(rig.depth) == 1
        backend.fail = False
        rig.send(10)
        assert wait_until(lambda: len(rig.depth) == 2, 30)
        assert stamp_ns(rig.depth[-1][1].header) == 10
        assert wait_until(lambda: rig.diag[-1].level == DiagnosticStatus.OK, 30)


def test_no_camera_info_publishes_nothing_and_warns(ros) -> None:
    with Rig("/worker_noinfo", FakeBackend(), diagnostics_period_s=0.1) as rig:
        for s in range(5):
            rig.send(s, info=False)
            time.sleep(0.02)
        # each counted as without camera_info, or (a busy executor) replaced by the next one in the DDS queue
        assert wait_until(
            lambda: (lambda st: st["no_camera_info"] + st["dropped_in_queue"] == 5)(rig.node.stats.snapshot()), 30
        )
        assert wait_until(lambda: rig.diag and rig.diag[-1].level == DiagnosticStatus.WARN, 30)
        assert "no camera_info" in rig.diag[-1].message
        time.sleep(0.2)
        assert rig.depth == []
        rig.send(99)
        assert wait_until(lambda: len(rig.depth) == 1, 30)


def test_warnings_and_errors_both_reach_the_log_and_the_worker_survives(ros, capfd) -> None:
    """A warning (no camera_info) then errors (bad frames) then a good frame: all logged, still serving."""
    with Rig("/worker_logs", FakeBackend(), scale_mode="none", error_log_period_s=0.0) as rig:
        rig.send(1, info=False)
        assert wait_until(lambda: rig.node.stats.snapshot()["no_camera_info"] == 1, 30)
        wrong = rclpy_camera_info(Intrinsics(160.0, 160.0, 159.5, 47.5, 640, 192), 2)
        assert publish_until(rig.info_pub, wrong, lambda: rig.node._info is not None)
        rig.image_pub.publish(rclpy_image(RGB, 2))  # 320×96 against a 640×192 camera_info
        assert wait_until(lambda: rig.node.stats.snapshot()["bad_input"] == 1, 30)
        rig.send(3)
        assert wait_until(lambda: len(rig.depth) == 1, 30)
        assert rig.node._worker.is_alive()
    err = capfd.readouterr().err
    assert "no camera_info received" in err
    assert "input frame refused: image is 320x96 but its camera_info describes 640x192" in err


def test_runtime_parameters_apply_and_invalid_ones_are_refused(ros) -> None:
    backend = FakeBackend(height=0.15)
    with Rig("/worker_params", backend, camera_height_m=1.5, scale_smoothing=1.0) as rig:
        rig.send(1)
        assert wait_until(lambda: len(rig.depth) == 1, 30)
        assert rig.node.processor.scaler.scale == pytest.approx(10.0, rel=1e-3)
        res = rig.node.set_parameters([Parameter("camera_height_m", value=3.0)])
        assert res[0].successful
        rig.send(2)
        assert wait_until(lambda: len(rig.depth) == 2, 30)
        assert rig.node.processor.scaler.scale == pytest.approx(20.0, rel=1e-3)
        d1 = np.frombuffer(bytes(rig.depth[0][1].data), np.float32).reshape(48, 160)
        d2 = np.frombuffer(bytes(rig.depth[1][1].data), np.float32).reshape(48, 160)
        np.testing.assert_allclose(d2[40:], 2 * d1[40:], rtol=1e-4)
        bad = rig.node.set_parameters([Parameter("confidence_threshold", value=2.0)])
        assert not bad[0].successful and "confidence_threshold must be at most 1.0" in bad[0].reason
        bad = rig.node.set_parameters([Parameter("min_depth", value=100.0)])
        assert not bad[0].successful and "min_depth < max_depth" in bad[0].reason
        ro = rig.node.set_parameters([Parameter("backend", value="torch")])
        assert not ro[0].successful  # read-only: start-time parameter
        assert rig.node.get_parameter("camera_height_m").value == 3.0
        assert rig.node.get_parameter("confidence_threshold").value == 0.0


def test_preview_only_while_subscribed(ros) -> None:
    with Rig("/worker_preview", FakeBackend(), scale_mode="none") as rig:
        previews = []
        rig.send(1)
        assert wait_until(lambda: len(rig.depth) == 1, 30)
        sub = rig.client.create_subscription(Image, "/worker_preview/depth/preview", previews.append, 10)
        assert wait_until(lambda: rig.node.pub_preview.get_subscription_count() == 1, 30)
        rig.send(2)
        assert wait_until(lambda: len(previews) == 1, 30)
        time.sleep(0.2)
        assert len(previews) == 1  # frame 1 had no preview: nobody was subscribed then
        p = previews[0]
        assert (p.encoding, p.width, p.height, stamp_ns(p.header)) == ("rgb8", 160, 48, 2)
        rig.client.destroy_subscription(sub)
        assert wait_until(lambda: rig.node.pub_preview.get_subscription_count() == 0, 30)


def test_outputs_copy_the_header_and_describe_the_published_resolution(ros) -> None:
    with Rig("/worker_header", FakeBackend(), scale_mode="none") as rig:
        rig.send(1_234_567_890_123)
        assert wait_until(lambda: rig.depth and rig.infos, 30)
        depth, info = rig.depth[0][1], rig.infos[0]
        assert depth.header == info.header
        assert (depth.header.frame_id, stamp_ns(depth.header)) == ("camera_optical_frame", 1_234_567_890_123)
        assert (depth.encoding, depth.width, depth.height, depth.step) == ("32FC1", 160, 48, 640)
        assert (info.width, info.height) == (160, 48)
        np.testing.assert_allclose(info.k, [80, 0, 79.5, 0, 80, 23.5, 0, 0, 1])
        np.testing.assert_allclose(info.p, [80, 0, 79.5, 0, 0, 80, 23.5, 0, 0, 0, 1, 0])
        np.testing.assert_allclose(info.r, np.eye(3).ravel())
        assert list(info.d) == [0.0] * 5


@pytest.mark.parametrize("depth", [1, 5])
def test_only_the_newest_frame_waits_for_the_callback(ros, depth: int) -> None:
    """Frames that arrive while the node's executor is busy wait in the subscription's DDS queue.

    With the default ``qos_input_depth`` (1) only the newest one waits there: the callback gets it and the
    older ones count as received and dropped, so a busy executor adds no backlog in front of the mailbox.
    With keep-last 5 the executor would take the oldest of five first (that frame already stale by four
    input periods) and convert each to Python only to drop it: the depth-5 case shows the difference.
    """
    from rclpy.executors import SingleThreadedExecutor

    from dualdepth_ros.ros.qos import profile

    ns = f"/worker_newest_{depth}"
    params = [Parameter("scale_mode", value="none")]
    if depth != 1:
        params.append(Parameter("qos_input_depth", value=depth))
    node = DepthNode(namespace=ns, backend=FakeBackend(), parameter_overrides=params)
    assert node.params["qos_input_depth"] == depth  # 1 is the default
    client = rclpy.create_node(f"client_newest_{depth}")
    camera_qos = profile("best_effort", 5)  # a camera driver's publisher
    image_pub = client.create_publisher(Image, f"{ns}/image", camera_qos)
    info_pub = client.create_publisher(CameraInfo, f"{ns}/camera_info", camera_qos)
    published: list[int] = []
    client.create_subscription(Image, f"{ns}/depth/image", lambda m: published.append(stamp_ns(m.header)), 50)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(client)

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.02)

    try:
        assert wait_until(lambda: image_pub.get_subscription_count() and info_pub.get_subscription_count(), 30)
        deadline = time.monotonic() + 30
        while node._info is None and time.monotonic() < deadline:
            info_pub.publish(rclpy_camera_info(CAM, 0))
            spin(0.1)
        assert node._info is not None
        image_pub.publish(rclpy_image(RGB, 0))  # a first frame: the node counts the publisher's frames from it on
        deadline = time.monotonic() + 30
        while 0 not in published and time.monotonic() < deadline:
            spin(0.1)
        assert published == [0]
        before = node.stats.snapshot()
        # the executor is "busy" (not spinning) while ten frames arrive
        for stamp in range(1, 11):
            image_pub.publish(rclpy_image(RGB, stamp))
            time.sleep(0.005)
        time.sleep(0.5)  # all delivered into the subscription's queue
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            spin(0.3)
            st = node.stats.snapshot()
            if published[-1] == 10 and st["received"] - before["received"] == 10:
                break
        st = node.stats.snapshot()
        taken = st["received"] - st["dropped_in_queue"] - (before["received"] - before["dropped_in_queue"])
        assert st["received"] - before["received"] == 10, st  # every frame reached the node …
        assert st["lost"] == 0
        assert published and published[-1] == 10  # … and the newest was published
        if depth == 1:
            assert taken == 1 and published == [0, 10], (taken, published)  # only the newest waited for the callback
            assert st["dropped_in_queue"] - before["dropped_in_queue"] == 9
        else:
            assert taken == depth, (taken, published)  # the executor took `depth` frames, the oldest first
    finally:
        executor.shutdown()
        node.destroy_node()
        client.destroy_node()
