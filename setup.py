"""ament_python build for dualdepth_ros (also a plain pip-installable package)."""

import sys
from glob import glob

from setuptools import find_packages, setup

package_name = "dualdepth_ros"


def files(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern, recursive=True) if not p.endswith("/"))


def derived_model(folder: str) -> list[str]:
    """The files of a model folder derived from its packed checkpoint (``make build`` writes it before colcon).

    The repository stores only ``models/NAME.pt``; installing without ``models/NAME/model.onnx`` would ship
    a package without its default model, so ``build``/``install``/``develop`` stop here saying what to run.
    """
    found = files(folder + "/*")
    if folder + "/model.onnx" not in found and {"build", "install", "develop"} & set(sys.argv[1:]):
        sys.exit(
            f"{folder}/model.onnx is missing: it is derived from {folder}.pt, not stored; run `make build` "
            f"(or `dualdepth export --checkpoint {folder}.pt --out {folder} --per-branch`) before colcon build"
        )
    return found


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", files("launch/*.py")),
        ("share/" + package_name + "/config", files("config/*.yaml") + files("config/*.rviz")),
        ("share/" + package_name + "/config/ablations", files("config/ablations/*.yaml")),
        ("share/" + package_name + "/config/ladder", files("config/ladder/*.yaml")),
        ("share/" + package_name + "/config/bench", files("config/bench/*.yaml")),
        ("share/" + package_name + "/config/dds", files("config/dds/*.xml")),
        ("share/" + package_name + "/models", files("models/*.*")),
        ("share/" + package_name + "/models/dualdepth_default", derived_model("models/dualdepth_default")),
    ],
    install_requires=["setuptools"],
    # `colcon test` picks its test runner from the test dependencies: naming pytest here makes it run the pytest
    # suite (with JUnit XML for `colcon test-result`) instead of falling back to unittest, which finds no test.
    extras_require={"test": ["pytest"]},
    zip_safe=True,
    maintainer="dualdepth_ros maintainers",
    maintainer_email="maintainers@dualdepth.invalid",
    description="Self-supervised two-branch monocular depth for ROS 2 cameras.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "dualdepth = dualdepth_ros.cli:main",
            "depth_node = dualdepth_ros.ros.node:main",
        ],
    },
)
