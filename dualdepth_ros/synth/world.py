"""The procedural street: road layout, static objects, traffic and the ego trajectory.

Layout across the road (``d`` = lateral road coordinate, metres, left positive)::

    |  lot  | sidewalk |curb| parking | lane (oncoming) | lane (ego) | parking |curb| sidewalk |  lot  |
            -8.7      -5.7  -3.5       0 centre line               3.5       5.7        8.7

Buildings stand on the lots at random setbacks (with gaps between them), poles and trees on
the sidewalks, parked cars in the parking strips; moving cars drive in the lanes (oncoming traffic,
or, with ``side_vehicles``, cars and trucks in the ego's direction beside it). Every
object is a box (with a yaw about the vertical), a vertical cylinder or a sphere, so a ray
hits it analytically. All randomness comes from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from .config import SynthConfig
from .road import Road, SpeedProfile
from .textures import TEXTURES, TextureBank

__all__ = [
    "World",
    "Objects",
    "LANE_WIDTH",
    "ROAD_HALF_WIDTH",
    "CURB_HEIGHT",
    "SIDEWALK_WIDTH",
    "BOX",
    "CYLINDER",
    "SPHERE",
    "KIND_NAMES",
]

LANE_WIDTH = 3.5
PARKING_WIDTH = 2.2
ROAD_HALF_WIDTH = LANE_WIDTH + PARKING_WIDTH
CURB_HEIGHT = 0.15
SIDEWALK_WIDTH = 3.0

BOX, CYLINDER, SPHERE = 0, 1, 2
BUILDING, CAR_BODY, CAR_CABIN, WHEEL, POLE, TRUNK, CROWN = range(7)
KIND_NAMES = ("building", "car_body", "car_cabin", "wheel", "pole", "trunk", "crown")

_CAR_COLOURS = np.array(
    [
        [0.60, 0.04, 0.03],
        [0.05, 0.12, 0.45],
        [0.70, 0.70, 0.68],
        [0.03, 0.03, 0.035],
        [0.35, 0.36, 0.38],
        [0.85, 0.85, 0.82],
        [0.08, 0.25, 0.10],
        [0.75, 0.45, 0.05],
        [0.25, 0.05, 0.20],
    ],
    dtype=np.float32,
)


@dataclasses.dataclass
class Objects:
    """Struct of arrays, one row per primitive (world frame, metres).

    Attributes
    ----------
    shape : ``BOX``, ``CYLINDER`` (vertical axis) or ``SPHERE``.
    kind : what it is (``BUILDING`` … ``CROWN``), which selects its material.
    centre : ``N×3`` centre; half : ``N×3`` half extents along its own axes (cylinder:
        ``(r, r, half height)``; sphere: ``(r, r, r)``); yaw : rotation about ``Z`` (rad).
    albedo : ``N×3`` linear RGB; tex : texture index; texoff : ``N×2`` texture offset (m).
    params : ``N×6`` material parameters (facade: floor height, bay width, window width,
        window height, sill height, glass brightness).
    moving : part of a moving car; s : road coordinate along the road (for culling).
    """

    shape: np.ndarray
    kind: np.ndarray
    centre: np.ndarray
    half: np.ndarray
    yaw: np.ndarray
    albedo: np.ndarray
    tex: np.ndarray
    texoff: np.ndarray
    params: np.ndarray
    moving: np.ndarray
    s: np.ndarray

    @staticmethod
    def empty() -> Objects:
        return Objects.build([])

    @staticmethod
    def build(rows: list[dict]) -> Objects:
        n = len(rows)

        def col(key, width=None, dtype=np.float64, default=0.0):
            if width is None:
                return np.array([r.get(key, default) for r in rows], dtype=dtype).reshape(n)
            return np.array([r.get(key, [default] * width) for r in rows], dtype=dtype).reshape(n, width)

        return Objects(
            shape=col("shape", dtype=np.int8),
            kind=col("kind", dtype=np.int8),
            centre=col("centre", 3),
            half=col("half", 3),
            yaw=col("yaw"),
            albedo=col("albedo", 3, np.float32),
            tex=col("tex", dtype=np.int64),
            texoff=col("texoff", 2, np.float32),
            params=col("params", 6, np.float32),
            moving=col("moving", dtype=bool, default=False),
            s=col("s"),
        )

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def subset(self, idx: np.ndarray) -> Objects:
        return Objects(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

    @staticmethod
    def concat(parts: list[Objects]) -> Objects:
        return Objects(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Objects)}
        )


def _vehicle_box(x, y, yaw, rng_vals, moving: bool, s: float):
    """A function ``at(forward, z, half, kind, albedo, params)`` giving one box row of a vehicle at ``(x, y)``.

    ``forward`` (m) is the box centre's offset along the heading ``yaw``, ``z`` (m) its height; every box
    of the vehicle has the paint texture, offset by ``rng_vals[3:5]``.
    """
    c, sn = math.cos(yaw), math.sin(yaw)
    tex = TEXTURES["paint"][0]
    toff = [float(rng_vals[3] * 10), float(rng_vals[4] * 10)]

    def at(forward: float, z: float, half, kind, albedo, params=(0, 0, 0, 0, 0, 0)):
        return {
            "shape": BOX,
            "kind": kind,
            "centre": [x + c * forward, y + sn * forward, z],
            "half": half,
            "yaw": yaw,
            "albedo": albedo,
            "tex": tex,
            "texoff": toff,
            "params": params,
            "moving": moving,
            "s": s,
        }

    return at


def _car_rows(x, y, yaw, length, width, colour, rng_vals, moving: bool, s: float) -> list[dict]:
    """The four boxes of a car (body, cabin, two axles) at ground point ``(x, y)`` heading ``yaw``."""
    at = _vehicle_box(x, y, yaw, rng_vals, moving, s)
    body_top = 0.95 + 0.12 * rng_vals[0]
    cabin_h = 0.45 + 0.12 * rng_vals[1]
    cab_len = length * (0.50 + 0.1 * rng_vals[2])
    cab_off = -0.08 * length
    wheel_r = 0.31
    glass = float(0.05 + 0.05 * rng_vals[5])
    return [
        at(0.0, (0.28 + body_top) / 2, [length / 2, width / 2, (body_top - 0.28) / 2], CAR_BODY, colour,
           (length, width, body_top, 0, 0, glass)),
        at(cab_off, body_top + cabin_h / 2, [cab_len / 2, width / 2 - 0.08, cabin_h / 2], CAR_CABIN, colour,
           (cab_len, width - 0.16, cabin_h, 0, 0, glass)),
        at(0.33 * length, wheel_r, [wheel_r, width / 2 + 0.01, wheel_r], WHEEL, [0.03, 0.03, 0.03]),
        at(-0.33 * length, wheel_r, [wheel_r, width / 2 + 0.01, wheel_r], WHEEL, [0.03, 0.03, 0.03]),
    ]  # fmt: skip


def _truck_rows(x, y, yaw, length, width, colour, rng_vals, moving: bool, s: float) -> list[dict]:
    """The six boxes of a truck of ``length`` metres (cab in front of a tall cargo box, three axles) at ``(x, y)``."""
    at = _vehicle_box(x, y, yaw, rng_vals, moving, s)
    cab_len = 2.2
    box_len = length - cab_len - 0.2
    box_top = 3.4 + 0.4 * rng_vals[0]
    cab_top = 2.8 + 0.2 * rng_vals[1]
    glass = float(0.05 + 0.05 * rng_vals[5])
    cargo = np.clip(colour * 0.4 + 0.55, 0.0, 1.0)  # light cargo box, cab in the paint colour
    wheel_r = 0.5
    front = length / 2
    return [
        at(front - 0.2 - cab_len - box_len / 2, (0.9 + box_top) / 2, [box_len / 2, width / 2, (box_top - 0.9) / 2],
           CAR_BODY, cargo, (box_len, width, box_top, 0, 0, glass)),
        at(front - cab_len / 2, 1.15, [cab_len / 2, width / 2, 0.55], CAR_BODY, colour,
           (cab_len, width, 1.7, 0, 0, glass)),
        at(front - cab_len / 2 - 0.1, (1.7 + cab_top) / 2, [cab_len / 2 - 0.1, width / 2 - 0.05, (cab_top - 1.7) / 2],
           CAR_CABIN, colour, (cab_len - 0.2, width - 0.1, cab_top - 1.7, 0, 0, glass)),
        at(front - 1.1, wheel_r, [wheel_r, width / 2 + 0.01, wheel_r], WHEEL, [0.03, 0.03, 0.03]),
        at(-front + 2.4, wheel_r, [wheel_r, width / 2 + 0.01, wheel_r], WHEEL, [0.03, 0.03, 0.03]),
        at(-front + 1.2, wheel_r, [wheel_r, width / 2 + 0.01, wheel_r], WHEEL, [0.03, 0.03, 0.03]),
    ]  # fmt: skip


@functools.lru_cache(maxsize=4)
def _texture_bank(seed: int) -> TextureBank:
    return TextureBank(seed)


@dataclasses.dataclass
class _Movers:
    """Moving vehicles: road position ``s(t) = s0 + v·t``, or for traffic that follows the ego
    (``pace``) ``s0 + traffic_speed_ratio · ego_s(t)``; ``lead`` ones queue in the ego lane.
    """

    s0: np.ndarray
    v: np.ndarray
    d: np.ndarray
    backwards: np.ndarray
    length: np.ndarray
    width: np.ndarray
    colour: np.ndarray
    rng_vals: np.ndarray
    lead: np.ndarray
    pace: np.ndarray
    truck: np.ndarray

    @staticmethod
    def concat(parts: list[_Movers]) -> _Movers:
        return _Movers(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(_Movers)}
        )


class World:
    """A seeded street scene with its ego trajectory. Build with :meth:`from_seed`.

    Attributes
    ----------
    config : the :class:`SynthConfig`. seed : the seed.
    road : the :class:`Road` centreline. motion : the ego :class:`SpeedProfile`.
    textures : the :class:`TextureBank`. static : every static primitive (:class:`Objects`).
    """

    def __init__(self, config: SynthConfig, seed: int) -> None:
        self.config = config
        self.seed = int(seed)
        rng = np.random.default_rng([self.seed, 0x5EED])
        self.route_length = float(config.route_length)
        self.road = Road.from_rng(rng, config.curviness, self.route_length)
        self.motion = SpeedProfile(float(config.speed), tuple(config.stops), float(config.stop_ramp))
        self.textures = _texture_bank(self.seed)
        self.static = self._generate_static(rng)
        self._movers = self._generate_movers(rng)
        self._exposure_phases = rng.uniform(0, 2 * np.pi, size=3)
        el, az = math.radians(config.sun_elevation_deg), math.radians(config.sun_azimuth_deg)
        self.sun = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        self._ray_cache: tuple | None = None  # filled by the renderer (ray tables depend only on the camera)

    @classmethod
    def from_seed(cls, seed: int, config: SynthConfig | None = None) -> World:
        """The world of ``seed`` (same seed and config → identical frames)."""
        return cls(config or SynthConfig(), seed)

    # -- generation ---------------------------------------------------------------------
    def _place(self, s: float, d: float) -> tuple[float, float, float]:
        x, y, psi = self.road.frame_at(np.array(s), np.array(d))
        return float(x), float(y), float(psi)

    def _generate_static(self, rng: np.random.Generator) -> Objects:
        rows: list[dict] = []
        s_end = self.route_length + self.config.max_distance
        lot_edge = ROAD_HALF_WIDTH + SIDEWALK_WIDTH
        for side in (-1.0, 1.0):
            # Buildings: blocks of random length, gaps (sometimes none), setbacks and heights.
            s = -40.0 + rng.uniform(0, 10)
            while s < s_end:
                length = rng.uniform(8, 28)
                depth = rng.uniform(8, 16)
                setback = rng.choice([rng.uniform(0.5, 2.5), rng.uniform(2.5, 9.0)])
                height = rng.uniform(5, 22)
                sc = s + length / 2
                x, y, psi = self._place(sc, side * (lot_edge + setback + depth / 2))
                style = rng.random()
                tex = TEXTURES["brick"][0] if style < 0.5 else TEXTURES["plaster"][0]
                base = rng.uniform(0.35, 0.75) * np.array(
                    [1.0, rng.uniform(0.75, 0.95), rng.uniform(0.55, 0.85)]
                    if style < 0.5
                    else [rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0), rng.uniform(0.75, 1.0)]
                )
                floor_h = rng.uniform(2.9, 3.6)
                bay = rng.uniform(2.4, 4.0)
                rows.append(
                    {
                        "shape": BOX,
                        "kind": BUILDING,
                        "centre": [x, y, height / 2],
                        "half": [length / 2, depth / 2, height / 2],
                        "yaw": psi,
                        "albedo": base,
                        "tex": tex,
                        "texoff": rng.uniform(0, 50, size=2),
                        "params": [floor_h, bay, bay * rng.uniform(0.35, 0.6), floor_h * rng.uniform(0.4, 0.55),
                                   rng.uniform(0.7, 1.0), rng.uniform(0.04, 0.12)],
                        "s": sc,
                    }
                )  # fmt: skip
                gap = 0.0 if rng.random() < 0.35 else rng.uniform(2.0, 14.0)
                s += length + gap
            # Street lights / sign poles near the curb.
            s = rng.uniform(0, 20)
            while s < s_end:
                x, y, _ = self._place(s, side * (ROAD_HALF_WIDTH + 0.45))
                h = rng.uniform(5.5, 8.0)
                r = rng.uniform(0.07, 0.12)
                rows.append(
                    {
                        "shape": CYLINDER,
                        "kind": POLE,
                        "centre": [x, y, CURB_HEIGHT + h / 2],
                        "half": [r, r, h / 2],
                        "albedo": [0.32, 0.33, 0.34],
                        "tex": TEXTURES["metal"][0],
                        "texoff": rng.uniform(0, 10, size=2),
                        "s": s,
                    }
                )
                s += rng.uniform(22, 45)
            # Trees on the outer sidewalk.
            s = rng.uniform(0, 15)
            while s < s_end:
                if rng.random() < 0.7:
                    x, y, _ = self._place(s, side * (ROAD_HALF_WIDTH + SIDEWALK_WIDTH - 0.8))
                    th = rng.uniform(2.0, 3.0)
                    tr = rng.uniform(0.12, 0.2)
                    cr = rng.uniform(1.3, 2.3)
                    rows.append(
                        {
                            "shape": CYLINDER,
                            "kind": TRUNK,
                            "centre": [x, y, CURB_HEIGHT + th / 2],
                            "half": [tr, tr, th / 2],
                            "albedo": [0.22, 0.15, 0.09],
                            "tex": TEXTURES["bark"][0],
                            "texoff": rng.uniform(0, 10, size=2),
                            "s": s,
                        }
                    )
                    green = np.array([rng.uniform(0.08, 0.2), rng.uniform(0.25, 0.4), rng.uniform(0.04, 0.12)])
                    rows.append(
                        {
                            "shape": SPHERE,
                            "kind": CROWN,
                            "centre": [x, y, CURB_HEIGHT + th + 0.75 * cr],
                            "half": [cr, cr, cr],
                            "albedo": green,
                            "tex": TEXTURES["leaves"][0],
                            "texoff": rng.uniform(0, 10, size=2),
                            "s": s,
                        }
                    )
                s += rng.uniform(12, 30)
            # Parked cars in the parking strip, in clusters.
            s = rng.uniform(0, 10)
            mean_gap = max(1000.0 / max(self.config.parked_per_km, 1e-3) - 4.5, 0.5)
            while s < s_end and self.config.parked_per_km > 0:
                length = rng.uniform(3.9, 4.8)
                width = rng.uniform(1.7, 1.9)
                sc = s + length / 2
                d = side * (LANE_WIDTH + PARKING_WIDTH / 2 + rng.uniform(-0.15, 0.1))
                x, y, psi = self._place(sc, d)
                yaw = psi + (math.pi if side > 0 else 0.0) + rng.uniform(-0.03, 0.03)
                colour = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]
                rows += _car_rows(x, y, yaw, length, width, colour, rng.random(6), False, sc)
                s += length + (rng.uniform(0.8, 2.5) if rng.random() < 0.6 else rng.exponential(mean_gap))
        return Objects.build(rows)

    def _generate_movers(self, rng: np.random.Generator) -> _Movers:
        cfg = self.config
        s0, v, d, back, lead = [], [], [], [], []
        if cfg.lead_vehicles > 0:
            s0.append(cfg.lead_gap)
            v.append(0.0)
            d.append(cfg.lane_offset)
            back.append(False)
            lead.append(True)
        # Oncoming traffic in the other lane: spread over the stretch the ego will meet.
        if cfg.oncoming_per_km > 0 and cfg.side_vehicles == 0:
            span = self.route_length * 2 + cfg.max_distance
            n = rng.poisson(cfg.oncoming_per_km * span / 1000.0)
            for s in np.sort(rng.uniform(20.0, span, size=n)):
                s0.append(float(s))
                v.append(-rng.uniform(7.0, 14.0))
                d.append(LANE_WIDTH / 2 if cfg.lane_offset < 0 else -LANE_WIDTH / 2)
                back.append(True)
                lead.append(False)
        n = len(s0)
        first = _Movers(
            s0=np.array(s0, dtype=np.float64),
            v=np.array(v, dtype=np.float64),
            d=np.array(d, dtype=np.float64),
            backwards=np.array(back, dtype=bool),
            length=rng.uniform(3.9, 4.8, size=n),
            width=rng.uniform(1.7, 1.9, size=n),
            colour=_CAR_COLOURS[rng.integers(len(_CAR_COLOURS), size=n)],
            rng_vals=rng.random((n, 6)),
            lead=np.array(lead, dtype=bool),
            pace=np.array(lead, dtype=bool),
            truck=np.zeros(n, dtype=bool),
        )
        # More traffic that follows the ego comes from its own random stream, so the default world
        # (one lead car) is the same as before these options existed.
        extra = self._generate_traffic(np.random.default_rng([self.seed, 0x7AFF1C]), first)
        return first if extra is None else _Movers.concat([first, extra])

    def _generate_traffic(self, rng: np.random.Generator, first: _Movers) -> _Movers | None:
        """Lead vehicles after the first and the side vehicles (``lead_vehicles``, ``side_vehicles``)."""
        cfg = self.config
        rows: list[tuple[float, float, bool, bool, float, float]] = []  # s0, d, lead, truck, length, width
        if cfg.lead_vehicles > 1:
            front = float(first.s0[0] + first.length[0] / 2)
            for _ in range(cfg.lead_vehicles - 1):
                length = rng.uniform(3.9, 4.8)
                centre = front + rng.uniform(3.0, 10.0) + length / 2
                rows.append((centre, cfg.lane_offset, True, False, length, rng.uniform(1.7, 1.9)))
                front = centre + length / 2
        other_lane = -cfg.lane_offset
        rear = -3.0  # the first side vehicle, a truck, reaches 3 m behind the camera: it is beside the car
        for k in range(cfg.side_vehicles):
            truck = k % 3 == 0
            length = rng.uniform(9.0, 12.0) if truck else rng.uniform(3.9, 4.8)
            width = rng.uniform(2.4, 2.55) if truck else rng.uniform(1.7, 1.9)
            d = other_lane + rng.uniform(-0.25, 0.25)
            rows.append((rear + length / 2, d, False, truck, length, width))
            rear += length + rng.uniform(4.0, 12.0)
        if not rows:
            return None
        n = len(rows)
        col = np.array(rows, dtype=np.float64).reshape(n, 6)
        return _Movers(
            s0=col[:, 0],
            v=np.zeros(n),
            d=col[:, 1],
            backwards=np.zeros(n, dtype=bool),
            length=col[:, 4],
            width=col[:, 5],
            colour=_CAR_COLOURS[rng.integers(len(_CAR_COLOURS), size=n)],
            rng_vals=rng.random((n, 6)),
            lead=col[:, 2].astype(bool),
            pace=np.ones(n, dtype=bool),
            truck=col[:, 3].astype(bool),
        )

    # -- state at time t ----------------------------------------------------------------
    def ego_s(self, t: float) -> float:
        """Road coordinate ``s`` of the ego camera at time ``t`` (seconds)."""
        return float(self.motion.distance(np.asarray(t, dtype=np.float64)))

    def camera_pose(self, t: float) -> np.ndarray:
        """``T_cam_to_world`` (4×4 float64) of the camera optical frame at time ``t`` (seconds).

        The camera looks along the road's tangent, pitched down by ``pitch_deg``, at
        ``camera_height`` above the road and ``lane_offset`` from the centreline.
        """
        cfg = self.config
        x, y, psi = self._place(self.ego_s(t), cfg.lane_offset)
        f = np.array([math.cos(psi), math.sin(psi), 0.0])
        left = np.array([-math.sin(psi), math.cos(psi), 0.0])
        up = np.array([0.0, 0.0, 1.0])
        th = math.radians(cfg.pitch_deg)
        z_opt = math.cos(th) * f - math.sin(th) * up
        y_opt = -math.cos(th) * up - math.sin(th) * f
        x_opt = -left
        T = np.eye(4)
        T[:3, 0], T[:3, 1], T[:3, 2] = x_opt, y_opt, z_opt
        T[:3, 3] = [x, y, cfg.camera_height]
        return T

    def mover_positions(self, t: float) -> np.ndarray:
        """Road coordinate ``s`` (metres) of the centre of every moving vehicle at time ``t`` (seconds).

        Oncoming cars drive at their own constant speed; traffic that follows the ego (lead and
        side vehicles) is at ``s0 + traffic_speed_ratio · ego_s(t)``, and lead vehicles queue (their
        rear at least 4 m ahead of the camera and 2 m ahead of the lead vehicle behind them).
        """
        m = self._movers
        ego = self.ego_s(t)
        s = np.where(m.pace, m.s0 + self.config.traffic_speed_ratio * ego, m.s0 + m.v * t)
        behind = ego + 4.0 - 2.0  # the camera, as if it were a vehicle's front 2 m short of the 4 m margin
        for i in np.flatnonzero(m.lead):  # in order of s0: the queue ahead of the ego
            s[i] = max(s[i], behind + 2.0 + m.length[i] / 2)
            behind = s[i] + m.length[i] / 2
        return s

    @property
    def traffic(self) -> dict[str, int]:
        """How many vehicles of each kind the world has (for summaries)."""
        m = self._movers
        return {
            "lead": int(m.lead.sum()),
            "side": int((m.pace & ~m.lead).sum()),
            "trucks": int(m.truck.sum()),
            "oncoming": int((~m.pace).sum()),
        }

    def objects_at(self, t: float, s_min: float = -np.inf, s_max: float = np.inf) -> Objects:
        """Every primitive at time ``t`` whose road coordinate lies in ``[s_min, s_max]``."""
        keep = np.flatnonzero((self.static.s >= s_min) & (self.static.s <= s_max))
        parts = [self.static.subset(keep)]
        m = self._movers
        if len(m.s0):
            s = self.mover_positions(t)
            rows: list[dict] = []
            for i in np.flatnonzero((s >= s_min - 8) & (s <= s_max + 8)):
                x, y, psi = self._place(float(s[i]), float(m.d[i]))
                yaw = psi + (math.pi if m.backwards[i] else 0.0)
                make = _truck_rows if m.truck[i] else _car_rows
                rows += make(x, y, yaw, m.length[i], m.width[i], m.colour[i], m.rng_vals[i], True, float(s[i]))
            if rows:
                parts.append(Objects.build(rows))
        return Objects.concat(parts)

    def exposure(self, t: float) -> float:
        """Exposure gain at time ``t`` (1 when ``exposure_jitter`` is 0): a smooth random wave."""
        a = self.config.exposure_jitter
        if a == 0:
            return 1.0
        p = self._exposure_phases
        w = math.sin(0.9 * t + p[0]) * 0.6 + math.sin(2.3 * t + p[1]) * 0.3 + math.sin(5.1 * t + p[2]) * 0.1
        return float(1.0 + a * w)
