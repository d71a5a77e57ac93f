"""ament_python build for dualdepth_ros (also a plain pip-installable package)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "dualdepth_ros"


def files(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern, recursive=True) if not p.endswith("/"))


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
        ("share/" + package_name + "/models", files("models/*.*")),
        ("share/" + package_name + "/models/dualdepth_default", files("models/dualdepth_default/*")),
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
