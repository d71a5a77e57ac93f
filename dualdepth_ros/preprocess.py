"""The one preprocessing path from a camera message to the network's input.

Training (frames read from bags) and the live node use this module and nothing else, so a
frame becomes the same tensor in both::

    msg ──decode (images.decode_rgb)──► H×W×3 uint8 RGB
        ──rectify (CameraInfo maps)───► H×W×3 uint8, pinhole intrinsics (P, or K when P is 0)
        ──resize / crop───────────────► h×w×3 uint8, intrinsics via geometry.Intrinsics
        ──to_chw──────────────────────► 3×h×w float32 RGB in [0, 1]

Everything up to the last step works on uint8 images; the decoded-frame cache of the
training data stores exactly the uint8 result of :meth:`Preprocessor.prepare`, and both the
dataset and the node finish with the same :meth:`Preprocessor.to_chw`. The two paths
therefore agree bit for bit.

Rectification follows ``image_proc``: ``cv2.initUndistortRectifyMap(K, D, R, P)`` for
``plumb_bob`` and ``rational_polynomial``, ``cv2.fisheye.initUndistortRectifyMap`` for
``equidistant``; bilinear remapping; the rectified image is described by ``P[:3, :3]`` (or
by ``K`` when ``P`` is all zero). A camera with no distortion, identity ``R`` and ``P`` equal
to ``K`` is not remapped at all. Maps are computed once per distinct CameraInfo and cached.

Resize modes (``w × h`` is the model's input size, ``W × H`` the camera's):

``crop_center`` (the default)
    keep the geometry: crop the image to the model's aspect ratio ``w / h`` around its centre,
    then resize the crop to ``w × h``. Implemented as one uniform scale
    ``s = max(w / W, h / H)`` followed by a ``w × h`` window, which is the same thing (the
    window is the crop, seen at the scaled size); ``fx`` and ``fy`` scale alike.
``crop_bottom``
    as ``crop_center`` but the crop is anchored at the bottom of the image (keeps the road,
    drops sky) and centred horizontally.
``resize``
    scale the whole image to ``w × h``. The aspect ratio changes when the camera's differs
    from the model's (``fx`` and ``fy`` are scaled separately): a 4:3 camera fed to a 10:3
    model is squashed 2.5× vertically. Kept for cameras of the model's own aspect ratio.

:meth:`ResizePlan.describe` says in one line what a plan does to an image (``dualdepth
train`` and ``dualdepth eval`` print it); :meth:`ResizePlan.source_region` is the part of the
camera image the model sees (evaluation scores ground truth only there).

Downscaling uses ``cv2.INTER_AREA``, upscaling ``cv2.INTER_LINEAR``; maps (depth, masks)
use ``cv2.INTER_NEAREST_EXACT`` throughout so no invalid value is blended in.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from .errors import DualDepthError
from .images import MAX_DECODE_PIXELS, ImageDecodeError, check_decoded_size, decode_image, decode_rgb, is_compressed
from .intrinsics import Intrinsics

__all__ = [
    "RESIZE_MODES",
    "DEFAULT_RESIZE_MODE",
    "MIN_IMAGE_SIDE",
    "check_image_size",
    "PREPROCESS_VERSION",
    "PreprocessError",
    "FrameDecodeError",
    "ResizePlan",
    "plan_resize",
    "CameraModel",
    "PreprocessedFrame",
    "Preprocessor",
    "parse_intrinsics",
]

#: Accepted values of ``resize_mode``.
RESIZE_MODES = ("resize", "crop_bottom", "crop_center")
#: The default ``resize_mode``: crop to the model's aspect ratio around the centre, then resize.
DEFAULT_RESIZE_MODE = "crop_center"

#: Bumped whenever the output of :meth:`Preprocessor.prepare` could change for the same input;
#: part of the decoded-frame cache key.
PREPROCESS_VERSION = 2  # 2: images under MIN_IMAGE_SIDE, corrupt JPEGs and bad calibrations refused

#: The smallest camera image (each side, pixels) that is used. The depth network's encoder reduces its
#: input by 32 (five stride-2 stages) and every model input side is at least 32, so an image with a
#: side under 32 pixels holds less than one cell of the coarsest features at its own resolution:
#: resized to the model's input it is a blur with no structure to estimate depth or motion from
#: (a constant 1×1 image once passed the "moving" test of the training data).
MIN_IMAGE_SIDE = 32

#: Distortion models that rectification supports (``""``/``"none"`` only without distortion).
DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")


class PreprocessError(DualDepthError):
    """A frame that cannot be preprocessed: undecodable, uncalibrated, size mismatch, bad model."""


class FrameDecodeError(PreprocessError):
    """One message whose bytes cannot be decoded (the camera setup itself may be fine)."""


def check_image_size(width: int, height: int) -> None:
    """Refuse a camera image smaller than :data:`MIN_IMAGE_SIDE` on either side.

    Raises
    ------
    PreprocessError : ``width`` or ``height`` below the minimum.
    """
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise PreprocessError(
            f"image of {width}x{height} pixels is too small: each side must be at least {MIN_IMAGE_SIDE} pixels "
            "(the network's coarsest stride); use the camera's full-resolution image topic"
        )


# ---------------------------------------------------------------------------------------
# Resize / crop
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ResizePlan:
    """How an ``in_width × in_height`` image becomes ``width × height``.

    The image is first resized to ``scaled_width × scaled_height``, then the window whose
    top-left pixel is ``(x0, y0)`` and whose size is ``width × height`` is kept. ``mode`` is
    the ``resize_mode`` that made the plan (for :meth:`describe`).
    """

    in_width: int
    in_height: int
    scaled_width: int
    scaled_height: int
    x0: int
    y0: int
    width: int
    height: int
    mode: str = "resize"

    @property
    def is_identity(self) -> bool:
        return (self.scaled_width, self.scaled_height, self.width, self.height) == (
            self.in_width,
            self.in_height,
            self.in_width,
            self.in_height,
        )

    def source_region(self) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)`` of the input image that the output shows, in input pixels.

        Pixel edges, not centres: the full image is ``(0, 0, in_width, in_height)``.
        """
        sx = self.scaled_width / self.in_width
        sy = self.scaled_height / self.in_height
        return (self.x0 / sx, self.y0 / sy, (self.x0 + self.width) / sx, (self.y0 + self.height) / sy)

    def describe(self) -> str:
        """One line: what this plan does to an image (input size, crop region, scale, aspect)."""
        src = f"{self.in_width}x{self.in_height}"
        dst = f"{self.width}x{self.height}"
        if self.is_identity:
            return f"{src} used as is ({self.mode}: the model's size)"
        sx = self.scaled_width / self.in_width
        sy = self.scaled_height / self.in_height
        crops = (self.x0, self.y0, self.width, self.height) != (0, 0, self.scaled_width, self.scaled_height)
        if not crops:
            a_in, a_out = self.in_width / self.in_height, self.width / self.height
            change = abs(a_out / a_in - 1.0)
            shape = "aspect kept" if change < 0.02 else f"aspect {a_in:.2f} -> {a_out:.2f}: the image is distorted"
            return f"{src} resized to {dst} (x{sx:.4g}, y{sy:.4g}; {shape})"
        left, top, right, bottom = self.source_region()
        anchor = {"crop_bottom": "bottom", "crop_center": "centre"}.get(self.mode, self.mode)
        return (
            f"{src} cropped to the model's aspect ({anchor}: x {left:.1f}-{right:.1f}, y {top:.1f}-{bottom:.1f}, "
            f"{100 * (right - left) * (bottom - top) / (self.in_width * self.in_height):.0f}% of the image), "
            f"then resized to {dst} (x{sx:.4g})"
        )

    def intrinsics(self, K: Intrinsics) -> Intrinsics:
        """``K`` (at the input size) carried through the resize and the crop."""
        if (K.width, K.height) != (self.in_width, self.in_height):
            raise ValueError(
                f"intrinsics are for {K.width}x{K.height} but the plan is for {self.in_width}x{self.in_height}"
            )
        if self.is_identity:
            return K
        return K.resized(self.scaled_width, self.scaled_height).cropped(self.x0, self.y0, self.width, self.height)

    def apply(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        """Resize then crop an ``H×W`` or ``H×W×C`` array.

        ``nearest`` selects nearest-neighbour sampling (for depth maps and masks); otherwise
        area averaging when shrinking and bilinear when enlarging.
        """
        h, w = image.shape[:2]
        if (w, h) != (self.in_width, self.in_height):
            raise ValueError(f"image is {w}x{h} but the plan is for {self.in_width}x{self.in_height}")
        if self.is_identity:
            return image
        if (self.scaled_width, self.scaled_height) != (w, h):
            if nearest:
                interp = cv2.INTER_NEAREST_EXACT
            elif self.scaled_width <= w and self.scaled_height <= h:
                interp = cv2.INTER_AREA
            else:
                interp = cv2.INTER_LINEAR
            image = cv2.resize(image, (self.scaled_width, self.scaled_height), interpolation=interp)
        out = image[self.y0 : self.y0 + self.height, self.x0 : self.x0 + self.width]
        return np.ascontiguousarray(out)


def plan_resize(in_width: int, in_height: int, width: int, height: int, mode: str = DEFAULT_RESIZE_MODE) -> ResizePlan:
    """The :class:`ResizePlan` that takes an ``in_width × in_height`` image to ``width × height``.

    See the module docstring for the ``mode`` values.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}; got {mode!r}")
    if min(in_width, in_height, width, height) <= 0:
        raise ValueError(f"sizes must be positive: {in_width}x{in_height} -> {width}x{height}")
    if mode == "resize":
        return ResizePlan(in_width, in_height, width, height, 0, 0, width, height, mode)
    s = max(width / in_width, height / in_height)
    sw = max(width, int(round(in_width * s)))
    sh = max(height, int(round(in_height * s)))
    x0 = (sw - width) // 2
    y0 = sh - height if mode == "crop_bottom" else (sh - height) // 2
    return ResizePlan(in_width, in_height, sw, sh, x0, y0, width, height, mode)


# ---------------------------------------------------------------------------------------
# Camera model (rectification)
# ---------------------------------------------------------------------------------------
def _field(info: Any, name: str) -> Any:
    """A CameraInfo field by its ROS 2 name (``d, k, r, p``) or ROS 1 name (``D, K, R, P``)."""
    value = getattr(info, name, None)
    if value is None:
        value = getattr(info, name.upper(), None)
    if value is None:
        raise PreprocessError(f"camera_info has no field {name!r}; is this a sensor_msgs/CameraInfo?")
    return value


def parse_intrinsics(value: Any) -> tuple[float, float, float, float] | None:
    """Explicit intrinsics from ``"fx,fy,cx,cy"``, a 4-sequence or an :class:`Intrinsics`.

    Returns ``None`` for ``None``/empty input. Raises :class:`PreprocessError` when the
    value is malformed or the focal lengths are not positive.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Intrinsics):
        return (value.fx, value.fy, value.cx, value.cy)
    parts: Sequence[Any] = value.split(",") if isinstance(value, str) else value
    try:
        vals = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise PreprocessError(f"intrinsics must be 'fx,fy,cx,cy' (four numbers), got {value!r}") from None
    if len(vals) != 4 or not all(np.isfinite(vals)):
        raise PreprocessError(f"intrinsics must be 'fx,fy,cx,cy' (four finite numbers), got {value!r}")
    if vals[0] <= 0 or vals[1] <= 0:
        raise PreprocessError(f"focal lengths must be positive, got fx={vals[0]}, fy={vals[1]}")
    return vals  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class CameraModel:
    """Rectification of one camera, built from a CameraInfo (see :meth:`from_camera_info`).

    Attributes
    ----------
    raw : intrinsics ``K`` of the image as it arrives.
    rectified : intrinsics of the rectified image (``P[:3, :3]``, or ``K`` when ``P`` is 0).
    needs_remap : False when rectification is the identity (no distortion, ``R = I``, ``P = K``).
    """

    raw: Intrinsics
    rectified: Intrinsics
    distortion_model: str
    D: tuple[float, ...]
    R: tuple[float, ...]
    needs_remap: bool
    _maps: list = dataclasses.field(default_factory=list, compare=False, repr=False)

    @staticmethod
    def key(info: Any) -> tuple:
        """Hashable identity of a CameraInfo's calibration (header excluded)."""
        roi = getattr(info, "roi", None)
        roi_t = (
            tuple(int(getattr(roi, f, 0)) for f in ("x_offset", "y_offset", "width", "height")) if roi else (0, 0, 0, 0)
        )
        return (
            int(info.width),
            int(info.height),
            str(getattr(info, "distortion_model", "") or ""),
            tuple(float(x) for x in np.asarray(_field(info, "d"), dtype=np.float64).ravel()),
            tuple(float(x) for x in np.asarray(_field(info, "k"), dtype=np.float64).ravel()),
            tuple(float(x) for x in np.asarray(_field(info, "r"), dtype=np.float64).ravel()),
            tuple(float(x) for x in np.asarray(_field(info, "p"), dtype=np.float64).ravel()),
            int(getattr(info, "binning_x", 0) or 0),
            int(getattr(info, "binning_y", 0) or 0),
            roi_t,
        )

    @classmethod
    def from_camera_info(cls, info: Any) -> CameraModel:
        """Validate a CameraInfo and describe its rectification.

        Beyond the format, the calibration must be one a camera can have (one line naming the bad
        value otherwise): ``K`` and ``P`` give a field of view within
        :data:`~dualdepth_ros.intrinsics.FOV_RANGE_DEG` and a principal point in or near the image,
        their last rows are ``0 0 1 (0)``, ``R`` is a rotation, and the distortion keeps the
        rectification well behaved (:meth:`check_rectification`).

        Raises
        ------
        PreprocessError : all-zero ``K`` (uncalibrated), binning or ROI (not supported),
            an unknown distortion model with non-zero coefficients, an implausible calibration.
        """
        width, height, model, D, K, R, P, bx, by, roi = cls.key(info)
        if width <= 0 or height <= 0:
            raise PreprocessError(f"camera_info has no image size ({width}x{height})")
        if len(K) != 9 or not any(K):
            raise PreprocessError(
                "camera_info has an all-zero K matrix (uncalibrated camera); calibrate it or give explicit "
                "intrinsics fx,fy,cx,cy"
            )
        for name, values in (("K", K), ("P", P), ("R", R), ("D", D)):
            if not all(np.isfinite(values)):
                raise PreprocessError(f"camera_info has non-finite values (NaN/inf) in {name}: {list(values)}")
        if bx > 1 or by > 1 or any(roi):
            raise PreprocessError(
                f"camera_info uses binning ({bx}x{by}) or a region of interest {roi}; not supported, "
                "publish full-resolution images or give explicit intrinsics"
            )
        try:
            raw = Intrinsics.from_matrix(K, width, height)
            Kmat = np.asarray(K).reshape(3, 3)
            Pmat = np.asarray(P).reshape(3, 4) if len(P) == 12 else np.zeros((3, 4))
            new = Pmat[:, :3] if np.any(Pmat) else Kmat
            rectified = Intrinsics.from_matrix(new, width, height)
        except ValueError as err:
            raise PreprocessError(f"camera_info has an invalid camera matrix: {err}") from None
        if not np.allclose(Kmat[2], [0.0, 0.0, 1.0], rtol=0.0, atol=1e-6):
            raise PreprocessError(f"camera_info K has the last row {Kmat[2].tolist()}, not [0, 0, 1]")
        if np.any(Pmat) and not np.allclose(Pmat[2], [0.0, 0.0, 1.0, 0.0], rtol=0.0, atol=1e-6):
            raise PreprocessError(f"camera_info P has the last row {Pmat[2].tolist()}, not [0, 0, 1, 0]")
        try:
            raw.check_plausible("camera_info K")
            if np.any(Pmat):
                rectified.check_plausible("camera_info P")
        except ValueError as err:
            raise PreprocessError(str(err)) from None
        Rmat = np.asarray(R).reshape(3, 3) if len(R) == 9 and any(R) else np.eye(3)
        if not (np.allclose(Rmat @ Rmat.T, np.eye(3), atol=1e-3) and np.linalg.det(Rmat) > 0):
            raise PreprocessError(f"camera_info R is not a rotation matrix: {Rmat.ravel().tolist()}")
        has_distortion = any(abs(d) > 0 for d in D)
        model_l = model.lower()
        if has_distortion and model_l not in DISTORTION_MODELS:
            raise PreprocessError(
                f"camera_info distortion model {model!r} is not supported (use one of {', '.join(DISTORTION_MODELS)})"
            )
        if model_l == "equidistant" and has_distortion and len(D) < 4:
            raise PreprocessError(f"equidistant distortion needs 4 coefficients, camera_info has {len(D)}")
        if model_l != "equidistant" and has_distortion and len(D) not in (4, 5, 8, 12, 14):
            raise PreprocessError(f"{model} distortion with {len(D)} coefficients is not supported")
        needs_remap = has_distortion or not np.allclose(Rmat, np.eye(3)) or not np.allclose(new, Kmat)
        cam = cls(raw, rectified, model_l, tuple(D), tuple(Rmat.ravel()), needs_remap)
        if needs_remap:
            cam.check_rectification()
        return cam

    def _project(self, rays: np.ndarray, distorted: bool) -> np.ndarray:
        """Raw-image pixels ``N×2`` of rays ``N×3`` (``z > 0``), with or without this camera's distortion."""
        K, zero = self.raw.matrix(), np.zeros(3)
        if self.distortion_model == "equidistant":
            D = np.asarray(self.D[:4], dtype=np.float64) if distorted else np.zeros(4)
            pts, _ = cv2.fisheye.projectPoints(rays.reshape(-1, 1, 3), zero, zero, K, D)
        else:
            D = np.asarray(self.D, dtype=np.float64) if distorted and any(self.D) else np.zeros(5)
            pts, _ = cv2.projectPoints(rays, zero, zero, K, D)
        return pts.reshape(-1, 2)

    def check_rectification(self, samples: int = 97) -> None:
        """Refuse a rectification that is not well behaved over the image.

        The rectified image is sampled on a ``samples × samples`` grid; each sample's ray
        (through ``P`` and ``R``) is projected into the raw image with the distortion, by OpenCV's
        own model (what the remap maps do). The rays must lie in front of the camera and their
        pixels be finite; at least half of the rectified image must show the camera image (not the
        black outside it); and where the grid lands inside the raw image, every cell must keep its
        orientation against the same camera without distortion: a radial mapping that stops being
        monotonic folds the image, showing the same raw pixels twice, mirrored.

        Raises
        ------
        PreprocessError : one line naming the distortion (or ``R``/``P``) and what goes wrong.
        """
        rect, raw = self.rectified, self.raw
        R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        u, v = np.meshgrid(np.linspace(-0.5, rect.width - 0.5, samples), np.linspace(-0.5, rect.height - 0.5, samples))
        pix = np.stack([u, v, np.ones_like(u)], axis=-1).reshape(-1, 3)
        rays = pix @ np.linalg.inv(rect.matrix() @ R).T  # OpenCV's initUndistortRectifyMap: (P·R)⁻¹ [u v 1]
        if np.any(rays[:, 2] <= 1e-6 * np.linalg.norm(rays, axis=1)):
            raise PreprocessError(
                "camera_info R and P turn part of the rectified image behind the camera; check the calibration"
            )
        rays = rays / rays[:, 2:3]
        name = f"camera_info distortion D={list(self.D)} ({self.distortion_model})"
        with np.errstate(all="ignore"):
            pts = self._project(rays, distorted=True).reshape(samples, samples, 2)
            ideal = self._project(rays, distorted=False).reshape(samples, samples, 2)
            if not np.all(np.isfinite(pts)):
                raise PreprocessError(f"{name} maps part of the image to non-finite pixels; check the calibration")

            def cell_area(p: np.ndarray) -> np.ndarray:
                du, dv = p[:-1, 1:] - p[:-1, :-1], p[1:, :-1] - p[:-1, :-1]
                return du[..., 0] * dv[..., 1] - du[..., 1] * dv[..., 0]

            inside = (
                (pts[..., 0] >= -0.5)
                & (pts[..., 0] <= raw.width - 0.5)
                & (pts[..., 1] >= -0.5)
                & (pts[..., 1] <= raw.height - 0.5)
            )
            cells = inside[:-1, :-1] & inside[:-1, 1:] & inside[1:, :-1] & inside[1:, 1:]
            if cells.mean() < 0.5:
                raise PreprocessError(
                    f"{name} with this P shows the camera image in only {100 * cells.mean():.0f}% of the rectified "
                    "image (the rest would be black); check the calibration"
                )
            ratio = (cell_area(pts) / cell_area(ideal))[cells]
        if np.any(ratio <= 0):
            raise PreprocessError(
                f"{name} folds {100 * np.mean(ratio <= 0) * cells.mean():.1f}% of the rectified image over itself "
                "(the undistortion is not monotonic there: raw pixels would show twice, mirrored); the calibration "
                "does not cover the image's edges: recalibrate, or publish a P that keeps only valid pixels"
            )

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``cv2.remap`` maps (fixed point, ``CV_16SC2``), computed on first use."""
        if not self._maps:
            K = self.raw.matrix()
            P = self.rectified.matrix()
            R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
            size = (self.raw.width, self.raw.height)
            if self.distortion_model == "equidistant":
                D = np.asarray(self.D[:4], dtype=np.float64).reshape(4, 1)
                m1, m2 = cv2.fisheye.initUndistortRectifyMap(K, D, R, P, size, cv2.CV_16SC2)
            else:
                D = np.asarray(self.D, dtype=np.float64) if any(self.D) else np.zeros(5)
                m1, m2 = cv2.initUndistortRectifyMap(K, D, R, P, size, cv2.CV_16SC2)
            self._maps.extend([m1, m2])
        return self._maps[0], self._maps[1]

    def rectify(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        """Rectify an ``H×W[×C]`` image (bilinear, or nearest for depth maps and masks)."""
        if not self.needs_remap:
            return image
        m1, m2 = self.maps()
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        border = cv2.BORDER_CONSTANT
        fill = float("nan") if image.dtype.kind == "f" else 0
        return cv2.remap(image, m1, m2, interpolation=interp, borderMode=border, borderValue=fill)


# ---------------------------------------------------------------------------------------
# Preprocessor
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class PreprocessedFrame:
    """A frame ready for the network.

    Attributes
    ----------
    image : ``3×h×w`` float32 RGB in [0, 1] (the model input, without the batch axis).
    rgb : ``h×w×3`` uint8 RGB, the same pixels before normalisation.
    intrinsics : the camera at the output resolution (rectified pinhole).
    """

    image: np.ndarray
    rgb: np.ndarray
    intrinsics: Intrinsics

    def tensor(self, device: Any = None) -> Any:
        """The model input as a ``1×3×h×w`` float32 torch tensor (torch is imported here, not by the module)."""
        import torch

        return torch.from_numpy(self.image).unsqueeze(0).to(device)


class Preprocessor:
    """Decode → rectify → resize/crop → normalise, configured once for a model input size.

    Parameters
    ----------
    width, height : the model's input size in pixels.
    resize_mode : ``"crop_center"`` (default), ``"crop_bottom"`` or ``"resize"`` (module docstring).
    rectify : undistort/rectify raw images with the CameraInfo's calibration. Set to False
        for an already rectified topic (``image_rect``); its intrinsics are then ``P``.
    intrinsics : explicit ``fx, fy, cx, cy`` of the incoming images (a string
        ``"fx,fy,cx,cy"``, a 4-sequence or an :class:`Intrinsics`). They replace any
        CameraInfo (which may then be absent or uncalibrated); the images are taken as
        already undistorted.
    cache_size : how many distinct CameraInfo calibrations to keep maps for.
    max_image_pixels : the largest decoded size (width × height) of a compressed image; larger
        ones are refused from their header, before decoding (the node sets its ``max_image_pixels``).

    Images smaller than :data:`MIN_IMAGE_SIDE` on a side are refused (:class:`PreprocessError`).

    Examples
    --------
    >>> pre = Preprocessor(640, 192, "crop_bottom")
    >>> frame = pre(image_msg, camera_info_msg)   # doctest: +SKIP
    >>> frame.image.shape, frame.intrinsics       # doctest: +SKIP
    ((3, 192, 640), Intrinsics(...))
    """

    def __init__(
        self,
        width: int,
        height: int,
        resize_mode: str = DEFAULT_RESIZE_MODE,
        *,
        rectify: bool = True,
        intrinsics: Any = None,
        cache_size: int = 8,
        max_image_pixels: int = MAX_DECODE_PIXELS,
    ) -> None:
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"target size must be positive, got {width}x{height}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}; got {resize_mode!r}")
        self.width = int(width)
        self.height = int(height)
        self.resize_mode = resize_mode
        self.rectify = bool(rectify)
        self.explicit_intrinsics = parse_intrinsics(intrinsics)
        self._cache_size = max(1, int(cache_size))
        self.max_image_pixels = int(max_image_pixels)
        self._cameras: collections.OrderedDict[tuple, CameraModel] = collections.OrderedDict()
        self._lock = threading.Lock()  # the node may call from several callback threads

    def __repr__(self) -> str:
        return (
            f"Preprocessor({self.width}x{self.height}, resize_mode={self.resize_mode!r}, rectify={self.rectify}, "
            f"intrinsics={self.explicit_intrinsics})"
        )

    # -- configuration identity ---------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Everything that determines :meth:`prepare`'s output for a given input (cache key)."""
        return {
            "width": self.width,
            "height": self.height,
            "resize_mode": self.resize_mode,
            "rectify": self.rectify,
            "intrinsics": list(self.explicit_intrinsics) if self.explicit_intrinsics else None,
            "version": PREPROCESS_VERSION,
            "opencv": cv2.__version__,
        }

    # -- camera handling ----------------------------------------------------------------
    def camera(self, info: Any) -> CameraModel:
        """The (cached) :class:`CameraModel` of a CameraInfo message."""
        key = CameraModel.key(info)
        with self._lock:
            cam = self._cameras.get(key)
            if cam is None:
                cam = CameraModel.from_camera_info(info)
                if cam.needs_remap:
                    cam.maps()  # build the maps once, under the lock
                self._cameras[key] = cam
                while len(self._cameras) > self._cache_size:
                    self._cameras.popitem(last=False)
            else:
                self._cameras.move_to_end(key)
        return cam

    def _source(self, info: Any, width: int, height: int) -> tuple[CameraModel | None, Intrinsics]:
        """Rectifier (or None) and the intrinsics of the rectified full-size image."""
        if self.explicit_intrinsics is not None:
            fx, fy, cx, cy = self.explicit_intrinsics
            K = Intrinsics(fx, fy, cx, cy, width, height)
            try:
                K.check_plausible(f"intrinsics fx,fy,cx,cy for the {width}x{height} image")
            except ValueError as err:
                raise PreprocessError(str(err)) from None
            return None, K
        if info is None:
            raise PreprocessError("no camera_info for this image; record one or give explicit intrinsics fx,fy,cx,cy")
        cam = self.camera(info)
        if (cam.raw.width, cam.raw.height) != (width, height):
            raise PreprocessError(
                f"image is {width}x{height} but its camera_info describes {cam.raw.width}x{cam.raw.height}; "
                "use the camera_info that belongs to this image topic"
            )
        return (cam if self.rectify else None), cam.rectified

    def source_intrinsics(self, info: Any = None, width: int | None = None, height: int | None = None) -> Intrinsics:
        """Intrinsics of the rectified full-size image (before the resize/crop).

        ``width``/``height`` (the incoming image size) are needed only with explicit intrinsics
        and no CameraInfo.
        """
        if width is None or height is None:
            if info is None:
                raise PreprocessError("need camera_info or the input image size to compute intrinsics")
            width, height = int(info.width), int(info.height)
        return self._source(info, int(width), int(height))[1]

    def plan(self, in_width: int, in_height: int) -> ResizePlan:
        """The resize/crop applied to a (rectified) ``in_width × in_height`` image."""
        return plan_resize(in_width, in_height, self.width, self.height, self.resize_mode)

    def output_intrinsics(self, info: Any = None, width: int | None = None, height: int | None = None) -> Intrinsics:
        """Intrinsics at the output resolution, without an image (e.g. for ``depth/camera_info``).

        ``width``/``height`` (the incoming image size) are needed only with explicit intrinsics
        and no CameraInfo.
        """
        K = self.source_intrinsics(info, width, height)
        return self.plan(K.width, K.height).intrinsics(K)

    # -- the pipeline -------------------------------------------------------------------
    def decode(self, image: Any) -> np.ndarray:
        """``H×W×3`` uint8 RGB from an Image/CompressedImage message or an RGB array."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise PreprocessError(f"expected an H×W×3 uint8 RGB array, got {image.dtype} {image.shape}")
            return image
        try:
            if is_compressed(image):  # the decoded size from the header, before anything is decoded
                check_decoded_size(image.data, self.max_image_pixels)
            if self.max_image_pixels > MAX_DECODE_PIXELS:  # decode_rgb applies the default bound itself
                return decode_rgb(image, max_pixels=self.max_image_pixels)
            return decode_rgb(image)
        except ImageDecodeError as err:
            raise FrameDecodeError(f"cannot decode image: {err}") from None

    def prepare(self, image: Any, info: Any = None) -> tuple[np.ndarray, Intrinsics]:
        """Decode, rectify and resize/crop: ``h×w×3`` uint8 RGB and its intrinsics.

        Parameters
        ----------
        image : an Image or CompressedImage message (rosbags or rclpy), or an ``H×W×3``
            uint8 RGB array.
        info : its CameraInfo; may be None when explicit intrinsics were configured.

        Raises
        ------
        PreprocessError : undecodable image, an image smaller than :data:`MIN_IMAGE_SIDE`,
            missing or uncalibrated camera_info, an image whose size differs from the camera_info's,
            an unsupported distortion model.
        """
        rgb, K = self.rectified(image, info)
        plan = self.plan(K.width, K.height)
        return plan.apply(rgb), plan.intrinsics(K)

    def rectified(self, image: Any, info: Any = None) -> tuple[np.ndarray, Intrinsics]:
        """Decode and rectify only: the full-size ``H×W×3`` uint8 RGB and its intrinsics.

        The first half of :meth:`prepare` (same arguments and errors); :meth:`prepare` then
        applies :meth:`plan`. Measurements that must not depend on the model's input size
        (the still-camera filter of the training data) use this image.
        """
        rgb = self.decode(image)
        h, w = rgb.shape[:2]
        check_image_size(w, h)
        cam, K = self._source(info, w, h)
        if cam is not None:
            rgb = cam.rectify(rgb)
        return rgb, K

    def prepare_map(
        self, array: Any, info: Any = None, encoding: str | None = None, rectify: bool = False, full_size: bool = False
    ) -> np.ndarray:
        """Carry a per-pixel map (GT depth, a mask) through the same resize/crop as the images,
        with nearest-neighbour sampling.

        Parameters
        ----------
        array : an ``H×W`` array or an Image message (decoded to ``encoding``; ``None`` keeps
            the stored encoding).
        info : the camera's CameraInfo (as for :meth:`prepare`).
        rectify : the map is registered with the *raw* camera image, so rectify it first
            (nearest). The default assumes it already lies on the rectified pinhole grid, as
            simulator and projected-lidar ground truth usually does.
        full_size : stop after rectification: the map on the rectified camera image's grid
            (``H×W``, no resize/crop), where evaluation scores ground truth.

        Returns
        -------
        ``h×w`` (``H×W`` with ``full_size``) array of the input's dtype (float maps get NaN
        outside the rectified field).
        """
        if not isinstance(array, np.ndarray):
            try:
                array = decode_image(array, encoding)
            except ImageDecodeError as err:
                raise FrameDecodeError(f"cannot decode map image: {err}") from None
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim != 2:
            raise PreprocessError(f"expected a single-channel map, got shape {array.shape}")
        h, w = array.shape
        cam, K = self._source(info, w, h)
        if cam is not None and rectify:
            array = cam.rectify(array, nearest=True)
        if full_size:
            return array
        return self.plan(K.width, K.height).apply(array, nearest=True)

    @staticmethod
    def to_chw(rgb: np.ndarray) -> np.ndarray:
        """``h×w×3`` uint8 RGB → ``3×h×w`` float32 in [0, 1] (the only normalisation used)."""
        return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)

    def __call__(self, image: Any, info: Any = None) -> PreprocessedFrame:
        """The full pipeline: see :meth:`prepare` and :meth:`to_chw`."""
        rgb, K = self.prepare(image, info)
        return PreprocessedFrame(self.to_chw(rgb), rgb, K)
