"""Which frames make training clips: static-frame removal, clip sampling, the train/val split.

All functions are pure and work on the arrays of a :class:`~dualdepth_ros.data.frames.FrameStore`.

Static frames
    A camera standing still gives the self-supervised losses nothing to learn from (and
    teaches the network that everything is infinitely far). As in SfMLearner's preprocessing
    (frames whose optical flow is below a pixel are dropped), a frame is kept only when its
    image motion to the previous frame — a percentile (``data.static_percentile``, 75 by default)
    of the sparse optical flow over tracked corners,
    :func:`~dualdepth_ros.data.frames.frame_motion`, in pixels of the rectified camera image
    (not of the model's input, so a drive keeps the same frames at any training size) —
    reaches ``threshold`` pixels. A percentile
    over corners, unlike a whole-image difference, stays at zero when other traffic passes a
    standing camera (the sample drive's stop has an oncoming car) and above it when traffic keeps
    pace with a moving camera (a jam: at the 75th percentile, up to three quarters of the corners
    may sit on vehicles that do not move in the image). A repeated frame run has
    zero motion and is dropped after its first frame; the motion is not accumulated over
    dropped frames, because sensor noise alone (≈0.01 px per frame) would then slowly add up.

Clips
    A clip is centred on a kept frame ``c`` and holds the kept frames at the configured
    ``offsets`` around it (in kept-frame steps, e.g. ``[-1, 0, 1]`` or ``[-2, -1, 0, 1, 2]``).
    It is used only when every gap between consecutive kept frames across its whole span
    is at most ``max_gap`` — a standstill, a recording pause or dropped frames break clips.

Split
    Per bag, among its clips (so among moving frames only: a drive that ends standing still
    still validates): ``round(val_fraction × clips)`` validation clips in ``blocks`` runs of
    consecutive clips, centred at evenly spaced points of the drive (early, middle, late
    traffic all appear); a training clip must end more than ``gap`` seconds before a
    validation block starts or begin more than ``gap`` after it ends, so the two splits never
    share a frame and are separated in time. Each block costs its gaps on both sides, so a
    short drive gets fewer blocks: as many as leave at least :data:`MIN_TRAIN_SHARE` of the
    clips to training. Too few clips for one validation clip, or for even one block, gives no
    validation split, and :func:`split_clips` says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["static_mask", "auto_max_gap_ns", "sample_clips", "split_clips"]

#: The validation split (blocks and gaps) must leave at least this share of a bag's clips to training.
MIN_TRAIN_SHARE = 0.5


def static_mask(motion: np.ndarray, threshold: float) -> np.ndarray:
    """Bool ``N`` array, True for frames to keep (see the module docstring).

    Parameters
    ----------
    motion : ``N`` median image motion of each frame to its predecessor, pixels (NaN: unknown).
    threshold : motion (pixels) a frame needs to be kept; ``<= 0`` keeps every frame. The
        first frame and frames of unknown motion are kept.
    """
    motion = np.asarray(motion, dtype=np.float64)
    if threshold <= 0 or motion.size == 0:
        return np.ones(motion.shape, dtype=bool)
    keep = ~(motion < threshold)  # NaN compares False: kept
    keep[0] = True
    return keep


def auto_max_gap_ns(stamps: np.ndarray, factor: float = 4.0) -> int:
    """Default maximum gap inside a clip: ``factor`` × the median frame period of the bag."""
    if stamps.size < 2:
        return 0
    return int(factor * float(np.median(np.diff(np.sort(stamps)))))


def sample_clips(stamps: np.ndarray, keep: np.ndarray, offsets: Sequence[int], max_gap_ns: int) -> np.ndarray:
    """Frame indices of every valid clip.

    Parameters
    ----------
    stamps : ``N`` int64 frame stamps (ns), non-decreasing.
    keep : ``N`` bool, frames that survived static-frame removal.
    offsets : clip offsets in kept-frame steps, must contain 0.
    max_gap_ns : largest allowed time between consecutive kept frames inside a clip.

    Returns
    -------
    ``M×len(offsets)`` int64 indices into the frames; column ``j`` is offset ``offsets[j]``.
    """
    offsets = [int(o) for o in offsets]
    if 0 not in offsets:
        raise ValueError(f"frame offsets must include 0 (the target frame), got {offsets}")
    kept = np.flatnonzero(keep)
    lo, hi = min(offsets), max(offsets)
    if kept.size < hi - lo + 1:
        return np.zeros((0, len(offsets)), dtype=np.int64)
    bad = np.diff(stamps[kept]) > max_gap_ns  # bad[k]: gap between kept k and k+1
    bad_cum = np.concatenate([[0], np.cumsum(bad)])
    centres = np.arange(-lo, kept.size - hi)
    # Gaps over the span [c+lo, c+hi] are bad[c+lo : c+hi].
    ok = (bad_cum[centres + hi] - bad_cum[centres + lo]) == 0
    centres = centres[ok]
    return kept[centres[:, None] + np.asarray(offsets)[None, :]].astype(np.int64)


def split_clips(
    stamps: np.ndarray, clips: np.ndarray, val_fraction: float, gap_ns: int, blocks: int = 3
) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and validation clips of one bag (module docstring).

    Parameters
    ----------
    stamps : ``N`` int64 frame stamps (ns).
    clips : ``M×k`` frame indices of the bag's clips in time order (:func:`sample_clips`).
    val_fraction : share of the clips used for validation, in ``[0, 1)`` (0 = none).
    gap_ns : least time between a training frame and a validation block.
    blocks : number of validation blocks spread over the drive (at most; see the module docstring).

    Returns
    -------
    train, val : int64 indices into ``clips`` (disjoint, in order).
    note : empty, or why there is no validation split (one line).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    m = int(clips.shape[0])
    everything, none = np.arange(m, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if val_fraction == 0.0:
        return everything, none, ""
    n_val = int(round(val_fraction * m))
    if n_val < 1:
        need = math.ceil(0.5 / val_fraction)
        return everything, none, f"{m} clips are too few for val_fraction {val_fraction:g} (it needs {need})"
    t = stamps[clips]
    lo, hi = t.min(axis=1), t.max(axis=1)
    for b in range(max(1, min(int(blocks), n_val)), 0, -1):  # fewer blocks when the gaps would cost too much
        train, val = _blocks(lo, hi, n_val, b, gap_ns)
        if train.sum() >= MIN_TRAIN_SHARE * m:
            return np.flatnonzero(train), np.flatnonzero(val), ""
    gap_s = gap_ns / 1e9
    return everything, none, f"{m} clips are too few to set {n_val} aside with a {gap_s:g} s gap and keep half to train"


def _blocks(lo: np.ndarray, hi: np.ndarray, n_val: int, blocks: int, gap_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation masks over clips spanning ``[lo, hi]``: ``n_val`` validation clips in ``blocks`` runs."""
    m = lo.size
    sizes = [n_val // blocks + (1 if k < n_val % blocks else 0) for k in range(blocks)]
    val = np.zeros(m, dtype=bool)
    for k, size in enumerate(sizes):
        start = int(round((k + 0.5) * m / blocks - size / 2))
        start = min(max(start, 0), m - size)
        val[start : start + size] = True
    train = ~val
    edges = np.flatnonzero(np.diff(np.concatenate([[0], val.astype(np.int8), [0]])))
    for a, b in zip(edges[::2], edges[1::2]):  # each run [a, b) of validation clips
        block_lo, block_hi = lo[a:b].min(), hi[a:b].max()
        train &= (hi < block_lo - gap_ns) | (lo > block_hi + gap_ns)
    return train, val
