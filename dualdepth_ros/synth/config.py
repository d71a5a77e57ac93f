"""Options of the synthetic driving world (:class:`SynthConfig`)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import DualDepthError
from ..geometry import Intrinsics

__all__ = ["SynthConfig", "DEFAULT_DISTORTION", "MAX_PIXELS", "MAX_TRAFFIC_VEHICLES", "stop_and_go_stops"]

#: A moderate barrel lens (``plumb_bob`` ``k1, k2, p1, p2, k3``) used by ``--distortion``.
DEFAULT_DISTORTION: tuple[float, float, float, float, float] = (-0.18, 0.035, 0.0008, -0.0005, 0.0)

#: Largest image (pixels) the renderer accepts; beyond it memory use becomes unreasonable.
MAX_PIXELS = 1920 * 1200

#: Most lead (or side) vehicles a drive may have.
MAX_TRAFFIC_VEHICLES = 20


def stop_and_go_stops(
    duration: float, ramp: float = 2.0, stand: float = 2.0, cruise: float = 2.0
) -> tuple[tuple[float, float], ...]:
    """The stops of a stop-and-go drive: cruise, brake, stand, accelerate, again and again.

    The cycle is ``cruise`` seconds at speed, ``ramp`` seconds braking, ``stand`` seconds stopped
    and ``ramp`` seconds accelerating (``cruise + 2·ramp + stand`` seconds; 8 s by default). The drive
    starts cruising; every stop whose braking begins before ``duration`` is included.

    Returns
    -------
    ``(t_stop, stand)`` pairs in seconds (:attr:`SynthConfig.stops`).
    """
    if duration <= 0 or ramp <= 0 or stand <= 0 or cruise < 0:
        raise DualDepthError("stop-and-go needs a positive duration, ramp and stand time")
    stops = []
    t0 = cruise + ramp
    while t0 - ramp < duration:
        stops.append((round(t0, 6), float(stand)))
        t0 += stand + ramp + cruise + ramp
    return tuple(stops)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic drive besides the seed.

    Camera
    ------
    width, height : image size in pixels.
    hfov_deg : horizontal field of view used when ``fx`` is not given (default 90°: ``fx = W/2``).
    fx, fy, cx, cy : pinhole intrinsics in pixels; defaults ``fy = fx`` and the image centre
        ``((W − 1)/2, (H − 1)/2)`` (pixel-centre convention of :mod:`dualdepth_ros.geometry`).
    distortion : ``plumb_bob`` coefficients ``(k1, k2, p1, p2, k3)`` applied to the raw image,
        or ``None`` for an ideal pinhole. Ground truth stays on the undistorted pinhole grid.
    supersample : rays per pixel side (``2`` → 2×2 = 4 colour samples per pixel).
    camera_height : height of the optical centre above the road (metres).
    pitch_deg : downward pitch of the optical axis (degrees; 0 = level, horizon at ``cy``).
    lane_offset : lateral position of the camera relative to the road centreline (metres, left positive).

    Motion
    ------
    speed : cruising speed (m/s). fps : frame rate (Hz).
    stops : ``(t_stop, duration)`` pairs in seconds: the car brakes during ``stop_ramp`` seconds
        before ``t_stop``, stands still for ``duration`` seconds and accelerates back.
    stop_ramp : braking / accelerating time (seconds).
    start_time_ns : header stamp of frame 0 (ns since the epoch).

    World
    -----
    route_length : metres of road populated with buildings, cars, trees and poles (the road
        itself goes on; frames past it see an empty road).
    curviness : scale of the road's curvature (0 = straight).
    lead_vehicles : vehicles in the ego lane ahead of the camera: the first ``lead_gap`` metres
        ahead, each next one a car length plus 3–10 m further. At ``traffic_speed_ratio`` 1 they
        keep their image position, the classic failure case of self-supervised depth.
    side_vehicles : vehicles in the neighbouring lane, driving in the ego's direction: the first
        (a truck, like every third one) beside the camera, the next ones staggered ahead. With
        side vehicles the neighbouring lane carries them instead of oncoming traffic.
    traffic_speed_ratio : speed of the lead and side vehicles / the ego speed, at every instant
        (1 = keep pace; they slow down and stop with the ego). A lead vehicle keeps its rear at
        least 4 m ahead of the camera and 2 m ahead of the lead vehicle behind it (when the ego
        catches up with slower traffic, the queue is pushed ahead at the ego's pace).
    oncoming_per_km, parked_per_km : traffic density.
    max_distance : objects farther than this (metres) are not drawn (the road and sky are).

    Photometry
    ----------
    sun_elevation_deg, sun_azimuth_deg : direction of the light (azimuth from ``+X`` towards ``+Y``).
    exposure_jitter : relative amplitude of a slow random exposure change (0 = constant).
    noise_std : Gaussian sensor noise, in 8-bit grey levels (0 = none).
    """

    width: int = 640
    height: int = 192
    hfov_deg: float = 90.0
    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    distortion: tuple[float, float, float, float, float] | None = None
    supersample: int = 2
    camera_height: float = 1.5
    pitch_deg: float = 0.0
    lane_offset: float = -1.75
    speed: float = 10.0
    fps: float = 10.0
    stops: tuple[tuple[float, float], ...] = ()
    stop_ramp: float = 2.0
    start_time_ns: int = 1_700_000_000_000_000_000
    route_length: float = 1500.0
    curviness: float = 1.0
    lead_vehicles: int = 1
    side_vehicles: int = 0
    traffic_speed_ratio: float = 1.0
    lead_gap: float = 14.0
    oncoming_per_km: float = 14.0
    parked_per_km: float = 60.0
    max_distance: float = 300.0
    sun_elevation_deg: float = 40.0
    sun_azimuth_deg: float = 55.0
    exposure_jitter: float = 0.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`DualDepthError` with a clear message for any impossible option."""

        def bad(msg: str) -> None:
            raise DualDepthError(msg)

        for name in ("width", "height", "supersample", "lead_vehicles", "side_vehicles"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                bad(f"{name} must be an integer, got {v!r}")
        if self.width < 16 or self.height < 16:
            bad(f"image size must be at least 16x16 pixels, got {self.width}x{self.height}")
        if self.width * self.height > MAX_PIXELS:
            bad(f"image size {self.width}x{self.height} is too large (at most {MAX_PIXELS} pixels)")
        if not 1 <= self.supersample <= 4:
            bad(f"supersample must be 1..4, got {self.supersample}")
        if not 10.0 <= self.hfov_deg <= 150.0:
            bad(f"hfov_deg must be in [10, 150], got {self.hfov_deg}")
        for name in ("fx", "fy"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                bad(f"{name} must be positive, got {v}")
        if not 0.3 <= self.camera_height <= 5.0:
            bad(f"camera_height must be in [0.3, 5] m, got {self.camera_height}")
        if not -20.0 <= self.pitch_deg <= 20.0:
            bad(f"pitch_deg must be in [-20, 20], got {self.pitch_deg}")
        if abs(self.lane_offset) > 3.4:
            bad(f"lane_offset must keep the camera on the road (|d| <= 3.4 m), got {self.lane_offset}")
        if not (math.isfinite(self.speed) and 0.0 <= self.speed <= 40.0):
            bad(f"speed must be in [0, 40] m/s, got {self.speed}")
        if not (math.isfinite(self.fps) and 0.1 <= self.fps <= 120.0):
            bad(f"fps must be in [0.1, 120] Hz, got {self.fps}")
        if self.stop_ramp <= 0:
            bad(f"stop_ramp must be positive, got {self.stop_ramp}")
        prev_end = -math.inf
        for t0, dur in sorted(self.stops):
            if dur < 0:
                bad(f"stop duration must be non-negative, got {dur}")
            if t0 - self.stop_ramp < prev_end:
                bad(f"stops overlap (each needs {self.stop_ramp} s to brake and to accelerate)")
            prev_end = t0 + dur + self.stop_ramp
        if self.distortion is not None:
            if len(self.distortion) != 5:
                bad(f"distortion needs 5 plumb_bob coefficients (k1, k2, p1, p2, k3), got {len(self.distortion)}")
        if self.route_length <= 0 or self.max_distance <= 10:
            bad("route_length must be positive and max_distance > 10 m")
        if not 0 <= self.curviness <= 3:
            bad(f"curviness must be in [0, 3], got {self.curviness}")
        if self.lead_gap < 6:
            bad(f"lead_gap must be at least 6 m, got {self.lead_gap}")
        for name in ("lead_vehicles", "side_vehicles"):
            if not 0 <= getattr(self, name) <= MAX_TRAFFIC_VEHICLES:
                bad(f"{name} must be 0..{MAX_TRAFFIC_VEHICLES}, got {getattr(self, name)}")
        if not (math.isfinite(self.traffic_speed_ratio) and 0.0 <= self.traffic_speed_ratio <= 3.0):
            bad(f"traffic_speed_ratio must be in [0, 3] (vehicle speed / ego speed), got {self.traffic_speed_ratio}")
        if self.exposure_jitter < 0 or self.exposure_jitter > 0.5 or self.noise_std < 0:
            bad("exposure_jitter must be in [0, 0.5] and noise_std non-negative")

    # -- derived ------------------------------------------------------------------------
    def intrinsics(self) -> Intrinsics:
        """The pinhole camera (``K``; also the rectified camera ``P`` when distortion is on)."""
        fx = self.fx if self.fx is not None else (self.width / 2) / math.tan(math.radians(self.hfov_deg) / 2)
        fy = self.fy if self.fy is not None else fx
        cx = self.cx if self.cx is not None else (self.width - 1) / 2
        cy = self.cy if self.cy is not None else (self.height - 1) / 2
        return Intrinsics(float(fx), float(fy), float(cx), float(cy), int(self.width), int(self.height))

    def distortion_coeffs(self) -> np.ndarray:
        """``D`` as 5 float64 values (zeros for an ideal pinhole)."""
        return np.zeros(5) if self.distortion is None else np.asarray(self.distortion, dtype=np.float64)

    def frame_time(self, index: int) -> float:
        """Time (seconds since the start) of frame ``index``."""
        return index / self.fps

    def stamp_ns(self, t: float) -> int:
        """Header stamp (ns) of time ``t`` seconds after the start."""
        return int(self.start_time_ns + round(t * 1e9))
