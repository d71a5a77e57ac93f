"""The shipped export (models/dualdepth_default/) matches the shipped checkpoint
(models/dualdepth_default.pt): same weights, config and input, and ONNX Runtime's outputs equal a
fresh PyTorch forward of the checkpoint (per branch: depth within 1e-4 relative, confidence within
1e-5). After the checkpoint changes, ``make export-default`` must be re-run; this test says so.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from dualdepth_ros.inference import load_metadata, open_backend
from dualdepth_ros.inference.metadata import file_sha256
from dualdepth_ros.inference.weights import depth_state_dict, state_dict_sha256
from dualdepth_ros.training.checkpoint import load_checkpoint, model_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "models" / "dualdepth_default.pt"
SHIPPED = REPO / "models" / "dualdepth_default"
FIX = "run `make export-default` to re-export it"


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


def test_shipped_export_matches_the_checkpoint() -> None:
    assert sorted(p.name for p in SHIPPED.iterdir()) == ["model.json", "model.onnx", "weights.pt"]
    reasons = stale_reasons(load_checkpoint(CKPT), SHIPPED)
    assert not reasons, f"{SHIPPED} was not exported from {CKPT}: {'; '.join(reasons)}; {FIX}"


def test_shipped_onnx_equals_a_fresh_forward_of_the_checkpoint() -> None:
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
            f"branch {b}: the shipped ONNX differs from the checkpoint (depth {err_d:.2g} relative, "
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
    """setup.py's data_files install models/dualdepth_default/* (``make build`` runs colcon before the tests)."""
    share = REPO / "install" / "dualdepth_ros" / "share" / "dualdepth_ros" / "models" / "dualdepth_default"
    if not (REPO / "install" / "dualdepth_ros").exists():
        pytest.skip("install/ is missing: run `make build` (part of `make test`) first")
    for name in ("model.onnx", "model.json", "weights.pt"):
        assert (share / name).is_file(), f"{share / name} is not installed (setup.py data_files)"
    assert load_metadata(share) == load_metadata(SHIPPED)
