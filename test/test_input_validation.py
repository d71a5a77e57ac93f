"""Inputs that must be refused before they cost memory or poison the output.

* decompression bombs: a compressed image's decoded size comes from its PNG/JPEG header and
  is checked before ``cv2.imdecode`` allocates anything (peak RSS measured in a subprocess);
* corrupt and truncated JPEGs: libjpeg decodes them with a warning only, so the marker
  structure is checked first;
* images under the minimum size, in the one preprocessing path (training data, the node).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from node_harness import FakeBackend
from test_data_bags import moving_frames, write_bag

from dualdepth_ros import bagio
from dualdepth_ros.data import load_frames
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.images import (
    MAX_DECODE_PIXELS,
    ImageDecodeError,
    check_jpeg_structure,
    compressed_image_size,
    decode_image,
)
from dualdepth_ros.intrinsics import Intrinsics
from dualdepth_ros.preprocess import MIN_IMAGE_SIDE, FrameDecodeError, PreprocessError, Preprocessor
from dualdepth_ros.ros.params import OutputSettings
from dualdepth_ros.ros.processing import FrameProcessor, InputError, check_image
from dualdepth_ros.ros.scale import ScaleSettings

T0 = 1_700_000_000_000_000_000


def _texture(height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (0, 0), 1.5)


def _encode(img: np.ndarray, ext: str, params: list[int] | None = None) -> np.ndarray:
    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok
    return buf.reshape(-1)


def _compressed(data: bytes | np.ndarray, fmt: str = "jpeg") -> SimpleNamespace:
    return SimpleNamespace(format=fmt, data=np.frombuffer(bytes(data), np.uint8))


def _info(width: int, height: int, f: float | None = None):
    f = f or 0.5 * width
    K = Intrinsics(f, f, (width - 1) / 2, (height - 1) / 2, width, height).matrix()
    return bagio.camera_info_msg(width, height, K, T0, "cam", D=np.zeros(5))


def _processor(**kw) -> FrameProcessor:
    return FrameProcessor(FakeBackend(), OutputSettings(), ScaleSettings(mode="none"), **kw)


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of ``width × height`` black pixels, built row by row (never in memory whole)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    comp = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 and the pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------
# The decoded size from the header
# ---------------------------------------------------------------------------------------
ENCODINGS = {
    "png colour": (".png", 3, []),
    "png grey": (".png", 1, []),
    "jpeg baseline": (".jpg", 3, [cv2.IMWRITE_JPEG_QUALITY, 90]),
    "jpeg grey": (".jpg", 1, []),
    "jpeg progressive": (".jpg", 3, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    "jpeg optimised, restart markers": (".jpg", 3, [cv2.IMWRITE_JPEG_OPTIMIZE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 2]),
    "jpeg 4:4:4": (".jpg", 3, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
@pytest.mark.parametrize(("width", "height"), [(320, 96), (37, 53), (1242, 375)])
def test_header_gives_the_decoded_size(name: str, width: int, height: int) -> None:
    ext, channels, params = ENCODINGS[name]
    img = _texture(height, width, channels=channels)
    data = _encode(img if channels == 3 else img, ext, params)
    kind = "png" if ext == ".png" else "jpeg"
    assert compressed_image_size(data) == (width, height, kind)
    if kind == "jpeg":
        assert check_jpeg_structure(data) == (width, height)
    np.testing.assert_array_equal(decode_image(_compressed(data, kind)), cv2.imdecode(data, cv2.IMREAD_UNCHANGED))


def test_16_bit_png_header() -> None:
    img = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 13).astype(np.uint16)
    data = _encode(img, ".png")
    assert compressed_image_size(data) == (50, 40, "png")
    np.testing.assert_array_equal(decode_image(_compressed(data, "png")), img)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_encode(_texture(40, 40), ".bmp"), "neither PNG nor JPEG"),
        (_encode(_texture(40, 40), ".tiff"), "neither PNG nor JPEG"),
        (b"not an image at all", "neither PNG nor JPEG"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00", "corrupt PNG"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated JPEG"),
        (b"\xff\xd8\xff\x37\x00\x10JFIF", "invalid marker FF37"),
    ],
)
def test_unknown_or_broken_headers_are_refused(data, match: str) -> None:
    with pytest.raises(ImageDecodeError, match=match):
        compressed_image_size(np.frombuffer(bytes(data), np.uint8))
    with pytest.raises(InputError, match=match):
        check_image(_compressed(data), max_pixels=4096 * 4096)


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header is rewritten to claim ``width × height``."""
    data = bytearray(_encode(_texture(64, 64), ".jpg").tobytes())
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    data[i + 5 : i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_jpeg_bomb_is_refused_from_its_header() -> None:
    data = _jpeg_with_size(60000, 50000)
    assert compressed_image_size(np.frombuffer(data, np.uint8)) == (60000, 50000, "jpeg")
    with pytest.raises(InputError, match=r"would decode to 60000x50000 = 3000000000 pixels, more than max_image_pix"):
        check_image(_compressed(data), max_pixels=16_777_216)
    with pytest.raises(ImageDecodeError, match=r"60000x50000 .* refused before decoding"):
        decode_image(_compressed(data))


BOMB_PROBE = r"""
import json, resource, sys
from pathlib import Path
from types import SimpleNamespace
import cv2, numpy as np
from dualdepth_ros.images import ImageDecodeError, decode_image
from dualdepth_ros.preprocess import PreprocessError, Preprocessor
from dualdepth_ros.ros.processing import check_image



def peak_kib():
    # VmHWM: this process's own peak RSS. ru_maxrss would do, but Linux carries the parent's peak
    # into it across fork/exec, which could hide the control's allocation under pytest's own size.
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


msg = SimpleNamespace(format="png", data=np.fromfile(sys.argv[2], np.uint8))
before = peak_kib()
if sys.argv[1] == "refuse":
    calls = (
        lambda: check_image(msg, 16_777_216),  # the node, before decoding
        lambda: decode_image(msg),  # any decoder (the default bound)
        lambda: Preprocessor(160, 48, intrinsics="100,100,80,24").prepare(msg),  # training data, infer
    )
    results = []
    for call in calls:
        try:
            call()
            results.append("accepted")
        except (ImageDecodeError, PreprocessError) as err:
            results.append(str(err))
else:  # the control: what decoding it costs
    results = [str(cv2.imdecode(msg.data, cv2.IMREAD_UNCHANGED).shape)]
after = peak_kib()
print(json.dumps({"before_kib": before, "after_kib": after, "results": results}))
"""


def _probe(mode: str, path, repo_root) -> dict:
    """Run BOMB_PROBE in a fresh process: its peak RSS (KiB) before and after handling the file at ``path``."""
    env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_PROBE, mode, str(path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_png_bomb_is_refused_before_it_takes_memory(repo_root, tmp_path) -> None:
    """The issue's bomb: a ~0.4 MB PNG of 20000×20000 pixels (400 MB decoded as grey, 1.2 GB as RGB)."""
    W = H = 20000
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(W, H))
    assert bomb.stat().st_size < 1_000_000
    would_be_kib = W * H // 1024  # one byte per pixel: the least a decoder must allocate
    ours = _probe("refuse", bomb, repo_root)
    node, decoder, pre = ours["results"]
    assert "would decode to 20000x20000 = 400000000 pixels, more than max_image_pixels=16777216" in node
    assert f"20000x20000 = 400000000 pixels, more than the limit of {MAX_DECODE_PIXELS}" in decoder
    assert "20000x20000" in pre and "refused before decoding" in pre
    growth = ours["after_kib"] - ours["before_kib"]
    assert growth < 0.02 * would_be_kib, ours  # nothing in proportion to the image was allocated
    control = _probe("decode", bomb, repo_root)  # the same measurement sees a real decode
    assert control["results"] == ["(20000, 20000)"]
    assert control["after_kib"] - control["before_kib"] > 0.9 * would_be_kib, control


def test_the_node_bound_reaches_the_decoder() -> None:
    """A processor's max_image_pixels is the decoder's bound too (not only the header check)."""
    p = _processor(max_image_pixels=200 * 100)
    assert p.preprocessor.max_image_pixels == 200 * 100
    ok = _compressed(_encode(_texture(96, 320), ".png"), "png")
    with pytest.raises(PreprocessError, match=r"320x96 = 30720 pixels, more than the limit of 20000"):
        p.preprocessor(ok, _info(320, 96))
    p.max_image_pixels = 320 * 96
    assert p.process(ok, _info(320, 96)).depth.shape == (48, 160)


# ---------------------------------------------------------------------------------------
# Corrupt and truncated compressed images
# ---------------------------------------------------------------------------------------
def _overwrite_tail(data: np.ndarray, seed: int, keep: float = 1 / 3) -> bytes:
    """``data`` with everything after its first third replaced by random bytes (the issue's corruption)."""
    out = bytearray(data.tobytes())
    k = int(len(out) * keep)
    out[k:] = np.random.default_rng(seed).integers(0, 256, len(out) - k, dtype=np.uint8).tobytes()
    return bytes(out)


def test_partly_overwritten_jpegs_are_refused() -> None:
    """OpenCV (libjpeg) decodes these with a warning only; all of 200 are refused, each with one line."""
    data = _encode(_texture(96, 320, seed=3), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    silently_decoded = 0
    for seed in range(200):
        bad = _overwrite_tail(data, seed)
        silently_decoded += cv2.imdecode(np.frombuffer(bad, np.uint8), cv2.IMREAD_UNCHANGED) is not None
        with pytest.raises(ImageDecodeError, match="corrupt JPEG|truncated JPEG") as err:
            decode_image(_compressed(bad))
        assert "\n" not in str(err.value)
    assert silently_decoded > 150  # what happened before: OpenCV returns an image for nearly all of them


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.9, -2, -1])
def test_truncated_jpegs_are_refused(cut: float) -> None:
    data = _encode(_texture(96, 320, seed=4), ".jpg").tobytes()
    n = int(len(data) * cut) if cut > 0 else len(data) + int(cut)
    with pytest.raises(ImageDecodeError, match=r"truncated JPEG: its \d+ bytes end before the end-of-image marker"):
        check_jpeg_structure(data[:n])


def test_jpeg_structure_details() -> None:
    data = _encode(_texture(64, 64, seed=5), ".jpg", [cv2.IMWRITE_JPEG_RST_INTERVAL, 1]).tobytes()
    assert check_jpeg_structure(data + b"\x00" * 7) == (64, 64)  # zero padding after EOI (some encoders)
    with pytest.raises(ImageDecodeError, match=r"corrupt JPEG: 5 bytes of data after its end-of-image marker"):
        check_jpeg_structure(data + b"abcde")
    i = data.index(b"\xff\xd1")  # the second restart marker, renumbered: the order is checked
    with pytest.raises(ImageDecodeError, match=f"restart marker FFD3 out of order at byte {i}"):
        check_jpeg_structure(data[:i] + b"\xff\xd3" + data[i + 2 :])
    sof = data.index(b"\xff\xc0")
    with pytest.raises(ImageDecodeError, match="second frame header"):
        check_jpeg_structure(data[: len(data) - 2] + data[sof : sof + 19] + b"\xff\xd9")


@pytest.mark.parametrize("damage", ["overwritten", "truncated"])
def test_corrupt_compressed_frames_are_refused_by_the_node_processing(damage: str) -> None:
    """Counted as bad input: the node's fault handling gets a PreprocessError (a FrameDecodeError) with one line."""
    rgb = _texture(96, 320, seed=6)
    for fmt in ("jpeg", "png"):
        msg = bagio.compressed_image_msg(rgb, T0, "cam", fmt)
        data = np.asarray(msg.data, np.uint8)
        msg.data = np.frombuffer(
            _overwrite_tail(data, 0) if damage == "overwritten" else data[: len(data) * 2 // 3].tobytes(), np.uint8
        )
        with pytest.raises(FrameDecodeError) as err:
            _processor().process(msg, _info(320, 96))
        assert "\n" not in str(err.value)
        assert "corrupt" in str(err.value) or "truncated" in str(err.value) or "cannot decode" in str(err.value)


def test_a_bag_with_corrupt_frames_trains_on_the_others(tmp_path) -> None:
    """Training data: a corrupt JPEG is skipped and counted like any undecodable frame, not used."""
    frames = moving_frames(6)
    path = write_bag(tmp_path / "bag", frames, compressed="jpeg")
    store = load_frames(path, Preprocessor(32, 24))
    assert len(store) == 6
    bad = tmp_path / "bad"
    with bagio.BagWriter(bad) as bag:
        bag.add_topic("/cam/image_raw/compressed", bagio.COMPRESSED_IMAGE)
        bag.add_topic("/cam/camera_info", bagio.CAMERA_INFO)
        for i, img in enumerate(frames):
            ts = T0 + i * 100_000_000
            bag.write("/cam/camera_info", bagio.camera_info_msg(64, 48, _info(64, 48, 40.0).k, ts, "cam"), ts)
            msg = bagio.compressed_image_msg(img, ts, "cam", "jpeg")
            if i == 2:
                msg.data = np.frombuffer(_overwrite_tail(np.asarray(msg.data, np.uint8), 1), np.uint8)
            bag.write("/cam/image_raw/compressed", msg, ts)
    assert len(load_frames(bad, Preprocessor(32, 24))) == 5


# ---------------------------------------------------------------------------------------
# The minimum image size
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("width", "height"), [(1, 1), (MIN_IMAGE_SIDE - 1, 48), (64, MIN_IMAGE_SIDE - 1)])
def test_images_under_the_minimum_are_refused(width: int, height: int) -> None:
    rgb = np.full((height, width, 3), 128, np.uint8)
    pre = Preprocessor(160, 48, intrinsics=f"{width},{width},{(width - 1) / 2},{(height - 1) / 2}")
    too_small = rf"image of {width}x{height} pixels is too small: each side must be at least {MIN_IMAGE_SIDE} pixels"
    for image in (rgb, bagio.image_msg(rgb, "rgb8", T0, "cam"), bagio.compressed_image_msg(rgb, T0, "cam", "png")):
        with pytest.raises(PreprocessError, match=too_small):
            pre.prepare(image)
    # The node's processing refuses it before decoding (raw and compressed), as bad input.
    for msg in (bagio.image_msg(rgb, "rgb8", T0, "cam"), bagio.compressed_image_msg(rgb, T0, "cam", "jpeg")):
        with pytest.raises(InputError, match=too_small):
            check_image(msg, max_pixels=4096 * 4096)
        with pytest.raises(InputError, match=too_small):
            _processor().process(msg, _info(width, height))


def test_the_minimum_size_itself_is_accepted() -> None:
    rgb = _texture(MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)
    out = _processor().process(bagio.image_msg(rgb, "rgb8", T0, "cam"), _info(MIN_IMAGE_SIDE, MIN_IMAGE_SIDE))
    assert out.depth.shape == (48, 160)


def test_training_data_refuses_a_bag_of_tiny_images(tmp_path) -> None:
    """The training data path (load_frames, what `dualdepth train` reads) names the bag and the reason in one line."""
    frames = [np.full((1, 1, 3), v, np.uint8) for v in (10, 200, 10, 200)]  # "moving", by the old motion test
    path = write_bag(tmp_path / "tiny", frames, K=np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]]))
    with pytest.raises(DualDepthError, match=r"bag .*tiny, topic /cam/image_raw: image of 1x1 pixels is too small"):
        load_frames(path, Preprocessor(32, 24))
