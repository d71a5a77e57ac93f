"""Output folders: ``--overwrite`` replaces only a folder of the command's own kind, and never an input.

``export`` and ``demo`` used to delete any folder given with ``--overwrite`` (``--out models``, the
model name forgotten; ``--out runs/mycar``); ``demo`` did so before it had checked the bag or the
model. Each case here is refused with one line and leaves every file in place. The folders are
copies under ``tmp_path``: the repository's own ``models`` folder is never offered to a command.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dualdepth_ros.cli import main
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.outdir import (
    BAG,
    DEMO_MARKER,
    DEMO_RUN,
    MODEL,
    check_output_dir,
    check_separate,
    looks_like_bag,
    looks_like_demo_run,
    looks_like_model,
    replace_dir,
    temporary_sibling,
)

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "models" / "dualdepth_default.pt"
SHIPPED = REPO / "models" / "dualdepth_default"
SAMPLE = REPO / "test" / "data" / "sample_drive"


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (relative) → its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def models_like_folder(root: Path) -> Path:
    """A stand-in for the repository's ``models`` folder: checkpoints, a model folder, plots."""
    models = root / "models"
    models.mkdir()
    (models / "dualdepth_default.pt").write_bytes(b"checkpoint bytes")
    (models / "MODEL_CARD.md").write_text("card")
    shutil.copytree(SHIPPED, models / "dualdepth_default")
    (models / "plots").mkdir()
    (models / "plots" / "mosaic.png").write_bytes(b"png")
    return models


def mycar_folder(root: Path) -> Path:
    run = root / "runs" / "mycar"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"three days of training")
    (run / "config.json").write_text("{}")
    (run / "tb").mkdir()
    (run / "tb" / "events").write_bytes(b"log")
    return run


# ---------------------------------------------------------------------------------------
# The shared rule
# ---------------------------------------------------------------------------------------
def test_folders_are_recognised_by_their_content(tmp_path: Path) -> None:
    assert looks_like_model(SHIPPED) and not looks_like_bag(SHIPPED) and not looks_like_demo_run(SHIPPED)
    assert looks_like_bag(SAMPLE) and not looks_like_model(SAMPLE) and not looks_like_demo_run(SAMPLE)
    models = models_like_folder(tmp_path)
    assert not looks_like_model(models) and not looks_like_demo_run(models) and not looks_like_bag(models)
    run = mycar_folder(tmp_path)
    assert not looks_like_model(run) and not looks_like_demo_run(run) and not looks_like_bag(run)
    # A model folder with cached TensorRT engines is still a model folder; one extra file makes it not one.
    m = tmp_path / "m"
    shutil.copytree(SHIPPED, m)
    (m / "model.0123abcd.plan").write_bytes(b"plan")
    (m / "model.0123abcd.json").write_text("{}")
    assert looks_like_model(m)
    (m / "notes.txt").write_text("mine")
    assert not looks_like_model(m)
    # A demo run: its marker or node.log, and only what demo writes.
    d = tmp_path / "d"
    d.mkdir()
    (d / "node.log").write_text("log")
    assert looks_like_demo_run(d)
    shutil.copytree(SAMPLE, d / "bag")
    (d / "summary.json").write_text("{}")
    assert looks_like_demo_run(d)
    (d / "thesis.tex").write_text("mine")
    assert not looks_like_demo_run(d)


def test_check_output_dir_refuses_what_is_not_its_kind(tmp_path: Path) -> None:
    run = mycar_folder(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(SHIPPED)
    before = snapshot(tmp_path)
    for kind in (BAG, MODEL, DEMO_RUN):
        check_output_dir(tmp_path / "new", False, kind)  # absent: fine
        with pytest.raises(DualDepthError, match="is not empty \\(use --overwrite"):
            check_output_dir(run, False, kind)
        with pytest.raises(DualDepthError, match=f"does not look like {kind.name}.*refusing to delete"):
            check_output_dir(run, True, kind)
    with pytest.raises(DualDepthError, match="symbolic link"):
        check_output_dir(link, True, MODEL)
    with pytest.raises(DualDepthError, match="root folder"):
        check_output_dir("/", True, MODEL)
    assert snapshot(tmp_path) == before


def test_replace_dir_swaps_and_rechecks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(SHIPPED, out)
    tmp = temporary_sibling(out)
    (tmp / "model.json").write_text("new")
    replace_dir(tmp, out, True, MODEL)
    assert [p.name for p in out.iterdir()] == ["model.json"] and (out / "model.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or backup folder left
    # The destination changed meanwhile (someone put a file there): refused, both folders kept.
    (out / "model.onnx").write_text("x")
    (out / "mine.txt").write_text("mine")
    tmp = temporary_sibling(out)
    with pytest.raises(DualDepthError, match="does not look like an exported model folder"):
        replace_dir(tmp, out, True, MODEL)
    assert (out / "mine.txt").read_text() == "mine"


def test_check_separate_compares_real_paths(tmp_path: Path) -> None:
    bs = tmp_path / "bs"
    shutil.copytree(SAMPLE, bs)
    bag_file = bs / "sample_drive.mcap"
    link = tmp_path / "link"
    link.symlink_to(bs)
    (tmp_path / "x").mkdir()
    cases = {
        "is": (bs, {"--bag": bs}),
        "contains": (bs, {"--bag": bag_file}),
        "lies inside": (bs / "sub", {"--bag": bs}),
    }
    for how, (out, inputs) in cases.items():
        with pytest.raises(DualDepthError, match=f"--out .* {how} the input --bag"):
            check_separate(out, inputs)
    with pytest.raises(DualDepthError, match="is the input --bag"):
        check_separate(link, {"--bag": bs})
    with pytest.raises(DualDepthError, match="is the input --bag"):
        check_separate(f"{tmp_path}/x/../bs/", {"--bag": bs})
    with pytest.raises(DualDepthError, match="contains the input --bag"):
        check_separate(tmp_path, {"--bag": link / "sample_drive.mcap"})
    check_separate(tmp_path / "bs2", {"--bag": bs, "--model": None})  # a sibling is fine


# ---------------------------------------------------------------------------------------
# dualdepth export
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["models", "runs/mycar"])
def test_export_overwrite_refuses_a_folder_that_is_not_a_model(tmp_path: Path, capsys, which: str) -> None:
    out = models_like_folder(tmp_path) if which == "models" else mycar_folder(tmp_path)
    before = snapshot(tmp_path)
    assert main(["export", "--checkpoint", str(CKPT), "--out", str(out), "--overwrite"]) == 2
    err = one_line_error(capsys)
    assert "does not look like an exported model folder" in err and "refusing to delete" in err
    assert snapshot(tmp_path) == before


def test_export_refuses_a_checkpoint_inside_out(tmp_path: Path, capsys) -> None:
    out = tmp_path / "m"
    shutil.copytree(SHIPPED, out)
    before = snapshot(tmp_path)
    # weights.pt is a model file, so "m" is a model folder; it is also the input here.
    assert main(["export", "--checkpoint", str(out / "weights.pt"), "--out", str(out), "--overwrite"]) == 2
    assert "contains the input --checkpoint" in one_line_error(capsys)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", [".", "..", "here"])
def test_export_to_the_current_directory_is_refused_before_exporting(
    tmp_path: Path, capsys, monkeypatch, where: str
) -> None:
    """`--out .` was renamed over the working directory after the whole export, then a traceback."""
    cwd = tmp_path / "here" / "deep" if where == ".." else tmp_path / "here"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    out = str(tmp_path / "here") if where == "here" else where
    before = snapshot(tmp_path)
    assert main(["export", "--checkpoint", str(CKPT), "--out", out]) == 2
    assert "is (or holds) the current directory" in one_line_error(capsys)
    assert snapshot(tmp_path) == before and Path.cwd() == cwd.resolve()


# ---------------------------------------------------------------------------------------
# dualdepth demo
# ---------------------------------------------------------------------------------------
def demo_run_folder(root: Path) -> Path:
    run = root / "runs" / "demo"
    run.mkdir(parents=True)
    (run / DEMO_MARKER).write_text("")
    (run / "node.log").write_text("the earlier run")
    (run / "summary.json").write_text("{}")
    return run


def test_demo_overwrite_refuses_a_folder_that_is_not_a_demo_run(tmp_path: Path, capsys) -> None:
    for out in (mycar_folder(tmp_path), models_like_folder(tmp_path)):
        before = snapshot(tmp_path)
        assert main(["demo", "--bag", str(SAMPLE), "--out", str(out), "--overwrite"]) == 2
        err = one_line_error(capsys)
        assert "does not look like a dualdepth demo run folder" in err
        assert snapshot(tmp_path) == before


def test_demo_checks_the_bag_and_the_model_before_touching_out(tmp_path: Path, capsys) -> None:
    run = demo_run_folder(tmp_path)
    before = snapshot(tmp_path)
    assert main(["demo", "--bag", str(tmp_path / "nobag"), "--out", str(run), "--overwrite"]) == 2
    assert "does not exist" in one_line_error(capsys)
    assert main(["demo", "--model", str(tmp_path / "nomodel"), "--out", str(run), "--overwrite"]) == 2
    assert "nomodel" in one_line_error(capsys)
    # --out inside the input bag
    bag = tmp_path / "bag"
    shutil.copytree(SAMPLE, bag)
    assert main(["demo", "--bag", str(bag), "--out", str(bag / "demo"), "--overwrite"]) == 2
    assert "lies inside the input --bag" in one_line_error(capsys)
    shutil.rmtree(bag)
    assert snapshot(tmp_path) == before


def test_demo_replaces_its_own_run_and_keeps_the_node_log_of_a_failed_one(tmp_path: Path, capsys) -> None:
    """A node command that exits at once: the error is one line, and ``--out`` then holds this run's
    ``node.log`` (what the error points to) instead of the earlier run; no temporary folder is left.
    """
    run = demo_run_folder(tmp_path)
    fail = f"{shutil.which('sh') or '/bin/sh'} -c 'echo node says no; exit 3'"
    env = {k: os.environ.get(k) for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "ROS_DOMAIN_ID")}
    try:
        args = ["demo", "--bag", str(SAMPLE), "--out", str(run), "--overwrite", "--node-command", fail]
        assert main([*args, "--startup-timeout", "60"]) == 2
    finally:
        for k, v in env.items():  # demo sets them for its child processes
            if v is not None:
                os.environ[k] = v
    err = capsys.readouterr().err
    assert "error: depth_node exited with status 3" in err and "node says no" in err
    assert sorted(p.name for p in run.iterdir()) == [DEMO_MARKER, "node.log"]
    assert "node says no" in (run / "node.log").read_text()
    assert sorted(p.name for p in run.parent.iterdir()) == ["demo"]
