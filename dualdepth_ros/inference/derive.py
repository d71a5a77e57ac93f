"""A model folder derived from its packed checkpoint at first use (the repository stores each model once).

A shipped model is one file, the packed checkpoint ``models/NAME.pt`` (``dualdepth pack``: the
depth and pose nets, fp16; training's ``--init`` reads it). Its model folder ``models/NAME/``
(``model.onnx``, ``model.json``, ``weights.pt``) is derived from it, never stored:

* at build: ``make build`` (and so ``make test``, ``make demo``) writes it when it is missing or
  older than the checkpoint, before colcon installs it;
* at first use: :func:`ensure_model_dir`, called by :func:`~.metadata.load_metadata` and
  :func:`~.selection.open_backend`, writes a folder that has no ``model.onnx``/``model.json`` when
  a checkpoint lies beside it (``NAME.pt`` next to ``NAME/``) or is given, and torch is importable:
  the same export as ``dualdepth export --checkpoint NAME.pt --out NAME --per-branch`` (about 20 s
  on two CPU cores), one log line saying so and how long it took. Without torch it is one
  :class:`~.backend.ModelError` naming that command.

Concurrent first uses (several processes, a test session) export once: the export runs under an
exclusive lock (``.NAME.lock`` beside the folder) and the folder is published by an atomic rename
(:func:`~.export.export_model`). Exporting the same checkpoint twice gives the same bytes (same
torch/onnx versions). A complete folder is used as it is (no check against the checkpoint here:
``make build`` re-derives it by file time, ``test/test_export_default.py`` checks the content).

This module imports neither torch nor onnx until it exports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import DualDepthError
from .backend import ModelError
from .metadata import METADATA_FILE, MODEL_FILE

__all__ = ["CHECKPOINT_SUFFIX", "checkpoint_beside", "export_command", "needs_export", "ensure_model_dir"]

#: ``models/NAME.pt`` is the checkpoint of the model folder ``models/NAME/``.
CHECKPOINT_SUFFIX = ".pt"


def checkpoint_beside(model_dir: str | os.PathLike) -> Path | None:
    """The packed checkpoint ``NAME.pt`` next to the model folder ``NAME``, or None when there is none."""
    p = Path(model_dir)
    if not p.name:
        return None
    ckpt = p.with_name(p.name + CHECKPOINT_SUFFIX)
    return ckpt if ckpt.is_file() else None


def export_command(checkpoint: str | os.PathLike, model_dir: str | os.PathLike) -> str:
    """The ``dualdepth export`` command line that derives ``model_dir`` from ``checkpoint``."""
    return f"dualdepth export --checkpoint {checkpoint} --out {model_dir} --per-branch"


def needs_export(model_dir: str | os.PathLike) -> bool:
    """True when ``model_dir`` lacks ``model.onnx`` or ``model.json`` (absent, empty or partial folder)."""
    p = Path(model_dir)
    return not ((p / MODEL_FILE).is_file() and (p / METADATA_FILE).is_file())


@contextlib.contextmanager
def _export_lock(model_dir: Path, checkpoint: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.NAME.lock`` beside ``model_dir`` (blocks while another process exports)."""
    lock = model_dir.with_name(f".{model_dir.name}.lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise ModelError(
            f"{model_dir} has no {MODEL_FILE} and cannot be derived there ({err.strerror}: {lock}): "
            f"run `{export_command(checkpoint, '<a writable folder>')}` and use that folder"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock; the empty lock file stays (removing it would race another waiter)


def ensure_model_dir(
    model_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> bool:
    """Derive ``model_dir`` from its packed checkpoint when it has no ``model.onnx``/``model.json``.

    Parameters
    ----------
    model_dir : a model folder (it may not exist yet).
    checkpoint : the packed checkpoint to derive it from; None = ``NAME.pt`` beside ``NAME``.
    log : receives the one line that says an export ran and how long it took (default: stderr).

    Returns
    -------
    True when this call exported the folder; False when there was nothing to do (a complete
    folder, or no checkpoint to derive it from: the caller's own "missing" error follows).

    Raises
    ------
    ModelError : torch (or onnx) is not importable here (the message gives the ``dualdepth export``
        command), the folder cannot be written, or the export failed (one line: why).
    """
    p = Path(model_dir)
    if p.suffix in (".onnx", ".json") or not needs_export(p):
        return False
    ckpt = Path(checkpoint) if checkpoint is not None else checkpoint_beside(p)
    if ckpt is None:
        return False
    if not ckpt.is_file():
        raise ModelError(f"{p} has no {MODEL_FILE} and its checkpoint {ckpt} does not exist")
    command = export_command(ckpt, p)
    try:
        import onnx  # noqa: F401 - the exporter needs both; checked here for one clear line
        import torch  # noqa: F401
    except Exception as err:  # noqa: BLE001 - a blocked or broken install raises more than ImportError
        raise ModelError(
            f"{p} has no {MODEL_FILE}; it is derived from {ckpt} with PyTorch, which is not usable here "
            f"({type(err).__name__}: {err}): run `{command}` where torch and onnx are installed"
        ) from None
    from .export import export_model

    emit = log or (lambda line: print(line, file=sys.stderr, flush=True))
    with _export_lock(p, ckpt):
        if not needs_export(p):  # another process derived it while this one waited
            return False
        t0 = time.perf_counter()
        try:
            export_model(ckpt, p, per_branch=True, overwrite=False)
        except DualDepthError as err:
            raise ModelError(f"{p} has no {MODEL_FILE} and deriving it from {ckpt} failed: {err}") from None
        emit(f"{p} had no {MODEL_FILE}: derived it from {ckpt} in {time.perf_counter() - t0:.1f} s (= `{command}`)")
    return True
