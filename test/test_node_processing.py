"""The node's per-frame processing (no DDS): input checks, preprocessing from the model metadata,
scaling, validity masks, camera_info at the published resolution, and how errors are classified.
"""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from node_harness import FakeBackend, road_depth

from dualdepth_ros.bagio import camera_info_msg, compressed_image_msg, image_msg
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.geometry import Intrinsics
from dualdepth_ros.preprocess import PreprocessError
from dualdepth_ros.ros.params import OutputSettings, ParameterError
from dualdepth_ros.ros.processing import (
    BackendError,
    FrameProcessor,
    InputError,
    ScaleUnknownError,
    apply_validity,
    check_image,
)
from dualdepth_ros.ros.scale import ScaleSettings

CAM = Intrinsics(160.0, 160.0, 159.5, 47.5, 320, 96)  # the sample drive's camera


def frame(width: int = 320, height: int = 96, stamp: int = 1_000_000_000, encoding: str = "rgb8"):
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return image_msg(rgb if encoding == "rgb8" else rgb[:, :, 0], encoding, stamp, "cam")


def info(K: Intrinsics = CAM, **kw):
    return camera_info_msg(K.width, K.height, K.matrix(), 1_000_000_000, "cam", D=np.zeros(5), **kw)


def processor(**kw) -> FrameProcessor:
    return FrameProcessor(FakeBackend(), OutputSettings(), ScaleSettings(camera_height_m=1.5), **kw)


def test_outputs_sizes_intrinsics_and_metric_scale() -> None:
    p = processor()
    out = p.process(frame(), info())
    assert out.depth.shape == out.confidence.shape == (48, 160)
    assert out.depth.dtype == out.confidence.dtype == np.float32
    # 320×96 → 160×48 with the half-pixel rule: f' = f/2, c' = (c + 0.5)/2 − 0.5
    assert (out.intrinsics.fx, out.intrinsics.fy, out.intrinsics.cx, out.intrinsics.cy) == (80.0, 80.0, 79.5, 23.5)
    assert (out.intrinsics.width, out.intrinsics.height) == (160, 48)
    assert out.intrinsics == p.output_intrinsics(info())
    # The fake network sees a road 0.15 model units below the camera: camera_height 1.5 m → scale 10.
    assert out.scale == pytest.approx(10.0, rel=1e-3)
    expected = road_depth(out.intrinsics, 1.5, far=100.0)
    rows = slice(30, 48)
    np.testing.assert_allclose(out.depth[rows], expected[rows], rtol=1e-3)
    assert np.all((out.confidence >= 0) & (out.confidence <= 1))
    assert set(out.timings) == {"preprocess", "inference", "postprocess"}


def test_validity_mask_range_and_confidence() -> None:
    depth = np.array([[0.05, 1.0, 50.0, 90.0, np.nan]], np.float32)
    conf = np.array([[0.9, 0.2, 0.9, 0.9, 0.9]], np.float32)
    out = apply_validity(depth, conf, OutputSettings(0.1, 80.0, 0.0))
    np.testing.assert_array_equal(np.isnan(out), [[True, False, False, True, True]])
    out = apply_validity(depth, conf, OutputSettings(0.1, 80.0, 0.5))
    np.testing.assert_array_equal(np.isnan(out), [[True, True, False, True, True]])
    p = processor()
    p.output = OutputSettings(0.1, 80.0, 0.5)
    res = p.process(frame(), info())
    assert np.isnan(res.depth[:12]).all()  # the fake confidence is 0.1 on the top quarter
    assert np.isfinite(res.depth[40:]).all()
    with pytest.raises(ParameterError, match="min_depth < max_depth"):
        OutputSettings(5.0, 1.0)
    with pytest.raises(ParameterError, match="confidence_threshold"):
        OutputSettings(0.1, 80.0, 1.5)


def test_scale_modes_none_and_fixed() -> None:
    p = processor()
    p.scale_settings = ScaleSettings(mode="none")
    raw = p.process(frame(), info())
    assert raw.scale == 1.0
    np.testing.assert_array_equal(np.isnan(raw.depth), ~((raw.raw_depth >= 0.1) & (raw.raw_depth <= 80.0)))
    p.scale_settings = ScaleSettings(mode="fixed", fixed_scale=4.0)
    fixed = p.process(frame(), info())
    np.testing.assert_allclose(fixed.depth[30:], 4.0 * raw.depth[30:], rtol=1e-6)


def test_unknown_scale_is_not_published() -> None:
    b = FakeBackend()
    p = FrameProcessor(b, OutputSettings(), ScaleSettings())
    b.height = float("inf")  # no road: the fake sees a wall at the far distance everywhere
    with pytest.raises(ScaleUnknownError, match="no road plane found yet"):
        p.process(frame(), info())


def test_backend_exceptions_become_backend_errors() -> None:
    b = FakeBackend()
    p = FrameProcessor(b, OutputSettings(), ScaleSettings())
    b.fail = True
    with pytest.raises(BackendError, match="fake failed: RuntimeError: simulated device failure"):
        p.process(frame(), info())
    b.fail = False
    assert p.process(frame(), info()).depth.shape == (48, 160)


def test_compressed_input_is_the_same_frame() -> None:
    rgb = np.random.default_rng(1).integers(0, 255, (96, 320, 3), dtype=np.uint8)
    p = processor()
    a = p.process(image_msg(rgb, "rgb8", 5, "cam"), info())
    b = p.process(compressed_image_msg(rgb, 5, "cam", "png"), info())
    np.testing.assert_array_equal(a.rgb, b.rgb)


def _bad(**fields):
    msg = frame()
    base = {k: getattr(msg, k) for k in ("header", "height", "width", "encoding", "is_bigendian", "step", "data")}
    base.update(fields)
    return SimpleNamespace(**base)


@pytest.mark.parametrize(
    "msg,match",
    [
        (_bad(encoding="32FC1", step=320 * 4, data=np.zeros(96 * 320 * 4, np.uint8)), "unsupported image encoding"),
        (_bad(width=0, height=0, step=0, data=np.zeros(0, np.uint8)), r"empty image \(0x0\)"),
        (_bad(width=5000, height=5000, step=15000), "larger than max_image_pixels"),
        (_bad(step=320 * 3, data=np.zeros(1000, np.uint8)), "step/data length mismatch"),
        (_bad(step=100), "step 100 is shorter than one 320-pixel rgb8 row"),
        (SimpleNamespace(format="jpeg", data=np.zeros(0, np.uint8)), "compressed image has no data"),
    ],
)
def test_check_image_refuses_bad_layouts(msg, match: str) -> None:
    with pytest.raises(InputError, match=match):
        check_image(msg, max_pixels=4096 * 4096)
    with pytest.raises(InputError, match=match):
        processor().process(msg, info())


@pytest.mark.parametrize(
    "bad_info,match",
    [
        (
            info(Intrinsics(160.0, 160.0, 159.5, 47.5, 640, 192)),
            "image is 320x96 but its camera_info describes 640x192",
        ),
        (camera_info_msg(320, 96, np.zeros((3, 3)), 0, "cam"), "all-zero K"),
        (
            camera_info_msg(320, 96, [[0, 0, 159.5], [0, 160, 47.5], [0, 0, 1]], 0, "cam"),
            "focal lengths must be positive",
        ),
        (camera_info_msg(320, 96, [[160, 0, math.nan], [0, 160, 47.5], [0, 0, 1]], 0, "cam"), "non-finite"),
    ],
)
def test_bad_camera_info_is_a_preprocess_error(bad_info, match: str) -> None:
    with pytest.raises(PreprocessError, match=match):
        processor().process(frame(), bad_info)


def test_corrupt_compressed_payload_is_a_preprocess_error() -> None:
    msg = compressed_image_msg(np.zeros((96, 320, 3), np.uint8), 0, "cam", "png")
    msg.data = msg.data[: len(msg.data) // 3]
    with pytest.raises(PreprocessError, match="cannot decode"):
        processor().process(msg, info())


NODE_TORCH_FREE = r"""
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "rosbags"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocked())
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import dualdepth_ros.ros.node  # the live node's module and everything it imports
from dualdepth_ros.images import image_fields
from dualdepth_ros.inference import open_backend
from dualdepth_ros.ros.params import DEFAULTS, output_settings, scale_settings
from dualdepth_ros.ros.processing import FrameProcessor

header = SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=0), frame_id="cam")
rgb = np.random.default_rng(0).integers(0, 255, (96, 320, 3), dtype=np.uint8)
image = SimpleNamespace(header=header, **image_fields(rgb, "rgb8"))
info = SimpleNamespace(
    header=header, width=320, height=96, distortion_model="plumb_bob", d=[0.0] * 5,
    k=[160.0, 0.0, 159.5, 0.0, 160.0, 47.5, 0.0, 0.0, 1.0], r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    p=[160.0, 0.0, 159.5, 0.0, 0.0, 160.0, 47.5, 0.0, 0.0, 0.0, 1.0, 0.0], binning_x=0, binning_y=0,
    roi=SimpleNamespace(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
)
backend = open_backend(sys.argv[1], "onnxruntime", threads=1)
p = FrameProcessor(backend, output_settings(DEFAULTS), scale_settings({**DEFAULTS, "scale_mode": "none"}))
out = p.process(image, info)
p.update_scale(out)
assert out.depth.shape == (48, 160)
print("torch" in sys.modules, any(m.split(".")[0] == "rosbags" for m in sys.modules))
"""


def test_the_node_runtime_path_imports_neither_torch_nor_rosbags(repo_root) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1")
    model = str(repo_root / "models" / "dualdepth_default")
    proc = subprocess.run([sys.executable, "-c", NODE_TORCH_FREE, model], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "False"]


def test_a_model_folder_not_derived_yet_is_exported_from_its_checkpoint_beside_it(tmp_path) -> None:
    """A fresh clone has models/NAME.pt and no models/NAME/: the node and `infer` derive the folder at first use."""
    import shutil

    from dualdepth_ros.ros.params import DEFAULTS
    from dualdepth_ros.ros.processing import open_model_backend

    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "models" / "dualdepth_default.pt", tmp_path / "mine.pt")
    lines: list[str] = []
    params = {**DEFAULTS, "model_path": str(tmp_path / "mine"), "backend": "onnxruntime", "threads": 1}
    backend = open_model_backend(params, log=lines.append)
    assert (tmp_path / "mine" / "model.onnx").is_file() and (tmp_path / "mine" / "model.json").is_file()
    assert any("mine.pt" in line for line in lines), lines
    assert backend.metadata.input_width == 160
    with pytest.raises(DualDepthError, match="does not exist"):
        open_model_backend({**params, "model_path": str(tmp_path / "absent")})
