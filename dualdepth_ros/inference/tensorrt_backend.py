"""TensorRT backend: a cached engine built from ``model.onnx``, run with tensors bound by name.

Opening a model (:class:`TensorRTBackend`)::

    import tensorrt, find CUDA memory (tensorrt_cuda: torch, cuda-python or pycuda)
    → model.onnx must be the file model.json describes (SHA-256)
    → the engine cache (engine_cache.decide): use the cached plan, build it (once, logged with
      progress, tensorrt_build), or refuse with the mismatch named
    → trt.Runtime.deserialize_cuda_engine (a plan that does not deserialise is rebuilt once when
      building is allowed)
    → bind by name (plan_bindings): the engine's input must be model.json's ``image`` and its
      outputs exactly model.json's names, each with model.json's static shape and float32; each
      tensor gets a device buffer (set_tensor_address) and a page-locked host buffer

``infer`` copies the input to its pinned buffer and the device, runs ``execute_async_v3`` on the
stream, copies the wanted outputs back and waits for the stream. Batches larger than the
engine's (static, 1) run in chunks. Calls are serialised by a lock (one execution context).

The timing cache lives beside the plans (``tensorrt-<version>-sm<cc>.timing-cache``) and is
reused by every build for that TensorRT version and GPU. Importing this module imports neither
TensorRT, torch nor any CUDA library.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .backend import Backend, InferenceResult, ModelError
from .engine_cache import (
    EngineSpec,
    decide,
    engine_paths,
    inspect_engine,
    other_sidecars,
    write_engine,
)
from .metadata import MODEL_FILE, ModelMetadata, file_sha256
from .tensorrt_build import DEFAULT_WORKSPACE_MB, build_engine, make_logger
from .tensorrt_cuda import CudaMemory, import_tensorrt, open_cuda

__all__ = ["TensorBinding", "plan_bindings", "TensorRTBackend", "TRT_DTYPES"]

#: TensorRT ``DataType`` names → numpy dtypes (the ones an I/O tensor of this graph could have).
TRT_DTYPES = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
}


def _enum_name(value: Any) -> str:
    """``trt.TensorIOMode.INPUT`` → ``"INPUT"`` (pybind11 enums have ``.name``; fall back to ``str``)."""
    return getattr(value, "name", None) or str(value).split(".")[-1]


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


@dataclasses.dataclass(frozen=True)
class TensorBinding:
    """One of the engine's I/O tensors: ``name``, ``is_input``, static ``shape``, numpy ``dtype``."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


def plan_bindings(
    engine: Any, metadata: ModelMetadata, source: str = "the engine"
) -> tuple[TensorBinding, list[TensorBinding]]:
    """Match the engine's I/O tensors to model.json **by name**; ``(input, outputs in model.json's order)``.

    Uses only ``engine.num_io_tensors``, ``get_tensor_name(i)``, ``get_tensor_mode(name)``,
    ``get_tensor_shape(name)`` and ``get_tensor_dtype(name)`` (``trt.ICudaEngine``, TensorRT ≥ 8.5).
    The engine's own order of tensors is irrelevant.

    Raises
    ------
    ModelError : (one line) the input is not model.json's ``input_name``; an output of model.json
        is missing or the engine has one model.json does not list; a shape is dynamic or not
        model.json's; a tensor is not float32.
    """
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    modes = {n: _enum_name(engine.get_tensor_mode(n)) for n in names}
    inputs = [n for n in names if modes[n] == "INPUT"]
    outputs = [n for n in names if modes[n] == "OUTPUT"]
    if inputs != [metadata.input_name]:
        raise ModelError(f"{source} has input(s) {inputs}; model.json says [{metadata.input_name!r}]")
    missing = [n for n in metadata.output_names if n not in outputs]
    if missing:
        raise ModelError(f"{source} has no output(s) {missing} (it has {outputs}); model.json lists them")
    extra = [n for n in outputs if n not in metadata.output_names]
    if extra:
        raise ModelError(f"{source} has output(s) {extra} that model.json does not list ({metadata.output_names})")

    def binding(name: str, want: tuple[int, ...], is_input: bool) -> TensorBinding:
        kind = "input" if is_input else "output"
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise ModelError(
                f"{source} {kind} {name!r} has a dynamic shape {shape}; model.json says {_shape_text(want)}"
            )
        if shape != want:
            raise ModelError(
                f"{source} {kind} {name!r} has shape {_shape_text(shape)}; model.json says {_shape_text(want)}"
            )
        dtype_name = _enum_name(engine.get_tensor_dtype(name))
        if dtype_name != "FLOAT":
            raise ModelError(f"{source} {kind} {name!r} is {dtype_name}; the model's tensors are FLOAT (float32)")
        return TensorBinding(name, is_input, shape, TRT_DTYPES["FLOAT"])

    inp = binding(metadata.input_name, tuple(metadata.input_shape), True)
    outs = [binding(n, tuple(metadata.output_shape), False) for n in metadata.output_names]
    return inp, outs


class TensorRTBackend(Backend):
    """Run the model with TensorRT (module docstring).

    Parameters
    ----------
    model_dir : folder with ``model.onnx`` and ``model.json`` (and the cached plans).
    metadata : its :class:`ModelMetadata`.
    precision : ``fp32`` or ``fp16``: the engine's build precision (fp16 keeps the branch
        comparison in fp32, :mod:`.tensorrt_build`).
    per_branch : also return each branch's outputs (the model must have been exported with them).
    engine_path : None/``""``: the plan lives in ``model_dir``; a folder: there; a file: that plan
        (sidecar beside it, ``.json``).
    force_engine_update : rebuild even when the cached plan matches.
    allow_engine_build : False: never build; a missing or mismatched plan is a :class:`ModelError`.
    workspace_mb : the builder's workspace limit.
    cuda : a :class:`~.tensorrt_cuda.CudaMemory` (default: :func:`~.tensorrt_cuda.open_cuda`).
    reason, log : why this backend was chosen; where to send human-readable lines (cache
        decisions, build progress).

    Raises
    ------
    BackendUnavailableError : TensorRT or CUDA memory is not available here.
    ModelError : the model files are wrong, the cached plan is refused, the build fails, or the
        engine's tensors do not match model.json.
    """

    name = "tensorrt"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        metadata: ModelMetadata,
        *,
        precision: str = "fp32",
        per_branch: bool = False,
        engine_path: str | os.PathLike | None = None,
        force_engine_update: bool = False,
        allow_engine_build: bool = True,
        workspace_mb: int = DEFAULT_WORKSPACE_MB,
        cuda: CudaMemory | None = None,
        reason: str = "",
        log: Callable[[str], None] | None = None,
    ) -> None:
        if precision not in ("fp32", "fp16"):
            raise ModelError(f"precision must be fp32 or fp16, got {precision!r}")
        model_dir = Path(model_dir)
        if per_branch and not metadata.per_branch:
            raise ModelError(
                f"per-branch outputs were asked for, but {model_dir / MODEL_FILE} has none; "
                "export the model with --per-branch"
            )
        super().__init__(metadata, device="cuda", precision=precision, per_branch=per_branch, reason=reason)
        self._log = log or (lambda _line: None)
        self._lock = threading.Lock()
        self._context = self._engine = self._runtime = None
        trt = import_tensorrt()
        onnx_path = model_dir / MODEL_FILE
        if not onnx_path.is_file():
            raise ModelError(f"no {MODEL_FILE} in {model_dir} (written by dualdepth export)")
        digest = file_sha256(onnx_path)
        if digest != metadata.onnx_sha256:
            raise ModelError(
                f"{onnx_path} is not the file model.json describes (SHA-256 {digest[:12]}…, model.json records "
                f"{metadata.onnx_sha256[:12]}…): export them again together (dualdepth export)"
            )
        self._cuda = cuda if cuda is not None else open_cuda()
        try:
            with self._cuda.activate():
                self._open(
                    trt, model_dir, onnx_path, engine_path, force_engine_update, allow_engine_build, workspace_mb
                )
        except BaseException:
            self._drop()
            raise

    # -- opening ---------------------------------------------------------------------------
    def _open(
        self,
        trt: Any,
        model_dir: Path,
        onnx_path: Path,
        engine_path: Any,
        force: bool,
        allow_build: bool,
        workspace_mb: int,
    ) -> None:
        md, cuda, log = self.metadata, self._cuda, self._log
        spec = EngineSpec(
            onnx_sha256=md.onnx_sha256,
            tensorrt_version=str(trt.__version__),
            compute_capability=cuda.compute_capability,
            gpu_name=cuda.device_name,
            precision=self.precision,
            input_shape=tuple(md.input_shape),
        )
        plan_path, side_path = engine_paths(model_dir, spec.key, engine_path)
        cached = inspect_engine(plan_path, side_path)
        others = other_sidecars(plan_path.parent, exclude=side_path) if cached.plan_sha256 is None else []
        decision = decide(cached, spec, force=force, allow_build=allow_build, others=others)
        if decision.action == "refuse":
            raise ModelError(f"TensorRT engine refused: {decision.reason}")
        timing_cache = (
            plan_path.parent
            / f"tensorrt-{spec.tensorrt_version}-sm{spec.compute_capability.replace('.', '')}.timing-cache"
        )
        built = None
        if decision.action == "build":
            log(f"TensorRT engine: {decision.reason}")
            built = self._build(trt, onnx_path, spec, plan_path, side_path, workspace_mb, timing_cache)
        else:
            log(f"TensorRT engine: {decision.reason}")
        self._logger = make_logger(trt, log)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            why = self._logger.errors[-1] if self._logger.errors else "no error message"
            if built is not None or not allow_build:
                raise ModelError(f"TensorRT cannot deserialise {plan_path}: {why}")
            log(f"TensorRT cannot deserialise {plan_path} ({why}); rebuilding it once")
            built = self._build(trt, onnx_path, spec, plan_path, side_path, workspace_mb, timing_cache)
            engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if engine is None:
                raise ModelError(f"TensorRT cannot deserialise the engine it just built ({plan_path})")
        self._engine = engine
        self._input, self._outputs = plan_bindings(engine, md, source=f"engine {plan_path.name}")
        context = engine.create_execution_context()
        if context is None:
            raise ModelError(f"TensorRT could not create an execution context for {plan_path} (out of GPU memory?)")
        self._context = context
        self._device: dict[str, Any] = {}
        self._host: dict[str, Any] = {}
        for b in (self._input, *self._outputs):
            self._device[b.name] = cuda.device_buffer(b.nbytes)
            self._host[b.name] = cuda.host_buffer(b.shape, b.dtype)
            if not context.set_tensor_address(b.name, self._device[b.name].ptr):
                raise ModelError(f"TensorRT refused the device address of tensor {b.name!r}")
        names = list(md.output_names)
        self._fetch = names if self.per_branch else names[:2]
        self._plan_path = plan_path
        self._spec = spec
        self._built = built
        sm = "sm_" + spec.compute_capability.replace(".", "")
        log(
            f"tensorrt {trt.__version__}: {plan_path} on {cuda.device_name} ({sm}, "
            f"{self.precision}, CUDA memory from {cuda.name})"
        )

    def _build(
        self,
        trt: Any,
        onnx_path: Path,
        spec: EngineSpec,
        plan_path: Path,
        side_path: Path,
        workspace_mb: int,
        timing_cache: Path,
    ) -> dict[str, Any]:
        import datetime

        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan, info = build_engine(
            trt, onnx_path, spec, workspace_mb=workspace_mb, timing_cache=timing_cache, log=self._log
        )
        sidecar = {
            "key": spec.key,
            "tensorrt_version": spec.tensorrt_version,
            "gpu_name": spec.gpu_name,
            "compute_capability": spec.compute_capability,
            "precision": spec.precision,
            "input_name": self.metadata.input_name,
            "input_shape": list(spec.input_shape),
            "output_names": list(self.metadata.output_names),
            "onnx_sha256": spec.onnx_sha256,
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "package_version": __version__,
            **info,
        }
        written = write_engine(plan_path, side_path, plan, sidecar)
        self._log(f"TensorRT engine written: {plan_path} (+ {side_path.name})")
        return written

    # -- running ---------------------------------------------------------------------------
    def _infer(self, image: np.ndarray) -> InferenceResult:
        bs = self.metadata.batch_size
        cuda, context = self._cuda, self._context
        chunks = []
        with self._lock, cuda.activate():
            for start in range(0, image.shape[0], bs):
                x = image[start : start + bs]
                n = x.shape[0]
                host_in = self._host[self._input.name].array
                host_in[:n] = x
                if n < bs:  # the last chunk of a batch that is not a multiple of the engine's batch
                    host_in[n:] = 0.0
                cuda.copy_to_device(self._device[self._input.name], self._host[self._input.name])
                if not context.execute_async_v3(cuda.stream_handle()):
                    raise ModelError(f"TensorRT failed to run {self._plan_path.name} (execute_async_v3 returned false)")
                for name in self._fetch:
                    cuda.copy_to_host(self._host[name], self._device[name])
                cuda.synchronize()
                chunks.append([self._host[name].array[:n].copy() for name in self._fetch])
        outs = chunks[0] if len(chunks) == 1 else [np.concatenate(parts) for parts in zip(*chunks)]
        branches = None
        if self.per_branch:
            branches = [(outs[2 + 2 * b], outs[3 + 2 * b]) for b in range(self.metadata.num_branches)]
        return InferenceResult(depth=outs[0], confidence=outs[1], branches=branches)

    def _details(self) -> dict[str, Any]:
        spec = self._spec
        return {
            "tensorrt": spec.tensorrt_version,
            "engine": str(self._plan_path),
            "engine_key": spec.key,
            "gpu": spec.gpu_name,
            "compute_capability": spec.compute_capability,
            "cuda_memory": self._cuda.name,
            "built": self._built is not None,
            "build_seconds": (self._built or {}).get("build_seconds"),
        }

    def _drop(self) -> None:
        # Execution context before engine before runtime; then the memory.
        self._context = None
        self._engine = None
        self._runtime = None
        cuda = getattr(self, "_cuda", None)
        if cuda is not None:
            cuda.close()  # each provider makes its own context current to free

    def _release(self) -> None:
        with self._lock:
            self._drop()
