"""The default model folder (models/dualdepth_default/) is derived from the one stored model
(models/dualdepth_default.pt), at build (``make build``), by the test session (conftest) or at first
use, and matches it: same weights, config and input, and ONNX Runtime's outputs equal a fresh
PyTorch forward of the checkpoint (per branch: depth within 1e-4 relative, confidence within 1e-5).
First use exports once for concurrent processes and gives the same bytes; setup.py refuses to
install without the derived folder; the Makefile re-derives it when the checkpoint is newer.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dualdepth_ros.inference import ModelError, load_metadata, open_backend
from dualdepth_ros.inference.metadata import file_sha256
from dualdepth_ros.inference.weights import depth_state_dict, state_dict_sha256
from dualdepth_ros.training.checkpoint import load_checkpoint, model_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "models" / "dualdepth_default.pt"
SHIPPED = REPO / "models" / "dualdepth_default"
FIX = "run `make export-default` to derive it again"


def stale_reasons(ckpt: dict, model_dir: Path) -> list[str]:
    """Why ``model_dir`` is not the export of ``ckpt`` (empty when it is)."""
    md = load_metadata(model_dir)
    inp = ckpt.get("input") or {}
    checks = {
        "weights_sha256": (md.weights_sha256, state_dict_sha256(depth_state_dict(ckpt))),
        "config_hash": (md.config_hash, ckpt.get("config_hash")),
        "input size": ((md.input_width, md.input_height), (inp.get("width"), inp.get("height"))),
        "resize_mode": (md.resize_mode, inp.get("resize_mode")),
        "checkpoint_step": (md.checkpoint_step, ckpt.get("step")),
        "onnx_sha256": (md.onnx_sha256, file_sha256(model_dir / "model.onnx")),
        "weights.pt": (md.weights_sha256, torch.load(model_dir / "weights.pt", weights_only=True)["weights_sha256"]),
    }
    return [
        f"{name} ({have!r} in the export, {want!r} expected)" for name, (have, want) in checks.items() if have != want
    ]


def test_derived_folder_matches_the_checkpoint() -> None:
    assert sorted(p.name for p in SHIPPED.iterdir()) == ["model.json", "model.onnx", "weights.pt"]
    reasons = stale_reasons(load_checkpoint(CKPT), SHIPPED)
    assert not reasons, f"{SHIPPED} was not exported from {CKPT}: {'; '.join(reasons)}; {FIX}"


def test_derived_onnx_equals_a_fresh_forward_of_the_checkpoint() -> None:
    loaded = model_from_checkpoint(CKPT)
    backend = open_backend(SHIPPED, "onnxruntime", per_branch=True, threads=1)
    md = backend.metadata
    x = np.random.default_rng(7).random((2, 3, md.input_height, md.input_width), dtype=np.float32)
    got = backend.infer(x)
    with torch.no_grad():
        ref = loaded.depth_net(torch.from_numpy(x))
    for b, (d, c) in enumerate(got.branches):
        rd, rc = ref[("depth", b, 0)].numpy(), ref[("conf", b, 0)].numpy()
        err_d, err_c = float(np.max(np.abs(d - rd) / rd)), float(np.max(np.abs(c - rc)))
        assert err_d <= 1e-4 and err_c <= 1e-5, (
            f"branch {b}: the derived ONNX differs from the checkpoint (depth {err_d:.2g} relative, "
            f"confidence {err_c:.2g}); {FIX}"
        )


def test_the_check_fails_for_another_checkpoint() -> None:
    ckpt = load_checkpoint(CKPT)
    key = next(k for k in ckpt["model"] if k.startswith("depth.") and ckpt["model"][k].is_floating_point())
    ckpt["model"][key] = ckpt["model"][key] + 1e-3  # a retrained checkpoint
    ckpt["step"] = (ckpt.get("step") or 0) + 1
    reasons = stale_reasons(ckpt, SHIPPED)
    assert [r.split(" ")[0] for r in reasons] == ["weights_sha256", "checkpoint_step"]


def test_the_install_tree_ships_the_exported_model() -> None:
    """setup.py's data_files install models/dualdepth_default/* (``make build`` derives it, then runs colcon)."""
    share = REPO / "install" / "dualdepth_ros" / "share" / "dualdepth_ros" / "models" / "dualdepth_default"
    if not (REPO / "install" / "dualdepth_ros").exists():
        pytest.skip("install/ is missing: run `make build` (part of `make test`) first")
    for name in ("model.onnx", "model.json", "weights.pt"):
        assert (share / name).is_file(), f"{share / name} is not installed (setup.py data_files)"
    assert load_metadata(share) == load_metadata(SHIPPED)


FIRST_USE = r"""
import sys
from dualdepth_ros.inference import open_backend

lines = []
backend = open_backend(sys.argv[1], "onnxruntime", device="cpu", threads=1, log=lines.append)
print("\n".join(line for line in lines if "derived" in line))
print("backend", backend.name)
"""


def test_first_use_derives_the_folder_once_with_the_same_bytes(tmp_path: Path) -> None:
    """A folder that is missing beside its checkpoint is derived at first use: two processes open it at
    once, one exports (one log line with its duration), both run, and the files equal the repository's
    derived folder byte for byte (the export is deterministic).
    """
    os.symlink(CKPT, tmp_path / "mymodel.pt")
    folder = tmp_path / "mymodel"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_USE, str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()[-2000:]
        assert out.decode().splitlines()[-1] == "backend onnxruntime"
    derived = [line for out, _ in outs for line in out.decode().splitlines() if "derived" in line]
    assert len(derived) == 1, derived  # exported once: the other process waited for the lock
    assert derived[0].startswith(f"{folder} had no model.onnx: derived it from {tmp_path / 'mymodel.pt'} in ")
    assert float(derived[0].split(" in ")[1].split(" s ")[0]) > 0
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.onnx", "weights.pt"]
    for name in ("model.onnx", "model.json", "weights.pt"):
        assert (folder / name).read_bytes() == (SHIPPED / name).read_bytes(), name
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary folder left


def test_a_partial_folder_is_one_clear_error(tmp_path: Path) -> None:
    """A folder beside its checkpoint that holds other files is not replaced: one line saying why."""
    os.symlink(CKPT, tmp_path / "m.pt")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError, match=r"has no model.onnx and deriving it from .*m.pt failed: .*not empty"):
        load_metadata(tmp_path / "m")
    assert (tmp_path / "m" / "notes.txt").read_text() == "keep me"


def test_a_folder_without_a_checkpoint_is_not_derived(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model folder not found"):
        open_backend(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_setup_py_refuses_to_install_without_the_derived_folder(tmp_path: Path) -> None:
    shutil.copy(REPO / "setup.py", tmp_path / "setup.py")
    proc = subprocess.run(
        [sys.executable, "setup.py", "build", "install"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "models/dualdepth_default/model.onnx is missing: it is derived from models/dualdepth_default.pt" in (
        proc.stderr
    )
    assert "make build" in proc.stderr
    # Other setup.py uses (colcon's package identification, pip's metadata) go on without it.
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "dualdepth_ros", proc.stderr


def test_make_build_derives_the_folder_when_the_checkpoint_is_newer() -> None:
    """The Makefile's rule: model.onnx depends on the checkpoint, and `build` (colcon) depends on model.onnx."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    export = "dualdepth export --checkpoint models/dualdepth_default.pt --out models/dualdepth_default --per-branch"

    def dry_run(*args: str) -> str:
        proc = subprocess.run([make, "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert export in dry_run("-W", "models/dualdepth_default.pt", "build")  # the checkpoint changed
    out = dry_run("-W", "models/dualdepth_default.pt", "models/dualdepth_default/model.onnx")
    assert export in out
    newer = (SHIPPED / "model.onnx").stat().st_mtime_ns > CKPT.stat().st_mtime_ns
    assert (export in dry_run("models/dualdepth_default/model.onnx")) != newer  # up to date: nothing to do
    build = dry_run("-W", "models/dualdepth_default.pt", "build")
    assert build.index(export) < build.index("colcon")  # derived before colcon installs it
