"""The runtime path imports neither torch nor rosbags: model metadata, preprocessing of a
sensor_msgs-like Image + CameraInfo, and ONNX Runtime on the shipped model, run in a subprocess
where ``import torch`` and ``import rosbags`` raise. Also: images.py's own conversions equal
rosbags-image's for every encoding pair.
"""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "dualdepth_default"

SCRIPT = r"""
import importlib.abc, json, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "rosbags"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocked())
for mod in ("torch", "rosbags"):
    try:
        __import__(mod)
    except ImportError:
        pass
    else:
        raise SystemExit(f"the import hook did not block {mod}")

from types import SimpleNamespace

import numpy as np

from dualdepth_ros.images import compressed_fields, image_fields
from dualdepth_ros.inference import load_metadata, open_backend
from dualdepth_ros.intrinsics import Intrinsics
from dualdepth_ros.preprocess import Preprocessor

model_dir = sys.argv[1]
md = load_metadata(model_dir)
pre = md.preprocessor()
assert isinstance(pre, Preprocessor)

W, H = 320, 96
v, u = np.mgrid[0:H, 0:W]
rgb = np.stack([u * 255 // W, v * 255 // H, (u + v) % 256], axis=-1).astype(np.uint8)
header = SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=0), frame_id="camera_optical_frame")
raw = SimpleNamespace(header=header, **image_fields(rgb[:, :, ::-1], "bgr8"))
jpeg = SimpleNamespace(header=header, **compressed_fields(rgb, "jpeg"))
info = SimpleNamespace(
    header=header, width=W, height=H, distortion_model="plumb_bob", d=[-0.05, 0.01, 0.0, 0.0, 0.0],
    k=[160.0, 0.0, 159.5, 0.0, 160.0, 47.5, 0.0, 0.0, 1.0], r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    p=[160.0, 0.0, 159.5, 0.0, 0.0, 160.0, 47.5, 0.0, 0.0, 0.0, 1.0, 0.0], binning_x=0, binning_y=0,
    roi=SimpleNamespace(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
)
frames = [pre(raw, info), pre(jpeg, info)]
assert isinstance(frames[0].intrinsics, Intrinsics)
lines = []
backend = open_backend(model_dir, "auto", log=lines.append, threads=1)
batch = np.stack([f.image for f in frames])
res = backend.infer(batch)
print(json.dumps({
    "backend": backend.name,
    "reason": backend.reason,
    "depth_shape": list(res.depth.shape),
    "finite": bool(np.isfinite(res.depth).all()),
    "conf_range": [float(res.confidence.min()), float(res.confidence.max())],
    "intrinsics": list(frames[0].intrinsics.as_tuple()),
    "jpeg_vs_raw": float(np.abs(frames[0].image - frames[1].image).mean()),
    "torch_loaded": "torch" in sys.modules,
    "rosbags_loaded": any(m.split(".")[0] == "rosbags" for m in sys.modules),
}))
"""


def test_runtime_path_without_torch_or_rosbags() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SHIPPED)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "onnxruntime"
    assert "torch" in out["reason"] and "not importable" in out["reason"]  # auto explains why not torch
    assert out["depth_shape"] == [2, 1, 48, 160] and out["finite"]
    assert 0.0 <= out["conf_range"][0] <= out["conf_range"][1] <= 1.0
    assert out["intrinsics"] == pytest.approx([80.0, 80.0, 79.5, 23.5, 160, 48])  # half-pixel resize rule
    assert out["jpeg_vs_raw"] < 0.02  # the compressed frame decodes to (nearly) the same input
    assert not out["torch_loaded"] and not out["rosbags_loaded"]


def test_image_conversions_equal_rosbags_image() -> None:
    rosbags_image = pytest.importorskip("rosbags.image.image")
    from dualdepth_ros import images

    encodings = list(rosbags_image.ENCODINGMAP) + ["32FC1", "16UC1", "8UC3", "8UC1", "64FC1"]
    rng = np.random.default_rng(0)
    checked = 0
    for src, dst in itertools.product(encodings, encodings):
        _, _, typestr, nchan = rosbags_image.to_cvtype(src)
        shape = (12, 12) if src in ("nv12", "nv21") else ((8, 12) if nchan == 1 else (8, 12, nchan))
        dtype = np.dtype(typestr)
        x = (rng.random(shape) * (255 if dtype.itemsize == 1 else 60000)).astype(dtype)
        try:
            want = rosbags_image.convert_color(x, src, dst)
        except rosbags_image.ImageError:
            with pytest.raises(images.ImageError):
                images.convert_color(x, src, dst)
            continue
        except cv2.error:  # OpenCV has no such conversion for this depth: both fail the same way
            with pytest.raises(cv2.error):
                images.convert_color(x, src, dst)
            continue
        got = images.convert_color(x, src, dst)
        assert got.dtype == want.dtype and got.shape == want.shape, (src, dst)
        np.testing.assert_array_equal(got, want, err_msg=f"{src} -> {dst}")
        checked += 1
    assert checked > 300
    for enc in encodings:
        want = rosbags_image.to_cvtype(enc)
        got = images.to_cvtype(enc)
        assert (got[0], got[2], got[3]) == (want[0], want[2], want[3])
    with pytest.raises(images.ImageError, match="not supported"):
        images.to_cvtype("xyz123")


DERIVE_WITHOUT_TORCH = r"""
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocked())
from dualdepth_ros.inference import ModelError, open_backend

try:
    open_backend(sys.argv[1], "onnxruntime")
except ModelError as err:
    print("ModelError:", err)
"""


def test_a_folder_to_derive_without_torch_says_which_command_to_run(tmp_path: Path) -> None:
    """models/NAME/ missing beside models/NAME.pt where torch is not importable: one line with the export command."""
    os.symlink(SHIPPED.with_name("dualdepth_default.pt"), tmp_path / "m.pt")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", DERIVE_WITHOUT_TORCH, str(tmp_path / "m")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ModelError: {tmp_path / 'm'} has no model.onnx"), lines
    assert f"run `dualdepth export --checkpoint {tmp_path / 'm.pt'} --out {tmp_path / 'm'} --per-branch`" in lines[0]
    assert not (tmp_path / "m").exists()
