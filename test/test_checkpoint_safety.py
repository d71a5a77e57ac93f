"""Reading a checkpoint never runs code stored in it (``torch.load(..., weights_only=True)``).

A ``.pt`` whose pickle carries a ``__reduce__`` payload (here: ``os.system("touch MARKER")``) is fed
to every command that reads a checkpoint, as a real ``dualdepth`` subprocess, in the zip and in the
legacy (non-zip) format. The marker must never appear and each command must fail at load time with
one line. Old checkpoints (numpy's RNG state pickled as an ``ndarray``) still load, and a resumed
run still restores every RNG state exactly.
"""

import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dualdepth_ros.training.checkpoint import load_checkpoint, rng_state, set_rng_state

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_malicious(path: Path, marker: Path, legacy: bool) -> Path:
    """A checkpoint-shaped dict whose ``model`` entry runs ``touch marker`` when unpickled unsafely."""
    obj = {"format": "dualdepth_ros.checkpoint/1", "model": _Payload(f"touch {marker}"), "step": 1}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_the_payload_is_live_when_unpickled_unsafely(tmp_path: Path, legacy: bool) -> None:
    """The test's own check: the file does run code under plain unpickling (so its absence below means something)."""
    marker = tmp_path / "ran"
    evil = write_malicious(tmp_path / "evil.pt", marker, legacy)
    try:
        torch.load(evil, weights_only=False)
    except Exception:  # noqa: BLE001 - the legacy loader fails after the payload ran; only the marker matters
        pass
    assert marker.exists()


def _commands(evil: Path, tmp: Path, sample_bag: Path) -> dict[str, list[str]]:
    run_dir = tmp / "run"
    (run_dir).mkdir()
    os.replace(evil, run_dir / "last.pt")  # `train --resume` reads RUN/last.pt
    evil_for_others = run_dir / "last.pt"
    return {
        "eval": ["eval", "--checkpoint", str(evil_for_others), "--bag", str(sample_bag)],
        "export": ["export", "--checkpoint", str(evil_for_others), "--out", str(tmp / "exported")],
        "pack": ["pack", "--checkpoint", str(evil_for_others), "--out", str(tmp / "packed.pt")],
        "bench infer": [
            "bench",
            "infer",
            "--model",
            str(REPO / "models" / "dualdepth_default"),
            "--checkpoint",
            str(evil_for_others),
            "--backend",
            "onnxruntime",
            "--repeats",
            "2",
            "--warmup",
            "0",
        ],
        "train --resume": ["train", "--bag", str(sample_bag), "--out", str(run_dir), "--resume", "--no-progress"],
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("command", ["eval", "export", "pack", "bench infer", "train --resume"])
def test_a_malicious_checkpoint_runs_no_code(
    command: str, legacy: bool, tmp_path: Path, sample_bag: Path, dualdepth_exe: list[str]
) -> None:
    marker = tmp_path / "MARKER"
    evil = write_malicious(tmp_path / "evil.pt", marker, legacy)
    argv = _commands(evil, tmp_path, sample_bag)[command]
    env = {**os.environ, "DUALDEPTH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(dualdepth_exe + argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert not marker.exists(), f"{command} ran the checkpoint's code"
    assert proc.returncode != 0, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert err[0].startswith("error: refusing checkpoint") and "posix.system" in err[0], err[0]
    assert not (tmp_path / "packed.pt").exists() and not (tmp_path / "cache").exists()  # failed at load time


def test_old_checkpoints_with_a_numpy_rng_state_still_load(tmp_path: Path) -> None:
    """The checkpoint layout before weights-only loading: numpy's state as a tuple holding an ndarray."""
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    old = {
        "model": {"w": torch.ones(2)},
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "metrics": {"loss": np.float32(0.5), "n": np.int64(3)},
    }
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(1))
    torch.save(old, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    set_rng_state(ckpt["rng"])
    assert (random.random(), np.random.rand(), np.random.randn(), torch.rand(1)) == expected
    assert ckpt["metrics"]["loss"] == 0.5


def test_new_rng_states_need_no_allowlist_and_restore_exactly(tmp_path: Path) -> None:
    from torch.serialization import get_unsafe_globals_in_checkpoint

    np.random.randn()  # leave a cached Gaussian in numpy's state
    torch.save({"model": {}, "rng": rng_state()}, tmp_path / "new.pt")
    assert get_unsafe_globals_in_checkpoint(tmp_path / "new.pt") == []
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(1))
    set_rng_state(torch.load(tmp_path / "new.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), np.random.randn(), torch.rand(1)) == expected


def test_the_shipped_model_loads_weights_only() -> None:
    ckpt = load_checkpoint(REPO / "models" / "dualdepth_default.pt")
    assert ckpt["format"] == "dualdepth_ros.checkpoint/1" and ckpt["model"]
