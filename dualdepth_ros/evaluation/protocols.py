"""Evaluation protocols: which ground-truth pixels are scored, and in which depth range.

A protocol is named, chosen on the command line (``dualdepth eval --protocol``), printed
with the results and written into their JSON:

``kitti``
    The Eigen split protocol with Garg's crop, as monodepth2 and the papers report KITTI:
    ground truth in ``(1e-3, 80]`` metres, inside the crop of rows 40.8–99.2 % and columns
    3.6–96.4 % of the ground-truth image (Garg et al. 2016), predictions clamped to the same
    range.
``dense``
    The whole ground-truth image, ground truth in ``(1e-3, max_depth]`` metres (``max_depth``
    from ``--max-depth``, default 80 m), predictions clamped to it. For dense depth (a
    simulator, an RGB-D camera) and for cameras that are not KITTI-shaped.
``auto`` (default)
    ``kitti`` for sparse ground truth of KITTI's shape (aspect ratio within
    :data:`KITTI_ASPECT_TOLERANCE` of 1242:375 ≈ 3.31, e.g. 1242×375, 1241×376, 1226×370,
    1224×370, with fewer than :data:`SPARSE_FRACTION` of its pixels valid: projected LiDAR),
    ``dense`` for any other — dense ground truth (a simulator such as the 320×96 synthetic
    drives, an RGB-D camera) is scored on the whole image: Garg's crop exists because KITTI's
    LiDAR does not cover the top of the image.

Every protocol scores the prediction on the ground truth's own grid
(:mod:`dualdepth_ros.evaluation.grid`): the crop and the range apply to ground-truth pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = [
    "MIN_DEPTH",
    "MAX_DEPTH",
    "PROTOCOL_NAMES",
    "KITTI_ASPECT",
    "KITTI_ASPECT_TOLERANCE",
    "Protocol",
    "kitti",
    "dense",
    "resolve_protocol",
    "is_kitti_shaped",
    "garg_crop_mask",
]

#: The KITTI (Eigen) depth range, metres.
MIN_DEPTH = 1e-3
MAX_DEPTH = 80.0
#: Values of ``--protocol``.
PROTOCOL_NAMES = ("auto", "kitti", "dense")
#: KITTI's image aspect ratio (1242 / 375) and the relative tolerance of :func:`is_kitti_shaped`.
KITTI_ASPECT = 1242 / 375
KITTI_ASPECT_TOLERANCE = 0.05
#: ``auto`` takes ground truth with fewer valid pixels than this share for LiDAR (sparse).
SPARSE_FRACTION = 0.5
#: Garg's crop as fractions of the image height (rows) and width (columns).
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)


def is_kitti_shaped(height: int, width: int) -> bool:
    """True for an image whose aspect ratio is KITTI's (1242:375 ≈ 3.31, within 5 %)."""
    return abs((width / height) / KITTI_ASPECT - 1.0) <= KITTI_ASPECT_TOLERANCE


def garg_crop_mask(height: int, width: int) -> np.ndarray:
    """``H×W`` bool mask of the Garg/Eigen crop (rows 40.8–99.2 %, columns 3.6–96.4 %).

    The fractions are monodepth2's, truncated to integer pixel bounds as monodepth2 does.
    """
    top, bottom, left, right = (np.array(GARG_CROP) * [height, height, width, width]).astype(np.int32)
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One evaluation protocol (module docstring).

    Attributes
    ----------
    name : ``"kitti"`` or ``"dense"``.
    min_depth, max_depth : ground truth range (metres) and prediction clamp.
    garg_crop : score only inside Garg's crop.
    reason : how it was chosen (``"auto: …"``, ``"--protocol kitti"``).
    """

    name: str
    min_depth: float = MIN_DEPTH
    max_depth: float = MAX_DEPTH
    garg_crop: bool = False
    reason: str = ""

    def mask(self, height: int, width: int) -> np.ndarray | None:
        """The protocol's crop on an ``height × width`` ground-truth grid (None: every pixel)."""
        return garg_crop_mask(height, width) if self.garg_crop else None

    def describe(self) -> str:
        """One line, e.g. ``kitti (Garg crop, depth 0.001–80 m; auto: …)``."""
        region = "Garg crop" if self.garg_crop else "full image"
        why = f"; {self.reason}" if self.reason else ""
        return f"{self.name} ({region}, depth {self.min_depth:g}-{self.max_depth:g} m{why})"

    def as_dict(self) -> dict[str, Any]:
        """JSON form: name, range, crop, reason."""
        return {
            "name": self.name,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
            "crop": "garg" if self.garg_crop else None,
            "reason": self.reason,
        }


def kitti(reason: str = "") -> Protocol:
    """The ``kitti`` protocol: Garg crop, 1e-3–80 m."""
    return Protocol("kitti", MIN_DEPTH, MAX_DEPTH, True, reason)


def dense(max_depth: float = MAX_DEPTH, reason: str = "") -> Protocol:
    """The ``dense`` protocol: the full image, ``1e-3 … max_depth`` metres."""
    if not max_depth > MIN_DEPTH:
        raise ValueError(f"max_depth must exceed {MIN_DEPTH} m, got {max_depth}")
    return Protocol("dense", MIN_DEPTH, float(max_depth), False, reason)


def resolve_protocol(
    name: str | Protocol,
    gt_height: int,
    gt_width: int,
    max_depth: float | None = None,
    valid_fraction: float | None = None,
) -> Protocol:
    """The concrete protocol for ground truth of ``gt_height × gt_width`` pixels.

    Parameters
    ----------
    name : ``"auto"``, ``"kitti"``, ``"dense"`` or a :class:`Protocol` (returned as is).
    valid_fraction : share of the ground-truth pixels that are valid (``auto``: KITTI-shaped
        *and* below :data:`SPARSE_FRACTION` gives ``kitti``); None counts as sparse.
    max_depth : the ``dense`` cap (default 80 m); not allowed with ``"kitti"``, whose range
        is fixed.
    """
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOL_NAMES:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_NAMES)}; got {name!r}")
    if name == "kitti" and max_depth is not None:
        raise ValueError("the kitti protocol's depth range is fixed (1e-3-80 m); --max-depth applies to dense")
    cap = MAX_DEPTH if max_depth is None else float(max_depth)
    if name == "kitti":
        return kitti("--protocol kitti")
    if name == "dense":
        return dense(cap, "--protocol dense")
    aspect = gt_width / gt_height
    if not is_kitti_shaped(gt_height, gt_width):
        return dense(cap, f"auto: the {gt_width}x{gt_height} ground truth is not KITTI-shaped (aspect {aspect:.2f})")
    if valid_fraction is not None and valid_fraction >= SPARSE_FRACTION:
        return dense(
            cap,
            f"auto: the {gt_width}x{gt_height} ground truth has KITTI's aspect but is dense "
            f"({valid_fraction:.0%} of pixels valid, not LiDAR)",
        )
    return kitti(f"auto: the {gt_width}x{gt_height} ground truth has KITTI's aspect ({aspect:.2f}) and is sparse")
