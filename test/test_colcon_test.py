"""`colcon test` runs this package's pytest suite and `colcon test-result` reports it.

colcon picks the Python test runner from the package's test dependencies (``extras_require["test"]``
in setup.py); without pytest there it falls back to unittest, which finds none of these tests
("Ran 0 tests"). This test builds the package with the real colcon into a temporary workspace (as
`make build` does), runs `colcon test` on one small test, and reads the result back with
`colcon test-result`, the JUnit XML path colcon uses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

#: One quick, side-effect-free test of the suite (it reads package.xml).
TINY_TEST = "test/test_package.py::test_package_xml_is_format3_with_rosdep_keys"


def _colcon() -> str | None:
    beside = Path(sys.executable).with_name("colcon")  # the venv's colcon (make setup installs it)
    return str(beside) if beside.exists() else shutil.which("colcon")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def test_colcon_test_runs_pytest_and_test_result_reports_it(repo_root: Path, tmp_path: Path) -> None:
    colcon = _colcon()
    if colcon is None:
        pytest.skip("colcon is not installed (make setup installs it into .venv)")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # The ROS 2 wheels of the venv register their packages under its prefix (what the Makefile's test target does).
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (sys.prefix, os.environ.get("AMENT_PREFIX_PATH", "")) if p)
    base = ["--log-base", str(tmp_path / "log")]
    spaces = ["--base-paths", str(repo_root), "--build-base", str(tmp_path / "build")]
    spaces += ["--install-base", str(tmp_path / "install")]
    _run([colcon, *base, "build", *spaces, "--event-handlers", "console_cohesion-"], repo_root, env, 120)
    assert (tmp_path / "install" / "dualdepth_ros" / "lib" / "dualdepth_ros" / "dualdepth").exists()

    tested = _run(
        [colcon, *base, "test", *spaces, "--packages-select", "dualdepth_ros", "--event-handlers", "console_cohesion+"]
        + ["--pytest-args", TINY_TEST],
        repo_root,
        env,
        120,
    )
    assert "Ran 0 tests" not in tested.stdout  # the unittest fallback
    assert re.search(r"=+ 1 passed.* in [0-9.]+s", tested.stdout), tested.stdout[-3000:]  # pytest's own summary

    xml = tmp_path / "build" / "dualdepth_ros" / "pytest.xml"
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = [c.get("name") for c in suite.iter("testcase")]
    assert cases == ["test_package_xml_is_format3_with_rosdep_keys"], cases

    result = _run(
        [colcon, *base, "test-result", "--test-result-base", str(tmp_path / "build"), "--verbose"], repo_root, env, 60
    )
    summary = re.search(r"Summary: (\d+) tests?, (\d+) errors?, (\d+) failures?, (\d+) skipped", result.stdout)
    assert summary, result.stdout
    tests, errors, failures, _ = (int(x) for x in summary.groups())
    assert tests >= 1 and errors == 0 and failures == 0, result.stdout
