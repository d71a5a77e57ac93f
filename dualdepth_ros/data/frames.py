"""Decoded frames of one bag, built once and cached (:class:`FrameStore`, :func:`load_frames`).

A bag is decoded exactly once per (bag contents, topics, preprocessing): every image goes
through :meth:`Preprocessor.prepare <dualdepth_ros.preprocess.Preprocessor.prepare>` (decode →
rectify → resize/crop) and is stored as uint8 RGB at the model's input size, with its
intrinsics, header stamp, its image motion relative to the previous frame (for static-frame
detection, :func:`frame_motion`) and the ground truth that matches it by header stamp
(depth in metres, moving mask, pose).

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

from ..bagio import pose_to_matrix
from ..geometry import Intrinsics
from ..images import ImageDecodeError, decode_image
from ..preprocess import FrameDecodeError, PreprocessError, Preprocessor
from .bags import Bag, BagError, TopicSelection, bag_fingerprint, header_stamp_ns, select_topics

__all__ = ["STORE_VERSION", "default_cache_dir", "FrameStore", "load_frames", "frame_motion"]

log = logging.getLogger(__name__)

#: Bumped when the layout or content of a cache entry changes.
STORE_VERSION = 2


def default_cache_dir() -> Path:
    """``$DUALDEPTH_CACHE``, else ``$XDG_CACHE_HOME/dualdepth_ros/frames``, else ``~/.cache/…``."""
    env = os.environ.get("DUALDEPTH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dualdepth_ros" / "frames"


def frame_motion(prev_grey: np.ndarray, grey: np.ndarray, max_corners: int = 200) -> float:
    """Median image motion (pixels) between two grey frames, from sparse optical flow.

    Up to ``max_corners`` Shi–Tomasi corners of ``prev_grey`` are tracked into ``grey``
    (pyramidal Lucas–Kanade); the median displacement is robust to other traffic moving in
    front of a standing camera, which a whole-image difference is not. NaN when fewer than 8
    features can be tracked (a textureless or black image: the motion is unknown).
    """
    pts = cv2.goodFeaturesToTrack(prev_grey, maxCorners=max_corners, qualityLevel=0.01, minDistance=5, blockSize=5)
    if pts is None or len(pts) < 8:
        return float("nan")
    nxt, status, _ = cv2.calcOpticalFlowPyrLK(prev_grey, grey, pts, None, winSize=(15, 15), maxLevel=2)
    ok = status.ravel() == 1
    if ok.sum() < 8:
        return float("nan")
    return float(np.median(np.linalg.norm((nxt - pts).reshape(-1, 2)[ok], axis=1)))


def _motions(rgb: np.ndarray) -> np.ndarray:
    """:func:`frame_motion` of every frame to its predecessor (NaN for the first)."""
    out = np.full(rgb.shape[0], np.nan, dtype=np.float32)
    prev = None
    for i in range(rgb.shape[0]):
        grey = cv2.cvtColor(np.asarray(rgb[i]), cv2.COLOR_RGB2GRAY)
        if prev is not None:
            out[i] = frame_motion(prev, grey)
        prev = grey
    return out


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
    motion : ``N`` float32 median image motion to the previous frame, pixels at ``width ×
        height`` (:func:`frame_motion`; NaN for the first frame and when unknown).
    gt_depth : ``N×h×w`` float32 metres, 0 = invalid/absent, or None without a depth topic.
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
    frame_id: str = ""
    n_messages: int = 0
    decoded: int = 0
    from_cache: bool = False
    cache_path: Path | None = None

    def __len__(self) -> int:
        return int(self.stamps.shape[0])

    def K(self, i: int) -> Intrinsics:
        """Intrinsics of frame ``i`` at the store's resolution."""
        fx, fy, cx, cy = (float(v) for v in self.intrinsics[i])
        return Intrinsics(fx, fy, cx, cy, self.width, self.height)

    # Memmaps are reopened after unpickling (DataLoader workers with the spawn method)
    # instead of being copied into every worker.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.cache_path is not None:
            for name in ("rgb", "gt_depth", "gt_moving"):
                if isinstance(state[name], np.memmap):
                    state[name] = ("memmap", state[name].shape, str(state[name].dtype))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in ("rgb", "gt_depth", "gt_moving"):
            v = state.get(name)
            if isinstance(v, tuple) and v and v[0] == "memmap":
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
        # Pass 1: the small messages (camera infos, poses).
        infos: list[tuple[int, int, Any]] = []
        poses: list[tuple[int, np.ndarray]] = []
        small = [t for t in (sel.camera_info, sel.gt_pose) if t]
        for topic, log_ns, msg in bag.messages(small) if small else ():
            if topic == sel.camera_info:
                infos.append((header_stamp_ns(msg, log_ns), log_ns, msg))
            else:
                pose = getattr(msg, "pose", msg)
                poses.append((header_stamp_ns(msg, log_ns), pose_to_matrix(getattr(pose, "pose", pose))))
        if sel.camera_info and pre.explicit_intrinsics is None and not infos:
            raise BagError(f"bag {bag_path}: camera_info topic {sel.camera_info} has no messages")
        info_for = _InfoLookup(infos)
        # Pass 2: the images.
        rgb_sink = _Sink(out_dir / "rgb.raw" if out_dir else None, np.uint8)
        stamps: list[int] = []
        logs: list[int] = []
        Ks: list[tuple[float, ...]] = []
        frame_id = ""
        bad: list[str] = []
        try:
            for k, (_, log_ns, msg) in enumerate(bag.messages([sel.image])):
                stamp = header_stamp_ns(msg, log_ns)
                info = info_for(stamp, log_ns)
                try:
                    rgb, K = pre.prepare(msg, info)
                except FrameDecodeError as err:
                    bad.append(str(err))
                    continue
                except PreprocessError as err:
                    raise BagError(f"bag {bag_path}, topic {sel.image}: {err}") from None
                rgb_sink.append(rgb)
                stamps.append(stamp)
                logs.append(log_ns)
                Ks.append((K.fx, K.fy, K.cx, K.cy))
                frame_id = frame_id or str(getattr(getattr(msg, "header", None), "frame_id", "") or "")
                if progress is not None:
                    progress(k + 1, n_msgs)
        finally:
            rgb_sink.close()
        if bad:
            log.warning("%s: %d of %d images could not be decoded (first: %s)", bag_path, len(bad), n_msgs, bad[0])
        if not stamps:
            detail = f" (first error: {bad[0]})" if bad else ""
            raise BagError(f"bag {bag_path}: no usable frames on {sel.image}{detail}")
        rgb = rgb_sink.finish((pre.height, pre.width, 3))
        order = np.argsort(np.asarray(stamps, dtype=np.int64), kind="stable")
        sorted_stamps = np.asarray(stamps, dtype=np.int64)[order]
        period = int(np.median(np.diff(sorted_stamps))) if sorted_stamps.size > 1 else 0
        tolerance = period // 4
        # Pass 3: the per-pixel ground truth (matched by header stamp).
        gt: dict[str, np.ndarray | None] = {"gt_depth": None, "gt_moving": None}
        for key, topic, dtype in (("gt_depth", sel.gt_depth, np.float32), ("gt_moving", sel.gt_moving_mask, np.uint8)):
            if topic is None:
                continue
            shape = (len(stamps), pre.height, pre.width)
            if out_dir is not None:
                arr = np.lib.format.open_memmap(out_dir / f"{key}.npy", mode="w+", dtype=dtype, shape=shape)
            else:
                arr = np.zeros(shape, dtype)
            matched = 0
            for _, log_ns, msg in bag.messages([topic]):
                stamp = header_stamp_ns(msg, log_ns)
                j = _match(sorted_stamps, stamp, tolerance)
                if j is None:
                    continue
                idx = int(order[j])
                info = info_for(int(stamps[idx]), int(logs[idx]))
                try:
                    m = _depth_metres(msg) if key == "gt_depth" else decode_image(msg)
                    m = pre.prepare_map(m, info, rectify=bool(request.get("rectify_gt")))
                except (FrameDecodeError, ImageDecodeError) as err:
                    log.warning("%s: skipping a %s message: %s", bag_path, topic, err)
                    continue
                except PreprocessError as err:
                    raise BagError(f"bag {bag_path}, topic {topic}: {err}") from None
                if key == "gt_depth":
                    m = np.where(np.isfinite(m) & (m > 0), m, 0.0)
                else:
                    m = (m != 0).astype(np.uint8) if m.ndim == 2 else (m.max(axis=-1) != 0).astype(np.uint8)
                arr[idx] = m
                matched += 1
            if matched == 0:
                log.warning("%s: no %s message matched an image stamp", bag_path, topic)
            if out_dir is not None:
                arr.flush()
                del arr
                arr = np.load(out_dir / f"{key}.npy", mmap_mode="r")
            gt[key] = arr
    gt_pose = None
    if sel.gt_pose:
        gt_pose = np.full((len(stamps), 4, 4), np.nan)
        pose_stamps = np.asarray([s for s, _ in poses], dtype=np.int64)
        porder = np.argsort(pose_stamps, kind="stable")
        for i, s in enumerate(stamps):
            j = _match(pose_stamps[porder], int(s), tolerance) if pose_stamps.size else None
            if j is not None:
                gt_pose[i] = poses[int(porder[j])][1]
    store = FrameStore(
        bag=bag_path,
        topics=sel,
        width=pre.width,
        height=pre.height,
        rgb=rgb,
        stamps=np.asarray(stamps, dtype=np.int64),
        intrinsics=np.asarray(Ks, dtype=np.float64),
        motion=np.zeros(0, np.float32),
        gt_depth=gt["gt_depth"],
        gt_moving=gt["gt_moving"],
        gt_pose=gt_pose,
        frame_id=frame_id,
        n_messages=n_msgs,
        decoded=len(stamps),
    )
    store = _sort_by_stamp(store, order)
    store.motion = _motions(store.rgb)
    return store


def _sort_by_stamp(store: FrameStore, order: np.ndarray) -> FrameStore:
    """The store in stamp order (a no-op when the bag's stamps were already ordered)."""
    if np.array_equal(order, np.arange(order.size)):
        return store
    log.warning("%s: image header stamps are not in recording order; sorting by stamp", store.bag)
    for name in ("rgb", "gt_depth", "gt_moving", "stamps", "intrinsics", "gt_pose"):
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
    )
    if not isinstance(store.rgb, np.memmap):
        # The rows were reordered in memory by _sort_by_stamp: write them out again.
        store.rgb.tofile(out_dir / "rgb.raw")
        for name in ("gt_depth", "gt_moving"):
            arr = getattr(store, name)
            if arr is not None:
                np.save(out_dir / f"{name}.npy", np.asarray(arr))
    meta = {
        "key": key,
        "request": request,
        "topics": dataclasses.asdict(store.topics),
        "n": len(store),
        "width": store.width,
        "height": store.height,
        "frame_id": store.frame_id,
        "n_messages": store.n_messages,
        "has_gt_depth": store.gt_depth is not None,
        "has_gt_moving": store.gt_moving is not None,
        "has_gt_pose": store.gt_pose is not None,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))


def _load_entry(entry: Path, bag_path: Path) -> FrameStore:
    meta = json.loads((entry / "meta.json").read_text())
    n, h, w = int(meta["n"]), int(meta["height"]), int(meta["width"])
    small = np.load(entry / "arrays.npz")
    rgb = np.memmap(entry / "rgb.raw", dtype=np.uint8, mode="r", shape=(n, h, w, 3))
    gt_depth = np.load(entry / "gt_depth.npy", mmap_mode="r") if meta["has_gt_depth"] else None
    gt_moving = np.load(entry / "gt_moving.npy", mmap_mode="r") if meta["has_gt_moving"] else None
    for arr in (gt_depth, gt_moving):
        if arr is not None and arr.shape != (n, h, w):
            raise ValueError(f"cached array has shape {arr.shape}, expected {(n, h, w)}")
    return FrameStore(
        bag=bag_path,
        topics=TopicSelection(**meta["topics"]),
        width=w,
        height=h,
        rgb=rgb,
        stamps=small["stamps"],
        intrinsics=small["intrinsics"],
        motion=small["motion"],
        gt_depth=gt_depth,
        gt_moving=gt_moving,
        gt_pose=small["gt_pose"] if meta["has_gt_pose"] else None,
        frame_id=meta["frame_id"],
        n_messages=int(meta["n_messages"]),
        decoded=0,
        from_cache=True,
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
