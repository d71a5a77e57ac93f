"""``depth_node``: live monocular depth for a ROS 2 camera.

Topics (relative names: remap them, or push the node into the camera's namespace)::

    image  or  image/compressed   (sensor_msgs/Image | CompressedImage, sensor-data QoS)   ─┐
    camera_info                   (sensor_msgs/CameraInfo, cached: the latest one is used)  ─┤
                                                                                             ▼
    depth/image            32FC1, metres when scale_mode gives metres, NaN where invalid
    depth/camera_info      the camera at the published resolution (K, P = [K|0], D = 0, R = I)
    confidence/image       32FC1 in [0, 1]
    confidence/camera_info the same camera_info
    depth/preview          rgb8 colourised inverse depth, computed only while subscribed
    /diagnostics           rates, latency p50/p95, drops, frames lost in transport, backend, scale, last error

Threading: the image callback only stamps the arrival time and puts ``(image, camera_info,
time)`` into a single-slot mailbox; a worker thread takes the newest item, runs
:class:`~dualdepth_ros.ros.processing.FrameProcessor` (decode → rectify → resize → backend →
scale → mask) and publishes. A frame that arrives while another waits replaces it (the older
one is counted as dropped), so nothing queues and latency stays one frame deep whatever the
input rate. Every output copies the input header (stamp and frame_id).

Faults never stop the node: a bad message (unsupported encoding, size ≠ camera_info, K with
zeros or NaN, corrupt compressed data, 0×0, too large, step/data mismatch) is logged (the
same kind at most once per ``error_log_period_s``) and skipped; a backend exception turns the
diagnostics to ERROR until an inference succeeds again. Only a model that cannot be opened
stops the node at start, with one line naming the problem (exit status 2).

Frames lost in transport (a best-effort subscription's ``message_lost`` event: DDS dropped a frame
before the node saw it, typically a large frame over an untuned transport) are counted and turn the
diagnostics to WARN. :func:`main` selects a Fast DDS profile for large frames before rclpy starts
(:mod:`dualdepth_ros.ros.dds`; ``config/dds/``) unless the user configured DDS.

Parameters: :mod:`dualdepth_ros.ros.params` (``config/depth.yaml``). Thresholds and scale
settings change at runtime (``ros2 param set /depth_node camera_height_m 1.65``); invalid
values are refused with the reason.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..errors import DualDepthError
from ..preprocess import PreprocessError
from . import dds, qos
from .convert import camera_info_message, image_message
from .diagnostics import NodeStats, diagnostic_status
from .params import (
    DEFAULTS,
    PARAMETERS,
    ParameterError,
    output_settings,
    scale_settings,
    validate,
)
from .processing import BackendError, FrameOutput, FrameProcessor, ScaleUnknownError, open_model_backend

__all__ = ["LatestSlot", "ThrottledLog", "DepthNode", "main"]


class LatestSlot:
    """A single-slot mailbox: :meth:`put` replaces what is waiting, :meth:`get` takes it.

    The node's bound on queuing: at most one frame waits while the worker runs another.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item``; True when it replaced an item nobody had taken (a dropped frame)."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
        return replaced

    def get(self, timeout: float | None = None) -> Any:
        """The waiting item (removing it); None after :meth:`close` or on timeout."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class ThrottledLog:
    """At most one line per kind of message per ``period`` seconds, with a count of what was held back.

    The kind is the message with its numbers blanked, so "image 640x480 …" and "image 320x240 …"
    are one kind, while an encoding error and a size mismatch are two.
    """

    def __init__(self, emit: Callable[[str, str], None], period: float) -> None:
        self._emit = emit
        self.period = float(period)
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def __call__(self, level: str, message: str) -> bool:
        """Log ``message`` at ``level`` unless its kind was logged within the period; True if logged."""
        kind = level + ":" + re.sub(r"[-+]?\d[\d.e+-]*", "#", message)
        now = time.monotonic()
        with self._lock:
            last, held = self._last.get(kind, (-float("inf"), 0))
            if now - last < self.period:
                self._last[kind] = (last, held + 1)
                return False
            self._last[kind] = (now, 0)
        suffix = f" ({held} more like this in the last {now - last:.0f} s)" if held else ""
        self._emit(level, message + suffix)
        return True


_ROS_TYPE_NAMES = {bool: "a bool", int: "an integer", float: "a double", str: "a string"}


class DepthNode(Node):
    """The depth node (module docstring). ``backend`` injects an open backend (tests); else the
    ``model_path``/``backend`` parameters choose one.
    """

    def __init__(
        self,
        node_name: str = "depth_node",
        *,
        backend: Any = None,
        parameter_overrides: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(node_name, parameter_overrides=parameter_overrides, **kwargs)
        self._log = ThrottledLog(self._emit, DEFAULTS["error_log_period_s"])
        self.params = self._declare_parameters()
        self._log.period = float(self.params["error_log_period_s"])
        self.stats = NodeStats()
        self._slot = LatestSlot()
        self._info: Any = None
        self._closed = False
        #: What :func:`main` did about DDS (None when the node was created another way, e.g. in tests).
        self.dds: dds.DdsSetup | None = None
        self.backend = backend if backend is not None else open_model_backend(self.params, self.get_logger().info)
        try:
            self.processor = FrameProcessor(
                self.backend,
                output_settings(self.params),
                scale_settings(self.params),
                max_image_pixels=int(self.params["max_image_pixels"]),
            )
            self._backend_info = dict(self.backend.describe())
        except Exception:
            self.backend.close()
            raise
        self._backend_info.setdefault("name", getattr(self.backend, "name", "?"))
        self._backend_info.setdefault("reason", getattr(self.backend, "reason", ""))

        in_qos, out_qos = qos.input_profile(self.params), qos.output_profile(self.params)
        self.compressed = self.params["image_transport"] == "compressed"
        image_type, image_topic = (CompressedImage, "image/compressed") if self.compressed else (Image, "image")
        #: Whether the middleware reports frames lost in transport (the ``message_lost`` event).
        self.loss_reporting = True
        try:
            self._image_sub = self.create_subscription(
                image_type,
                image_topic,
                self._on_image_with_info,
                in_qos,
                event_callbacks=SubscriptionEventCallbacks(message_lost=self._on_message_lost),
            )
        except UnsupportedEventTypeError:  # an RMW without the event: frames lost in transport go uncounted
            self.loss_reporting = False
            self._image_sub = self.create_subscription(image_type, image_topic, self._on_image_with_info, in_qos)
        self._info_sub = self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, in_qos)
        self.pub_depth = self.create_publisher(Image, "depth/image", out_qos)
        self.pub_depth_info = self.create_publisher(CameraInfo, "depth/camera_info", out_qos)
        self.pub_conf = self.create_publisher(Image, "confidence/image", out_qos)
        self.pub_conf_info = self.create_publisher(CameraInfo, "confidence/camera_info", out_qos)
        self.pub_preview = self.create_publisher(Image, "depth/preview", out_qos)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(float(self.params["diagnostics_period_s"]), self.publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._worker = threading.Thread(target=self._run_worker, name="depth_worker", daemon=True)
        self._worker.start()
        w, h = self.processor.input_size
        info = self._backend_info
        self.get_logger().info(
            f"ready: {info.get('name')} on {info.get('device', '?')} ({info.get('precision', '?')}), "
            f"model input {w}x{h} "
            f"({self.processor.metadata.resize_mode}); subscribed to {self._image_sub.topic_name} and "
            f"{self._info_sub.topic_name} ({self.params['qos_input_reliability']}); scale_mode "
            f"{self.params['scale_mode']}; publishing {self.pub_depth.topic_name} and "
            f"{self.pub_conf.topic_name} ({self.params['qos_output_reliability']})"
        )

    # -- parameters ------------------------------------------------------------------------
    def _declare_parameters(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for p in PARAMETERS:
            desc = ParameterDescriptor(description=p.description, read_only=not p.runtime)
            if p.choices:
                desc.additional_constraints = "one of: " + ", ".join(p.choices)
            try:
                values[p.name] = self.declare_parameter(p.name, p.default, desc).value
            except Exception as err:  # rclpy's type/value exceptions; the node has not started yet
                kind = _ROS_TYPE_NAMES.get(type(p.default), type(p.default).__name__)
                raise ParameterError(
                    f"parameter {p.name} must be {kind} (e.g. {p.default!r}): {type(err).__name__}: {err}"
                ) from None
        problems = validate(values)
        if problems:
            raise ParameterError("invalid parameters: " + "; ".join(problems))
        return values

    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters}
        merged = {**self.params, **changes}
        problems = validate(merged)
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        try:
            output = output_settings(merged)
            scale = scale_settings(merged)
        except DualDepthError as err:
            return SetParametersResult(successful=False, reason=str(err))
        self.params = merged
        self.processor.output = output
        self.processor.scale_settings = scale
        if "error_log_period_s" in changes:
            self._log.period = float(merged["error_log_period_s"])
        shown = ", ".join(f"{k}={v!r}" for k, v in changes.items() if k in DEFAULTS)
        if shown:
            self.get_logger().info(f"parameters changed: {shown}")
        return SetParametersResult(successful=True)

    # -- callbacks -------------------------------------------------------------------------
    def _emit(self, level: str, message: str) -> None:
        # One call site per severity: rclpy refuses a call site whose severity changes between calls.
        logger = self.get_logger()
        if level == "warn":
            logger.warning(message)
        elif level == "info":
            logger.info(message)
        else:
            logger.error(message)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._info = msg

    def _on_message_lost(self, event: Any) -> None:
        """Count frames that DDS lost before this subscription took them (dropped in transport)."""
        n = int(event.total_count_change)
        if n <= 0:
            return
        self.stats.lost(n)
        self._log(
            "warn",
            f"{n} camera frame(s) lost in transport ({int(event.total_count)} so far): DDS dropped them before "
            "the node received them; large frames need the DDS settings of config/dds/README.md",
        )

    def _on_image_with_info(self, msg: Any, message_info: Any) -> None:
        # rclpy passes the message info to a callback that takes exactly two arguments
        self._on_image(msg, message_info)

    def _on_image(self, msg: Any, message_info: Any = None) -> None:
        """Stamp the arrival and hand the frame to the worker (the subscription's callback, with rmw message info).

        ``message_info["publication_sequence_number"]`` tells how many frames of the publisher never reached
        this callback: lost in transport (the ``message_lost`` event counts those) or replaced by a newer
        frame in the subscription's queue; ``message_info["received_timestamp"]`` how long this one waited
        in that queue (:meth:`NodeStats.received`).
        """
        t = time.monotonic()
        now_ns = time.time_ns()
        info_ = message_info if isinstance(message_info, dict) else {}
        seq, arrived_ns = info_.get("publication_sequence_number"), info_.get("received_timestamp")
        # how long the frame waited in the subscription's DDS queue (DDS stamps its arrival on the system clock)
        wait = max(0.0, (now_ns - arrived_ns) / 1e9) if isinstance(arrived_ns, int) and arrived_ns > 0 else None
        self.stats.received(t, seq if isinstance(seq, int) and seq > 0 else None, wait)
        info = self._info
        if info is None:
            self.stats.no_camera_info()
            self._log(
                "warn",
                f"no camera_info received on {self._info_sub.topic_name} yet: images are not processed until one "
                "arrives (is it remapped to the camera's camera_info topic?)",
            )
            return
        if self._slot.put((msg, info, t)):
            self.stats.dropped()

    # -- worker ----------------------------------------------------------------------------
    def _run_worker(self) -> None:
        finished = 0.0
        while True:
            item = self._slot.get()
            if item is None:
                return
            # The frame could start when it arrived or when the previous one finished, whichever is later; its
            # frame time runs from then (the worker's wake-up included) to the end of its road-plane fit. A frame
            # that arrives during another one waits at most for that one: latency <= two frame times.
            start = max(item[2], finished)
            try:
                self.process_item(*item)
            except Exception as err:  # noqa: BLE001 - the worker must outlive anything (even a logging failure)
                print(f"[depth_node] worker: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            finished = time.monotonic()
            self.stats.frame_done(finished - start)

    def process_item(self, msg: Any, info: Any, t_received: float) -> FrameOutput | None:
        """Run one frame and publish it; every failure is logged and counted, never raised."""
        try:
            out = self.processor.process(msg, info)
        except ScaleUnknownError as err:
            self.stats.inference_ok()
            self.stats.unscaled()
            self._log("warn", str(err))
            return None
        except BackendError as err:
            self.stats.backend_error(str(err))
            self._log("error", f"inference failed, frame skipped: {err}")
            return None
        except PreprocessError as err:
            self.stats.bad_input(str(err))
            self._log("error", f"input frame refused: {err}")
            return None
        except Exception as err:  # noqa: BLE001 - a running node never dies on one message
            self.stats.bad_input(f"{type(err).__name__}: {err}")
            self._log("error", f"frame skipped after an unexpected error: {type(err).__name__}: {err}")
            return None
        try:
            self._publish(msg.header, out)
        except Exception as err:  # noqa: BLE001 - e.g. publishing during shutdown
            if not self._closed and self.context.ok():
                self._log("error", f"publishing failed: {type(err).__name__}: {err}")
            return None
        self.stats.published(t_received, out.timings["inference"])
        self.processor.update_scale(out)  # after publishing: the road-plane fit is off the latency path
        return out

    def _publish(self, header: Any, out: FrameOutput) -> None:
        self.pub_depth.publish(image_message(out.depth, "32FC1", header))
        self.pub_depth_info.publish(camera_info_message(out.intrinsics, header))
        self.pub_conf.publish(image_message(out.confidence, "32FC1", header))
        self.pub_conf_info.publish(camera_info_message(out.intrinsics, header))
        if self.pub_preview.get_subscription_count() > 0:
            from .scoring import colorize_inverse_depth

            self.pub_preview.publish(image_message(colorize_inverse_depth(out.depth), "rgb8", header))

    # -- diagnostics -----------------------------------------------------------------------
    def diagnostics(self) -> Any:
        """The current ``DiagnosticStatus`` (what the timer publishes)."""
        transport = {
            "loss_reporting": self.loss_reporting,
            "dds_profile": str(self.dds.profile) if self.dds and self.dds.profile else None,
        }
        return diagnostic_status(
            f"{self.get_fully_qualified_name().lstrip('/')}: depth",
            str(self._backend_info.get("device", self._backend_info.get("name", ""))),
            self.stats.snapshot(),
            self._backend_info,
            self.processor.scaler.describe(),
            transport,
        )

    def publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [self.diagnostics()]
        self.pub_diag.publish(msg)

    # -- shutdown --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker (after its current frame) and release the backend. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._slot.close()
        self._worker.join(timeout=10.0)
        try:
            self.backend.close()
        except Exception as err:  # noqa: BLE001 - shutting down anyway
            self.get_logger().warning(f"closing the backend failed: {err}")

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``depth_node`` (``ros2 run dualdepth_ros depth_node --ros-args …``)."""
    argv = sys.argv if argv is None else argv
    logger = rclpy.logging.get_logger("depth_node")
    try:
        dds_setup = dds.configure()  # before rclpy.init: Fast DDS reads its profile when the participant starts
    except DualDepthError as err:
        print(f"[depth_node] cannot start: {err}", file=sys.stderr, flush=True)
        return 2
    rclpy.init(args=argv)
    try:
        node = DepthNode()
    except DualDepthError as err:
        logger.fatal(f"cannot start: {err}")
        rclpy.try_shutdown()
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        rclpy.try_shutdown()
        return 0
    node.dds = dds_setup
    if dds_setup.warning:
        node.get_logger().warning(dds_setup.message)
    else:
        node.get_logger().info(dds_setup.message)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001 - a signal's shutdown can land while spin builds its wait set
        if rclpy.ok():  # the context is alive: a real failure
            raise
    finally:
        stats = node.stats.snapshot()
        node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
        logger.info(
            f"shut down: {stats['received']} frames received, {stats['published']} published, "
            f"{stats['dropped']} dropped, {stats['lost']} lost in transport, {stats['bad_input']} refused, "
            f"{stats['backend_errors']} backend errors"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
