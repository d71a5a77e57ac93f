"""Conversion between ``sensor_msgs/Image`` / ``CompressedImage`` messages and numpy arrays.

One module for every direction, used by the synthetic recorder, the bag reader and the node,
so a frame becomes the same array everywhere. Messages are duck-typed: rclpy messages and
``rosbags`` message dataclasses both work (fields ``height, width, encoding, is_bigendian,
step, data`` and ``format, data``).

Decoding of rclpy messages goes through ``cv_bridge`` when it is installed (a real ROS
machine); everything else through this module's own numpy/OpenCV conversions, which follow
``rosbags-image``'s rules (its encoding table and its OpenCV colour codes, so both give the same
arrays: tested) plus the row-stride handling that ``rosbags-image`` lacks. This module imports
neither torch nor rosbags: the runtime path (the node, ONNX Runtime / TensorRT inference) uses it.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any

import cv2
import numpy as np

__all__ = [
    "ImageDecodeError",
    "ImageError",
    "to_cvtype",
    "convert_color",
    "is_compressed",
    "decode_image",
    "decode_rgb",
    "check_image_layout",
    "image_fields",
    "compressed_fields",
]

#: Encodings that :func:`decode_rgb` turns into RGB (anything 1/3/4 channel, 8 or 16 bit, bayer).
COLOUR_ENCODINGS = (
    "rgb8",
    "bgr8",
    "rgba8",
    "bgra8",
    "mono8",
    "mono16",
    "rgb16",
    "bgr16",
    "rgba16",
    "bgra16",
    "bayer_rggb8",
    "bayer_bggr8",
    "bayer_gbrg8",
    "bayer_grbg8",
    "bayer_rggb16",
    "bayer_bggr16",
    "bayer_gbrg16",
    "bayer_grbg16",
)


class ImageDecodeError(ValueError):
    """A message that cannot be turned into an array: unknown encoding, short data, bad bytes."""


# ---------------------------------------------------------------------------------------
# Encodings and colour conversion (the rules of rosbags-image, without the dependency)
# ---------------------------------------------------------------------------------------
class ImageError(ValueError):
    """An encoding that is unknown, or a conversion between two encodings that is not supported."""


#: ROS encoding → (bits per channel, colour format, numpy dtype, channels). The bayer names are
#: OpenCV's, which shift the pattern by one pixel: ROS ``bayer_rggb`` is OpenCV ``BayerBG``.
_ENCODINGS: dict[str, tuple[int, str, str, int]] = {
    "mono8": (8, "GRAY", "uint8", 1),
    "bayer_rggb8": (8, "BAYER_BG", "uint8", 1),
    "bayer_bggr8": (8, "BAYER_RG", "uint8", 1),
    "bayer_gbrg8": (8, "BAYER_GR", "uint8", 1),
    "bayer_grbg8": (8, "BAYER_GB", "uint8", 1),
    "uyvy": (8, "YUV_UYVY", "uint8", 2),
    "yuv422": (8, "YUV_UYVY", "uint8", 2),
    "yuyv": (8, "YUV_YUYV", "uint8", 2),
    "yuv422_yuy2": (8, "YUV_YUYV", "uint8", 2),
    "nv12": (8, "YUV_NV12", "uint8", 1),
    "nv21": (8, "YUV_NV21", "uint8", 1),
    "bgr8": (8, "BGR", "uint8", 3),
    "rgb8": (8, "RGB", "uint8", 3),
    "bgra8": (8, "BGRA", "uint8", 4),
    "rgba8": (8, "RGBA", "uint8", 4),
    "mono16": (16, "GRAY", "uint16", 1),
    "bayer_rggb16": (16, "BAYER_BG", "uint16", 1),
    "bayer_bggr16": (16, "BAYER_RG", "uint16", 1),
    "bayer_gbrg16": (16, "BAYER_GR", "uint16", 1),
    "bayer_grbg16": (16, "BAYER_GB", "uint16", 1),
    "bgr16": (16, "BGR", "uint16", 3),
    "rgb16": (16, "RGB", "uint16", 3),
    "bgra16": (16, "BGRA", "uint16", 4),
    "rgba16": (16, "RGBA", "uint16", 4),
}
#: OpenCV-style generic encodings: ``8UC3``, ``32FC1``, ``16U`` …
_GENERIC_RE = re.compile(r"(8U|8S|16U|16S|32S|32F|64F)(?:C([0-9]+))?")
_GENERIC_DTYPES = {"8U": "uint8", "8S": "int8", "16U": "uint16", "16S": "int16", "32S": "int32", "32F": "float32"}
_GENERIC_DTYPES["64F"] = "float64"
_FORMATS = ("GRAY", "RGB", "BGR", "RGBA", "BGRA", "YUV_UYVY", "YUV_YUYV", "YUV_NV12", "YUV_NV21")
_FORMATS += ("BAYER_RG", "BAYER_BG", "BAYER_GB", "BAYER_GR")


def to_cvtype(encoding: str) -> tuple[int, str, str, int]:
    """``(bits per channel, colour format, numpy dtype name, channels)`` of a ROS image encoding.

    Generic encodings (``32FC1``, ``16UC3`` …) have the format ``"GENERIC"``.

    Raises
    ------
    ImageError : an unknown encoding.
    """
    if encoding in _ENCODINGS:
        return _ENCODINGS[encoding]
    match = _GENERIC_RE.fullmatch(encoding)
    if match:
        depth, nchan = match.groups()
        return (int(re.match(r"\d+", depth).group()), "GENERIC", _GENERIC_DTYPES[depth], int(nchan or 1))
    raise ImageError(f"Format {encoding!r} is not supported")


def _conversion_code(src: str, dst: str) -> int | None:
    """The ``cv2.COLOR_*`` code from format ``src`` to ``dst``; 0 when they are the same; None if none exists.

    Names are built as OpenCV spells them, e.g. ``BAYER_BG`` → ``RGB`` is ``COLOR_BAYER_BG2RGB`` and
    ``YUV_NV12`` → ``BGR`` is ``COLOR_YUV2BGR_NV12`` (both spellings are tried).
    """
    s, d = src.partition("_"), dst.partition("_")
    if s == d:
        return 0
    for name in (f"COLOR_{s[0]}2{d[0]}{s[1]}{s[2]}{d[1]}{d[2]}", f"COLOR_{s[0]}{s[1]}{s[2]}2{d[0]}{d[1]}{d[2]}"):
        code = getattr(cv2, name, None)
        if code is not None:
            return int(code)
    return None


def convert_color(src: np.ndarray, src_encoding: str, dst_encoding: str) -> np.ndarray:
    """Convert an image array from one ROS encoding to another (colour space and bit depth).

    Parameters
    ----------
    src : ``H×W`` or ``H×W×C`` array in ``src_encoding``.
    src_encoding, dst_encoding : ROS encodings (``"bayer_rggb8"``, ``"rgb8"``, ``"32FC1"`` …).

    Returns
    -------
    The array in ``dst_encoding`` (``src`` itself when the encodings are equal). 8 ↔ 16 bit
    scales by ``65535 / 255`` (16 → 8 truncates); other dtype changes are plain casts.

    Raises
    ------
    ImageError : an unknown encoding, or no conversion between the two.
    """
    if src_encoding == dst_encoding:
        return src
    src_depth, src_fmt, src_dtype, src_nchan = to_cvtype(src_encoding)
    dst_depth, dst_fmt, dst_dtype, dst_nchan = to_cvtype(dst_encoding)
    if "GENERIC" in (src_fmt, dst_fmt):
        if src_nchan != dst_nchan:
            raise ImageError(f"Conversion {src_encoding!r} -> {dst_encoding!r} is not supported")
        code = 0
    else:
        code = _conversion_code(src_fmt, dst_fmt)
        if code is None:
            raise ImageError(f"Conversion {src_encoding!r} -> {dst_encoding!r} is not supported")
    if code:
        src = cv2.cvtColor(src, code)
    if src_dtype != dst_dtype:
        if src_depth == 8 and dst_depth == 16:
            return np.multiply(src.astype(dst_dtype, copy=False), 65535.0 / 255.0)
        if src_depth == 16 and dst_depth == 8:
            return np.multiply(src, 255.0 / 65535.0).astype(dst_dtype, copy=False)
        return src.astype(dst_dtype, copy=False)
    return src


def is_compressed(msg: Any) -> bool:
    """True for a ``CompressedImage`` (it has ``format`` and no ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def _is_rclpy_message(msg: Any) -> bool:
    return type(msg).__module__.startswith("sensor_msgs.msg")


@functools.lru_cache(maxsize=1)  # looked up once: a failed import costs ~0.2 ms per frame otherwise
def _cv_bridge() -> Any | None:
    try:
        from cv_bridge import CvBridge  # type: ignore[import-not-found]
    except ImportError:
        return None
    return CvBridge()


def _raw_to_array(msg: Any) -> np.ndarray:
    """The pixels of a raw ``Image`` as stored (no colour conversion), honouring ``step``."""
    try:
        _, _, typestr, nchan = to_cvtype(msg.encoding)
    except ImageError as err:
        raise ImageDecodeError(f"unsupported image encoding {msg.encoding!r}") from err
    h, w = int(msg.height), int(msg.width)
    dtype = np.dtype(typestr)
    row_bytes = w * nchan * dtype.itemsize
    step = int(msg.step) or row_bytes
    buf = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    if h == 0 or w == 0:
        raise ImageDecodeError(f"empty image ({w}x{h})")
    if step < row_bytes or buf.size < step * (h - 1) + row_bytes:
        raise ImageDecodeError(f"image data too short: {buf.size} bytes for {w}x{h} {msg.encoding} with step {step}")
    rows = np.lib.stride_tricks.as_strided(buf, shape=(h, row_bytes), strides=(step, 1))
    arr = np.ascontiguousarray(rows).view(dtype)
    arr = arr.reshape((h, w) if nchan == 1 else (h, w, nchan))
    if dtype.itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == "big"):
        arr = arr.byteswap()
    return arr


def check_image_layout(msg: Any) -> None:
    """Check a raw ``Image``'s declared layout without decoding it.

    Raises
    ------
    ImageDecodeError : unknown encoding, a 0×0 image, ``step`` shorter than a row, or ``data``
        whose length is not ``step × height`` (what ``sensor_msgs/Image`` requires).
    """
    try:
        _, _, typestr, nchan = to_cvtype(msg.encoding)
    except ImageError as err:
        raise ImageDecodeError(f"unsupported image encoding {msg.encoding!r}") from err
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageDecodeError(f"empty image ({w}x{h})")
    row_bytes = w * nchan * np.dtype(typestr).itemsize
    if step < row_bytes:
        raise ImageDecodeError(f"step {step} is shorter than one {w}-pixel {msg.encoding} row ({row_bytes} bytes)")
    n = len(msg.data)
    if n != step * h:
        raise ImageDecodeError(
            f"data has {n} bytes but step {step} x height {h} = {step * h} (step/data length mismatch)"
        )


def decode_image(msg: Any, encoding: str | None = None) -> np.ndarray:
    """Decode an ``Image`` or ``CompressedImage`` to a numpy array.

    Parameters
    ----------
    msg : the message.
    encoding : the wanted encoding (``"rgb8"``, ``"mono8"``, ``"32FC1"`` …); ``None`` keeps
        the stored one (a compressed image decodes to ``bgr8``/``mono8``/``mono16`` as stored).

    Raises
    ------
    ImageDecodeError : the message cannot be decoded or converted.
    """
    try:
        if is_compressed(msg):
            data = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
            img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
            if img is None:
                raise ImageDecodeError(f"cannot decode compressed image (format {msg.format!r}, {data.size} bytes)")
            if img.ndim == 2:
                src = "mono16" if img.dtype == np.uint16 else "mono8"
            else:
                src = {3: "bgr8", 4: "bgra8"}[img.shape[2]]
                if img.dtype == np.uint16:
                    src = src.replace("8", "16")
            return convert_color(img, src, encoding) if encoding else img
        if _is_rclpy_message(msg):
            bridge = _cv_bridge()
            if bridge is not None:
                return np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding=encoding or "passthrough"))
        img = _raw_to_array(msg)
        return convert_color(img, msg.encoding, encoding) if encoding else img
    except ImageDecodeError:
        raise
    except (ImageError, cv2.error, KeyError, ValueError, TypeError) as err:
        src = getattr(msg, "encoding", None) or getattr(msg, "format", "?")
        raise ImageDecodeError(f"cannot convert image from {src!r} to {encoding!r}: {err}") from err


def decode_rgb(msg: Any) -> np.ndarray:
    """Decode any colour, grey or bayer image message to ``H×W×3`` uint8 RGB.

    16-bit images are scaled to 8 bit; grey images are replicated to three channels.
    """
    img = decode_image(msg)
    if not is_compressed(msg) and msg.encoding not in COLOUR_ENCODINGS:
        raise ImageDecodeError(f"encoding {msg.encoding!r} is not a colour or grey camera image")
    src = (
        msg.encoding
        if not is_compressed(msg)
        else (
            ("mono16" if img.dtype == np.uint16 else "mono8")
            if img.ndim == 2
            else ({3: "bgr", 4: "bgra"}[img.shape[2]] + ("16" if img.dtype == np.uint16 else "8"))
        )
    )
    if src.startswith("mono"):
        if img.dtype == np.uint16:
            img = (img.astype(np.float32) * (255.0 / 65535.0)).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    try:
        return np.ascontiguousarray(convert_color(img, src, "rgb8"))
    except (ImageError, cv2.error) as err:
        raise ImageDecodeError(f"cannot convert {src!r} to rgb8: {err}") from err


def image_fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """Fields of a raw ``sensor_msgs/Image`` holding ``array`` (little-endian, dense rows).

    Returns a dict with ``height, width, encoding, is_bigendian, step, data`` (``data`` a
    uint8 numpy array), ready for a rosbags dataclass or to assign to an rclpy message.
    """
    _, _, typestr, nchan = to_cvtype(encoding)
    arr = np.ascontiguousarray(array, dtype=np.dtype(typestr).newbyteorder("<"))
    expect = 2 if nchan == 1 else 3
    if arr.ndim != expect or (nchan > 1 and arr.shape[2] != nchan):
        raise ValueError(f"array of shape {array.shape} does not fit encoding {encoding!r}")
    h, w = arr.shape[:2]
    return {
        "height": int(h),
        "width": int(w),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": int(w * nchan * arr.dtype.itemsize),
        "data": arr.reshape(-1).view(np.uint8),
    }


def compressed_fields(rgb: np.ndarray, fmt: str = "png", jpeg_quality: int = 95) -> dict[str, Any]:
    """Fields ``format, data`` of a ``CompressedImage`` of an ``H×W×3`` RGB (or ``H×W`` grey) array.

    ``fmt`` is ``"png"`` (lossless) or ``"jpeg"``; ``format`` follows image_transport's
    ``"rgb8; png compressed bgr8"`` convention.
    """
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"compressed format must be 'png' or 'jpeg', got {fmt!r}")
    img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode("." + ("jpg" if fmt == "jpeg" else "png"), img, params)
    if not ok:
        raise ValueError("OpenCV failed to encode the image")
    src = "mono8" if rgb.ndim == 2 else "rgb8"
    dst = "mono8" if rgb.ndim == 2 else "bgr8"
    return {"format": f"{src}; {fmt} compressed {dst}", "data": buf.reshape(-1).astype(np.uint8)}
