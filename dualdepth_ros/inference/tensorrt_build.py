"""Build a TensorRT engine from ``model.onnx`` with the TensorRT Python API (10.x; 8.5/8.6, JetPack 5/6.0, too).

The steps (:func:`build_engine`)::

    trt.Builder(logger) → create_network (EXPLICIT_BATCH flag before TensorRT 10, where it is the default)
      → trt.OnnxParser(network).parse_from_file(model.onnx)     parser errors: a one-line ModelError
      → BuilderConfig: workspace limit (set_memory_pool_limit(WORKSPACE); max_workspace_size before 8.4),
        FP16 when asked, the timing cache (loaded from its file if present, saved after the build),
        a progress monitor (trt.IProgressMonitor, TensorRT ≥ 10) that logs the top-level phases
      → build_serialized_network → the plan's bytes

**fp32 means fp32.** TensorRT allows TF32 convolutions by default on Ampere and later; an fp32
build clears ``BuilderFlag.TF32`` so that its engine matches ONNX Runtime's fp32 closely.

**fp16 and the fused output.** The graph fuses the two branches by ``argmax`` over their
confidences. Built in fp16 throughout, two near-equal confidences round to a tie or swap, and
the fused depth takes the other branch on those pixels. An fp16 build therefore keeps the
*tail* of the graph — everything between the last convolutions (the branch heads) and the
outputs: the confidence ``Sigmoid``, the depth activation (``Sigmoid``, ``Mul``, ``Add``,
``Reciprocal``), the ``Slice`` of the head outputs, the ``Concat`` of the branches, ``ArgMax``
(a TopK layer in TensorRT) and ``GatherElements`` — in fp32, by setting those layers'
``precision`` and output types to float32 and the builder flag ``OBEY_PRECISION_CONSTRAINTS``.
The encoder and decoders run in fp16. This is the same split as the PyTorch backend's and the
``--precision fp16`` ONNX export's (:class:`~dualdepth_ros.networks.ExportModule`).

Why layer constraints and not a strongly typed network built from an fp16 ONNX: strongly typed
networks exist only from TensorRT 9/10 (JetPack 5 ships 8.5, JetPack 6.0 8.6), and the constraints let one fp32
``model.onnx`` serve every backend and both engine precisions. The tail is found on the
TensorRT network itself (:func:`fp32_tail`: walk back from the outputs, stopping at convolution
layers), so it does not depend on how the parser names layers; the layers it fixed are listed
in the engine's sidecar (``fp32_layers``).

TensorRT is imported by the caller and passed in; this module imports neither TensorRT nor torch.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .backend import ModelError
from .engine_cache import EngineSpec

__all__ = ["DEFAULT_WORKSPACE_MB", "LayerInfo", "fp32_tail", "make_logger", "build_engine", "trt_major"]

#: The builder's workspace limit (MiB) unless told otherwise: ample for this network, small enough for an 8 GB Jetson.
DEFAULT_WORKSPACE_MB = 1024

#: Layer kinds (``trt.LayerType`` names) where the fp32 tail ends: the branch heads are convolutions.
TAIL_STOP_KINDS = frozenset({"CONVOLUTION"})


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer of a network, as :func:`fp32_tail` sees it.

    Attributes
    ----------
    index : position in the network.
    name : the layer's name.
    kind : its ``trt.LayerType`` name (``"CONVOLUTION"``, ``"ACTIVATION"``, ``"TOPK"`` …).
    inputs, outputs : names of the tensors it reads and writes.
    """

    index: int
    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def fp32_tail(
    layers: Sequence[LayerInfo], outputs: Sequence[str], inputs: Sequence[str], stop_kinds: frozenset = TAIL_STOP_KINDS
) -> list[int] | None:
    """Indices of the layers between the last convolutions and the network outputs (module docstring).

    Walks back from every output through the layers that produce each input, not entering a
    layer of ``stop_kinds``. Returns the sorted indices, or None when the walk reaches a network
    input (no convolution separates the outputs from the input: nothing to keep in fp32 alone).
    """
    producer: dict[str, LayerInfo] = {}
    for layer in layers:
        for name in layer.outputs:
            producer[name] = layer
    entry = set(inputs)
    seen: set[int] = set()
    stack = [producer[name] for name in outputs if name in producer]
    while stack:
        layer = stack.pop()
        if layer.index in seen or layer.kind in stop_kinds:
            continue
        seen.add(layer.index)
        for name in layer.inputs:
            if name in entry:
                return None
            if name in producer:
                stack.append(producer[name])
    return sorted(seen)


def trt_major(trt: Any) -> int:
    """TensorRT's major version (``"10.3.0"`` → 10)."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


def _enum_name(value: Any) -> str:
    return getattr(value, "name", None) or str(value).split(".")[-1]


def make_logger(trt: Any, log: Callable[[str], None]) -> Any:
    """A ``trt.ILogger`` that sends warnings and errors to ``log`` and keeps the errors (``.errors``)."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = _enum_name(severity)
            if level in ("ERROR", "INTERNAL_ERROR"):
                self.errors.append(str(msg).strip())
                log(f"TensorRT error: {msg}")
            elif level == "WARNING":
                log(f"TensorRT warning: {msg}")

    return Logger()


def _progress_monitor(trt: Any, log: Callable[[str], None]) -> Any | None:
    """A ``trt.IProgressMonitor`` logging the build's phases two levels deep (None before TensorRT 10)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._depth: dict[str, int] = {}
            self._start: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = 0 if parent_phase is None else self._depth.get(parent_phase, 0) + 1
            self._depth[phase_name] = depth
            self._start[phase_name] = time.monotonic()
            if depth <= 1:
                log(f"  {'  ' * depth}{phase_name} ({num_steps} steps) …")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            depth = self._depth.pop(phase_name, 0)
            t0 = self._start.pop(phase_name, time.monotonic())
            if depth == 0:
                log(f"  {phase_name} done in {time.monotonic() - t0:.1f} s")

    return Progress()


def _network_layers(network: Any) -> list[LayerInfo]:
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        ins = tuple(t.name for t in (layer.get_input(j) for j in range(layer.num_inputs)) if t is not None)
        outs = tuple(layer.get_output(k).name for k in range(layer.num_outputs))
        layers.append(LayerInfo(i, layer.name, _enum_name(layer.type), ins, outs))
    return layers


def _constrain_tail(trt: Any, network: Any, log: Callable[[str], None]) -> list[str]:
    """Set the fp32 tail's compute layers to float32 (precision and float outputs); returns their names.

    Constant layers are left alone; output types are set on float outputs only (not on TopK's
    INT32 index), precision on layers that read or write a float tensor.
    """
    layers = _network_layers(network)
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    tail = fp32_tail(layers, outputs, inputs)
    if not tail:
        log("warning: no convolution separates the outputs from the input; the fp16 engine keeps nothing in fp32")
        return []
    floats = (trt.float32, trt.float16)
    names = []
    for i in tail:
        layer = network.get_layer(i)
        if _enum_name(layer.type) == "CONSTANT":  # weights, not compute: their consumers read them in fp32
            continue
        touched = False
        for k in range(layer.num_outputs):
            if layer.get_output(k).dtype in floats:
                layer.set_output_type(k, trt.float32)
                touched = True
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        if touched or any(t is not None and t.dtype in floats for t in ins):
            layer.precision = trt.float32
            names.append(layer.name)
    log(f"fp16 build: {len(names)} layers between the branch heads and the outputs kept in fp32")
    return names


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0][:300]


def _parse_errors(parser: Any) -> str:
    parts = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = err.desc() if hasattr(err, "desc") else str(err)
        node = f"node {err.node()}: " if hasattr(err, "node") and err.node() >= 0 else ""
        parts.append(f"{node}{_first_line(desc)}")
    return "; ".join(parts[:3]) or "no error message"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def build_engine(
    trt: Any,
    onnx_path: str | os.PathLike,
    spec: EngineSpec,
    *,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Build a serialised engine for ``spec`` from ``onnx_path`` (module docstring).

    Parameters
    ----------
    trt : the imported ``tensorrt`` module.
    onnx_path : the model's ``model.onnx``.
    spec : precision and input shape to build for (and the system it runs on).
    workspace_mb : the builder's workspace memory limit, MiB.
    timing_cache : file of the builder's timing cache: loaded when present (a cache from another
        TensorRT or GPU is ignored, logged), saved after a successful build. None: no cache.
    log : receives progress lines.

    Returns
    -------
    plan : the serialised engine's bytes.
    info : for the sidecar: ``build_seconds``, ``workspace_mb``, ``fp32_layers``, ``timing_cache``,
        ``fast_fp16`` (whether the GPU has fast fp16), ``tf32`` (whether TF32 kernels were allowed).

    Raises
    ------
    ModelError : the parser rejects the graph, the graph's input is not static, or the build fails
        (one line; TensorRT's own messages go to ``log``).
    """
    log = log or (lambda _line: None)
    onnx_path = Path(onnx_path)
    logger = make_logger(trt, log)
    builder = trt.Builder(logger)
    flags = 0
    if trt_major(trt) < 10:  # explicit batch is the only mode (and the flag deprecated) from TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ModelError(f"TensorRT's ONNX parser rejects {onnx_path}: {_parse_errors(parser)}")
    for i in range(network.num_inputs):
        shape = tuple(int(d) for d in network.get_input(i).shape)
        if any(d < 0 for d in shape) or shape != tuple(spec.input_shape):
            raise ModelError(
                f"{onnx_path} input {network.get_input(i).name!r} has shape {shape}; "
                f"the engine is built for the static shape {tuple(spec.input_shape)}"
            )
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT ≥ 8.4
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    else:  # pragma: no cover - TensorRT < 8.4
        config.max_workspace_size = int(workspace_mb) << 20
    fast_fp16 = bool(getattr(builder, "platform_has_fast_fp16", True))
    fp32_layers: list[str] = []
    tf32 = False
    if hasattr(trt.BuilderFlag, "TF32"):  # on by default from Ampere: fp32 convolutions would run in TF32
        if spec.precision == "fp32":
            config.clear_flag(trt.BuilderFlag.TF32)
        tf32 = bool(config.get_flag(trt.BuilderFlag.TF32))
    if spec.precision == "fp16":
        if not fast_fp16:
            log(f"note: {spec.gpu_name} has no fast fp16; TensorRT may choose fp32 kernels anyway")
        config.set_flag(trt.BuilderFlag.FP16)
        fp32_layers = _constrain_tail(trt, network, log)
        if fp32_layers:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(data)
        if not config.set_timing_cache(cache, False):
            log(f"timing cache {cache_path} does not fit this TensorRT/GPU; starting a new one")
            config.set_timing_cache(config.create_timing_cache(b""), False)
        elif data:
            log(f"timing cache: {cache_path} ({len(data)} bytes) reused")
    monitor = _progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor
    log(
        f"building a TensorRT {trt.__version__} {spec.precision} engine for {spec.gpu_name} "
        f"(sm_{spec.compute_capability.replace('.', '')}), input {'x'.join(map(str, spec.input_shape))}, "
        f"workspace {workspace_mb} MiB; this takes a few minutes …"
    )
    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.monotonic() - t0
    if serialized is None:
        why = logger.errors[-1] if logger.errors else "no error message"
        raise ModelError(
            f"TensorRT failed to build the engine from {onnx_path} after {seconds:.0f} s: {_first_line(why)}"
        )
    plan = bytes(serialized)
    log(f"engine built in {seconds:.1f} s ({len(plan) / 1e6:.1f} MB)")
    if cache_path is not None:
        try:
            _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
        except OSError as err:
            log(f"could not save the timing cache {cache_path}: {err}")
    info = {
        "build_seconds": round(seconds, 3),
        "workspace_mb": int(workspace_mb),
        "fp32_layers": fp32_layers,
        "timing_cache": str(cache_path) if cache_path else None,
        "fast_fp16": fast_fp16,
        "tf32": tf32,
    }
    return plan, info
