"""Output folders a command may write or replace, and how it replaces them.

One rule for every command that writes a folder (``make-sample``, ``infer``, ``export``,
``demo``): an absent or empty ``--out`` is written; a non-empty one needs ``--overwrite``,
and even then it is replaced only when its content shows that it is *this command's kind*
of output (:data:`KINDS`: a rosbag2 bag, an exported model folder, a demo run folder).
Anything else — ``--out models`` with the model name forgotten, ``--out ~`` — is refused with
one line, and nothing is deleted. A symbolic link as ``--out`` is refused as well (replacing it
would act on what it points to, or silently drop the link).

A command also refuses an ``--out`` that is, contains or lies inside one of its inputs
(:func:`check_separate`), comparing real paths: ``--out bs`` for ``--bag bs/file.mcap``, a
symbolic link to the bag or ``--out ../x/bs/`` are the same folder.

Folders are written to a hidden temporary sibling (:func:`temporary_sibling`) and renamed into
place (:func:`replace_dir`): ``--out`` holds either the previous output or the complete new
one. :func:`stop_signals_raise` turns SIGTERM into an exception for the duration of a command,
so the temporary folder is removed on ``kill`` as it is on Ctrl-C.

This module imports only the standard library (and :mod:`.errors`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType

from .errors import DualDepthError

__all__ = [
    "OutputKind",
    "BAG",
    "MODEL",
    "DEMO_RUN",
    "DEMO_MARKER",
    "KINDS",
    "looks_like_bag",
    "looks_like_model",
    "looks_like_demo_run",
    "real_path",
    "check_output_dir",
    "check_separate",
    "temporary_sibling",
    "replace_dir",
    "Terminated",
    "stop_signals_raise",
]


# ---------------------------------------------------------------------------------------
# What a folder is
# ---------------------------------------------------------------------------------------
def looks_like_bag(path: Path) -> bool:
    """True for a directory that holds only what a rosbag2 directory holds.

    ``metadata.yaml`` plus plain files with a storage suffix (``.mcap``, ``.db3``, ``.zstd``,
    sqlite's ``-shm``/``-wal``) or a text suffix (``.md``, ``.txt``, ``.yaml``).
    """
    allowed = {".yaml", ".mcap", ".db3", ".zstd", ".db3-shm", ".db3-wal", ".md", ".txt"}
    entries = list(path.iterdir())
    return any(e.name == "metadata.yaml" for e in entries) and all(
        e.is_file() and not e.is_symlink() and "".join(e.suffixes[-1:]) in allowed for e in entries
    )


def _is_model_file(name: str) -> bool:
    """A file an exported model folder holds (``dualdepth export``, the TensorRT engine cache)."""
    if name in ("model.json", "model.onnx", "weights.pt"):
        return True
    if name.startswith("model.") and name.endswith((".plan", ".json")):
        return True  # model.<key>.plan and its sidecar model.<key>.json
    return name.startswith(".model.") and name.endswith(".tmp")  # a plan being written, left by a crash


def looks_like_model(path: Path) -> bool:
    """True for an exported model folder: ``model.json`` and ``model.onnx``, and only model files.

    Model files: ``model.json``, ``model.onnx``, ``weights.pt``, TensorRT plans with their
    sidecars (``model.<key>.plan``/``.json``) and temporary plan files.
    """
    entries = list(path.iterdir())
    names = {e.name for e in entries}
    return {"model.json", "model.onnx"} <= names and all(
        e.is_file() and not e.is_symlink() and _is_model_file(e.name) for e in entries
    )


#: The file ``dualdepth demo`` writes first into its run folder.
DEMO_MARKER = ".dualdepth-demo"
#: What ``dualdepth demo`` writes into its ``--out`` folder (``bag`` is a rosbag2 directory).
DEMO_FILES = ("bag", "mosaic.png", "summary.json", "node.log", DEMO_MARKER)


def looks_like_demo_run(path: Path) -> bool:
    """True for a ``dualdepth demo`` run folder: its marker or ``node.log``, and only demo outputs.

    (``node.log`` counts as a marker so that runs written before the marker existed are recognised.)
    """
    entries = list(path.iterdir())
    names = {e.name for e in entries}
    if not names & {DEMO_MARKER, "node.log"}:
        return False
    for e in entries:
        if e.name not in DEMO_FILES or e.is_symlink():
            return False
        if e.name == "bag":
            if not e.is_dir() or (any(e.iterdir()) and not looks_like_bag(e)):
                return False
        elif not e.is_file():
            return False
    return True


@dataclasses.dataclass(frozen=True)
class OutputKind:
    """A kind of output folder: its name in messages, what it holds, and the test of its content."""

    name: str
    holds: str
    recognise: Callable[[Path], bool]


BAG = OutputKind("a rosbag2 directory", "metadata.yaml plus .mcap/.db3 files", looks_like_bag)
MODEL = OutputKind("an exported model folder", "model.json, model.onnx, weights.pt, TensorRT plans", looks_like_model)
DEMO_RUN = OutputKind("a dualdepth demo run folder", "node.log, summary.json, mosaic.png, bag/", looks_like_demo_run)
#: Every kind, by the name a caller may use.
KINDS: dict[str, OutputKind] = {"bag": BAG, "model": MODEL, "demo": DEMO_RUN}


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------
def real_path(path: str | os.PathLike[str]) -> Path:
    """``path`` absolute, with ``..`` and every symbolic link resolved (also for a path that does not exist)."""
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path)))))


def check_output_dir(path: str | os.PathLike[str], overwrite: bool, kind: OutputKind) -> None:
    """Refuse an output folder that must not be written or replaced (module docstring).

    Parameters
    ----------
    path : the output folder (``--out``).
    overwrite : ``--overwrite`` was given.
    kind : what the folder must be to be replaced.

    Raises
    ------
    DualDepthError : ``path`` is a symbolic link, a file, the root folder, the current directory or
        one of its parents; or it is non-empty
        and ``overwrite`` is not set; or it is non-empty and not of ``kind``.
    """
    p = Path(path)
    if p.is_symlink():
        raise DualDepthError(f"output path {p} is a symbolic link; give the folder itself")
    if p.exists() and not p.is_dir():
        raise DualDepthError(f"output path {p} exists and is not a directory")
    if real_path(p).parent == real_path(p):
        raise DualDepthError(f"output path {p} is the root folder")
    if _within(real_path(os.getcwd()), real_path(p)):
        # The folder is written beside and renamed into place: the working directory would be left behind.
        raise DualDepthError(
            f"output path {p} is (or holds) the current directory; name a folder for the output, e.g. {p}/out"
        )
    if p.is_dir() and any(p.iterdir()):
        if not overwrite:
            raise DualDepthError(f"output directory {p} is not empty (use --overwrite to replace it)")
        if not kind.recognise(p):
            raise DualDepthError(
                f"output directory {p} is not empty and does not look like {kind.name} ({kind.holds}); "
                "refusing to delete it even with --overwrite"
            )


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_separate(out: str | os.PathLike[str], inputs: Mapping[str, str | os.PathLike[str] | None]) -> None:
    """Refuse an output that is, contains or lies inside an input (real paths compared).

    Parameters
    ----------
    out : the output folder.
    inputs : option name (``"--bag"``) → the input path given (None: not given).

    Raises
    ------
    DualDepthError : one line naming the option and both real paths.
    """
    o = real_path(out)
    for option, given in inputs.items():
        if given is None:
            continue
        i = real_path(given)
        if o == i:
            how = "is"
        elif _within(i, o):
            how = "contains"
        elif _within(o, i):
            how = "lies inside"
        else:
            continue
        raise DualDepthError(
            f"--out {out} {how} the input {option} {given} ({o} vs {i}); write the output somewhere else "
            "(inputs are never modified)"
        )


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------
def temporary_sibling(out: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """A new hidden, empty folder next to ``out`` (``.<name>.<random><suffix>``), with the umask's mode."""
    o = Path(os.path.abspath(os.fspath(out)))
    o.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{o.name}.", suffix=suffix, dir=o.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; an output folder is an ordinary folder
    return tmp


def replace_dir(tmp: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool, kind: OutputKind) -> None:
    """Rename the finished folder ``tmp`` to ``out``, replacing an old ``out`` that passes :func:`check_output_dir`.

    The old folder is first renamed aside (``.<name>.old-<random>``) and deleted only after the
    new one is in place; if the rename fails it is put back. The check is repeated here because
    the world may have changed while the output was being written.
    """
    tmp, out = Path(tmp), Path(os.path.abspath(os.fspath(out)))
    check_output_dir(out, overwrite, kind)
    backup = None
    if out.is_dir():
        if any(out.iterdir()):
            backup = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:12]}")
            os.replace(out, backup)
        else:
            out.rmdir()
    try:
        os.replace(tmp, out)
    except BaseException:
        if backup is not None:
            os.replace(backup, out)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    with contextlib.suppress(OSError):  # make the rename durable
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM inside :func:`stop_signals_raise` (``signum``: the signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = int(signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (SIGINT already raises ``KeyboardInterrupt``).

    So ``with``/``finally`` clean-up runs on ``kill`` as on Ctrl-C. After the first signal, further
    SIGTERM/SIGINT are ignored until the block has unwound (the clean-up is not interrupted). Outside
    the main thread this does nothing (Python delivers signals to the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    mine = [s for s, h in old.items() if h is not None and h is not signal.SIG_IGN]  # an ignored signal stays so
    for s in mine:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in mine:
            signal.signal(s, old[s])
