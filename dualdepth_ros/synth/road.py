"""The road: a gently curving centreline, road coordinates and the ego vehicle's speed profile.

World frame (``world``): right-handed, ``X`` along the road's initial direction, ``Y`` to the
left, ``Z`` up, origin on the road centreline at the start, the road surface is ``Z = 0``.

The centreline is the graph ``Y = c(X)``, a sum of two sinusoids (curvature radius ≥ ~250 m
at ``curviness = 1``). Road coordinates of a point are ``(s, d)``: ``s`` the arc length of
its foot point on the centreline, ``d`` its signed distance from the centreline along the
left normal (positive left). Vehicles drive on lines of constant ``d`` (right-hand traffic:
the ego lane has ``d < 0``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Road", "SpeedProfile"]


@dataclasses.dataclass
class Road:
    """Centreline ``Y = Σ a_k sin(w_k X + φ_k)`` and its arc-length table.

    Parameters
    ----------
    amps, freqs, phases : the sinusoids (metres, rad/m, rad).
    x_min, x_max : range of the arc-length table (metres of ``X``); outside it ``s`` is extrapolated.
    """

    amps: np.ndarray
    freqs: np.ndarray
    phases: np.ndarray
    x_min: float = -2000.0
    x_max: float = 8000.0

    @classmethod
    def from_rng(cls, rng: np.random.Generator, curviness: float, length: float) -> Road:
        amps = np.array([15.0, 4.0]) * curviness
        freqs = 2 * np.pi / np.array([700.0, 260.0])
        phases = rng.uniform(0, 2 * np.pi, size=2)
        # Start on a straight-ish, level heading: remove the offset and slope at X = 0.
        return cls(amps, freqs, phases, x_min=-2000.0, x_max=max(8000.0, 2.0 * length + 4000.0))

    def __post_init__(self) -> None:
        self._xs = np.arange(self.x_min, self.x_max + 0.25, 0.5)
        slope = self.slope(self._xs)
        ds = np.sqrt(1 + slope**2)
        s = np.concatenate([[0.0], np.cumsum(0.5 * (ds[1:] + ds[:-1]) * np.diff(self._xs))])
        self._ss = s - np.interp(0.0, self._xs, s)
        y0 = float(self._raw_y(np.array(0.0)))
        self._y0 = y0

    # -- the curve ----------------------------------------------------------------------
    def _raw_y(self, x):
        ang = np.multiply.outer(np.asarray(x, dtype=np.float64), self.freqs) + self.phases
        return (np.sin(ang) * self.amps).sum(-1)

    def y(self, x: np.ndarray) -> np.ndarray:
        """Centreline ``Y`` (metres) at ``X``; ``c(0) = 0``."""
        return self._raw_y(x) - self._y0

    def slope(self, x: np.ndarray) -> np.ndarray:
        """``dY/dX`` at ``X``."""
        ang = np.multiply.outer(np.asarray(x, dtype=np.float64), self.freqs) + self.phases
        return (np.cos(ang) * (self.amps * self.freqs)).sum(-1)

    def heading(self, x: np.ndarray) -> np.ndarray:
        """Heading ``ψ`` (rad, from ``+X`` towards ``+Y``) of the centreline at ``X``."""
        return np.arctan(self.slope(x))

    def s_of_x(self, x: np.ndarray) -> np.ndarray:
        """Arc length ``s`` (metres) of the centreline point at ``X`` (``s = 0`` at ``X = 0``)."""
        x = np.asarray(x, dtype=np.float64)
        s = np.interp(x, self._xs, self._ss)
        # Linear extrapolation beyond the table (only reached by rays near the horizon).
        s = np.where(x > self._xs[-1], self._ss[-1] + (x - self._xs[-1]), s)
        return np.where(x < self._xs[0], self._ss[0] + (x - self._xs[0]), s)

    def x_of_s(self, s: np.ndarray) -> np.ndarray:
        """``X`` of the centreline point at arc length ``s`` (inverse of :meth:`s_of_x`)."""
        return np.interp(np.asarray(s, dtype=np.float64), self._ss, self._xs)

    def frame_at(self, s: np.ndarray, d: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point at road coordinates ``(s, d)`` on the road surface.

        Returns
        -------
        X, Y : world position (metres); psi : heading of the centreline there (rad).
        """
        x = self.x_of_s(s)
        psi = self.heading(x)
        return x - np.sin(psi) * d, self.y(x) + np.cos(psi) * d, psi

    def road_coords(self, X: np.ndarray, Y: np.ndarray, iterations: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Road coordinates ``(s, d)`` of world points (float arrays of any shape; float32 is fine).

        The foot point is found by Newton steps along the curve from ``X``; two steps are exact
        to well below a millimetre for the curvatures used here.
        """
        dt = X.dtype if np.issubdtype(X.dtype, np.floating) else np.float64
        x = X.astype(dt, copy=True)
        f = self.freqs.astype(dt)
        ph = self.phases.astype(dt)
        a = self.amps.astype(dt)
        y0 = dt.type(self._y0) if hasattr(dt, "type") else self._y0
        for _ in range(iterations + 1):
            ang0 = x * f[0] + ph[0]
            ang1 = x * f[1] + ph[1]
            yc = a[0] * np.sin(ang0) + a[1] * np.sin(ang1) - y0
            yp = a[0] * f[0] * np.cos(ang0) + a[1] * f[1] * np.cos(ang1)
            if _ == iterations:
                break
            x += ((X - x) + (Y - yc) * yp) / (1 + yp * yp)
        d = ((Y - yc) - (X - x) * yp) / np.sqrt(1 + yp * yp)
        return self.s_of_x(x).astype(dt), d


@dataclasses.dataclass(frozen=True)
class SpeedProfile:
    """Ego speed ``v(t)`` (m/s): cruise at ``speed``, with smooth full stops.

    Each stop ``(t_stop, duration)`` brakes over ``[t_stop − ramp, t_stop]`` (cosine ramp),
    stands still over ``[t_stop, t_stop + duration]`` and accelerates back over the next ``ramp``.
    The distance ``s(t)`` is the exact integral of ``v``.
    """

    speed: float
    stops: tuple[tuple[float, float], ...] = ()
    ramp: float = 2.0

    def _dip_integral(self, t: np.ndarray, t0: float, dur: float) -> np.ndarray:
        """``∫₀ᵗ dip(τ) dτ`` where ``dip`` is 0 → 1 (brake), 1 (stand), 1 → 0 (accelerate)."""
        r = self.ramp
        a, b, c = t0 - r, t0 + dur, t0 + dur + r

        def up(x):  # ∫ (1 − cos(π x / r)) / 2 over [0, x], x in [0, r]
            return x / 2 - r / (2 * np.pi) * np.sin(np.pi * x / r)

        t = np.asarray(t, dtype=np.float64)
        out = np.zeros_like(t)
        out = np.where(t > a, up(np.clip(t - a, 0, r)), out)
        out = np.where(t > t0, up(r) + np.clip(t - t0, 0, dur), out)
        # Accelerating: dip = (1 + cos(π x / r)) / 2 = 1 − (rising ramp).
        x = np.clip(t - b, 0, r)
        out = np.where(t > b, up(r) + dur + x - up(x), out)
        out = np.where(t > c, up(r) + dur + r - up(r), out)
        return out

    def distance(self, t: np.ndarray | float) -> np.ndarray:
        """Distance travelled since ``t = 0`` (metres)."""
        t = np.asarray(t, dtype=np.float64)
        s = t.copy()
        for t0, dur in self.stops:
            s = s - (self._dip_integral(t, t0, dur) - self._dip_integral(np.zeros_like(t), t0, dur))
        return self.speed * s

    def velocity(self, t: np.ndarray | float) -> np.ndarray:
        """Speed at ``t`` (m/s), numerically from :meth:`distance` (for summaries and tests)."""
        h = 1e-4
        return (self.distance(np.asarray(t) + h) - self.distance(np.asarray(t) - h)) / (2 * h)
