"""The TensorRT engine cache: plan file names, sidecars, and whether a cached plan may run.

A TensorRT plan runs only on the TensorRT version and GPU architecture it was built for, and
bakes in the precision and the input shape. Each plan therefore lives beside a JSON *sidecar*
that records what it was built for, and its file name carries a key made of the same fields::

    DIR/model.<key>.plan     the serialised engine (ICudaEngine)
    DIR/model.<key>.json     its sidecar (:data:`SIDECAR_FORMAT`)

    key = <onnx sha256, 16 hex>-trt<TensorRT version>-sm<compute capability>-<precision>-<N>x<C>x<H>x<W>
    e.g.  b75aa28611613c7f-trt10.3.0-sm87-fp16-1x3x48x160

``DIR`` is the model folder, or ``engine_path`` when that names a folder; an ``engine_path``
that names a file (``…/depth.plan``) is used as the plan itself, with its sidecar beside it
(``…/depth.json``). Plans of other keys in the same folder are left alone (several systems may
share a model folder).

:func:`decide` is the whole rule, a pure function (tested without TensorRT): given what is on
disk at the plan's path (:class:`CachedEngine`), what this system needs (:class:`EngineSpec`)
and the options, it returns ``use``, ``build`` or ``refuse`` with a one-line reason:

* ``force_engine_update`` → build (refuse when building is off: the two options contradict);
* no plan, no sidecar, an unreadable sidecar, or a plan whose SHA-256 is not the sidecar's
  (corrupt, truncated, or replaced) → build, or refuse when building is off;
* a sidecar whose TensorRT version, compute capability, precision, input shape or ONNX hash
  differs from this system's → build, or refuse naming every mismatch ("engine built with
  TensorRT 8.6.1 for sm_87, this system has TensorRT 10.3.0 / sm_89");
* everything equal → use (a different GPU *name* with the same compute capability is allowed,
  as TensorRT allows it, and said in the reason).

A mismatched plan never runs: ``use`` requires every key field to be equal and the plan's bytes
to be the ones the sidecar describes. This module imports neither TensorRT nor torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .backend import ModelError
from .metadata import file_sha256

__all__ = [
    "SIDECAR_FORMAT",
    "PLAN_SUFFIX",
    "EngineSpec",
    "CachedEngine",
    "Decision",
    "engine_key",
    "engine_paths",
    "inspect_engine",
    "other_sidecars",
    "validate_sidecar",
    "describe_sidecar",
    "decide",
    "write_engine",
]

SIDECAR_FORMAT = "dualdepth_ros.engine/1"
PLAN_SUFFIX = ".plan"
_PREFIX = "model."

#: Sidecar fields that must be present (others are informative) and the key fields compared by :func:`decide`.
REQUIRED_FIELDS = (
    "format",
    "key",
    "tensorrt_version",
    "gpu_name",
    "compute_capability",
    "precision",
    "input_shape",
    "onnx_sha256",
    "plan_sha256",
)


def _sm(cc: str) -> str:
    """``"8.7"`` → ``"sm_87"``."""
    return "sm_" + str(cc).replace(".", "")


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """What this system needs of a plan.

    Attributes
    ----------
    onnx_sha256 : SHA-256 of the ``model.onnx`` the engine must come from (model.json's).
    tensorrt_version : ``tensorrt.__version__`` of the running system, e.g. ``"10.3.0"``.
    compute_capability : the GPU's ``"major.minor"``, e.g. ``"8.7"`` (Orin).
    gpu_name : the GPU's name (recorded; not part of the key).
    precision : ``"fp32"`` or ``"fp16"`` (the builder's precision).
    input_shape : the static input shape ``(N, 3, H, W)``.
    """

    onnx_sha256: str
    tensorrt_version: str
    compute_capability: str
    gpu_name: str
    precision: str
    input_shape: tuple[int, ...]

    @property
    def key(self) -> str:
        """The cache key: ONNX hash, TensorRT version, compute capability, precision, input shape."""
        return engine_key(
            self.onnx_sha256, self.tensorrt_version, self.compute_capability, self.precision, self.input_shape
        )

    def system(self) -> str:
        """``"TensorRT 10.3.0 / sm_89"``."""
        return f"TensorRT {self.tensorrt_version} / {_sm(self.compute_capability)}"


def engine_key(
    onnx_sha256: str, tensorrt_version: str, compute_capability: str, precision: str, input_shape: Sequence[int]
) -> str:
    """The cache key (module docstring); safe as part of a file name.

    Raises
    ------
    ModelError : a field that cannot be part of a key (empty, or characters outside ``[A-Za-z0-9._]``).
    """
    if not re.fullmatch(r"[0-9a-f]{16,64}", onnx_sha256 or ""):
        raise ModelError(f"engine key: the ONNX hash must be hex SHA-256, got {onnx_sha256!r}")
    for name, value in (("TensorRT version", tensorrt_version), ("compute capability", compute_capability)):
        if not re.fullmatch(r"[0-9A-Za-z._]+", str(value or "")):
            raise ModelError(f"engine key: the {name} {value!r} cannot be part of a file name")
    if precision not in ("fp32", "fp16"):
        raise ModelError(f"engine key: precision must be fp32 or fp16, got {precision!r}")
    cc = str(compute_capability).replace(".", "")
    return f"{onnx_sha256[:16]}-trt{tensorrt_version}-sm{cc}-{precision}-{_shape_text(input_shape)}"


def engine_paths(
    model_dir: str | os.PathLike, key: str, engine_path: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """``(plan, sidecar)`` paths for ``key``.

    ``engine_path`` None or ``""``: ``model_dir/model.<key>.plan``; a folder (existing, or
    written with a trailing ``/``): the same name in that folder; otherwise the plan file
    itself, with the sidecar beside it (its suffix replaced by ``.json``).
    """
    if engine_path is None or str(engine_path) == "":
        folder = Path(model_dir)
    elif Path(engine_path).is_dir() or str(engine_path).endswith(("/", os.sep)):
        folder = Path(engine_path)
    else:
        plan = Path(engine_path)
        if plan.suffix == ".json":
            raise ModelError(f"engine_path {plan} names a JSON file; give the plan's path (or a folder)")
        return plan, plan.with_suffix(".json")
    return folder / f"{_PREFIX}{key}{PLAN_SUFFIX}", folder / f"{_PREFIX}{key}.json"


@dataclasses.dataclass(frozen=True)
class CachedEngine:
    """What is on disk at a plan's path (:func:`inspect_engine`).

    Attributes
    ----------
    plan_path : the plan's path.
    plan_sha256 : SHA-256 of the plan's bytes; None when there is no plan file.
    plan_size : its size in bytes (0 when absent).
    sidecar : the parsed sidecar; None when absent or unreadable.
    sidecar_error : why the sidecar could not be read (None when it could, or is absent).
    """

    plan_path: str
    plan_sha256: str | None
    plan_size: int = 0
    sidecar: Mapping[str, Any] | None = None
    sidecar_error: str | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do with the cached plan.

    Attributes
    ----------
    action : ``"use"`` (run the plan), ``"build"`` (build it, then run it) or ``"refuse"``
        (raise :class:`ModelError` with ``reason``).
    reason : one line saying why.
    mismatches : the key fields whose values differ (``tensorrt_version``, ``compute_capability``,
        ``precision``, ``input_shape``, ``onnx_sha256``), for a plan built for something else.
    """

    action: str
    reason: str
    mismatches: tuple[str, ...] = ()


def validate_sidecar(data: Any) -> str | None:
    """None when ``data`` is a usable sidecar, else what is wrong with it (one phrase)."""
    if not isinstance(data, Mapping):
        return f"not a JSON object ({type(data).__name__})"
    if data.get("format") != SIDECAR_FORMAT:
        return f"format {data.get('format')!r}, expected {SIDECAR_FORMAT!r}"
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    shape = data["input_shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        return f"input_shape must be a list of integers, got {shape!r}"
    for k in ("key", "tensorrt_version", "gpu_name", "compute_capability", "precision", "onnx_sha256", "plan_sha256"):
        if not isinstance(data[k], str) or not data[k]:
            return f"field {k!r} must be a non-empty string, got {data[k]!r}"
    return None


def describe_sidecar(data: Mapping[str, Any]) -> str:
    """``"TensorRT 8.6.1 for sm_87 (Orin), fp16, input 1x3x48x160"``."""
    return (
        f"TensorRT {data.get('tensorrt_version')} for {_sm(str(data.get('compute_capability')))} "
        f"({data.get('gpu_name')}), {data.get('precision')}, input {_shape_text(data.get('input_shape') or [])}"
    )


def inspect_engine(plan_path: str | os.PathLike, sidecar_path: str | os.PathLike) -> CachedEngine:
    """Read what is on disk at ``plan_path`` / ``sidecar_path`` (the plan is hashed, not loaded)."""
    plan, side = Path(plan_path), Path(sidecar_path)
    digest, size = None, 0
    if plan.is_file():
        digest, size = file_sha256(plan), plan.stat().st_size
    sidecar, error = None, None
    if side.is_file():
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            error = f"{side} is not valid JSON ({type(err).__name__})"
        else:
            problem = validate_sidecar(data)
            if problem is None:
                sidecar = data
            else:
                error = f"{side}: {problem}"
    elif side.exists():
        error = f"{side} is not a file"
    return CachedEngine(str(plan), digest, size, sidecar, error)


def other_sidecars(folder: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The valid sidecars of the other plans (``model.*.json`` with their ``.plan``) in ``folder``."""
    out = []
    folder = Path(folder)
    if not folder.is_dir():
        return out
    for side in sorted(folder.glob(f"{_PREFIX}*.json")):
        if exclude is not None and side == Path(exclude):
            continue
        if not side.with_suffix(PLAN_SUFFIX).is_file():
            continue
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if validate_sidecar(data) is None:
            out.append(data)
    return out


def _mismatches(sidecar: Mapping[str, Any], spec: EngineSpec) -> list[tuple[str, str]]:
    """(field, phrase) for every key field of ``sidecar`` that differs from ``spec``."""
    out = []
    built_sys = f"TensorRT {sidecar['tensorrt_version']} for {_sm(sidecar['compute_capability'])}"
    if sidecar["tensorrt_version"] != spec.tensorrt_version or sidecar["compute_capability"] != spec.compute_capability:
        phrase = f"engine built with {built_sys}, this system has {spec.system()}"
        if sidecar["tensorrt_version"] != spec.tensorrt_version:
            out.append(("tensorrt_version", phrase))
        if sidecar["compute_capability"] != spec.compute_capability:
            out.append(("compute_capability", phrase))
    if sidecar["precision"] != spec.precision:
        out.append(("precision", f"engine built for {sidecar['precision']}, {spec.precision} is asked for"))
    if list(sidecar["input_shape"]) != list(spec.input_shape):
        out.append(
            (
                "input_shape",
                f"engine built for input {_shape_text(sidecar['input_shape'])}, "
                f"the model takes {_shape_text(spec.input_shape)}",
            )
        )
    if sidecar["onnx_sha256"] != spec.onnx_sha256:
        out.append(
            (
                "onnx_sha256",
                f"engine built from another model.onnx (SHA-256 {sidecar['onnx_sha256'][:12]}…, "
                f"this model's is {spec.onnx_sha256[:12]}…)",
            )
        )
    return out


def decide(
    cached: CachedEngine,
    spec: EngineSpec,
    *,
    force: bool = False,
    allow_build: bool = True,
    others: Iterable[Mapping[str, Any]] = (),
) -> Decision:
    """Whether the plan at ``cached.plan_path`` may run on this system (module docstring).

    Parameters
    ----------
    cached : what is on disk (:func:`inspect_engine`).
    spec : what this system and model need.
    force : ``force_engine_update``: build even when the plan matches.
    allow_build : ``allow_engine_build``: False turns every ``build`` into ``refuse``.
    others : sidecars of other plans in the same folder, named in the reason when there is no
        plan for this key (so that the user learns why those do not fit).
    """
    plan = cached.plan_path
    off = "building is off (allow_engine_build=False)"

    def build_or_refuse(why: str, mismatches: Sequence[str] = ()) -> Decision:
        if allow_build:
            return Decision("build", f"{why}: building the engine", tuple(mismatches))
        return Decision("refuse", f"{why}; {off}", tuple(mismatches))

    if force:
        if not allow_build:
            return Decision("refuse", f"force_engine_update asks to rebuild {plan}, but {off}")
        return Decision("build", f"force_engine_update is set: rebuilding {plan}")
    if cached.plan_sha256 is None:
        if cached.sidecar is not None or cached.sidecar_error is not None:
            return build_or_refuse(f"{plan} is missing (its sidecar is there)")
        why = f"no engine at {plan}"
        near = [describe_sidecar(o) for o in others if o.get("onnx_sha256") == spec.onnx_sha256]
        if near:
            why += f" for {spec.system()}, {spec.precision}; the folder holds engines for " + "; ".join(near)
        return build_or_refuse(why)
    if cached.sidecar_error is not None:
        return build_or_refuse(f"the sidecar of {plan} is unreadable ({cached.sidecar_error})")
    if cached.sidecar is None:
        return build_or_refuse(f"{plan} has no sidecar (.json): what it was built for is unknown")
    sidecar = cached.sidecar
    if cached.plan_sha256 != sidecar["plan_sha256"]:
        return build_or_refuse(
            f"{plan} is not the plan its sidecar describes ({cached.plan_size} bytes, SHA-256 "
            f"{cached.plan_sha256[:12]}…, sidecar records {sidecar['plan_sha256'][:12]}…): corrupt or truncated"
        )
    found = _mismatches(sidecar, spec)
    if found:
        phrases = list(dict.fromkeys(p for _, p in found))  # TensorRT + GPU share one phrase
        return build_or_refuse(f"{plan}: " + "; ".join(phrases), [f for f, _ in found])
    note = ""
    if sidecar["gpu_name"] != spec.gpu_name:
        note = f" (built on {sidecar['gpu_name']}, running on {spec.gpu_name}: same compute capability)"
    return Decision("use", f"cached engine {plan} matches {spec.system()}, {spec.precision}{note}")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_engine(
    plan_path: str | os.PathLike, sidecar_path: str | os.PathLike, plan: bytes, sidecar: Mapping[str, Any]
) -> dict[str, Any]:
    """Write a plan and its sidecar atomically (plan first: a crash leaves no sidecar, so a rebuild).

    ``sidecar`` gets ``format``, ``plan_sha256`` and ``plan_bytes`` added; the written dict is returned.

    Raises
    ------
    ModelError : the folder is not writable (the message suggests ``engine_path``).
    """
    import hashlib

    plan_path, sidecar_path = Path(plan_path), Path(sidecar_path)
    data = {"format": SIDECAR_FORMAT, **dict(sidecar)}
    data["plan_sha256"] = hashlib.sha256(plan).hexdigest()
    data["plan_bytes"] = len(plan)
    problem = validate_sidecar(data)
    if problem is not None:
        raise ModelError(f"refusing to write an invalid engine sidecar: {problem}")
    try:
        sidecar_path.unlink(missing_ok=True)  # never a new plan beside an old sidecar
        _atomic_write(plan_path, bytes(plan))
        _atomic_write(sidecar_path, (json.dumps(data, indent=2) + "\n").encode())
    except OSError as err:
        raise ModelError(
            f"cannot write the engine to {plan_path.parent} ({err.strerror or err}); "
            "set engine_path to a writable folder"
        ) from None
    return data
