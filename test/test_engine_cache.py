"""The TensorRT engine cache without TensorRT: keys, plan/sidecar paths, and every branch of the
rebuild decision (TensorRT version, GPU / compute capability, precision, shape, ONNX hash, missing
sidecar, missing plan, unreadable sidecar, corrupt or truncated plan, force flag, rebuilding off).
"""

import dataclasses
import json
from pathlib import Path

import pytest

from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.inference import ModelError
from dualdepth_ros.inference.engine_cache import (
    SIDECAR_FORMAT,
    CachedEngine,
    EngineSpec,
    decide,
    engine_key,
    engine_paths,
    inspect_engine,
    other_sidecars,
    validate_sidecar,
    write_engine,
)

ONNX = "b75aa28611613c7fcfcc35a84cc9a4bf13224c088ade977d351a296728a99d2a"
PLAN = b"\x00plan bytes\x01" * 100
PLAN_SHA = __import__("hashlib").sha256(PLAN).hexdigest()

# The running system: TensorRT 10.3.0 on an sm_89 GPU.
SPEC = EngineSpec(
    onnx_sha256=ONNX,
    tensorrt_version="10.3.0",
    compute_capability="8.9",
    gpu_name="NVIDIA L4",
    precision="fp16",
    input_shape=(1, 3, 48, 160),
)


def sidecar(**changes) -> dict:
    """A valid sidecar of a plan built for SPEC (``changes`` override fields)."""
    data = {
        "format": SIDECAR_FORMAT,
        "key": SPEC.key,
        "tensorrt_version": SPEC.tensorrt_version,
        "gpu_name": SPEC.gpu_name,
        "compute_capability": SPEC.compute_capability,
        "precision": SPEC.precision,
        "input_shape": list(SPEC.input_shape),
        "onnx_sha256": ONNX,
        "plan_sha256": PLAN_SHA,
        "plan_bytes": len(PLAN),
    }
    data.update(changes)
    return data


def cached(side: dict | None = None, plan_sha: str | None = PLAN_SHA, error: str | None = None) -> CachedEngine:
    return CachedEngine("/m/model.x.plan", plan_sha, len(PLAN) if plan_sha else 0, side, error)


def one_line(msg: str) -> str:
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------
# Keys and paths
# ---------------------------------------------------------------------------------------
def test_key_names_every_field_and_changes_with_each() -> None:
    assert SPEC.key == "b75aa28611613c7f-trt10.3.0-sm89-fp16-1x3x48x160"
    assert SPEC.system() == "TensorRT 10.3.0 / sm_89"
    keys = {SPEC.key}
    for change in (
        {"onnx_sha256": "0" * 64},
        {"tensorrt_version": "8.6.1"},
        {"compute_capability": "8.7"},
        {"precision": "fp32"},
        {"input_shape": (1, 3, 192, 640)},
    ):
        keys.add(dataclasses.replace(SPEC, **change).key)
    assert len(keys) == 6
    # The GPU name is recorded in the sidecar but is not part of the key (same architecture, same plan).
    assert dataclasses.replace(SPEC, gpu_name="NVIDIA GeForce RTX 4090").key == SPEC.key


@pytest.mark.parametrize(
    "args, match",
    [
        (("nothex", "10.3.0", "8.9", "fp16", (1,)), "ONNX hash"),
        ((ONNX, "10.3 beta", "8.9", "fp16", (1,)), "TensorRT version"),
        ((ONNX, "10.3.0", "8/9", "fp16", (1,)), "compute capability"),
        ((ONNX, "10.3.0", "8.9", "int8", (1,)), "precision"),
    ],
)
def test_key_refuses_what_cannot_be_a_file_name(args, match) -> None:
    with pytest.raises(ModelError, match=match):
        engine_key(*args)


def test_engine_paths(tmp_path) -> None:
    key = SPEC.key
    assert engine_paths(tmp_path, key) == (tmp_path / f"model.{key}.plan", tmp_path / f"model.{key}.json")
    assert engine_paths(tmp_path, key, "") == engine_paths(tmp_path, key)
    other = tmp_path / "engines"
    other.mkdir()
    assert engine_paths(tmp_path, key, other) == (other / f"model.{key}.plan", other / f"model.{key}.json")
    assert engine_paths(tmp_path, key, f"{tmp_path}/new/")[0] == tmp_path / "new" / f"model.{key}.plan"
    assert engine_paths(tmp_path, key, tmp_path / "depth.plan") == (tmp_path / "depth.plan", tmp_path / "depth.json")
    assert engine_paths(tmp_path, key, tmp_path / "depth.engine")[1] == tmp_path / "depth.json"
    with pytest.raises(ModelError, match="names a JSON file"):
        engine_paths(tmp_path, key, tmp_path / "depth.json")


# ---------------------------------------------------------------------------------------
# The decision, branch by branch
# ---------------------------------------------------------------------------------------
def test_matching_plan_is_used() -> None:
    d = decide(cached(sidecar()), SPEC)
    assert d.action == "use" and d.mismatches == ()
    assert "matches TensorRT 10.3.0 / sm_89, fp16" in d.reason
    # Rebuilding off changes nothing for a matching plan.
    assert decide(cached(sidecar()), SPEC, allow_build=False).action == "use"


def test_another_gpu_of_the_same_architecture_is_used_and_said() -> None:
    d = decide(cached(sidecar(gpu_name="NVIDIA GeForce RTX 4090")), SPEC)
    assert d.action == "use"
    assert "built on NVIDIA GeForce RTX 4090, running on NVIDIA L4: same compute capability" in d.reason


@pytest.mark.parametrize(
    "changes, fields, phrase",
    [
        (
            {"tensorrt_version": "8.6.1", "compute_capability": "8.7"},
            ("tensorrt_version", "compute_capability"),
            "engine built with TensorRT 8.6.1 for sm_87, this system has TensorRT 10.3.0 / sm_89",
        ),
        (
            {"tensorrt_version": "8.6.1"},
            ("tensorrt_version",),
            "engine built with TensorRT 8.6.1 for sm_89, this system has TensorRT 10.3.0 / sm_89",
        ),
        (
            {"compute_capability": "8.7", "gpu_name": "Orin"},
            ("compute_capability",),
            "engine built with TensorRT 10.3.0 for sm_87, this system has TensorRT 10.3.0 / sm_89",
        ),
        ({"precision": "fp32"}, ("precision",), "engine built for fp32, fp16 is asked for"),
        (
            {"input_shape": [1, 3, 192, 640]},
            ("input_shape",),
            "engine built for input 1x3x192x640, the model takes 1x3x48x160",
        ),
        (
            {"onnx_sha256": "a" * 64},
            ("onnx_sha256",),
            "engine built from another model.onnx (SHA-256 aaaaaaaaaaaa…, this model's is b75aa2861161…)",
        ),
    ],
)
def test_each_mismatch_rebuilds_or_is_refused_by_name(changes, fields, phrase) -> None:
    side = sidecar(**changes)
    d = decide(cached(side), SPEC)
    assert d.action == "build" and d.mismatches == fields
    assert phrase in one_line(d.reason) and d.reason.endswith("building the engine")
    d = decide(cached(side), SPEC, allow_build=False)
    assert d.action == "refuse" and d.mismatches == fields
    assert phrase in one_line(d.reason) and "building is off (allow_engine_build=False)" in d.reason


def test_every_mismatch_is_named_at_once() -> None:
    side = sidecar(tensorrt_version="8.6.1", precision="fp32", input_shape=[1, 3, 96, 320])
    d = decide(cached(side), SPEC, allow_build=False)
    assert d.mismatches == ("tensorrt_version", "precision", "input_shape")
    for phrase in ("TensorRT 8.6.1 for sm_89", "built for fp32", "input 1x3x96x320"):
        assert phrase in d.reason


def test_plan_without_sidecar() -> None:
    d = decide(cached(None), SPEC)
    assert d.action == "build" and "has no sidecar (.json): what it was built for is unknown" in d.reason
    d = decide(cached(None), SPEC, allow_build=False)
    assert d.action == "refuse" and "has no sidecar" in d.reason


def test_sidecar_without_plan() -> None:
    d = decide(cached(sidecar(), plan_sha=None), SPEC)
    assert d.action == "build" and "is missing (its sidecar is there)" in d.reason
    assert decide(cached(sidecar(), plan_sha=None), SPEC, allow_build=False).action == "refuse"


def test_unreadable_sidecar() -> None:
    d = decide(cached(None, error="/m/model.x.json is not valid JSON (JSONDecodeError)"), SPEC)
    assert d.action == "build" and "sidecar of /m/model.x.plan is unreadable (/m/model.x.json is not valid" in d.reason
    d = decide(cached(None, error="bad"), SPEC, allow_build=False)
    assert d.action == "refuse"


@pytest.mark.parametrize("what", ["corrupt", "truncated"])
def test_plan_that_is_not_the_one_its_sidecar_describes(what) -> None:
    bad = PLAN[:-10] if what == "truncated" else PLAN.replace(b"plan", b"PLAN")
    digest = __import__("hashlib").sha256(bad).hexdigest()
    c = CachedEngine("/m/model.x.plan", digest, len(bad), sidecar(), None)
    d = decide(c, SPEC)
    assert d.action == "build" and "is not the plan its sidecar describes" in d.reason
    assert "corrupt or truncated" in d.reason and f"{len(bad)} bytes" in d.reason
    assert decide(c, SPEC, allow_build=False).action == "refuse"


def test_force_rebuilds_a_matching_plan_and_contradicts_rebuilding_off() -> None:
    d = decide(cached(sidecar()), SPEC, force=True)
    assert d.action == "build" and "force_engine_update is set" in d.reason
    d = decide(cached(sidecar()), SPEC, force=True, allow_build=False)
    assert d.action == "refuse" and "force_engine_update asks to rebuild" in d.reason and "building is off" in d.reason


def test_no_plan_builds_or_refuses_naming_the_engines_that_are_there() -> None:
    d = decide(cached(None, plan_sha=None), SPEC)
    assert d.action == "build" and d.reason == "no engine at /m/model.x.plan: building the engine"
    jetson = sidecar(tensorrt_version="8.6.1", compute_capability="8.7", gpu_name="Orin")
    another_model = sidecar(onnx_sha256="c" * 64)
    d = decide(cached(None, plan_sha=None), SPEC, allow_build=False, others=[jetson, another_model])
    assert d.action == "refuse"
    assert one_line(d.reason) == (
        "no engine at /m/model.x.plan for TensorRT 10.3.0 / sm_89, fp16; the folder holds engines for "
        "TensorRT 8.6.1 for sm_87 (Orin), fp16, input 1x3x48x160; building is off (allow_engine_build=False)"
    )


def test_use_requires_every_key_field() -> None:
    """No combination of a single changed key field is ever 'use' (a mismatched plan never runs)."""
    for field, value in [
        ("tensorrt_version", "10.3.1"),
        ("compute_capability", "9.0"),
        ("precision", "fp32"),
        ("input_shape", [2, 3, 48, 160]),
        ("onnx_sha256", "f" * 64),
    ]:
        for allow in (True, False):
            assert decide(cached(sidecar(**{field: value})), SPEC, allow_build=allow).action != "use", field


# ---------------------------------------------------------------------------------------
# Files: sidecars written and read back, damaged files
# ---------------------------------------------------------------------------------------
def write(tmp_path: Path, spec: EngineSpec = SPEC, plan: bytes = PLAN) -> tuple[Path, Path]:
    plan_path, side_path = engine_paths(tmp_path, spec.key)
    fields = {k: v for k, v in sidecar().items() if k not in ("format", "plan_sha256", "plan_bytes")}
    fields.update(
        key=spec.key,
        tensorrt_version=spec.tensorrt_version,
        compute_capability=spec.compute_capability,
        precision=spec.precision,
        build_seconds=1.5,
    )
    written = write_engine(plan_path, side_path, plan, fields)
    assert written["plan_sha256"] == __import__("hashlib").sha256(plan).hexdigest()
    return plan_path, side_path


def test_written_engine_reads_back_and_is_used(tmp_path) -> None:
    plan_path, side_path = write(tmp_path)
    assert plan_path.read_bytes() == PLAN
    side = json.loads(side_path.read_text())
    assert side["format"] == SIDECAR_FORMAT and side["plan_bytes"] == len(PLAN) and side["build_seconds"] == 1.5
    assert validate_sidecar(side) is None
    c = inspect_engine(plan_path, side_path)
    assert c.plan_sha256 == PLAN_SHA and c.plan_size == len(PLAN) and c.sidecar_error is None
    assert decide(c, SPEC).action == "use"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([plan_path.name, side_path.name])  # no temp files


def test_truncated_plan_on_disk_is_caught(tmp_path) -> None:
    plan_path, side_path = write(tmp_path)
    plan_path.write_bytes(PLAN[: len(PLAN) // 2])
    d = decide(inspect_engine(plan_path, side_path), SPEC, allow_build=False)
    assert d.action == "refuse" and "corrupt or truncated" in d.reason


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({**sidecar(), "format": "other/1"}), "format 'other/1'"),
        (json.dumps({k: v for k, v in sidecar().items() if k != "compute_capability"}), "missing field(s)"),
        (json.dumps(sidecar(input_shape="1x3x48x160")), "input_shape must be a list of integers"),
        (json.dumps(sidecar(tensorrt_version="")), "'tensorrt_version' must be a non-empty string"),
    ],
)
def test_damaged_sidecar_is_unreadable_not_trusted(tmp_path, text, problem) -> None:
    plan_path, side_path = write(tmp_path)
    side_path.write_text(text)
    c = inspect_engine(plan_path, side_path)
    assert c.sidecar is None and problem in c.sidecar_error
    d = decide(c, SPEC, allow_build=False)
    assert d.action == "refuse" and "unreadable" in d.reason and problem in d.reason


def test_a_new_plan_never_sits_beside_an_old_sidecar(tmp_path, monkeypatch) -> None:
    plan_path, side_path = write(tmp_path)
    from dualdepth_ros.inference import engine_cache

    real = engine_cache._atomic_write

    def fail_on_sidecar(path, data):
        if path.suffix == ".json":
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(engine_cache, "_atomic_write", fail_on_sidecar)
    with pytest.raises(ModelError, match="cannot write the engine to .*No space left on device.*set engine_path"):
        write(tmp_path, plan=PLAN + b"new")
    # The new plan is there, the old sidecar is gone: the next open sees a plan without sidecar and rebuilds.
    c = inspect_engine(plan_path, side_path)
    assert c.sidecar is None and c.sidecar_error is None and decide(c, SPEC).action == "build"


def test_unwritable_folder_is_one_line(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DualDepthError, match="cannot write the engine to .*set engine_path to a writable folder") as e:
        write_engine(blocker / "model.plan", blocker / "model.json", PLAN, sidecar())
    one_line(str(e.value))


def test_invalid_sidecar_is_not_written(tmp_path) -> None:
    with pytest.raises(ModelError, match="invalid engine sidecar: missing field"):
        write_engine(tmp_path / "a.plan", tmp_path / "a.json", PLAN, {"key": "k"})
    assert not any(tmp_path.iterdir())


def test_other_sidecars_lists_only_complete_engines(tmp_path) -> None:
    write(tmp_path)
    jetson = dataclasses.replace(SPEC, tensorrt_version="8.6.1", compute_capability="8.7")
    plan_j, side_j = write(tmp_path, jetson)
    (tmp_path / "model.orphan.json").write_text(json.dumps(sidecar()))  # no plan beside it
    (tmp_path / "model.broken.json").write_text("{")
    (tmp_path / "model.broken.plan").write_bytes(b"x")
    found = other_sidecars(tmp_path, exclude=engine_paths(tmp_path, SPEC.key)[1])
    assert [s["key"] for s in found] == [jetson.key]
    assert other_sidecars(tmp_path / "absent") == []
