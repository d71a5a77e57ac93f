"""The TensorRT backend.

Without TensorRT (CI): name-based binding against a fake engine description; the whole backend —
engine cache, build on demand, rebuild once, refusal, deserialisation, buffers, chunked batches —
against a fake ``tensorrt`` module whose execution context runs the shipped ``model.onnx`` with
ONNX Runtime on the bytes at the bound device addresses (so outputs bound to the wrong name give
wrong results); the fp32 tail that an fp16 build keeps; the errors when TensorRT or CUDA memory
is missing; the torch-free import of the TensorRT path.

With TensorRT and a GPU (skipped elsewhere, with the reason): an engine built from the shipped
ONNX equals ONNX Runtime (fp32: depth within 1e-3 relative, confidence within 1e-4; fp16: per
branch 99.9 % of pixels within 1e-2 relative depth, all within 5e-2, confidence within 1e-2;
fused: at most 0.5 % of pixels differ by more than 1 % relative; fused = the max-confidence rule
on the engine's own per-branch outputs), and a real plan with a mismatched sidecar is refused by
name. These bounds are stated, not yet measured: no GPU was available where they were written.
"""

import enum
import hashlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest

from dualdepth_ros.cli import main
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.inference import BackendUnavailableError, ModelError, load_metadata, open_backend
from dualdepth_ros.inference import tensorrt_backend as trt_backend
from dualdepth_ros.inference.engine_cache import engine_paths
from dualdepth_ros.inference.tensorrt_backend import TensorRTBackend, plan_bindings
from dualdepth_ros.inference.tensorrt_build import LayerInfo, fp32_tail
from dualdepth_ros.inference.tensorrt_cuda import CudaMemory, DeviceBuffer, HostBuffer, open_cuda

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "dualdepth_default"
MD = load_metadata(SHIPPED)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, DualDepthError), msg
    return msg


def probe(n: int = 1) -> np.ndarray:
    return np.random.default_rng(5).random((n, 3, MD.input_height, MD.input_width), dtype=np.float32)


# ---------------------------------------------------------------------------------------
# A fake engine description (the five ICudaEngine members the binding code uses)
# ---------------------------------------------------------------------------------------
class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3


class FakeEngine:
    """``tensors``: (name, mode, shape, dtype) in the engine's own order."""

    def __init__(self, tensors, context_factory=None) -> None:
        self._tensors = list(tensors)
        self._by_name = {t[0]: t for t in self._tensors}
        self._context_factory = context_factory

    @property
    def num_io_tensors(self) -> int:
        return len(self._tensors)

    def get_tensor_name(self, i: int) -> str:
        return self._tensors[i][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._by_name[name][1] if name in self._by_name else TensorIOMode.NONE

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(self._by_name[name][2])

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._by_name[name][3]

    def create_execution_context(self):
        return self._context_factory(self)


def engine_tensors(md=MD, order=None, rename=None, shape=None, dtype=DataType.FLOAT) -> list:
    """The model's tensors as an engine lists them: outputs reversed, the input between them."""
    outs = [(n, TensorIOMode.OUTPUT, md.output_shape, dtype) for n in md.output_names]
    outs.reverse()
    tensors = outs[:2] + [(md.input_name, TensorIOMode.INPUT, md.input_shape, DataType.FLOAT)] + outs[2:]
    if rename:
        tensors = [(rename.get(n, n), m, s, d) for n, m, s, d in tensors]
    if shape:
        tensors = [(n, m, shape.get(n, s), d) for n, m, s, d in tensors]
    return tensors if order is None else [tensors[i] for i in order]


def test_outputs_are_bound_by_name_whatever_the_engine_order() -> None:
    tensors = engine_tensors()
    assert [t[0] for t in tensors][:3] == ["confidence_branch1", "depth_branch1", "image"]
    for order in (None, list(reversed(range(len(tensors))))):
        inp, outs = plan_bindings(FakeEngine(engine_tensors(order=order)), MD)
        assert inp.name == "image" and inp.is_input and inp.shape == (1, 3, 48, 160) and inp.dtype == np.float32
        assert [o.name for o in outs] == MD.output_names  # model.json's order, not the engine's
        assert all(o.shape == (1, 1, 48, 160) and not o.is_input for o in outs)
        assert inp.nbytes == 3 * 48 * 160 * 4


@pytest.mark.parametrize(
    "tensors, match",
    [
        (engine_tensors(rename={"image": "input.1"}), r"has input\(s\) \['input.1'\]; model.json says \['image'\]"),
        (engine_tensors(rename={"depth": "output_0"}), r"has no output\(s\) \['depth'\]"),
        (
            engine_tensors() + [("logits", TensorIOMode.OUTPUT, (1, 2, 48, 160), DataType.FLOAT)],
            r"has output\(s\) \['logits'\] that model.json does not list",
        ),
        (
            engine_tensors() + [("image2", TensorIOMode.INPUT, (1, 3, 48, 160), DataType.FLOAT)],
            r"has input\(s\) \['image', 'image2'\]",
        ),
        (engine_tensors(shape={"image": (1, 3, 96, 320)}), "input 'image' has shape 1x3x96x320; model.json says"),
        (engine_tensors(shape={"confidence": (1, 1, 48, 80)}), "output 'confidence' has shape 1x1x48x80"),
        (engine_tensors(shape={"image": (-1, 3, 48, 160)}), "input 'image' has a dynamic shape"),
        (engine_tensors(dtype=DataType.HALF), "output '.*' is HALF; the model's tensors are FLOAT"),
    ],
)
def test_wrong_names_shapes_or_types_are_one_line_errors(tensors, match) -> None:
    with pytest.raises(ModelError, match=match) as e:
        plan_bindings(FakeEngine(tensors), MD, source="engine x.plan")
    assert one_line(e).startswith("engine x.plan ")


# ---------------------------------------------------------------------------------------
# A fake tensorrt module + fake CUDA memory: the whole backend without a GPU
# ---------------------------------------------------------------------------------------
class FakeCuda(CudaMemory):
    """Device memory as numpy byte arrays keyed by made-up addresses."""

    name = "fake-cuda"

    def __init__(self, cc: str = "8.9", gpu: str = "Fake GPU") -> None:
        super().__init__()
        self.device_name, self.compute_capability = gpu, cc
        self.memory: dict[int, np.ndarray] = {}
        self._next = 0x10000
        self.closed = False

    def stream_handle(self) -> int:
        return 77

    def device_buffer(self, nbytes):
        ptr, self._next = self._next, self._next + nbytes + 4096
        self.memory[ptr] = np.zeros(nbytes, np.uint8)
        return self._keep(DeviceBuffer(ptr, nbytes, free=lambda: self.memory.pop(ptr)))

    def host_buffer(self, shape, dtype):
        return self._keep(HostBuffer(np.zeros(shape, dtype)))

    def copy_to_device(self, dst, src):
        self.memory[dst.ptr][: src.array.nbytes] = src.array.reshape(-1).view(np.uint8)

    def copy_to_host(self, dst, src):
        dst.array.reshape(-1).view(np.uint8)[:] = self.memory[src.ptr][: dst.array.nbytes]

    def synchronize(self):
        pass

    def close(self):
        super().close()
        self.closed = True


class FakeContext:
    """Runs model.onnx with ONNX Runtime on the bytes at the bound addresses (like the real enqueue)."""

    def __init__(self, engine, cuda, session) -> None:
        self.engine, self.cuda, self.session = engine, cuda, session
        self.addresses: dict[str, int] = {}
        self.runs = 0

    def set_tensor_address(self, name, ptr) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream) -> bool:
        assert stream == 77
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if set(names) - set(self.addresses):
            return False  # TensorRT refuses to enqueue with an unbound tensor
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == TensorIOMode.OUTPUT]
        feed = {
            n: self.cuda.memory[self.addresses[n]].view(np.float32).reshape(self.engine.get_tensor_shape(n))
            for n in inputs
        }
        for n, value in zip(outputs, self.session.run(outputs, feed)):
            self.cuda.memory[self.addresses[n]][:] = value.reshape(-1).view(np.uint8)
        self.runs += 1
        return True


class FakeTensorRT:
    """What the backend reads of ``tensorrt``, plus counters. Plans are ``FAKEPLAN`` + JSON."""

    def __init__(self, version: str, cuda: FakeCuda, model_dir: Path) -> None:
        import onnxruntime

        self.version, self.cuda = version, cuda
        self.session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        self.builds: list[str] = []
        self.deserialised = 0
        self.contexts: list[FakeContext] = []
        self.fail_build_deserialise = False

    def module(self) -> types.ModuleType:
        fake = self
        mod = types.ModuleType("tensorrt")
        mod.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
        mod.__version__ = self.version

        class Severity(enum.Enum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3

        class ILogger:
            def __init__(self) -> None:
                pass

        ILogger.Severity = Severity

        class Runtime:
            def __init__(self, logger) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, data: bytes):
                fake.deserialised += 1
                if not data.startswith(b"FAKEPLAN") or (fake.fail_build_deserialise and b'"bad"' in data):
                    self.logger.log(Severity.ERROR, "IRuntime::deserializeCudaEngine: the plan is corrupt")
                    return None
                desc = json.loads(data[len(b"FAKEPLAN") :])

                def context(engine):
                    ctx = FakeContext(engine, fake.cuda, fake.session)
                    fake.contexts.append(ctx)
                    return ctx

                md = load_metadata(desc["model_dir"])
                return FakeEngine(engine_tensors(md, rename=desc.get("rename")), context)

        mod.ILogger, mod.Runtime = ILogger, Runtime
        return mod

    def build(self, trt, onnx_path, spec, *, workspace_mb, timing_cache, log):
        assert trt.__version__ == self.version and spec.tensorrt_version == self.version
        self.builds.append(spec.key)
        log("  Building engine (3 steps) …")
        desc = {"model_dir": str(Path(onnx_path).parent), "key": spec.key}
        if self.fail_build_deserialise:
            desc["bad"] = True
        return b"FAKEPLAN" + json.dumps(desc).encode(), {"build_seconds": 0.01, "workspace_mb": workspace_mb}


@pytest.fixture()
def model(tmp_path) -> Path:
    out = tmp_path / "model"
    out.mkdir()
    for name in ("model.onnx", "model.json"):
        shutil.copy(SHIPPED / name, out / name)
    return out


@pytest.fixture()
def fake_trt(monkeypatch, model):
    """Install a fake TensorRT 10.3.0 on a fake sm_89 GPU; returns a function to switch the version."""
    cuda = FakeCuda()
    state = {}

    def install(version: str = "10.3.0") -> FakeTensorRT:
        fake = FakeTensorRT(version, cuda, model)
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
        monkeypatch.setattr(trt_backend, "build_engine", fake.build)
        monkeypatch.setattr(trt_backend, "open_cuda", lambda: cuda)
        state["fake"] = fake
        return fake

    install()
    return install


def test_tensorrt_backend_builds_once_binds_by_name_and_equals_onnxruntime(model, fake_trt) -> None:
    fake = fake_trt()
    lines: list[str] = []
    backend = open_backend(model, "tensorrt", per_branch=True, log=lines.append)
    key = f"{MD.onnx_sha256[:16]}-trt10.3.0-sm89-fp32-1x3x48x160"
    assert fake.builds == [key]
    plan, side = engine_paths(model, key)
    assert plan.is_file() and side.is_file()
    sidecar = json.loads(side.read_text())
    assert sidecar["tensorrt_version"] == "10.3.0" and sidecar["compute_capability"] == "8.9"
    assert (
        sidecar["gpu_name"] == "Fake GPU"
        and sidecar["precision"] == "fp32"
        and sidecar["input_shape"] == [1, 3, 48, 160]
    )
    assert (
        sidecar["onnx_sha256"] == MD.onnx_sha256
        and sidecar["plan_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    )
    assert sidecar["output_names"] == MD.output_names and "built_at" in sidecar and sidecar["build_seconds"] == 0.01
    assert any(f"TensorRT engine: no engine at {plan}: building the engine" in line for line in lines)
    assert any("Building engine (3 steps)" in line for line in lines)
    assert backend.name == "tensorrt" and backend.device == "cuda" and backend.precision == "fp32"

    x = probe(3)  # three frames through a batch-1 engine: three chunks
    got = backend.infer(x)
    ref = open_backend(model, "onnxruntime", per_branch=True, threads=1).infer(x)
    np.testing.assert_array_equal(got.depth, ref.depth)
    np.testing.assert_array_equal(got.confidence, ref.confidence)
    for (d, c), (rd, rc) in zip(got.branches, ref.branches):
        np.testing.assert_array_equal(d, rd)
        np.testing.assert_array_equal(c, rc)
    assert fake.contexts[-1].runs == 3 and got.depth.shape == (3, 1, 48, 160)
    d = backend.describe()
    assert d["engine"] == str(plan) and d["engine_key"] == key and d["built"] and d["tensorrt"] == "10.3.0"
    assert d["gpu"] == "Fake GPU" and d["cuda_memory"] == "fake-cuda" and d["input"] == [160, 48]
    backend.close()
    assert fake.cuda.closed and fake.cuda.memory == {}
    with pytest.raises(ModelError, match="the tensorrt backend is closed"):
        backend.infer(x)

    # Opened again: the cached plan is used, nothing is built.
    lines.clear()
    again = open_backend(model, "tensorrt", log=lines.append)
    assert fake.builds == [key] and not again.describe()["built"]
    assert any(f"cached engine {plan} matches TensorRT 10.3.0 / sm_89, fp32" in line for line in lines)
    np.testing.assert_array_equal(again.infer(x[:1]).depth, ref.depth[:1])
    assert again.infer(x[:1]).branches is None


def test_auto_takes_tensorrt_first(model, fake_trt) -> None:
    lines: list[str] = []
    backend = open_backend(model, log=lines.append, precision="fp16")
    assert backend.name == "tensorrt" and backend.precision == "fp16"
    assert backend.reason.startswith("tensorrt on cuda (fp16); asked for backend=auto, device=auto")
    assert "unavailable" not in backend.reason
    assert lines[-1].startswith("inference backend: tensorrt on cuda (fp16)")


def test_input_shape_and_dtype_are_checked(model, fake_trt) -> None:
    backend = open_backend(model, "tensorrt")
    with pytest.raises(ModelError, match=r"has shape \(1, 3, 96, 320\); the model takes N×3×48×160") as e:
        backend.infer(np.zeros((1, 3, 96, 320), np.float32))
    one_line(e)
    with pytest.raises(ModelError, match="has dtype float64"):
        backend.infer(np.zeros((1, 3, 48, 160)))


def test_another_tensorrt_version_is_refused_by_name_or_built_beside(model, fake_trt) -> None:
    fake_trt("10.3.0")
    open_backend(model, "tensorrt").close()
    fake = fake_trt("10.4.0")  # the system was upgraded: another key, the old plan does not fit
    with pytest.raises(ModelError) as e:
        open_backend(model, "tensorrt", allow_engine_build=False)
    msg = one_line(e)
    assert "no engine at" in msg and "for TensorRT 10.4.0 / sm_89, fp32" in msg
    assert "the folder holds engines for TensorRT 10.3.0 for sm_89 (Fake GPU), fp32, input 1x3x48x160" in msg
    assert "building is off (allow_engine_build=False)" in msg and fake.builds == []
    # auto does not fall back to a slower backend around a refused engine.
    with pytest.raises(ModelError, match="TensorRT engine refused"):
        open_backend(model, allow_engine_build=False)
    backend = open_backend(model, "tensorrt")
    assert len(fake.builds) == 1 and "trt10.4.0" in fake.builds[0]
    assert len(list(model.glob("model.*.plan"))) == 2  # the 10.3.0 plan is left for the system that uses it
    backend.close()


def mismatched_plan(model: Path, fake: FakeTensorRT, path: Path, **sidecar_changes) -> None:
    """Build a plan at ``path`` (engine_path), then edit its sidecar as if built elsewhere."""
    open_backend(model, "tensorrt", engine_path=str(path)).close()
    side = path.with_suffix(".json")
    data = json.loads(side.read_text())
    data.update(sidecar_changes)
    side.write_text(json.dumps(data))
    fake.builds.clear()


def test_engine_path_plan_from_another_system_is_refused_or_rebuilt_once(model, fake_trt, tmp_path) -> None:
    fake = fake_trt()
    plan = tmp_path / "engines" / "depth.plan"
    plan.parent.mkdir()
    mismatched_plan(model, fake, plan, tensorrt_version="8.6.1", compute_capability="8.7", gpu_name="Orin")
    with pytest.raises(ModelError) as e:
        open_backend(model, "tensorrt", engine_path=str(plan), allow_engine_build=False)
    assert one_line(e) == (
        f"TensorRT engine refused: {plan}: engine built with TensorRT 8.6.1 for sm_87, this system has "
        "TensorRT 10.3.0 / sm_89; building is off (allow_engine_build=False)"
    )
    assert fake.builds == [] and fake.deserialised == 1  # the mismatched plan was never deserialised
    lines: list[str] = []
    backend = open_backend(model, "tensorrt", engine_path=str(plan), log=lines.append)
    assert len(fake.builds) == 1 and backend.describe()["built"]
    assert any(
        "engine built with TensorRT 8.6.1 for sm_87, this system has TensorRT 10.3.0 / sm_89" in x for x in lines
    )
    assert json.loads(plan.with_suffix(".json").read_text())["tensorrt_version"] == "10.3.0"
    assert sorted(p.name for p in plan.parent.iterdir()) == ["depth.json", "depth.plan"]


@pytest.mark.parametrize(
    "damage, phrase",
    [
        ("truncate", "corrupt or truncated"),
        ("no-sidecar", "has no sidecar"),
        ("bad-sidecar", "unreadable"),
        ("precision", "engine built for fp16, fp32 is asked for"),
        ("shape", "engine built for input 1x3x96x320, the model takes 1x3x48x160"),
        ("onnx", "engine built from another model.onnx"),
    ],
)
def test_damaged_or_mismatched_plan_is_rebuilt_once_or_refused(model, fake_trt, tmp_path, damage, phrase) -> None:
    fake = fake_trt()
    plan = tmp_path / "depth.plan"
    side = plan.with_suffix(".json")
    changes = {"precision": {"precision": "fp16"}, "shape": {"input_shape": [1, 3, 96, 320]}}
    changes["onnx"] = {"onnx_sha256": "0" * 64}
    mismatched_plan(model, fake, plan, **changes.get(damage, {}))
    if damage == "truncate":
        plan.write_bytes(plan.read_bytes()[:20])
    elif damage == "no-sidecar":
        side.unlink()
    elif damage == "bad-sidecar":
        side.write_text("{")
    with pytest.raises(ModelError, match="TensorRT engine refused: .*building is off") as e:
        open_backend(model, "tensorrt", engine_path=str(plan), allow_engine_build=False)
    assert phrase in one_line(e) and fake.builds == []
    backend = open_backend(model, "tensorrt", engine_path=str(plan))
    assert len(fake.builds) == 1
    np.testing.assert_array_equal(
        backend.infer(probe()).depth, open_backend(model, "onnxruntime", threads=1).infer(probe()).depth
    )


def test_force_engine_update_rebuilds_a_matching_plan(model, fake_trt) -> None:
    fake = fake_trt()
    open_backend(model, "tensorrt").close()
    open_backend(model, "tensorrt").close()
    assert len(fake.builds) == 1
    lines: list[str] = []
    open_backend(model, "tensorrt", force_engine_update=True, log=lines.append).close()
    assert len(fake.builds) == 2 and any("force_engine_update is set" in line for line in lines)
    with pytest.raises(ModelError, match="force_engine_update asks to rebuild .* but building is off"):
        open_backend(model, "tensorrt", force_engine_update=True, allow_engine_build=False)


def test_plan_that_does_not_deserialise_is_rebuilt_once(model, fake_trt) -> None:
    fake = fake_trt()
    open_backend(model, "tensorrt").close()
    (plan,) = model.glob("model.*.plan")
    side = plan.with_suffix(".json")
    # Same sidecar, but bytes that TensorRT rejects (a plan from a TensorRT that lied in its sidecar, say).
    plan.write_bytes(b"garbage")
    data = json.loads(side.read_text())
    data["plan_sha256"] = hashlib.sha256(b"garbage").hexdigest()
    side.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="TensorRT cannot deserialise .*: IRuntime::deserializeCudaEngine") as e:
        open_backend(model, "tensorrt", allow_engine_build=False)
    one_line(e)
    lines: list[str] = []
    backend = open_backend(model, "tensorrt", log=lines.append)
    assert len(fake.builds) == 2 and any("rebuilding it once" in line for line in lines)
    backend.close()
    # A build whose plan still does not deserialise stops there: no loop.
    plan.write_bytes(b"garbage")
    side.write_text(json.dumps(data))
    fake.fail_build_deserialise = True
    with pytest.raises(ModelError, match="cannot deserialise the engine it just built"):
        open_backend(model, "tensorrt")
    assert len(fake.builds) == 3


def test_engine_with_other_tensor_names_is_refused_and_memory_freed(model, fake_trt, monkeypatch) -> None:
    fake = fake_trt()
    real_build = fake.build

    def build_renamed(*args, **kwargs):
        data, info = real_build(*args, **kwargs)
        desc = json.loads(data[len(b"FAKEPLAN") :])
        desc["rename"] = {"confidence": "conf"}
        return b"FAKEPLAN" + json.dumps(desc).encode(), info

    monkeypatch.setattr(trt_backend, "build_engine", build_renamed)
    with pytest.raises(ModelError, match=r"engine model\..*\.plan has no output\(s\) \['confidence'\]") as e:
        open_backend(model, "tensorrt")
    one_line(e)
    assert fake.cuda.closed and fake.cuda.memory == {}


def test_model_files_are_checked_before_any_engine(model, fake_trt) -> None:
    fake = fake_trt()
    with open(model / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="is not the file model.json describes") as e:
        open_backend(model, "tensorrt")
    one_line(e)
    with pytest.raises(ModelError, match="per-branch outputs were asked for"):
        TensorRTBackend(
            model,
            MD.__class__(**{**MD.to_dict(), "per_branch": False, "output_names": ["depth", "confidence"]}),
            per_branch=True,
        )
    assert fake.builds == []


# ---------------------------------------------------------------------------------------
# What an fp16 build keeps in fp32
# ---------------------------------------------------------------------------------------
def onnx_as_layers(path: Path) -> tuple[list[LayerInfo], list[str], list[str]]:
    """The ONNX graph as TensorRT's parser lays it out: one layer per node (Conv → CONVOLUTION)."""
    graph = onnx.load(str(path)).graph
    layers = [
        LayerInfo(
            i, n.name, "CONVOLUTION" if n.op_type == "Conv" else n.op_type.upper(), tuple(n.input), tuple(n.output)
        )
        for i, n in enumerate(graph.node)
    ]
    return layers, [o.name for o in graph.output], [i.name for i in graph.input]


def test_fp32_tail_is_the_branch_comparison_and_the_activations() -> None:
    layers, outputs, inputs = onnx_as_layers(SHIPPED / "model.onnx")
    tail = fp32_tail(layers, outputs, inputs)
    kinds = sorted({layers[i].kind for i in tail})
    assert kinds == ["ADD", "ARGMAX", "CONCAT", "GATHERELEMENTS", "MUL", "RECIPROCAL", "SIGMOID", "SLICE"]
    by_kind = {k: [layers[i] for i in tail if layers[i].kind == k] for k in kinds}
    assert len(by_kind["SIGMOID"]) == 4 and len(by_kind["ARGMAX"]) == 1 and len(by_kind["GATHERELEMENTS"]) == 2
    assert len(by_kind["CONCAT"]) == 2  # the branch stacks; no decoder skip-connection concat
    assert {o for layer in by_kind["GATHERELEMENTS"] for o in layer.outputs} == {"depth", "confidence"}
    assert len(tail) < 0.15 * len(layers)  # the encoder and decoders stay fp16
    # Without a convolution between them, nothing is singled out.
    chain = [LayerInfo(0, "a", "RELU", ("image",), ("x",)), LayerInfo(1, "b", "SIGMOID", ("x",), ("depth",))]
    assert fp32_tail(chain, ["depth"], ["image"]) is None


# ---------------------------------------------------------------------------------------
# Without TensorRT, CUDA memory or torch
# ---------------------------------------------------------------------------------------
@pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorrt") is not None, reason="checks a machine without TensorRT"
)
def test_without_tensorrt_the_backend_says_what_to_install(model) -> None:
    with pytest.raises(BackendUnavailableError, match="the tensorrt Python module is not importable.*JetPack ships"):
        TensorRTBackend(model, MD)
    backend = open_backend(model, device="cpu", threads=1)
    assert backend.name == "onnxruntime"


def test_without_cuda_memory_the_message_names_the_packages(monkeypatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the providers would start")
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)  # not importable, whatever is installed
    with pytest.raises(BackendUnavailableError) as e:
        open_cuda()
    assert one_line(e) == (
        "no CUDA memory for TensorRT (cuda-python: not importable (ModuleNotFoundError); "
        "pycuda: not importable (ModuleNotFoundError); torch: torch sees no CUDA device); "
        "pip install cuda-python (or pycuda), or a CUDA build of torch"
    )


def test_export_engine_without_tensorrt_fails_before_exporting(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "out"
    rc = main(["export", "--checkpoint", str(REPO / "models" / "dualdepth_default.pt"), "--out", str(out), "--engine"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --engine needs TensorRT and a GPU here:"), err
    assert not out.exists()


def test_export_engine_builds_the_plan_beside_the_export(tmp_path, capsys, monkeypatch, fake_trt) -> None:
    from dualdepth_ros.inference import tensorrt_cuda

    fake = fake_trt()
    monkeypatch.setattr(tensorrt_cuda, "open_cuda", lambda: fake.cuda)
    out = tmp_path / "exported"
    argv = ["export", "--checkpoint", str(REPO / "models" / "dualdepth_default.pt"), "--out", str(out)]
    rc = main(argv + ["--per-branch", "--engine", "--engine-precision", "fp16", "--workspace-mb", "512"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    md = load_metadata(out)
    key = f"{md.onnx_sha256[:16]}-trt10.3.0-sm89-fp16-1x3x48x160"
    assert fake.builds == [key]
    assert (out / f"model.{key}.plan").is_file() and (out / f"model.{key}.json").is_file()
    assert json.loads((out / f"model.{key}.json").read_text())["workspace_mb"] == 512
    assert f"wrote {out / f'model.{key}.plan'} and its sidecar (fp16 TensorRT engine)" in captured.out
    assert "TensorRT engine: force_engine_update is set: rebuilding" in captured.err
    rc = main(argv + ["--overwrite", "--engine", "--workspace-mb", "0"])
    assert rc == 2 and "--workspace-mb must be a positive number" in capsys.readouterr().err


TORCH_FREE = r"""
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "rosbags", "tensorrt", "pycuda", "cuda"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocked())
from dualdepth_ros.inference import BackendUnavailableError, open_backend
from dualdepth_ros.inference import engine_cache, tensorrt_backend, tensorrt_build, tensorrt_cuda
try:
    tensorrt_cuda.open_cuda()
except BackendUnavailableError as err:
    assert "torch: not importable" in str(err), err
b = open_backend(sys.argv[1], threads=1)
assert b.name == "onnxruntime", b.name
assert "tensorrt cuda: the tensorrt Python module is not importable" in b.reason, b.reason
assert not any(m.split(".")[0] in ("torch", "rosbags", "tensorrt") for m in sys.modules)
print("ok")
"""


def test_tensorrt_path_imports_without_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(SHIPPED)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------
# Real TensorRT on a GPU (skipped elsewhere)
# ---------------------------------------------------------------------------------------
def real_tensorrt() -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (JetPack or NVIDIA's pip index)")
    try:
        open_cuda().close()
    except BackendUnavailableError as err:
        pytest.skip(f"TensorRT is installed but there is no usable GPU/CUDA memory: {err}")


@pytest.fixture(scope="module")
def real_engines(tmp_path_factory):
    real_tensorrt()
    out = tmp_path_factory.mktemp("trt") / "model"
    shutil.copytree(SHIPPED, out)
    lines: list[str] = []
    engines = {
        p: open_backend(out, "tensorrt", precision=p, per_branch=True, log=lines.append) for p in ("fp32", "fp16")
    }
    yield out, engines, lines
    for b in engines.values():
        b.close()


def test_real_engine_equals_onnxruntime(real_engines) -> None:
    from test_export import sample_inputs

    out, engines, lines = real_engines
    assert any("engine built in" in line for line in lines)
    x = sample_inputs(MD, n=8)
    ref = open_backend(out, "onnxruntime", per_branch=True, threads=1).infer(x)
    a = engines["fp32"].infer(x)
    for (d, c), (rd, rc) in zip(a.branches, ref.branches):
        assert np.max(np.abs(d - rd) / rd) <= 1e-3 and np.max(np.abs(c - rc)) <= 1e-4
    assert np.mean(np.abs(a.depth - ref.depth) / ref.depth > 1e-3) <= 1e-3
    h = engines["fp16"].infer(x)
    for (d, c), (rd, rc) in zip(h.branches, ref.branches):
        rel = np.abs(d - rd) / rd
        assert np.quantile(rel, 0.999) <= 1e-2 and rel.max() <= 5e-2 and np.max(np.abs(c - rc)) <= 1e-2
    assert np.mean(np.abs(h.depth - ref.depth) / ref.depth > 1e-2) <= 5e-3
    for got in (a, h):  # the fused outputs follow the rule on the engine's own per-branch outputs
        (d0, c0), (d1, c1) = got.branches
        clear = c0 != c1  # an exact tie may go either way in TensorRT's TopK
        np.testing.assert_array_equal(got.depth[clear], np.where(c1 > c0, d1, d0)[clear])
        np.testing.assert_array_equal(got.confidence, np.maximum(c0, c1))
    side = json.loads(next(out.glob("model.*fp16*.json")).read_text())
    assert side["fp32_layers"], "the fp16 engine keeps the branch comparison in fp32"


def test_real_plan_with_a_mismatched_sidecar_is_refused(real_engines, tmp_path) -> None:
    out, engines, _ = real_engines
    plan = Path(engines["fp32"].describe()["engine"])
    copy = tmp_path / "depth.plan"
    shutil.copy(plan, copy)
    data = json.loads(plan.with_suffix(".json").read_text())
    data["tensorrt_version"] = "8.6.1" if not data["tensorrt_version"].startswith("8.6") else "10.3.0"
    copy.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=f"engine built with TensorRT {data['tensorrt_version']} for sm_") as e:
        open_backend(out, "tensorrt", engine_path=str(copy), allow_engine_build=False)
    one_line(e)
    copy.write_bytes(copy.read_bytes()[:1000])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        open_backend(out, "tensorrt", engine_path=str(copy), allow_engine_build=False)
