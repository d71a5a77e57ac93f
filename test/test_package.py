"""The package is a real ament_python package: metadata, install layout and the CLI contract."""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dualdepth_ros import __version__
from dualdepth_ros.cli import COMMANDS


def test_package_xml_is_format3_with_rosdep_keys(repo_root: Path) -> None:
    root = ET.parse(repo_root / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "dualdepth_ros"
    assert root.findtext("version") == __version__
    deps = {e.text for e in root if e.tag.endswith("depend")}
    for key in (
        "rclpy",
        "sensor_msgs",
        "std_msgs",
        "geometry_msgs",
        "diagnostic_msgs",
        "cv_bridge",
        "python3-numpy",
        "python3-opencv",
        "python3-yaml",
        "python3-pytest",
    ):
        assert key in deps, key
    assert root.find("export/build_type").text == "ament_python"


def test_colcon_install_layout(repo_root: Path) -> None:
    """`make build` ran colcon; the install tree has the ROS-style executable and share files.

    The install tree is the clone's own ``install/`` (``make build``), else the one a sourced ROS
    workspace puts on ``AMENT_PREFIX_PATH`` (``colcon test`` in ``~/ros2_ws`` after ``source install/setup.bash``).
    """
    candidates = [repo_root / "install" / "dualdepth_ros"]
    candidates += [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    found = [p for p in candidates if (p / "share" / "dualdepth_ros" / "package.xml").exists()]
    if not found:
        pytest.fail("install/ is missing: run `make build` (part of `make test`) before the tests")
    install = found[0]
    assert os.access(install / "lib" / "dualdepth_ros" / "dualdepth", os.X_OK)
    share = install / "share" / "dualdepth_ros"
    assert (share / "package.xml").exists()
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "dualdepth_ros").exists()
    for name in os.listdir(repo_root / "config"):
        if name.endswith((".yaml", ".rviz")):
            assert (share / "config" / name).exists(), name


def test_help_lists_every_command(dualdepth_exe: list[str]) -> None:
    out = subprocess.run(dualdepth_exe + ["--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dualdepth_ros.cli", name, "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: dualdepth " + name in proc.stdout


def test_unknown_command_fails() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dualdepth_ros.cli", "no-such-command"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


#: package.xml test dependency → the Python module a test must import for the declaration to be true.
TEST_DEPEND_MODULES = {"python3-pytest": "pytest", "launch_testing": "launch_testing"}


def test_every_declared_test_dependency_is_used(repo_root: Path) -> None:
    """A ``<test_depend>`` (e.g. an ament linter) is declared only when a test uses it."""
    root = ET.parse(repo_root / "package.xml").getroot()
    declared = [e.text for e in root.findall("test_depend")]
    sources = "\n".join(p.read_text() for p in (repo_root / "test").glob("*.py"))
    for key in declared:
        module = TEST_DEPEND_MODULES.get(key, key)
        assert re.search(rf"^\s*(import|from) {module}\b", sources, re.M), f"{key} is declared but no test uses it"
