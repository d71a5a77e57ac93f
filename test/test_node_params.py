"""The node's configuration files agree with the code: config/depth.yaml, the launch file's
arguments, the rviz config; parameter validation gives readable reasons.
"""

import ast
from pathlib import Path

import pytest
import yaml

from dualdepth_ros.ros.params import DEFAULTS, PARAMETERS, ParameterError, load_params_file, validate


def test_depth_yaml_holds_every_parameter_with_the_code_default(repo_root: Path) -> None:
    data = yaml.safe_load((repo_root / "config" / "depth.yaml").read_text())
    params = data["depth_node"]["ros__parameters"]
    assert params == DEFAULTS
    assert load_params_file(repo_root / "config" / "depth.yaml") == DEFAULTS
    for p in PARAMETERS:
        assert type(params[p.name]) is type(p.default), p.name  # 1.0 stays a double for ROS
        assert p.check(p.default) is None, p.name


@pytest.mark.parametrize(
    "values,match",
    [
        ({"scale_mode": "lidar"}, "scale_mode must be one of none, fixed, camera_height"),
        ({"confidence_threshold": 1.5}, "confidence_threshold must be at most 1.0"),
        ({"min_depth": 5.0, "max_depth": 2.0}, "min_depth < max_depth"),
        ({"camera_height_m": -1.0}, "camera_height_m must be at least"),
        ({"backend": "openvino"}, "backend must be one of auto, tensorrt, onnxruntime, torch"),
        ({"qos_input_depth": "5"}, "qos_input_depth must be an integer"),
        ({"max_depth": float("nan")}, "max_depth must be a finite number"),
    ],
)
def test_validate_names_the_parameter_and_the_rule(values: dict, match: str) -> None:
    problems = validate(values)
    assert problems and any(match in p for p in problems), problems


def test_valid_values_pass() -> None:
    assert validate({"camera_height_m": 1.65, "scale_mode": "fixed", "fixed_scale": 30.0, "max_depth": 120}) == []


def test_params_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("depth_node:\n  ros__parameters:\n    camera_hieght_m: 1.6\n")
    with pytest.raises(ParameterError, match="unknown parameter.*camera_hieght_m"):
        load_params_file(bad)
    bad.write_text("other_node:\n  ros__parameters:\n    backend: auto\n")
    with pytest.raises(ParameterError, match="no 'depth_node: ros__parameters:' section"):
        load_params_file(bad)
    bad.write_text("/**:\n  ros__parameters:\n    scale_mode: none\n")
    assert load_params_file(bad) == {"scale_mode": "none"}


def _launch_module(repo_root: Path) -> ast.Module:
    return ast.parse((repo_root / "launch" / "depth.launch.py").read_text())


def test_launch_file_arguments(repo_root: Path) -> None:
    """Without importing launch (it may be absent): the declared arguments and the parameter overrides."""
    tree = _launch_module(repo_root)
    declared = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", "") == "DeclareLaunchArgument"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    for arg in ("image", "camera_info", "params_file", "rviz", "rviz_config", "namespace", "dds_profile"):
        assert arg in declared, arg
    # the node gets the DDS profile choice in its environment (dualdepth_ros.ros.dds reads it before rclpy starts)
    env_kw = [
        k.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"
        for k in n.keywords
        if k.arg == "additional_env"
    ]
    assert len(env_kw) == 1 and isinstance(env_kw[0], ast.Dict), ast.dump(tree)[:500]
    assert [k.value for k in env_kw[0].keys] == ["DUALDEPTH_DDS_PROFILE"]
    overrides = next(
        n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "OVERRIDES"
    )
    mapping = ast.literal_eval(ast.unparse(overrides).replace("str,", "'str',").replace("float,", "'float',"))
    for arg in ("image_transport", "model_path", "backend"):
        assert arg in mapping, arg
    for _, (param, kind, _) in mapping.items():
        assert param in DEFAULTS, param
        assert kind == type(DEFAULTS[param]).__name__, param


def test_rviz_config_shows_camera_depth_confidence_and_a_depth_cloud(repo_root: Path) -> None:
    cfg = yaml.safe_load((repo_root / "config" / "depth.rviz").read_text())
    displays = cfg["Visualization Manager"]["Displays"]
    images = {d["Name"]: d["Topic"]["Value"] for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    assert images == {"Camera": "/camera/image_raw", "Depth": "/depth/image", "Confidence": "/confidence/image"}
    (cloud,) = [d for d in displays if d["Class"] == "rviz_default_plugins/DepthCloud"]
    assert cloud["Depth Map Topic"] == "/depth/image"
    assert cloud["Enabled"] is True
    assert cfg["Visualization Manager"]["Global Options"]["Fixed Frame"] == "camera_optical_frame"
    assert cfg["Visualization Manager"]["Views"]["Current"]["Class"].startswith("rviz_default_plugins/")


def test_depth_node_is_installed_with_its_launch_file_config_and_model(repo_root: Path) -> None:
    """`make build` (colcon) installs what `ros2 run/launch dualdepth_ros …` need."""
    setup = (repo_root / "setup.py").read_text()
    assert '"depth_node = dualdepth_ros.ros.node:main"' in setup
    install = repo_root / "install" / "dualdepth_ros"
    if not install.exists():
        pytest.skip("install/ is missing: run `make build` (part of `make test`)")
    assert (install / "lib" / "dualdepth_ros" / "depth_node").stat().st_mode & 0o111
    share = install / "share" / "dualdepth_ros"
    for rel in (
        "launch/depth.launch.py",
        "config/depth.yaml",
        "config/depth.rviz",
        "config/dds/fastdds_udp.xml",  # depth_node's DDS profiles (dualdepth_ros.ros.dds finds them in share/)
        "config/dds/fastdds_shm.xml",
    ):
        assert (share / rel).read_bytes() == (repo_root / rel).read_bytes(), f"{rel} is stale: run `make build`"
    for name in ("model.onnx", "model.json"):
        assert (share / "models" / "dualdepth_default" / name).exists(), name
