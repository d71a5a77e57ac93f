"""User errors of train/pack/eval/infer/make-sample are one line (``error: …``, exit 2), never a traceback.

Covers issue 15's list: ``pack --out`` onto its own checkpoint, a checkpoint whose ``model`` is not a
state dict, ``train --resume`` from a packed file, invalid optimiser values, disk errors (a real
read-only mount or a full tmpfs), ``eval --json``/``--plots`` that cannot be written, and ``train``
stopped by a signal exiting non-zero.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from small_model import write_small_checkpoint
from tiny_config import TINY_MODEL

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


# ---------------------------------------------------------------------------------------
# disk errors: a real read-only mount and a real full file system
# ---------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def _try(*cmd: str) -> bool:
    """Run a mount-type command; False when it is missing or not permitted (not root, no CAP_SYS_ADMIN)."""
    if shutil.which(cmd[0]) is None:
        return False
    return subprocess.run(list(cmd), capture_output=True).returncode == 0


def _refuses_writes(folder: Path) -> bool:
    try:
        (folder / "probe").write_bytes(b"x" * 100_000)
    except OSError:
        return True
    (folder / "probe").unlink()
    return False


@pytest.fixture()
def read_only_dir(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    """A folder the system refuses to write into, even for root, and the errno names it gives.

    A read-only bind mount where mounting is permitted (EROFS); else a path under sysfs, where
    nobody, root included, can create a file (EPERM/EACCES, or EROFS where /sys is mounted ro).
    """
    src, ro = tmp_path / "ro_src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    if _try("mount", "--bind", str(src), str(ro)):
        _try("mount", "-o", "remount,bind,ro", str(ro))
        try:
            if _refuses_writes(ro):
                yield ro, ("EROFS",)
                return
        finally:
            _try("umount", str(ro))
    sys_dir = Path("/sys/dualdepth_test_no_such_dir")
    if not Path("/sys/kernel").is_dir() or not _refuses_writes(Path("/sys")):
        pytest.fail("neither a read-only bind mount nor sysfs can give a read-only folder on this machine")
    yield sys_dir, ("EPERM", "EACCES", "EROFS")


@contextlib.contextmanager
def full_folder(tmp_path: Path, kib: int):
    """A folder whose file system is full after ``kib`` KiB, the errno it gives, and a ``preexec_fn`` (or None).

    A ``kib`` KiB tmpfs where mounting is permitted (ENOSPC); else the subprocess's file-size limit
    (``ulimit -f``, EFBIG): either way a real write fails part-way.
    """
    full = tmp_path / "full"
    full.mkdir()
    if _try("mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(full)):
        try:
            yield full, ("ENOSPC",), None
        finally:
            _try("umount", str(full))
        return
    import resource

    def limit_file_size() -> None:  # Python ignores SIGXFSZ, so the write returns EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))

    yield full, ("EFBIG",), limit_file_size


@pytest.fixture()
def full_dir(tmp_path: Path) -> tuple[Path, tuple[str, ...], object]:
    with full_folder(tmp_path, 64) as full:
        yield full


def run_cli(dualdepth_exe: list[str], argv: list[str], tmp_path: Path, preexec: object = None):
    env = {**os.environ, "DUALDEPTH_CACHE": str(tmp_path / "frames")}
    return subprocess.run(
        dualdepth_exe + argv, capture_output=True, text=True, timeout=300, env=env, preexec_fn=preexec
    )


def assert_disk_error(proc: subprocess.CompletedProcess, target: Path, errnos: tuple[str, ...]) -> None:
    """Non-zero exit, no traceback, one ``error:`` line naming the output, the OS reason and what to do."""
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    line = errors[0]
    assert f"cannot write {target}" in line and any(f"({e})" in line for e in errnos), line
    assert "another --" in line, line


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("small")
    return write_small_checkpoint(folder, folder / "cache")


def _disk_commands(out: Path, sample_bag: Path, small_ckpt: Path) -> dict[str, tuple[list[str], Path]]:
    """Each command's argv and the output it names."""
    tiny = [a for s in TINY_MODEL for a in ("--set", s)]
    return {
        "train": (
            ["train", "--bag", str(sample_bag), "--out", str(out / "run"), "--max-steps", "1", "--no-progress", *tiny],
            out / "run",
        ),
        "pack": (["pack", "--checkpoint", str(small_ckpt), "--out", str(out / "model.pt")], out / "model.pt"),
        "make-sample": (["make-sample", "--out", str(out / "drive"), "--frames", "20"], out / "drive"),
        "infer": (
            ["infer", "--bag", str(sample_bag), "--out", str(out / "depth"), "--max-frames", "2", "--no-progress"],
            out / "depth",
        ),
        "eval": (
            ["eval", "--checkpoint", str(small_ckpt), "--bag", str(sample_bag), "--max-frames", "2", "--no-pose"]
            + ["--json", str(out / "eval.json")],
            out / "eval.json",
        ),
    }


@pytest.mark.parametrize("command", ["train", "pack", "make-sample", "infer", "eval"])
def test_a_read_only_disk_is_one_line(
    command: str,
    read_only_dir: tuple[Path, tuple[str, ...]],
    sample_bag: Path,
    small_ckpt: Path,
    tmp_path: Path,
    dualdepth_exe: list[str],
) -> None:
    folder, errnos = read_only_dir
    argv, target = _disk_commands(folder, sample_bag, small_ckpt)[command]
    assert_disk_error(run_cli(dualdepth_exe, argv, tmp_path), target, errnos)


@pytest.mark.parametrize("command", ["pack", "make-sample", "infer"])
def test_a_full_disk_is_one_line_and_leaves_nothing_behind(
    command: str,
    full_dir: tuple[Path, tuple[str, ...], object],
    sample_bag: Path,
    small_ckpt: Path,
    tmp_path: Path,
    dualdepth_exe: list[str],
) -> None:
    folder, errnos, preexec = full_dir
    argv, target = _disk_commands(folder, sample_bag, small_ckpt)[command]
    assert_disk_error(run_cli(dualdepth_exe, argv, tmp_path, preexec), target, errnos)
    assert not list(folder.iterdir())  # no partial file, no hidden temporary one


# ---------------------------------------------------------------------------------------
# eval's outputs
# ---------------------------------------------------------------------------------------
def test_eval_outputs_are_checked_before_the_evaluation(
    sample_bag: Path, small_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("keep me")
    base = ["eval", "--checkpoint", str(small_ckpt), "--bag", str(sample_bag), "--no-pose", "--max-frames", "2"]
    cases = [
        (["--json", str(tmp_path / "a_dir")], "is a folder; give the file to write"),
        (["--json", str(tmp_path / "new_dir") + "/"], "is a folder; give the file to write"),
        (["--json", str(tmp_path / "a_file" / "eval.json")], "is a file, not a folder"),
        (["--plots", str(tmp_path / "a_file")], "is a file; give a folder"),
        (["--json", str(tmp_path / "same"), "--plots", str(tmp_path / "same")], "name the same path"),
    ]
    for extra, expected in cases:
        rc = cli.main(base + extra)
        assert expected in one_line_error(capsys, rc)
        assert "frames in" not in capsys.readouterr().out  # refused before anything was evaluated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file"]  # no .tmp, nothing created
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_eval_json_on_a_full_disk_leaves_no_tmp(
    sample_bag: Path, small_ckpt: Path, tmp_path: Path, dualdepth_exe: list[str]
) -> None:
    with full_folder(tmp_path, 4) as (folder, errnos, preexec):  # the JSON (about 7 KiB) does not fit
        argv = ["eval", "--checkpoint", str(small_ckpt), "--bag", str(sample_bag), "--no-pose", "--max-frames", "2"]
        argv += ["--cache-dir", "memory", "--json", str(folder / "eval.json")]
        proc = run_cli(dualdepth_exe, argv, tmp_path, preexec)
        assert "frames in" in proc.stdout  # the evaluation ran; writing its result failed
        assert_disk_error(proc, folder / "eval.json", errnos)
        assert not list(folder.iterdir())


# ---------------------------------------------------------------------------------------
# train stopped by a signal
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frame_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("frames")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_train_stopped_by_a_signal_saves_and_exits_non_zero(
    sig: signal.Signals, code: int, sample_bag: Path, tmp_path: Path, frame_cache: Path, dualdepth_exe: list[str]
) -> None:
    """`make train && make export-default` must stop when training was stopped: exit 128 + N, checkpoint saved."""
    run = tmp_path / "run"
    tiny = [a for s in [*TINY_MODEL, "train.micro_batch=2"] for a in ("--set", s)]
    argv = ["train", "--bag", str(sample_bag), "--out", str(run), "--max-steps", "100000", "--no-progress", *tiny]
    env = {**os.environ, "DUALDEPTH_CACHE": str(frame_cache), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "stderr.txt", "w") as err_file:
        proc = subprocess.Popen(dualdepth_exe + argv, stdout=subprocess.PIPE, stderr=err_file, text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
        try:
            deadline = time.monotonic() + 240
            while True:  # the banner is printed once the signal handlers are in place
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
                if line.startswith("training 96x32"):
                    break
            proc.send_signal(sig)
            assert proc.wait(timeout=240) == code
        finally:
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr and f"stopped by {sig.name}" in stderr, stderr
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] < 100000 and "optimizer" in ckpt  # saved, resumable


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA (CI, most laptops)")
def test_train_on_cuda_without_a_gpu_is_one_line(
    sample_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(["train", "--bag", str(sample_bag), "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert "PyTorch sees no CUDA device" in one_line_error(capsys, rc)
