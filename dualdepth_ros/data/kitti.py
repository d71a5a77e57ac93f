"""``dualdepth kitti-to-bag``: a KITTI raw ``*_sync`` drive folder as a rosbag2 with ground truth.

KITTI's raw data comes as one folder per drive (``2011_09_26/2011_09_26_drive_0009_sync/``)
beside the day's calibration (``2011_09_26/calib_*.txt``)::

    2011_09_26/
        calib_cam_to_cam.txt   calib_velo_to_cam.txt   calib_imu_to_velo.txt
        2011_09_26_drive_0009_sync/
            image_02/timestamps.txt   image_02/data/0000000000.png …   (left colour camera, rectified)
            velodyne_points/data/0000000000.bin …                       (float32 x, y, z, reflectance)
            oxts/timestamps.txt       oxts/data/0000000000.txt …        (GNSS/INS, 30 numbers a line)

The bag has the topics and conventions of the shared real drives (``kitti_raw_0009``):

================================ ================================= ==========================================
topic                            type                              content
================================ ================================= ==========================================
``/camera/image_raw/compressed`` ``sensor_msgs/CompressedImage``   image_02, JPEG q95 (``--png``: the PNG file)
``/camera/image_raw``            ``sensor_msgs/Image``             instead of the above with ``--raw``: rgb8
``/camera/camera_info``          ``sensor_msgs/CameraInfo``        rectified: ``K`` of ``P_rect_02``, ``P = [K|0]``,
                                                                   ``R = I``, ``D = 0``, size ``S_rect_02``
``/gt/depth``                    ``sensor_msgs/Image``             ``16UC1`` mm (0: no point) from the Velodyne
                                                                   scan; ``--depth-encoding 32FC1``: m, NaN
``/gt/pose``                     ``geometry_msgs/PoseStamped``     camera-2 optical frame in ``world``
================================ ================================= ==========================================

Every message of a frame has the frame's ``image_02`` timestamp as header stamp and log time
(KITTI's ``YYYY-MM-DD HH:MM:SS.fffffffff``, read as UTC to the nanosecond). Camera messages
have ``frame_id`` ``camera_optical_frame``; poses ``world``. A frame without a Velodyne scan gets
no ``/gt/depth``, one without an oxts record no ``/gt/pose``.

Why ``P = [K|0]``: KITTI's ``P_rect_02`` projects points given in the *rectified camera 0*
frame (its fourth column is camera 2's offset from camera 0, ``K·t``). The bag's messages are in
camera 2's own optical frame, where the projection is ``[K|0]`` (ROS gives ``P`` a non-zero
fourth column only for the second camera of a stereo pair, in the first camera's frame). The
depth and the poses below are in that same frame.

Depth (:func:`velodyne_depth`) is the projection behind the published KITTI (Eigen) ground
truth, monodepth2's ``generate_depth_map``: points with ``x ≥ 0`` in the Velodyne frame are
mapped by ``P_rect_02 · R_rect_00 · T_velo_to_cam``; pixel column and row are ``round(u) − 1``
and ``round(v) − 1`` (KITTI's MATLAB devkit, reproduced so that scores compare with the papers');
points outside the image are dropped and the nearest point wins where several hit one pixel. The
value is the point's z in camera 2's optical frame (depth along the optical axis, as the shared
drives have it) or, with ``--depth-value velodyne-x``, its forward distance from the Velodyne —
what monodepth2's ``export_gt_depth.py`` stores for the Eigen test set (``vel_depth=True``),
about 0.27 m more than the camera's z. ``16UC1`` cannot hold more than 65.535 m: farther points
saturate at 65535 mm, as in the shared drives; ``32FC1`` keeps them.

Frames: all, every K-th (``--every``), or those a monodepth2-style split file lists for this
drive (``--frames-from``, lines ``2011_09_26/2011_09_26_drive_0009_sync 0000000016 l``, e.g. the
Eigen test split's ``test_files.txt``); then at most ``--max-frames``.

Poses (:func:`oxts_imu_poses`, :func:`camera_poses`) follow pykitti: latitude/longitude →
Mercator metres with the scale ``cos(lat)`` of the first record used, altitude as up;
``R = Rz(yaw)·Ry(pitch)·Rx(roll)`` → the IMU pose; the camera-2 optical frame from
``calib_imu_to_velo``, ``calib_velo_to_cam``, ``R_rect_00`` and camera 2's offset in
``P_rect_02``. ``world`` is the optical frame of the first frame written that has a pose.

Public API: :func:`convert` (what the command runs), :func:`load_calibration`,
:func:`list_frames`, :func:`read_timestamps`, :func:`read_velodyne`, :func:`velodyne_depth`,
:func:`read_oxts`, :func:`oxts_imu_poses`, :func:`camera_poses`.
"""

from __future__ import annotations

import argparse
import calendar
import dataclasses
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from .. import bagio
from ..errors import DualDepthError

__all__ = [
    "TOPICS",
    "CAMERA_FRAME",
    "WORLD_FRAME",
    "CALIB_FILES",
    "DEPTH_ENCODINGS",
    "IMAGE_MODES",
    "KittiCalibration",
    "KittiFrame",
    "load_calibration",
    "read_calib_file",
    "parse_timestamp",
    "read_timestamps",
    "list_frames",
    "read_velodyne",
    "velodyne_depth",
    "DEPTH_VALUES",
    "read_split_file",
    "read_oxts",
    "rotation_rpy",
    "oxts_imu_poses",
    "camera_poses",
    "convert",
    "add_arguments",
    "run",
]

CAMERA_FRAME = "camera_optical_frame"
WORLD_FRAME = "world"

#: Topic names by role (those of the shared real drives).
TOPICS = {
    "image": "/camera/image_raw",
    "compressed": "/camera/image_raw/compressed",
    "camera_info": "/camera/camera_info",
    "depth": "/gt/depth",
    "pose": "/gt/pose",
}
#: The calibration files of a KITTI raw day folder that the conversion reads.
CALIB_FILES = ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "calib_imu_to_velo.txt")
#: ``--depth-encoding`` choices: millimetres (0 = no point, saturating at 65.535 m) or metres (NaN = no point).
DEPTH_ENCODINGS = ("16UC1", "32FC1")
#: ``/camera`` image choices: JPEG q95 (as the shared drives), the original PNG bytes, or raw rgb8.
IMAGE_MODES = ("jpeg", "png", "raw")
#: ``--depth-value`` choices: z of camera 2's optical frame, or the Velodyne's forward x (the Eigen GT's value).
DEPTH_VALUES = ("optical-z", "velodyne-x")
JPEG_QUALITY = 95
#: WGS84 equatorial radius (m), as pykitti's Mercator projection uses.
EARTH_RADIUS = 6378137.0
#: Numbers in one oxts record (lat, lon, alt, roll, pitch, yaw, velocities, accelerations, …).
OXTS_FIELDS = 30

_NS = 1_000_000_000
_STAMP = re.compile(r"^\s*(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?\s*$")
_FRAME_NAME = re.compile(r"^\d{10}$")


# ---------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------
def read_calib_file(path: str | Path) -> dict[str, np.ndarray]:
    """The numeric entries of a KITTI calibration file (``KEY: v1 v2 …`` a line).

    Lines whose values are not numbers (``calib_time: 09-Jan-2012 13:57:47``) are skipped.

    Raises
    ------
    DualDepthError : the file is missing, unreadable, or has a line without ``KEY:``.
    """
    path = Path(path)
    if not path.is_file():
        raise DualDepthError(
            f"calibration file {path} is missing: KITTI ships calib_*.txt in the day's folder "
            "(e.g. 2011_09_26/, from the day's '_calib' download); pass that folder with --calib"
        )
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as err:
        raise DualDepthError(f"cannot read calibration file {path}: {err}") from None
    entries: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        if not sep or not key.strip():
            raise DualDepthError(f"{path}, line {lineno}: expected 'KEY: numbers', got {line.strip()[:60]!r}")
        try:
            entries[key.strip()] = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError:
            continue  # a date or a name, not numbers
    return entries


def _entry(entries: dict[str, np.ndarray], path: Path, key: str, count: int) -> np.ndarray:
    if key not in entries:
        raise DualDepthError(f"{path} has no {key} (it has: {', '.join(sorted(entries)) or 'nothing numeric'})")
    values = entries[key]
    if values.size != count or not np.all(np.isfinite(values)):
        raise DualDepthError(f"{path}: {key} must hold {count} finite numbers, found {values.size}")
    return values


def _rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, dtype=np.float64).reshape(3, 3)
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def _check_rotation(R: np.ndarray, path: Path, key: str) -> None:
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        raise DualDepthError(f"{path}: {key} is not a rotation matrix (R·Rᵀ ≠ I or det < 0)")


def _invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a 4×4 rigid transform (``Rᵀ``, ``−Rᵀt``)."""
    R, t = T[:3, :3], T[:3, 3]
    return _rigid(R.T, -R.T @ t)


@dataclasses.dataclass(frozen=True)
class KittiCalibration:
    """The calibration of camera 2 (left colour) of one KITTI raw day.

    Attributes
    ----------
    P_rect : 3×4 ``P_rect_02``: rectified camera 0 frame → camera 2 pixels.
    R_rect : 3×3 ``R_rect_00``: unrectified → rectified camera 0.
    width, height : ``S_rect_02``, the rectified image size in pixels.
    T_velo_to_cam0 : 4×4 ``calib_velo_to_cam`` (Velodyne → unrectified camera 0), metres.
    T_imu_to_velo : 4×4 ``calib_imu_to_velo`` (IMU/GNSS → Velodyne), metres.
    """

    P_rect: np.ndarray
    R_rect: np.ndarray
    width: int
    height: int
    T_velo_to_cam0: np.ndarray
    T_imu_to_velo: np.ndarray

    @property
    def K(self) -> np.ndarray:
        """3×3 intrinsics of the rectified camera 2 (pixels)."""
        return self.P_rect[:, :3].copy()

    @property
    def T_rect0_to_cam(self) -> np.ndarray:
        """4×4: rectified camera 0 → camera 2's optical frame (the translation ``K⁻¹·P[:, 3]``)."""
        return _rigid(np.eye(3), np.linalg.solve(self.K, self.P_rect[:, 3]))

    @property
    def T_velo_to_cam(self) -> np.ndarray:
        """4×4: Velodyne → camera 2's optical frame (``T_rect0_to_cam · R_rect_00 · T_velo_to_cam0``)."""
        return self.T_rect0_to_cam @ _rigid(self.R_rect, np.zeros(3)) @ self.T_velo_to_cam0

    @property
    def T_imu_to_cam(self) -> np.ndarray:
        """4×4: IMU → camera 2's optical frame."""
        return self.T_velo_to_cam @ self.T_imu_to_velo

    @property
    def P_velo_to_image(self) -> np.ndarray:
        """3×4 ``P_rect_02 · R_rect_00 · T_velo_to_cam0``: Velodyne points → camera 2 pixels (monodepth2's)."""
        return self.P_rect @ _rigid(self.R_rect, np.zeros(3)) @ self.T_velo_to_cam0


def load_calibration(calib_dir: str | Path) -> KittiCalibration:
    """Camera 2's calibration from the three ``calib_*.txt`` of a KITTI raw day folder.

    Raises
    ------
    DualDepthError : a file is missing, or an entry is missing or malformed.
    """
    calib_dir = Path(calib_dir)
    if not calib_dir.is_dir():
        raise DualDepthError(f"calibration folder {calib_dir} does not exist (it holds {', '.join(CALIB_FILES)})")
    cam_path, velo_path, imu_path = (calib_dir / name for name in CALIB_FILES)
    cam, velo, imu = (read_calib_file(p) for p in (cam_path, velo_path, imu_path))
    P_rect = _entry(cam, cam_path, "P_rect_02", 12).reshape(3, 4)
    R_rect = _entry(cam, cam_path, "R_rect_00", 9).reshape(3, 3)
    width, height = _entry(cam, cam_path, "S_rect_02", 2)
    if width < 1 or height < 1 or width != round(width) or height != round(height):
        raise DualDepthError(f"{cam_path}: S_rect_02 must be a positive whole width and height, got {width} {height}")
    if not (P_rect[0, 0] > 0 and P_rect[1, 1] > 0 and np.allclose(P_rect[2, :3], [0, 0, 1])):
        raise DualDepthError(
            f"{cam_path}: P_rect_02 is not a rectified projection [K | K·t] (fx, fy > 0, K[2] = 0 0 1)"
        )
    _check_rotation(R_rect, cam_path, "R_rect_00")
    R_velo = _entry(velo, velo_path, "R", 9).reshape(3, 3)
    R_imu = _entry(imu, imu_path, "R", 9).reshape(3, 3)
    _check_rotation(R_velo, velo_path, "R")
    _check_rotation(R_imu, imu_path, "R")
    return KittiCalibration(
        P_rect=P_rect,
        R_rect=R_rect,
        width=int(round(width)),
        height=int(round(height)),
        T_velo_to_cam0=_rigid(R_velo, _entry(velo, velo_path, "T", 3)),
        T_imu_to_velo=_rigid(R_imu, _entry(imu, imu_path, "T", 3)),
    )


# ---------------------------------------------------------------------------------------
# Frames and timestamps
# ---------------------------------------------------------------------------------------
def parse_timestamp(text: str) -> int:
    """Integer nanoseconds since the epoch of a KITTI timestamp ``YYYY-MM-DD HH:MM:SS.fffffffff`` (read as UTC).

    Raises
    ------
    ValueError : not such a timestamp.
    """
    match = _STAMP.match(text)
    if not match:
        raise ValueError(f"not a KITTI timestamp: {text.strip()[:40]!r}")
    seconds = calendar.timegm(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timetuple())
    fraction = (match.group(2) or "").ljust(9, "0")
    return seconds * _NS + int(fraction)


def read_timestamps(path: str | Path) -> list[int]:
    """The timestamps (ns since the epoch, UTC) of a KITTI ``timestamps.txt``, one per line.

    Raises
    ------
    DualDepthError : missing file or a line that is not a timestamp.
    """
    path = Path(path)
    if not path.is_file():
        raise DualDepthError(f"{path} is missing: a KITTI raw *_sync drive has one timestamps.txt per sensor folder")
    stamps = []
    for lineno, line in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            stamps.append(parse_timestamp(line))
        except ValueError as err:
            raise DualDepthError(f"{path}, line {lineno}: {err}") from None
    return stamps


@dataclasses.dataclass(frozen=True)
class KittiFrame:
    """One frame of a drive: its index (the file number), stamp and files (``None``: absent)."""

    index: int
    stamp_ns: int
    image: Path
    velodyne: Path | None
    oxts: Path | None


def list_frames(drive: str | Path) -> list[KittiFrame]:
    """The frames of a KITTI raw ``*_sync`` drive, in index order: one per ``image_02/data/*.png``.

    Frame ``i`` is ``image_02/data/{i:010d}.png``, stamped with line ``i`` of
    ``image_02/timestamps.txt``; its Velodyne scan and oxts record are the files of the same
    number, where they exist.

    Raises
    ------
    DualDepthError : not a drive folder, no images, a stray file name, too few timestamps, or
        timestamps that do not increase.
    """
    drive = Path(drive)
    if not drive.is_dir():
        raise DualDepthError(f"drive folder {drive} does not exist")
    if drive.name.endswith("_extract"):
        raise DualDepthError(
            f"{drive} is KITTI's unsynced, unrectified download: give the 'synced+rectified data' drive ('*_sync')"
        )
    image_dir = drive / "image_02" / "data"
    if not image_dir.is_dir():
        raise DualDepthError(
            f"{drive} has no image_02/data: give a KITTI raw '*_sync' drive folder (the synced+rectified download, "
            "e.g. 2011_09_26/2011_09_26_drive_0009_sync)"
        )
    images = sorted(image_dir.glob("*.png"))
    if not images:
        raise DualDepthError(f"{image_dir} holds no .png images")
    for p in images:
        if not _FRAME_NAME.match(p.stem):
            raise DualDepthError(f"unexpected image name {p} (KITTI names frames 0000000000.png, 0000000001.png, …)")
    stamps = read_timestamps(drive / "image_02" / "timestamps.txt")
    velo_dir, oxts_dir = drive / "velodyne_points" / "data", drive / "oxts" / "data"
    frames = []
    for p in images:
        index = int(p.stem)
        if index >= len(stamps):
            raise DualDepthError(
                f"{p.name} has no timestamp: {drive / 'image_02' / 'timestamps.txt'} has {len(stamps)} lines"
            )
        velo, oxts = velo_dir / f"{p.stem}.bin", oxts_dir / f"{p.stem}.txt"
        frames.append(
            KittiFrame(index, stamps[index], p, velo if velo.is_file() else None, oxts if oxts.is_file() else None)
        )
    for a, b in zip(frames, frames[1:]):
        if b.stamp_ns <= a.stamp_ns:
            raise DualDepthError(
                f"image_02 timestamps do not increase at frame {b.index} ({b.stamp_ns} ns after {a.stamp_ns} ns)"
            )
    return frames


def read_split_file(path: str | Path, drive_name: str) -> list[int]:
    """The frame indices that a monodepth2-style split file lists for the drive ``drive_name``.

    Lines are ``FOLDER INDEX [SIDE]`` (``2011_09_26/2011_09_26_drive_0009_sync 0000000016 l``);
    a line belongs to the drive when the last part of ``FOLDER`` is ``drive_name``.

    Raises
    ------
    DualDepthError : missing file, a malformed line, a right-camera (``r``) line of this drive,
        or no line for this drive.
    """
    path = Path(path)
    if not path.is_file():
        raise DualDepthError(f"split file {path} does not exist")
    indices = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (2, 3) or not parts[1].isdigit():
            raise DualDepthError(f"{path}, line {lineno}: expected 'DATE/DRIVE_sync INDEX [l|r]', got {line[:60]!r}")
        if Path(parts[0]).name != drive_name:
            continue
        if len(parts) == 3 and parts[2] != "l":
            raise DualDepthError(
                f"{path}, line {lineno}: frame {parts[1]} is of the right camera ({parts[2]!r}); kitti-to-bag "
                "converts the left colour camera (image_02, 'l') only"
            )
        indices.add(int(parts[1]))
    if not indices:
        raise DualDepthError(f"split file {path} lists no frame of {drive_name}")
    return sorted(indices)


# ---------------------------------------------------------------------------------------
# Velodyne → depth
# ---------------------------------------------------------------------------------------
def read_velodyne(path: str | Path) -> np.ndarray:
    """A KITTI Velodyne scan: ``N×4`` float32 ``x, y, z`` (metres; x forward, y left, z up), reflectance.

    Raises
    ------
    DualDepthError : unreadable, or its size is not a whole number of 16-byte points.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DualDepthError(f"cannot read Velodyne scan {path}: {err}") from None
    if len(raw) % 16:
        raise DualDepthError(
            f"Velodyne scan {path} is malformed: {len(raw)} bytes is not a whole number of points "
            "(4 float32 each); re-download it, or delete it to write that frame without /gt/depth"
        )
    return np.frombuffer(raw, dtype="<f4").reshape(-1, 4)


def velodyne_depth(points: np.ndarray, calib: KittiCalibration, value: str = "optical-z") -> np.ndarray:
    """Sparse depth of camera 2 from a Velodyne scan (monodepth2's ``generate_depth_map``).

    Parameters
    ----------
    points : ``N×3`` or ``N×4`` Velodyne points, metres (a fourth column is ignored).
    calib : the drive's :class:`KittiCalibration`.
    value : ``"optical-z"`` (z of camera 2's optical frame) or ``"velodyne-x"`` (the point's
        Velodyne x: monodepth2's ``vel_depth=True``, the value of the published Eigen ground truth).

    Returns
    -------
    ``height×width`` float32 metres, 0 where no point falls. A point at ``(u, v)`` (pixels from
    ``P_velo_to_image``) lands in column ``round(u) − 1``, row ``round(v) − 1`` (KITTI's 1-based
    devkit convention, as the published ground truth has it); only points with Velodyne ``x ≥ 0``,
    in front of the camera and inside the image count, and the nearest point (smallest value)
    wins where several land in one pixel.
    """
    if value not in DEPTH_VALUES:
        raise DualDepthError(f"unknown depth value {value!r}; choose one of: {', '.join(DEPTH_VALUES)}")
    pts = np.asarray(points, dtype=np.float64)[:, :3]
    pts = pts[np.isfinite(pts).all(axis=1) & (pts[:, 0] >= 0)]
    uvz = pts @ calib.P_velo_to_image[:, :3].T + calib.P_velo_to_image[:, 3]
    front = uvz[:, 2] > 0
    uvz, pts = uvz[front], pts[front]
    col = np.round(uvz[:, 0] / uvz[:, 2]).astype(np.int64) - 1
    row = np.round(uvz[:, 1] / uvz[:, 2]).astype(np.int64) - 1
    inside = (col >= 0) & (row >= 0) & (col < calib.width) & (row < calib.height)
    z = (uvz[:, 2] if value == "optical-z" else pts[:, 0])[inside]
    flat = row[inside] * calib.width + col[inside]
    order = np.lexsort((z, flat))  # by pixel, nearest first within a pixel
    flat, z = flat[order], z[order]
    first = np.ones(flat.size, dtype=bool)
    first[1:] = flat[1:] != flat[:-1]
    depth = np.zeros(calib.height * calib.width, dtype=np.float32)
    depth[flat[first]] = z[first]
    return depth.reshape(calib.height, calib.width)


def _depth_message(depth: np.ndarray, encoding: str, stamp_ns: int) -> Any:
    if encoding == "16UC1":
        mm = np.clip(np.round(depth.astype(np.float64) * 1000.0), 0, 65535).astype(np.uint16)
        return bagio.image_msg(mm, "16UC1", stamp_ns, CAMERA_FRAME)
    metres = np.where(depth > 0, depth, np.nan).astype(np.float32)
    return bagio.image_msg(metres, "32FC1", stamp_ns, CAMERA_FRAME)


# ---------------------------------------------------------------------------------------
# oxts → poses
# ---------------------------------------------------------------------------------------
def read_oxts(path: str | Path) -> np.ndarray:
    """One oxts record: float64 ``(30,)`` — lat, lon (degrees), alt (m), roll, pitch, yaw (rad), then rates.

    Raises
    ------
    DualDepthError : unreadable, not 30 numbers, or latitude/longitude/angles out of range.
    """
    path = Path(path)
    hint = "re-download it, or delete it to write that frame without /gt/pose"
    try:
        values = np.array([float(v) for v in path.read_text(encoding="ascii").split()], dtype=np.float64)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DualDepthError(f"oxts record {path} is malformed ({err}); {hint}") from None
    if values.size != OXTS_FIELDS or not np.all(np.isfinite(values[:6])):
        raise DualDepthError(f"oxts record {path} is malformed: {values.size} numbers, expected {OXTS_FIELDS}; {hint}")
    lat, lon = values[0], values[1]
    if abs(lat) >= 90 or abs(lon) > 180 or np.any(np.abs(values[3:6]) > 2 * np.pi):
        raise DualDepthError(
            f"oxts record {path} is malformed: latitude {lat:g}, longitude {lon:g} or roll/pitch/yaw "
            f"out of range; {hint}"
        )
    return values


def rotation_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """3×3 ``Rz(yaw) · Ry(pitch) · Rx(roll)`` (radians): the oxts orientation of the IMU (x forward, y left, z up)."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def oxts_imu_poses(records: Sequence[np.ndarray]) -> list[np.ndarray]:
    """IMU poses ``T_imu_to_local`` (4×4, metres) of oxts records, pykitti's way.

    Latitude/longitude become Mercator metres (x east, y north) with the scale ``cos(lat₀)`` of
    the first record, altitude is z (up); the frame ``local`` is that Mercator frame shifted so
    that the first record's IMU sits at the origin (the rotation is not changed).
    """
    if not records:
        return []
    scale = np.cos(np.deg2rad(records[0][0]))
    origin = None
    poses = []
    for rec in records:
        lat, lon, alt, roll, pitch, yaw = (float(v) for v in rec[:6])
        t = np.array(
            [
                scale * np.deg2rad(lon) * EARTH_RADIUS,
                scale * EARTH_RADIUS * np.log(np.tan(np.deg2rad(90.0 + lat) / 2.0)),
                alt,
            ]
        )
        origin = t if origin is None else origin
        poses.append(_rigid(rotation_rpy(roll, pitch, yaw), t - origin))
    return poses


def camera_poses(records: Sequence[np.ndarray | None], calib: KittiCalibration) -> list[np.ndarray | None]:
    """Camera-2 optical frame poses ``T_cam_to_world`` (4×4) of a frame sequence's oxts records.

    ``world`` is the camera frame of the first record that is not ``None``; frames without a
    record get ``None``. The Mercator scale is that first record's (:func:`oxts_imu_poses`).
    """
    present = [r for r in records if r is not None]
    imu = iter(oxts_imu_poses(present))
    T_cam_to_imu = _invert(calib.T_imu_to_cam)
    world = None
    out: list[np.ndarray | None] = []
    for rec in records:
        if rec is None:
            out.append(None)
            continue
        T_cam_to_local = next(imu) @ T_cam_to_imu
        if world is None:
            world = _invert(T_cam_to_local)
        out.append(world @ T_cam_to_local)
    return out


# ---------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------
def _read_image(path: Path, calib: KittiCalibration) -> np.ndarray:
    """``H×W×3`` uint8 RGB of a KITTI colour PNG, checked against ``S_rect_02``."""
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if bgr is None:
        raise DualDepthError(f"cannot decode image {path} (missing or corrupt PNG); re-download the drive")
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise DualDepthError(f"image {path} is not 8-bit colour ({bgr.dtype}, shape {bgr.shape}): image_02 is")
    if bgr.shape[:2] != (calib.height, calib.width):
        raise DualDepthError(
            f"image {path} is {bgr.shape[1]}×{bgr.shape[0]} but S_rect_02 of the calibration says "
            f"{calib.width}×{calib.height}: is --calib the folder of this drive's day, and the drive a rectified "
            "'*_sync' one?"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _image_message(path: Path, rgb: np.ndarray, mode: str, stamp_ns: int) -> Any:
    if mode == "raw":
        return bagio.image_msg(rgb, "rgb8", stamp_ns, CAMERA_FRAME)
    if mode == "jpeg":
        fields = {"format": "rgb8; jpeg compressed bgr8", "data": None}
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise DualDepthError(f"OpenCV failed to encode {path} as JPEG")
        fields["data"] = buf.reshape(-1).astype(np.uint8)
    else:  # the original PNG, bit for bit
        fields = {"format": "rgb8; png compressed bgr8", "data": np.frombuffer(path.read_bytes(), dtype=np.uint8)}
    return bagio.msg_class(bagio.COMPRESSED_IMAGE)(header=bagio.header(stamp_ns, CAMERA_FRAME), **fields)


def _readme(drive: Path, command: str, summary: dict[str, Any]) -> str:
    return f"""# {drive.name} (KITTI raw), converted by dualdepth kitti-to-bag

```
{command}
```

{summary["frames"]} frames of the left colour camera (image_02), {summary["width"]}×{summary["height"]},
with the drive's own image_02 timestamps. Topics: {", ".join(f"`{t}`" for t in summary["counts"])}.
Depth from the Velodyne scans (monodepth2's projection, nearest point wins), poses from oxts (camera-2
optical frame in `world`, the first posed frame). See docs/kitti.md of dualdepth_ros.

This data is derived from the KITTI Vision Benchmark Suite (raw data), © Andreas Geiger, Philip Lenz,
Christoph Stiller, Raquel Urtasun, Karlsruhe Institute of Technology and Toyota Technological Institute at
Chicago, licensed under CC BY-NC-SA 3.0 (non-commercial use, with attribution). A. Geiger, P. Lenz,
C. Stiller, R. Urtasun, "Vision meets Robotics: The KITTI Dataset", IJRR 2013.
"""


def convert(
    drive: str | Path,
    out: str | Path,
    calib_dir: str | Path | None = None,
    storage: str = "mcap",
    overwrite: bool = False,
    image_mode: str = "jpeg",
    depth_encoding: str = "16UC1",
    depth_value: str = "optical-z",
    every: int = 1,
    frames_from: str | Path | None = None,
    max_frames: int | None = None,
    command: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Write a KITTI raw ``*_sync`` drive as a rosbag2 at ``out`` (module docstring).

    Parameters
    ----------
    drive : the ``*_sync`` drive folder.
    out : the bag directory to create (atomically, :class:`~dualdepth_ros.bagio.BagWriter`).
    calib_dir : the folder of the ``calib_*.txt`` files; default the drive's parent (KITTI's layout).
    storage : ``"mcap"`` or ``"sqlite3"``.
    overwrite : replace a non-empty ``out`` (only ever a folder that looks like a bag).
    image_mode : ``"jpeg"`` (q95), ``"png"`` (the original files) or ``"raw"`` (rgb8 Image).
    depth_encoding : ``"16UC1"`` (mm) or ``"32FC1"`` (m).
    depth_value : ``"optical-z"`` or ``"velodyne-x"`` (:func:`velodyne_depth`).
    every : keep frames ``0, every, 2·every, …``.
    frames_from : keep the frames that this split file lists for the drive (:func:`read_split_file`);
        not together with ``every``.
    max_frames : then keep at most the first ``max_frames``.
    command : the command line, stored in the bag's metadata and README.
    progress : a progress bar on stderr (default: only on a terminal).

    Returns
    -------
    A summary dict: path, frames, indices written, counts per topic, frames without depth or pose,
    stamps, median valid-depth fraction, path length of the poses, bytes, seconds.

    Raises
    ------
    DualDepthError : a bad option, a missing or malformed file, or a non-empty ``out`` without
        ``overwrite``. Nothing is written then (a bag already at ``out`` is kept).
    """
    t_start = time.perf_counter()
    if storage not in bagio.STORAGES:
        raise DualDepthError(f"unknown --format {storage!r}; choose one of: {', '.join(bagio.STORAGES)}")
    if image_mode not in IMAGE_MODES:
        raise DualDepthError(f"unknown image mode {image_mode!r}; choose one of: {', '.join(IMAGE_MODES)}")
    if depth_encoding not in DEPTH_ENCODINGS:
        raise DualDepthError(
            f"unknown --depth-encoding {depth_encoding!r}; choose one of: {', '.join(DEPTH_ENCODINGS)}"
        )
    if depth_value not in DEPTH_VALUES:
        raise DualDepthError(f"unknown --depth-value {depth_value!r}; choose one of: {', '.join(DEPTH_VALUES)}")
    if every < 1:
        raise DualDepthError(f"--every must be at least 1, got {every}")
    if frames_from is not None and every != 1:
        raise DualDepthError("--every and --frames-from contradict each other: give one")
    if max_frames is not None and max_frames < 1:
        raise DualDepthError(f"--max-frames must be at least 1, got {max_frames}")
    drive = Path(os.path.abspath(drive))  # "." and ".." resolved, so that .parent and .name are KITTI's folders
    calib = load_calibration(drive.parent if calib_dir is None else calib_dir)
    frames = list_frames(drive)
    if frames_from is not None:
        wanted = read_split_file(frames_from, drive.name)
        by_index = {f.index: f for f in frames}
        missing = [i for i in wanted if i not in by_index]
        if missing:
            raise DualDepthError(
                f"{frames_from} lists frame {missing[0]} of {drive.name}, "
                f"which has no image_02/data/{missing[0]:010d}.png"
            )
        frames = [by_index[i] for i in wanted]
    frames = frames[::every][:max_frames]
    records = [read_oxts(f.oxts) if f.oxts is not None else None for f in frames]
    poses = camera_poses(records, calib)
    image_topic = TOPICS["image"] if image_mode == "raw" else TOPICS["compressed"]
    topics = {
        image_topic: bagio.IMAGE if image_mode == "raw" else bagio.COMPRESSED_IMAGE,
        TOPICS["camera_info"]: bagio.CAMERA_INFO,
        TOPICS["depth"]: bagio.IMAGE,
        TOPICS["pose"]: bagio.POSE_STAMPED,
    }
    valid_fraction = []
    summary: dict[str, Any] = {"path": str(out), "drive": str(drive), "storage": storage}
    with bagio.BagWriter(out, storage=storage, overwrite=overwrite) as bag:
        for topic, msgtype in topics.items():
            bag.add_topic(topic, msgtype)
        if command:
            bag.set_custom_data("dualdepth.kitti_to_bag", command)
        disable = None if progress is None else not progress
        for frame, T in tqdm(
            list(zip(frames, poses)), desc="converting", unit="frame", file=sys.stderr, disable=disable
        ):
            ts = frame.stamp_ns
            rgb = _read_image(frame.image, calib)
            bag.write(image_topic, _image_message(frame.image, rgb, image_mode, ts), ts)
            bag.write(
                TOPICS["camera_info"],
                bagio.camera_info_msg(calib.width, calib.height, calib.K, ts, CAMERA_FRAME, D=np.zeros(5)),
                ts,
            )
            if frame.velodyne is not None:
                depth = velodyne_depth(read_velodyne(frame.velodyne), calib, depth_value)
                valid_fraction.append(float((depth > 0).mean()))
                bag.write(TOPICS["depth"], _depth_message(depth, depth_encoding, ts), ts)
            if T is not None:
                bag.write(TOPICS["pose"], bagio.pose_stamped_msg(T, ts, WORLD_FRAME), ts)
        posed = [T for T in poses if T is not None]
        summary.update(
            frames=len(frames),
            every=every,
            width=calib.width,
            height=calib.height,
            indices=[f.index for f in frames],
            counts=dict(bag.counts),
            frames_without_depth=[f.index for f in frames if f.velodyne is None],
            frames_without_pose=[f.index for f, T in zip(frames, poses) if T is None],
            first_stamp_ns=frames[0].stamp_ns,
            last_stamp_ns=frames[-1].stamp_ns,
            duration_s=round((frames[-1].stamp_ns - frames[0].stamp_ns) / _NS, 6),
            median_valid_depth_fraction=float(np.median(valid_fraction)) if valid_fraction else None,
            path_length_m=float(sum(np.linalg.norm(b[:3, 3] - a[:3, 3]) for a, b in zip(posed, posed[1:]))),
            image=image_mode,
            depth_encoding=depth_encoding,
            depth_value=depth_value,
        )
        bag.write_text("README.md", _readme(drive, command or "dualdepth kitti-to-bag", summary))
    summary["bytes"] = bagio.bag_size(out)
    summary["seconds"] = round(time.perf_counter() - t_start, 3)
    return summary


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "drive", metavar="DRIVE_SYNC_DIR", help="a KITTI raw drive folder, e.g. 2011_09_26_drive_0009_sync"
    )
    parser.add_argument(
        "--calib",
        metavar="CALIB_DIR",
        help="folder of calib_cam_to_cam/velo_to_cam/imu_to_velo.txt (default: the drive's parent)",
    )
    parser.add_argument("--out", required=True, metavar="BAG", help="bag directory to create")
    parser.add_argument("--format", default="mcap", metavar="{mcap,sqlite3}", help="bag storage (default mcap)")
    images = parser.add_mutually_exclusive_group()
    images.add_argument("--raw", action="store_true", help="raw rgb8 Image on /camera/image_raw instead of JPEG q95")
    images.add_argument("--png", action="store_true", help="the original PNG files (lossless) instead of JPEG q95")
    parser.add_argument(
        "--depth-encoding",
        default="16UC1",
        metavar="{16UC1,32FC1}",
        help="/gt/depth as millimetres (default; saturates at 65.535 m, as the shared drives) or float metres",
    )
    parser.add_argument(
        "--depth-value",
        default="optical-z",
        metavar="{optical-z,velodyne-x}",
        help="/gt/depth as z along camera 2's optical axis (default, as the shared drives) or the Velodyne's "
        "forward x, the value of the published Eigen ground truth (monodepth2's export_gt_depth)",
    )
    parser.add_argument("--every", type=int, default=1, metavar="K", help="keep every K-th frame (default 1)")
    parser.add_argument(
        "--frames-from",
        metavar="SPLIT_FILE",
        help="keep only the frames of this drive that a monodepth2-style split file lists (e.g. the Eigen "
        "test_files.txt)",
    )
    parser.add_argument("--max-frames", type=int, metavar="N", help="write at most N frames")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (only if it is a bag)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _command_line(args: argparse.Namespace) -> str:
    parts = ["dualdepth", "kitti-to-bag", str(args.drive), "--out", str(args.out), "--format", args.format]
    if args.calib:
        parts += ["--calib", str(args.calib)]
    parts += ["--raw"] if args.raw else ["--png"] if args.png else []
    if args.depth_encoding != "16UC1":
        parts += ["--depth-encoding", args.depth_encoding]
    if args.depth_value != "optical-z":
        parts += ["--depth-value", args.depth_value]
    if args.every != 1:
        parts += ["--every", str(args.every)]
    if args.frames_from:
        parts += ["--frames-from", str(args.frames_from)]
    if args.max_frames is not None:
        parts += ["--max-frames", str(args.max_frames)]
    return shlex.join(parts)


def _frame_list(indices: list[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, indices[:limit]))
    return shown + (f", … ({len(indices)} in all)" if len(indices) > limit else "")


def run(args: argparse.Namespace) -> int:
    summary = convert(
        args.drive,
        args.out,
        calib_dir=args.calib,
        storage=args.format,
        overwrite=args.overwrite,
        image_mode="raw" if args.raw else "png" if args.png else "jpeg",
        depth_encoding=args.depth_encoding,
        depth_value=args.depth_value,
        every=args.every,
        frames_from=args.frames_from,
        max_frames=args.max_frames,
        command=_command_line(args),
    )
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "indices"}, indent=2))
        return 0
    print(
        f"wrote {summary['path']} ({summary['storage']}): {summary['frames']} frames of {Path(summary['drive']).name}, "
        f"{summary['width']}×{summary['height']}, {summary['duration_s']:.1f} s, {summary['bytes'] / 1e6:.1f} MB, "
        f"in {summary['seconds']:.1f} s"
    )
    for topic, count in summary["counts"].items():
        note = ""
        if topic == TOPICS["depth"]:
            if summary["frames_without_depth"]:
                note += f"; no Velodyne scan for frame {_frame_list(summary['frames_without_depth'])}"
            if summary["median_valid_depth_fraction"] is not None:
                note += f"; median {100 * summary['median_valid_depth_fraction']:.1f} % of pixels valid"
        if topic == TOPICS["pose"]:
            if summary["frames_without_pose"]:
                note += f"; no oxts record for frame {_frame_list(summary['frames_without_pose'])}"
            if count:
                note += f"; path {summary['path_length_m']:.1f} m"
        print(f"  {topic}: {count}{note}")
    return 0
