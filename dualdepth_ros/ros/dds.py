"""The DDS transport settings depth_node starts with (Fast DDS profiles in ``config/dds/``).

Camera frames are large (1–6 MB) and camera drivers publish them best effort. With Fast DDS's
defaults on one host a stock publisher writes them through a 512 KiB shared-memory segment and
overwrites a frame's fragments before the node has copied them: most frames of 1 MP and more are
lost (measured on Jazzy: 13 of 300 1920×1080 frames at 30 Hz arrived). The shipped profiles fix
that (``config/dds/README.md`` has the figures and the host tuning):

``udp`` (default)
    ``fastdds_udp.xml``, on the node only: its subscriptions announce UDP locators, so any
    publisher sends over loopback (or the network) into a socket receive buffer of up to 32 MiB;
    the kernel grants at most ``net.core.rmem_max`` (doubled), so that sysctl decides the largest
    frame that survives a burst. Works with a stock camera driver.
``shm``
    ``fastdds_shm.xml``: shared memory with a 32 MiB segment. Only helps when the camera driver
    runs with it too (the publisher's segment is the one that overflows).
``off``
    leave Fast DDS alone.

:func:`configure` applies the choice (environment variable ``DUALDEPTH_DDS_PROFILE``, or the launch
file's ``dds_profile`` argument) before rclpy starts, and never overrides a user's own DDS
configuration: ``FASTRTPS_DEFAULT_PROFILES_FILE`` / ``FASTDDS_DEFAULT_PROFILES_FILE``,
``FASTDDS_BUILTIN_TRANSPORTS``, a ``DEFAULT_FASTRTPS_PROFILES.xml`` in the working directory, or
another RMW than Fast DDS.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import MutableMapping
from pathlib import Path

from ..errors import DualDepthError

__all__ = ["ENV", "PROFILES", "DdsSetup", "configure", "profile_path", "rmem_max"]

#: The environment variable that selects the profile (``udp``, ``shm`` or ``off``).
ENV = "DUALDEPTH_DDS_PROFILE"
#: Profile name → file in ``config/dds/``.
PROFILES = {"udp": "fastdds_udp.xml", "shm": "fastdds_shm.xml"}
#: Variables by which a user configures Fast DDS (any of them set: the node leaves Fast DDS alone).
USER_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS")
#: The socket receive buffer the udp profile asks for (bytes); Linux caps it at net.core.rmem_max.
UDP_RECEIVE_BUFFER = 33_554_432
#: Below this net.core.rmem_max (bytes) a 1920×1080 rgb8 stream at 30 Hz loses frames (measured: 2 MiB
#: delivered 136 of 300, 4 MiB all 300).
RMEM_MAX_ADVISED = 4 * 1_048_576


class DdsProfileError(DualDepthError):
    """An unknown ``DUALDEPTH_DDS_PROFILE`` value or a missing profile file."""


@dataclasses.dataclass(frozen=True)
class DdsSetup:
    """What :func:`configure` did.

    Attributes
    ----------
    profile : the Fast DDS profile file it selected, or None (Fast DDS left as configured).
    message : one line for the node's log.
    warning : True when ``message`` is a warning (large frames will be lost in transport).
    """

    profile: Path | None
    message: str
    warning: bool = False


def profile_dir() -> Path:
    """``config/dds`` of a source checkout, else the installed ``share/dualdepth_ros/config/dds``."""
    source = Path(__file__).resolve().parents[2] / "config" / "dds"
    if source.is_dir():
        return source
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return source
    try:
        return Path(get_package_share_directory("dualdepth_ros")) / "config" / "dds"
    except (PackageNotFoundError, ValueError, LookupError):
        return source


def profile_path(name: str) -> Path:
    """The file of a shipped profile (``udp`` or ``shm``).

    Raises
    ------
    DdsProfileError : unknown name, or the file is not installed.
    """
    if name not in PROFILES:
        raise DdsProfileError(f"{ENV} must be one of {', '.join([*PROFILES, 'off'])}, got {name!r}")
    path = profile_dir() / PROFILES[name]
    if not path.is_file():
        raise DdsProfileError(f"the DDS profile {path} is missing (reinstall dualdepth_ros, or set {ENV}=off)")
    return path


def rmem_max() -> int | None:
    """``net.core.rmem_max`` in bytes (Linux), or None where it cannot be read."""
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text().strip())
    except (OSError, ValueError):
        return None


def _udp_advice(limit: int | None) -> tuple[str, bool]:
    if limit is None:
        return "", False
    granted = 2 * min(limit, UDP_RECEIVE_BUFFER)
    text = f"; socket receive buffer {granted / 2**20:.1f} MiB (net.core.rmem_max {limit} B)"
    if limit < RMEM_MAX_ADVISED:
        return (
            text + f", below the {RMEM_MAX_ADVISED // 2**20} MiB a 1920x1080 rgb8 camera at 30 Hz needs: large frames "
            f"will be lost in transport; raise it with `sudo sysctl -w net.core.rmem_max={UDP_RECEIVE_BUFFER}` "
            "(config/dds/README.md)",
            True,
        )
    return text, False


def configure(environ: MutableMapping[str, str] | None = None, cwd: Path | None = None) -> DdsSetup:
    """Select the node's Fast DDS profile in ``environ`` (default ``os.environ``) before rclpy starts.

    Sets ``FASTRTPS_DEFAULT_PROFILES_FILE`` to the chosen shipped profile unless DDS is configured by the
    user (module docstring). Call it before ``rclpy.init``: Fast DDS reads the variable when the
    context's participant is created.

    A profile file that is not installed leaves Fast DDS alone, with a warning.

    Raises
    ------
    DdsProfileError : an unknown ``DUALDEPTH_DDS_PROFILE``.
    """
    env = os.environ if environ is None else environ
    choice = env.get(ENV, "").strip().lower() or "udp"
    if choice in ("off", "none"):
        return DdsSetup(None, f"DDS: left as configured ({ENV}={choice})")
    if choice not in PROFILES:
        raise DdsProfileError(f"{ENV} must be one of {', '.join([*PROFILES, 'off'])}, got {choice!r}")
    rmw = env.get("RMW_IMPLEMENTATION", "").strip() or "rmw_fastrtps_cpp"
    if not rmw.startswith("rmw_fastrtps"):
        return DdsSetup(
            None,
            f"DDS: {rmw} is not Fast DDS, the shipped profiles do not apply; tune it for large frames yourself "
            "(config/dds/README.md)",
        )
    for var in USER_VARIABLES:
        if env.get(var, "").strip():
            return DdsSetup(None, f"DDS: your Fast DDS configuration ({var}={env[var]})")
    local = (Path.cwd() if cwd is None else cwd) / "DEFAULT_FASTRTPS_PROFILES.xml"
    if local.is_file():
        return DdsSetup(None, f"DDS: your Fast DDS configuration ({local}, loaded by Fast DDS itself)")
    path = profile_dir() / PROFILES[choice]
    if not path.is_file():
        return DdsSetup(
            None,
            f"DDS: the profile {path} is not installed, so Fast DDS runs with its defaults and loses large camera "
            "frames (reinstall dualdepth_ros)",
            True,
        )
    env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(path)
    if choice == "udp":
        advice, warning = _udp_advice(rmem_max())
        return DdsSetup(path, f"DDS: Fast DDS profile {path} (camera frames over UDP{advice})", warning)
    return DdsSetup(
        path,
        f"DDS: Fast DDS profile {path} (shared memory, 32 MiB segment; the camera driver needs the same "
        "profile, else its large frames are lost)",
    )
