"""dualdepth export: ONNX Runtime equals PyTorch (per branch and fused, two resolutions), the fusion
rule inside the graph, a static opset-17 graph, fp16, and the errors of the command.

Bounds (float32 graph against the PyTorch forward of the checkpoint, on sample-drive frames):
per-branch depth within 1e-4 relative, confidences within 1e-5 absolute; the fused outputs within
the same bounds wherever the two branch confidences differ by more than 1e-5 (where they are
closer, a rounding difference may pick the other branch: that is the fusion rule, tested exactly
on the graph's own outputs by ``test_fused_outputs_follow_the_max_confidence_rule``).
"""

import copy
import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dualdepth_ros.cli import main
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.inference import ModelError, load_metadata, open_backend
from dualdepth_ros.inference.export import FORBIDDEN_OPS, _check_graph, export_model, export_onnx
from dualdepth_ros.inference.metadata import ModelMetadata, file_sha256, output_names, parse_metadata_props
from dualdepth_ros.networks import DepthNet, ExportModule
from dualdepth_ros.training.checkpoint import model_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "models" / "dualdepth_default.pt"
SHIPPED = REPO / "models" / "dualdepth_default"
SAMPLE = REPO / "test" / "data" / "sample_drive"
SECOND = (96, 64)  # width, height of the second export (another aspect ratio than the shipped 160x48)

DEPTH_RTOL, CONF_ATOL, TIE = 1e-4, 1e-5, 1e-5


def sample_inputs(md: ModelMetadata, n: int = 4) -> np.ndarray:
    """``n`` sample-drive frames preprocessed as the runtime does (model.json's preprocessor), plus noise."""
    from dualdepth_ros.data.bags import Bag, header_stamp_ns

    infos, images = {}, []
    with Bag(SAMPLE) as bag:
        for topic, log_ns, msg in bag.messages(["/camera/image_raw", "/camera/camera_info"]):
            stamp = header_stamp_ns(msg, log_ns)
            if topic.endswith("camera_info"):
                infos[stamp] = msg
            else:
                images.append((stamp, msg))
    pre = md.preprocessor()
    step = max(1, len(images) // n)
    frames = [pre(msg, infos[stamp]).image for stamp, msg in images[::step][:n]]
    noise = np.random.default_rng(0).random((1, 3, md.input_height, md.input_width), dtype=np.float32)
    return np.concatenate([np.stack(frames), noise])


@pytest.fixture(scope="module")
def loaded():
    return model_from_checkpoint(CKPT)


@pytest.fixture(scope="module")
def second(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "second"
    w, h = SECOND
    rc = main(
        ["export", "--checkpoint", str(CKPT), "--out", str(out), "--width", str(w), "--height", str(h)]
        + ["--per-branch"]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="module", params=["shipped", "second"])
def model_dir(request, second) -> Path:
    return SHIPPED if request.param == "shipped" else second


def torch_reference(loaded, x: np.ndarray) -> dict:
    with torch.no_grad():
        out = loaded.depth_net(torch.from_numpy(x))
    return {k: v.numpy() for k, v in out.items() if k != ("features",) and k[-1] == 0}


def test_ort_equals_pytorch_per_branch_and_fused(model_dir, loaded) -> None:
    backend = open_backend(model_dir, "onnxruntime", per_branch=True, threads=1)
    md = backend.metadata
    x = sample_inputs(md)
    got = backend.infer(x)
    ref = torch_reference(loaded, x)
    for b, (d, c) in enumerate(got.branches):
        rd, rc = ref[("depth", b, 0)], ref[("conf", b, 0)]
        assert d.shape == rd.shape == (len(x), 1, md.input_height, md.input_width) and d.dtype == np.float32
        assert np.max(np.abs(d - rd) / rd) <= DEPTH_RTOL, f"branch {b} depth"
        assert np.max(np.abs(c - rc)) <= CONF_ATOL, f"branch {b} confidence"
    gap = np.abs(ref[("conf", 0, 0)] - ref[("conf", 1, 0)])
    clear = gap > TIE
    assert clear.mean() > 0.99  # the comparison below covers nearly every pixel
    rd, rc = ref[("depth_fused", 0)], ref[("conf_fused", 0)]
    assert np.max((np.abs(got.depth - rd) / rd)[clear]) <= DEPTH_RTOL
    assert np.max(np.abs(got.confidence - rc)[clear]) <= CONF_ATOL
    assert md.min_depth <= got.depth.min() and got.depth.max() <= md.max_depth
    assert 0.0 <= got.confidence.min() and got.confidence.max() <= 1.0


def test_fused_outputs_follow_the_max_confidence_rule(model_dir) -> None:
    backend = open_backend(model_dir, "onnxruntime", per_branch=True, threads=1)
    got = backend.infer(sample_inputs(backend.metadata))
    (d0, c0), (d1, c1) = got.branches
    # The rule computed here, separately: the more confident branch wins, ties go to branch 0.
    np.testing.assert_array_equal(got.depth, np.where(c1 > c0, d1, d0))
    np.testing.assert_array_equal(got.confidence, np.maximum(c0, c1))
    assert 0 < np.mean(c1 > c0) < 1  # both branches win somewhere: the test can tell them apart


def test_second_resolution_graph_is_static_opset_17(second) -> None:
    md = load_metadata(second)
    assert (md.input_width, md.input_height) == SECOND and md.per_branch and md.precision == "fp32"
    model = onnx.load(str(second / "model.onnx"))
    assert {(o.domain or "ai.onnx"): o.version for o in model.opset_import} == {"ai.onnx": 17}
    dims = [[d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*model.graph.input, *model.graph.output)]
    assert dims == [[1, 3, 64, 96]] + [[1, 1, 64, 96]] * 6
    assert [v.name for v in model.graph.input] == ["image"]
    assert [v.name for v in model.graph.output] == output_names(2, True)
    assert not {n.op_type for n in model.graph.node} & FORBIDDEN_OPS
    props = {p.key: p.value for p in model.metadata_props}
    assert parse_metadata_props(props) == {k: v for k, v in md.to_dict().items() if k != "onnx_sha256"}
    assert md.onnx_sha256 == file_sha256(second / "model.onnx")
    obj = torch.load(second / "weights.pt", weights_only=True)  # plain types only
    assert obj["weights_sha256"] == md.weights_sha256 and obj["model"]["num_branches"] == 2


def test_check_graph_refuses_what_tensorrt_or_the_runtime_cannot_take(second) -> None:
    md = load_metadata(second)
    base = onnx.load(str(second / "model.onnx"))
    _check_graph(base, md)
    m = copy.deepcopy(base)
    m.opset_import[0].version = 18
    with pytest.raises(ModelError, match="opsets .* not ai.onnx 17"):
        _check_graph(m, md)
    m = copy.deepcopy(base)
    m.graph.node.append(onnx.helper.make_node("NonZero", ["image"], ["nz"]))
    with pytest.raises(ModelError, match="data-dependent ops \\['NonZero'\\]"):
        _check_graph(m, md)
    m = copy.deepcopy(base)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(ModelError, match="inputs are .*static, float32"):
        _check_graph(m, md)


def test_small_random_net_exports_and_matches_pytorch(tmp_path) -> None:
    """A net with non-trivial BatchNorm statistics (moved from test_networks): ONNX equals PyTorch and
    the net's training mode is restored.
    """
    import onnxruntime as ort

    torch.manual_seed(0)
    net = DepthNet(encoder="resnet10", encoder_width=16, decoder_channels=(8, 16, 16, 32, 32))
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, 3, 64, 96))
    md = ModelMetadata(
        input_width=96,
        input_height=64,
        resize_mode="resize",
        rectify=True,
        min_depth=1 / 10.01,
        max_depth=100.0,
        output_names=output_names(2, True),
        num_branches=2,
        per_branch=True,
        intrinsics_convention="test",
        config_hash="test",
        weights_sha256="test",
        package_version="test",
        onnx_sha256="pending",
    )
    module = ExportModule(net, per_branch=True)
    export_onnx(module, tmp_path / "m.onnx", md)
    assert net.training and module.training  # modes restored
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 64, 96)
    got = dict(zip(md.output_names, sess.run(md.output_names, {"image": x.numpy()})))
    net.eval()
    with torch.no_grad():
        out = net(x)
    ref = {
        "depth_branch0": out[("depth", 0, 0)],
        "confidence_branch1": out[("conf", 1, 0)],
        "depth_branch1": out[("depth", 1, 0)],
    }
    for k, v in ref.items():
        np.testing.assert_allclose(got[k], v.numpy(), rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.fixture(scope="module")
def fp16(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "fp16"
    shutil.copytree(SHIPPED, out)  # an earlier export, with a cached TensorRT engine
    (out / "model.0123abcd.plan").write_bytes(b"plan")
    (out / "model.0123abcd.json").write_text("{}")
    args = ["export", "--checkpoint", str(CKPT), "--out", str(out), "--precision", "fp16", "--per-branch"]
    assert main(args) == 2  # not empty
    assert (out / "model.0123abcd.plan").exists()
    assert main([*args, "--overwrite"]) == 0  # a model folder: replaced
    return out


def test_overwrite_replaces_the_folder_atomically(fp16) -> None:
    """The earlier export (with its engine, which no longer matches) is gone, nothing else is left."""
    assert sorted(p.name for p in fp16.iterdir()) == ["model.json", "model.onnx", "weights.pt"]
    assert [p.name for p in fp16.parent.iterdir()] == ["fp16"]  # no temporary or backup folder left


def test_fp16_graph_per_branch_tight_fused_by_share(fp16) -> None:
    """fp16 weights and compute, float32 I/O: per branch within 5e-3 relative depth / 1e-3 confidence of
    the fp32 graph; fused, at most 0.5 % of pixels differ by more than 1e-2 relative (a near-tie that
    fp16 rounding sends to the other branch; measured 0.05 % on the sample drive).
    """
    md = load_metadata(fp16)
    assert md.precision == "fp16"
    assert (fp16 / "model.onnx").stat().st_size < 0.6 * (SHIPPED / "model.onnx").stat().st_size
    half = open_backend(fp16, "onnxruntime", per_branch=True, threads=1)
    full = open_backend(SHIPPED, "onnxruntime", per_branch=True, threads=1)
    x = sample_inputs(md, n=8)[:-1]  # real frames only
    a, r = half.infer(x), full.infer(x)
    for b in range(2):
        assert np.max(np.abs(a.branches[b][0] - r.branches[b][0]) / r.branches[b][0]) <= 5e-3
        assert np.max(np.abs(a.branches[b][1] - r.branches[b][1])) <= 1e-3
    assert np.mean(np.abs(a.depth - r.depth) / r.depth > 1e-2) <= 5e-3
    # The confidence comparison runs in float32 inside the graph: ArgMax's input is float32.
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp16 / "model.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    (argmax,) = [n for n in model.graph.node if n.op_type == "ArgMax"]
    assert types[argmax.input[0]] == onnx.TensorProto.FLOAT
    assert any(t == onnx.TensorProto.FLOAT16 for t in types.values())


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", "--checkpoint", str(CKPT), "--out", str(out)]) == 2
    assert "is not empty (use --overwrite" in one_line_error(capsys)
    assert (out / "keep.txt").read_text() == "mine"

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    assert main(["export", "--checkpoint", str(text), "--out", str(tmp_path / "a")]) == 2
    # (the wording depends on how training/checkpoint.py loads: "cannot read" or, with safe loading, "refusing")
    assert re.search("(cannot read|refusing) checkpoint .*notes.pt", one_line_error(capsys))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    assert main(["export", "--checkpoint", str(other), "--out", str(tmp_path / "a")]) == 2
    assert "is not a dualdepth_ros checkpoint" in one_line_error(capsys)
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "a")]) == 2
    assert "checkpoint not found" in one_line_error(capsys)
    assert main(["export", "--checkpoint", str(CKPT), "--out", str(tmp_path / "a"), "--height", "64"]) == 2
    assert "give both --height and --width" in one_line_error(capsys)
    bad_k = ["--training-intrinsics", "1,2,3"]
    assert main(["export", "--checkpoint", str(CKPT), "--out", str(tmp_path / "a"), *bad_k]) == 2
    assert "--training-intrinsics" in one_line_error(capsys)
    if not torch.cuda.is_available():
        assert main(["export", "--checkpoint", str(CKPT), "--out", str(tmp_path / "a"), "--device", "cuda"]) == 2
        assert "PyTorch sees no CUDA device" in one_line_error(capsys)
    assert not (tmp_path / "a").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.pt", "other.pt", "out"]


def test_export_failure_is_loud_and_leaves_nothing(tmp_path, monkeypatch, loaded) -> None:
    calls = []

    def broken(*args, **kwargs):
        calls.append(kwargs.get("dynamo"))
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(ModelError, match="ONNX export failed: RuntimeError: exporter broke"):
        export_model(loaded, tmp_path / "out")
    assert calls == [True]  # one exporter, no fallback to the TorchScript one
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder


def test_a_ground_truth_depth_checkpoint_is_refused(tmp_path) -> None:
    gt = model_from_checkpoint(CKPT)
    gt.cfg.model = dataclasses.replace(gt.cfg.model, depth_source="ground_truth")  # a learning-ladder run
    with pytest.raises(DualDepthError, match="no trained depth net to export"):
        export_model(gt, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_training_intrinsics_are_recorded(loaded) -> None:
    from dualdepth_ros.inference.export import metadata_from_checkpoint

    md = metadata_from_checkpoint(
        loaded.checkpoint,
        loaded.data,
        loaded.cfg.model,
        width=160,
        height=48,
        per_branch=False,
        precision="fp32",
        training_intrinsics="80,80,79.5,23.5",
    )
    assert md.training_intrinsics == {"fx": 80.0, "fy": 80.0, "cx": 79.5, "cy": 23.5}
    assert md.training_hfov_deg == pytest.approx(90.0)  # 2·atan(80/80)
    assert md.checkpoint_step == loaded.checkpoint["step"] and md.config_hash == loaded.checkpoint["config_hash"]
    assert md.max_depth == pytest.approx(100.0) and md.min_depth == pytest.approx(1 / 10.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (export from a CUDA model)")
def test_export_from_a_cuda_model(tmp_path) -> None:
    loaded_cuda = model_from_checkpoint(CKPT, "cuda")
    md = export_model(loaded_cuda, tmp_path / "cuda", per_branch=True)
    assert next(loaded_cuda.depth_net.parameters()).is_cuda
    backend = open_backend(tmp_path / "cuda", "onnxruntime", device="cpu", per_branch=True)
    x = sample_inputs(md)
    got = backend.infer(x)
    with torch.no_grad():
        ref = loaded_cuda.depth_net(torch.from_numpy(x).cuda())
    for b in range(2):
        rd = ref[("depth", b, 0)].cpu().numpy()
        assert np.max(np.abs(got.branches[b][0] - rd) / rd) <= 1e-3  # cuDNN vs CPU kernels
