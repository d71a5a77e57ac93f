"""Opening bags for training and evaluation: errors that name the file, topic selection.

Any bag ``rosbags.highlevel.AnyReader`` reads works: rosbag2 directories (sqlite3 or mcap),
bare ``.mcap``/``.db3`` files, and ROS 1 ``.bag`` files. Every failure of the reader —
missing file, truncated or corrupt storage, undecodable message — becomes a
:class:`BagError` (a :class:`~dualdepth_ros.errors.DualDepthError`) that names the file.

Topic auto-detection (:func:`select_topics`), when no image topic is given:

1. candidates are the ``Image``/``CompressedImage`` topics that are not ground truth or derived
   data (:func:`ground_truth_reason`: a ``gt``/``ground_truth`` namespace, a name holding
   ``mask``, the default ground-truth names of :data:`DEFAULT_GT_TOPICS`, a depth encoding of
   :data:`DEPTH_ENCODINGS` — the rule :func:`resolve_gt_topics` finds ground truth by — and
   ``…/compressedDepth``), minus topics given for other roles;
2. ``X`` and ``X/compressed`` count as one camera, and the raw ``X`` is used (lossless);
3. one candidate left: that is the image topic; several: keep those with a sibling
   ``camera_info`` (image_transport's ``<ns>/image_raw`` ↔ ``<ns>/camera_info``), then those
   named like a camera stream (last name starting with ``image``: ``image_raw``,
   ``image_color``, ``image_rect``…); if still more than one, the choice is ambiguous and the
   error lists the topics.

The topic chosen (auto-detected or given) must be decodable: an ``Image`` whose first message
is in an encoding outside :data:`~dualdepth_ros.images.COLOUR_ENCODINGS` (``yuv422``, common on
USB cameras) is refused, never replaced by another image topic. Every refusal is one line that
lists the bag's image topics with their type, encoding and why each is not used.

The camera_info topic, when not given, is the image topic's sibling, else the only
``CameraInfo`` topic in the bag that is not ground truth (``/gt/camera_info`` describes the
ground truth's grid, not the camera's lens); none is an error that suggests ``--info-topic`` or
explicit intrinsics.

The result (:class:`TopicSelection`: ``image``, ``image_type``, ``camera_info``, ground truth) is
kept by every consumer: :attr:`FrameStore.topics <dualdepth_ros.data.frames.FrameStore.topics>`
for training and evaluation, the summary of ``dualdepth infer``.

Ground truth (:func:`resolve_gt_topics`, used by ``dualdepth eval`` and the ablation study):

* **depth**: the topic given, else the config's, else ``/gt/depth``, else the one ``Image``
  topic in a depth encoding (``32FC1``, ``16UC1``, ``64FC1``); several: an error listing them.
  Its grid is the rectified camera image's (same size; a ``camera_info`` beside the depth
  topic, such as ``/gt/camera_info``, must describe that grid).
* **pose** of the camera: a *pose source* is a topic, or ``TOPIC:CHILD_FRAME`` for a ``/tf``
  stream (the transforms whose ``child_frame_id`` is ``CHILD_FRAME``). Accepted message types
  are ``PoseStamped``, ``PoseWithCovarianceStamped``, ``Odometry``, ``TransformStamped`` and
  ``tf2_msgs/TFMessage`` (:data:`POSE_TYPES`); every one gives ``T_child_to_parent``, the pose
  of the child frame in the message's frame. Auto-detection: the given source, else the
  config's, else ``/gt/pose``, else the candidates that describe the *camera*: pose topics
  (``PoseStamped``, ``PoseWithCovarianceStamped``: they name no child frame), and odometry,
  transforms and TF whose child frame is the image's ``header.frame_id``. One candidate is
  used; several are an error listing them; none means no pose (ATE skipped), and the reason
  names topics that describe another frame (an odometry of ``base_link`` is not the camera's
  pose: its axes differ from the optical frame's, and the ATE would compare different
  trajectories).
* **moving mask**: the topic given, else the config's, else ``/gt/moving_mask`` if present.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader

from ..bagio import pose_to_matrix, quaternion_to_rotation, stamp_to_ns, typestore
from ..errors import DualDepthError
from ..images import COLOUR_ENCODINGS

__all__ = [
    "IMAGE",
    "COMPRESSED_IMAGE",
    "CAMERA_INFO",
    "POSE_TYPES",
    "DEFAULT_GT_TOPICS",
    "DEPTH_ENCODINGS",
    "BagError",
    "TopicSelection",
    "PoseSource",
    "Bag",
    "expand_bag_paths",
    "bag_fingerprint",
    "header_stamp_ns",
    "pose_samples",
    "select_topics",
    "ground_truth_reason",
    "GtTopics",
    "find_pose_sources",
    "resolve_gt_topics",
]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
POSE_WITH_COVARIANCE = "geometry_msgs/msg/PoseWithCovarianceStamped"
ODOMETRY = "nav_msgs/msg/Odometry"
TRANSFORM_STAMPED = "geometry_msgs/msg/TransformStamped"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
#: Message types accepted for a ground-truth pose (module docstring); TF needs a child frame.
POSE_TYPES = (POSE_STAMPED, POSE_WITH_COVARIANCE, ODOMETRY, TRANSFORM_STAMPED, TF_MESSAGE)
#: Topic names used when present and no other is given (``dualdepth make-sample`` records them).
DEFAULT_GT_TOPICS = {"gt_depth": "/gt/depth", "gt_pose": "/gt/pose", "gt_moving_mask": "/gt/moving_mask"}
#: Image encodings of a depth map (auto-detection of the GT depth topic).
DEPTH_ENCODINGS = ("32FC1", "16UC1", "64FC1")
#: TF messages read to find the child frames of a ``/tf`` topic.
TF_SCAN_MESSAGES = 500


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
    from .gpu_cache import is_cached_drive  # a drive decoded by `dualdepth gpu-cache` counts as a bag

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise BagError(f"bag {p} does not exist")
        if p.is_file() or (p / "metadata.yaml").exists() or is_cached_drive(p):
            out.append(p)
            continue
        inner = sorted(
            c
            for c in p.iterdir()
            if (c.is_dir() and ((c / "metadata.yaml").exists() or is_cached_drive(c)))
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


@dataclasses.dataclass(frozen=True)
class PoseSource:
    """Where camera poses come from: a topic, and for a TF stream the child frame to follow.

    Written ``TOPIC`` or ``TOPIC:CHILD_FRAME`` (:meth:`parse`, :meth:`__str__`); ROS topic
    names cannot contain ``:``.
    """

    topic: str
    child_frame: str | None = None

    @classmethod
    def parse(cls, spec: str) -> PoseSource:
        topic, sep, child = str(spec).partition(":")
        return cls(topic, child if sep and child else None)

    def __str__(self) -> str:
        return f"{self.topic}:{self.child_frame}" if self.child_frame else self.topic


def _transform_matrix(tf: Any) -> np.ndarray:
    """4×4 of a ``geometry_msgs/Transform`` (translation, rotation quaternion)."""
    r, t = tf.rotation, tf.translation
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation([r.x, r.y, r.z, r.w])
    T[:3, 3] = [t.x, t.y, t.z]
    return T


def pose_samples(msg: Any, msgtype: str, child_frame: str | None, log_ns: int) -> list[tuple[int, np.ndarray]]:
    """``(stamp ns, 4×4 T_child_to_parent)`` of every pose in one message of a :data:`POSE_TYPES` type.

    A TF message gives one sample per transform whose ``child_frame_id`` is ``child_frame``
    (none when it holds no such transform); the other types give one sample each. Stamps are
    header stamps (the log time when a header stamp is 0).
    """
    if msgtype == TF_MESSAGE:
        return [
            (header_stamp_ns(t, log_ns), _transform_matrix(t.transform))
            for t in msg.transforms
            if child_frame is not None and _frame(t.child_frame_id) == _frame(child_frame)
        ]
    if msgtype == TRANSFORM_STAMPED:
        return [(header_stamp_ns(msg, log_ns), _transform_matrix(msg.transform))]
    pose = msg.pose.pose if msgtype in (POSE_WITH_COVARIANCE, ODOMETRY) else msg.pose
    return [(header_stamp_ns(msg, log_ns), pose_to_matrix(pose))]


def _frame(name: str) -> str:
    """A tf2 frame id without a leading slash (ROS 1 style ``/camera`` equals ``camera``)."""
    return str(name).lstrip("/")


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


#: Namespaces whose topics are ground truth, never the camera stream (``/gt/depth``, ``/ground_truth/...``).
GT_NAMESPACES = ("gt", "ground_truth", "groundtruth")


def _first_encoding(bag: Bag, topic: str, msgtype: str) -> str:
    """The first message's ``encoding`` (``Image``) or ``format`` (``CompressedImage``); ``""`` if none."""
    first = bag.first_message(topic)
    if first is None:
        return ""
    return str(getattr(first, "encoding" if msgtype == IMAGE else "format", "") or "")


def ground_truth_reason(topic: str, encoding: str = "") -> str | None:
    """Why an image (or camera_info) topic is ground truth or derived data rather than a camera, or None.

    Ground truth: a name in a ``gt``/``ground_truth`` namespace (:data:`GT_NAMESPACES`), one of
    :data:`DEFAULT_GT_TOPICS`, a name part holding ``mask``; depth: an encoding of
    :data:`DEPTH_ENCODINGS` (how :func:`resolve_gt_topics` finds a ground-truth depth) or
    ``…/compressedDepth``.
    """
    parts = [t.lower() for t in _strip_transport(topic).strip("/").split("/")]
    if topic in DEFAULT_GT_TOPICS.values() or any(t in GT_NAMESPACES for t in parts):
        return "ground truth"
    if any("mask" in t for t in parts):
        return "a mask"
    if encoding in DEPTH_ENCODINGS or topic.endswith("/compressedDepth"):
        return "a depth map"
    return None


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

    Returns
    -------
    The resolved topics: ``.image`` and ``.camera_info`` are what was used, given or detected.

    Raises
    ------
    BagError : a requested topic is missing or of the wrong type, auto-detection found no
        or several candidates, the image topic is in an encoding that cannot be decoded, or no
        camera_info while one is needed; the message lists the bag's topics with their types
        (image topics with their encodings).
    """
    topics = bag.topics()

    def fail(problem: str) -> BagError:
        return BagError(f"bag {bag.path}: {problem}. Topics in the bag:\n{bag.describe_topics()}")

    encodings: dict[str, str] = {}

    def encoding(name: str) -> str:
        if name not in encodings:
            encodings[name] = _first_encoding(bag, name, topics[name][0])
        return encodings[name]

    def image_topics(notes: dict[str, str]) -> str:
        """Every image topic with its type, encoding and why it is not used (one line)."""
        parts = []
        for name, (ty, count) in sorted(topics.items()):
            if ty not in IMAGE_TYPES:
                continue
            what = ", ".join(x for x in (ty.rsplit("/", 1)[-1], encoding(name) if count else "no messages") if x)
            parts.append(f"{name} ({what}{': ' + notes[name] if name in notes else ''})")
        return "; ".join(parts) or "none"

    def unsupported(name: str) -> bool:
        return topics[name][0] == IMAGE and encoding(name) not in COLOUR_ENCODINGS

    def check(name: str | None, role: str, types: Sequence[str]) -> str | None:
        if name is None:
            return None
        if name not in topics:
            raise fail(f"no topic {name!r} (requested {role} topic)")
        if topics[name][0] not in types:
            raise fail(f"topic {name!r} ({role}) is {topics[name][0]}, expected {' or '.join(types)}")
        return name

    gt_depth = check(gt_depth_topic, "ground-truth depth", (IMAGE,))
    gt_pose = None
    if gt_pose_topic is not None:
        source = PoseSource.parse(gt_pose_topic)
        check(source.topic, "ground-truth pose", POSE_TYPES)
        if topics[source.topic][0] == TF_MESSAGE and not source.child_frame:
            raise fail(
                f"{source.topic} is a TF stream; name the camera's frame as {source.topic}:CHILD_FRAME "
                "(the transforms whose child_frame_id is the camera's optical frame)"
            )
        gt_pose = str(source)
    gt_mask = check(gt_moving_mask_topic, "moving-object mask", (IMAGE,))
    supported = "rgb8/bgr8/mono8/mono16/rgb16/bayer_*, or a CompressedImage"
    notes: dict[str, str] = {}
    if image_topic is not None:
        image = check(image_topic, "image", IMAGE_TYPES)
    else:
        taken = {gt_depth: "given as ground truth", gt_mask: "given as the mask", camera_info_topic: ""}
        cands = []
        for name, (ty, count) in sorted(topics.items()):
            if ty not in IMAGE_TYPES:
                continue
            why = (
                "no messages"
                if count == 0
                else taken.get(name) or ground_truth_reason(name, encoding(name) if ty == IMAGE else "")
            )
            if why:
                notes[name] = why
                continue
            cands.append(name)
        twins = [c for c in cands if c.endswith("/compressed") and c[: -len("/compressed")] in cands]
        notes.update({c: "the raw topic beside it is used" for c in twins})
        cands = [c for c in cands if c not in twins]
        if not cands:
            raise BagError(
                f"bag {bag.path}: no camera image topic (a sensor_msgs/Image in {supported}) that is not ground "
                f"truth; image topics: {image_topics(notes)}. Name the camera with --image-topic"
            )
        # Narrow down: a camera_info beside it, then an image_transport-style name (image_raw, image_color…).
        for keep in (lambda c: _sibling_info(c) in topics, lambda c: _base_name(c).startswith("image")):
            narrowed = [c for c in cands if keep(c)]
            if len(cands) > 1 and narrowed:
                cands = narrowed
        if len(cands) > 1:
            raise fail(f"several camera image topics ({', '.join(cands)}); choose one with the image topic option")
        image = cands[0]
    assert image is not None
    if topics[image][1] == 0:
        raise fail(f"image topic {image!r} has no messages")
    if unsupported(image):
        notes[image] = "unsupported encoding"
        raise BagError(
            f"bag {bag.path}: image topic {image} is in encoding {encoding(image)!r}, which cannot be decoded "
            f"(supported: {supported}); image topics: {image_topics(notes)}. Convert the stream (e.g. with "
            "image_proc) or name another camera with --image-topic"
        )
    info = None
    if camera_info_topic is not None:
        info = check(camera_info_topic, "camera_info", (CAMERA_INFO,))
    elif need_camera_info:
        sibling = _sibling_info(image)
        every = sorted(t for t, (ty, _) in topics.items() if ty == CAMERA_INFO)
        infos = [t for t in every if ground_truth_reason(t) is None]  # /gt/camera_info is not the camera's lens
        if sibling in topics and topics[sibling][0] == CAMERA_INFO:
            info = sibling
        elif len(infos) == 1:
            info = infos[0]
        elif not infos:
            others = [t for t in every if t not in infos]
            raise BagError(
                f"bag {bag.path}: no sensor_msgs/CameraInfo topic for {image} (looked for {sibling}"
                + (
                    f"; {', '.join(others)} describe{'s' if len(others) == 1 else ''} ground truth, not the camera"
                    if others
                    else ""
                )
                + "); name one with --info-topic, or give the camera's intrinsics fx,fy,cx,cy "
                "(--intrinsics in train and eval)"
            )
        else:
            raise fail(f"several camera_info topics ({', '.join(infos)}); choose one with the camera_info topic option")
    if info is not None and topics[info][1] == 0:
        raise fail(f"camera_info topic {info!r} has no messages; give explicit intrinsics fx,fy,cx,cy instead")
    return TopicSelection(image, topics[image][0], info, gt_depth, gt_pose, gt_mask)


# ---------------------------------------------------------------------------------------
# Ground-truth topics
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GtTopics:
    """The ground truth found in one bag (:func:`resolve_gt_topics`).

    Attributes
    ----------
    gt_depth, gt_pose, gt_moving_mask : topic (pose: :class:`PoseSource` spec) or None.
    notes : role → why it is absent or how it was found (``"auto-detected PoseStamped"``…).
    """

    gt_depth: str | None
    gt_pose: str | None
    gt_moving_mask: str | None
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    def __getitem__(self, role: str) -> str | None:
        return getattr(self, role)


def find_pose_sources(bag: Bag, camera_frame: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Pose sources of an open bag that describe the camera whose images have ``camera_frame``.

    Returns
    -------
    candidates : ``(spec, message type)`` of every source that fits (module docstring).
    others : one line per pose source of another frame (``"/odom: Odometry of base_link"``).
    """
    candidates: list[tuple[str, str]] = []
    others: list[str] = []
    for name, (ty, count) in sorted(bag.topics().items()):
        if ty not in POSE_TYPES or count == 0 or name.endswith("/tf_static"):
            continue
        short = ty.rsplit("/", 1)[-1]
        if ty in (POSE_STAMPED, POSE_WITH_COVARIANCE):
            candidates.append((name, short))
        elif ty in (ODOMETRY, TRANSFORM_STAMPED):
            child = _frame(getattr(bag.first_message(name), "child_frame_id", ""))
            if child == _frame(camera_frame):
                candidates.append((name, short))
            else:
                others.append(f"{name}: {short} of {child or '(no child frame)'}")
        else:
            children: set[str] = set()
            gen = bag.messages([name])
            try:
                for k, (_, _, msg) in enumerate(gen):
                    children.update(_frame(t.child_frame_id) for t in msg.transforms)
                    if k + 1 >= TF_SCAN_MESSAGES:
                        break
            finally:
                gen.close()
            if _frame(camera_frame) in children:
                candidates.append((str(PoseSource(name, _frame(camera_frame))), f"{short} child"))
            elif children:
                others.append(f"{name}: TF of {', '.join(sorted(children))}")
    return candidates, others


def resolve_gt_topics(
    bag_path: str | os.PathLike,
    *,
    gt_depth_topic: str | None = None,
    gt_pose_topic: str | None = None,
    gt_moving_mask_topic: str | None = None,
    image_topic: str | None = None,
    preferred: dict[str, str | None] | None = None,
    require_depth: bool = False,
) -> GtTopics:
    """The ground-truth topics to use from one bag (rules in the module docstring).

    A given topic is taken as is (:func:`select_topics` checks it later and lists the bag's
    topics when it is missing). ``preferred`` (e.g. the training config's topics) is used
    when the bag has it. ``image_topic`` helps find the camera's frame (auto-detected
    otherwise).

    Raises
    ------
    BagError : several depth topics or several pose sources fit (the message lists them), or
        ``require_depth`` and no depth topic is found; the message lists the bag's topics.
    """
    preferred = dict(preferred or {})
    given = {"gt_depth": gt_depth_topic, "gt_pose": gt_pose_topic, "gt_moving_mask": gt_moving_mask_topic}
    from .gpu_cache import cached_gt_topics, is_cached_drive

    if is_cached_drive(bag_path):  # a drive decoded by `dualdepth gpu-cache`: the ground truth it holds
        return cached_gt_topics(bag_path, given, require_depth=require_depth)
    out: dict[str, str | None] = {}
    notes: dict[str, str] = {}
    with Bag(bag_path) as bag:
        topics = bag.topics()

        def fail(problem: str) -> BagError:
            return BagError(f"bag {bag.path}: {problem}. Topics in the bag:\n{bag.describe_topics()}")

        def present(spec: str | None, types: Sequence[str]) -> bool:
            if not spec:
                return False
            topic = PoseSource.parse(spec).topic
            return topic in topics and topics[topic][0] in types and topics[topic][1] > 0

        types = {"gt_depth": (IMAGE,), "gt_pose": POSE_TYPES, "gt_moving_mask": (IMAGE,)}

        def usable(role: str, spec: str | None) -> bool:
            if not present(spec, types[role]):
                return False
            source = PoseSource.parse(str(spec))  # a TF stream is a pose only with a child frame
            return role != "gt_pose" or topics[source.topic][0] != TF_MESSAGE or source.child_frame is not None

        for role in ("gt_depth", "gt_pose", "gt_moving_mask"):
            out[role] = None
            if given[role]:
                out[role] = given[role]
                notes[role] = "given"
                continue
            for cand, how in ((preferred.get(role), "from the config"), (DEFAULT_GT_TOPICS[role], "default name")):
                if usable(role, cand):
                    out[role] = cand
                    notes[role] = how
                    break
        if out["gt_depth"] is None:
            cands = []
            for name, (ty, count) in sorted(topics.items()):
                if ty == IMAGE and count > 0 and name != out["gt_moving_mask"]:
                    first = bag.first_message(name)
                    if first is not None and getattr(first, "encoding", "") in DEPTH_ENCODINGS:
                        cands.append(name)
            if len(cands) == 1:
                out["gt_depth"] = cands[0]
                notes["gt_depth"] = "auto-detected (the only depth image topic)"
            elif cands:
                raise fail(f"several depth image topics ({', '.join(cands)}); choose one with --gt-depth-topic")
            else:
                notes["gt_depth"] = (
                    f"the bag has no ground-truth depth ({DEFAULT_GT_TOPICS['gt_depth']} or a sensor_msgs/Image "
                    f"in {'/'.join(DEPTH_ENCODINGS)}); name one with --gt-depth-topic"
                )
                if require_depth:
                    raise fail(f"no ground-truth depth topic: {notes['gt_depth']}")
        if out["gt_pose"] is None:
            sel = select_topics(bag, image_topic=image_topic, need_camera_info=False)
            first = bag.first_message(sel.image)
            camera_frame = str(getattr(getattr(first, "header", None), "frame_id", "") or "")
            cands, others = find_pose_sources(bag, camera_frame)
            if len(cands) == 1:
                out["gt_pose"] = cands[0][0]
                notes["gt_pose"] = f"auto-detected {cands[0][1]}"
            elif cands:
                listed = ", ".join(f"{spec} ({ty})" for spec, ty in cands)
                raise fail(f"several ground-truth pose sources fit ({listed}); choose one with --gt-pose-topic")
            else:
                why = f"no pose of the camera frame {camera_frame!r}"
                notes["gt_pose"] = why + (f" ({'; '.join(others)})" if others else "")
        if out["gt_moving_mask"] is None:
            notes["gt_moving_mask"] = "none"
    return GtTopics(out["gt_depth"], out["gt_pose"], out["gt_moving_mask"], notes)
