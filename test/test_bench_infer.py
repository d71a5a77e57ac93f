"""``dualdepth bench infer``: the report's structure (not its speed: figures come from running the
benchmark, never from tests), interleaved timing, the ratios, the re-export at another size from
``weights.pt``, and its errors.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dualdepth_ros.bench import infer as bench
from dualdepth_ros.cli import main
from dualdepth_ros.inference import load_metadata, open_backend
from dualdepth_ros.inference.export import export_resized

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "dualdepth_default"


def test_bench_reports_every_configuration_and_the_cpu_ratio(capsys) -> None:
    rc = main(
        ["bench", "infer", "--model", str(SHIPPED), "--sizes", "model", "64x32", "--repeats", "3", "--warmup", "1"]
        + ["--threads", "1", "--json"]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batch"] == 1 and report["threads"] == 1 and report["machine"]["cores"] >= 1
    assert report["machine"]["onnxruntime"] and len(report["load_average_before"]) == 3
    assert list(report["sizes"]) == ["160x48", "64x32"]  # the model's size, then the exported one
    for size, entry in report["sizes"].items():
        configs = entry["configs"]
        assert list(configs) == list(bench.CONFIGS)  # every configuration listed, run or not
        for name in ("onnxruntime cpu fp32", "torch cpu fp32 eager"):
            r = configs[name]
            assert r["runs"] == 3 and 0 < r["p50_ms"] <= r["p95_ms"] and r["fps"] > 0, (size, name)
            assert r["device"] == "cpu" and r["precision"] == "fp32"
        if "tensorrt" not in report["machine"] or not report["machine"]["tensorrt"]:
            assert "tensorrt Python module is not importable" in configs["tensorrt fp16"]["skipped"]
        ratio = entry["ratios"]["onnxruntime vs torch eager, CPU"]
        want = configs["torch cpu fp32 eager"]["p50_ms"] / configs["onnxruntime cpu fp32"]["p50_ms"]
        assert ratio["ratio"] == pytest.approx(want, rel=1e-3) and ratio["goal"] == 1.2
        assert ratio["met"] == (ratio["ratio"] >= 1.2)


def test_table_output_and_backend_filter(capsys) -> None:
    rc = main(["bench", "infer", "--model", str(SHIPPED), "--sizes", "model", "--repeats", "2", "--warmup", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and "onnxruntime cpu fp32" in out and "load average before" in out
    rc = main(
        ["bench", "infer", "--model", str(SHIPPED), "--sizes", "model", "--repeats", "2", "--backend", "onnxruntime"]
        + ["--json", "--threads", "1"]
    )
    assert rc == 0
    configs = json.loads(capsys.readouterr().out)["sizes"]["160x48"]["configs"]
    assert list(configs) == ["onnxruntime cpu fp32", "onnxruntime cuda fp32"]


def test_runs_are_interleaved() -> None:
    calls: list[str] = []

    class Fake:
        def __init__(self, name: str) -> None:
            self.name = name

        def infer(self, x) -> None:
            calls.append(self.name)

    runs = bench.time_configs({"a": Fake("a"), "b": Fake("b")}, np.zeros(1), repeats=2, warmup=1)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert [len(v) for v in runs.values()] == [2, 2]


def test_ratios_take_tensorrt_fp16_first_then_compiled_torch() -> None:
    s = bench.summarise([0.010, 0.012, 0.011, 0.030])
    assert s["p50_ms"] == pytest.approx(11.5) and s["p95_ms"] > 25 and s["fps"] == pytest.approx(1 / 0.01575, rel=1e-3)
    results = {
        "torch cuda fp32 eager": {"p50_ms": 8.0},
        "torch cuda fp16 compiled": {"p50_ms": 2.5},
        "tensorrt fp16": {"skipped": "no TensorRT"},
    }
    r = bench.ratios(results)["fp16 vs torch fp32 eager, GPU"]
    assert r["faster"] == "torch cuda fp16 compiled" and r["ratio"] == pytest.approx(3.2) and not r["met"]
    results["tensorrt fp16"] = {"p50_ms": 1.6}
    r = bench.ratios(results)["fp16 vs torch fp32 eager, GPU"]
    assert r["faster"] == "tensorrt fp16" and r["ratio"] == pytest.approx(5.0) and r["met"]
    assert bench.ratios({"onnxruntime cpu fp32": {"p50_ms": 1.0}}) == {}  # no baseline, no ratio


def test_export_resized_keeps_the_weights(tmp_path) -> None:
    out = tmp_path / "small"
    md = export_resized(SHIPPED, out, width=64, height=32)
    src = load_metadata(SHIPPED)
    assert (md.input_width, md.input_height) == (64, 32) and load_metadata(out) == md
    assert md.weights_sha256 == src.weights_sha256 and md.per_branch == src.per_branch and md.precision == "fp32"
    assert md.onnx_sha256 != src.onnx_sha256 and md.training_intrinsics is None
    x = np.random.default_rng(1).random((1, 3, 32, 64), dtype=np.float32)
    a = open_backend(out, "onnxruntime", threads=1).infer(x)
    b = open_backend(out, "torch", device="cpu", threads=1).infer(x)
    assert a.depth.shape == (1, 1, 32, 64)
    assert np.mean(np.abs(a.depth - b.depth) / b.depth > 1e-4) < 1e-3  # the same net (ties aside)


def test_other_size_without_weights_or_checkpoint_is_one_line(tmp_path, capsys) -> None:
    d = tmp_path / "m"
    d.mkdir()
    for name in ("model.onnx", "model.json"):
        shutil.copy(SHIPPED / name, d / name)
    rc = main(["bench", "infer", "--model", str(d), "--sizes", "640x192", "--repeats", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "has no weights.pt to export 640x192 from; give --checkpoint" in err[0], err
    rc = main(["bench", "infer", "--model", str(d), "--sizes", "big"])
    assert rc == 2 and "is not WIDTHxHEIGHT" in capsys.readouterr().err
