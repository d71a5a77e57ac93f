"""``open_backend``: load a model folder with the requested backend, or the best one present (``auto``).

``auto`` tries, in order, and takes the first that starts::

    tensorrt (CUDA)  >  onnxruntime CUDA  >  torch CUDA  >  onnxruntime CPU  >  torch CPU

``device="cpu"`` or ``"cuda"`` keeps only the candidates on that device; an explicit backend
keeps only its own candidates (CUDA first when ``device="auto"``). The chosen backend's
``reason`` (also sent to ``log``) names it and says why each better candidate was unavailable.
Only a missing runtime or device (:class:`BackendUnavailableError`) moves on to the next candidate;
a broken or mismatched model is a :class:`ModelError` at once.

Precision: ``fp16`` is a request honoured where the device supports it. The torch backend runs
fp16 on CUDA and fp32 on the CPU; ONNX Runtime runs ``model.onnx`` as exported (``dualdepth
export --precision fp16`` writes a float16 graph with float32 input and outputs). Whenever the
precision that runs differs from the one asked for, the reason says so.

TensorRT (:mod:`.tensorrt_backend`) needs the ``tensorrt`` module, CUDA memory (torch with
CUDA, cuda-python or pycuda) and a GPU; without them ``auto`` says which is missing and moves
on, and an explicit ``backend="tensorrt"`` is a :class:`ModelError` listing why. Its engine is
cached beside the model (:mod:`.engine_cache`): ``engine_path``, ``force_engine_update`` and
``allow_engine_build`` control it. This module imports neither torch, onnxruntime nor TensorRT
until a candidate needs it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from .backend import BACKEND_NAMES, DEVICES, PRECISIONS, Backend, BackendUnavailableError, ModelError
from .derive import ensure_model_dir
from .metadata import MODEL_FILE, WEIGHTS_FILE, ModelMetadata, load_metadata

__all__ = ["open_backend", "CANDIDATES"]

#: (backend, device) in the order ``auto`` tries them.
CANDIDATES: tuple[tuple[str, str], ...] = (
    ("tensorrt", "cuda"),
    ("onnxruntime", "cuda"),
    ("torch", "cuda"),
    ("onnxruntime", "cpu"),
    ("torch", "cpu"),
)


def _model_dir(path: str | os.PathLike, log: Callable[[str], None] | None = None) -> Path:
    """The model folder of ``path`` (a folder or its ``model.onnx``), derived from its checkpoint if needed."""
    p = Path(path)
    if p.is_file() and p.suffix == ".onnx":
        p = p.parent
    ensure_model_dir(p, log=log)
    if not p.is_dir():
        raise ModelError(f"model folder not found: {p}")
    return p


def _open_tensorrt(model_dir: Path, metadata: ModelMetadata, opts: dict) -> tuple[Backend, str | None]:
    """The TensorRT candidate: :class:`~.tensorrt_backend.TensorRTBackend` with the engine-cache options.

    Unavailable (the next candidate is tried) when the tensorrt module, CUDA memory or a GPU is
    missing; a refused or failing engine is a :class:`ModelError` (``auto`` stops there: a
    mismatched plan never gives way silently to a slower backend).
    """
    try:  # the cheap check first: auto on a machine without TensorRT
        found = importlib.util.find_spec("tensorrt") is not None
    except (ImportError, ValueError):  # a broken or stubbed-out module
        found = False
    if not found:
        from .tensorrt_cuda import TENSORRT_INSTALL_HINT

        raise BackendUnavailableError(f"the tensorrt Python module is not importable here; {TENSORRT_INSTALL_HINT}")
    from .tensorrt_backend import TensorRTBackend

    backend = TensorRTBackend(
        model_dir,
        metadata,
        precision=opts["precision"],
        per_branch=opts["per_branch"],
        engine_path=opts["engine_path"],
        force_engine_update=opts["force_engine_update"],
        allow_engine_build=opts["allow_engine_build"],
        log=opts["log"],
    )
    return backend, None


def _open_onnxruntime(model_dir: Path, metadata: ModelMetadata, device: str, opts: dict) -> tuple[Backend, str | None]:
    from .onnxruntime_backend import OnnxRuntimeBackend, ort_cuda_available

    if device == "cuda":
        why = ort_cuda_available()
        if why is not None:
            raise BackendUnavailableError(why)
    note = None
    if opts["precision"] != metadata.precision:
        note = f"{opts['precision']} was asked for; ONNX Runtime runs {MODEL_FILE} as exported ({metadata.precision})"
    backend = OnnxRuntimeBackend(
        model_dir, metadata, device=device, threads=opts["threads"], per_branch=opts["per_branch"], log=opts["log"]
    )
    return backend, note


def _open_torch(model_dir: Path, metadata: ModelMetadata, device: str, opts: dict) -> tuple[Backend, str | None]:
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise BackendUnavailableError(f"no {WEIGHTS_FILE} in {model_dir}")
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - a broken torch install raises more than ImportError
        raise BackendUnavailableError(f"torch is not importable ({type(err).__name__}: {err})") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("torch sees no CUDA device")
    from .torch_backend import TorchBackend

    precision, note = opts["precision"], None
    if precision == "fp16" and device == "cpu":
        precision, note = "fp32", "fp16 was asked for; the torch backend runs fp32 on the CPU"
    backend = TorchBackend(
        model_dir,
        metadata,
        device=device,
        precision=precision,
        threads=opts["threads"],
        per_branch=opts["per_branch"],
        compile=opts["compile"],
        log=opts["log"],
    )
    return backend, note


def open_backend(
    model_dir: str | os.PathLike,
    backend: str = "auto",
    *,
    precision: str = "fp32",
    device: str = "auto",
    threads: int | None = None,
    per_branch: bool = False,
    engine_path: str | None = None,
    force_engine_update: bool = False,
    allow_engine_build: bool = True,
    log: Callable[[str], None] | None = None,
    compile: bool | None = None,
) -> Backend:
    """Load the model in ``model_dir`` (``model.onnx`` + ``model.json`` [+ ``weights.pt``]) with a backend.

    A folder without ``model.onnx``/``model.json`` whose packed checkpoint lies beside it (``NAME.pt``
    next to ``NAME``) is first derived from it (:func:`~.derive.ensure_model_dir`: one ``log`` line).

    Parameters
    ----------
    model_dir : the model folder (or the path of its ``model.onnx``).
    backend : ``auto`` | ``tensorrt`` | ``onnxruntime`` | ``torch`` (module docstring).
    precision : ``fp32`` | ``fp16`` (where the device supports it; see the module docstring).
    device : ``auto`` | ``cpu`` | ``cuda``.
    threads : CPU intra-op threads (ONNX Runtime session; torch: process-wide); None = default.
    per_branch : :meth:`~Backend.infer` also returns each branch's outputs.
    engine_path : TensorRT plan location: None/``""`` = the model folder's cache, a folder, or
        a plan file (its sidecar beside it, ``.json``) (:mod:`.engine_cache`).
    force_engine_update : TensorRT: rebuild the engine even when the cached one matches.
    allow_engine_build : TensorRT: False = never build; a missing or mismatched engine is a
        :class:`ModelError` naming the mismatch. (Unused by the other backends.)
    log : receives human-readable lines (the choice, the reasons).
    compile : torch backend on CUDA: ``torch.compile`` (None = try, fall back to eager; True =
        required; False = eager).

    Returns
    -------
    A :class:`Backend`; ``backend.reason`` says why it was chosen.

    Raises
    ------
    ModelError : bad options, a missing/corrupt/mismatched model, or no candidate could start
        (the message lists why each one could not).
    """
    if backend not in BACKEND_NAMES:
        raise ModelError(f"backend must be one of {', '.join(BACKEND_NAMES)}; got {backend!r}")
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if device not in DEVICES:
        raise ModelError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    emit = log or (lambda _line: None)
    path = _model_dir(model_dir, log=emit)
    metadata = load_metadata(path, log=emit)
    opts = {
        "precision": precision,
        "threads": threads,
        "per_branch": bool(per_branch),
        "log": log,
        "compile": compile,
        "engine_path": engine_path or None,
        "force_engine_update": bool(force_engine_update),
        "allow_engine_build": bool(allow_engine_build),
    }
    candidates = [(name, dev) for name, dev in CANDIDATES if backend in ("auto", name) and device in ("auto", dev)]
    unavailable: list[str] = []
    for name, dev in candidates:
        try:
            if name == "tensorrt":
                chosen, note = _open_tensorrt(path, metadata, opts)
            elif name == "onnxruntime":
                chosen, note = _open_onnxruntime(path, metadata, dev, opts)
            else:
                chosen, note = _open_torch(path, metadata, dev, opts)
        except BackendUnavailableError as err:
            unavailable.append(f"{name} {dev}: {err}")
            continue
        parts = [f"{name} on {dev} ({chosen.precision})"]
        parts.append(f"asked for backend={backend}, device={device}")
        if note:
            parts.append(note)
        if unavailable:
            parts.append("unavailable: " + "; ".join(unavailable))
        chosen.reason = "; ".join(parts)
        emit(f"inference backend: {chosen.reason}")
        return chosen
    if not candidates:  # tensorrt on the CPU
        raise ModelError(f"backend {backend} does not run on device {device}")
    what = f"backend {backend!r}" if backend != "auto" else "no inference backend"
    verb = "cannot run here" if backend != "auto" else "can run here"
    hint = "; use backend onnxruntime or torch (or auto)" if backend == "tensorrt" else ""
    raise ModelError(f"{what} {verb} (device {device}): {'; '.join(unavailable)}{hint}")
