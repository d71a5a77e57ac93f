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
    "MAX_DECODE_PIXELS",
    "compressed_image_size",
    "check_decoded_size",
    "check_jpeg_structure",
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


# ---------------------------------------------------------------------------------------
# Compressed images: the decoded size from the header, and the JPEG's marker structure
# ---------------------------------------------------------------------------------------
#: The most pixels :func:`decode_image` decodes from a compressed image unless told otherwise
#: (8192 × 8192; 192 MiB as 8-bit BGR). The node passes its own ``max_image_pixels``.
MAX_DECODE_PIXELS = 1 << 26

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (SOF0–SOF15 without DHT 0xC4, JPG 0xC8 and DAC 0xCC): they hold the image size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _byte_view(data: Any) -> memoryview:
    """``data`` (bytes, bytearray, array.array, numpy uint8, list of ints) as a flat byte memoryview."""
    if isinstance(data, list):
        data = bytes(data)
    return memoryview(data).cast("B")


def compressed_image_size(data: Any) -> tuple[int, int, str]:
    """The decoded size of a compressed image, read from its header without decoding it.

    PNG: the ``IHDR`` chunk; JPEG: the start-of-frame segment (SOF0–SOF15), reached by walking
    the segments before it. Nothing is allocated in proportion to the image, so a small file that
    would decode to gigabytes (a decompression bomb) can be refused before ``cv2.imdecode``.

    Parameters
    ----------
    data : the ``CompressedImage.data`` bytes.

    Returns
    -------
    ``(width, height, kind)`` in pixels, ``kind`` ``"png"`` or ``"jpeg"``.

    Raises
    ------
    ImageDecodeError : not a PNG or a JPEG (other formats are refused: their size is not checked),
        or a header that is truncated or malformed.
    """
    buf = _byte_view(data)
    head = bytes(buf[:33])
    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 33 or head[12:16] != b"IHDR" or int.from_bytes(head[8:12], "big") != 13:
            raise ImageDecodeError(f"corrupt PNG: no valid IHDR header in its first bytes ({len(buf)} bytes)")
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if not (0 < width < 2**31 and 0 < height < 2**31):
            raise ImageDecodeError(f"corrupt PNG: its header gives the size {width}x{height}")
        return width, height, "png"
    if head.startswith(b"\xff\xd8"):
        width, height = _walk_jpeg(buf, full=False)
        return width, height, "jpeg"
    raise ImageDecodeError(
        f"compressed image is neither PNG nor JPEG (first bytes {head[:8].hex()}); only these two are decoded, "
        "because their size can be checked before decoding"
    )


def check_decoded_size(data: Any, max_pixels: int) -> tuple[int, int, str]:
    """:func:`compressed_image_size`, refusing more than ``max_pixels`` (width × height).

    Raises
    ------
    ImageDecodeError : what :func:`compressed_image_size` raises, or an image over the limit
        (the message gives its decoded size).
    """
    width, height, kind = compressed_image_size(data)
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"compressed {kind.upper()} image would decode to {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels}; refused before decoding"
        )
    return width, height, kind


def check_jpeg_structure(data: Any) -> tuple[int, int]:
    """Check a JPEG's marker structure from start to end; its ``(width, height)`` when it is whole.

    libjpeg decodes a truncated or partly overwritten JPEG with a warning only (grey or garbage
    blocks, no error), so the structure is checked first: the segments from SOI to EOI with
    consistent lengths, one frame header, at least one scan, inside each scan's entropy-coded data
    only stuffed bytes (``FF 00``) and restart markers in their order (``FFD0``…``FFD7``), and after
    EOI nothing but padding. Random bytes fail this almost surely (a ``FF`` comes every 256 bytes
    and must be followed by one of a few values); a flipped bit inside the entropy-coded data
    cannot be seen without decoding.

    Raises
    ------
    ImageDecodeError : a truncated or corrupt JPEG (the message says where and what).
    """
    return _walk_jpeg(_byte_view(data), full=True)


def _walk_jpeg(buf: memoryview, full: bool) -> tuple[int, int]:
    """Walk a JPEG's segments: up to the frame header (``full=False``) or to EOI and beyond (``full=True``)."""
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        raise ImageDecodeError("corrupt JPEG: it does not start with the start-of-image marker FFD8")
    arr = np.frombuffer(buf, dtype=np.uint8) if full else None
    truncated = f"truncated JPEG: its {n} bytes end before the end-of-image marker (FFD9)"
    pos, size, scans = 2, None, 0
    while True:
        if pos >= n:
            raise ImageDecodeError(truncated)
        if buf[pos] != 0xFF:
            raise ImageDecodeError(f"corrupt JPEG: a marker was expected at byte {pos}, found 0x{buf[pos]:02X}")
        while pos < n and buf[pos] == 0xFF:  # fill bytes may precede a marker
            pos += 1
        if pos >= n:
            raise ImageDecodeError(truncated)
        marker, at = buf[pos], pos - 1
        pos += 1
        if marker == 0xD9:  # EOI
            if size is None or scans == 0:
                raise ImageDecodeError(f"corrupt JPEG: end-of-image marker at byte {at} before any image data")
            rest = arr[pos:]
            if rest.size and np.any((rest != 0) & (rest != 0xFF)):
                raise ImageDecodeError(
                    f"corrupt JPEG: {rest.size} bytes of data after its end-of-image marker at byte {at}"
                )
            return size
        if marker < 0xC0 or 0xD0 <= marker <= 0xD8:  # reserved, TEM, RSTn or a second SOI: not a segment here
            raise ImageDecodeError(f"corrupt JPEG: invalid marker FF{marker:02X} at byte {at}")
        if pos + 2 > n:
            raise ImageDecodeError(truncated)
        length = (buf[pos] << 8) | buf[pos + 1]
        if length < 2:
            raise ImageDecodeError(f"corrupt JPEG: segment FF{marker:02X} at byte {at} has length {length}")
        if pos + length > n:
            raise ImageDecodeError(truncated)
        if marker in _JPEG_SOF:
            seg = bytes(buf[pos + 2 : pos + length])
            if size is not None:
                raise ImageDecodeError(f"corrupt JPEG: a second frame header (FF{marker:02X}) at byte {at}")
            if len(seg) < 6 or len(seg) != 6 + 3 * seg[5]:
                raise ImageDecodeError(f"corrupt JPEG: malformed frame header at byte {at}")
            height, width = (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4]
            if width == 0 or height == 0:
                raise ImageDecodeError(f"JPEG frame header gives the size {width}x{height} (not supported)")
            size = (width, height)
            if not full:
                return size
        pos += length
        if marker == 0xDA:  # start of scan: entropy-coded data follows, up to the next real marker
            if size is None:
                raise ImageDecodeError(f"corrupt JPEG: a scan at byte {at} before the frame header")
            scans += 1
            pos = _end_of_entropy_data(arr, pos, truncated)
    # not reached


def _end_of_entropy_data(arr: np.ndarray, start: int, truncated: str) -> int:
    """The offset of the marker that ends the entropy-coded data beginning at ``start``.

    Inside it a ``FF`` byte is followed by ``00`` (stuffing), by ``FF`` (fill before a marker) or by a
    restart marker ``D0``…``D7``, which must come in the order 0, 1, …, 7, 0, … from each scan's start.
    """
    ff = np.flatnonzero(arr[start:-1] == 0xFF) + start
    nxt = arr[ff + 1]
    rst = (nxt >= 0xD0) & (nxt <= 0xD7)
    inside = (nxt == 0) | (nxt == 0xFF) | rst
    ends = np.flatnonzero(~inside)
    if ends.size == 0:
        raise ImageDecodeError(truncated)
    end = int(ff[ends[0]])
    order = nxt[: ends[0]][rst[: ends[0]]].astype(np.int64) - 0xD0
    wrong = np.flatnonzero(order != np.arange(order.size) % 8)
    if wrong.size:
        i = int(wrong[0])
        at = int(ff[: ends[0]][rst[: ends[0]]][i])
        raise ImageDecodeError(f"corrupt JPEG: restart marker FF{0xD0 + order[i]:02X} out of order at byte {at}")
    return end


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


def decode_image(msg: Any, encoding: str | None = None, *, max_pixels: int = MAX_DECODE_PIXELS) -> np.ndarray:
    """Decode an ``Image`` or ``CompressedImage`` to a numpy array.

    A compressed image must be a PNG or a JPEG: its size is read from the header first
    (:func:`compressed_image_size`) and more than ``max_pixels`` is refused before anything is
    decoded; a JPEG's structure is checked before decoding (:func:`check_jpeg_structure`).

    Parameters
    ----------
    msg : the message.
    encoding : the wanted encoding (``"rgb8"``, ``"mono8"``, ``"32FC1"`` …); ``None`` keeps
        the stored one (a compressed image decodes to ``bgr8``/``mono8``/``mono16`` as stored).
    max_pixels : the largest decoded size (width × height) of a compressed image.

    Raises
    ------
    ImageDecodeError : the message cannot be decoded or converted; a compressed image that is
        neither PNG nor JPEG, larger than ``max_pixels``, truncated or corrupt.
    """
    try:
        if is_compressed(msg):
            data = np.frombuffer(_byte_view(msg.data), dtype=np.uint8)
            if not data.size:
                raise ImageDecodeError(f"cannot decode compressed image (format {msg.format!r}, no data)")
            width, height, kind = check_decoded_size(data, max_pixels)
            if kind == "jpeg":
                check_jpeg_structure(data)
            img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
            if img is None:
                raise ImageDecodeError(f"cannot decode compressed image (format {msg.format!r}, {data.size} bytes)")
            if img.shape[:2] not in ((height, width), (width, height)):  # (EXIF orientation may swap them)
                raise ImageDecodeError(
                    f"compressed image decoded to {img.shape[1]}x{img.shape[0]} but its header says {width}x{height}"
                )
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


def decode_rgb(msg: Any, *, max_pixels: int = MAX_DECODE_PIXELS) -> np.ndarray:
    """Decode any colour, grey or bayer image message to ``H×W×3`` uint8 RGB.

    16-bit images are scaled to 8 bit; grey images are replicated to three channels.
    ``max_pixels`` bounds a compressed image's decoded size (:func:`decode_image`).
    """
    img = decode_image(msg, max_pixels=max_pixels)
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
