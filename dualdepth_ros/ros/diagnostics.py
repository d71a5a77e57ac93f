"""The node's health figures and their ``/diagnostics`` message.

:class:`NodeStats` is plain Python (thread-safe counters, rate meters over a sliding window,
latency percentiles over the last frames); :func:`diagnostic_status` turns a snapshot into a
``diagnostic_msgs/DiagnosticStatus``. Latency is the node's own (image callback → published); the
frame time is the worker's time per frame (from when it could start — the frame's arrival or the end
of the previous frame — to the end of its road-plane fit), which bounds it: a frame waits in the
one-slot mailbox at most for the frame in progress, so its latency is at most two frame times (the
guarantee that nothing queues; the tests check it against these figures, over the last frames).
The queue wait is the time a frame spent in the subscription's DDS queue before the callback (with
``qos_input_depth`` 1 only the newest frame waits there). Levels:

* ERROR — the backend failed on the last frame it ran (until an inference succeeds again);
* WARN  — images arrive but no camera_info; frames were lost in transport (DDS dropped them before
  the node received them) within the last window; the scale is unknown (no road plane yet); input
  frames were refused within the last window;
* OK    — otherwise.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["RateMeter", "NodeStats", "diagnostic_status", "key_values"]


class RateMeter:
    """Events per second over the last ``window`` seconds (monotonic clock)."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = float(window)
        self._times: collections.deque[float] = collections.deque()

    def add(self, t: float | None = None) -> None:
        self._times.append(time.monotonic() if t is None else t)
        self._trim(self._times[-1])

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return (len(self._times) - 1) / span if span > 0 else 0.0


@dataclasses.dataclass
class _Counters:
    published: int = 0
    dropped: int = 0
    no_camera_info: int = 0
    lost: int = 0
    bad_input: int = 0
    unscaled: int = 0
    backend_errors: int = 0


class NodeStats:
    """Thread-safe figures of a running node (the image callback and the worker both write)."""

    def __init__(self, window: float = 5.0, latency_frames: int = 200) -> None:
        self._lock = threading.Lock()
        self.counters = _Counters()
        self._input = RateMeter(window)
        self._output = RateMeter(window)
        self._latency: collections.deque[float] = collections.deque(maxlen=latency_frames)
        self._inference: collections.deque[float] = collections.deque(maxlen=latency_frames)
        # twice as long as the latency window: it holds the frame before the oldest frame whose latency is kept
        self._frame_time: collections.deque[float] = collections.deque(maxlen=2 * latency_frames)
        self._frames_done = 0
        self._window = window
        self.backend_failing = False
        self.last_error = ""
        self.last_error_time: float | None = None
        self._last_bad_input: float | None = None
        self._last_no_info: float | None = None
        self._lost: collections.deque[tuple[float, int]] = collections.deque()
        self._taken = 0  # frames the image callback got
        self._queue_wait: collections.deque[float] = collections.deque(maxlen=latency_frames)
        self._sequence_gaps = 0  # frames of the publisher that never reached the callback
        self._last_sequence: int | None = None

    def received(self, t: float, sequence: int | None = None, queue_wait: float | None = None) -> None:
        """A frame reached the image callback at ``t``; ``sequence``: its publication sequence number, if known;
        ``queue_wait``: seconds it waited in the subscription's DDS queue before the callback, if known.

        Frames the publisher sent between two that reached the callback were either lost in transport
        (:meth:`lost`) or replaced by a newer frame in the subscription's DDS queue (keep-last): the second
        kind counts as received and dropped, like a frame replaced in the node's mailbox. One publisher per
        topic is assumed (a sequence number that does not increase restarts the count).
        """
        with self._lock:
            self._taken += 1
            self._input.add(t)
            if queue_wait is not None:
                self._queue_wait.append(queue_wait)
            if sequence is not None:
                if self._last_sequence is not None and sequence > self._last_sequence:
                    self._sequence_gaps += sequence - self._last_sequence - 1
                self._last_sequence = sequence

    def dropped(self) -> None:
        with self._lock:
            self.counters.dropped += 1

    def no_camera_info(self) -> None:
        with self._lock:
            self.counters.no_camera_info += 1
            self._last_no_info = time.monotonic()

    def lost(self, count: int, t: float | None = None) -> None:
        """``count`` frames were lost in transport (the subscription's ``message_lost`` event)."""
        t = time.monotonic() if t is None else t
        with self._lock:
            self.counters.lost += int(count)
            self._lost.append((t, int(count)))

    def bad_input(self, message: str) -> None:
        with self._lock:
            self.counters.bad_input += 1
            self._last_bad_input = time.monotonic()
            self._error(message)

    def unscaled(self) -> None:
        with self._lock:
            self.counters.unscaled += 1

    def backend_error(self, message: str) -> None:
        with self._lock:
            self.counters.backend_errors += 1
            self.backend_failing = True
            self._error(message)

    def _error(self, message: str) -> None:
        self.last_error = message
        self.last_error_time = time.monotonic()

    def published(self, t_received: float, inference_s: float, t: float | None = None) -> None:
        t = time.monotonic() if t is None else t
        with self._lock:
            self.counters.published += 1
            self.backend_failing = False
            self._output.add(t)
            self._latency.append(t - t_received)
            self._inference.append(inference_s)

    def frame_done(self, seconds: float) -> None:
        """The worker finished a frame (processed, published or refused, and the road-plane fit) in ``seconds``."""
        with self._lock:
            self._frames_done += 1
            self._frame_time.append(seconds)

    def inference_ok(self) -> None:
        """The backend ran a frame successfully (even if the frame was not published)."""
        with self._lock:
            self.backend_failing = False

    def snapshot(self) -> dict[str, Any]:
        """Every figure now, as plain values (seconds, Hz, counts)."""
        now = time.monotonic()
        with self._lock:
            while self._lost and self._lost[0][0] < now - self._window:
                self._lost.popleft()
            lat = np.array(self._latency, dtype=np.float64)
            inf = np.array(self._inference, dtype=np.float64)
            frame = np.array(self._frame_time, dtype=np.float64)
            wait = np.array(self._queue_wait, dtype=np.float64)
            recent = self._window
            # frames that reached the node but were replaced in its DDS queue before the callback took them
            superseded = max(0, self._sequence_gaps - self.counters.lost)
            counters = dataclasses.asdict(self.counters)
            counters["dropped"] += superseded
            return {
                "received": self._taken + superseded,
                **counters,
                "dropped_in_queue": superseded,
                "input_rate_hz": self._input.rate(now),
                "output_rate_hz": self._output.rate(now),
                "latency_p50_s": float(np.percentile(lat, 50)) if lat.size else None,
                "latency_p95_s": float(np.percentile(lat, 95)) if lat.size else None,
                "latency_max_s": float(lat.max()) if lat.size else None,
                "inference_p50_s": float(np.percentile(inf, 50)) if inf.size else None,
                "frame_time_p50_s": float(np.percentile(frame, 50)) if frame.size else None,
                "frame_time_p95_s": float(np.percentile(frame, 95)) if frame.size else None,
                "frame_time_max_s": float(frame.max()) if frame.size else None,
                "frames_done": self._frames_done,
                "queue_wait_p95_s": float(np.percentile(wait, 95)) if wait.size else None,
                "queue_wait_max_s": float(wait.max()) if wait.size else None,
                "backend_failing": self.backend_failing,
                "last_error": self.last_error,
                "last_error_age_s": None if self.last_error_time is None else now - self.last_error_time,
                "recent_bad_input": self._last_bad_input is not None and now - self._last_bad_input < recent,
                "recent_no_camera_info": self._last_no_info is not None and now - self._last_no_info < recent,
                "recent_lost": sum(n for _, n in self._lost),
                "window_s": self._window,
            }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def key_values(
    snapshot: Mapping[str, Any],
    backend: Mapping[str, Any],
    scale: Mapping[str, Any],
    transport: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The diagnostics' key → value strings (stable keys; tests and dashboards read them).

    ``transport``: ``loss_reporting`` (the middleware reports frames lost in transport) and
    ``dds_profile`` (the Fast DDS profile the node started with, or None).
    """
    transport = transport or {}

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.2f}"

    kv = {
        "input rate (Hz)": _fmt(snapshot["input_rate_hz"]),
        "output rate (Hz)": _fmt(snapshot["output_rate_hz"]),
        "latency p50 (ms)": ms(snapshot["latency_p50_s"]),
        "latency p95 (ms)": ms(snapshot["latency_p95_s"]),
        "latency max (ms)": ms(snapshot["latency_max_s"]),
        "inference p50 (ms)": ms(snapshot["inference_p50_s"]),
        "frame time p50 (ms)": ms(snapshot["frame_time_p50_s"]),
        "frame time p95 (ms)": ms(snapshot["frame_time_p95_s"]),
        "frame time max (ms)": ms(snapshot["frame_time_max_s"]),
        "frames processed": _fmt(snapshot["frames_done"]),
        "queue wait p95 (ms)": ms(snapshot["queue_wait_p95_s"]),
        "queue wait max (ms)": ms(snapshot["queue_wait_max_s"]),
        "frames received": _fmt(snapshot["received"]),
        "frames published": _fmt(snapshot["published"]),
        "frames dropped": _fmt(snapshot["dropped"]),
        "frames replaced in the DDS queue": _fmt(snapshot["dropped_in_queue"]),
        "frames without camera_info": _fmt(snapshot["no_camera_info"]),
        "frames lost in transport": _fmt(snapshot["lost"]) if transport.get("loss_reporting", True) else "unknown",
        "frames refused (bad input)": _fmt(snapshot["bad_input"]),
        "frames without scale": _fmt(snapshot["unscaled"]),
        "backend errors": _fmt(snapshot["backend_errors"]),
        "backend": _fmt(backend.get("name")),
        "backend reason": _fmt(backend.get("reason")),
        "device": _fmt(backend.get("device")),
        "precision": _fmt(backend.get("precision")),
        "input size": _fmt(backend.get("input")),
        "scale mode": _fmt(scale.get("mode")),
        "scale": _fmt(scale.get("scale")),
        "scale status": _fmt(scale.get("status")),
        "last error": snapshot["last_error"] or "-",
        "dds profile": _fmt(transport.get("dds_profile")),
    }
    for key in ("camera_height_m", "plane_tilt_deg", "plane_inliers"):
        if key in scale:
            kv[key.replace("_", " ")] = _fmt(scale[key])
    return kv


def diagnostic_status(
    name: str,
    hardware_id: str,
    snapshot: Mapping[str, Any],
    backend: Mapping[str, Any],
    scale: Mapping[str, Any],
    transport: Mapping[str, Any] | None = None,
) -> Any:
    """A ``diagnostic_msgs/DiagnosticStatus`` for a :meth:`NodeStats.snapshot` (level rules: module docstring)."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    status = DiagnosticStatus()
    status.name = name
    status.hardware_id = hardware_id
    if snapshot["backend_failing"]:
        status.level = DiagnosticStatus.ERROR
        status.message = f"backend failing: {snapshot['last_error']}"
    elif snapshot["recent_no_camera_info"]:
        status.level = DiagnosticStatus.WARN
        status.message = "images arrive but no camera_info has been received; nothing is published"
    elif snapshot["recent_lost"]:
        status.level = DiagnosticStatus.WARN
        status.message = (
            f"{snapshot['recent_lost']} frame(s) lost in transport in the last {snapshot['window_s']:g} s "
            f"({snapshot['lost']} in total): DDS dropped them before the node received them; large frames need "
            "the DDS settings of config/dds/README.md"
        )
    elif scale.get("mode") == "camera_height" and scale.get("scale") is None and snapshot["received"]:
        status.level = DiagnosticStatus.WARN
        status.message = "scale unknown: no road plane found yet (camera_height mode); depth not published"
    elif snapshot["recent_bad_input"]:
        status.level = DiagnosticStatus.WARN
        status.message = f"input frames refused: {snapshot['last_error']}"
    else:
        status.level = DiagnosticStatus.OK
        status.message = (
            f"publishing at {snapshot['output_rate_hz']:.1f} Hz" if snapshot["published"] else "waiting for images"
        )
    status.values = [KeyValue(key=k, value=v) for k, v in key_values(snapshot, backend, scale, transport).items()]
    return status
