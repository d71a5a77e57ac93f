"""QoS profiles of the node, from its ``qos_*`` parameters.

Defaults follow design.md: subscribe best effort and volatile like ``qos_profile_sensor_data``,
which receives from both best-effort and reliable cameras, but keep only the last frame
(``qos_input_depth`` 1): the node runs the newest frame, so an older one waiting in the DDS queue
behind it would only be taken, converted to Python and dropped (with keep-last 5 a frame could wait
behind four older ones); publish reliable, which best-effort and reliable subscribers (rviz,
recorders) both receive.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = ["profile", "input_profile", "output_profile"]

_RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
    "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
}
_DURABILITY = {
    "volatile": DurabilityPolicy.VOLATILE,
    "transient_local": DurabilityPolicy.TRANSIENT_LOCAL,
    "system_default": DurabilityPolicy.SYSTEM_DEFAULT,
}


def profile(reliability: str, depth: int, durability: str = "volatile") -> QoSProfile:
    """A keep-last profile; ``reliability`` and ``durability`` by their parameter names."""
    try:
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=int(depth),
            reliability=_RELIABILITY[reliability],
            durability=_DURABILITY[durability],
        )
    except KeyError as err:
        raise ValueError(f"unknown QoS policy {err.args[0]!r}") from None


def input_profile(params: dict) -> QoSProfile:
    """Image and camera_info subscriptions (``qos_input_*``)."""
    return profile(params["qos_input_reliability"], params["qos_input_depth"])


def output_profile(params: dict) -> QoSProfile:
    """Depth, confidence, camera_info and preview publishers (``qos_output_*``)."""
    return profile(params["qos_output_reliability"], params["qos_output_depth"], params["qos_output_durability"])
