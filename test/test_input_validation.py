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
from dualdepth_ros.preprocess import MIN_IMAGE_SIDE, CameraModel, FrameDecodeError, PreprocessError, Preprocessor
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


# ---------------------------------------------------------------------------------------
# Camera calibrations
# ---------------------------------------------------------------------------------------
def _K(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _calib(width, height, K, D=(), model="plumb_bob", P=None, R=None):
    P = None if P is None else np.hstack([np.asarray(P, float)[:, :3], np.zeros((3, 1))])
    return bagio.camera_info_msg(width, height, np.asarray(K, float), T0, "cam", D=D, distortion_model=model, P=P, R=R)


#: KITTI 2011_09_26: the rectified colour camera (as the shared KITTI bags publish it) and the raw camera 02
#: (1392×512, k1 = −0.37) with its rectifying rotation R_rect_02, from calib_cam_to_cam.txt.
KITTI_RECT = _K(721.5377, 721.5377, 609.5593, 172.854)
KITTI_K02 = _K(959.791, 956.9251, 696.0217, 224.1806)
KITTI_D02 = np.array([-0.3691481, 0.1968681, 0.001353473, 0.0005677587, -0.06770705])
KITTI_R02 = np.array(
    [
        [0.9998817, 0.01511453, -0.002841595],
        [-0.01511724, 0.9998853, -0.000933851],
        [0.002827154, 0.0009766976, 0.9999955],
    ]
)
WIDE = _K(300.0, 300.0, 319.5, 239.5)  # 640×480, 94° horizontal: a wide, fisheye-ish lens
WIDE_D = np.array([-0.3, 0.09, 0.0, 0.0, 0.0])
FISHEYE = _K(350.0, 350.0, 639.5, 399.5)  # 1280×800 equidistant
FISHEYE_D = np.array([0.05, -0.01, 0.002, -0.0005])


def _real_calibrations():
    from dualdepth_ros.synth.config import DEFAULT_DISTORTION

    out = {
        "KITTI rectified (the shared bags)": _calib(1242, 375, KITTI_RECT, D=np.zeros(5)),
        "KITTI raw camera 02, P = K": _calib(1392, 512, KITTI_K02, D=KITTI_D02),
        "KITTI raw camera 02 with R_rect_02": _calib(1392, 512, KITTI_K02, D=KITTI_D02, R=KITTI_R02),
        "wide plumb_bob k1 = -0.3, P = K": _calib(640, 480, WIDE, D=WIDE_D),
        "equidistant fisheye, P = K": _calib(1280, 800, FISHEYE, D=FISHEYE_D, model="equidistant"),
        "the synthetic drives' --distortion lens": _calib(320, 96, _K(160, 160, 159.5, 47.5), D=DEFAULT_DISTORTION),
        "the sample drive's own K": _calib(320, 96, _K(160.0, 160.0, 159.5, 47.5), D=np.zeros(5)),
    }
    for alpha in (0.0, 1.0):  # camera_calibration's P: valid pixels only (0) or every raw pixel (1)
        P, _ = cv2.getOptimalNewCameraMatrix(KITTI_K02, KITTI_D02, (1392, 512), alpha)
        out[f"KITTI raw camera 02, P with alpha {alpha:g}"] = _calib(1392, 512, KITTI_K02, D=KITTI_D02, P=P)
        P, _ = cv2.getOptimalNewCameraMatrix(WIDE, WIDE_D, (640, 480), alpha)
        out[f"wide plumb_bob k1 = -0.3, P with alpha {alpha:g}"] = _calib(640, 480, WIDE, D=WIDE_D, P=P)
        P = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(
            FISHEYE, FISHEYE_D, (1280, 800), np.eye(3), balance=alpha
        )
        out[f"equidistant fisheye, P with balance {alpha:g}"] = _calib(
            1280, 800, FISHEYE, D=FISHEYE_D, model="equidistant", P=P
        )
    return out


REAL = _real_calibrations()


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_calibrations_are_accepted(name: str) -> None:
    info = REAL[name]
    cam = CameraModel.from_camera_info(info)
    p = _processor()
    rgb = _texture(int(info.height), int(info.width))
    out = p.process(bagio.image_msg(rgb, "rgb8", T0, "cam"), info)
    assert out.depth.shape == (48, 160) and out.intrinsics == p.output_intrinsics(info)
    assert cam.rectified.fov_deg()[0] > 1.0


def test_the_sample_drive_calibration_is_accepted(sample_bag) -> None:
    from dualdepth_ros.data import Bag

    with Bag(sample_bag) as bag:
        topic = next(t for t, (kind, _) in bag.topics().items() if kind.endswith("CameraInfo"))
        info = bag.first_message(topic)
    assert CameraModel.from_camera_info(info).rectified.width == int(info.width)


BAD_CALIBRATIONS = {
    "the issue's fx = 1e-30": (
        _calib(1242, 375, _K(1e-30, 721.5, 609.6, 172.9)),
        r"camera_info K gives a horizontal field of view of 180 degrees \(fx=1e-30 for 1242 pixels\)",
    ),
    "the issue's D = [1e6, -1e6, 0, 0, 1e6]": (
        _calib(1242, 375, KITTI_RECT, D=[1e6, -1e6, 0.0, 0.0, 1e6]),
        r"distortion D=\[1000000.0, -1000000.0, 0.0, 0.0, 1000000.0\] \(plumb_bob\) with this P shows the camera "
        r"image in only 0% of the rectified image",
    ),
    "a telephoto beyond any lens (fy = 1e9)": (
        _calib(640, 480, _K(300.0, 1e9, 319.5, 239.5)),
        r"camera_info K gives a vertical field of view of 2.75e-05 degrees \(fy=1e\+09 for 480 pixels\)",
    ),
    "P's focal length off by 1e6": (
        _calib(640, 480, WIDE, P=_K(3e-4, 3e-4, 319.5, 239.5)),
        r"camera_info P gives a horizontal field of view of 180 degrees",
    ),
    "principal point far outside": (
        _calib(640, 480, _K(300.0, 300.0, 2000.0, 239.5)),
        r"camera_info K puts the principal point at cx=2000, far outside the 640x480 image",
    ),
    "K scaled by 2 (last row 0 0 2)": (_calib(640, 480, 2 * WIDE), r"camera_info K has the last row \[0.0, 0.0, 2.0\]"),
    "R not a rotation": (
        _calib(640, 480, WIDE, R=np.diag([2.0, 1.0, 1.0])),
        r"camera_info R is not a rotation matrix: \[2.0, 0.0",
    ),
    "R turning the view by 120 degrees": (
        _calib(640, 480, WIDE, R=cv2.Rodrigues(np.array([0.0, 2.1, 0.0]))[0]),
        "R and P turn part of the rectified image behind the camera",
    ),
    "a radial fold inside the image (k1 = -0.3 alone on a 94 degree lens)": (
        _calib(640, 480, WIDE, D=[-0.3, 0.0, 0.0, 0.0, 0.0]),
        r"D=\[-0.3, 0.0, 0.0, 0.0, 0.0\] \(plumb_bob\) folds 11.8% of the rectified image over itself",
    ),
    "huge tangential distortion": (
        _calib(640, 480, WIDE, D=[0.0, 0.0, 1e3, 0.0, 0.0]),
        r"D=\[0.0, 0.0, 1000.0, 0.0, 0.0\] \(plumb_bob\) with this P shows the camera image in only 0%",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_CALIBRATIONS))
def test_absurd_calibrations_are_refused_with_one_line(name: str) -> None:
    info, match = BAD_CALIBRATIONS[name]
    with pytest.raises(PreprocessError, match=match) as err:
        CameraModel.from_camera_info(info)
    assert "\n" not in str(err.value)
    rgb = _texture(int(info.height), int(info.width))
    with pytest.raises(PreprocessError, match=match):  # the node refuses the frame: nothing is published
        _processor().process(bagio.image_msg(rgb, "rgb8", T0, "cam"), info)


def test_explicit_intrinsics_are_checked_against_the_image() -> None:
    rgb = _texture(96, 320)
    with pytest.raises(PreprocessError, match=r"intrinsics fx,fy,cx,cy for the 320x96 image gives a horizontal field"):
        Preprocessor(160, 48, intrinsics="1e-30,160,159.5,47.5").prepare(rgb)
    out, K = Preprocessor(160, 48, intrinsics="160,160,159.5,47.5").prepare(rgb)
    assert out.shape == (48, 160, 3) and K.fx == pytest.approx(80.0)
