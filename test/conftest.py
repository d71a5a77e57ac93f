"""Shared test fixtures.

ROS 2 traffic must stay on this machine: DDS discovery is limited to localhost before any
test can import rclpy, and each test session gets its own domain id so concurrent runs
(CI, a developer's shell) do not see each other.
"""

import os
import random
import sys
from pathlib import Path

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # Jazzy and later
os.environ["ROS_LOCALHOST_ONLY"] = "1"  # Humble
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests run many tiny convolutions; two threads on a 2-core CI box spend more time synchronising
# than computing (measured: up to 100× slower under load). One thread is fast and deterministic.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"  # subprocesses too

REPO = Path(__file__).resolve().parents[1]
SAMPLE_BAG = REPO / "test" / "data" / "sample_drive"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_bag() -> Path:
    if not SAMPLE_BAG.exists():
        pytest.fail(f"the committed sample drive is missing: {SAMPLE_BAG}")
    return SAMPLE_BAG


@pytest.fixture(scope="session")
def dualdepth_exe() -> list[str]:
    """The installed ``dualdepth`` command (the venv's), falling back to ``python -m``."""
    exe = Path(sys.executable).with_name("dualdepth")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dualdepth_ros.cli"]


@pytest.fixture(scope="session", autouse=True)
def default_model_folder() -> Path:
    """``models/dualdepth_default/``, derived from ``models/dualdepth_default.pt`` when it is missing.

    The repository stores only the checkpoint; ``make test`` derives the folder at build, this covers
    pytest run directly on a fresh clone. Concurrent sessions export once (``ensure_model_dir`` locks
    and publishes the folder by an atomic rename). Module-level ``load_metadata(SHIPPED)`` at collection
    derives it the same way, before this fixture runs.
    """
    from dualdepth_ros.inference.derive import ensure_model_dir

    folder = REPO / "models" / "dualdepth_default"
    ensure_model_dir(folder)
    return folder
