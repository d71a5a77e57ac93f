"""``scripts/gpu_run.sh``: the one-command GPU run, checked on the CPU with ``--device cpu --smoke``.

The smoke run is the same script with tiny sizes (``gpu_run.SMOKE`` lists what it replaces): every stage
runs in its own process under its deadline, and its summary must be complete. It took 34-46 s here (two
shared cores, load average 3-4), which is why it is one test.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dualdepth_ros.bench import gpu_run
from dualdepth_ros.bench.gpu_run import STAGE_NAMES, STAGES, check_summary, plan_deadline
from dualdepth_ros.data.gpu_cache import build_cache

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "test" / "data" / "sample_drive"
SCRIPT = REPO / "scripts" / "gpu_run.sh"
#: The tests that run only with a GPU today (the selection must find at least these).
KNOWN_GPU_TESTS = {
    "test/test_export.py::test_export_from_a_cuda_model",
    "test/test_inference_backends.py::test_torch_cuda_fp16_compiled_close_to_fp32",
    "test/test_inference_tensorrt.py::test_real_engine_equals_onnxruntime",
}


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory) -> Path:
    """A gpu cache of the sample drive: trained on as ``sample_drive``, scored on as ``heldout`` (a link to it)."""
    root = tmp_path_factory.mktemp("gpu_run")
    old = os.environ.get("DUALDEPTH_CACHE")
    os.environ["DUALDEPTH_CACHE"] = str(root / "frames")  # this module's own frame cache (the runs inherit it)
    (root / "heldout").symlink_to(SAMPLE, target_is_directory=True)
    build_cache(root / "cache", [SAMPLE], [root / "heldout"], log=lambda _line: None)
    yield root / "cache"
    if old is None:
        os.environ.pop("DUALDEPTH_CACHE", None)
    else:
        os.environ["DUALDEPTH_CACHE"] = old


def run_script(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def test_the_cpu_smoke_run_writes_a_complete_summary(smoke_cache, tmp_path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    t0 = time.monotonic()
    proc = run_script("--out", str(out), "--device", "cpu", "--smoke", "--cache", str(smoke_cache), "--work", str(work))
    wall = time.monotonic() - t0
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert check_summary(summary) == [] and summary["complete"] and summary["status"] == "ok"
    assert [s["name"] for s in summary["stages"]] == list(STAGE_NAMES)
    assert all(s["status"] == "ok" and s["seconds"] <= s["deadline_s"] + 1 for s in summary["stages"])
    assert summary["seconds"] <= summary["budget_s"] and wall < summary["budget_s"] + 30
    assert summary["smoke"] and summary["smoke_replaces"]["train"].startswith("2 steps")
    stages = {s["name"]: s["result"] for s in summary["stages"]}

    env = stages["environment"]
    assert env["device"] == "cpu" and env["gpu"] is None and env["torch"] and env["onnxruntime"] and env["python"]
    assert env["gpu_cache"]["drives"] == {"train": ["sample_drive"], "score": ["heldout"]}

    tests = stages["cuda_tests"]
    assert KNOWN_GPU_TESTS <= set(tests["selected"])
    assert tests["skipped"] == len(tests["selected"]) and tests["passed"] == tests["failed"] == tests["errors"] == 0

    (label, size), *_ = stages["inference"]["sizes"].items()
    assert label == "160x48"
    rows = size["configs"]
    assert (
        rows["torch cpu fp32 eager"]["vs_fp32_eager"] == 1.0 and rows["torch cpu fp32 eager"]["depth_rel_diff_p99"] == 0
    )
    assert rows["onnxruntime cpu fp32"]["depth_rel_diff_p99"] < 1e-4  # the same net
    assert 0 < rows["torch cpu bf16 autocast eager"]["depth_rel_diff_p50"] < 0.1  # bf16 keeps ~3 digits
    for name in ("onnxruntime cpu fp32", "torch cpu bf16 autocast eager", "torch cpu fp16 autocast eager"):
        assert rows[name]["p50_ms"] > 0 and rows[name]["p95_ms"] >= rows[name]["p50_ms"] and rows[name]["vs_fp32_eager"]
    assert rows["torch cpu fp32 CUDA graph (eager kernels)"] == {"skipped": "CUDA graphs need CUDA"}
    assert "smoke run" in rows["torch cpu fp32 compiled (no CUDA graphs)"]["skipped"]

    bench = stages["train_bench"]["results"]
    assert [r["config"] for r in bench] == ["monodepth2", "two-branch"]
    assert all(r["clips_per_s"] > 0 and r["per_clip_mib"] > 0 and r["size"] == "96x32" for r in bench)

    train = stages["train"]
    assert train["steps"] == train["total_steps"] == 2 and train["stopped"] == "finished"

    packed = stages["pack_export"]
    parts = sorted(out / name for name in packed["out_files"])
    joined = b"".join(p.read_bytes() for p in parts)
    assert len(joined) == packed["packed_bytes"] and hashlib.sha256(joined).hexdigest() == packed["sha256"]
    assert all(p.stat().st_size <= gpu_run.PART_BYTES for p in parts)

    scored = stages["score"]["drives"]["heldout"]
    assert scored["new"]["frames"] == scored["shipped"]["frames"] == 8
    assert 0 < scored["new"]["abs_rel"] and 0 < scored["shipped"]["abs_rel"]
    assert scored["abs_rel_new_minus_shipped"] == pytest.approx(scored["new"]["abs_rel"] - scored["shipped"]["abs_rel"])

    log = (out / "gpu_run.log").read_text()
    assert all(f"{name}: ok in" in log for name in STAGE_NAMES)
    assert len(list(out.iterdir())) <= 8  # what a device call brings back: at most 8 files


def test_a_stage_past_its_deadline_is_stopped_and_the_run_goes_on(smoke_cache, tmp_path) -> None:
    out = tmp_path / "out"
    skip = ["inference", "train_bench", "train", "pack_export", "score"]
    args = ["--out", str(out), "--device", "cpu", "--smoke", "--cache", str(smoke_cache), "--work", str(tmp_path / "w")]
    proc = run_script(*args, "--stage-budget", "cuda_tests=1", "--skip", *skip, timeout=120)
    summary = json.loads((out / "summary.json").read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    assert proc.returncode == 1 and summary["status"] == "failed", proc.stdout[-2000:]
    tests = stages["cuda_tests"]
    # pytest alone needs several seconds to collect: it is stopped at 1 s plus the grace, with what it printed.
    assert tests["status"] == "timeout" and tests["deadline_s"] == pytest.approx(1.0, abs=0.2)
    assert tests["seconds"] < 5 and "stopped at its deadline" in tests["error"]
    assert stages["environment"]["status"] == "ok"
    assert all(stages[name]["status"] == "skipped" for name in skip)
    assert check_summary(summary, tuple(skip)) == []


def test_the_training_run_is_stopped_with_sigint_before_its_deadline(smoke_cache, tmp_path, monkeypatch) -> None:
    """The stop itself (the trainer saving on SIGINT is test_cli_errors' and the trainer's tests)."""
    run = tmp_path / "train"
    waited = {}

    def trainer(argv: list[str], log) -> tuple[int, str]:  # stands in for `dualdepth train`: waits for SIGINT
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        t0 = time.monotonic()
        try:
            assert stop.wait(30)
        finally:
            signal.signal(signal.SIGINT, previous)
        waited["s"], waited["argv"] = time.monotonic() - t0, argv
        run.mkdir()
        (run / "last.pt").write_bytes(b"checkpoint")
        (run / "metrics.json").write_text(json.dumps({"step": 3, "total_steps": 1500, "stopped_by_signal": 2}))
        return 130, "stopped by SIGINT before the last step"

    monkeypatch.setattr(gpu_run, "_run_cli", trainer)
    monkeypatch.setattr(gpu_run, "STOP_GRACE_S", 1.0)
    plan = {"device": "cpu", "smoke": False, "cache": str(smoke_cache), "work": str(tmp_path), "train_steps": None}
    result = gpu_run.stage_train(plan, gpu_run.Deadline(time.time() + 3.0), lambda _line: None)
    assert 1.5 < waited["s"] < 2.9  # SIGINT at the deadline minus the grace
    assert (
        result["stopped"].startswith("deadline")
        and result["steps"] == 3
        and result["checkpoint"] == str(run / "last.pt")
    )
    argv = waited["argv"]
    assert argv[argv.index("--bag") + 1] == str(smoke_cache / "train") and "--max-steps" not in argv
    assert [argv[i + 1].split("/")[-1] for i, a in enumerate(argv) if a == "--config"] == [
        "train.yaml",
        "default_model.yaml",
    ]


def test_deadlines_keep_the_budget_and_leave_the_scoring_its_time() -> None:
    end = 540.0
    smoke = False
    deadlines = []
    now = 0.0
    for i in range(len(STAGES)):  # every stage using its whole time box
        deadlines.append(plan_deadline(i, now, end, smoke))
        now = deadlines[-1]
    assert all(d <= end for d in deadlines) and deadlines[-1] == end
    named = dict(zip(STAGE_NAMES, deadlines))
    assert named["score"] - named["pack_export"] == 45 and named["pack_export"] - named["train"] == 75
    assert named["train"] - named["train_bench"] >= 60  # the training run keeps at least its minimum
    # When the early stages are quick, the training run gets the rest.
    assert plan_deadline(STAGE_NAMES.index("train"), 100.0, end, smoke) == end - 75 - 45
    # A skipped stage reserves nothing; a given budget replaces a stage's own.
    assert plan_deadline(3, 0.0, end, smoke, skipped=("train", "pack_export", "score")) == STAGES[3].budget(smoke)
    assert plan_deadline(2, 0.0, end, smoke, budgets={"inference": 20}) == 20


def test_a_broken_summary_is_reported() -> None:
    summary = {"format": "x", "device": "cpu", "smoke": True, "started": "", "finished": "", "seconds": 1}
    summary.update(budget_s=60, status="ok", stages=[{"name": "environment", "status": "ok", "seconds": 1}])
    problems = check_summary(summary)
    assert "stage environment: no 'deadline_s'" in problems
    assert (
        "stage environment: result lacks ['device', 'gpu', 'driver', 'cuda', 'torch', 'onnxruntime', 'python', 'cpu']"
        in problems
    )
    assert "stage score: missing" in problems


def test_without_a_cache_it_says_what_to_do(tmp_path) -> None:
    proc = run_script("--out", str(tmp_path / "o"), "--cache", str(tmp_path / "none"), timeout=60)
    assert proc.returncode == 2 and "make gpu-cache" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_stops_after_the_environment(smoke_cache, tmp_path) -> None:
    out = tmp_path / "out"
    args = ["--out", str(out), "--cache", str(smoke_cache), "--work", str(tmp_path / "w"), "--isolation", "exec"]
    proc = run_script(*args, timeout=120)  # each stage a fresh interpreter (the other tests: fork-server children)
    summary = json.loads((out / "summary.json").read_text())
    env, *rest = summary["stages"]
    assert proc.returncode == 1 and env["status"] == "failed" and "sees no CUDA device" in env["error"]
    assert all(s["status"] == "failed" and s["error"] == "not run: environment failed" for s in rest)
    assert check_summary(summary) == []
