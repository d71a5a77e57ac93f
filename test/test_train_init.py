"""``dualdepth train --init CHECKPOINT``: fine-tuning from a checkpoint's (or a packed model's) weights.

The run starts from the file's weights with a fresh optimiser, schedule and step 0; a network that
does not fit the config is refused with one line naming the first mismatch, before any data is
decoded; ``--init`` with ``--resume`` is an error; the banner, ``config.json`` and the new
checkpoints record what was loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_config import TINY_MODEL

from dualdepth_ros import cli
from dualdepth_ros.config import DEFAULT_CONFIG, load_config
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.training.checkpoint import load_checkpoint
from dualdepth_ros.training.pack import pack
from dualdepth_ros.training.trainer import Trainer

TINY = [
    *TINY_MODEL,
    "train.micro_batch=2",
    "train.val_max_clips=4",
    "train.image_every=0",
]


def tiny_cfg(*extra: str):
    return load_config(DEFAULT_CONFIG, overrides=TINY + list(extra))


def sets(*extra: str) -> list[str]:
    return [a for s in TINY + list(extra) for a in ("--set", s)]


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("frames")


@pytest.fixture(autouse=True)
def frame_cache(frames: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUALDEPTH_CACHE", str(frames))


@pytest.fixture(scope="module")
def pretrained(sample_bag: Path, tmp_path_factory: pytest.TempPathFactory, frames: Path) -> Path:
    """A real 3-step training checkpoint (optimiser state, schedule, step 3), learning rate raised so weights move."""
    import os

    old = os.environ.get("DUALDEPTH_CACHE")
    os.environ["DUALDEPTH_CACHE"] = str(frames)
    try:
        out = tmp_path_factory.mktemp("pretrained") / "run"
        cfg = tiny_cfg("train.max_steps=3", "optim.learning_rate=0.01", "optim.seed=5")
        Trainer(cfg, [str(sample_bag)], out, progress=False).fit()
    finally:
        if old is None:
            os.environ.pop("DUALDEPTH_CACHE")
        else:
            os.environ["DUALDEPTH_CACHE"] = old
    return out / "last.pt"


def test_init_starts_from_the_weights_with_a_fresh_optimiser_and_step_0(
    pretrained: Path, sample_bag: Path, tmp_path: Path
) -> None:
    source = load_checkpoint(pretrained)
    assert source["step"] == 3 and source["optimizer"]["state"]
    scratch = Trainer(tiny_cfg("train.max_steps=2"), [str(sample_bag)], tmp_path / "scratch", progress=False)
    tuned = Trainer(tiny_cfg("train.max_steps=2"), [str(sample_bag)], tmp_path / "ft", progress=False, init=pretrained)
    for key, value in source["model"].items():
        assert torch.equal(tuned.model.state_dict()[key], value), key
    assert any(not torch.equal(scratch.model.state_dict()[k], v) for k, v in source["model"].items())
    assert tuned.step == 0 and not tuned.optimizer.state_dict()["state"]  # nothing of the source's Adam moments
    assert tuned.scheduler.last_epoch == 0
    assert tuned.scheduler.get_last_lr() == scratch.scheduler.get_last_lr()  # the schedule of this config

    summary = tuned.fit()
    assert summary["step"] == 2 and summary["total_steps"] == 2
    ckpt = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert ckpt["step"] == 2 and ckpt["scheduler"]["last_epoch"] == 2
    assert ckpt["init"] == {
        "path": str(pretrained.absolute()),
        "step": 3,
        "input": {"width": 96, "height": 32, "resize_mode": "crop_center"},
        "config_hash": source["config_hash"],
    }
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["init"] == ckpt["init"]
    moved = [k for k, v in source["model"].items() if v.is_floating_point() and not torch.equal(ckpt["model"][k], v)]
    assert moved  # it trained from there


def test_init_from_a_packed_model_through_the_cli(
    pretrained: Path, sample_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packed = tmp_path / "model.pt"
    torch.save(pack(load_checkpoint(pretrained), fp16=True), packed)
    argv = ["train", "--bag", str(sample_bag), "--out", str(tmp_path / "ft"), "--max-steps", "1", "--no-progress"]
    assert cli.main(argv + ["--init", str(packed)] + sets()) == 0
    out = capsys.readouterr().out
    assert f"initialised from {packed.absolute()} (its step 3, input 96x32)" in out
    ckpt = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert ckpt["step"] == 1 and ckpt["init"]["path"] == str(packed.absolute())
    # A second call with --resume-if-exists continues that run (it does not start from the packed file again).
    again_argv = argv[:-3] + ["--max-steps", "2", "--resume-if-exists", "--init", str(packed), "--no-progress"]
    assert cli.main(again_argv + sets()) == 0
    again = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert again["step"] == 2 and again["init"] == ckpt["init"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["model.encoder_width=16"], "'depth.encoder.conv1.weight' has shape (8, 3, 7, 7), the network expects (16,"),
        (["model.num_branches=1", "loss.two_branch.enabled=false"], "unexpected key 'depth.branches.1."),
        (["model.scales=[0,1,2,3,4]"], "missing key 'depth.branches.0.heads.4."),
    ],
    ids=["shape", "unexpected", "missing"],
)
def test_a_network_that_does_not_fit_is_refused_with_the_first_mismatch(
    extra: list[str],
    expected: str,
    pretrained: Path,
    sample_bag: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DUALDEPTH_CACHE", str(tmp_path / "no_frames"))
    argv = ["train", "--bag", str(sample_bag), "--out", str(tmp_path / "ft"), "--max-steps", "1", "--no-progress"]
    rc = cli.main(argv + ["--init", str(pretrained)] + sets(*extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: --init {pretrained}: its network does not fit") and expected in err[0], err[0]
    assert "model.encoder_width 8" in err[0]  # what the file was trained with
    assert not (tmp_path / "no_frames").exists() and not (tmp_path / "ft" / "last.pt").exists()


def test_init_with_resume_is_an_error(
    pretrained: Path, sample_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--bag", str(sample_bag), "--out", str(tmp_path), "--resume", "--init", str(pretrained)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init" in err[0] and "--resume" in err[0], err
    with pytest.raises(DualDepthError, match="give one"):
        Trainer(tiny_cfg(), [str(sample_bag)], tmp_path, resume=True, init=pretrained, progress=False)
