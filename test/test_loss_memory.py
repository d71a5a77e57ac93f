"""The memory-lean loss evaluation is exact: same loss, same gradients as the map-level reference.

The terms evaluate their reconstructions one unit at a time and checkpoint each unit
(``loss.photometric.checkpoint``, :mod:`dualdepth_ros.losses.context`). The reference below is the
straightforward evaluation they replaced: every map of a scale kept (``LossContext.views``,
``branch_maps``), the terms reading those maps, everything batched. Both run on the same model,
clip and random auto-mask tie-breakers; the total, every term and the gradient of every parameter
must agree to float32 round-off. A second test shows what the units save: the tensors autograd keeps
for the losses' backward pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import dualdepth_ros.losses as losses_pkg
from dualdepth_ros.config import load_config
from dualdepth_ros.geometry import Intrinsics, backproject, sample, transform_points, warp
from dualdepth_ros.losses import (
    REGISTRY,
    LossContext,
    automask,
    clip_layout,
    compute_losses,
    confidence_loss,
    edge_aware_smoothness,
    featuremetric_error,
    masked_mean,
    min_mean_first_difference,
    occlusion_mask,
    scale_invariant_log_error,
    select_reprojection,
    structure_consistency,
    two_branch_terms,
)
from dualdepth_ros.losses.context import K_at, resize, resize_depth
from dualdepth_ros.networks import DepthModel


# ---------------------------------------------------------------------------------------
# The reference: the map-level evaluation (every map of a scale kept, terms read the maps)
# ---------------------------------------------------------------------------------------
def _ref_photometric(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    tgt, srcs, scales = ctx.layout.target, ctx.layout.sources, ctx.cfg.model.scales
    total = 0.0
    for s in scales:
        views = ctx.views(s)
        photo = ctx.photometric(views, tgt, srcs)
        if cfg.bidirectional:
            photo = photo + sum(ctx.photometric(views, r, (tgt,)) for r in srcs) / len(srcs)
        total = total + photo / len(scales)
    return {"photometric": total}


def _ref_structure(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    scales, p = ctx.cfg.model.scales, ctx.lc.photometric
    total = 0.0
    for s in scales:
        views = ctx.views(s)
        kept = {}
        if p.automask and p.automask_scope == "all":  # the pixels the photometric auto-mask keeps, per grid
            for g in dict.fromkeys(g for g, _ in views):
                sources = ctx.grid_sources(g)
                vs = [views[(g, r)] for r in sources]
                err, _, _ = select_reprojection([v.error for v in vs], [v.valid for v in vs], p.reprojection)
                kept[g] = automask(err, ctx.identity(g, sources))
        dsc = [masked_mean(v.depth_diff, v.valid * kept.get(g, 1.0)) for (g, _), v in views.items()]
        total = total + sum(dsc) / len(dsc) / len(scales)
    return {"structure": total}


def _ref_smoothness(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    frames, scales, nb = ctx.layout.depth_frames, ctx.cfg.model.scales, ctx.cfg.model.num_branches
    if cfg.weight > 0:
        total = 0.0
        for s in scales:
            sm = 0.0
            for f in frames:
                if cfg.target == "fused":
                    d_list = [ctx.outputs[("depth_fused", f, s)]]
                else:
                    d_list = [ctx.outputs[("depth", f, b, s)] for b in range(nb)]
                for d in d_list:
                    d = d.float()
                    sm = sm + edge_aware_smoothness(1.0 / d, ctx.color(f, tuple(d.shape[-2:]))) / len(d_list)
            total = total + sm / len(frames) / (2**s) / len(scales)
        out["smoothness"] = total
    if cfg.feature_weight > 0:
        feat = ctx.outputs[("features", ctx.layout.target)][0].float()
        out["feature_smoothness"] = edge_aware_smoothness(feat, ctx.color(ctx.layout.target, tuple(feat.shape[-2:])))
    return out


def _ref_temporal(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    tgt, lc = ctx.layout.target, ctx.lc
    v = ctx.views(0)[(tgt, -1)]
    prev = ctx.depth(-1, 0)
    with torch.no_grad():
        dd = v.depth_diff
        if dd is None:
            dd = structure_consistency(v.warp.z, sample(prev, v.warp.pix), lc.structure.erf_eps)
        mask = v.valid * (dd < cfg.max_depth_diff).to(v.valid.dtype)
    z_prev_in_t = transform_points(ctx.T(-1, tgt), backproject(prev, ctx.K))[:, 2:3]
    warped_prev = sample(z_prev_in_t, v.warp.pix)
    return {"temporal": scale_invariant_log_error(ctx.depth(tgt, 0), warped_prev, mask, cfg.si_lambda)}


def _ref_featuremetric(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    lc, tgt, srcs = ctx.lc, ctx.layout.target, ctx.layout.sources
    feats = {}
    for f in (tgt, *srcs):
        x = ctx.outputs[("features", f)][0].float()
        feats[f] = x.detach() if cfg.detach_features else x
    size = tuple(feats[tgt].shape[-2:])
    K = K_at(ctx.K, ctx.size, size)
    d = {f: resize_depth(ctx.depth(f, 0), size) for f in (tgt, *srcs)}
    pairs = [p for r in srcs for p in ((tgt, r), (r, tgt))]
    n = len(pairs)
    w = warp(
        torch.cat([feats[src] for _, src in pairs]),
        torch.cat([d[g] for g, _ in pairs]),
        torch.cat([ctx.T(g, src) for g, src in pairs]),
        K.repeat(n, 1, 1),
    )
    mask = w.valid
    if lc.occlusion.enabled:
        mask = mask * occlusion_mask(
            torch.cat([d[g] for g, _ in pairs]),
            torch.cat([d[src] for _, src in pairs]),
            torch.cat([ctx.T(g, src) for g, src in pairs]),
            torch.cat([ctx.T(src, g) for g, src in pairs]),
            K.repeat(n, 1, 1),
            lc.occlusion.alpha1,
            lc.occlusion.alpha2,
        )
    kept = [ctx.kept_by_automask(g) for g, _ in pairs]
    if all(k is not None for k in kept):
        mask = mask * (F.interpolate(torch.cat(kept), size=size, mode="area") > 0.5).to(mask.dtype)
    err = masked_mean(featuremetric_error(torch.cat([feats[g] for g, _ in pairs]), w.image), mask)
    return {"featuremetric": err.view(n, -1).sum(0) / len(srcs)}


def _ref_branch_terms(ctx: LossContext, s: int) -> list[tuple[Any, ...]]:
    def make() -> list[tuple[Any, ...]]:
        identity = [ctx.identity(g, srcs, "min") for g, srcs in ctx.layout.branch_grids]
        ident = None if any(i is None for i in identity) else identity
        return [two_branch_terms(es, vs, ident) for es, vs in ctx.branch_maps(s)]

    return ctx._cached(("ref_branch_terms", s), make)


def _rule_scales(ctx: LossContext) -> list[int]:
    return [s for s in ctx.cfg.model.scales if s in ctx.lc.two_branch.scales]


def _ref_two_branch(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    scales = _rule_scales(ctx)
    b1 = b2 = 0.0
    for s in scales:
        per_branch = _ref_branch_terms(ctx, s)
        b1 = b1 + per_branch[0][0] / len(scales)
        if cfg.difference_loss == "first_difference":
            b2 = b2 + per_branch[1][1] / len(scales)
        else:
            b2 = b2 + (per_branch[1][0] + per_branch[1][1]) / len(scales)
    return {"branch_min": b1, "branch_difference": b2}


def _ref_confidence(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    grids = [g for g, _ in ctx.layout.branch_grids]
    scales, rule_scales = ctx.cfg.model.scales, _rule_scales(ctx)
    sel = cal = 0.0
    for s in scales:
        per_branch = _ref_branch_terms(ctx, s if s in rule_scales else 0)
        for i, g in enumerate(grids):
            logits = [resize(ctx.outputs[("conf_logit", g, b, s)].float(), ctx.size) for b in range(2)]
            errs = [per_branch[b][2][i] for b in range(2)]
            mask = per_branch[0][3][i] * per_branch[1][3][i]
            sl, cl = confidence_loss(logits, errs, mask, cfg.selection_tau, cfg.calibration_tau)
            sel = sel + sl / len(grids) / len(scales)
            cal = cal + cl / len(grids) / len(scales)
    return {"conf_selection": sel, "conf_calibration": cal}


def _ref_gate_statistic(self: LossContext) -> torch.Tensor:
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


_REFERENCE = {
    "photometric": _ref_photometric,
    "structure": _ref_structure,
    "smoothness": _ref_smoothness,
    "temporal": _ref_temporal,
    "featuremetric": _ref_featuremetric,
    "two_branch": _ref_two_branch,
    "confidence": _ref_confidence,
}


@contextlib.contextmanager
def reference_terms(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """compute_losses with the map-level terms (the pose prior and the scale anchor are unchanged)."""
    with monkeypatch.context() as m:
        for name, fn in _REFERENCE.items():
            m.setitem(REGISTRY, name, dataclasses.replace(REGISTRY[name], fn=fn))
        m.setattr(LossContext, "gate_statistic", lambda self: self._cached("gate", lambda: _ref_gate_statistic(self)))
        yield


# ---------------------------------------------------------------------------------------
# A small clip
# ---------------------------------------------------------------------------------------
W, H, B = 64, 32, 2


def _clip(cfg: Any, w: int = W, h: int = H, b: int = B) -> dict[Any, torch.Tensor]:
    """A smooth random scene panning sideways, so that warps, masks and the gate see real structure."""
    g = torch.Generator().manual_seed(1)
    scene = F.avg_pool2d(torch.rand(b, 3, h + 8, w + 24, generator=g), 5, 1, 2)
    frames = clip_layout(cfg).frames
    batch = {("color", f, 0): scene[..., 4 : 4 + h, 12 + 2 * f : 12 + 2 * f + w].contiguous() for f in frames}
    batch[("K", 0)] = Intrinsics(fx=0.58 * w, fy=1.92 * h, cx=(w - 1) / 2, cy=(h - 1) / 2, width=w, height=h).tensor(b)
    return batch


def _step(cfg: Any, batch: dict, reference: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    """Loss terms and parameter gradients of one step of a freshly seeded model."""
    torch.manual_seed(0)
    model = DepthModel(cfg).train()
    outputs = model(batch)
    torch.manual_seed(7)  # the auto-mask tie-breakers: the same draws in the same order on both paths
    with reference_terms(monkeypatch) if reference else contextlib.nullcontext():
        total, terms = compute_losses(batch, outputs, cfg)
    total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"total": total.detach(), **{k: v.detach() for k, v in terms.items()}}, grads


CASES = {
    "full method": ("train", []),
    "full method, gate off": ("train", ["loss.two_branch.gate=false"]),
    "variants": (
        "train",
        [
            "loss.two_branch.gate=false",
            "loss.structure.detach_weight=false",
            "loss.featuremetric.detach_features=false",
            "loss.photometric.bidirectional=false",
            "loss.two_branch.difference_loss=mean",
            "loss.two_branch.scales=[0,1]",
            "loss.smoothness.target=branches",
        ],
    ),
    "no occlusion, structure, automask": (
        "train",
        ["loss.two_branch.gate=false", "loss.occlusion.enabled=false", "loss.structure.enabled=false"]
        + ["loss.photometric.automask=false", "loss.photometric.rho=l1"],
    ),
    "auto-mask on every warp term": ("train", ["loss.photometric.automask_scope=all"]),
    "monodepth2 baseline": ("monodepth2", []),
}


def _assert_exact(new: tuple[dict, dict], ref: tuple[dict, dict]) -> None:
    (terms_n, grads_n), (terms_r, grads_r) = new, ref
    assert terms_n.keys() == terms_r.keys()
    for k in terms_r:
        torch.testing.assert_close(terms_n[k], terms_r[k], rtol=1e-5, atol=1e-7, msg=k)
    assert grads_n.keys() == grads_r.keys() and len(grads_r) > 50
    for name, g in grads_r.items():
        # relative to the tensor's largest gradient: a 1e-5 error of the largest entry is round-off
        err = float((grads_n[name] - g).abs().max())
        scale = float(g.abs().max())
        assert err <= 1e-5 * scale + 1e-12, (name, err, scale)


@pytest.mark.parametrize("case", list(CASES))
def test_memory_lean_loss_equals_the_map_level_reference(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loss, every term and every parameter's gradient: checkpointed units = unchecked units = reference."""
    config, overrides = CASES[case]
    cfg = load_config(config, overrides=[f"input.width={W}", f"input.height={H}", *overrides])
    batch = _clip(cfg)
    ref = _step(cfg, batch, True, monkeypatch)
    if cfg.loss.two_branch.enabled and not cfg.loss.two_branch.gate:
        assert float(ref[0]["branch_min"].abs().min()) > 0  # the rule's terms are live in this clip
    _assert_exact(_step(cfg, batch, False, monkeypatch), ref)  # checkpointed units (the default)
    cfg.loss.photometric.checkpoint = False
    _assert_exact(_step(cfg, batch, False, monkeypatch), ref)
    _assert_exact(_step(cfg, batch, True, monkeypatch), ref)  # the reference with SSIM not checkpointed


# ---------------------------------------------------------------------------------------
# What the units save
# ---------------------------------------------------------------------------------------
def _saved_bytes(fn: Any, exclude: frozenset[int] = frozenset()) -> int:
    """Bytes of the distinct storages (but ``exclude``'s) autograd keeps for backward while ``fn`` runs."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in exclude:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_checkpointed_units_keep_almost_nothing_for_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The full method's losses keep < 5 % of what the map-level reference keeps, and less than 1/10 of
    the networks' own activations; no loss context (and its cache of maps) outlives the call.
    """
    cfg = load_config("train", overrides=["input.width=128", "input.height=64", "loss.two_branch.gate=false"])
    batch = _clip(cfg, 128, 64, 1)
    torch.manual_seed(0)
    model = DepthModel(cfg).train()
    params = frozenset(p.untyped_storage().data_ptr() for p in model.parameters())
    holder: dict[str, Any] = {}
    networks = _saved_bytes(lambda: holder.update(out=model(batch)), params)  # activations only
    out = holder["out"]
    # what the networks return lives until the step ends anyway: count only what the losses add
    kept = params | {t.untyped_storage().data_ptr() for v in out.values() for t in (v if isinstance(v, list) else [v])}
    contexts: list[weakref.ref] = []

    class Recorded(LossContext):
        def __init__(self, *a: Any) -> None:
            super().__init__(*a)
            contexts.append(weakref.ref(self))

    monkeypatch.setattr(losses_pkg, "LossContext", Recorded)
    lean = _saved_bytes(lambda: holder.update(lean=compute_losses(batch, out, cfg)), kept)
    with reference_terms(monkeypatch):
        reference = _saved_bytes(lambda: holder.update(ref=compute_losses(batch, out, cfg)), kept)
    cfg.loss.photometric.checkpoint = False
    unchecked = _saved_bytes(lambda: holder.update(unchecked=compute_losses(batch, out, cfg)), kept)
    with reference_terms(monkeypatch):
        ref_unchecked = _saved_bytes(lambda: holder.update(ref_unchecked=compute_losses(batch, out, cfg)), kept)
    print(
        f"saved for backward: networks {networks}, losses {lean} (reference {reference}); "
        f"checkpoint off: {unchecked} (reference {ref_unchecked}) B"
    )
    assert lean < 0.05 * reference, (lean, reference)
    assert lean < 0.1 * networks, (lean, networks)
    assert unchecked < ref_unchecked, (unchecked, ref_unchecked)  # one unit at a time: no batched copies kept
    assert len(contexts) == 4 and all(c() is None for c in contexts)  # freed although the graphs live on


def test_bench_memory_live_runs_the_step_with_freed_buffers_returned() -> None:
    """``bench memory --live`` measures with glibc's mmap threshold fixed (and the default without it)."""
    from dualdepth_ros.bench.memory import LIVE_MMAP_THRESHOLD, _measure

    live = _measure(64, 32, 1, ["monodepth2"], [], live=True)
    assert live["mmap_threshold"] == str(LIVE_MMAP_THRESHOLD)
    assert live["peak_gib"] >= live["before_gib"] > 0
    assert _measure(64, 32, 1, ["monodepth2"], [], live=False)["mmap_threshold"] is None
