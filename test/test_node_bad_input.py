"""Bad input sent to a running depth_node process (real model, ONNX Runtime, real DDS).

For each: a clear (throttled) error in the node's log, nothing published for it, the node
stays up, and the next good frame is processed. The raw-image node gets: no camera_info at
all, an unsupported encoding, an image whose size disagrees with camera_info, K with zeros,
K with NaN, a 0×0 image, a very large image (a real 400×300 one against a node started with
``max_image_pixels: 100000``, and one that claims 100000×100000 with 30 bytes), a step/data
length mismatch; a second node with ``image_transport:
compressed`` gets a corrupt compressed payload.
"""

import time

import numpy as np
import pytest
from node_harness import ORT_ONE_THREAD, Client, NodeProcess, sample_frames, wait_until

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (make setup installs the ROS 2 Jazzy wheels)")
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402


def _copy_info(info: CameraInfo, **changes) -> CameraInfo:
    out = CameraInfo()
    for field in ("header", "height", "width", "distortion_model", "d", "k", "r", "p", "binning_x", "binning_y", "roi"):
        setattr(out, field, getattr(info, field))
    for k, v in changes.items():
        setattr(out, k, v)
    return out


def _image(stamp: int, width: int, height: int, encoding: str, data: bytes, step: int) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    msg.header.frame_id = "camera_optical_frame"
    msg.width, msg.height, msg.encoding, msg.step = width, height, encoding, step
    msg.data = data
    return msg


#: The node's error_log_period_s here: long, so that a slow run stays within one period; the assertions allow one
#: more line per period elapsed all the same (a throttled message is logged at most once per period).
LOG_PERIOD_S = 120.0


def _throttled(since: float) -> int:
    """The most lines one kind of message may give from ``since`` until now: one per log period begun."""
    return 1 + int((time.monotonic() - since) / LOG_PERIOD_S)


def _good(frame, stamp: int) -> Image:
    img = frame.image
    return _image(stamp, img.width, img.height, img.encoding, bytes(img.data), img.step)


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def _expect_refused_then_recovers(node, client, bad_stamp, good, expected_log, timeout=30.0):
    """The bad frame (already sent) gives no output and the log line; the good one is processed.

    ``expected_log`` None: the line is not expected (the same kind was logged within the log period).
    """
    if expected_log is not None:
        assert node.wait_for_line(expected_log, timeout), f"no log line with {expected_log!r}:\n{node.output[-3000:]}"
    assert client.send_and_wait(good, timeout=30) is not None, node.output[-3000:]
    assert bad_stamp not in client.outputs
    assert node.proc.poll() is None


def test_bad_raw_input(ros) -> None:
    frames = sample_frames(3)
    f = frames[0]
    ns = "/bad_raw"
    # A low max_image_pixels (0.1 MP; default 16.7 MP), so that a real "too large" frame stays small for DDS: a
    # best-effort subscription can lose a multi-megabyte frame in transit on a loaded CI box.
    args = [
        *ORT_ONE_THREAD,
        "-p",
        "max_image_pixels:=100000",
        "-p",
        f"error_log_period_s:={LOG_PERIOD_S}",
    ]
    with NodeProcess("-r", f"__ns:={ns}", *args) as node:
        assert node.wait_for_line("ready:", 90), node.output
        client = Client(ns, name="bad_raw_client")
        try:
            assert client.wait_connected(60)
            stamp = 1_000_000_000_000

            def next_stamp() -> int:
                nonlocal stamp
                stamp += 1000
                return stamp

            # 1. no camera_info at all: nothing published, a warning; three of them give one line per log period
            t_first = time.monotonic()
            for _ in range(3):
                client.send(_good(f, next_stamp()))
                time.sleep(0.05)
            assert node.wait_for_line("no camera_info received", 30), node.output
            time.sleep(0.5)
            assert client.outputs == {}
            assert 1 <= sum("no camera_info received" in line for line in node.lines) <= _throttled(t_first)
            client.send_info(f.info)

            cases = []
            # 2. unsupported encoding (a depth map sent as the camera image)
            s = next_stamp()
            cases.append(
                (_image(s, 320, 96, "32FC1", bytes(320 * 96 * 4), 320 * 4), "unsupported image encoding '32FC1'")
            )
            # 3. an image whose size disagrees with camera_info
            s = next_stamp()
            cases.append(
                (
                    _image(s, 160, 48, "rgb8", bytes(160 * 48 * 3), 480),
                    "image is 160x48 but its camera_info describes 320x96",
                )
            )
            # 4. 0×0
            s = next_stamp()
            cases.append((_image(s, 0, 0, "rgb8", b"", 0), "empty image (0x0)"))
            # 5. step/data length mismatch
            s = next_stamp()
            cases.append((_image(s, 320, 96, "rgb8", bytes(320 * 3 * 50), 320 * 3), "step/data length mismatch"))
            # 6. very large: a real 400×300 mono8 (0.12 MP > max_image_pixels) and one that only claims 100000×100000
            s = next_stamp()
            cases.append((_image(s, 400, 300, "mono8", bytes(400 * 300), 400), "larger than max_image_pixels"))
            s = next_stamp()  # the same kind of error as the previous one: counted, not logged again (throttled)
            cases.append((_image(s, 100000, 100000, "rgb8", bytes(30), 300000), None))
            for bad, log in cases:
                client.send(bad)
                _expect_refused_then_recovers(
                    node, client, bad.header.stamp.sec * 10**9 + bad.header.stamp.nanosec, _good(f, next_stamp()), log
                )

            # 7. K with zeros, then K with NaN (the camera_info is bad, the image fine)
            for info, log in (
                (_copy_info(f.info, k=[0.0] * 9), "all-zero K matrix"),
                (
                    _copy_info(f.info, k=[160.0, 0.0, 159.5, 0.0, 0.0, 47.5, 0.0, 0.0, 1.0], p=[0.0] * 12),
                    "focal lengths",
                ),
                (
                    _copy_info(f.info, k=[160.0, 0.0, float("nan"), 0.0, 160.0, 47.5, 0.0, 0.0, 1.0]),
                    "non-finite values",
                ),
            ):
                client.send_info(info)
                s = next_stamp()
                client.send(_good(f, s))
                assert node.wait_for_line(log, 30), node.output[-3000:]
                client.send_info(f.info)
                assert client.send_and_wait(_good(f, next_stamp()), timeout=30) is not None
                assert s not in client.outputs

            # the same error again within the log period: not logged a second time (once per period at most)
            n = sum("unsupported image encoding" in line for line in node.lines)
            client.send(_image(next_stamp(), 320, 96, "32FC1", bytes(320 * 96 * 4), 320 * 4))
            assert client.send_and_wait(_good(f, next_stamp()), timeout=30) is not None
            assert sum("unsupported image encoding" in line for line in node.lines) <= _throttled(t_first)
            assert sum("unsupported image encoding" in line for line in node.lines) >= n
            # every frame the node received is accounted for in the diagnostics: a bad one refused, or dropped
            # for the good frame sent right after it (newest frame only); the three sent before any camera_info
            # counted as such, or dropped for a newer one; every good frame published. A frame sent right
            # before another can be replaced in the subscription's one-deep queue before the callback takes
            # it (qos_input_depth 1, newest frame only), so the node never receives it: on a loaded machine
            # "received" can be below what was sent, but never above, and never without the bad frames
            # whose log lines were awaited above.
            n_bad = len(cases) + 3 + 1
            n_no_info = 3
            n_good = len(client.outputs)

            def accounted() -> bool:
                if not client.diag:
                    return False
                d = {kv.key: int(kv.value) for kv in client.diag[-1].values if kv.value.isdigit()}
                received = d["frames received"]
                return (
                    d["frames published"] == n_good
                    and d["frames refused (bad input)"] + d["frames dropped"] + d["frames without camera_info"]
                    == received - n_good
                    and n_good + sum(log is not None for _, log in cases) <= received <= n_good + n_bad + n_no_info
                )

            assert wait_until(accounted, 30), str({kv.key: kv.value for kv in client.diag[-1].values})
            # nothing wrong was ever published: every output belongs to a good frame
            for out in client.outputs.values():
                d = out["depth"]
                assert (d.width, d.height, d.encoding) == (160, 48, "32FC1")
            assert node.proc.poll() is None
        finally:
            client.close()
        assert "Traceback" not in node.output


def test_corrupt_compressed_payload(ros) -> None:
    from dualdepth_ros.images import compressed_fields, decode_rgb

    f = sample_frames(1)[0]
    ns = "/bad_compressed"
    png = compressed_fields(decode_rgb(f.image), "png")
    with NodeProcess(
        "-r", f"__ns:={ns}", "-p", "backend:=onnxruntime", "-p", "image_transport:=compressed", "-p", "scale_mode:=none"
    ) as node:
        assert node.wait_for_line("ready:", 90), node.output
        client = Client(ns, compressed=True, name="bad_compressed_client")
        try:
            assert client.wait_connected(60)
            client.send_info(f.info)

            def msg(stamp: int, data: bytes) -> CompressedImage:
                m = CompressedImage()
                m.header.stamp.sec, m.header.frame_id = stamp, "camera_optical_frame"
                m.format = png["format"]
                m.data = data
                return m

            good = bytes(png["data"])
            assert client.send_and_wait(msg(1, good), timeout=30) is not None
            client.send(msg(2, good[: len(good) // 3]))  # truncated PNG
            assert node.wait_for_line("cannot decode", 30), node.output
            client.send(msg(3, np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes()))  # noise
            client.send(msg(4, b""))
            assert node.wait_for_line("compressed image has no data", 30), node.output
            assert client.send_and_wait(msg(5, good), timeout=30) is not None
            assert wait_until(lambda: True, 0.3)
            assert set(client.outputs) == {1_000_000_000, 5_000_000_000}
            assert node.proc.poll() is None
        finally:
            client.close()
        assert "Traceback" not in node.output
