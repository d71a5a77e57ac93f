"""What the terms of one :func:`~dualdepth_ros.losses.compute_losses` call share, computed once.

A :class:`LossContext` wraps the batch and the network outputs and computes, lazily and at most
once, everything more than one term needs: the photometric term's per-grid values and per-pair
structure means (:meth:`LossContext.photometric_units`, shared with the structure term) and their
occlusion masks (:meth:`occlusion`, shared with the temporal term), each branch's two-branch terms
and per-grid minimum maps (:meth:`branch_units`, shared by the minimum, the first difference and
the confidences), the auto-mask identity errors, the gate statistic.

Memory: the terms evaluate their reconstructions one *unit* at a time (a grid with its sources, one
branch's grid, one feature pair, one confidence map …) with the pure functions at the end of this
module, and reduce each unit to per-sample values (``B``) at once; no full-resolution map outlives
its unit. With ``loss.photometric.checkpoint`` (the default) every unit is checkpointed: autograd
keeps only its inputs (the network outputs, which are kept anyway) and recomputes the unit in the
backward pass, so the losses add almost no activation memory to the networks'. The maths is the
same with and without it (test/test_loss_memory.py). What is shared between terms is small: the
detached occlusion masks and auto-mask identity errors, and per-sample values.

The map-level methods :meth:`LossContext.views`, :meth:`LossContext.photometric` and
:meth:`LossContext.branch_maps` keep every map of a scale (for inspection and tests); the terms do
not use them.

Precision: everything here is float32, whatever the autocast state: network outputs are cast on
the way in and autocast is off inside (:func:`fp32`); back-projection, projection, pose
composition, sampling grids and SSIM in bfloat16 are off by pixels at 640×192.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from ..geometry import WarpResult, backproject, pixel_grid, reproject, sample, scale_intrinsics, transform_points, warp
from .consistency import (
    edge_aware_smoothness,
    featuremetric_error,
    occlusion_mask,
    scale_invariant_log_error,
    structure_consistency,
)
from .photometric import automask, masked_mean, min_mean_first_difference, photometric_error, select_reprojection
from .registry import REGISTRY, clip_layout
from .two_branch import confidence_loss, two_branch_grid

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
        #: ``B`` per-sample weights of the two-branch gate (1 = kept); set by compute_losses before the terms.
        self.gate = torch.ones(self.bsz, device=self.device)
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
                valid = valid * self._occlusion_mask(depth, g, r, w.pix.detach(), flow_back)
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

    def grid_sources(self, g: int) -> tuple[int, ...]:
        """The frames the photometric term reconstructs grid ``g`` from: the target from every source, a source
        from the target.
        """
        tgt, srcs = self.layout.target, self.layout.sources
        return tuple(srcs) if g == tgt else (tgt,)

    def kept_by_automask(self, g: int) -> torch.Tensor | None:
        """``B×1×H×W`` float, 1 where the auto-mask keeps grid ``g``'s pixels at scale 0 (no gradient).

        The photometric term's selection of grid ``g`` (fused depth, flow-consistent pixels) against
        the unwarped sources' error. None unless ``loss.photometric.automask`` and ``automask_scope: all``:
        then the terms that read depth through a warp but have no identity error of their own (the
        feature-metric term) skip the pixels that look static, as the photometric term does.
        """
        p = self.lc.photometric
        if not p.automask or p.automask_scope != "all":
            return None

        def make() -> torch.Tensor:
            sources = self.grid_sources(g)
            with torch.no_grad():
                depth = self.depth(g, 0).detach()
                ws = self.warp_many([(self.color(r), depth, self.T(g, r).detach()) for r in sources])
                errors = self.pe_many([w.image for w in ws], [self.color(g)] * len(ws))
                occ = self.occlusion(0) if self.lc.occlusion.enabled else {}
                valids = [w.valid if (g, r) not in occ else w.valid * occ[(g, r)].to(w.valid.dtype)
                          for w, r in zip(ws, sources)]  # fmt: skip
                err, _, _ = select_reprojection(errors, valids, p.reprojection)
                return automask(err, self.identity(g, sources))

        return self._cached(("kept_by_automask", g), make)

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
            stats = []
            with torch.no_grad():
                for g, srcs in self.layout.branch_grids:  # one grid at a time: only its maps exist at once
                    depth = resize_depth(self.outputs[("depth_fused", g, 0)].float(), self.size)
                    warps = self.warp_many([(self.color(r), depth, self.T(g, r)) for r in srcs])
                    errors = self.pe_many([w.image for w in warps], [self.color(g)] * len(srcs))
                    _, _, fd, any_valid = min_mean_first_difference(errors, [w.valid for w in warps])
                    stats.append(masked_mean(fd, any_valid))
                return torch.stack(stats).amax(0)

        return self._cached("gate", make)

    # -- what the terms use: units reduced at once, checkpointed (see the module docstring) -------
    def unit(self, fn: Callable[..., Any], *args: torch.Tensor) -> Any:
        """``fn(*args)`` in float32; with ``loss.photometric.checkpoint``, when an argument needs a gradient,
        autograd keeps only ``args`` and recomputes ``fn`` in the backward pass.

        ``fn`` is one of this module's pure unit functions (``functools.partial`` of it): every tensor
        that needs a gradient is in ``args``; what it captures needs none and is not changed before
        the backward pass, and it draws no random numbers. It must not capture this context (that
        would keep the cache alive).
        """
        with fp32(self.device.type):
            if self.lc.photometric.checkpoint and torch.is_grad_enabled() and any(a.requires_grad for a in args):
                # The units draw no random numbers: no RNG state to save and restore.
                return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
            return fn(*args)

    def photometric_pairs(self) -> list[tuple[int, int]]:
        """``(grid, source)`` pairs of the photometric term: target from each source (and back, bidirectionally)."""
        tgt, srcs = self.layout.target, self.layout.sources
        pairs = [(tgt, r) for r in srcs]
        if self.lc.photometric.bidirectional:
            pairs += [(r, tgt) for r in srcs]
        return pairs

    def _occlusion_mask(
        self,
        depth: Mapping[int, torch.Tensor],
        g: int,
        r: int,
        pix: torch.Tensor,
        flow_back: torch.Tensor | None,
    ) -> torch.Tensor:
        """The flow-consistency occlusion mask of target ``g`` warped from ``r`` (``loss.occlusion``)."""
        occ = self.lc.occlusion
        return occlusion_mask(
            depth[g], depth[r], self.T(g, r), self.T(r, g), self.K, occ.alpha1, occ.alpha2, pix=pix, flow_back=flow_back
        )

    def occlusion(self, s: int) -> dict[tuple[int, int], torch.Tensor]:
        """Scale ``s``: per photometric pair the ``B×1×H×W`` bool flow-consistent pixels (no gradient)."""

        def make() -> dict[tuple[int, int], torch.Tensor]:
            pairs = self.photometric_pairs()
            h, w = self.size
            with torch.no_grad():
                depth = {
                    f: resize_depth(self.outputs[("depth_fused", f, s)].float(), self.size) for f in {*sum(pairs, ())}
                }
                pix = {(g, r): reproject(depth[g], self.T(g, r), self.K, self.size)[0] for g, r in pairs}
                grid = pixel_grid(h, w, device=self.device, dtype=torch.float32)[:2].unsqueeze(0)
                out = {}
                for g, r in pairs:
                    back = pix.get((r, g))
                    mask = self._occlusion_mask(depth, g, r, pix[(g, r)], None if back is None else back - grid)
                    out[(g, r)] = mask > 0
                return out

        return self._cached(("occlusion", s), make)

    def photometric_units(self, s: int) -> tuple[dict[int, torch.Tensor], dict[tuple[int, int], torch.Tensor]]:
        """Scale ``s``: per grid of the photometric term its value, per pair its mean ``depth_diff`` (all ``B``).

        The same quantities as :meth:`photometric` of :meth:`views` and the structure term's means,
        computed one grid at a time (:func:`_photometric_grid`).
        """
        return self._cached(("photometric_units", s), lambda: self._photometric_units(s))

    def _photometric_units(self, s: int) -> tuple[dict[int, torch.Tensor], dict[tuple[int, int], torch.Tensor]]:
        lc, tgt, srcs = self.lc, self.layout.target, self.layout.sources
        grids = [(tgt, srcs)]
        if lc.photometric.bidirectional:
            grids += [(r, (tgt,)) for r in srcs]
        occ = self.occlusion(s) if lc.occlusion.enabled else {}
        photometric_on = REGISTRY["photometric"].enabled(self.cfg)
        st = lc.structure
        photo: dict[int, torch.Tensor] = {}
        dsc: dict[tuple[int, int], torch.Tensor] = {}
        for g, sources in grids:
            fn = functools.partial(
                _photometric_grid,
                size=self.size,
                K=self.K,
                color_g=self.color(g),
                colors=[self.color(r) for r in sources],
                occlusion=[occ.get((g, r)) for r in sources],
                identity=self.identity(g, sources) if photometric_on else None,
                pe_kwargs=self.pe_kwargs,
                mode=lc.photometric.reprojection,
                structure_eps=st.erf_eps if st.enabled else None,
                weight_photometric=st.enabled and st.weight_photometric,
                detach_weight=st.detach_weight,
                structure_mask=lc.photometric.automask_scope == "all",
            )
            depth_frames = (g, *sources) if st.enabled else (g,)  # the sources' depth: structure only
            depths = [self.outputs[("depth_fused", f, s)] for f in depth_frames]
            values = self.unit(fn, *depths, *[self.T(g, r) for r in sources])
            photo[g] = values[0]
            dsc.update(zip([(g, r) for r in sources], values[1:]))
        return photo, dsc

    def branch_units(self, s: int) -> list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]:
        """Scale ``s``, per branch: :func:`~.two_branch.two_branch_terms` of that branch's own maps.

        ``(minimum, first_difference, per-grid minimum maps, per-grid any-valid maps)``; the maps are
        detached (the confidences use them as targets only). One grid of one branch at a time.
        """
        return self._cached(("branch_units", s), lambda: self._branch_units(s))

    def _branch_units(self, s: int) -> list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]:
        grids = self.layout.branch_grids
        identity = [self.identity(g, srcs, "min") for g, srcs in grids]
        out = []
        for b in range(self.cfg.model.num_branches):
            mins, fds, maps, masks = [], [], [], []
            for (g, srcs), ident in zip(grids, identity):
                fn = functools.partial(
                    _branch_grid,
                    size=self.size,
                    K=self.K,
                    color_g=self.color(g),
                    colors=[self.color(r) for r in srcs],
                    identity=ident,
                    pe_kwargs=self.pe_kwargs,
                )
                mn, fd, mn_map, any_valid = self.unit(
                    fn, self.outputs[("depth", g, b, s)], *[self.T(g, r) for r in srcs]
                )
                mins.append(mn)
                fds.append(fd)
                maps.append(mn_map)
                masks.append(any_valid)
            out.append((torch.stack(mins).mean(0), torch.stack(fds).mean(0), maps, masks))
        return out


# ---------------------------------------------------------------------------------------
# Units: pure functions of network outputs → per-sample values (what LossContext.unit checkpoints)
# ---------------------------------------------------------------------------------------
def _photometric_grid(
    *tensors: torch.Tensor,
    size: tuple[int, int],
    K: torch.Tensor,
    color_g: torch.Tensor,
    colors: Sequence[torch.Tensor],
    occlusion: Sequence[torch.Tensor | None],
    identity: torch.Tensor | None,
    pe_kwargs: Mapping[str, Any],
    mode: str,
    structure_eps: float | None,
    weight_photometric: bool,
    detach_weight: bool,
    structure_mask: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Grid ``g`` reconstructed from each of its sources with its fused depth (photometric term, method.md §2–5).

    ``tensors`` = ``depth_g, [depth_source… (with the structure term)], T_g_to_source…`` (depths at
    the network's resolution; upsampled here).
    Returns the grid's photometric value (selection, ``1 − depth_diff`` weight, auto-mask) and, with
    the structure term, each source's mean ``depth_diff`` over its valid, flow-consistent pixels (all ``B``),
    and with ``structure_mask`` only over those the auto-mask keeps (``loss.photometric.automask_scope: all``).
    """
    n = len(colors)
    depth_g = resize_depth(tensors[0].float(), size)
    Ts = tensors[-n:]
    depths = tensors[1 : 1 + n] if structure_eps is not None else [None] * n
    errors, valids, weights, dds = [], [], [], []
    for color_r, d_r, T, occ in zip(colors, depths, Ts, occlusion):
        w = warp(color_r, depth_g, T.float(), K)
        errors.append(photometric_error(w.image, color_g, **pe_kwargs))
        valid = w.valid if occ is None else w.valid * occ.to(w.valid.dtype)
        weight = torch.ones_like(valid)
        if structure_eps is not None:
            dd = structure_consistency(w.z, sample(resize_depth(d_r.float(), size), w.pix), structure_eps)
            if weight_photometric:
                weight = 1 - (dd.detach() if detach_weight else dd)
            dds.append(dd)
        valids.append(valid)
        weights.append(weight)
        del w
    err, any_valid, share = select_reprojection(errors, valids, mode)
    weight = (share * torch.cat(weights, 1)).sum(1, keepdim=True)
    kept = None if identity is None else automask(err, identity)
    mask = any_valid if kept is None else any_valid * kept
    if structure_mask and kept is not None:  # automask_scope all: the structure term skips them too
        dsc = [masked_mean(dd, valid * kept) for dd, valid in zip(dds, valids)]
    else:
        dsc = [masked_mean(dd, valid) for dd, valid in zip(dds, valids)]
    return (masked_mean(weight * err, mask), *dsc)


def _branch_grid(
    depth: torch.Tensor,
    *Ts: torch.Tensor,
    size: tuple[int, int],
    K: torch.Tensor,
    color_g: torch.Tensor,
    colors: Sequence[torch.Tensor],
    identity: torch.Tensor | None,
    pe_kwargs: Mapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One grid of the two-branch rule with one branch's depth: :func:`~.two_branch.two_branch_grid`.

    Returns ``B`` minimum and first difference, and the detached minimum and any-valid maps.
    """
    d = resize_depth(depth.float(), size)
    errors, valids = [], []
    for color_r, T in zip(colors, Ts):
        w = warp(color_r, d, T.float(), K)
        errors.append(photometric_error(w.image, color_g, **pe_kwargs))
        valids.append(w.valid)
        del w
    mn, fd, mn_map, any_valid = two_branch_grid(errors, valids, identity)
    return mn, fd, mn_map.detach(), any_valid


def _confidence_unit(
    logit0: torch.Tensor,
    logit1: torch.Tensor,
    *,
    size: tuple[int, int],
    errors: Sequence[torch.Tensor],
    mask: torch.Tensor,
    selection_tau: float,
    calibration_tau: float,
    selection_pool: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~.two_branch.confidence_loss` of two branches' logits, upsampled to ``size``."""
    logits = [resize(lg.float(), size) for lg in (logit0, logit1)]
    return confidence_loss(logits, errors, mask, selection_tau, calibration_tau, selection_pool)


def _smoothness_unit(x: torch.Tensor, *, image: torch.Tensor, inverse: bool) -> torch.Tensor:
    """:func:`~.consistency.edge_aware_smoothness` of ``1/x`` (depth) or ``x`` (features) → ``B``."""
    x = x.float()
    return edge_aware_smoothness(1.0 / x if inverse else x, image)


def _featuremetric_unit(
    feat_g: torch.Tensor,
    feat_src: torch.Tensor,
    depth_g: torch.Tensor,
    T: torch.Tensor,
    *,
    K: torch.Tensor,
    occlusion: torch.Tensor | None,
) -> torch.Tensor:
    """``|f_g − f̂_src|`` over the valid (flow-consistent) pixels of the features' grid → ``B``."""
    d = resize_depth(depth_g.float(), tuple(feat_g.shape[-2:]))
    w = warp(feat_src.float(), d, T.float(), K)
    mask = w.valid if occlusion is None else w.valid * occlusion.to(w.valid.dtype)
    return masked_mean(featuremetric_error(feat_g.float(), w.image), mask)


def _temporal_unit(
    depth_t: torch.Tensor,
    depth_prev: torch.Tensor,
    T_t_to_prev: torch.Tensor,
    T_prev_to_t: torch.Tensor,
    *,
    size: tuple[int, int],
    K: torch.Tensor,
    occlusion: torch.Tensor | None,
    erf_eps: float,
    max_depth_diff: float,
    si_lambda: float,
) -> torch.Tensor:
    """Scale-invariant log difference of ``D_t`` and ``D_{t−1}`` warped into ``t`` on consistent pixels → ``B``."""
    depth = resize_depth(depth_t.float(), size)
    prev = resize_depth(depth_prev.float(), size)
    pix, z, valid = reproject(depth, T_t_to_prev.float(), K, size)
    with torch.no_grad():
        if occlusion is not None:
            valid = valid * occlusion.to(valid.dtype)
        dd = structure_consistency(z, sample(prev, pix), erf_eps)
        mask = valid * (dd < max_depth_diff).to(valid.dtype)
    # D_{t−1} warped into t: frame t−1's points expressed in camera t, sampled where t's pixels land.
    z_prev_in_t = transform_points(T_prev_to_t.float(), backproject(prev, K))[:, 2:3]
    return scale_invariant_log_error(depth, sample(z_prev_in_t, pix), mask, si_lambda)
