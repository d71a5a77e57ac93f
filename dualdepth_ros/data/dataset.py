"""Torch datasets over decoded bags: :class:`ClipDataset` (training) and :class:`FrameSequence` (in order).

The item layout of :class:`ClipDataset` is documented in :mod:`dualdepth_ros.data`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import coerce_section
from ..errors import DualDepthError
from ..geometry import Intrinsics, relative_pose
from ..preprocess import DEFAULT_RESIZE_MODE, RESIZE_MODES, Preprocessor
from .augment import ColorJitter, flip_pose
from .bags import expand_bag_paths
from .clips import auto_max_gap_ns, sample_clips, split_clips, static_mask
from .frames import MOTION_PERCENTILES, FrameStore, default_cache_dir, load_frames

__all__ = ["DataConfig", "load_stores", "ClipDataset", "make_datasets", "Frame", "FrameSequence", "iter_frames"]

log = logging.getLogger(__name__)

_NS = 1_000_000_000


@dataclasses.dataclass
class DataConfig:
    """How bags become training clips (the ``data:`` section of the training config).

    Topics
    ------
    image_topic, camera_info_topic : None to auto-detect (:func:`.bags.select_topics`).
    intrinsics : ``"fx,fy,cx,cy"`` of the incoming images; replaces camera_info.
    gt_depth_topic, gt_pose_topic, gt_moving_mask_topic : optional ground truth (32FC1 metres
        or 16UC1 mm; a pose source of :mod:`.bags` — PoseStamped, PoseWithCovarianceStamped,
        Odometry, TransformStamped, or ``/tf:CHILD_FRAME``; mono8 non-zero = moving).

    Preprocessing
    -------------
    resize_mode : ``crop_center`` (default: crop to the model's aspect ratio around the centre,
        then resize), ``crop_bottom`` (the crop anchored at the bottom) or ``resize`` (the whole
        image, aspect not kept); see :mod:`dualdepth_ros.preprocess`. The model input size
        comes from the training config's ``input`` section. rectify : undistort raw images.
    rectify_gt : GT depth/masks are registered with the raw image (default: rectified grid).

    Clips
    -----
    frame_offsets : clip offsets in kept frames (must include 0), e.g. ``[-2, -1, 0, 1, 2]``.
        The trainer uses the frames its method needs (``losses.clip_layout``) and requires
        them to be listed here.
    static_threshold : image motion to the previous frame (sparse optical flow at
        ``static_percentile``, in pixels of the rectified camera image, whatever the model's input
        size) a frame needs to be kept (0 keeps all).
    static_percentile : which percentile of the tracked features' motion the filter reads, one of
        :data:`~.frames.MOTION_PERCENTILES`. 75 (default): a frame is moving when a quarter of its
        features move, so traffic keeping pace with the camera over up to three quarters of them
        does not hide the camera's motion; 50 (the median, before): up to half.
    max_gap_s : largest time between consecutive frames in a clip; None = 4 × median period.
    val_fraction, val_blocks, split_gap_s : ``val_fraction`` of each bag's clips (moving
        frames only) are validation, in ``val_blocks`` blocks spread over the drive, separated
        from training clips by ``split_gap_s`` seconds (:func:`.clips.split_clips`).

    Augmentation (training split only)
    ----------------------------------
    color_aug, color_aug_p, brightness, contrast, saturation, hue : colour jitter.
    flip, flip_p : horizontal flip.

    Cache
    -----
    cache_dir : ``"auto"`` (``$DUALDEPTH_CACHE`` or ``~/.cache/dualdepth_ros/frames``), a
        folder, or ``"memory"``/None to decode into memory on every run.
    """

    image_topic: str | None = None
    camera_info_topic: str | None = None
    intrinsics: str | None = None
    gt_depth_topic: str | None = None
    gt_pose_topic: str | None = None
    gt_moving_mask_topic: str | None = None
    resize_mode: Literal["resize", "crop_bottom", "crop_center"] = DEFAULT_RESIZE_MODE
    rectify: bool = True
    rectify_gt: bool = False
    frame_offsets: list[int] = dataclasses.field(default_factory=lambda: [-2, -1, 0, 1, 2])
    static_threshold: float = 1.0
    static_percentile: int = 75
    max_gap_s: float | None = None
    val_fraction: float = 0.1
    val_blocks: int = 3
    split_gap_s: float = 0.5
    color_aug: bool = True
    color_aug_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1
    flip: bool = True
    flip_p: float = 0.5
    cache_dir: str | None = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> DataConfig:
        """Raise :class:`DualDepthError` for impossible values."""
        if self.resize_mode not in RESIZE_MODES:
            raise DualDepthError(f"data.resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        offs = [int(o) for o in self.frame_offsets]
        if 0 not in offs or len(set(offs)) != len(offs):
            raise DualDepthError(f"data.frame_offsets must be distinct and include 0, got {self.frame_offsets}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DualDepthError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("color_aug_p", "flip_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DualDepthError(f"data.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_gap_s is not None and self.max_gap_s <= 0:
            raise DualDepthError(f"data.max_gap_s must be positive, got {self.max_gap_s}")
        if self.val_blocks < 1:
            raise DualDepthError(f"data.val_blocks must be at least 1, got {self.val_blocks}")
        if self.static_percentile not in MOTION_PERCENTILES:
            raise DualDepthError(
                f"data.static_percentile must be one of {MOTION_PERCENTILES}, got {self.static_percentile!r}"
            )
        if self.split_gap_s < 0 or self.static_threshold < 0:
            raise DualDepthError("data.split_gap_s and data.static_threshold must not be negative")
        return self

    @classmethod
    def coerce(cls, value: DataConfig | dict[str, Any] | None) -> DataConfig:
        """A :class:`DataConfig` from itself, a mapping (unknown keys are an error) or None."""
        return coerce_section(cls, value, "data")

    def preprocessor(self, width: int, height: int) -> Preprocessor:
        """The :class:`Preprocessor` for a model input of ``width × height``."""
        return Preprocessor(width, height, self.resize_mode, rectify=self.rectify, intrinsics=self.intrinsics)

    def cache_path(self) -> Path | None:
        if self.cache_dir is None or str(self.cache_dir).lower() in ("memory", "none", ""):
            return None
        if self.cache_dir == "auto":
            return default_cache_dir()
        return Path(self.cache_dir).expanduser()


def load_stores(
    bags: str | os.PathLike | Sequence[str | os.PathLike],
    config: DataConfig,
    width: int,
    height: int,
    progress: bool = False,
) -> list[FrameStore]:
    """Decode (or load from the cache) every bag; see :func:`.frames.load_frames`."""
    pre = config.preprocessor(width, height)
    stores = []
    for path in expand_bag_paths(bags):
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(desc=f"decoding {path.name}", unit="frame", leave=False)

        def report(done: int, total: int, bar: Any = bar) -> None:
            if bar is not None:
                bar.total = total
                bar.update(done - bar.n)

        try:
            store = load_frames(
                path,
                pre,
                image_topic=config.image_topic,
                camera_info_topic=config.camera_info_topic,
                gt_depth_topic=config.gt_depth_topic,
                gt_pose_topic=config.gt_pose_topic,
                gt_moving_mask_topic=config.gt_moving_mask_topic,
                rectify_gt=config.rectify_gt,
                cache_dir=config.cache_path(),
                progress=report,
            )
        finally:
            if bar is not None:
                bar.close()
        log.info(
            "%s: %d frames (%s)", path, len(store), "from cache" if store.from_cache else f"decoded {store.decoded}"
        )
        stores.append(store)
    return stores


def _clips_of(store: FrameStore, config: DataConfig, split: str) -> tuple[np.ndarray, dict[str, Any]]:
    keep = static_mask(store.motion_at(config.static_percentile), config.static_threshold)
    gap = int(config.max_gap_s * _NS) if config.max_gap_s is not None else auto_max_gap_ns(store.stamps)
    clips = sample_clips(store.stamps, keep, config.frame_offsets, gap)
    stats: dict[str, Any] = {"frames": len(store), "kept": int(keep.sum()), "clips": int(clips.shape[0])}
    note = ""
    if split != "all":
        train, val, note = split_clips(
            store.stamps, clips, config.val_fraction, int(config.split_gap_s * _NS), config.val_blocks
        )
        stats["val"] = int(val.size)
        clips = clips[train if split == "train" else val]
    stats["in_split"] = int(clips.shape[0])
    stats["note"] = note
    return clips, stats


class ClipDataset(Dataset):
    """Training clips from one or more decoded bags (item layout: :mod:`dualdepth_ros.data`).

    Parameters
    ----------
    stores : decoded bags (:func:`load_stores`); clips never span two bags.
    config : the data configuration.
    split : ``"train"``, ``"val"`` or ``"all"`` (time-based, see :mod:`.clips`).
    augment : colour jitter and flip as configured; default True for ``"train"`` only.
    gt_all_frames : ground-truth depth for every offset (``("gt_depth", o)``), not only the
        centre's ``("gt_depth", 0)`` (the photometric floor of ``dualdepth eval`` warps with it).

    Raises
    ------
    DualDepthError : the training split (or ``"all"``) has no clip; the message gives, per
        bag, the frames, the moving frames and the clips found.
    """

    def __init__(
        self,
        stores: Sequence[FrameStore],
        config: DataConfig,
        split: Literal["train", "val", "all"] = "train",
        augment: bool | None = None,
        gt_all_frames: bool = False,
        epipolar: bool = False,
    ) -> None:
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        self.stores = list(stores)
        self.config = config
        self.split = split
        self.augment = (split == "train") if augment is None else bool(augment)
        self.gt_all_frames = bool(gt_all_frames)
        self.epipolar = bool(epipolar)
        self._epipolar_cache: dict[tuple[int, int, int], np.ndarray | None] = {}
        self.offsets = [int(o) for o in config.frame_offsets]
        self._centre = self.offsets.index(0)
        self.jitter = ColorJitter(config.brightness, config.contrast, config.saturation, config.hue, config.color_aug_p)
        which, frames, self.stats = [], [], []
        for s, store in enumerate(self.stores):
            clips, stats = _clips_of(store, config, split)
            self.stats.append(stats)
            which.append(np.full(clips.shape[0], s, dtype=np.int64))
            frames.append(clips)
        k = len(self.offsets)
        self._store_of = np.concatenate(which) if which else np.zeros(0, np.int64)
        self._frames = np.concatenate(frames) if frames else np.zeros((0, k), np.int64)
        if len(self) == 0 and split != "val":
            raise DualDepthError(f"no usable {split} clips of {k} frames ({self.offsets}):\n{self.describe()}")

    def totals(self) -> dict[str, int]:
        """Frames, moving (kept) frames, clips, validation clips and clips in this split, over all bags."""
        keys = ("frames", "kept", "clips", "val", "in_split")
        return {k: int(sum(st.get(k, 0) for st in self.stats)) for k in keys}

    def threshold_text(self) -> str:
        """The still-camera rule in words, e.g. ``optical flow p75 ≥ 1 px of the 320x96 camera image``."""
        sizes = sorted({f"{s.source_width}x{s.source_height}" for s in self.stores})
        return (
            f"optical flow p{self.config.static_percentile} >= data.static_threshold = "
            f"{self.config.static_threshold:g} px of the {'/'.join(sizes)} camera image"
        )

    def validation_note(self) -> str:
        """Why a bag has no validation clips (one line; empty when every bag has some)."""
        notes = [f"{store.bag.name}: {st['note']}" for store, st in zip(self.stores, self.stats) if st.get("note")]
        return "; ".join(notes)

    def describe(self) -> str:
        """Per bag: frames, moving (kept) frames and the rule, clips, clips in this split."""
        lines = []
        for store, st in zip(self.stores, self.stats):
            hint = " — the camera never moves (or static_threshold is too high)" if st["kept"] < 2 else ""
            val = f", {st['val']} set aside for validation" if st.get("val") and self.split == "train" else ""
            lines.append(
                f"  {store.bag}: {st['frames']} frames, {st['kept']} moving ({self.threshold_text()}), "
                f"{st['clips']} clips of {len(self.offsets)} frames{val}, {st['in_split']} in {self.split}{hint}"
            )
        return "\n".join(lines)

    def __len__(self) -> int:
        return int(self._frames.shape[0])

    def _epipolar_motions(self, store: FrameStore, frames: np.ndarray, centre: int, flip: bool) -> dict:
        """``("epipolar", a, b)``: ``T_a_to_b`` with unit translation from the images alone (NaN if unsure),
        for each adjacent pair of the clip; see :mod:`.epipolar` (cached per frame pair).
        """
        from .epipolar import epipolar_motion

        K = store.K(centre).matrix()
        out = {}
        sid = self.stores.index(store)
        order = sorted(zip(self.offsets, frames))
        for (a, fa), (b, fb) in zip(order, order[1:]):
            key = (sid, int(fa), int(fb))
            if key not in self._epipolar_cache:
                self._epipolar_cache[key] = epipolar_motion(np.asarray(store.rgb[fa]), np.asarray(store.rgb[fb]), K)
            T = self._epipolar_cache[key]
            t = torch.full((4, 4), float("nan")) if T is None else torch.from_numpy(T)
            out[("epipolar", a, b)] = flip_pose(t) if (flip and T is not None) else t
        return out

    def drop_clips_without_pose(self) -> int:
        """Keep only clips whose every frame has a recorded pose (``pose.source: topic``); returns how many went."""
        ok = np.array(
            [
                self.stores[int(s)].gt_pose is not None and bool(np.isfinite(self.stores[int(s)].gt_pose[f]).all())
                for s, f in zip(self._store_of, self._frames)
            ],
            dtype=bool,
        )
        self._store_of, self._frames = self._store_of[ok], self._frames[ok]
        return int((~ok).sum())

    def clip_frames(self, index: int) -> tuple[FrameStore, np.ndarray]:
        """The store and the frame indices (one per offset) of clip ``index``."""
        return self.stores[int(self._store_of[index])], self._frames[index]

    def __getitem__(self, index: int) -> dict[Any, Any]:
        store, frames = self.clip_frames(index)
        cfg = self.config
        flip = self.augment and cfg.flip and float(torch.rand(1)) < cfg.flip_p
        jitter = self.jitter.sample() if (self.augment and cfg.color_aug) else None
        item: dict[Any, Any] = {}
        for o, f in zip(self.offsets, frames):
            rgb = np.asarray(store.rgb[f])
            if flip:
                rgb = rgb[:, ::-1]
            img = torch.from_numpy(Preprocessor.to_chw(np.ascontiguousarray(rgb)))
            item[("color", o)] = img
            item[("color_aug", o)] = ColorJitter.apply(img, jitter) if jitter is not None else img
        centre = int(frames[self._centre])
        K = store.K(centre)
        if flip:
            K = K.flipped()
        item["K"] = torch.from_numpy(K.matrix().astype(np.float32))
        if store.gt_depth is not None:
            for o, f in zip(self.offsets, frames):
                if o == 0 or self.gt_all_frames:
                    d = np.array(store.gt_depth[f], dtype=np.float32)  # a writable copy of the cache's row
                    item[("gt_depth", o)] = torch.from_numpy(np.ascontiguousarray(d[:, ::-1]) if flip else d)[None]
        if store.gt_moving is not None:
            m = np.asarray(store.gt_moving[centre]) != 0
            item[("gt_moving_mask", 0)] = torch.from_numpy(np.ascontiguousarray(m[:, ::-1] if flip else m))[
                None
            ].float()
        if store.gt_pose is not None:
            P0 = torch.from_numpy(np.asarray(store.gt_pose[centre]))[None]
            for o, f in zip(self.offsets, frames):
                T = relative_pose(P0, torch.from_numpy(np.asarray(store.gt_pose[f]))[None])[0]
                item[("gt_pose", o)] = (flip_pose(T) if flip else T).float()
        if self.epipolar:
            item.update(self._epipolar_motions(store, frames, centre, flip))
        item["stamp"] = int(store.stamps[centre])
        item["index"] = int(index)
        item["flipped"] = bool(flip)
        return item


def make_datasets(
    bags: str | os.PathLike | Sequence[str | os.PathLike],
    config: DataConfig | dict[str, Any] | None,
    width: int,
    height: int,
    progress: bool = False,
) -> tuple[ClipDataset, ClipDataset]:
    """``(train, val)`` datasets sharing one decode of the bags."""
    cfg = DataConfig.coerce(config)
    stores = load_stores(bags, cfg, width, height, progress=progress)
    return ClipDataset(stores, cfg, "train"), ClipDataset(stores, cfg, "val")


# ---------------------------------------------------------------------------------------
# Frames in order (evaluation, inference)
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Frame:
    """One frame of a bag, in order, with whatever ground truth the bag has.

    Attributes
    ----------
    index : position in the bag's frame sequence (header-stamp order).
    stamp : header stamp, ns. frame_id : the image's ``header.frame_id``.
    image : ``3×h×w`` float32 RGB in [0, 1] — exactly the network input.
    rgb : ``h×w×3`` uint8 RGB.
    intrinsics : the camera at ``w × h``.
    gt_depth : ``h×w`` float32 metres (0 = invalid) or None.
    gt_pose : 4×4 float64 pose as recorded (e.g. ``T_camera_to_world``) or None.
    moving_mask : ``h×w`` bool, True on moving objects, or None.
    moving : False for a frame that static-frame removal would drop.
    gt_depth_native : ``H×W`` float32 metres on the ground truth's own grid (the rectified
        camera image; 0 = invalid), where evaluation scores it; or None.
    gt_intrinsics : the intrinsics of that grid (``W × H``), or None.
    """

    index: int
    stamp: int
    frame_id: str
    image: np.ndarray
    rgb: np.ndarray
    intrinsics: Intrinsics
    gt_depth: np.ndarray | None
    gt_pose: np.ndarray | None
    moving_mask: np.ndarray | None
    moving: bool
    gt_depth_native: np.ndarray | None = None
    gt_intrinsics: Intrinsics | None = None


class FrameSequence(Sequence[Frame]):
    """All frames of one decoded bag in stamp order (no augmentation, no frame dropped).

    ``static_threshold`` only sets :attr:`Frame.moving`; use ``moving_only=True`` to skip
    the static frames instead.
    """

    def __init__(
        self, store: FrameStore, static_threshold: float = 0.0, moving_only: bool = False, static_percentile: int = 75
    ) -> None:
        self.store = store
        self._moving = static_mask(store.motion_at(static_percentile), static_threshold)
        self._index = np.flatnonzero(self._moving) if moving_only else np.arange(len(store))

    @classmethod
    def from_bag(
        cls,
        bag: str | os.PathLike,
        config: DataConfig | dict[str, Any] | None,
        width: int,
        height: int,
        moving_only: bool = False,
    ) -> FrameSequence:
        cfg = DataConfig.coerce(config)
        (store,) = load_stores([bag], cfg, width, height)
        return cls(store, cfg.static_threshold, moving_only, cfg.static_percentile)

    def __len__(self) -> int:
        return int(self._index.size)

    def __getitem__(self, i: int) -> Frame:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        j = int(self._index[i])
        s = self.store
        rgb = np.array(s.rgb[j])
        pose = None
        if s.gt_pose is not None and np.all(np.isfinite(s.gt_pose[j])):
            pose = np.array(s.gt_pose[j])
        return Frame(
            index=j,
            stamp=int(s.stamps[j]),
            frame_id=s.frame_id,
            image=Preprocessor.to_chw(rgb),
            rgb=rgb,
            intrinsics=s.K(j),
            gt_depth=np.array(s.gt_depth[j]) if s.gt_depth is not None else None,
            gt_pose=pose,
            moving_mask=(np.asarray(s.gt_moving[j]) != 0) if s.gt_moving is not None else None,
            moving=bool(self._moving[j]),
            gt_depth_native=np.array(s.gt_depth_native[j]) if s.gt_depth_native is not None else None,
            gt_intrinsics=s.source_K(j) if s.gt_depth_native is not None else None,
        )

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self[i]


def iter_frames(
    bag: str | os.PathLike, config: DataConfig | dict[str, Any] | None, width: int, height: int
) -> Iterator[Frame]:
    """Every frame of ``bag`` in order (see :class:`FrameSequence`)."""
    yield from FrameSequence.from_bag(bag, config, width, height)
