"""Which frames make training clips: static-frame removal, clip sampling, the train/val split.

All functions are pure and work on the arrays of a :class:`~dualdepth_ros.data.frames.FrameStore`.

Static frames
    A camera standing still gives the self-supervised losses nothing to learn from (and
    teaches the network that everything is infinitely far). As in SfMLearner's preprocessing
    (frames whose optical flow is below a pixel are dropped), a frame is kept only when its
    image motion to the previous frame — the median sparse optical flow over tracked corners,
    :func:`~dualdepth_ros.data.frames.frame_motion` — reaches ``threshold`` pixels. The median
    over corners, unlike a whole-image difference, stays at zero when other traffic passes a
    standing camera (the sample drive's stop has an oncoming car). A repeated frame run has
    zero motion and is dropped after its first frame; the motion is not accumulated over
    dropped frames, because sensor noise alone (≈0.01 px per frame) would then slowly add up.

Clips
    A clip is centred on a kept frame ``c`` and holds the kept frames at the configured
    ``offsets`` around it (in kept-frame steps, e.g. ``[-1, 0, 1]`` or ``[-2, -1, 0, 1, 2]``).
    It is used only when every gap between consecutive kept frames across its whole span
    is at most ``max_gap`` — a standstill, a recording pause or dropped frames break clips.

Split
    Time-based per bag: the last ``val_fraction`` of the bag's time span is validation;
    training uses the frames that end at least ``gap`` seconds before it. A clip belongs to a
    split when all its frames do, so the two never share a frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["static_mask", "auto_max_gap_ns", "sample_clips", "split_masks"]


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


def split_masks(stamps: np.ndarray, val_fraction: float, gap_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` bool masks over the frames of one bag (time-based, disjoint).

    Parameters
    ----------
    stamps : ``N`` int64 frame stamps (ns).
    val_fraction : fraction of the bag's time span, at its end, used for validation (0 = none).
    gap_ns : time between the last training frame and the first validation frame.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if stamps.size == 0 or val_fraction == 0.0:
        return np.ones(stamps.shape, dtype=bool), np.zeros(stamps.shape, dtype=bool)
    t0, t1 = int(stamps.min()), int(stamps.max())
    boundary = t1 - val_fraction * (t1 - t0)
    val = stamps >= boundary
    train = stamps < boundary - gap_ns
    return train, val
