"""Backends: selection (auto and explicit), ONNX Runtime and PyTorch on the shipped model, and every
bad model or input as a one-line ModelError.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.inference import (
    BACKEND_NAMES,
    Backend,
    BackendUnavailableError,
    InferenceResult,
    ModelError,
    load_metadata,
    open_backend,
    selection,
)
from dualdepth_ros.inference.metadata import file_sha256
from dualdepth_ros.inference.onnxruntime_backend import OnnxRuntimeBackend

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "dualdepth_default"
NO_CUDA = not torch.cuda.is_available()


def probe(n: int = 1) -> np.ndarray:
    md = load_metadata(SHIPPED)
    return np.random.default_rng(3).random((n, 3, md.input_height, md.input_width), dtype=np.float32)


def copy_model(tmp_path: Path, weights: bool = False, name: str = "model") -> Path:
    out = tmp_path / name
    out.mkdir()
    for name in ("model.onnx", "model.json") + (("weights.pt",) if weights else ()):
        shutil.copy(SHIPPED / name, out / name)
    return out


def edit_json(model_dir: Path, **changes) -> None:
    path = model_dir / "model.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def save_onnx(model: onnx.ModelProto, model_dir: Path) -> None:
    """Write a modified graph and record its hash, so that the loader's later checks are reached."""
    onnx.save(model, str(model_dir / "model.onnx"))
    edit_json(model_dir, onnx_sha256=file_sha256(model_dir / "model.onnx"))


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, DualDepthError), msg
    return msg


# ---------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not NO_CUDA, reason="checks the choice on a machine without CUDA")
def test_auto_picks_onnxruntime_cpu_and_says_why() -> None:
    lines: list[str] = []
    backend = open_backend(SHIPPED, log=lines.append, threads=1)
    assert backend.name == "onnxruntime" and backend.device == "cpu" and backend.precision == "fp32"
    for better in ("tensorrt cuda:", "onnxruntime cuda:", "torch cuda:"):
        assert better in backend.reason
    assert any(line.startswith("inference backend: onnxruntime on cpu") for line in lines)
    d = backend.describe()
    assert d["name"] == "onnxruntime" and d["input"] == [160, 48] and d["reason"] == backend.reason
    assert d["providers"] == ["CPUExecutionProvider"] and d["device"] == "cpu"


def test_options_are_checked() -> None:
    assert BACKEND_NAMES == ("auto", "tensorrt", "onnxruntime", "torch")
    with pytest.raises(ModelError, match="backend must be one of auto, tensorrt, onnxruntime, torch") as err:
        open_backend(SHIPPED, "tflite")
    one_line(err)
    with pytest.raises(ModelError, match="precision must be one of fp32, fp16"):
        open_backend(SHIPPED, precision="int8")
    with pytest.raises(ModelError, match="device must be one of auto, cpu, cuda"):
        open_backend(SHIPPED, device="tpu")
    with pytest.raises(ModelError, match="threads must be"):
        open_backend(SHIPPED, "onnxruntime", threads=-2)
    with pytest.raises(ModelError, match="backend tensorrt does not run on device cpu"):
        open_backend(SHIPPED, "tensorrt", device="cpu")


def test_tensorrt_requested_is_a_clear_error_not_a_stub() -> None:
    with pytest.raises(ModelError, match="backend 'tensorrt' cannot run here .*tensorrt.*use backend onnxruntime") as e:
        open_backend(SHIPPED, "tensorrt")
    one_line(e)


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_lists_every_reason() -> None:
    with pytest.raises(ModelError, match="no inference backend can run here \\(device cuda\\)") as err:
        open_backend(SHIPPED, device="cuda")
    msg = one_line(err)
    assert "onnxruntime cuda:" in msg and "torch cuda: torch sees no CUDA device" in msg


def test_onnxruntime_runs_the_model_as_exported_and_says_so() -> None:
    backend = open_backend(SHIPPED, "onnxruntime", device="cpu", precision="fp16", threads=1)
    assert backend.precision == "fp32"
    assert "fp16 was asked for; ONNX Runtime runs model.onnx as exported (fp32)" in backend.reason


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------
def test_batches_run_in_chunks_and_outputs_are_bound_by_name(tmp_path) -> None:
    backend = open_backend(SHIPPED, "onnxruntime", per_branch=True, threads=1)
    x = probe(3)
    many = backend.infer(x)
    ones = [backend.infer(x[i : i + 1]) for i in range(3)]
    np.testing.assert_array_equal(many.depth, np.concatenate([o.depth for o in ones]))
    np.testing.assert_array_equal(many.branches[1][1], np.concatenate([o.branches[1][1] for o in ones]))
    assert many.depth.shape == (3, 1, 48, 160) and many.confidence.dtype == np.float32
    # The same graph with its outputs in another order gives the same result: binding is by name.
    model = onnx.load(str(SHIPPED / "model.onnx"))
    outs = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend(reversed(outs))
    d = copy_model(tmp_path)
    save_onnx(model, d)
    shuffled = open_backend(d, "onnxruntime", per_branch=True, threads=1).infer(x)
    np.testing.assert_array_equal(shuffled.depth, many.depth)
    np.testing.assert_array_equal(shuffled.confidence, many.confidence)
    np.testing.assert_array_equal(shuffled.branches[0][0], many.branches[0][0])


def test_torch_backend_equals_onnxruntime() -> None:
    ort_b = open_backend(SHIPPED, "onnxruntime", per_branch=True, threads=1)
    torch_b = open_backend(SHIPPED, "torch", device="cpu", per_branch=True)
    assert torch_b.name == "torch" and torch_b.precision == "fp32" and not torch_b.compiled
    x = probe(2)
    a, b = ort_b.infer(x), torch_b.infer(x)
    for (da, ca), (db, cb) in zip(a.branches, b.branches):
        assert np.max(np.abs(da - db) / db) <= 1e-4 and np.max(np.abs(ca - cb)) <= 1e-5
    clear = np.abs(b.branches[0][1] - b.branches[1][1]) > 1e-5
    assert np.max((np.abs(a.depth - b.depth) / b.depth)[clear]) <= 1e-4
    fused_only = open_backend(SHIPPED, "torch", device="cpu").infer(x)
    assert fused_only.branches is None
    np.testing.assert_array_equal(fused_only.depth, b.depth)


def test_torch_fp16_falls_back_to_fp32_on_the_cpu_and_says_so() -> None:
    backend = open_backend(SHIPPED, "torch", device="cpu", precision="fp16")
    assert backend.precision == "fp32" and "the torch backend runs fp32 on the CPU" in backend.reason


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")
def test_torch_cuda_fp16_compiled_close_to_fp32() -> None:
    ref = open_backend(SHIPPED, "onnxruntime", device="cpu", per_branch=True).infer(probe(2))
    backend = open_backend(SHIPPED, "torch", device="cuda", precision="fp16", per_branch=True)
    got = backend.infer(probe(2))
    for b in range(2):
        assert np.max(np.abs(got.branches[b][0] - ref.branches[b][0]) / ref.branches[b][0]) <= 5e-3
    assert np.mean(np.abs(got.depth - ref.depth) / ref.depth > 1e-2) <= 5e-3


# ---------------------------------------------------------------------------------------
# Bad models and inputs: one line each
# ---------------------------------------------------------------------------------------
def test_wrong_input_shape_or_dtype() -> None:
    backend = open_backend(SHIPPED, "onnxruntime", threads=1)
    x = probe()
    cases = [
        (x[:, :, :40], "has shape \\(1, 3, 40, 160\\); the model takes N×3×48×160 float32"),
        (x[0], "has shape \\(3, 48, 160\\)"),
        (x[:, :1], "has shape \\(1, 1, 48, 160\\)"),
        (x[:0], "has shape \\(0, 3, 48, 160\\)"),
        (x.astype(np.float64), "has dtype float64; the model takes"),
        ((x * 255).astype(np.uint8), "has dtype uint8"),
        (x.tolist(), "must be a numpy array .*got list"),
    ]
    for bad, message in cases:
        with pytest.raises(ModelError, match=message) as err:
            backend.infer(bad)
        one_line(err)
    backend.infer(np.asfortranarray(x))  # any memory layout is fine
    backend.close()
    with pytest.raises(ModelError, match="backend is closed"):
        backend.infer(x)
    backend.close()  # idempotent


def test_missing_files(tmp_path) -> None:
    with pytest.raises(ModelError, match="model folder not found") as err:
        open_backend(tmp_path / "nowhere")
    one_line(err)
    d = copy_model(tmp_path)
    (d / "model.json").unlink()
    with pytest.raises(ModelError, match="no model.json in") as err:
        open_backend(d)
    one_line(err)
    d2 = copy_model(tmp_path, name="b")
    (d2 / "model.onnx").unlink()
    with pytest.raises(ModelError, match="no model.onnx in") as err:
        open_backend(d2, "onnxruntime")
    one_line(err)
    with pytest.raises(ModelError, match="backend 'torch' cannot run here .*no weights.pt in") as err:
        open_backend(d2, "torch", device="cpu")
    one_line(err)


def test_corrupt_or_truncated_onnx(tmp_path) -> None:
    d = copy_model(tmp_path)
    data = (SHIPPED / "model.onnx").read_bytes()
    (d / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="is not the file model.json describes .*damaged") as err:
        open_backend(d, "onnxruntime")
    one_line(err)
    edit_json(d, onnx_sha256=file_sha256(d / "model.onnx"))  # a consistent but truncated pair
    with pytest.raises(ModelError, match="cannot load .*model.onnx with ONNX Runtime") as err:
        open_backend(d, "onnxruntime")
    one_line(err)
    (d / "model.onnx").write_bytes(b"\x00garbage" * 100)
    edit_json(d, onnx_sha256=file_sha256(d / "model.onnx"))
    with pytest.raises(ModelError, match="cannot load .*model.onnx with ONNX Runtime") as err:
        open_backend(d, "auto", device="cpu")  # auto does not hide a broken model behind another backend
    one_line(err)


def test_onnx_with_wrong_tensor_names(tmp_path) -> None:
    model = onnx.load(str(SHIPPED / "model.onnx"))
    renamed = "depth_out"
    for node in model.graph.node:
        node.output[:] = [renamed if o == "depth" else o for o in node.output]
    model.graph.output[0].name = renamed
    d = copy_model(tmp_path)
    save_onnx(model, d)
    with pytest.raises(ModelError, match="has no output\\(s\\) \\['depth'\\]") as err:
        open_backend(d, "onnxruntime")
    one_line(err)

    model = onnx.load(str(SHIPPED / "model.onnx"))
    for node in model.graph.node:
        node.input[:] = ["input" if i == "image" else i for i in node.input]
    model.graph.input[0].name = "input"
    save_onnx(model, d)
    with pytest.raises(ModelError, match="has input\\(s\\) \\['input'\\]; model.json says \\['image'\\]") as err:
        open_backend(d, "onnxruntime")
    one_line(err)


def test_model_json_that_disagrees_with_the_onnx(tmp_path) -> None:
    d = copy_model(tmp_path)
    edit_json(d, input_width=200)
    with pytest.raises(
        ModelError, match="input 'image' is tensor\\(float\\) \\[1, 3, 48, 160\\]; model.json says"
    ) as e:
        open_backend(d, "onnxruntime")
    one_line(e)
    d = copy_model(tmp_path, name="x")
    edit_json(d, resize_mode="crop_bottom", config_hash="0123456789abcdef")
    with pytest.raises(ModelError, match="model.json disagree on config_hash .*resize_mode") as e:
        open_backend(d, "onnxruntime")
    one_line(e)


def test_per_branch_needs_a_per_branch_export(tmp_path) -> None:
    d = copy_model(tmp_path)
    edit_json(d, per_branch=False, output_names=["depth", "confidence"])
    with pytest.raises(
        ModelError, match="per-branch outputs were asked for, but .* has none; export the model with"
    ) as e:
        open_backend(d, "onnxruntime", per_branch=True)
    one_line(e)


def test_weights_file_is_loaded_without_unpickling_code(tmp_path) -> None:
    d = copy_model(tmp_path, weights=True)
    obj = torch.load(d / "weights.pt", weights_only=True)
    obj["extra"] = Path("/etc/passwd")  # an arbitrary object: weights_only refuses to unpickle it
    torch.save(obj, d / "weights.pt")
    with pytest.raises(ModelError, match="refusing .*weights.pt: it holds Python objects") as e:
        open_backend(d, "torch", device="cpu")
    one_line(e)
    assert "PosixPath" in str(e.value)  # names the refused global,
    assert "weights_only=False" not in str(e.value)  # and never repeats torch's advice to unpickle anyway
    (d / "weights.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(ModelError, match="cannot read .*weights.pt as weights \\(corrupt") as e:
        open_backend(d, "torch", device="cpu")
    one_line(e)
    torch.save({"format": "something else"}, d / "weights.pt")
    with pytest.raises(ModelError, match="is not a dualdepth_ros weights file") as e:
        open_backend(d, "torch", device="cpu")
    one_line(e)
    obj = torch.load(SHIPPED / "weights.pt", weights_only=True)
    key = next(iter(obj["state_dict"]))
    obj["state_dict"][key] = obj["state_dict"][key] + 1
    torch.save(obj, d / "weights.pt")
    with pytest.raises(ModelError, match="is damaged") as e:
        open_backend(d, "torch", device="cpu")
    one_line(e)
    from dualdepth_ros.inference.weights import state_dict_sha256

    obj["weights_sha256"] = state_dict_sha256(obj["state_dict"])  # self-consistent, but not model.json's
    torch.save(obj, d / "weights.pt")
    with pytest.raises(ModelError, match="does not hold the weights model.json describes") as e:
        open_backend(d, "torch", device="cpu")
    one_line(e)


def test_direct_backend_construction_checks_the_device(tmp_path) -> None:
    with pytest.raises(ModelError, match="runs on 'cpu' or 'cuda'"):
        OnnxRuntimeBackend(SHIPPED, load_metadata(SHIPPED), device="gpu")


class FakeBackend(Backend):
    name = "fake"

    def _infer(self, image: np.ndarray) -> InferenceResult:
        n, _, h, w = image.shape
        return InferenceResult(np.ones((n, 1, h, w), np.float32), np.ones((n, 1, h, w), np.float32))


def fake_candidates(monkeypatch, available: set, broken: tuple | None = None) -> list:
    """Replace the three openers: ``available`` (backend, device) start, ``broken`` raises a ModelError."""
    tried: list[tuple[str, str]] = []

    def opener(name):
        def open_(model_dir, md, *rest):
            device = rest[0] if name != "tensorrt" else "cuda"
            opts = rest[-1]
            tried.append((name, device))
            if (name, device) == broken:
                raise ModelError(f"{name} {device}: the model is broken")
            if (name, device) not in available:
                raise BackendUnavailableError(f"no {name} on {device} here")
            b = FakeBackend(md, device=device, precision=opts["precision"], per_branch=False)
            b.name = name
            return b, None

        return open_

    for name in ("tensorrt", "onnxruntime", "torch"):
        monkeypatch.setattr(selection, f"_open_{name}", opener(name))
    return tried


def test_auto_order_and_reasons(monkeypatch) -> None:
    tried = fake_candidates(monkeypatch, {("torch", "cuda"), ("onnxruntime", "cpu")})
    b = open_backend(SHIPPED)
    assert (b.name, b.device) == ("torch", "cuda")
    assert tried == [("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("torch", "cuda")]
    assert "unavailable: tensorrt cuda: no tensorrt on cuda here; onnxruntime cuda: no onnxruntime on cuda here" in (
        b.reason
    )
    tried.clear()
    b = open_backend(SHIPPED, device="cpu")
    assert (b.name, b.device) == ("onnxruntime", "cpu") and tried == [("onnxruntime", "cpu")]
    tried.clear()
    b = open_backend(SHIPPED, "torch")
    assert (b.name, b.device) == ("torch", "cuda") and tried == [("torch", "cuda")]
    tried.clear()
    b = open_backend(SHIPPED, "onnxruntime")
    assert (b.name, b.device) == ("onnxruntime", "cpu") and tried == [("onnxruntime", "cuda"), ("onnxruntime", "cpu")]
    assert "unavailable: onnxruntime cuda: no onnxruntime on cuda here" in b.reason


def test_auto_stops_at_a_broken_model(monkeypatch) -> None:
    tried = fake_candidates(monkeypatch, {("torch", "cpu")}, broken=("onnxruntime", "cpu"))
    with pytest.raises(ModelError, match="onnxruntime cpu: the model is broken"):
        open_backend(SHIPPED, device="cpu")
    assert tried == [("onnxruntime", "cpu")]  # never falls through to torch
