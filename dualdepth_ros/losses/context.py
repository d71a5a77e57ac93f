"""What the terms of one :func:`~dualdepth_ros.losses.compute_losses` call share, computed once.

A :class:`LossContext` wraps the batch and the network outputs and computes, lazily and at most
once, everything more than one term needs: depths at the input resolution, the reprojections of
the photometric term and their masks (:meth:`LossContext.views`, shared with the structure and
temporal terms), the per-branch reprojection maps of the two-branch rule (:meth:`branch_maps`,
shared by the minimum, the first difference and the confidences), the auto-mask identity errors.

Speed: every set of warps is one :func:`~dualdepth_ros.geometry.warp` call on the concatenated
batch and every set of photometric errors one :func:`photometric_error` call, so each SSIM filter
runs once per set instead of once per map.

Precision: everything here is float32, whatever the autocast state: network outputs are cast on
the way in and autocast is off inside (:func:`fp32`); back-projection, projection, pose
composition, sampling grids and SSIM in bfloat16 are off by pixels at 640×192.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from ..geometry import WarpResult, pixel_grid, sample, scale_intrinsics, warp
from .consistency import occlusion_mask, structure_consistency
from .photometric import automask, masked_mean, min_mean_first_difference, photometric_error, select_reprojection
from .registry import clip_layout

__all__ = ["View", "LossContext", "fp32", "resize_depth", "resize"]


@contextlib.contextmanager
def fp32(device_type: str) -> Iterator[None]:
    """Autocast off: what runs inside stays in the dtype of its (float32) inputs."""
    with torch.autocast(device_type=device_type, enabled=False):
        yield


@dataclasses.dataclass
class View:
    """Grid ``g`` reconstructed from frame ``r``: error, validity, photometric weight, depth_diff."""

    warp: WarpResult
    error: torch.Tensor
    valid: torch.Tensor
    weight: torch.Tensor
    depth_diff: torch.Tensor | None


def resize_depth(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize depth by bilinear interpolation of inverse depth (monodepth2 upsamples disparity)."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return 1.0 / F.interpolate(1.0 / depth, size=size, mode="bilinear", align_corners=False)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``B×C×H×W`` (``area`` for images going down, bilinear otherwise)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def K_at(K: torch.Tensor, full: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``K`` (at ``full``) for another resolution ``size`` (half-pixel rule)."""
    return scale_intrinsics(K, size[1] / full[1], size[0] / full[0])


class LossContext:
    """Shared, cached state of one loss evaluation (see the module docstring).

    Parameters
    ----------
    batch, outputs, cfg : as :func:`~dualdepth_ros.losses.compute_losses` takes them.
    """

    def __init__(self, batch: Mapping[Any, Any], outputs: Mapping[Any, Any], cfg: Any) -> None:
        self.batch, self.outputs, self.cfg = batch, outputs, cfg
        self.lc = cfg.loss
        p = self.lc.photometric
        self.pe_kwargs = dict(alpha=p.alpha, rho=p.rho, eps=p.erf_eps, c1=p.ssim_c1, c2=p.ssim_c2)
        self.layout = clip_layout(cfg)
        img0 = batch[("color", self.layout.target, 0)]
        self.size = (int(img0.shape[-2]), int(img0.shape[-1]))
        self.bsz = int(img0.shape[0])
        self.device = img0.device
        self.K = batch[("K", 0)].float()
        self._cache: dict[Any, Any] = {}

    def _cached(self, key: Any, make: Any) -> Any:
        """``make()`` once per key, in float32 whatever the caller's autocast state."""
        if key not in self._cache:
            with fp32(self.device.type):
                self._cache[key] = make()
        return self._cache[key]

    # -- inputs, as float32 ---------------------------------------------------------------------
    def color(self, f: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``B×3×H×W`` frame ``f`` (what the losses compare), at ``size`` (area-resized) if given."""
        if size is None or tuple(size) == self.size:
            return self._cached(("color", f), lambda: self.batch[("color", f, 0)].float())
        for key in (k for k in self.batch if isinstance(k, tuple) and k[:2] == ("color", f)):
            t = self.batch[key]
            if tuple(t.shape[-2:]) == tuple(size):
                return t.float()
        return self._cached(("color", f, tuple(size)), lambda: resize(self.color(f), size, "area"))

    def T(self, a: int, b: int) -> torch.Tensor:
        """``B×4×4`` ``T_a_to_b`` (float32)."""
        return self._cached(("T", a, b), lambda: self.outputs[("T", a, b)].float())

    def depth(self, f: int, s: int, branch: int | None = None) -> torch.Tensor:
        """``B×1×H×W`` depth of frame ``f`` at scale ``s`` upsampled to the input size (fused, or one branch)."""
        key = ("depth_fused", f, s) if branch is None else ("depth", f, branch, s)
        return self._cached(("depth_full", *key), lambda: resize_depth(self.outputs[key].float(), self.size))

    # -- batched warps and photometric errors ---------------------------------------------------
    def warp_many(self, jobs: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> list[WarpResult]:
        """One :func:`warp` for several ``(source image, target depth, T_target_to_source)`` jobs of ``B`` samples."""
        n = len(jobs)
        src = torch.cat([j[0] for j in jobs]).float()
        depth = torch.cat([j[1] for j in jobs]).float()
        T = torch.cat([j[2] for j in jobs]).float()
        K = self.K if n == 1 else self.K.repeat(n, 1, 1)
        with fp32(self.device.type):
            w = warp(src, depth, T, K)
        parts = [torch.split(t, self.bsz) for t in (w.image, w.valid, w.pix, w.z)]
        return [WarpResult(*(p[i] for p in parts)) for i in range(n)]

    def pe_many(self, preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Photometric error maps of several ``(pred, target)`` pairs in one call (checkpointed if configured)."""
        fn = functools.partial(photometric_error, **self.pe_kwargs)
        checkpoint = self.lc.photometric.checkpoint and torch.is_grad_enabled()

        def one(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            pred, target = pred.float(), target.float()
            with fp32(self.device.type):
                if checkpoint and (pred.requires_grad or target.requires_grad):
                    # Keep only the inputs; recompute SSIM's ~20 full-resolution intermediates in backward.
                    return torch.utils.checkpoint.checkpoint(fn, pred, target, use_reentrant=False)
                return fn(pred, target)

        if self.device.type == "cpu":
            # One map at a time: SSIM is memory-bound, and a map of B samples stays in cache (measured 2–4×
            # faster per pixel than one call on the concatenation).
            return [one(p, t) for p, t in zip(preds, targets)]
        return list(torch.split(one(torch.cat(list(preds)), torch.cat(list(targets))), self.bsz))

    def identity(self, g: int, sources: Sequence[int], mode: str | None = None) -> torch.Tensor | None:
        """Auto-mask identity error of grid ``g``: selected ``pe(I_g, I_s)`` + 1e-5 noise (None when off)."""
        p = self.lc.photometric
        if not p.automask:
            return None
        mode = mode or p.reprojection

        def make() -> torch.Tensor:
            with torch.no_grad():
                errs = self.pe_many([self.color(s) for s in sources], [self.color(g)] * len(sources))
                sel, _, _ = select_reprojection(errs, [torch.ones_like(e) for e in errs], mode)
                return sel + p.automask_noise * torch.randn_like(sel)

        return self._cached(("identity", g, mode, *sources), make)

    # -- the photometric term's reconstructions (shared with structure and temporal) ------------
    def views(self, s: int) -> dict[tuple[int, int], View]:
        """Scale ``s``: the target from each source and, bidirectionally, each source from the target."""
        return self._cached(("views", s), lambda: self._views(s))

    def _views(self, s: int) -> dict[tuple[int, int], View]:
        lc, tgt, srcs = self.lc, self.layout.target, self.layout.sources
        pairs = [(tgt, r) for r in srcs]
        if lc.photometric.bidirectional:
            pairs += [(r, tgt) for r in srcs]
        depth = {f: self.depth(f, s) for f in self.layout.depth_frames}
        warps = dict(zip(pairs, self.warp_many([(self.color(r), depth[g], self.T(g, r)) for g, r in pairs])))
        errors = self.pe_many([w.image for w in warps.values()], [self.color(g) for g, _ in pairs])
        h, wd = self.size
        grid = pixel_grid(h, wd, device=self.device, dtype=torch.float32)[:2].unsqueeze(0)
        out: dict[tuple[int, int], View] = {}
        for ((g, r), w), error in zip(warps.items(), errors):
            valid = w.valid
            if lc.occlusion.enabled:
                back = warps.get((r, g))
                flow_back = None if back is None else (back.pix - grid).detach()
                valid = valid * occlusion_mask(
                    depth[g],
                    depth[r],
                    self.T(g, r),
                    self.T(r, g),
                    self.K,
                    lc.occlusion.alpha1,
                    lc.occlusion.alpha2,
                    pix=w.pix.detach(),
                    flow_back=flow_back,
                )
            dd = None
            weight = torch.ones_like(valid)
            if lc.structure.enabled:
                dd = structure_consistency(w.z, sample(depth[r], w.pix), lc.structure.erf_eps)
                if lc.structure.weight_photometric:
                    weight = 1 - (dd.detach() if lc.structure.detach_weight else dd)
            out[(g, r)] = View(w, error, valid, weight, dd)
        return out

    def photometric(self, views: Mapping[tuple[int, int], View], g: int, sources: Sequence[int]) -> torch.Tensor:
        """Photometric term of grid ``g`` over ``sources``: selection, weights, auto-mask → ``B``."""
        vs = [views[(g, r)] for r in sources]
        mode = self.lc.photometric.reprojection
        err, any_valid, share = select_reprojection([v.error for v in vs], [v.valid for v in vs], mode)
        weight = (share * torch.cat([v.weight for v in vs], 1)).sum(1, keepdim=True)
        mask = any_valid
        ident = self.identity(g, sources)
        if ident is not None:
            mask = mask * automask(err, ident)
        return masked_mean(weight * err, mask)

    # -- the two-branch rule's reconstructions (shared by both branches' terms and the confidences) --
    def branch_maps(self, s: int) -> list[tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]]:
        """Per branch, per grid, per neighbour: plain reprojection error and validity maps at scale ``s``.

        Each grid is reconstructed with *that branch's* depth (CN114037087A: each branch gets its
        own gradient). All ``branches × grids × neighbours`` warps and errors are one call each.
        """
        return self._cached(("branch_maps", s), lambda: self._branch_maps(s))

    def _branch_maps(self, s: int) -> list[tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]]:
        grids = self.layout.branch_grids
        jobs = [(b, g, r) for b in range(self.cfg.model.num_branches) for g, srcs in grids for r in srcs]
        warps = self.warp_many([(self.color(r), self.depth(g, s, b), self.T(g, r)) for b, g, r in jobs])
        errors = self.pe_many([w.image for w in warps], [self.color(g) for _, g, _ in jobs])
        it = iter(zip(warps, errors))
        out = []
        for _ in range(self.cfg.model.num_branches):
            es, vs = [], []
            for _, srcs in grids:
                pairs = [next(it) for _ in srcs]
                es.append([e for _, e in pairs])
                vs.append([w.valid for w, _ in pairs])
            out.append((es, vs))
        return out

    def gate_statistic(self) -> torch.Tensor:
        """``B``: the largest, over the rule's grids, image-mean first difference of the fused depth (scale 0)."""

        def make() -> torch.Tensor:
            grids = self.layout.branch_grids
            jobs = [(g, r) for g, srcs in grids for r in srcs]
            with torch.no_grad():
                warps = self.warp_many([(self.color(r), self.depth(g, 0), self.T(g, r)) for g, r in jobs])
                errors = self.pe_many([w.image for w in warps], [self.color(g) for g, _ in jobs])
                it = iter(zip(warps, errors))
                stats = []
                for _, srcs in grids:
                    pairs = [next(it) for _ in srcs]
                    _, _, fd, any_valid = min_mean_first_difference([e for _, e in pairs], [w.valid for w, _ in pairs])
                    stats.append(masked_mean(fd, any_valid))
                return torch.stack(stats).amax(0)

        return self._cached("gate", make)
