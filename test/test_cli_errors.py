"""User errors of train/pack/eval/infer/make-sample are one line (``error: …``, exit 2), never a traceback.

Covers issue 15's list: ``pack --out`` onto its own checkpoint, a checkpoint whose ``model`` is not a
state dict, ``train --resume`` from a packed file, invalid optimiser values, disk errors (a real
read-only mount or a full tmpfs), ``eval --json``/``--plots`` that cannot be written, and ``train``
stopped by a signal exiting non-zero.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from small_model import write_small_checkpoint

from dualdepth_ros import cli
from dualdepth_ros.training.checkpoint import FORMAT, load_checkpoint


def one_line_error(capsys: pytest.CaptureFixture[str], rc: int) -> str:
    """The single stderr line of a command that failed with a user error (exit 2)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


# ---------------------------------------------------------------------------------------
# pack and resume
# ---------------------------------------------------------------------------------------
def test_pack_refuses_to_write_over_its_own_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = write_small_checkpoint(tmp_path, tmp_path / "cache")
    before = ckpt.read_bytes()
    (tmp_path / "link.pt").symlink_to(ckpt)
    os.link(ckpt, tmp_path / "hard.pt")
    (tmp_path / "sub").mkdir()
    same = [ckpt, tmp_path / "link.pt", tmp_path / "sub" / ".." / ckpt.name, tmp_path / "hard.pt"]
    for out in same:
        rc = cli.main(["pack", "--checkpoint", str(ckpt), "--out", str(out)])
        assert "is the checkpoint itself" in one_line_error(capsys, rc)
        rc = cli.main(["pack", "--checkpoint", str(out), "--out", str(ckpt)])  # either side a link
        assert "is the checkpoint itself" in one_line_error(capsys, rc)
    assert ckpt.read_bytes() == before and "step" in load_checkpoint(ckpt)
    # A different file is packed.
    assert cli.main(["pack", "--checkpoint", str(tmp_path / "link.pt"), "--out", str(tmp_path / "m.pt")]) == 0
    assert load_checkpoint(tmp_path / "m.pt")["weights_dtype"] == "float16"


@pytest.mark.parametrize("model", [[1, 2], "weights", {"w": [1.0]}], ids=["list", "str", "dict-of-lists"])
def test_pack_of_a_checkpoint_whose_model_is_not_a_state_dict(
    model: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"format": FORMAT, "model": model, "config": {}}, bad)
    rc = cli.main(["pack", "--checkpoint", str(bad), "--out", str(tmp_path / "out.pt")])
    assert "not a state dict of tensors" in one_line_error(capsys, rc)
    assert not (tmp_path / "out.pt").exists()


def test_pack_refuses_weights_that_do_not_fit_their_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = load_checkpoint(write_small_checkpoint(tmp_path, tmp_path / "cache"))
    key = next(k for k, v in ckpt["model"].items() if v.dim() == 4)
    ckpt["model"][key] = torch.zeros(1, 1, 1, 1)
    torch.save(ckpt, tmp_path / "bad.pt")
    rc = cli.main(["pack", "--checkpoint", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "out.pt")])
    line = one_line_error(capsys, rc)
    assert key in line and "(1, 1, 1, 1)" in line, line
    assert not (tmp_path / "out.pt").exists()


def test_resume_from_a_packed_file_says_to_use_init(
    sample_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUALDEPTH_CACHE", str(tmp_path / "frames"))
    run = tmp_path / "run"
    run.mkdir()
    packed = write_small_checkpoint(tmp_path, tmp_path / "cache")
    shutil.copy(packed, run / "last.pt")
    rc = cli.main(["train", "--bag", str(sample_bag), "--out", str(run), "--resume", "--no-progress"])
    line = one_line_error(capsys, rc)
    assert "packed model file" in line and f"--init {run / 'last.pt'}" in line, line
    assert not (tmp_path / "frames").exists()  # refused before any data was decoded


# ---------------------------------------------------------------------------------------
# configuration values
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--set", "optim.batch_size=0"], "optim.batch_size must be at least 1"),
        (["--set", "optim.batch_size=-1"], "optim.batch_size must be at least 1"),
        (["--batch-size", "0"], "optim.batch_size must be at least 1"),
        (["--set", "optim.learning_rate=nan"], "optim.learning_rate: expected a finite number"),
        (["--set", "optim.learning_rate=.inf"], "optim.learning_rate: expected a finite number"),
        (["--set", "optim.learning_rate=0"], "optim.learning_rate must be a positive number"),
        (["--set", "optim.learning_rate=-1e-4"], "optim.learning_rate must be a positive number"),
        (["--max-steps", "-1"], "train.max_steps (--max-steps) must be 0"),
        (["--set", "train.log_every=0"], "train.log_every must be at least 1"),
        (["--set", "loss.photometric.weight=.nan"], "loss.photometric.weight: expected a finite number"),
    ],
)
def test_invalid_optimisation_values_are_refused_before_anything_runs(
    argv: list[str],
    expected: str,
    sample_bag: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DUALDEPTH_CACHE", str(tmp_path / "frames"))
    rc = cli.main(["train", "--bag", str(sample_bag), "--out", str(tmp_path / "run"), "--no-progress", *argv])
    assert expected in one_line_error(capsys, rc)
    assert not (tmp_path / "run").exists() and not (tmp_path / "frames").exists()


def test_the_typed_config_checks_values_for_every_entry_point() -> None:
    from dualdepth_ros.config import ConfigError, load_config
    from dualdepth_ros.training.trainer import TrainSection  # noqa: F401 - registers the train: section

    with pytest.raises(ConfigError, match="optim.batch_size"):
        load_config(overrides=["optim.batch_size=0"])
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(overrides=["train.max_steps=-5"])
    assert load_config(overrides=["train.max_steps=0", "optim.learning_rate=1e-3"]).optim.learning_rate == 1e-3
