"""Opening bags for training and evaluation: errors that name the file, topic selection.

Any bag ``rosbags.highlevel.AnyReader`` reads works: rosbag2 directories (sqlite3 or mcap),
bare ``.mcap``/``.db3`` files, and ROS 1 ``.bag`` files. Every failure of the reader —
missing file, truncated or corrupt storage, undecodable message — becomes a
:class:`BagError` (a :class:`~dualdepth_ros.errors.DualDepthError`) that names the file.

Topic auto-detection (:func:`select_topics`), when no image topic is given:

1. candidates are the ``Image``/``CompressedImage`` topics whose first message is a camera
   image (colour, grey or bayer; depth maps such as ``32FC1`` and ``…/compressedDepth`` are
   not), minus topics given for other roles;
2. ``X`` and ``X/compressed`` count as one camera, and the raw ``X`` is used (lossless);
3. one candidate left: that is the image topic; several: keep those with a sibling
   ``camera_info`` (image_transport's ``<ns>/image_raw`` ↔ ``<ns>/camera_info``), then those
   named like a camera stream (last name starting with ``image``: ``image_raw``,
   ``image_color``, ``image_rect``…); if still more than one, the choice is ambiguous and the
   error lists the topics.

The camera_info topic, when not given, is the image topic's sibling, else the only
``CameraInfo`` topic in the bag.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rosbags.highlevel import AnyReader

from ..bagio import stamp_to_ns, typestore
from ..errors import DualDepthError
from ..images import COLOUR_ENCODINGS

__all__ = [
    "IMAGE",
    "COMPRESSED_IMAGE",
    "CAMERA_INFO",
    "POSE_TYPES",
    "BagError",
    "TopicSelection",
    "Bag",
    "expand_bag_paths",
    "bag_fingerprint",
    "header_stamp_ns",
    "select_topics",
]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
#: Message types accepted for a ground-truth pose topic (all carry ``pose`` [``.pose``]).
POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "nav_msgs/msg/Odometry",
)


class BagError(DualDepthError):
    """A bag that cannot be read or used: missing, corrupt, truncated, wrong topics."""


def header_stamp_ns(msg: Any, fallback: int) -> int:
    """The message's header stamp in ns, or ``fallback`` (e.g. the log time) when it is 0."""
    hdr = getattr(msg, "header", None)
    if hdr is None:
        return int(fallback)
    ns = stamp_to_ns(hdr.stamp)
    return ns if ns > 0 else int(fallback)


def expand_bag_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Bag paths from user input: each a bag, or a folder whose sub-folders/files are bags.

    A rosbag2 bag is a directory with ``metadata.yaml`` (or a bare ``.mcap``/``.db3`` file); a
    ROS 1 bag is a ``.bag`` file. A folder that is not itself a bag contributes the bags
    directly inside it, sorted by name.

    Raises
    ------
    BagError : a path does not exist, or a folder holds no bag.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise BagError(f"bag {p} does not exist")
        if p.is_file() or (p / "metadata.yaml").exists():
            out.append(p)
            continue
        inner = sorted(
            c
            for c in p.iterdir()
            if (c.is_dir() and (c / "metadata.yaml").exists())
            or (c.is_file() and c.suffix in (".bag", ".mcap", ".db3"))
        )
        if not inner:
            raise BagError(f"{p} is neither a bag (no metadata.yaml) nor a folder of bags")
        out.extend(inner)
    if not out:
        raise BagError("no bags given")
    return out


def bag_fingerprint(path: str | os.PathLike) -> list[tuple[str, int, int]]:
    """``(name, size, mtime_ns)`` of every file of a bag; changes whenever the bag does."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    out = []
    for f in files:
        st = f.stat()
        out.append((f.name if f == p else str(f.relative_to(p)), int(st.st_size), int(st.st_mtime_ns)))
    return out


@dataclasses.dataclass(frozen=True)
class TopicSelection:
    """The topics used from one bag (``None``: not used / not present)."""

    image: str
    image_type: str
    camera_info: str | None = None
    gt_depth: str | None = None
    gt_pose: str | None = None
    gt_moving_mask: str | None = None


class Bag:
    """An open bag whose every reader error becomes a :class:`BagError` naming the file.

    Use as a context manager::

        with Bag(path) as bag:
            for topic, log_ns, msg in bag.messages(["/camera/image_raw"]):
                ...
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._reader: AnyReader | None = None

    def _fail(self, err: BaseException, what: str = "read") -> BagError:
        detail = str(err) or type(err).__name__
        return BagError(
            f"cannot {what} bag {self.path}: {detail} (is it truncated or corrupt? a recording that was killed "
            "can often be repaired with `ros2 bag reindex` or `mcap recover`)"
        )

    def __enter__(self) -> Bag:
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        try:
            reader = AnyReader([self.path], default_typestore=typestore())
            reader.open()
        except Exception as err:  # rosbags raises many unrelated types for a bad file
            raise self._fail(err, "open") from err
        self._reader = reader
        return self

    def __exit__(self, *exc: object) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - closing a broken reader must not mask the real error
                pass

    @property
    def reader(self) -> AnyReader:
        if self._reader is None:
            raise BagError(f"bag {self.path} is not open")
        return self._reader

    def topics(self) -> dict[str, tuple[str, int]]:
        """Topic → ``(message type, message count)``."""
        try:
            return {name: (info.msgtype or "?", int(info.msgcount)) for name, info in self.reader.topics.items()}
        except Exception as err:
            raise self._fail(err) from err

    def describe_topics(self) -> str:
        """The bag's topics, one a line: name, type, count."""
        topics = self.topics()
        if not topics:
            return "  (the bag has no topics)"
        width = max(len(t) for t in topics)
        return "\n".join(f"  {t:<{width}}  {ty}  ({n} messages)" for t, (ty, n) in sorted(topics.items()))

    def messages(self, topics: Sequence[str]) -> Iterator[tuple[str, int, Any]]:
        """``(topic, log time ns, deserialised message)`` of ``topics`` in log-time order."""
        reader = self.reader
        wanted = set(topics)
        conns = [c for c in reader.connections if c.topic in wanted]
        if not conns:
            return
        it = reader.messages(connections=conns)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as err:
                raise self._fail(err) from err
            conn, log_ns, raw = item
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception as err:
                raise self._fail(err, f"deserialise a {conn.msgtype} message on {conn.topic} in") from err
            yield conn.topic, int(log_ns), msg

    def first_message(self, topic: str) -> Any | None:
        """The first message of ``topic`` (None if it has none)."""
        gen = self.messages([topic])
        try:
            for _, _, msg in gen:
                return msg
        finally:
            gen.close()
        return None


def _strip_transport(topic: str) -> str:
    return topic[: -len("/compressed")] if topic.endswith("/compressed") else topic


def _base_name(topic: str) -> str:
    return _strip_transport(topic).rsplit("/", 1)[-1]


def _sibling_info(image_topic: str) -> str:
    ns = _strip_transport(image_topic).rsplit("/", 1)[0]
    return f"{ns}/camera_info"


def select_topics(
    bag: Bag,
    *,
    image_topic: str | None = None,
    camera_info_topic: str | None = None,
    gt_depth_topic: str | None = None,
    gt_pose_topic: str | None = None,
    gt_moving_mask_topic: str | None = None,
    need_camera_info: bool = True,
) -> TopicSelection:
    """Resolve the topics to use from an open bag (auto-detection: module docstring).

    Parameters
    ----------
    need_camera_info : False when explicit intrinsics replace the CameraInfo; the camera_info
        topic is then neither detected nor required.

    Raises
    ------
    BagError : a requested topic is missing or of the wrong type, auto-detection found no
        or several candidates, or no camera_info while one is needed; the message lists the
        bag's topics with their types.
    """
    topics = bag.topics()

    def fail(problem: str) -> BagError:
        return BagError(f"bag {bag.path}: {problem}. Topics in the bag:\n{bag.describe_topics()}")

    def check(name: str | None, role: str, types: Sequence[str]) -> str | None:
        if name is None:
            return None
        if name not in topics:
            raise fail(f"no topic {name!r} (requested {role} topic)")
        if topics[name][0] not in types:
            raise fail(f"topic {name!r} ({role}) is {topics[name][0]}, expected {' or '.join(types)}")
        return name

    gt_depth = check(gt_depth_topic, "ground-truth depth", (IMAGE,))
    gt_pose = check(gt_pose_topic, "ground-truth pose", POSE_TYPES)
    gt_mask = check(gt_moving_mask_topic, "moving-object mask", (IMAGE,))
    if image_topic is not None:
        image = check(image_topic, "image", IMAGE_TYPES)
    else:
        taken = {gt_depth, gt_mask, camera_info_topic}
        cands = []
        for name, (ty, count) in sorted(topics.items()):
            if ty not in IMAGE_TYPES or count == 0 or name in taken or name.endswith("/compressedDepth"):
                continue
            if ty == IMAGE:
                first = bag.first_message(name)
                if first is None or first.encoding not in COLOUR_ENCODINGS:
                    continue
            cands.append(name)
        cands = [c for c in cands if not (c.endswith("/compressed") and c[: -len("/compressed")] in cands)]
        if not cands:
            raise fail("no camera image topic (sensor_msgs/Image in a colour/grey/bayer encoding or CompressedImage)")
        # Narrow down: a camera_info beside it, then an image_transport-style name (image_raw, image_color…).
        for keep in (lambda c: _sibling_info(c) in topics, lambda c: _base_name(c).startswith("image")):
            narrowed = [c for c in cands if keep(c)]
            if len(cands) > 1 and narrowed:
                cands = narrowed
        if len(cands) > 1:
            raise fail(f"several camera image topics ({', '.join(cands)}); choose one with the image topic option")
        image = cands[0]
    assert image is not None
    info = None
    if camera_info_topic is not None:
        info = check(camera_info_topic, "camera_info", (CAMERA_INFO,))
    elif need_camera_info:
        sibling = _sibling_info(image)
        infos = sorted(t for t, (ty, _) in topics.items() if ty == CAMERA_INFO)
        if sibling in topics and topics[sibling][0] == CAMERA_INFO:
            info = sibling
        elif len(infos) == 1:
            info = infos[0]
        elif not infos:
            raise fail(
                f"no sensor_msgs/CameraInfo topic for {image}; record the camera_info or give explicit intrinsics "
                "fx,fy,cx,cy"
            )
        else:
            raise fail(f"several camera_info topics ({', '.join(infos)}); choose one with the camera_info topic option")
    if info is not None and topics[info][1] == 0:
        raise fail(f"camera_info topic {info!r} has no messages; give explicit intrinsics fx,fy,cx,cy instead")
    return TopicSelection(image, topics[image][0], info, gt_depth, gt_pose, gt_mask)
