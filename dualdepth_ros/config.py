"""Training configuration: typed dataclasses loaded from stackable YAML files.

``config/train.yaml`` is the documented default; small YAML files override it::

    cfg = load_config("config/train.yaml", "config/ablations/no_occlusion.yaml",
                      overrides=["loss.temporal.enabled=false", "optim.batch_size=4"])

Stacking rules (monodepth_benchmark / packnet style)
----------------------------------------------------
* Files are merged left to right, mappings recursively; a later value replaces an earlier one
  (lists are replaced whole, not merged).
* A file may name its parent with a top-level ``base:`` key (a path relative to that file, or a
  list of them); the parent is loaded first. ``config/ablations/*.yaml`` use ``base: ../train.yaml``
  so ``load_config("config/ablations/monodepth2.yaml")`` alone gives the full configuration.
* ``overrides`` are ``dotted.key=value`` strings; the value is parsed as YAML (``true``, ``1e-3``,
  ``[0, 1]``), applied after all files.
* Keys are checked: an unknown key inside a known section is an error (it is almost always a
  typo), as is a value of the wrong type. Unknown *top-level* sections are kept untyped in
  :attr:`Config.extra` so another module (e.g. the trainer) can own a section; it can also make it
  typed with :func:`register_section`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from .errors import DualDepthError

_T = TypeVar("_T")

__all__ = [
    "ConfigError",
    "InputConfig",
    "ModelConfig",
    "PoseConfig",
    "PhotometricConfig",
    "OcclusionConfig",
    "StructureConfig",
    "FeatureMetricConfig",
    "TemporalConfig",
    "SmoothnessConfig",
    "TwoBranchConfig",
    "ConfidenceConfig",
    "PosePriorConfig",
    "ScaleAnchorConfig",
    "LossConfig",
    "OptimConfig",
    "Config",
    "CONFIG_DIR",
    "DEFAULT_CONFIG",
    "resolve_config",
    "register_section",
    "coerce_section",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "config_hash",
    "save_config",
    "merge_dicts",
    "apply_override",
]


def _find_config_dir() -> Path:
    """``config/`` of the source tree, else the installed ``share/dualdepth_ros/config``."""
    import sys

    candidates = [Path(__file__).resolve().parents[1] / "config"]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("dualdepth_ros")) / "config")
    except Exception:  # noqa: BLE001 - no ament index (plain venv) or package not installed
        pass
    candidates.append(Path(sys.prefix) / "share" / "dualdepth_ros" / "config")
    for c in candidates:
        if (c / "train.yaml").exists():
            return c
    return candidates[0]


#: Folder of the shipped YAML files: ``config/`` of the source tree, or the installed share folder.
CONFIG_DIR = _find_config_dir()
#: ``config/train.yaml``: the documented default (the full two-branch method).
DEFAULT_CONFIG = CONFIG_DIR / "train.yaml"


class ConfigError(DualDepthError, ValueError):
    """A configuration file or override that does not fit the schema."""


# ---------------------------------------------------------------------------------------
# Schema (defaults equal config/train.yaml; the YAML documents each value's source)
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class InputConfig:
    height: int = 192
    width: int = 640


@dataclasses.dataclass
class ModelConfig:
    encoder: str = "resnet18"
    encoder_width: int = 64
    num_branches: int = 2
    predict_confidence: bool = True
    decoder_channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 64, 128, 128])
    decoder_padding: Literal["zeros", "reflect"] = "zeros"
    scales: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2, 3])
    disp_scale: float = 10.0
    disp_offset: float = 0.01
    depth_source: Literal["network", "ground_truth"] = "network"
    reference_gradients: bool = True


@dataclasses.dataclass
class PoseConfig:
    source: Literal["network", "topic"] = "network"
    mode: Literal["pairs", "clip"] = "pairs"
    encoder: str = "resnet18"
    encoder_width: int = 64
    output_scale: float = 0.01
    camera_in_body: list[float] | None = None
    topic_scale: float = 0.0333


@dataclasses.dataclass
class PhotometricConfig:
    weight: float = 1.0
    alpha: float = 0.85
    rho: Literal["l1", "erf"] = "erf"
    erf_eps: float = 0.01
    ssim_c1: float = 0.0001
    ssim_c2: float = 0.0009
    reprojection: Literal["min", "mean"] = "min"
    automask: bool = True
    automask_noise: float = 1e-5
    automask_scope: Literal["photometric", "all"] = "photometric"
    bidirectional: bool = True
    checkpoint: bool = True


@dataclasses.dataclass
class OcclusionConfig:
    enabled: bool = True
    alpha1: float = 0.01
    alpha2: float = 0.5


@dataclasses.dataclass
class StructureConfig:
    enabled: bool = True
    weight: float = 0.5
    erf_eps: float = 0.01
    weight_photometric: bool = True
    detach_weight: bool = True


@dataclasses.dataclass
class FeatureMetricConfig:
    enabled: bool = True
    weight: float = 0.05
    detach_features: bool = True


@dataclasses.dataclass
class TemporalConfig:
    enabled: bool = True
    weight: float = 0.1
    max_depth_diff: float = 0.15
    si_lambda: float = 1.0


@dataclasses.dataclass
class SmoothnessConfig:
    weight: float = 0.001
    target: Literal["fused", "branches"] = "fused"
    feature_weight: float = 0.001


@dataclasses.dataclass
class TwoBranchConfig:
    enabled: bool = True
    min_weight: float = 1.0
    difference_weight: float = 1.0
    difference_loss: Literal["first_difference", "mean"] = "first_difference"
    gate: bool = True
    gate_threshold: float = 0.07
    scales: list[int] = dataclasses.field(default_factory=lambda: [0])


@dataclasses.dataclass
class PosePriorConfig:
    enabled: bool = True
    weight: float = 0.1


@dataclasses.dataclass
class ScaleAnchorConfig:
    enabled: bool = True
    weight: float = 0.1
    translation: float = 0.03


@dataclasses.dataclass
class ConfidenceConfig:
    selection_weight: float = 0.1
    selection_tau: float = 0.01
    selection_pool: int = 1
    calibration_weight: float = 0.1
    calibration_tau: float = 0.1


@dataclasses.dataclass
class RoadFloorConfig:
    enabled: bool = False
    weight: float = 0.1
    margin: float = 0.1
    region: float = 0.4
    max_tilt_deg: float = 20.0


@dataclasses.dataclass
class LossConfig:
    photometric: PhotometricConfig = dataclasses.field(default_factory=PhotometricConfig)
    smoothness: SmoothnessConfig = dataclasses.field(default_factory=SmoothnessConfig)
    occlusion: OcclusionConfig = dataclasses.field(default_factory=OcclusionConfig)
    structure: StructureConfig = dataclasses.field(default_factory=StructureConfig)
    featuremetric: FeatureMetricConfig = dataclasses.field(default_factory=FeatureMetricConfig)
    temporal: TemporalConfig = dataclasses.field(default_factory=TemporalConfig)
    two_branch: TwoBranchConfig = dataclasses.field(default_factory=TwoBranchConfig)
    confidence: ConfidenceConfig = dataclasses.field(default_factory=ConfidenceConfig)
    pose_prior: PosePriorConfig = dataclasses.field(default_factory=PosePriorConfig)
    scale_anchor: ScaleAnchorConfig = dataclasses.field(default_factory=ScaleAnchorConfig)
    road_floor: RoadFloorConfig = dataclasses.field(default_factory=RoadFloorConfig)


@dataclasses.dataclass
class OptimConfig:
    optimizer: Literal["adamw", "adam"] = "adamw"
    learning_rate: float = 0.0001
    weight_decay: float = 0.01
    batch_size: int = 12
    epochs: int = 20
    lr_step_epochs: int = 15
    lr_gamma: float = 0.1
    seed: int = 0


@dataclasses.dataclass
class Config:
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    pose: PoseConfig = dataclasses.field(default_factory=PoseConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    #: Top-level sections this schema does not know (kept as plain dicts), plus registered ones.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def two_branch(self) -> bool:
        return self.loss.two_branch.enabled

    def validate(self) -> Config:
        """Cross-field checks; raises :class:`ConfigError`."""
        m, lt = self.model, self.loss
        from .networks import ENCODER_BLOCKS  # local: keep `import config` light

        for name, enc in (("model.encoder", m.encoder), ("pose.encoder", self.pose.encoder)):
            if enc not in ENCODER_BLOCKS:
                raise ConfigError(f"{name}: unknown encoder {enc!r}; choose one of {sorted(ENCODER_BLOCKS)}")
        if m.num_branches not in (1, 2):
            raise ConfigError(f"model.num_branches must be 1 or 2, got {m.num_branches}")
        if m.num_branches > 1 and not m.predict_confidence:
            raise ConfigError("model.num_branches: 2 needs model.predict_confidence: true (fusion uses it)")
        if lt.two_branch.enabled and m.num_branches != 2:
            raise ConfigError("loss.two_branch.enabled needs model.num_branches: 2")
        if not lt.two_branch.enabled and m.num_branches != 1:
            raise ConfigError("model.num_branches: 2 needs loss.two_branch.enabled (nothing else trains branch 2)")
        if sorted(set(m.scales)) != sorted(m.scales) or not m.scales or min(m.scales) != 0 or max(m.scales) > 4:
            raise ConfigError(f"model.scales must be distinct values in 0..4 including 0, got {m.scales}")
        if lt.two_branch.enabled and (0 not in lt.two_branch.scales or not set(lt.two_branch.scales) <= set(m.scales)):
            raise ConfigError(
                f"loss.two_branch.scales must include 0 and be among model.scales {m.scales}, "
                f"got {lt.two_branch.scales}"
            )
        if len(m.decoder_channels) != 5:
            raise ConfigError("model.decoder_channels needs 5 values")
        if not 0.0 <= lt.photometric.alpha <= 1.0:
            raise ConfigError("loss.photometric.alpha must be in [0, 1]")
        if self.input.height < 32 or self.input.width < 32:
            raise ConfigError("input size must be at least 32×32")
        if m.depth_source == "ground_truth":
            needs_features = [
                name
                for name, on in (
                    ("loss.two_branch.enabled", lt.two_branch.enabled),
                    ("loss.featuremetric.enabled", lt.featuremetric.enabled),
                    ("loss.smoothness.feature_weight > 0", lt.smoothness.feature_weight > 0),
                )
                if on
            ]
            if needs_features:
                raise ConfigError(
                    "model.depth_source: ground_truth replaces the depth network (it trains the PoseNet alone); "
                    f"switch off what needs the network: {', '.join(needs_features)}"
                )
            if self.pose.source != "network":
                raise ConfigError("model.depth_source: ground_truth with pose.source: topic leaves nothing to train")
        extr = self.pose.camera_in_body
        if extr is not None and len(extr) != 7:
            raise ConfigError(f"pose.camera_in_body must be [x, y, z, qx, qy, qz, qw], got {extr}")
        pool = self.loss.confidence.selection_pool
        if pool < 1 or pool % 2 == 0:
            raise ConfigError(f"loss.confidence.selection_pool must be an odd window size >= 1, got {pool}")
        self._validate_optim()
        for section in self.extra.values():
            if hasattr(section, "validate"):  # a registered section checks its own values
                section.validate()
        return self

    def _validate_optim(self) -> None:
        """The optimiser's values: a step must be able to run and to change the weights."""
        o = self.optim
        if o.batch_size < 1:
            raise ConfigError(f"optim.batch_size must be at least 1 clip, got {o.batch_size} (e.g. --batch-size 4)")
        if not o.learning_rate > 0:
            raise ConfigError(f"optim.learning_rate must be a positive number, got {o.learning_rate} (e.g. 1e-4)")
        if o.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be 0 or more, got {o.weight_decay}")
        if o.epochs < 1:
            raise ConfigError(f"optim.epochs must be at least 1, got {o.epochs}")
        if o.lr_step_epochs < 0:
            raise ConfigError(f"optim.lr_step_epochs must be 0 or more, got {o.lr_step_epochs}")
        if not o.lr_gamma > 0:
            raise ConfigError(f"optim.lr_gamma must be a positive factor, got {o.lr_gamma}")
        if o.seed < 0:
            raise ConfigError(f"optim.seed must be 0 or more, got {o.seed}")


_SECTIONS: dict[str, type] = {}


def coerce_section(cls: type[_T], value: Any, name: str) -> _T:
    """An instance of section dataclass ``cls`` from itself, a mapping or None (the defaults).

    Unknown keys are an error naming the section (``name``) and listing the known keys.
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {unknown}; known: {sorted(names)}")
    return cls(**value)


def register_section(name: str, cls: type) -> None:
    """Make top-level section ``name`` typed by dataclass ``cls`` (found in ``Config.extra[name]``).

    If ``cls`` has a ``validate()`` method, :meth:`Config.validate` calls it (it raises
    :class:`ConfigError` for a value out of range).
    """
    if name in {f.name for f in dataclasses.fields(Config)}:
        raise ValueError(f"section {name!r} is part of the core schema")
    _SECTIONS[name] = cls


# ---------------------------------------------------------------------------------------
# Dict ↔ dataclass with type checks
# ---------------------------------------------------------------------------------------
def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)[:1]
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # PyYAML reads "1e-3" (no dot) as a string; accept it if it parses.
            number = None
            if isinstance(value, str):
                try:
                    number = float(value)
                except ValueError:
                    pass
            if number is None:
                raise ConfigError(f"{where}: expected a number, got {value!r}")
            value = number
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """A validated :class:`Config` from a (merged) mapping; missing keys take the schema defaults."""
    data = dict(data or {})
    data.pop("base", None)
    core = {f.name for f in dataclasses.fields(Config)} - {"extra"}
    extra = {k: data.pop(k) for k in list(data) if k not in core}
    cfg = _build(Config, data, "")
    for name, value in extra.items():
        cfg.extra[name] = _coerce(value, _SECTIONS[name], name) if name in _SECTIONS else value
    return cfg.validate()


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON-safe) of a config; ``extra`` sections appear at top level."""
    d = dataclasses.asdict(cfg)
    extra = d.pop("extra")
    for k, v in extra.items():
        d[k] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else copy.deepcopy(v)
    return d


def config_hash(cfg: Config) -> str:
    """Stable SHA-256 (hex, 16 chars) of the canonical JSON of the config (recorded in exports)."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# ---------------------------------------------------------------------------------------
# Loading and merging
# ---------------------------------------------------------------------------------------
def merge_dicts(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings merge, everything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config files include each other in a cycle: {' -> '.join(map(str, (*seen, path)))}")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    bases = data.pop("base", None)
    merged: dict[str, Any] = {}
    for b in [bases] if isinstance(bases, str) else list(bases or []):
        merged = merge_dicts(merged, _read_yaml(path.parent / b, (*seen, path)))
    return merge_dicts(merged, data)


def apply_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a nested dict, in a copy."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key.path=value")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {override!r} has an empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: value is not valid YAML: {err}") from err
    patch: dict[str, Any] = {}
    node = patch
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return merge_dicts(data, patch)


def resolve_config(name: str | Path) -> Path:
    """A config file from a path, or a shipped name (``train``, ``monodepth2``, ``no_occlusion``, …).

    Names are looked up as ``CONFIG_DIR/<name>.yaml`` then ``CONFIG_DIR/ablations/<name>.yaml``.
    """
    p = Path(name)
    if p.exists():
        return p
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    for candidate in (CONFIG_DIR / f"{stem}.yaml", CONFIG_DIR / "ablations" / f"{stem}.yaml"):
        if candidate.exists():
            return candidate
    shipped = sorted(x.stem for x in [*CONFIG_DIR.glob("*.yaml"), *CONFIG_DIR.glob("ablations/*.yaml")])
    raise ConfigError(f"config {str(name)!r} is neither a file nor a shipped configuration ({', '.join(shipped)})")


def load_config(*paths: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load and stack YAML files or shipped names (default: ``train``), then apply ``overrides``."""
    data: dict[str, Any] = {}
    for p in paths or (DEFAULT_CONFIG,):
        data = merge_dicts(data, _read_yaml(resolve_config(p)))
    for o in overrides:
        data = apply_override(data, o)
    return config_from_dict(data)
