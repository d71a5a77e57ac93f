"""Play a bag's camera stream (image + camera_info) through rclpy, like ``ros2 bag play`` would.

``ros2 bag`` is not installable in the development venv, so the demo, the launch test and the
node benchmark publish recorded frames with this module: frames are read with ``rosbags``
(:mod:`dualdepth_ros.data.bags` picks the topics as training does), converted to rclpy messages
through their CDR bytes (so headers, encodings and data are exactly as recorded), and published
at the bag's own timing (``speed`` × real time) or at a fixed rate, each image right after its
camera_info.

Large frames at a camera's rate (the DDS transport tests and ``dualdepth bench node --mode
delivery``): ``size`` resizes every frame to ``W×H`` rgb8 and serializes it once
(:func:`serialized_frames`); each publication then only writes the current time into the
serialized header and hands the bytes to rclpy, so a 1920×1080 stream at 30 Hz costs the player
little CPU beyond DDS's own copies.

Command line (for a second process, e.g. in a launch file)::

    python -m dualdepth_ros.ros.player --bag test/data/sample_drive [--rate 10] [--loop]
    python -m dualdepth_ros.ros.player --bag test/data/sample_drive --size 1920x1080 --rate 30 --duration 10 \
        --reliability best_effort --depth 5 --publish-image-topic /cam/image --publish-info-topic /cam/camera_info
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PlayFrame", "RecordedStream", "load_stream", "serialized_frames", "Player", "main"]


@dataclasses.dataclass
class PlayFrame:
    """One recorded frame: its image and camera_info as rclpy messages, and when it was logged.

    ``raw_image`` / ``raw_info``: the same messages serialized (CDR) when the frame was prepared by
    :func:`serialized_frames`; :class:`Player` then publishes the bytes, restamped with the current time.
    """

    log_ns: int
    stamp_ns: int
    image: Any
    info: Any
    raw_image: bytearray | None = None
    raw_info: bytearray | None = None


# A serialized message (CDR) starts with a 4-byte encapsulation header, then std_msgs/Header's
# stamp: int32 sec, uint32 nanosec (little-endian in the CDR_LE encapsulation rclpy writes).
_STAMP_OFFSET = 4
_CDR_LE = b"\x00\x01"


def _restamp(raw: bytearray, stamp_ns: int) -> bytes:
    """The serialized message ``raw`` with its header stamp set to ``stamp_ns`` (in place, then copied)."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    raw[_STAMP_OFFSET : _STAMP_OFFSET + 8] = sec.to_bytes(4, "little", signed=True) + nanosec.to_bytes(4, "little")
    return bytes(raw)


@dataclasses.dataclass
class RecordedStream:
    """A bag's camera stream in memory.

    Attributes
    ----------
    path : the bag.
    image_topic, info_topic : the recorded topic names.
    compressed : images are ``CompressedImage``.
    frames : in log-time order.
    """

    path: Path
    image_topic: str
    info_topic: str
    compressed: bool
    frames: list[PlayFrame]

    @property
    def duration_s(self) -> float:
        return (self.frames[-1].log_ns - self.frames[0].log_ns) / 1e9 if len(self.frames) > 1 else 0.0


def _to_rclpy(msg: Any, msgtype: str, rclpy_type: Any) -> Any:
    from rclpy.serialization import deserialize_message

    from ..bagio import typestore

    return deserialize_message(bytes(typestore().serialize_cdr(msg, msgtype)), rclpy_type)


def load_stream(
    bag: str | Path,
    image_topic: str | None = None,
    info_topic: str | None = None,
    max_frames: int | None = None,
) -> RecordedStream:
    """Read a bag's images with their camera_info (the latest one logged before each image).

    Raises
    ------
    DualDepthError : unreadable bag, missing/ambiguous topics (the message lists the bag's topics).
    """
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from ..bagio import stamp_to_ns
    from ..data.bags import COMPRESSED_IMAGE, Bag, select_topics
    from ..errors import DualDepthError

    frames: list[PlayFrame] = []
    with Bag(bag) as b:
        sel = select_topics(b, image_topic=image_topic, camera_info_topic=info_topic)
        assert sel.camera_info is not None
        compressed = sel.image_type == COMPRESSED_IMAGE
        img_type = CompressedImage if compressed else Image
        images: list[tuple[int, Any]] = []
        infos: list[tuple[int, int, Any]] = []  # (log time, header stamp, message)
        for topic, log_ns, msg in b.messages([sel.image, sel.camera_info]):
            if topic == sel.camera_info:
                infos.append((log_ns, stamp_to_ns(msg.header.stamp), msg))
            elif max_frames is None or len(images) < max_frames:
                images.append((log_ns, msg))
    # The camera_info of an image: the one with the same header stamp (recorders often log it just
    # after the image), else the latest one logged before the image.
    by_stamp = {stamp: msg for _, stamp, msg in infos}
    info_times = [t for t, _, _ in infos]
    converted: dict[int, Any] = {}
    for log_ns, msg in images:
        stamp = stamp_to_ns(msg.header.stamp)
        info = by_stamp.get(stamp)
        if info is None:
            i = bisect.bisect_right(info_times, log_ns) - 1
            info = infos[i][2] if i >= 0 else None
        if info is None:
            continue  # an image before any camera_info cannot be played meaningfully
        key = id(info)
        if key not in converted:
            converted[key] = _to_rclpy(info, "sensor_msgs/msg/CameraInfo", CameraInfo)
        frames.append(PlayFrame(log_ns, stamp, _to_rclpy(msg, sel.image_type, img_type), converted[key]))
    if not frames:
        raise DualDepthError(f"bag {bag}: no image on {sel.image} has a camera_info on {sel.camera_info} before it")
    return RecordedStream(Path(bag), sel.image, sel.camera_info, compressed, frames)


def serialized_frames(stream: RecordedStream, width: int, height: int, max_frames: int = 10) -> RecordedStream:
    """The first ``max_frames`` frames of ``stream`` resized to ``width × height`` rgb8 and serialized once.

    The camera_info is the recorded camera scaled to the new size (``Intrinsics.resized``; D = 0).
    Memory: ``max_frames × width × height × 3`` bytes twice (message and serialized copy).

    Raises
    ------
    DualDepthError : a size below 1×1.
    """
    import cv2
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from ..errors import DualDepthError
    from ..images import decode_rgb
    from ..intrinsics import Intrinsics
    from .convert import camera_info_message, image_message

    if width < 1 or height < 1:
        raise DualDepthError(f"frame size must be at least 1x1, got {width}x{height}")
    frames = []
    for f in stream.frames[: max(1, max_frames)]:
        rgb = decode_rgb(f.image)
        interp = cv2.INTER_AREA if width <= rgb.shape[1] else cv2.INTER_LINEAR
        header = Header(frame_id=f.image.header.frame_id)
        header.stamp = f.image.header.stamp
        image = image_message(cv2.resize(rgb, (width, height), interpolation=interp), "rgb8", header)
        K = Intrinsics.from_matrix(f.info.k, f.info.width, f.info.height).resized(width, height)
        info = camera_info_message(K, header)
        raw_image, raw_info = bytearray(serialize_message(image)), bytearray(serialize_message(info))
        if raw_image[:2] != _CDR_LE or raw_info[:2] != _CDR_LE:  # only little-endian CDR is restamped here
            raise DualDepthError("rclpy serialized a message big-endian; the player cannot restamp it")
        frames.append(dataclasses.replace(f, image=image, info=info, raw_image=raw_image, raw_info=raw_info))
    return dataclasses.replace(stream, compressed=False, frames=frames)


class Player:
    """Publishes a :class:`RecordedStream` from an rclpy node.

    Parameters
    ----------
    node : the node to publish from.
    stream : what to play.
    image_topic, info_topic : where to publish (default: the recorded names).
    reliability : ``"best_effort"`` (like a camera driver) or ``"reliable"``.
    """

    def __init__(
        self,
        node: Any,
        stream: RecordedStream,
        image_topic: str | None = None,
        info_topic: str | None = None,
        reliability: str = "reliable",
        depth: int = 10,
    ) -> None:
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        from .qos import profile

        self.node = node
        self.stream = stream
        q = profile(reliability, depth)
        img_type = CompressedImage if stream.compressed else Image
        self.image_pub = node.create_publisher(img_type, image_topic or stream.image_topic, q)
        self.info_pub = node.create_publisher(CameraInfo, info_topic or stream.info_topic, q)
        #: ``(stamp_ns, monotonic publish time)`` of every image published.
        self.sent: list[tuple[int, float]] = []

    def publish(self, frame: PlayFrame) -> float:
        """Publish one frame (camera_info, then image); returns the monotonic time of the image.

        A frame from :func:`serialized_frames` goes out as its serialized bytes, stamped with the
        current ROS time (``sent`` records that stamp).
        """
        if frame.raw_image is not None and frame.raw_info is not None:
            stamp = self.node.get_clock().now().nanoseconds
            self.info_pub.publish(_restamp(frame.raw_info, stamp))
            data = _restamp(frame.raw_image, stamp)
            t = time.monotonic()
            self.image_pub.publish(data)
            self.sent.append((stamp, t))
            return t
        self.info_pub.publish(frame.info)
        t = time.monotonic()
        self.image_pub.publish(frame.image)
        self.sent.append((frame.stamp_ns, t))
        return t

    def wait_for_subscribers(self, timeout: float = 30.0, spin: Any = None) -> bool:
        """Wait until the image topic has a subscriber (``spin(seconds)`` services the node meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.image_pub.get_subscription_count() > 0 and self.info_pub.get_subscription_count() > 0:
                return True
            spin(0.05) if spin else time.sleep(0.05)
        return False

    def schedule(
        self, rate_hz: float | None = None, speed: float = 1.0, loop: bool = False
    ) -> Iterator[tuple[float, PlayFrame]]:
        """``(offset in seconds from the start, frame)`` pairs: the bag's timing / ``speed``, or ``rate_hz``."""
        frames = self.stream.frames
        t0 = frames[0].log_ns
        period = self.stream.duration_s + (1.0 / rate_hz if rate_hz else self._mean_period())
        k = 0
        while True:
            for i, f in enumerate(frames):
                if rate_hz:
                    offset = (k * len(frames) + i) / rate_hz
                else:
                    offset = (k * period + (f.log_ns - t0) / 1e9) / speed
                yield offset, f
            k += 1
            if not loop:
                return

    def _mean_period(self) -> float:
        n = len(self.stream.frames)
        return self.stream.duration_s / (n - 1) if n > 1 else 0.1

    def play(
        self,
        rate_hz: float | None = None,
        speed: float = 1.0,
        loop: bool = False,
        spin: Any = None,
        should_stop: Any = None,
    ) -> int:
        """Publish every frame on schedule (see :meth:`schedule`); returns how many were published.

        ``spin(seconds)`` is called while waiting (to service the node's callbacks), else it sleeps.
        ``should_stop()`` ends the playback early when it returns True.
        """
        start = time.monotonic()
        n = 0
        for offset, frame in self.schedule(rate_hz, speed, loop):
            while True:
                wait = start + offset - time.monotonic()
                if wait <= 0:
                    break
                spin(min(wait, 0.05)) if spin else time.sleep(min(wait, 0.05))
            if should_stop is not None and should_stop():
                break
            self.publish(frame)
            n += 1
        return n


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dualdepth_ros.ros.player``: play a bag's camera stream (module docstring)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from ..errors import DualDepthError

    parser = argparse.ArgumentParser(prog="python -m dualdepth_ros.ros.player", description=__doc__.split("\n")[0])
    parser.add_argument("--bag", required=True, help="bag with a camera image topic and its camera_info")
    parser.add_argument("--image-topic", help="recorded image topic (default: auto-detected)")
    parser.add_argument("--info-topic", help="recorded camera_info topic (default: beside the image topic)")
    parser.add_argument("--publish-image-topic", help="publish the images here (default: the recorded name)")
    parser.add_argument("--publish-info-topic", help="publish the camera_info here (default: the recorded name)")
    parser.add_argument("--rate", type=float, help="frames per second (default: the bag's own timing)")
    parser.add_argument("--speed", type=float, default=1.0, help="playback speed factor with the bag's timing")
    parser.add_argument("--loop", action="store_true", help="start again at the end, until stopped")
    parser.add_argument("--max-frames", type=int, help="play only the first N frames of the bag")
    parser.add_argument("--reliability", default="reliable", choices=("reliable", "best_effort"))
    parser.add_argument("--depth", type=int, default=10, help="publisher queue depth (a camera driver: 5)")
    parser.add_argument(
        "--size",
        help="WxH: publish the first frames (--max-frames, default 10) resized to this size as rgb8, serialized "
        "once and restamped with the publication time (large frames at a camera's rate)",
    )
    parser.add_argument("--duration", type=float, help="stop after this many seconds (loops the frames until then)")
    parser.add_argument("--count", type=int, help="stop after this many frames (loops the frames until then)")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for a subscriber (0: do not wait)")
    args, ros_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        size = None
        if args.size:
            try:
                size = tuple(int(v) for v in args.size.lower().split("x"))
                assert len(size) == 2
            except (ValueError, AssertionError):
                raise DualDepthError(f"--size must be WxH (e.g. 1920x1080), got {args.size!r}") from None
        stream = load_stream(args.bag, args.image_topic, args.info_topic, args.max_frames or (10 if size else None))
    except DualDepthError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rclpy.init(args=["player", *ros_args])
    node = rclpy.create_node("dualdepth_player")
    if size is not None:
        try:
            stream = serialized_frames(stream, size[0], size[1], len(stream.frames))
        except DualDepthError as err:
            print(f"error: {err}", file=sys.stderr)
            node.destroy_node()
            rclpy.try_shutdown()
            return 2
    player = Player(node, stream, args.publish_image_topic, args.publish_info_topic, args.reliability, args.depth)

    def spin(seconds: float) -> None:
        rclpy.spin_once(node, timeout_sec=seconds)

    node.get_logger().info(
        f"playing {len(stream.frames)} frames of {stream.image_topic} from {args.bag} on "
        f"{player.image_pub.topic_name}" + (" (looping)" if args.loop else "")
    )
    try:
        if args.wait > 0 and not player.wait_for_subscribers(args.wait, spin):
            node.get_logger().warning(f"no subscriber on {player.image_pub.topic_name} after {args.wait:g} s")
        start = time.monotonic()

        def should_stop() -> bool:
            if args.count is not None and len(player.sent) >= args.count:
                return True
            return args.duration is not None and time.monotonic() - start >= args.duration

        loop = args.loop or args.duration is not None or args.count is not None
        n = player.play(args.rate, args.speed, loop, spin=spin, should_stop=should_stop)
        seconds = time.monotonic() - start
        node.get_logger().info(f"played {n} frames in {seconds:.2f} s ({n / max(seconds, 1e-9):.2f} Hz)")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
