"""The loss-term registry: name → function, config section, weights (monodepth_benchmark style).

A term is one function decorated with :func:`loss_term`; its switches and weights are one section
under ``loss:`` of the training config (a dataclass in :mod:`dualdepth_ros.config` plus its block
in ``config/train.yaml``). :func:`~dualdepth_ros.losses.compute_losses` walks the registry in
registration order, so adding a term touches nothing else, and an ablation is one switch::

    @loss_term("structure", weights={"structure": "weight"}, reference_depth=True, source="CN113160294B")
    def structure(ctx: LossContext, cfg: StructureConfig) -> dict[str, torch.Tensor]:
        ...  # per-sample values (B) of each output named in ``weights``

The total is ``Σ_term Σ_output cfg.<weight attribute> · value`` (then the two-branch gate, see
:func:`~dualdepth_ros.losses.compute_losses`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["LossTerm", "REGISTRY", "loss_term", "enabled_terms", "ClipLayout", "clip_layout"]


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One registered term.

    Attributes
    ----------
    name : its config section under ``loss:`` (``cfg.loss.<name>``).
    fn : ``fn(ctx, section) → {output: B tensor}`` (unweighted per-sample values).
    weights : output name → the section's attribute holding its weight.
    enabled : ``enabled(cfg) → bool`` (default: the section's ``enabled`` switch, else any weight > 0).
    reference_depth : ``reference_depth(cfg) → bool``: the term needs the depth of the source frames.
    source : where the term comes from (method.md section / paper / patent).
    """

    name: str
    fn: Callable[..., dict[str, Any]]
    weights: Mapping[str, str]
    enabled: Callable[[Any], bool]
    reference_depth: Callable[[Any], bool]
    source: str = ""


#: Every term, in the order :func:`compute_losses` evaluates them.
REGISTRY: dict[str, LossTerm] = {}


def _default_enabled(name: str, weights: Mapping[str, str]) -> Callable[[Any], bool]:
    def enabled(cfg: Any) -> bool:
        section = getattr(cfg.loss, name)
        if hasattr(section, "enabled"):
            return bool(section.enabled)
        return any(getattr(section, w) > 0 for w in weights.values())

    return enabled


def loss_term(
    name: str,
    *,
    weights: Mapping[str, str],
    enabled: Callable[[Any], bool] | None = None,
    reference_depth: bool | Callable[[Any], bool] = False,
    source: str = "",
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Register the decorated function as loss term ``name`` (see the module docstring)."""

    def register(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        if name in REGISTRY:
            raise ValueError(f"loss term {name!r} is registered twice")
        ref = reference_depth if callable(reference_depth) else (lambda cfg, v=bool(reference_depth): v)
        REGISTRY[name] = LossTerm(name, fn, dict(weights), enabled or _default_enabled(name, weights), ref, source)
        return fn

    return register


def enabled_terms(cfg: Any) -> list[LossTerm]:
    """The registered terms that ``cfg`` switches on, in evaluation order."""
    return [t for t in REGISTRY.values() if t.enabled(cfg)]


# ---------------------------------------------------------------------------------------
# Clip layout
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ClipLayout:
    """Which frames a configuration needs (see :mod:`dualdepth_ros.losses`).

    Attributes
    ----------
    frames : offsets the batch must hold as ``("color", f, 0)``.
    depth_frames : offsets the depth net runs on.
    pose_pairs : adjacent ``(a, a + 1)`` pairs whose ``T`` is predicted (both directions are output).
    target : the frame of the standard photometric term.
    sources : its source (reference) frames.
    branch_grids : ``(grid, (source, source))`` of the two-branch rule; empty when it is off.
    """

    frames: tuple[int, ...]
    depth_frames: tuple[int, ...]
    pose_pairs: tuple[tuple[int, int], ...]
    target: int = 0
    sources: tuple[int, ...] = (-1, 1)
    branch_grids: tuple[tuple[int, tuple[int, int]], ...] = ()


def clip_layout(cfg: Any) -> ClipLayout:
    """The :class:`ClipLayout` of a :class:`~dualdepth_ros.config.Config`.

    Three frames ``(-1, 0, 1)``, with depth for all three when an enabled term needs a source
    frame's depth; five frames ``(-2 … 2)`` with the two-branch rule (its grids −1 and +1 are
    reconstructed from their own neighbours −2/0 and 0/+2).
    """
    from . import terms  # noqa: F401 - registers the terms

    if cfg.loss.two_branch.enabled:
        return ClipLayout(
            frames=(-2, -1, 0, 1, 2),
            depth_frames=(-1, 0, 1),
            pose_pairs=((-2, -1), (-1, 0), (0, 1), (1, 2)),
            branch_grids=((-1, (-2, 0)), (0, (-1, 1)), (1, (0, 2))),
        )
    need_ref_depth = any(t.reference_depth(cfg) for t in enabled_terms(cfg))
    return ClipLayout(
        frames=(-1, 0, 1),
        depth_frames=(-1, 0, 1) if need_ref_depth else (0,),
        pose_pairs=((-1, 0), (0, 1)),
    )
