"""Writing (and minimally reading) rosbag2 bags with ``rosbags``, no ROS installation needed.

This module is the one place that chooses the ROS message definitions (:func:`typestore`)
and the one place that builds messages for bags: images, compressed images, camera infos,
stamped poses and headers. Training-side reading (clips, rectification, caching) lives in
:mod:`dualdepth_ros.data`; :func:`read_messages` here is a small convenience for tests and
tools.

Writing is atomic. :class:`BagWriter` writes into a hidden temporary directory next to the
destination and renames it into place only when the ``with`` block ends without an
exception, so ``path`` never holds a half-written bag: on an exception (or Ctrl-C) the
temporary directory is deleted and whatever was at ``path`` before is left untouched.

Example
-------
>>> with BagWriter("drive", storage="mcap") as bag:  # doctest: +SKIP
...     bag.add_topic("/camera/image_raw", IMAGE)
...     bag.write("/camera/image_raw", image_msg(rgb, "rgb8", stamp_ns, "camera_optical_frame"), stamp_ns)

Storage and compression
-----------------------
``mcap`` bags are written with zstd-compressed chunks (what ``ros2 bag record -s mcap
--storage-preset-profile zstd_fast`` produces; every MCAP reader handles it). ``sqlite3``
bags are uncompressed by default; ``compression="zstd"`` gives rosbag2's per-message zstd
mode, which ``ros2 bag`` and ``rosbags`` read transparently.

Bags use rosbag2 metadata format version 8 by default (what Iron wrote; Jazzy and later read
it). Version 9, Jazzy's own, stores the offered QoS profiles as a YAML list, which Humble's
metadata parser rejects ("yaml-cpp: bad conversion"); version 8 stores them as a string like
Humble does. Humble compatibility is untested here (its rosbag2 is not installable in the
development venv); ``version=9`` is available.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from .errors import DualDepthError
from .images import compressed_fields, image_fields
from .outdir import BAG, check_output_dir, replace_dir

__all__ = [
    "ROS_DISTRO_STORE",
    "IMAGE",
    "COMPRESSED_IMAGE",
    "CAMERA_INFO",
    "POSE_STAMPED",
    "STORAGES",
    "typestore",
    "msg_class",
    "stamp",
    "stamp_to_ns",
    "header",
    "image_msg",
    "compressed_image_msg",
    "camera_info_msg",
    "pose_stamped_msg",
    "pose_to_matrix",
    "rotation_to_quaternion",
    "quaternion_to_rotation",
    "BagWriter",
    "BagMessage",
    "read_messages",
    "bag_size",
]

#: The message definitions written into (and assumed when reading) bags: ROS 2 Jazzy.
#: ``sensor_msgs``/``geometry_msgs``/``std_msgs`` are identical in Humble for every type used here.
ROS_DISTRO_STORE = Stores.ROS2_JAZZY

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"

#: Storage plugins :class:`BagWriter` can write, by the name ``ros2 bag`` uses (``-s``).
STORAGES: dict[str, StoragePlugin] = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}

_NS = 1_000_000_000


# ---------------------------------------------------------------------------------------
# Message definitions and constructors
# ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def typestore() -> Typestore:
    """The shared ``rosbags`` typestore (ROS 2 Jazzy message definitions), built once."""
    return get_typestore(ROS_DISTRO_STORE)


def msg_class(msgtype: str) -> Any:
    """The ``rosbags`` dataclass of ``msgtype`` (e.g. ``"sensor_msgs/msg/Image"``)."""
    try:
        return typestore().types[msgtype]
    except KeyError as err:
        raise DualDepthError(f"unknown message type {msgtype!r}") from err


def stamp(stamp_ns: int) -> Any:
    """A ``builtin_interfaces/msg/Time`` from integer nanoseconds since the epoch."""
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise ValueError(f"timestamps must be non-negative, got {stamp_ns} ns")
    return msg_class("builtin_interfaces/msg/Time")(sec=stamp_ns // _NS, nanosec=stamp_ns % _NS)


def stamp_to_ns(time_msg: Any) -> int:
    """Integer nanoseconds of a ``builtin_interfaces/msg/Time`` (``sec``/``nanosec``)."""
    return int(time_msg.sec) * _NS + int(time_msg.nanosec)


def header(stamp_ns: int, frame_id: str) -> Any:
    """A ``std_msgs/msg/Header`` with the given stamp (ns) and frame id."""
    return msg_class("std_msgs/msg/Header")(stamp=stamp(stamp_ns), frame_id=str(frame_id))


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """A raw ``sensor_msgs/msg/Image`` holding ``array``.

    Parameters
    ----------
    array : ``H×W×C`` or ``H×W`` array whose dtype and channels fit ``encoding``
        (``rgb8``: uint8 ``H×W×3``; ``mono8``: uint8 ``H×W``; ``32FC1``: float32 ``H×W``).
    encoding : a ``sensor_msgs/image_encodings`` name.
    stamp_ns, frame_id : the header.
    """
    return msg_class(IMAGE)(header=header(stamp_ns, frame_id), **image_fields(array, encoding))


def compressed_image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str, fmt: str = "png") -> Any:
    """A ``sensor_msgs/msg/CompressedImage`` of an ``H×W×3`` uint8 RGB (or ``H×W`` grey) array.

    ``fmt="png"`` is lossless; ``"jpeg"`` is not.
    """
    return msg_class(COMPRESSED_IMAGE)(header=header(stamp_ns, frame_id), **compressed_fields(rgb, fmt))


def camera_info_msg(
    width: int,
    height: int,
    K: Any,
    stamp_ns: int,
    frame_id: str,
    D: Any = (),
    distortion_model: str = "plumb_bob",
    P: Any | None = None,
    R: Any | None = None,
) -> Any:
    """A ``sensor_msgs/msg/CameraInfo``.

    Parameters
    ----------
    width, height : image size in pixels (of the raw image the info describes).
    K : 3×3 intrinsics of the raw (distorted) camera, pixels.
    stamp_ns, frame_id : the header; use the image's so that the pair matches.
    D : distortion coefficients (``plumb_bob``: ``k1, k2, p1, p2, k3``); empty or zeros for none.
    distortion_model : ``plumb_bob``, ``rational_polynomial`` or ``equidistant``.
    P : 3×4 projection of the rectified camera; default ``[K | 0]``.
    R : 3×3 rectification rotation; default identity (monocular camera).
    """
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    P = np.hstack([K, np.zeros((3, 1))]) if P is None else np.asarray(P, dtype=np.float64).reshape(3, 4)
    R = np.eye(3) if R is None else np.asarray(R, dtype=np.float64).reshape(3, 3)
    roi = msg_class("sensor_msgs/msg/RegionOfInterest")(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return msg_class(CAMERA_INFO)(
        header=header(stamp_ns, frame_id),
        height=int(height),
        width=int(width),
        distortion_model=str(distortion_model),
        d=np.asarray(D, dtype=np.float64).reshape(-1),
        k=K.reshape(9).copy(),
        r=R.reshape(9).copy(),
        p=P.reshape(12).copy(),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion ``[x, y, z, w]`` (``w ≥ 0``) of a 3×3 rotation matrix (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q = [0.0, 0.0, 0.0, (R[k, j] - R[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def quaternion_to_rotation(q: Any) -> np.ndarray:
    """3×3 rotation of a quaternion ``[x, y, z, w]`` (normalised first)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def pose_stamped_msg(T: np.ndarray, stamp_ns: int, frame_id: str) -> Any:
    """A ``geometry_msgs/msg/PoseStamped`` of the 4×4 transform ``T``.

    ``T`` is the pose of a child frame in ``frame_id`` (``T_child_to_frame``: maps points of the
    child into ``frame_id``); ``pose.position`` is its translation, ``pose.orientation`` its rotation.
    """
    T = np.asarray(T, dtype=np.float64)
    qx, qy, qz, qw = rotation_to_quaternion(T[:3, :3])
    point = msg_class("geometry_msgs/msg/Point")(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3]))
    quat = msg_class("geometry_msgs/msg/Quaternion")(x=float(qx), y=float(qy), z=float(qz), w=float(qw))
    pose = msg_class("geometry_msgs/msg/Pose")(position=point, orientation=quat)
    return msg_class(POSE_STAMPED)(header=header(stamp_ns, frame_id), pose=pose)


def pose_to_matrix(pose: Any) -> np.ndarray:
    """4×4 transform of a ``geometry_msgs/Pose`` (or a ``PoseStamped``, whose ``pose`` is used)."""
    pose = getattr(pose, "pose", pose)
    o, p = pose.orientation, pose.position
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation([o.x, o.y, o.z, o.w])
    T[:3, 3] = [p.x, p.y, p.z]
    return T


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------
class BagWriter:
    """Atomic rosbag2 writer (context manager).

    Parameters
    ----------
    path : the bag directory to create.
    storage : ``"mcap"`` or ``"sqlite3"``.
    overwrite : replace an existing, non-empty ``path``. Only a directory that looks like a
        rosbag2 bag (``metadata.yaml`` plus storage files, :func:`.outdir.looks_like_bag`) is ever
        replaced; anything else is refused, so a typo cannot delete a home directory.
    compression : ``"zstd"``, ``"none"`` or ``None`` (default: zstd chunks for mcap, none for sqlite3).
    version : rosbag2 metadata format version written (8, the default, or 9; see the module notes).

    Raises
    ------
    DualDepthError : bad storage or compression name; ``path`` not empty without ``overwrite``.

    Notes
    -----
    The bag is written to ``<parent>/.<name>.partial-<random>/<name>`` (so file names inside
    the bag are final) and renamed to ``path`` on a clean exit of the ``with`` block. An
    existing bag being overwritten is moved aside first and deleted only after the rename.
    Messages must be written in the order they should be replayed; timestamps are integer
    nanoseconds (the time the message was "recorded"; use the header stamp for sensor data).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        storage: str = "mcap",
        overwrite: bool = False,
        compression: str | None = None,
        version: int = 8,
    ) -> None:
        if storage not in STORAGES:
            raise DualDepthError(f"unknown bag storage {storage!r}; choose one of: {', '.join(STORAGES)}")
        if compression not in (None, "none", "zstd"):
            raise DualDepthError(f"unknown bag compression {compression!r}; choose 'zstd' or 'none'")
        if version not in (8, 9):
            raise DualDepthError(f"rosbag2 format version must be 8 or 9, got {version}")
        self.path = Path(path).absolute()
        self.storage = storage
        self.overwrite = bool(overwrite)
        self.compression = ("zstd" if storage == "mcap" else "none") if compression is None else compression
        self.version = version
        check_output_dir(self.path, self.overwrite, BAG)
        self._tmpdir: Path | None = None
        self._writer: Writer | None = None
        self._connections: dict[str, Any] = {}
        self._msgtypes: dict[str, str] = {}
        #: Messages written so far, per topic.
        self.counts: dict[str, int] = {}

    # -- context management -------------------------------------------------------------
    def __enter__(self) -> BagWriter:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Start writing into the temporary directory (``__enter__`` calls this)."""
        if self._writer is not None:
            raise DualDepthError("bag writer is already open")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmpdir = self.path.parent / f".{self.path.name}.partial-{uuid.uuid4().hex[:12]}"
        self._tmpdir.mkdir()
        try:
            writer = Writer(self._tmpdir / self.path.name, version=self.version, storage_plugin=STORAGES[self.storage])
            if self.compression == "zstd":
                mode = CompressionMode.STORAGE if self.storage == "mcap" else CompressionMode.MESSAGE
                writer.set_compression(mode, CompressionFormat.ZSTD)
            writer.open()
        except BaseException:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            raise
        self._writer = writer

    def close(self) -> None:
        """Finish the bag and move it to ``path`` (``__exit__`` calls this on success)."""
        writer, tmpdir = self._require_open(), self._tmpdir
        assert tmpdir is not None
        try:
            writer.close()
            replace_dir(tmpdir / self.path.name, self.path, self.overwrite, BAG)  # checks the destination again
        finally:  # the temporary directory goes in every case (an exception, Ctrl-C, SIGTERM as an exception)
            self._writer = None
            shutil.rmtree(tmpdir, ignore_errors=True)
            self._tmpdir = None

    def abort(self) -> None:
        """Discard everything written; ``path`` is left as it was. Safe to call twice."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.abort()
            except Exception:  # noqa: BLE001 - the temporary directory is removed anyway
                pass
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _require_open(self) -> Writer:
        if self._writer is None:
            raise DualDepthError("bag writer is not open (use it as a context manager)")
        return self._writer

    # -- topics and messages ------------------------------------------------------------
    def add_topic(self, topic: str, msgtype: str, qos: Iterable[Any] = ()) -> None:
        """Declare ``topic`` with message type ``msgtype`` (e.g. :data:`IMAGE`).

        ``qos`` is an optional sequence of ``rosbags.interfaces.Qos`` offered-QoS profiles;
        empty means ``ros2 bag play`` uses its defaults (reliable, volatile).
        """
        writer = self._require_open()
        if topic in self._connections:
            raise DualDepthError(f"topic {topic} was already added")
        msg_class(msgtype)  # validates the name
        self._connections[topic] = writer.add_connection(
            topic, msgtype, typestore=typestore(), offered_qos_profiles=list(qos)
        )
        self._msgtypes[topic] = msgtype
        self.counts[topic] = 0

    def write(self, topic: str, msg: Any, timestamp_ns: int) -> None:
        """Serialise ``msg`` (a ``rosbags`` message of the topic's type) and write it at ``timestamp_ns``."""
        writer = self._require_open()
        if topic not in self._connections:
            raise DualDepthError(f"topic {topic} was not added (call add_topic first)")
        data = typestore().serialize_cdr(msg, self._msgtypes[topic])
        writer.write(self._connections[topic], int(timestamp_ns), data)
        self.counts[topic] += 1

    def write_raw(self, topic: str, data: bytes | memoryview, timestamp_ns: int) -> None:
        """Write already CDR-serialised bytes."""
        writer = self._require_open()
        if topic not in self._connections:
            raise DualDepthError(f"topic {topic} was not added (call add_topic first)")
        writer.write(self._connections[topic], int(timestamp_ns), data)
        self.counts[topic] += 1

    def set_custom_data(self, key: str, value: str) -> None:
        """Store a string in ``metadata.yaml``'s ``custom_data`` (e.g. how the bag was made)."""
        self._require_open().set_custom_data(key, str(value))

    def write_text(self, name: str, text: str) -> None:
        """Add a text file (e.g. ``README.md``) to the bag directory; it appears atomically with the bag.

        Only ``.md`` and ``.txt`` names are allowed: ``ros2 bag`` ignores them, and ``--overwrite``
        still recognises the directory as a bag.
        """
        self._require_open()
        if Path(name).name != name or Path(name).suffix not in (".md", ".txt"):
            raise DualDepthError(f"extra bag files must be plain .md/.txt names, got {name!r}")
        assert self._tmpdir is not None
        (self._tmpdir / self.path.name / name).write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------
# Reading (minimal)
# ---------------------------------------------------------------------------------------
class BagMessage(NamedTuple):
    """One message read by :func:`read_messages`."""

    topic: str
    msgtype: str
    timestamp_ns: int
    msg: Any


def read_messages(path: str | os.PathLike[str], topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Deserialised messages of a rosbag2 (or ROS 1) bag in timestamp order.

    Parameters
    ----------
    path : the bag directory (or a ROS 1 ``.bag`` file).
    topics : only these topics; ``None`` for all.

    Raises
    ------
    DualDepthError : the bag cannot be opened, or a requested topic is missing.
    """
    path = Path(path)
    if not path.exists():
        raise DualDepthError(f"bag {path} does not exist")
    try:
        reader = AnyReader([path], default_typestore=typestore())
        reader.open()
    except Exception as err:  # rosbags raises several unrelated types for a bad bag
        raise DualDepthError(f"cannot open bag {path}: {err}") from err
    try:
        wanted = None if topics is None else set(topics)
        if wanted is not None:
            missing = wanted - set(reader.topics)
            if missing:
                raise DualDepthError(
                    f"bag {path} has no topic {', '.join(sorted(missing))} (it has: {', '.join(sorted(reader.topics))})"
                )
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for conn, timestamp, raw in reader.messages(connections=conns):
            yield BagMessage(conn.topic, conn.msgtype, int(timestamp), reader.deserialize(raw, conn.msgtype))
    finally:
        reader.close()


def bag_size(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of all files under ``path`` (a bag directory)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
