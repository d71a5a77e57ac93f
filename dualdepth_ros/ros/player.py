"""Play a bag's camera stream (image + camera_info) through rclpy, like ``ros2 bag play`` would.

``ros2 bag`` is not installable in the development venv, so the demo, the launch test and the
node benchmark publish recorded frames with this module: frames are read with ``rosbags``
(:mod:`dualdepth_ros.data.bags` picks the topics as training does), converted to rclpy messages
through their CDR bytes (so headers, encodings and data are exactly as recorded), and published
at the bag's own timing (``speed`` × real time) or at a fixed rate, each image right after its
camera_info.

Command line (for a second process, e.g. in a launch file)::

    python -m dualdepth_ros.ros.player --bag test/data/sample_drive [--rate 10] [--loop]
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

__all__ = ["PlayFrame", "RecordedStream", "load_stream", "Player", "main"]


@dataclasses.dataclass
class PlayFrame:
    """One recorded frame: its image and camera_info as rclpy messages, and when it was logged."""

    log_ns: int
    stamp_ns: int
    image: Any
    info: Any


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
        """Publish one frame (camera_info, then image); returns the monotonic time of the image."""
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
    args, ros_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        stream = load_stream(args.bag, args.image_topic, args.info_topic, args.max_frames)
    except DualDepthError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rclpy.init(args=["player", *ros_args])
    node = rclpy.create_node("dualdepth_player")
    player = Player(node, stream, args.publish_image_topic, args.publish_info_topic, args.reliability)

    def spin(seconds: float) -> None:
        rclpy.spin_once(node, timeout_sec=seconds)

    node.get_logger().info(
        f"playing {len(stream.frames)} frames of {stream.image_topic} from {args.bag} on "
        f"{player.image_pub.topic_name}" + (" (looping)" if args.loop else "")
    )
    try:
        n = player.play(args.rate, args.speed, args.loop, spin=spin)
        node.get_logger().info(f"played {n} frames")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
