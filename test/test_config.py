"""Configuration: the shipped YAML files load, stack and override; mistakes are caught."""

import dataclasses
from pathlib import Path

import pytest

from dualdepth_ros.config import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
    register_section,
    save_config,
)
from dualdepth_ros.data import DataConfig
from dualdepth_ros.losses import clip_layout
from dualdepth_ros.training.trainer import TrainSection

ABLATIONS = Path(__file__).resolve().parents[1] / "config" / "ablations"


def test_default_file_equals_schema_defaults() -> None:
    """config/train.yaml documents every value; the dataclass defaults are the same numbers."""
    assert DEFAULT_CONFIG.exists()
    documented = config_to_dict(load_config())
    data = documented.pop("data")  # the data section is typed by DataConfig (dualdepth_ros.data)
    train = documented.pop("train")  # and the train section by the trainer's TrainSection
    assert documented == config_to_dict(Config())
    assert data == dataclasses.asdict(DataConfig())
    assert train == dataclasses.asdict(TrainSection())


def test_full_method_values_from_method_md() -> None:
    cfg = load_config()
    lc = cfg.loss
    assert (lc.photometric.alpha, lc.photometric.erf_eps, lc.photometric.ssim_c1) == (0.85, 0.01, 0.01**2)
    assert lc.photometric.ssim_c2 == pytest.approx(0.03**2)
    assert (lc.occlusion.alpha1, lc.occlusion.alpha2) == (0.01, 0.5)
    weights = (lc.photometric.weight, lc.smoothness.weight, lc.structure.weight, lc.featuremetric.weight)
    assert weights == (1.0, 0.001, 0.5, 0.05)  # CN113160294B λ
    assert cfg.pose.output_scale == 0.01 and cfg.model.disp_scale == 10.0 and cfg.model.disp_offset == 0.01
    assert cfg.model.num_branches == 2 and lc.two_branch.enabled
    lay = clip_layout(cfg)
    assert lay.frames == (-2, -1, 0, 1, 2) and lay.depth_frames == (-1, 0, 1)


def test_monodepth2_ablation_is_reached_by_switches_alone() -> None:
    cfg = load_config(ABLATIONS / "monodepth2.yaml")
    lc = cfg.loss
    assert cfg.model.num_branches == 1 and not cfg.model.predict_confidence
    assert not lc.two_branch.enabled and not lc.occlusion.enabled and not lc.structure.enabled
    assert not lc.featuremetric.enabled and not lc.temporal.enabled and not lc.photometric.bidirectional
    assert lc.photometric.reprojection == "min" and lc.photometric.automask and lc.photometric.rho == "l1"
    assert lc.smoothness.weight == 0.001 and lc.smoothness.feature_weight == 0.0
    lay = clip_layout(cfg)
    assert lay.frames == (-1, 0, 1) and lay.depth_frames == (0,)  # monodepth2: depth of the target only
    # nothing else differs from the default
    full = config_to_dict(load_config())
    mono = config_to_dict(cfg)
    assert mono["input"] == full["input"] and mono["optim"] == full["optim"] and mono["pose"] == full["pose"]


@pytest.mark.parametrize("term", ["occlusion", "structure", "featuremetric", "temporal"])
def test_single_term_ablations(term: str) -> None:
    cfg = load_config(ABLATIONS / f"no_{term}.yaml")
    d, full = config_to_dict(cfg), config_to_dict(load_config())
    assert d["loss"][term]["enabled"] is False
    d["loss"][term]["enabled"] = True
    assert d == full  # exactly one switch differs


def test_every_shipped_yaml_loads() -> None:
    for path in sorted(ABLATIONS.glob("*.yaml")):
        load_config(path)


def test_stacking_and_overrides(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("loss:\n  temporal:\n    weight: 0.3\noptim:\n  batch_size: 4\n")
    cfg = load_config(DEFAULT_CONFIG, ABLATIONS / "no_occlusion.yaml", extra, overrides=["optim.batch_size=2"])
    assert not cfg.loss.occlusion.enabled and cfg.loss.temporal.weight == 0.3 and cfg.optim.batch_size == 2
    cfg = load_config(overrides=["loss.photometric.rho=l1", "model.scales=[0, 1]", "loss.smoothness.weight=1e-2"])
    assert cfg.loss.photometric.rho == "l1" and cfg.model.scales == [0, 1] and cfg.loss.smoothness.weight == 0.01
    child = tmp_path / "child.yaml"  # base chain relative to the file
    child.write_text(f"base: {extra.name}\noptim:\n  epochs: 3\n")
    cfg = load_config(DEFAULT_CONFIG, child)
    assert cfg.optim.epochs == 3 and cfg.loss.temporal.weight == 0.3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.occlusoin.enabled=false", "unknown key"),
        ("loss.photometric.rho=l2", "not one of"),
        ("optim.batch_size=2.5", "integer"),
        ("loss.temporal.enabled=yes please", "true/false"),
        ("model.num_branches=1", "two_branch"),  # one branch with the two-branch rule on
        ("loss.two_branch.enabled=false", "num_branches: 2"),
        ("model.scales=[1, 2]", "including 0"),
        ("model.encoder=vgg", "unknown encoder"),
        ("nonsense", "key.path=value"),
    ],
)
def test_mistakes_are_reported(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_base_cycle_and_missing_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)
    with pytest.raises(ConfigError, match="neither a file nor a shipped"):
        load_config(tmp_path / "missing.yaml")
    c = tmp_path / "c.yaml"
    c.write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(c)


def test_shipped_names_resolve() -> None:
    assert config_to_dict(load_config("monodepth2")) == config_to_dict(load_config(ABLATIONS / "monodepth2.yaml"))
    assert config_to_dict(load_config("train")) == config_to_dict(load_config())


def test_hash_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config()
    assert config_hash(cfg) == config_hash(load_config())
    assert config_hash(cfg) != config_hash(load_config(overrides=["loss.temporal.weight=0.2"]))
    out = tmp_path / "saved.yaml"
    save_config(cfg, out)
    assert config_to_dict(load_config(out)) == config_to_dict(cfg)


def test_extra_sections_untyped_or_registered() -> None:
    # A section no module registers stays a plain mapping (`data`/`train` are typed once their modules load).
    cfg = config_from_dict({"my_tool": {"bag": "x.mcap", "stride": 2}})
    assert cfg.extra["my_tool"] == {"bag": "x.mcap", "stride": 2}

    @dataclasses.dataclass
    class Logging:
        every: int = 10

    register_section("logging_test", Logging)
    cfg = config_from_dict({"logging_test": {"every": 5}})
    assert cfg.extra["logging_test"] == Logging(5)
    with pytest.raises(ConfigError):
        config_from_dict({"logging_test": {"every": "often"}})
