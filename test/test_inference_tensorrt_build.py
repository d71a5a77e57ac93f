"""The engine build (``tensorrt_build.build_engine``) run against a fake ``tensorrt`` module.

The fake parser lays the shipped ``model.onnx`` out as a TensorRT network (one layer per node,
Conv → CONVOLUTION, ArgMax → TOPK with an INT32 index output), so that every line of the build
runs here: network flags per TensorRT version, the parser's errors, the static-shape check, the
workspace limit, FP16 with the fp32 tail constrained (and only the tail), TF32 off for fp32
builds, the timing cache loaded, refused when it does not fit, and saved, the progress monitor,
and a failed build. What it cannot check is that real TensorRT behaves as this fake does: that is
the GPU test in ``test_inference_tensorrt.py``.
"""

import enum
import types
from pathlib import Path

import onnx
import pytest

from dualdepth_ros.inference import ModelError, load_metadata
from dualdepth_ros.inference.engine_cache import EngineSpec
from dualdepth_ros.inference.tensorrt_build import build_engine

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "dualdepth_default"
MD = load_metadata(SHIPPED)


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3


class Tensor:
    def __init__(self, name: str, dtype: DataType = DataType.FLOAT, shape=()) -> None:
        self.name, self.dtype, self.shape = name, dtype, tuple(shape)


class Layer:
    def __init__(self, name: str, kind: str, inputs: list, outputs: list) -> None:
        self.name = name
        self.type = types.SimpleNamespace(name=kind)
        self._inputs, self._outputs = inputs, outputs
        self.precision = None
        self.output_types: dict[int, DataType] = {}

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, j):
        return self._inputs[j]

    def get_output(self, k):
        return self._outputs[k]

    def set_output_type(self, k, dtype) -> None:
        self.output_types[k] = dtype


class Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.layers: list[Layer] = []
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_layer(self, i):
        return self.layers[i]

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]


class FakeTRT:
    """The parts of ``tensorrt`` that ``build_engine`` uses; records what it was asked to do."""

    def __init__(self, version: str = "10.3.0", monitor: bool = True) -> None:
        self.version, self.monitor = version, monitor
        self.parse_errors: list[tuple[int, str]] = []
        self.build_fails = False
        self.input_shape = MD.input_shape
        self.network: Network | None = None
        self.config = None

    def module(self) -> types.ModuleType:
        fake = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = self.version
        trt.DataType, trt.float32, trt.float16, trt.int32 = DataType, DataType.FLOAT, DataType.HALF, DataType.INT32

        class Severity(enum.Enum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3

        class ILogger:
            def __init__(self) -> None:
                pass

        ILogger.Severity = Severity
        trt.ILogger = ILogger
        if self.monitor:

            class IProgressMonitor:
                def __init__(self) -> None:
                    pass

            trt.IProgressMonitor = IProgressMonitor
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        trt.BuilderFlag = types.SimpleNamespace(FP16="fp16", TF32="tf32", OBEY_PRECISION_CONSTRAINTS="obey")

        class Cache:
            def __init__(self, data: bytes) -> None:
                self.data = bytes(data)

            def serialize(self) -> bytes:
                return b"CACHE:" + fake.version.encode()

        class Config:
            def __init__(self) -> None:
                self.flags = {"tf32"}  # TensorRT's default
                self.pools: dict = {}
                self.cache = None
                self.progress_monitor = None

            def set_memory_pool_limit(self, pool, size) -> None:
                self.pools[pool] = size

            def set_flag(self, flag) -> None:
                self.flags.add(flag)

            def clear_flag(self, flag) -> None:
                self.flags.discard(flag)

            def get_flag(self, flag) -> bool:
                return flag in self.flags

            def create_timing_cache(self, data: bytes) -> Cache:
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch) -> bool:
                assert ignore_mismatch is False
                if cache.data and not cache.data.startswith(b"CACHE:" + fake.version.encode()):
                    return False
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

        class Parser:
            def __init__(self, network: Network, logger) -> None:
                self.network, self.logger = network, logger
                self.errors: list = []

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, i):
                node, desc = self.errors[i]
                return types.SimpleNamespace(desc=lambda: desc, node=lambda: node)

            def parse_from_file(self, path: str) -> bool:
                if fake.parse_errors:
                    self.errors = list(fake.parse_errors)
                    return False
                graph = onnx.load(path).graph
                tensors = {i.name: Tensor(i.name, shape=fake.input_shape) for i in graph.input}
                self.network.inputs = list(tensors.values())
                for init in graph.initializer:  # constants: one CONSTANT layer each
                    t = tensors[init.name] = Tensor(init.name)
                    self.network.layers.append(Layer(init.name, "CONSTANT", [], [t]))
                for node in graph.node:
                    kind = {"Conv": "CONVOLUTION", "ArgMax": "TOPK"}.get(node.op_type, node.op_type.upper())
                    outs = [
                        Tensor(n, DataType.INT32 if node.op_type == "ArgMax" else DataType.FLOAT) for n in node.output
                    ]
                    for t in outs:
                        tensors[t.name] = t
                    ins = [tensors[n] if n else None for n in node.input]
                    self.network.layers.append(Layer(node.name, kind, ins, outs))
                self.network.outputs = [tensors[o.name] for o in graph.output]
                return True

        class Builder:
            platform_has_fast_fp16 = True

            def __init__(self, logger) -> None:
                self.logger = logger

            def create_network(self, flags: int) -> Network:
                fake.network = Network(flags)
                return fake.network

            def create_builder_config(self):
                fake.config = Config()
                return fake.config

            def build_serialized_network(self, network, config):
                mon = config.progress_monitor
                if mon is not None:
                    mon.phase_start("Building engine", None, 2)
                    mon.phase_start("Tactic selection", "Building engine", 5)
                    mon.phase_start("Layer 3", "Tactic selection", 1)
                    assert mon.step_complete("Tactic selection", 0) is True
                    mon.phase_finish("Layer 3")
                    mon.phase_finish("Tactic selection")
                    mon.phase_finish("Building engine")
                if fake.build_fails:
                    self.logger.log(Severity.ERROR, "out of memory while building\nsecond line")
                    return None
                return memoryview(b"PLAN" + str(sorted(config.flags)).encode())

        trt.Builder, trt.OnnxParser = Builder, Parser
        return trt


def spec(precision: str = "fp16", version: str = "10.3.0") -> EngineSpec:
    return EngineSpec(MD.onnx_sha256, version, "8.7", "Orin", precision, tuple(MD.input_shape))


def test_fp16_build_keeps_only_the_tail_in_fp32_and_saves_the_timing_cache(tmp_path) -> None:
    fake = FakeTRT()
    lines: list[str] = []
    cache = tmp_path / "tensorrt-10.3.0-sm87.timing-cache"
    plan, info = build_engine(fake.module(), SHIPPED / "model.onnx", spec(), timing_cache=cache, log=lines.append)
    assert plan.startswith(b"PLAN") and fake.network.flags == 0  # TensorRT 10: no explicit-batch flag
    assert fake.config.flags == {"fp16", "tf32", "obey"}
    assert fake.config.pools == {"workspace": 1024 << 20}
    tail = [layer for layer in fake.network.layers if layer.precision is not None]
    assert sorted(info["fp32_layers"]) == sorted(layer.name for layer in tail)
    kinds = {layer.type.name for layer in tail}
    assert {"SIGMOID", "CONCAT", "TOPK", "GATHERELEMENTS", "RECIPROCAL"} <= kinds
    assert "CONVOLUTION" not in kinds and "CONSTANT" not in kinds
    assert all(layer.precision == DataType.FLOAT for layer in tail)
    topk = next(layer for layer in tail if layer.type.name == "TOPK")
    assert topk.output_types == {}  # its output is the INT32 index: no float type forced on it
    assert not any(layer.output_types for layer in fake.network.layers if layer.precision is None)
    assert cache.read_bytes() == b"CACHE:10.3.0" and info["timing_cache"] == str(cache)
    assert info["workspace_mb"] == 1024 and info["fast_fp16"] and info["tf32"] and info["build_seconds"] >= 0
    text = "\n".join(lines)
    assert "fp16 build: " in text and "kept in fp32" in text
    assert "building a TensorRT 10.3.0 fp16 engine for Orin (sm_87), input 1x3x48x160" in text
    assert "  Building engine (2 steps) …" in text and "    Tactic selection (5 steps) …" in text
    assert "Layer 3" not in text and "Building engine done in" in text and "engine built in" in text

    # The next build reuses the cache; one from another TensorRT is set aside and replaced.
    lines.clear()
    build_engine(fake.module(), SHIPPED / "model.onnx", spec(), timing_cache=cache, log=lines.append)
    assert any("reused" in line for line in lines)
    fake11 = FakeTRT(version="10.4.0")
    lines.clear()
    build_engine(fake11.module(), SHIPPED / "model.onnx", spec(version="10.4.0"), timing_cache=cache, log=lines.append)
    assert any("does not fit this TensorRT/GPU; starting a new one" in line for line in lines)
    assert cache.read_bytes() == b"CACHE:10.4.0"


def test_fp32_build_turns_tf32_off_and_constrains_nothing(tmp_path) -> None:
    fake = FakeTRT()
    _, info = build_engine(fake.module(), SHIPPED / "model.onnx", spec("fp32"), workspace_mb=256)
    assert fake.config.flags == set() and info["tf32"] is False and info["fp32_layers"] == []
    assert fake.config.pools == {"workspace": 256 << 20} and info["timing_cache"] is None
    assert all(layer.precision is None for layer in fake.network.layers)


def test_tensorrt_8_network_flag_and_no_progress_monitor() -> None:
    fake = FakeTRT(version="8.6.1", monitor=False)
    lines: list[str] = []
    build_engine(fake.module(), SHIPPED / "model.onnx", spec(version="8.6.1"), log=lines.append)
    assert fake.network.flags == 1 << 0  # EXPLICIT_BATCH
    assert fake.config.progress_monitor is None
    assert any(line.startswith("building a TensorRT 8.6.1") for line in lines) and any(
        "engine built in" in x for x in lines
    )


def test_parser_errors_input_shape_and_failed_build_are_one_line() -> None:
    fake = FakeTRT()
    fake.parse_errors = [(41, "Unsupported ONNX data type: UINT16\nmore"), (-1, "second")]
    with pytest.raises(ModelError) as e:
        build_engine(fake.module(), SHIPPED / "model.onnx", spec())
    msg = str(e.value)
    assert "\n" not in msg and "ONNX parser rejects" in msg
    assert "node 41: Unsupported ONNX data type: UINT16; second" in msg
    fake = FakeTRT()
    fake.input_shape = (-1, 3, 48, 160)
    with pytest.raises(ModelError, match=r"input 'image' has shape \(-1, 3, 48, 160\); the engine is built for"):
        build_engine(fake.module(), SHIPPED / "model.onnx", spec())
    fake = FakeTRT()
    fake.build_fails = True
    with pytest.raises(ModelError) as e:
        build_engine(fake.module(), SHIPPED / "model.onnx", spec())
    assert "\n" not in str(e.value) and str(e.value).endswith(": out of memory while building")
    assert "TensorRT failed to build the engine from" in str(e.value)
