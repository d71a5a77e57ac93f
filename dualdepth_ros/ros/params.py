"""The node's parameters: names, defaults, descriptions, validation (no ROS imports).

``config/depth.yaml`` mirrors :data:`PARAMETERS` (a test keeps them equal) and ``dualdepth
infer`` takes its defaults from here too, so the node and the offline path process a frame the
same way unless told otherwise.

Parameters marked ``runtime`` can be changed while the node runs (``ros2 param set``); the
others are read once at start (the node declares them read-only).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import DualDepthError
from .scale import SCALE_MODES, ScaleSettings

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "DEVICES",
    "TRANSPORTS",
    "RELIABILITIES",
    "Param",
    "PARAMETERS",
    "DEFAULTS",
    "OutputSettings",
    "ParameterError",
    "validate",
    "output_settings",
    "scale_settings",
    "load_params_file",
    "default_model_dir",
]

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16")
DEVICES = ("auto", "cpu", "cuda")
TRANSPORTS = ("raw", "compressed")
RELIABILITIES = ("best_effort", "reliable", "system_default")
DURABILITIES = ("volatile", "transient_local", "system_default")


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class ParameterError(DualDepthError):
    """A parameter value the node cannot use (the message names the parameter and the rule)."""


@dataclasses.dataclass(frozen=True)
class Param:
    """One ROS parameter of the node.

    Attributes
    ----------
    name, default, description : as declared (the default's type is the parameter's type).
    runtime : may change while the node runs.
    choices : allowed values of a string parameter.
    low, high : inclusive range of a number parameter (None: unbounded).
    """

    name: str
    default: Any
    description: str
    runtime: bool = False
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None

    def check(self, value: Any) -> str | None:
        """The reason ``value`` is invalid, or None."""
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{self.name} must be {_KIND_NAMES[kind]}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}"
        if kind in (int, float):
            if kind is float and not math.isfinite(value) and not (self.high is None and value == math.inf):
                return f"{self.name} must be a finite number, got {value!r}"
            if self.low is not None and value < self.low:
                return f"{self.name} must be at least {self.low}, got {value!r}"
            if self.high is not None and value > self.high:
                return f"{self.name} must be at most {self.high}, got {value!r}"
        return None


PARAMETERS: tuple[Param, ...] = (
    # -- model and backend (start only) -------------------------------------------------
    Param("model_path", "", "model folder (model.onnx + model.json); empty = the package's models/dualdepth_default"),
    Param("engine_path", "", "TensorRT engine file or folder; empty = cached inside the model folder"),
    Param(
        "backend", "auto", "inference backend (auto picks TensorRT, then ONNX Runtime, then PyTorch)", choices=BACKENDS
    ),
    Param("precision", "fp32", "inference precision (fp16 only where the device supports it)", choices=PRECISIONS),
    Param("device", "auto", "where the backend runs", choices=DEVICES),
    Param("threads", 0, "CPU threads of the backend (0 = the library's default)", low=0, high=256),
    Param("force_engine_update", False, "rebuild the TensorRT engine even if a matching cached one exists"),
    # -- input (start only) -------------------------------------------------------------
    Param("image_transport", "raw", "subscribe to 'image' (raw) or 'image/compressed'", choices=TRANSPORTS),
    Param(
        "max_image_pixels",
        16_777_216,
        "reject input images with more pixels than this (4096×4096 by default)",
        low=1,
        high=2**31 - 1,
    ),
    # -- outputs (runtime) ---------------------------------------------------------------
    Param("min_depth", 0.1, "published depth below this (after scaling) becomes NaN", runtime=True, low=0.0),
    Param("max_depth", 80.0, "published depth above this (after scaling) becomes NaN", runtime=True, low=0.0),
    Param(
        "confidence_threshold",
        0.0,
        "depth where the confidence is below this becomes NaN (0 disables)",
        runtime=True,
        low=0.0,
        high=1.0,
    ),
    # -- scale (runtime) -----------------------------------------------------------------
    Param(
        "scale_mode", "camera_height", "none (model units), fixed, or camera_height", runtime=True, choices=SCALE_MODES
    ),
    Param("fixed_scale", 1.0, "depth factor of scale_mode fixed", runtime=True, low=1e-9),
    Param(
        "camera_height_m",
        1.5,
        "camera height above the road, metres (scale_mode camera_height)",
        runtime=True,
        low=1e-3,
    ),
    Param(
        "scale_smoothing",
        0.2,
        "weight of a new frame in the scale's moving average (1 = none)",
        runtime=True,
        low=1e-3,
        high=1.0,
    ),
    Param(
        "scale_gate",
        1.5,
        "a frame's scale further than this factor from the average is an outlier",
        runtime=True,
        low=1.001,
    ),
    Param(
        "scale_region", 0.4, "lower fraction of the image searched for the road plane", runtime=True, low=0.05, high=1.0
    ),
    # -- QoS (start only) ----------------------------------------------------------------
    Param("qos_input_reliability", "best_effort", "image and camera_info subscriptions", choices=RELIABILITIES),
    Param(
        "qos_input_depth",
        1,
        "image and camera_info subscription queue depth (1: only the newest frame waits for the callback)",
        low=1,
        high=1000,
    ),
    Param("qos_output_reliability", "reliable", "depth, confidence, camera_info publishers", choices=RELIABILITIES),
    Param("qos_output_durability", "volatile", "depth, confidence, camera_info publishers", choices=DURABILITIES),
    Param("qos_output_depth", 5, "publisher queue depth", low=1, high=1000),
    # -- diagnostics (start only) --------------------------------------------------------
    Param("diagnostics_period_s", 1.0, "period of /diagnostics", low=0.05, high=60.0),
    Param("error_log_period_s", 5.0, "the same error is logged at most once per this period", low=0.0, high=3600.0),
)

#: name → default.
DEFAULTS: dict[str, Any] = {p.name: p.default for p in PARAMETERS}
_BY_NAME = {p.name: p for p in PARAMETERS}


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """Which published depth pixels are valid (the runtime-changeable output parameters).

    Depth (after scaling) outside ``[min_depth, max_depth]`` or where the confidence is below
    ``confidence_threshold`` (when > 0) is published as NaN.
    """

    min_depth: float = DEFAULTS["min_depth"]
    max_depth: float = DEFAULTS["max_depth"]
    confidence_threshold: float = DEFAULTS["confidence_threshold"]

    def __post_init__(self) -> None:
        if not (self.min_depth >= 0 and self.max_depth > self.min_depth):
            raise ParameterError(
                f"need 0 <= min_depth < max_depth, got min_depth={self.min_depth}, max_depth={self.max_depth}"
            )
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ParameterError(f"confidence_threshold must be in [0, 1], got {self.confidence_threshold}")


def validate(values: Mapping[str, Any]) -> list[str]:
    """Every problem of a full or partial parameter set (one readable line each)."""
    problems = []
    for name, value in values.items():
        p = _BY_NAME.get(name)
        if p is None:
            continue  # ROS-level parameters (use_sim_time …) are not ours to judge
        reason = p.check(value)
        if reason:
            problems.append(reason)
    if problems:
        return problems
    merged = {**DEFAULTS, **values}
    try:
        output_settings(merged)
        scale_settings(merged)
    except DualDepthError as err:
        problems.append(str(err))
    return problems


def output_settings(values: Mapping[str, Any]) -> OutputSettings:
    """:class:`OutputSettings` from parameter values (missing names take the defaults)."""
    v = {**DEFAULTS, **values}
    return OutputSettings(float(v["min_depth"]), float(v["max_depth"]), float(v["confidence_threshold"]))


def scale_settings(values: Mapping[str, Any]) -> ScaleSettings:
    """:class:`~dualdepth_ros.ros.scale.ScaleSettings` from parameter values (defaults for missing names)."""
    v = {**DEFAULTS, **values}
    return ScaleSettings(
        mode=str(v["scale_mode"]),
        fixed_scale=float(v["fixed_scale"]),
        camera_height_m=float(v["camera_height_m"]),
        smoothing=float(v["scale_smoothing"]),
        gate=float(v["scale_gate"]),
        region=float(v["scale_region"]),
    )


def load_params_file(path: str | Path, node_name: str = "depth_node") -> dict[str, Any]:
    """The ``ros__parameters`` of ``node_name`` (or ``/**``) in a ROS 2 parameters YAML file.

    Raises
    ------
    ParameterError : unreadable file, no section for the node, unknown or invalid parameters.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ParameterError(f"cannot read parameters file {path}: {err}") from None
    section = None
    for key in (node_name, "/" + node_name, "/**"):
        if isinstance(data, dict) and isinstance(data.get(key), dict) and "ros__parameters" in data[key]:
            section = data[key]["ros__parameters"] or {}
            break
    if section is None:
        raise ParameterError(f"parameters file {path} has no '{node_name}: ros__parameters:' section")
    unknown = sorted(set(section) - set(_BY_NAME) - {"use_sim_time"})
    if unknown:
        raise ParameterError(f"parameters file {path}: unknown parameter(s) {', '.join(unknown)}")
    section = {k: v for k, v in section.items() if k in _BY_NAME}
    problems = validate(section)
    if problems:
        raise ParameterError(f"parameters file {path}: " + "; ".join(problems))
    return section


def default_model_dir() -> Path:
    """The shipped default model folder.

    From a source checkout (this file under ``<repo>/dualdepth_ros/ros/``): ``<repo>/models/
    dualdepth_default``. Installed (colcon): ``share/dualdepth_ros/models/dualdepth_default``
    found through the ament index. A source checkout whose folder is not derived yet but holds
    ``models/dualdepth_default.pt`` gets the source path (the folder is exported from it at first
    use). Returns the source path when neither exists, so the error that follows names a real candidate.
    """
    source = Path(__file__).resolve().parents[2] / "models" / "dualdepth_default"
    if source.is_dir() or source.with_name(source.name + ".pt").is_file():  # the folder, or its checkpoint
        return source
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return source
    try:
        share = Path(get_package_share_directory("dualdepth_ros")) / "models" / "dualdepth_default"
    except (PackageNotFoundError, ValueError, LookupError, OSError):
        return source
    return share if share.is_dir() else source
