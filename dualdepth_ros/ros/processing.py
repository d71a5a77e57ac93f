"""One camera frame → what the node publishes; shared by ``depth_node`` and ``dualdepth infer``.

No ROS and no torch here: messages are duck-typed (rclpy messages and ``rosbags`` dataclasses
both work), so the live node and the bag-to-bag path run exactly the same code::

    Image / CompressedImage + CameraInfo
      ──check_image (size limits, encoding, step/data length; a compressed image's size from its header)
      ──ModelMetadata.preprocessor(): decode → rectify → resize/crop (intrinsics follow)
      ──Backend.infer(1×3×h×w) → depth (model units), confidence
      ──ScaleEstimator → factor (none / fixed / camera_height)
      ──mask: NaN outside [min_depth, max_depth] or below confidence_threshold
    → FrameOutput: depth h×w float32, confidence h×w float32 [0, 1], Intrinsics at h×w
    then, after the frame is published: update_scale(output) (the road-plane fit)

The ``camera_height`` scale applied to frame ``t`` is the smoothed estimate from the frames
before it; frame ``t``'s own road-plane fit is folded in by :meth:`FrameProcessor.update_scale`
once the frame is out, so the fit (about a millisecond) stays off the latency path. Only
while no scale is known yet (the first frames) is the fit done before publishing. The node
and ``dualdepth infer`` both call :meth:`~FrameProcessor.process` then
:meth:`~FrameProcessor.update_scale` for every frame, so they publish the same depths.

Errors are split by what the caller should do:

* :class:`~dualdepth_ros.preprocess.PreprocessError` (and its subclass :class:`InputError`):
  this frame or its CameraInfo is unusable (bad encoding, size mismatch, uncalibrated K …);
  skip it, the next frame may be fine.
* :class:`BackendError`: the backend raised; the model/device is in trouble (the node
  reports ERROR in its diagnostics until an inference succeeds again).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DualDepthError
from ..images import COLOUR_ENCODINGS, ImageDecodeError, check_image_layout, compressed_image_size, is_compressed
from ..intrinsics import Intrinsics
from ..preprocess import PreprocessError, check_image_size
from .params import OutputSettings, default_model_dir
from .scale import ScaleEstimator, ScaleSettings

__all__ = [
    "InputError",
    "BackendError",
    "ScaleUnknownError",
    "FrameOutput",
    "check_image",
    "apply_validity",
    "FrameProcessor",
    "open_model_backend",
]


class InputError(PreprocessError):
    """An input message the node refuses before decoding it (empty, too large, inconsistent)."""


class BackendError(DualDepthError):
    """The inference backend raised while running a frame (the message says what it raised)."""


class ScaleUnknownError(DualDepthError):
    """``scale_mode: camera_height`` has not found the road plane yet, so metres are unknown."""


@dataclasses.dataclass
class FrameOutput:
    """What one frame publishes.

    Attributes
    ----------
    depth : ``h×w`` float32, metres when the scale mode gives metres (else model units); NaN
        where invalid.
    confidence : ``h×w`` float32 in [0, 1].
    intrinsics : the rectified camera at ``w×h`` (the published resolution).
    scale : the factor applied to the network's depth.
    rgb : ``h×w×3`` uint8, the network's input pixels (for pictures).
    raw_depth : ``h×w`` float32 network depth in model units, before scaling and masking.
    timings : seconds spent in ``preprocess``, ``inference``, ``postprocess``.
    scale_pending : this frame's depth has not been given to the scale estimator yet.
    """

    depth: np.ndarray
    confidence: np.ndarray
    intrinsics: Intrinsics
    scale: float
    rgb: np.ndarray
    raw_depth: np.ndarray
    timings: dict[str, float]
    scale_pending: bool = False

    @property
    def valid_fraction(self) -> float:
        return float(np.isfinite(self.depth).mean())


def check_image(msg: Any, max_pixels: int) -> None:
    """Refuse a message before decoding it (cheap checks on the declared layout).

    A compressed image's size is read from its PNG/JPEG header (nothing is decoded), so an image
    that would decode to more than ``max_pixels`` is refused before it takes any memory.

    Raises
    ------
    InputError : empty payload, a 0×0 or larger-than-``max_pixels`` image, one with a side under
        :data:`~dualdepth_ros.preprocess.MIN_IMAGE_SIDE`, a compressed image that is neither PNG
        nor JPEG or whose header is corrupt, an encoding that is not a camera image,
        ``step``/``data`` lengths that disagree with the size.
    """
    if is_compressed(msg):
        n = len(msg.data)
        if n == 0:
            raise InputError("compressed image has no data")
        if n > 4 * max_pixels:
            raise InputError(f"compressed image of {n} bytes is larger than max_image_pixels={max_pixels} allows")
        try:
            w, h, kind = compressed_image_size(msg.data)
        except ImageDecodeError as err:
            raise InputError(str(err)) from None
        if w * h > max_pixels:
            raise InputError(
                f"compressed {kind.upper()} image would decode to {w}x{h} = {w * h} pixels, more than "
                f"max_image_pixels={max_pixels}; refused before decoding"
            )
        _check_min_size(w, h)
        return
    w, h = int(msg.width), int(msg.height)
    if w <= 0 or h <= 0:
        raise InputError(f"empty image ({w}x{h})")
    if w * h > max_pixels:
        raise InputError(f"image of {w}x{h} = {w * h} pixels is larger than max_image_pixels={max_pixels}")
    _check_min_size(w, h)
    if msg.encoding not in COLOUR_ENCODINGS:
        raise InputError(
            f"unsupported image encoding {msg.encoding!r} (a camera image is needed: {', '.join(COLOUR_ENCODINGS)})"
        )
    try:
        check_image_layout(msg)
    except ImageDecodeError as err:
        raise InputError(str(err)) from None


def _check_min_size(width: int, height: int) -> None:
    try:
        check_image_size(width, height)
    except PreprocessError as err:
        raise InputError(str(err)) from None


def apply_validity(depth: np.ndarray, confidence: np.ndarray, settings: OutputSettings) -> np.ndarray:
    """``depth`` (float32, new array) with NaN outside ``[min_depth, max_depth]`` and below the confidence threshold."""
    out = np.array(depth, dtype=np.float32, copy=True)
    with np.errstate(invalid="ignore"):
        invalid = ~np.isfinite(out) | (out < settings.min_depth) | (out > settings.max_depth)
        if settings.confidence_threshold > 0:
            invalid |= ~(confidence >= settings.confidence_threshold)
    out[invalid] = np.nan
    return out


class FrameProcessor:
    """The node's per-frame pipeline around one backend (module docstring).

    Parameters
    ----------
    backend : an open :class:`~dualdepth_ros.inference.Backend`; its ``metadata`` gives the
        preprocessing (size, resize mode, rectification).
    output : validity settings (replace :attr:`output` at any time).
    scale : scale settings (assign :attr:`scale_settings` at any time).
    max_image_pixels : larger inputs are refused (:func:`check_image`).

    Not thread-safe: one caller (the node's worker, or the ``infer`` loop) runs :meth:`process`.
    """

    def __init__(
        self,
        backend: Any,
        output: OutputSettings | None = None,
        scale: ScaleSettings | None = None,
        *,
        max_image_pixels: int = 16_777_216,
    ) -> None:
        self.backend = backend
        self.metadata = backend.metadata
        self.preprocessor = self.metadata.preprocessor()
        self.output = output or OutputSettings()
        self.scaler = ScaleEstimator(scale)
        self.max_image_pixels = int(max_image_pixels)

    @property
    def max_image_pixels(self) -> int:
        """Inputs larger than this (width × height, decoded) are refused."""
        return self._max_image_pixels

    @max_image_pixels.setter
    def max_image_pixels(self, value: int) -> None:
        self._max_image_pixels = int(value)
        self.preprocessor.max_image_pixels = self._max_image_pixels  # the decoder's own bound

    @property
    def scale_settings(self) -> ScaleSettings:
        return self.scaler.settings

    @scale_settings.setter
    def scale_settings(self, value: ScaleSettings) -> None:
        self.scaler.settings = value

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's input (= published) size ``(width, height)``."""
        return int(self.metadata.input_width), int(self.metadata.input_height)

    def output_intrinsics(self, info: Any) -> Intrinsics:
        """The camera at the published resolution for a CameraInfo (raises PreprocessError)."""
        return self.preprocessor.output_intrinsics(info)

    def process(self, image: Any, info: Any) -> FrameOutput:
        """Run one frame (see the module docstring for the steps and the errors raised).

        Call :meth:`update_scale` with the result once it is published.

        Raises
        ------
        PreprocessError : the frame or its CameraInfo cannot be used (InputError: refused before decoding).
        BackendError : the backend raised.
        ScaleUnknownError : camera_height mode has no road plane yet (the frame is not publishable).
        """
        t0 = time.perf_counter()
        check_image(image, self.max_image_pixels)
        frame = self.preprocessor(image, info)
        t1 = time.perf_counter()
        try:
            result = self.backend.infer(frame.image[None])
            raw = np.asarray(result.depth, dtype=np.float32)[0, 0]
            conf = np.asarray(result.confidence, dtype=np.float32)[0, 0]
        except Exception as err:  # noqa: BLE001 - any backend failure is reported, the node stays up
            raise BackendError(
                f"{getattr(self.backend, 'name', 'backend')} failed: {type(err).__name__}: {err}"
            ) from err
        t2 = time.perf_counter()
        if raw.shape != frame.rgb.shape[:2] or conf.shape != raw.shape:
            raise BackendError(
                f"backend returned depth {raw.shape} / confidence {conf.shape} for a {frame.rgb.shape[:2]} input"
            )
        scale = self.scaler.scale
        pending = True
        if scale is None:  # nothing known yet: this frame's own fit decides whether it can be published
            scale = self.scaler.update(raw, frame.intrinsics)
            pending = False
        if scale is None:
            raise ScaleUnknownError(
                "scale_mode camera_height: no road plane found yet (depth is not published until the scale is known; "
                f"last fit: {self.scaler.last_status})"
            )
        depth = apply_validity(raw * np.float32(scale), conf, self.output)
        confidence = np.clip(np.nan_to_num(conf, nan=0.0), 0.0, 1.0).astype(np.float32, copy=False)
        t3 = time.perf_counter()
        return FrameOutput(
            depth=depth,
            confidence=confidence,
            intrinsics=frame.intrinsics,
            scale=float(scale),
            rgb=frame.rgb,
            raw_depth=raw,
            timings={"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2},
            scale_pending=pending and self.scale_settings.mode == "camera_height",
        )

    def update_scale(self, out: FrameOutput) -> None:
        """Fold a processed frame's road-plane fit into the scale (call after publishing it)."""
        if out.scale_pending:
            out.scale_pending = False
            self.scaler.update(out.raw_depth, out.intrinsics)


def open_model_backend(params: dict[str, Any], log: Callable[[str], None] | None = None) -> Any:
    """Open the inference backend the parameters ask for (the node and `dualdepth infer` load models only here).

    Raises
    ------
    DualDepthError : missing, corrupt or mismatched model; unavailable backend.
    """
    from ..inference.derive import checkpoint_beside

    model_dir = Path(params["model_path"]) if params["model_path"] else default_model_dir()
    if not model_dir.exists() and checkpoint_beside(model_dir) is None:  # NAME.pt beside it: derived at first use
        raise DualDepthError(
            f"model folder {model_dir} does not exist (set model_path to a folder with model.onnx and model.json"
            + ("; the default model is made by `make export-default`" if not params["model_path"] else "")
            + ")"
        )
    from ..inference import open_backend

    return open_backend(
        model_dir,
        params["backend"],
        precision=params["precision"],
        device=params["device"],
        threads=int(params["threads"]) or None,
        engine_path=params["engine_path"] or None,
        force_engine_update=bool(params["force_engine_update"]),
        log=log,
    )
