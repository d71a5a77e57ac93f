"""model.json: round trip, validation errors, metadata_props, the runtime preprocessor."""

import dataclasses
import json
from pathlib import Path

import pytest

from dualdepth_ros.inference import ModelError, ModelMetadata, load_metadata
from dualdepth_ros.inference.metadata import (
    _RESIZE_MODES,
    FORMAT,
    file_sha256,
    output_names,
    parse_metadata_props,
)
from dualdepth_ros.preprocess import RESIZE_MODES, Preprocessor

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "dualdepth_default"


def example(**changes) -> ModelMetadata:
    base = ModelMetadata(
        input_width=160,
        input_height=48,
        resize_mode="crop_bottom",
        rectify=True,
        min_depth=1 / 10.01,
        max_depth=100.0,
        output_names=output_names(2, True),
        num_branches=2,
        per_branch=True,
        intrinsics_convention="pinhole K at the network input resolution",
        training_intrinsics={"fx": 80.0, "fy": 80.0, "cx": 79.5, "cy": 23.5},
        training_hfov_deg=90.0,
        config_hash="abcdef0123456789",
        weights_sha256="1" * 64,
        checkpoint_step=800,
        package_version="0.1.0",
        onnx_sha256="2" * 64,
    )
    return dataclasses.replace(base, **changes)


def test_output_names() -> None:
    assert output_names(2, False) == ["depth", "confidence"]
    assert output_names(2, True) == [
        "depth",
        "confidence",
        "depth_branch0",
        "confidence_branch0",
        "depth_branch1",
        "confidence_branch1",
    ]


def test_round_trip_through_json(tmp_path) -> None:
    md = example()
    md.validate()
    path = md.write_json(tmp_path)
    assert path == tmp_path / "model.json"
    back = load_metadata(tmp_path)
    assert back == md
    assert load_metadata(path) == md  # the JSON path itself
    assert json.loads(path.read_text())["format"] == FORMAT
    assert md.input_shape == (1, 3, 48, 160) and md.output_shape == (1, 1, 48, 160)


def test_metadata_props_round_trip_and_mismatch() -> None:
    md = example()
    props = md.metadata_props()
    assert "onnx_sha256" not in props and all(isinstance(v, str) for v in props.values())
    parsed = parse_metadata_props(props)
    assert parsed == {k: v for k, v in md.to_dict().items() if k != "onnx_sha256"}
    md.check_metadata_props(props)  # equal: no error
    other = dict(props, resize_mode=json.dumps("resize"), config_hash=json.dumps("ffff"))
    with pytest.raises(ModelError, match="disagree on config_hash .*resize_mode") as err:
        md.check_metadata_props(other)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="not JSON"):
        md.check_metadata_props(dict(props, rectify="yes please"))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"input_width": 0}, "'input_width' must be a positive integer"),
        ({"input_height": True}, "'input_height' must be a positive integer"),
        ({"resize_mode": "stretch"}, "'resize_mode' must be one of resize, crop_bottom, crop_center"),
        ({"rectify": "yes"}, "'rectify' must be true or false"),
        ({"color_order": "BGR"}, "'color_order'"),
        ({"value_range": [0, 255]}, "'value_range' must be \\[0, 1\\]"),
        ({"depth_units": "ft"}, "'depth_units'"),
        ({"min_depth": -1.0}, "'min_depth' must be a positive number"),
        ({"max_depth": 0.01}, "'max_depth' must be a number above min_depth"),
        ({"input_name": "input"}, "'input_name'"),
        ({"output_names": ["depth", "conf"]}, "'output_names' must be"),
        ({"per_branch": False}, "'output_names' must be"),  # names no longer follow the flags
        ({"config_hash": ""}, "'config_hash' must be a non-empty string"),
        ({"training_intrinsics": {"fx": 1.0}}, "'training_intrinsics'"),
        ({"training_intrinsics": {"fx": -1.0, "fy": 1.0, "cx": 0.0, "cy": 0.0}}, "positive focal"),
        ({"training_hfov_deg": 200.0}, "'training_hfov_deg'"),
        ({"precision": "int8"}, "'precision' must be one of fp32, fp16"),
        ({"opset": 13}, "'opset' must be an integer ≥ 17"),
    ],
)
def test_validation_names_the_field(tmp_path, change, message) -> None:
    data = example().to_dict()
    data.update(change)
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message) as err:
        load_metadata(tmp_path)
    assert "\n" not in str(err.value) and "model.json" in str(err.value)


def test_structural_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="model folder not found"):
        load_metadata(tmp_path / "nope" / "model.json")
    with pytest.raises(ModelError, match="no model.json in"):
        load_metadata(tmp_path)
    path = tmp_path / "model.json"
    path.write_text('{"format": ')
    with pytest.raises(ModelError, match="is not valid JSON \\(line 1"):
        load_metadata(tmp_path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelError, match="not a text file|not valid JSON"):
        load_metadata(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(ModelError, match="expected a JSON object"):
        load_metadata(tmp_path)
    data = example().to_dict()
    path.write_text(json.dumps(dict(data, format="dualdepth_ros.model/9")))
    with pytest.raises(ModelError, match="format is 'dualdepth_ros.model/9'"):
        load_metadata(tmp_path)
    path.write_text(json.dumps(dict(data, colour="red")))
    with pytest.raises(ModelError, match="unknown field\\(s\\) colour"):
        load_metadata(tmp_path)
    del data["input_width"], data["config_hash"]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="missing field\\(s\\) input_width, config_hash"):
        load_metadata(tmp_path)


def test_resize_modes_agree_with_preprocess() -> None:
    assert tuple(_RESIZE_MODES) == tuple(RESIZE_MODES)


def test_preprocessor_comes_from_the_metadata() -> None:
    md = example()
    pre = md.preprocessor()
    assert isinstance(pre, Preprocessor)
    assert (pre.width, pre.height, pre.resize_mode, pre.rectify) == (160, 48, "crop_bottom", True)
    assert md.preprocessor(rectify=False).rectify is False
    assert md.preprocessor(intrinsics="100,100,63.5,31.5").explicit_intrinsics == (100.0, 100.0, 63.5, 31.5)


def test_shipped_model_json_is_valid_and_matches_its_onnx() -> None:
    import onnx

    md = load_metadata(SHIPPED)
    assert md.onnx_sha256 == file_sha256(SHIPPED / "model.onnx")
    model = onnx.load(str(SHIPPED / "model.onnx"), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    md.check_metadata_props(props)
    assert parse_metadata_props(props) == {k: v for k, v in md.to_dict().items() if k != "onnx_sha256"}
    assert md.opset == 17 and {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {17}
