"""Carrying a prediction from the model's input grid onto the ground truth's grid.

The network sees a resized and/or cropped version of the rectified camera image
(:class:`~dualdepth_ros.preprocess.ResizePlan`); ground truth lies on its own grid (the
rectified camera image at full resolution, :mod:`dualdepth_ros.data.frames`). A
:class:`GridMap` holds, for every ground-truth pixel centre, its position in the prediction's
pixel grid, derived from the two grids' intrinsics with the projection functions of
:mod:`dualdepth_ros.geometry` (back-project at unit depth with ``K_gt``, project with
``K_pred``), so it follows the same half-pixel rule as the intrinsics of every resize and
crop. It is the inverse of the resize/crop plan.

* Ground-truth pixels whose centre falls outside the region the network saw (a crop keeps
  only part of the camera image) are not scored: :meth:`GridMap.inside` marks the others, and
  :meth:`GridMap.coverage` reports how much of the ground-truth grid that is.
* Depth is upsampled as monodepth2 does (``cv2.resize`` of the disparity to the ground
  truth's size): **bilinear interpolation of inverse depth**, the coordinates clamped to the
  prediction's edge (half a pixel at most); invalid predictions count as zero disparity.
  ``"nearest"`` takes the nearest prediction pixel instead. Maps that are not depth
  (confidence) are interpolated directly.

When both grids show the whole image (a plain resize), the mapping is ``u_pred = (u_gt +
0.5)·s − 0.5``: the same sample positions as ``cv2.resize``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch

from ..geometry import Intrinsics, backproject, project

__all__ = ["INTERPOLATIONS", "GridMap", "resize_prediction"]

#: Ways of upsampling the prediction to the ground-truth grid.
INTERPOLATIONS = ("bilinear", "nearest")


@dataclasses.dataclass(frozen=True, eq=False)
class GridMap:
    """Positions of a ground-truth grid's pixel centres in a prediction's pixel grid.

    Attributes
    ----------
    u, v : ``H×W`` float64 column and row coordinates, in prediction pixels, of each
        ground-truth pixel centre (``H×W`` is the ground truth's size).
    pred_width, pred_height : the prediction's size.
    """

    u: np.ndarray
    v: np.ndarray
    pred_width: int
    pred_height: int

    # -- construction -------------------------------------------------------------------
    @classmethod
    def between(cls, gt: Intrinsics, pred: Intrinsics) -> GridMap:
        """The map from a ground-truth grid to a prediction grid of the same camera.

        ``gt`` and ``pred`` are the two grids' pinhole intrinsics (same optical axis and
        orientation: one is a resize/crop of the other's image).
        """
        ones = torch.ones(1, 1, gt.height, gt.width, dtype=torch.float64)
        pix, _ = project(backproject(ones, gt.tensor(dtype=torch.float64)), pred.tensor(dtype=torch.float64))
        return cls(pix[0, 0].numpy(), pix[0, 1].numpy(), int(pred.width), int(pred.height))

    @classmethod
    def resize(cls, gt_height: int, gt_width: int, pred_height: int, pred_width: int) -> GridMap:
        """The map between two grids that both show the whole image (a plain resize)."""
        K = Intrinsics(1.0, 1.0, 0.0, 0.0, int(gt_width), int(gt_height))
        return cls.between(K, K.resized(int(pred_width), int(pred_height)))

    # -- what the network saw -----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """The ground truth's ``(H, W)``."""
        return self.u.shape  # type: ignore[return-value]

    @functools.cached_property
    def _inside(self) -> np.ndarray:
        tol = 1e-9
        inside = (
            (self.u >= -0.5 - tol)
            & (self.u <= self.pred_width - 0.5 + tol)
            & (self.v >= -0.5 - tol)
            & (self.v <= self.pred_height - 0.5 + tol)
        )
        inside.flags.writeable = False
        return inside

    def inside(self) -> np.ndarray:
        """``H×W`` bool (read-only): ground-truth pixels whose centre lies in the region the network saw."""
        return self._inside

    @functools.cached_property
    def _coverage(self) -> dict[str, Any]:
        inside = self._inside
        cols = np.flatnonzero(inside.any(axis=0))
        rows = np.flatnonzero(inside.any(axis=1))
        return {
            "fraction": float(inside.mean()),
            "columns": [int(cols[0]), int(cols[-1]) + 1] if cols.size else None,
            "rows": [int(rows[0]), int(rows[-1]) + 1] if rows.size else None,
        }

    def coverage(self) -> dict[str, Any]:
        """How much of the ground-truth grid the network saw.

        Returns ``{"fraction": share of GT pixels inside, "columns": [first, last + 1],
        "rows": [first, last + 1]}`` (GT pixel indices; None for an empty overlap).
        """
        return dict(self._coverage)

    # -- sampling -----------------------------------------------------------------------
    def sample(self, values: np.ndarray, mode: str = "bilinear", where: np.ndarray | None = None) -> np.ndarray:
        """``values`` (a ``pred_height × pred_width`` map) at the ground-truth pixel centres.

        Parameters
        ----------
        mode : ``"bilinear"`` or ``"nearest"``; coordinates are clamped to the map's edge.
        where : optional ``H×W`` bool; only those pixels are sampled.

        Returns
        -------
        ``H×W`` float64 map, or the 1-D values at ``where`` (row-major order).
        """
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.pred_height, self.pred_width):
            raise ValueError(f"map is {values.shape}, the grid map expects {(self.pred_height, self.pred_width)}")
        u, v = (self.u, self.v) if where is None else (self.u[where], self.v[where])
        u = np.clip(u, 0.0, self.pred_width - 1.0)
        v = np.clip(v, 0.0, self.pred_height - 1.0)
        if mode == "nearest":
            return values[np.rint(v).astype(np.int64), np.rint(u).astype(np.int64)]
        if mode != "bilinear":
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {mode!r}")
        u0 = np.floor(u).astype(np.int64)
        v0 = np.floor(v).astype(np.int64)
        u1 = np.minimum(u0 + 1, self.pred_width - 1)
        v1 = np.minimum(v0 + 1, self.pred_height - 1)
        du, dv = u - u0, v - v0
        top = values[v0, u0] * (1 - du) + values[v0, u1] * du
        bottom = values[v1, u0] * (1 - du) + values[v1, u1] * du
        return top * (1 - dv) + bottom * dv

    def sample_depth(self, depth: np.ndarray, mode: str = "bilinear", where: np.ndarray | None = None) -> np.ndarray:
        """A depth map at the ground-truth pixel centres, interpolated as inverse depth.

        Non-finite or non-positive depths count as zero disparity; a result with zero
        disparity is NaN. Shapes as :meth:`sample`.
        """
        depth = np.asarray(depth, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            disp = np.where(np.isfinite(depth) & (depth > 0), 1.0 / depth, 0.0)
            out = self.sample(disp, mode, where)
            return np.where(out > 0, 1.0 / out, np.nan)


def resize_prediction(pred: np.ndarray, height: int, width: int, mode: str = "bilinear") -> np.ndarray:
    """A whole-image prediction resized to ``height × width`` (inverse depth interpolated, monodepth2).

    For a prediction of the whole ground-truth image; a crop needs :meth:`GridMap.between`.
    """
    pred = np.asarray(pred)
    if pred.shape == (height, width):
        return pred
    grid = GridMap.resize(height, width, *pred.shape)
    return grid.sample_depth(pred, mode).astype(np.float32)
