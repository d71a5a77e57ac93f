"""Pinhole intrinsics of an image (:class:`Intrinsics`), importable without torch.

The class belongs to :mod:`dualdepth_ros.geometry` (which re-exports it and holds the
conventions: optical frame x right, y down, z forward; pixel centres at integer coordinates;
half-pixel resize rule ``c' = (c + 0.5)·s − 0.5``, ``f' = f·s``). It lives in its own module so
that the runtime path (preprocessing, the node, ONNX Runtime / TensorRT inference) can use it
on a machine without torch; only :meth:`Intrinsics.tensor` needs torch, imported when called.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Intrinsics", "FOV_RANGE_DEG", "PRINCIPAL_POINT_MARGIN"]

#: The field of view a camera matrix may give along each image axis, in degrees (pinhole:
#: ``2·atan(size / 2f)``). Real cameras, telephoto to fisheye-ish, lie well inside; values outside
#: come from a unit mistake or a corrupted calibration (e.g. ``fx = 1e-30`` gives 180°).
FOV_RANGE_DEG = (1.0, 175.0)
#: How far the principal point may lie outside the image, as a fraction of the image's size.
PRINCIPAL_POINT_MARGIN = 0.25


@dataclasses.dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics for an image of ``width`` × ``height`` pixels (pixels; conventions: module docstring)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_matrix(cls, K: Any, width: int, height: int) -> Intrinsics:
        """From a 3×3 (or 3×4, e.g. ``P``) matrix, row-major, as in CameraInfo."""
        K = np.asarray(K, dtype=np.float64).reshape(3, -1)
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), int(width), int(height))

    @classmethod
    def from_camera_info(cls, info: Any, use_projection: bool = False) -> Intrinsics:
        """From a ``sensor_msgs/CameraInfo`` (rclpy or rosbags message).

        ``use_projection`` takes ``P`` (the rectified camera) instead of ``K`` (the raw one).
        Field names are ``k``/``p`` in ROS 2 and ``K``/``P`` in ROS 1; both are accepted.
        """
        name = "p" if use_projection else "k"
        mat = getattr(info, name, None)
        if mat is None:
            mat = getattr(info, name.upper())
        mat = np.asarray(mat, dtype=np.float64)
        if not np.any(mat):
            raise ValueError(f"camera_info has an all-zero {name.upper()} matrix (uncalibrated camera)")
        return cls.from_matrix(mat, int(info.width), int(info.height))

    # -- derived ------------------------------------------------------------------------
    def matrix(self) -> np.ndarray:
        """The 3×3 matrix ``K`` as float64 numpy."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def tensor(self, batch: int | None = None, device: Any = None, dtype: Any = None) -> Any:
        """``K`` as a ``3×3`` torch tensor (float32 unless ``dtype``), or ``batch×3×3`` when ``batch`` is given."""
        import torch  # lazy: this module must import without torch

        K = torch.tensor(self.matrix(), device=device, dtype=dtype if dtype is not None else torch.float32)
        return K if batch is None else K.expand(batch, 3, 3).clone()

    def scaled(self, sx: float, sy: float | None = None) -> Intrinsics:
        """Intrinsics of the image resampled by factors ``sx``, ``sy`` (half-pixel rule).

        ``f' = f·s`` and ``c' = (c + 0.5)·s − 0.5``; the size becomes ``round(W·sx)``.
        """
        sy = sx if sy is None else sy
        return Intrinsics(
            self.fx * sx,
            self.fy * sy,
            (self.cx + 0.5) * sx - 0.5,
            (self.cy + 0.5) * sy - 0.5,
            int(round(self.width * sx)),
            int(round(self.height * sy)),
        )

    def resized(self, width: int, height: int) -> Intrinsics:
        """Intrinsics after resizing the whole image to ``width`` × ``height``."""
        sx, sy = width / self.width, height / self.height
        k = self.scaled(sx, sy)
        return dataclasses.replace(k, width=int(width), height=int(height))

    def cropped(self, x0: int, y0: int, width: int, height: int) -> Intrinsics:
        """Intrinsics of the crop whose top-left pixel is ``(x0, y0)`` in this image."""
        if x0 < 0 or y0 < 0 or x0 + width > self.width or y0 + height > self.height:
            raise ValueError(f"crop ({x0}, {y0}, {width}x{height}) does not fit in a {self.width}x{self.height} image")
        return Intrinsics(self.fx, self.fy, self.cx - x0, self.cy - y0, int(width), int(height))

    def flipped(self) -> Intrinsics:
        """Intrinsics of the horizontally mirrored image: ``cx' = W − 1 − cx``."""
        return dataclasses.replace(self, cx=self.width - 1 - self.cx)

    def fov_deg(self) -> tuple[float, float]:
        """Horizontal and vertical field of view in degrees, ``2·atan(size / 2f)`` (pinhole)."""
        return (
            float(np.degrees(2.0 * np.arctan(self.width / (2.0 * self.fx)))),
            float(np.degrees(2.0 * np.arctan(self.height / (2.0 * self.fy)))),
        )

    def check_plausible(self, name: str = "K") -> None:
        """Refuse intrinsics no camera has: a field of view outside :data:`FOV_RANGE_DEG` on either
        axis, or a principal point more than :data:`PRINCIPAL_POINT_MARGIN` of the image outside it.

        Parameters
        ----------
        name : what the intrinsics are called in the message (``"K"``, ``"P"``, ``"--intrinsics"``).

        Raises
        ------
        ValueError : one line naming the bad value.
        """
        lo, hi = FOV_RANGE_DEG
        fov_x, fov_y = self.fov_deg()
        for axis, direction, f, size, fov in (
            ("x", "horizontal", self.fx, self.width, fov_x),
            ("y", "vertical", self.fy, self.height, fov_y),
        ):
            if not lo <= fov <= hi:
                raise ValueError(
                    f"{name} gives a {direction} field of view of {fov:.4g} degrees (f{axis}={f:g} for {size} "
                    f"pixels); a camera has {lo:g}-{hi:g} degrees: check the calibration"
                )
        m = PRINCIPAL_POINT_MARGIN
        for axis, c, size in (("x", self.cx, self.width), ("y", self.cy, self.height)):
            if not -0.5 - m * size <= c <= size - 0.5 + m * size:
                raise ValueError(
                    f"{name} puts the principal point at c{axis}={c:g}, far outside the {self.width}x{self.height} "
                    f"image (allowed {-0.5 - m * size:g} to {size - 0.5 + m * size:g}): check the calibration"
                )

    def as_tuple(self) -> tuple[float, float, float, float, int, int]:
        return (self.fx, self.fy, self.cx, self.cy, self.width, self.height)

    def backproject(self, depth: np.ndarray, rows: slice | None = None) -> np.ndarray:
        """3-D points (numpy, no torch) of an ``H×W`` z-depth map at this resolution.

        Parameters
        ----------
        depth : ``H×W`` z-depth (any unit; NaN/non-positive values give NaN/invalid points).
        rows : optional row range of the image to back-project (e.g. ``slice(30, None)``).

        Returns
        -------
        ``h×W×3`` float32 points ``(X, Y, Z)`` in the camera's optical frame, same unit as
        ``depth`` (``h`` = rows selected): ``X = (u − cx)·Z / fx``, ``Y = (v − cy)·Z / fy``.
        """
        depth = np.asarray(depth, dtype=np.float32)
        if depth.shape != (self.height, self.width):
            raise ValueError(f"depth is {depth.shape[::-1]} but the intrinsics are for {self.width}x{self.height}")
        v0, v1, _ = (rows or slice(None)).indices(self.height)
        z = depth[v0:v1]
        u = (np.arange(self.width, dtype=np.float32) - np.float32(self.cx)) / np.float32(self.fx)
        v = (np.arange(v0, v1, dtype=np.float32) - np.float32(self.cy)) / np.float32(self.fy)
        return np.stack([u[None, :] * z, v[:, None] * z, z], axis=-1)
