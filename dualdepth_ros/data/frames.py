"""Decoded frames of one bag, built once and cached (:class:`FrameStore`, :func:`load_frames`).

A bag is decoded exactly once per (bag contents, topics, preprocessing): every image goes
through :meth:`Preprocessor.prepare <dualdepth_ros.preprocess.Preprocessor.prepare>` (decode →
rectify → resize/crop) and is stored as uint8 RGB at the model's input size, with its
intrinsics, header stamp, its image motion relative to the previous frame (for static-frame
detection, :func:`frame_motion`: percentiles of the tracked features' motion) and the ground
truth that matches it by header stamp (depth in metres, moving mask, pose).

The image motion is measured on the *rectified camera image* (before the resize/crop; images
wider than :data:`MOTION_MAX_WIDTH` are analysed at that width and the result scaled back), in
pixels of that image: it does not depend on the model's input size, so the same drive keeps
the same frames whatever size a model trains at.

Ground-truth depth is kept twice: at the model's input size (nearest neighbour, for training
clips and temporal stability) and on its own grid, the rectified camera image
(``gt_depth_native``), where evaluation scores it.

The cache lives on disk (raw ``uint8``/``float32`` arrays opened with ``numpy.memmap``, so
many bags need little RAM) under ``cache_dir/<bag>-<hash>/<key>/``, where the key hashes the
bag's absolute path, the size and mtime of every file in it, the requested topics and
:meth:`Preprocessor.params`. A changed bag gets a new key (its stale entries are deleted);
entries are written to a temporary folder and renamed into place, so concurrent readers
never see a half-written one. ``cache_dir=None`` keeps everything in memory instead.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import DualDepthError
from ..geometry import Intrinsics
from ..images import ImageDecodeError, decode_image
from ..preprocess import CameraModel, FrameDecodeError, PreprocessError, Preprocessor
from .bags import (
    CAMERA_INFO,
    Bag,
    BagError,
    PoseSource,
    TopicSelection,
    bag_fingerprint,
    header_stamp_ns,
    pose_samples,
    select_topics,
)

__all__ = [
    "STORE_VERSION",
    "MOTION_MAX_WIDTH",
    "MOTION_PERCENTILES",
    "default_cache_dir",
    "FrameStore",
    "load_frames",
    "frame_motion",
]

log = logging.getLogger(__name__)

#: Bumped when the layout or content of a cache entry changes.
STORE_VERSION = 4
#: Images wider than this are downscaled to it to measure their motion (:func:`frame_motion`).
MOTION_MAX_WIDTH = 640
#: Percentiles of the tracked features' motion kept per frame (:func:`frame_motion`); the
#: still-camera filter reads one of them (``data.static_percentile``).
MOTION_PERCENTILES = (50, 75, 90)


def default_cache_dir() -> Path:
    """``$DUALDEPTH_CACHE``, else ``$XDG_CACHE_HOME/dualdepth_ros/frames``, else ``~/.cache/…``."""
    env = os.environ.get("DUALDEPTH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dualdepth_ros" / "frames"


def frame_motion(prev_grey: np.ndarray, grey: np.ndarray, max_corners: int = 200) -> np.ndarray:
    """Image motion (pixels) between two grey frames, from sparse optical flow.

    Up to ``max_corners`` Shi–Tomasi corners of ``prev_grey`` are tracked into ``grey``
    (pyramidal Lucas–Kanade). Returns the :data:`MOTION_PERCENTILES` of their displacements
    (float64, one per percentile). Percentiles, unlike a whole-image difference, separate the
    camera's motion from other traffic's: the median stays at zero while traffic covering less
    than half of the features passes a standing camera, and the 75th percentile stays above zero
    while traffic keeping pace with a moving camera covers less than three quarters of them
    (``data.static_percentile``). All NaN when fewer than 8 features can be tracked (a
    textureless or black image: the motion is unknown).
    """
    unknown = np.full(len(MOTION_PERCENTILES), np.nan)
    pts = cv2.goodFeaturesToTrack(prev_grey, maxCorners=max_corners, qualityLevel=0.01, minDistance=5, blockSize=5)
    if pts is None or len(pts) < 8:
        return unknown
    nxt, status, _ = cv2.calcOpticalFlowPyrLK(prev_grey, grey, pts, None, winSize=(15, 15), maxLevel=2)
    ok = status.ravel() == 1
    if ok.sum() < 8:
        return unknown
    return np.percentile(np.linalg.norm((nxt - pts).reshape(-1, 2)[ok], axis=1), MOTION_PERCENTILES)


def _motions(rgb: np.ndarray) -> np.ndarray:
    """:func:`frame_motion` of every frame to its predecessor, ``N×P`` (NaN for the first)."""
    out = np.full((rgb.shape[0], len(MOTION_PERCENTILES)), np.nan, dtype=np.float32)
    prev = None
    for i in range(rgb.shape[0]):
        grey = cv2.cvtColor(np.asarray(rgb[i]), cv2.COLOR_RGB2GRAY)
        if prev is not None:
            out[i] = frame_motion(prev, grey)
        prev = grey
    return out


def _analysis_grey(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """Grey image for :func:`frame_motion` and the camera pixels per analysis pixel."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    if w <= MOTION_MAX_WIDTH:
        return grey, 1.0
    size = (MOTION_MAX_WIDTH, max(1, int(round(h * MOTION_MAX_WIDTH / w))))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA), w / MOTION_MAX_WIDTH


@dataclasses.dataclass
class FrameStore:
    """All frames of one bag after preprocessing, in header-stamp order.

    Attributes
    ----------
    bag : the bag's path.
    topics : the topics the frames came from.
    width, height : the frame size (the model input size).
    rgb : ``N×h×w×3`` uint8 RGB (memmap when cached on disk).
    stamps : ``N`` int64 header stamps, ns, non-decreasing.
    intrinsics : ``N×4`` float64 ``fx, fy, cx, cy`` at ``width × height``.
    motion : ``N×P`` float32 image motion to the previous frame at the :data:`MOTION_PERCENTILES`
        of the tracked features, in pixels of the rectified camera image (:func:`frame_motion`;
        NaN for the first frame and when unknown); :meth:`motion_at` picks one percentile.
    source_width, source_height : size of the rectified camera image (before resize/crop).
    source_intrinsics : ``N×4`` float64 ``fx, fy, cx, cy`` of the rectified camera image.
    gt_depth : ``N×h×w`` float32 metres, 0 = invalid/absent, or None without a depth topic.
    gt_depth_native : ``N×H×W`` float32 metres on the GT's own grid, the rectified camera
        image (``source_width × source_height``), 0 = invalid/absent; or None.
    gt_moving : ``N×h×w`` uint8, non-zero on moving objects, or None without a mask topic.
    gt_pose : ``N×4×4`` float64 poses from the pose topic (as recorded: the pose of the
        message's child frame in its ``header.frame_id``), NaN where no pose matched; or None.
    frame_id : the image's ``header.frame_id``.
    n_messages : image messages in the bag; ``n_messages − N`` could not be decoded.
    decoded : frames decoded when this store was made (0 when it came from the cache).
    from_cache : True when loaded from an existing cache entry.
    """

    bag: Path
    topics: TopicSelection
    width: int
    height: int
    rgb: np.ndarray
    stamps: np.ndarray
    intrinsics: np.ndarray
    motion: np.ndarray
    gt_depth: np.ndarray | None = None
    gt_moving: np.ndarray | None = None
    gt_pose: np.ndarray | None = None
    source_width: int = 0
    source_height: int = 0
    source_intrinsics: np.ndarray | None = None
    gt_depth_native: np.ndarray | None = None
    frame_id: str = ""
    n_messages: int = 0
    decoded: int = 0
    from_cache: bool = False
    cache_path: Path | None = None

    def __len__(self) -> int:
        return int(self.stamps.shape[0])

    def motion_at(self, percentile: int) -> np.ndarray:
        """``N`` image motion at one of the :data:`MOTION_PERCENTILES` (NaN where unknown)."""
        if percentile not in MOTION_PERCENTILES:
            raise DualDepthError(f"the image motion is kept at the percentiles {MOTION_PERCENTILES}, not {percentile}")
        return np.asarray(self.motion)[:, MOTION_PERCENTILES.index(percentile)]

    def K(self, i: int) -> Intrinsics:
        """Intrinsics of frame ``i`` at the store's resolution."""
        fx, fy, cx, cy = (float(v) for v in self.intrinsics[i])
        return Intrinsics(fx, fy, cx, cy, self.width, self.height)

    def source_K(self, i: int) -> Intrinsics:
        """Intrinsics of frame ``i``'s rectified camera image (the ground truth's grid)."""
        fx, fy, cx, cy = (float(v) for v in self.source_intrinsics[i])
        return Intrinsics(fx, fy, cx, cy, self.source_width, self.source_height)

    # Memmaps are reopened after unpickling (DataLoader workers with the spawn method)
    # instead of being copied into every worker.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.cache_path is not None:
            for name in ("rgb", "gt_depth", "gt_moving", "gt_depth_native"):
                if isinstance(state[name], np.memmap):
                    state[name] = ("memmap", state[name].shape, str(state[name].dtype))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in ("rgb", "gt_depth", "gt_moving", "gt_depth_native"):
            v = state.get(name)
            if isinstance(v, tuple) and v and v[0] == "memmap":
                npy = state["cache_path"] / f"{name}.npy"  # GT arrays are .npy files, the images raw
                if npy.exists():
                    state[name] = np.load(npy, mmap_mode="r")
                else:
                    state[name] = np.memmap(state["cache_path"] / f"{name}.raw", dtype=v[2], mode="r", shape=v[1])
        self.__dict__.update(state)


# ---------------------------------------------------------------------------------------
# Cache keys
# ---------------------------------------------------------------------------------------
def _request(
    bag: Path, pre: Preprocessor, topics: dict[str, str | None], fingerprint: list | None = None
) -> dict[str, Any]:
    return {
        "store_version": STORE_VERSION,
        "bag": str(bag.resolve()),
        "files": fingerprint if fingerprint is not None else bag_fingerprint(bag),
        "topics": topics,
        "preprocess": pre.params(),
    }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _bag_folder(cache_dir: Path, bag: Path) -> Path:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in bag.name)[:40]
    return cache_dir / f"{name}-{_digest(str(bag.resolve()))[:12]}"


# ---------------------------------------------------------------------------------------
# Writing arrays
# ---------------------------------------------------------------------------------------
class _Sink:
    """Appends equally shaped arrays to a raw file (or to a list in memory)."""

    def __init__(self, path: Path | None, dtype: Any) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.shape: tuple[int, ...] | None = None
        self.count = 0
        self._fh = open(path, "wb") if path is not None else None  # noqa: SIM115 - closed in finish()
        self._items: list[np.ndarray] = []

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if self.shape is None:
            self.shape = arr.shape
        elif arr.shape != self.shape:
            raise ValueError(f"frame shape changed from {self.shape} to {arr.shape}")
        if self._fh is not None:
            self._fh.write(arr.tobytes())
        else:
            self._items.append(arr)
        self.count += 1

    def finish(self, shape: tuple[int, ...]) -> np.ndarray:
        if self._fh is not None:
            self._fh.close()
            if self.count == 0:
                return np.zeros((0, *shape), self.dtype)
            return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.count, *shape))
        return np.stack(self._items) if self._items else np.zeros((0, *shape), self.dtype)

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()


# ---------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------
def _depth_metres(msg: Any) -> np.ndarray:
    """A depth Image as float32 metres (``16UC1``/``mono16`` are millimetres, REP 118)."""
    try:
        arr = decode_image(msg)
    except ImageDecodeError as err:
        raise FrameDecodeError(f"cannot decode depth image: {err}") from None
    if arr.ndim == 3:
        arr = arr[:, :, 0]
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 1000.0
    return arr.astype(np.float32)


class _InfoLookup:
    """The CameraInfo for an image: same header stamp, else the latest before it, else the first."""

    def __init__(self, infos: list[tuple[int, int, Any]]) -> None:
        self.by_stamp = {}
        for stamp, _, msg in infos:
            self.by_stamp.setdefault(stamp, msg)
        self.log_times = [t for _, t, _ in infos]
        self.msgs = [m for _, _, m in infos]

    def __call__(self, stamp: int, log_ns: int) -> Any:
        if not self.msgs:
            return None
        msg = self.by_stamp.get(stamp)
        if msg is not None:
            return msg
        i = bisect.bisect_right(self.log_times, log_ns) - 1
        return self.msgs[max(i, 0)]


def _match(stamps: np.ndarray, stamp: int, tolerance: int) -> int | None:
    """Index of the frame whose stamp equals ``stamp`` (or is nearest within ``tolerance``)."""
    i = int(np.searchsorted(stamps, stamp))
    best = None
    for j in (i - 1, i):
        if 0 <= j < stamps.size:
            d = abs(int(stamps[j]) - stamp)
            if d <= tolerance and (best is None or d < best[0]):
                best = (d, j)
    return None if best is None else best[1]


def _gt_grid_check(bag: Bag, gt_topic: str, K_src: Intrinsics) -> None:
    """A ``camera_info`` beside the GT depth topic must describe the rectified camera's grid."""
    info_topic = gt_topic.rsplit("/", 1)[0] + "/camera_info"
    topics = bag.topics()
    if info_topic not in topics or topics[info_topic][0] != CAMERA_INFO or topics[info_topic][1] == 0:
        return
    info = bag.first_message(info_topic)
    try:
        K_gt = CameraModel.from_camera_info(info).rectified
    except PreprocessError as err:
        raise BagError(f"bag {bag.path}, topic {info_topic}: {err}") from None
    same = (K_gt.width, K_gt.height) == (K_src.width, K_src.height) and np.allclose(
        K_gt.as_tuple()[:4], K_src.as_tuple()[:4], rtol=1e-6, atol=1e-6
    )
    if not same:
        raise BagError(
            f"bag {bag.path}: {info_topic} describes the ground truth's grid as {K_gt.width}x{K_gt.height} "
            f"(fx {K_gt.fx:g}, cx {K_gt.cx:g}, cy {K_gt.cy:g}) but the rectified camera image is "
            f"{K_src.width}x{K_src.height} (fx {K_src.fx:g}, cx {K_src.cx:g}, cy {K_src.cy:g}); ground-truth depth "
            "must lie on the rectified camera's grid (register it to the camera image first)"
        )


def _build(
    bag_path: Path,
    pre: Preprocessor,
    request: dict[str, Any],
    out_dir: Path | None,
    progress: Callable[[int, int], None] | None,
) -> FrameStore:
    with Bag(bag_path) as bag:
        sel = select_topics(
            bag,
            image_topic=request["image"],
            camera_info_topic=request["camera_info"],
            gt_depth_topic=request["gt_depth"],
            gt_pose_topic=request["gt_pose"],
            gt_moving_mask_topic=request["gt_moving_mask"],
            need_camera_info=pre.explicit_intrinsics is None,
        )
        n_msgs = bag.topics()[sel.image][1]
        pose_source = PoseSource.parse(sel.gt_pose) if sel.gt_pose else None
        # Pass 1: the small messages (camera infos, poses).
        infos: list[tuple[int, int, Any]] = []
        poses: list[tuple[int, np.ndarray]] = []
        small = [t for t in (sel.camera_info, pose_source.topic if pose_source else None) if t]
        pose_type = bag.topics()[pose_source.topic][0] if pose_source else ""
        for topic, log_ns, msg in bag.messages(small) if small else ():
            if topic == sel.camera_info:
                infos.append((header_stamp_ns(msg, log_ns), log_ns, msg))
            if pose_source is not None and topic == pose_source.topic:
                poses.extend(pose_samples(msg, pose_type, pose_source.child_frame, log_ns))
        if sel.camera_info and pre.explicit_intrinsics is None and not infos:
            raise BagError(f"bag {bag_path}: camera_info topic {sel.camera_info} has no messages")
        info_for = _InfoLookup(infos)
        # Pass 2: the images, and their motion on the rectified camera image.
        rgb_sink = _Sink(out_dir / "rgb.raw" if out_dir else None, np.uint8)
        stamps: list[int] = []
        logs: list[int] = []
        Ks: list[tuple[float, ...]] = []
        Ks_src: list[tuple[float, ...]] = []
        motion: list[float] = []
        source_size: tuple[int, int] | None = None
        prev_grey: np.ndarray | None = None
        frame_id = ""
        bad: list[str] = []
        try:
            for k, (_, log_ns, msg) in enumerate(bag.messages([sel.image])):
                stamp = header_stamp_ns(msg, log_ns)
                info = info_for(stamp, log_ns)
                try:
                    full, K_src = pre.rectified(msg, info)
                except FrameDecodeError as err:
                    bad.append(str(err))
                    continue
                except PreprocessError as err:
                    raise BagError(f"bag {bag_path}, topic {sel.image}: {err}") from None
                if source_size is None:
                    source_size = (K_src.width, K_src.height)
                elif source_size != (K_src.width, K_src.height):
                    raise BagError(
                        f"bag {bag_path}, topic {sel.image}: the image size changes from "
                        f"{source_size[0]}x{source_size[1]} to {K_src.width}x{K_src.height}"
                    )
                plan = pre.plan(K_src.width, K_src.height)
                K = plan.intrinsics(K_src)
                rgb_sink.append(plan.apply(full))
                grey, px = _analysis_grey(full)
                motion.append(
                    frame_motion(prev_grey, grey) * px
                    if prev_grey is not None
                    else np.full(len(MOTION_PERCENTILES), np.nan)
                )
                prev_grey = grey
                stamps.append(stamp)
                logs.append(log_ns)
                Ks.append((K.fx, K.fy, K.cx, K.cy))
                Ks_src.append((K_src.fx, K_src.fy, K_src.cx, K_src.cy))
                frame_id = frame_id or str(getattr(getattr(msg, "header", None), "frame_id", "") or "")
                if progress is not None:
                    progress(k + 1, n_msgs)
        finally:
            rgb_sink.close()
        if bad:
            log.warning("%s: %d of %d images could not be decoded (first: %s)", bag_path, len(bad), n_msgs, bad[0])
        if not stamps or source_size is None:
            detail = f" (first error: {bad[0]})" if bad else ""
            raise BagError(f"bag {bag_path}: no usable frames on {sel.image}{detail}")
        src_w, src_h = source_size
        rgb = rgb_sink.finish((pre.height, pre.width, 3))
        order = np.argsort(np.asarray(stamps, dtype=np.int64), kind="stable")
        sorted_stamps = np.asarray(stamps, dtype=np.int64)[order]
        period = int(np.median(np.diff(sorted_stamps))) if sorted_stamps.size > 1 else 0
        tolerance = period // 4
        if sel.gt_depth:
            K0 = Ks_src[0]
            _gt_grid_check(bag, sel.gt_depth, Intrinsics(*K0, src_w, src_h))
        # Pass 3: the per-pixel ground truth (matched by header stamp).
        gt: dict[str, np.ndarray | None] = {"gt_depth": None, "gt_moving": None, "gt_depth_native": None}
        for key, topic, dtype in (("gt_depth", sel.gt_depth, np.float32), ("gt_moving", sel.gt_moving_mask, np.uint8)):
            if topic is None:
                continue
            names = [key, "gt_depth_native"] if key == "gt_depth" else [key]
            shapes = {key: (len(stamps), pre.height, pre.width), "gt_depth_native": (len(stamps), src_h, src_w)}
            arrs = {}
            for name in names:
                if out_dir is not None:
                    arrs[name] = np.lib.format.open_memmap(
                        out_dir / f"{name}.npy", mode="w+", dtype=dtype, shape=shapes[name]
                    )
                else:
                    arrs[name] = np.zeros(shapes[name], dtype)
            matched = 0
            for _, log_ns, msg in bag.messages([topic]):
                stamp = header_stamp_ns(msg, log_ns)
                j = _match(sorted_stamps, stamp, tolerance)
                if j is None:
                    continue
                idx = int(order[j])
                info = info_for(int(stamps[idx]), int(logs[idx]))
                rectify = bool(request.get("rectify_gt"))
                try:
                    m = _depth_metres(msg) if key == "gt_depth" else decode_image(msg)
                    native = pre.prepare_map(m, info, rectify=rectify, full_size=True) if key == "gt_depth" else None
                    m = pre.prepare_map(m, info, rectify=rectify)
                except (FrameDecodeError, ImageDecodeError) as err:
                    log.warning("%s: skipping a %s message: %s", bag_path, topic, err)
                    continue
                except PreprocessError as err:
                    raise BagError(f"bag {bag_path}, topic {topic}: {err}") from None
                if key == "gt_depth":
                    if native.shape != (src_h, src_w):
                        raise BagError(
                            f"bag {bag_path}, topic {topic}: ground-truth depth is {native.shape[1]}x{native.shape[0]} "
                            f"but the camera image is {src_w}x{src_h}; it must lie on the camera image's grid"
                        )
                    m = np.where(np.isfinite(m) & (m > 0), m, 0.0)
                    arrs["gt_depth_native"][idx] = np.where(np.isfinite(native) & (native > 0), native, 0.0)
                else:
                    m = (m != 0).astype(np.uint8) if m.ndim == 2 else (m.max(axis=-1) != 0).astype(np.uint8)
                arrs[key][idx] = m
                matched += 1
            if matched == 0:
                log.warning("%s: no %s message matched an image stamp", bag_path, topic)
            for name, arr in arrs.items():
                if out_dir is not None:
                    arr.flush()
                    del arr
                    arrs[name] = np.load(out_dir / f"{name}.npy", mmap_mode="r")
                gt[name] = arrs[name]
    gt_pose = None
    if sel.gt_pose:
        gt_pose = np.full((len(stamps), 4, 4), np.nan)
        pose_stamps = np.asarray([s for s, _ in poses], dtype=np.int64)
        porder = np.argsort(pose_stamps, kind="stable")
        for i, s in enumerate(stamps):
            j = _match(pose_stamps[porder], int(s), tolerance) if pose_stamps.size else None
            if j is not None:
                gt_pose[i] = poses[int(porder[j])][1]
        if not np.isfinite(gt_pose).all(axis=(1, 2)).any():
            log.warning("%s: no %s pose matched an image stamp", bag_path, sel.gt_pose)
    store = FrameStore(
        bag=bag_path,
        topics=sel,
        width=pre.width,
        height=pre.height,
        rgb=rgb,
        stamps=np.asarray(stamps, dtype=np.int64),
        intrinsics=np.asarray(Ks, dtype=np.float64),
        motion=np.asarray(motion, dtype=np.float32).reshape(-1, len(MOTION_PERCENTILES)),
        gt_depth=gt["gt_depth"],
        gt_moving=gt["gt_moving"],
        gt_pose=gt_pose,
        source_width=src_w,
        source_height=src_h,
        source_intrinsics=np.asarray(Ks_src, dtype=np.float64),
        gt_depth_native=gt["gt_depth_native"],
        frame_id=frame_id,
        n_messages=n_msgs,
        decoded=len(stamps),
    )
    if not np.array_equal(order, np.arange(order.size)):
        store = _sort_by_stamp(store, order)
        # The motion was measured in arrival order; measure it again in stamp order, on the stored
        # frames (the full-size images are gone), converted to camera pixels by the plan's scale.
        plan = pre.plan(src_w, src_h)
        store.motion = (_motions(store.rgb) * (plan.in_width / plan.scaled_width)).astype(np.float32)
        log.warning(
            "%s: frames out of stamp order; their motion was measured at the model's input size and scaled "
            "to camera pixels (the still-camera filter may then differ slightly between input sizes)",
            bag_path,
        )
    return store


def _sort_by_stamp(store: FrameStore, order: np.ndarray) -> FrameStore:
    """The store in stamp order (a no-op when the bag's stamps were already ordered)."""
    if np.array_equal(order, np.arange(order.size)):
        return store
    log.warning("%s: image header stamps are not in recording order; sorting by stamp", store.bag)
    for name in (
        "rgb",
        "gt_depth",
        "gt_moving",
        "stamps",
        "intrinsics",
        "gt_pose",
        "source_intrinsics",
        "gt_depth_native",
    ):
        arr = getattr(store, name)
        if arr is not None:
            setattr(store, name, np.array(arr[order]))
    return store


# ---------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------
def _save_meta(store: FrameStore, out_dir: Path, request: dict[str, Any], key: str) -> None:
    np.savez(
        out_dir / "arrays.npz",
        stamps=store.stamps,
        intrinsics=store.intrinsics,
        motion=store.motion,
        gt_pose=store.gt_pose if store.gt_pose is not None else np.zeros((0, 4, 4)),
        source_intrinsics=store.source_intrinsics,
    )
    if not isinstance(store.rgb, np.memmap):
        # The rows were reordered in memory by _sort_by_stamp: write them out again.
        store.rgb.tofile(out_dir / "rgb.raw")
        for name in ("gt_depth", "gt_moving", "gt_depth_native"):
            arr = getattr(store, name)
            if arr is not None:
                np.save(out_dir / f"{name}.npy", np.asarray(arr))
    meta = {"key": key, "request": request, **store_description(store)}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))


def store_description(store: FrameStore) -> dict[str, Any]:
    """What a saved store's description file records besides its arrays (JSON-ready).

    Topics, frame count and size, the source camera size, the frame id, the bag's image message count
    and which ground truths it holds; :func:`store_from_saved` reads it back. Shared by the frame cache
    (``meta.json``) and :mod:`.gpu_cache` (``dualdepth_drive.json``).
    """
    return {
        "topics": dataclasses.asdict(store.topics),
        "n": len(store),
        "width": store.width,
        "height": store.height,
        "source_width": store.source_width,
        "source_height": store.source_height,
        "frame_id": store.frame_id,
        "n_messages": store.n_messages,
        "has_gt_depth": store.gt_depth is not None,
        "has_gt_moving": store.gt_moving is not None,
        "has_gt_pose": store.gt_pose is not None,
    }


def store_from_saved(
    bag: Path,
    meta: dict[str, Any],
    topics: dict[str, str | None],
    rgb: np.ndarray,
    arrays: Any,
    *,
    gt_depth: np.ndarray | None,
    gt_moving: np.ndarray | None,
    gt_pose: np.ndarray | None,
    gt_depth_native: np.ndarray | None,
    cache_path: Path | None = None,
) -> FrameStore:
    """A :class:`FrameStore` loaded from a saved one (``from_cache``, nothing decoded).

    Parameters
    ----------
    bag : the path the store reports as its bag.
    meta : its :func:`store_description` (sizes, frame id, message count).
    topics : role → topic (a :class:`~.bags.TopicSelection`'s fields).
    rgb : ``N×h×w×3`` uint8.
    arrays : a mapping (dict or ``NpzFile``) holding ``stamps`` (``N``), ``intrinsics`` and
        ``source_intrinsics`` (``N×4``) and ``motion`` (``N``).
    gt_depth, gt_moving, gt_pose, gt_depth_native : the ground truth, or None (see :class:`FrameStore`).
    cache_path : the frame-cache entry its memmaps come from, or None when held in memory.
    """
    return FrameStore(
        bag=bag,
        topics=TopicSelection(**topics),
        width=int(meta["width"]),
        height=int(meta["height"]),
        rgb=rgb,
        stamps=arrays["stamps"],
        intrinsics=arrays["intrinsics"],
        motion=arrays["motion"],
        gt_depth=gt_depth,
        gt_moving=gt_moving,
        gt_pose=gt_pose,
        source_width=int(meta["source_width"]),
        source_height=int(meta["source_height"]),
        source_intrinsics=arrays["source_intrinsics"],
        gt_depth_native=gt_depth_native,
        frame_id=meta["frame_id"],
        n_messages=int(meta["n_messages"]),
        decoded=0,
        from_cache=True,
        cache_path=cache_path,
    )


def _load_entry(entry: Path, bag_path: Path) -> FrameStore:
    meta = json.loads((entry / "meta.json").read_text())
    n, h, w = int(meta["n"]), int(meta["height"]), int(meta["width"])
    small = np.load(entry / "arrays.npz")
    rgb = np.memmap(entry / "rgb.raw", dtype=np.uint8, mode="r", shape=(n, h, w, 3))
    gt_depth = np.load(entry / "gt_depth.npy", mmap_mode="r") if meta["has_gt_depth"] else None
    gt_moving = np.load(entry / "gt_moving.npy", mmap_mode="r") if meta["has_gt_moving"] else None
    sw, sh = int(meta["source_width"]), int(meta["source_height"])
    native = np.load(entry / "gt_depth_native.npy", mmap_mode="r") if meta["has_gt_depth"] else None
    for arr, shape in ((gt_depth, (n, h, w)), (gt_moving, (n, h, w)), (native, (n, sh, sw))):
        if arr is not None and arr.shape != shape:
            raise ValueError(f"cached array has shape {arr.shape}, expected {shape}")
    return store_from_saved(
        bag_path,
        meta,
        meta["topics"],
        rgb,
        small,
        gt_depth=gt_depth,
        gt_moving=gt_moving,
        gt_pose=small["gt_pose"] if meta["has_gt_pose"] else None,
        gt_depth_native=native,
        cache_path=entry,
    )


def load_frames(
    bag: str | os.PathLike,
    preprocessor: Preprocessor,
    *,
    image_topic: str | None = None,
    camera_info_topic: str | None = None,
    gt_depth_topic: str | None = None,
    gt_pose_topic: str | None = None,
    gt_moving_mask_topic: str | None = None,
    rectify_gt: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FrameStore:
    """Decode (or load from the cache) every frame of one bag.

    Parameters
    ----------
    bag : a rosbag2 directory, ``.mcap``/``.db3`` file or ROS 1 ``.bag``.
    preprocessor : the preprocessing (size, resize mode, rectification, explicit intrinsics).
    image_topic, camera_info_topic : None to auto-detect (see :mod:`.bags`).
    gt_depth_topic, gt_pose_topic, gt_moving_mask_topic : optional ground truth.
    rectify_gt : the depth/mask images are registered with the raw (distorted) image and
        need rectifying; by default they lie on the rectified pinhole grid.
    cache_dir : folder of the on-disk cache; None keeps the frames in memory only.
    progress : called as ``progress(done, total)`` while decoding.

    Raises
    ------
    BagError : unreadable bag, topic problems, no usable frame.
    """
    bag_path = Path(bag)
    if not bag_path.exists():
        raise BagError(f"bag {bag_path} does not exist")
    request = {
        "image": image_topic,
        "camera_info": camera_info_topic,
        "gt_depth": gt_depth_topic,
        "gt_pose": gt_pose_topic,
        "gt_moving_mask": gt_moving_mask_topic,
        "rectify_gt": bool(rectify_gt),
    }
    from .gpu_cache import is_cached_drive, load_cached_drive

    if is_cached_drive(bag_path):  # already decoded by `dualdepth gpu-cache` (the same frames, no bag needed)
        return load_cached_drive(bag_path, preprocessor, request)
    if cache_dir is None:
        return _build(bag_path, preprocessor, request, None, progress)
    fingerprint = bag_fingerprint(bag_path)
    req = _request(bag_path, preprocessor, request, fingerprint)
    key = _digest(req)
    folder = _bag_folder(Path(cache_dir), bag_path)
    entry = folder / key
    if (entry / "meta.json").exists():
        try:
            return _load_entry(entry, bag_path)
        except (OSError, ValueError, KeyError) as err:
            log.warning("discarding unreadable cache entry %s: %s", entry, err)
            shutil.rmtree(entry, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        store = _build(bag_path, preprocessor, request, tmp, progress)
        _save_meta(store, tmp, req, key)
        with contextlib.suppress(OSError):
            os.replace(tmp, entry)  # fails only if another process finished the same entry first
        _remove_stale(folder, req)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    loaded = _load_entry(entry, bag_path)
    loaded.decoded = store.decoded
    loaded.from_cache = False
    return loaded


def _remove_stale(folder: Path, req: dict[str, Any]) -> None:
    """Delete entries of the same bag path whose bag files have changed since."""
    for entry in folder.iterdir():
        meta_path = entry / "meta.json"
        if entry.name.startswith(".") or not meta_path.exists():
            continue
        try:
            old = json.loads(meta_path.read_text())["request"]
        except (OSError, ValueError, KeyError):
            continue
        if old.get("bag") == req["bag"] and old.get("files") != json.loads(json.dumps(req["files"])):
            log.info("removing stale frame cache %s", entry)
            shutil.rmtree(entry, ignore_errors=True)
