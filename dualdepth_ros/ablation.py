"""``dualdepth ablate``: the ablation study, equal budget, one command, honest whatever it shows.

Every variant is one YAML file of ``config/ablations/`` (a named switch away from the full
method) stacked with the same budget file (input size, network width, steps, batch, seed), trained
on the same bags and evaluated on the same held-out drive with the same code as ``dualdepth
eval``. The result is a Markdown table (and JSON) of AbsRel, δ<1.25, AUSE, AURG and temporal
stability. Finished variants are skipped when the command is run again, so an interrupted
study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from .config import DEFAULT_CONFIG
from .errors import DualDepthError

CONFIG_DIR = DEFAULT_CONFIG.parent

#: (slug, label, config file relative to config/) — the order of the table.
VARIANTS: list[tuple[str, str, str]] = [
    ("monodepth2", "single-branch monodepth2 baseline", "ablations/monodepth2.yaml"),
    ("full", "two-branch, full method", "train.yaml"),
    ("no_occlusion", "full − occlusion mask", "ablations/no_occlusion.yaml"),
    ("no_structure", "full − structure consistency", "ablations/no_structure.yaml"),
    ("no_featuremetric", "full − feature-metric", "ablations/no_featuremetric.yaml"),
    ("no_temporal", "full − temporal term", "ablations/no_temporal.yaml"),
    ("no_two_branch", "full − two-branch rule (one branch, every other term)", "ablations/no_two_branch.yaml"),
    ("no_pose_prior", "full − epipolar pose prior", "ablations/no_pose_prior.yaml"),
    ("no_scale_anchor", "full − scale anchor", "ablations/no_scale_anchor.yaml"),
    (
        "median_still_filter",
        "full − traffic still-camera filter (median, as before)",
        "ablations/median_still_filter.yaml",
    ),
    ("road_floor", "full + road floor (traffic switch, off by default)", "ablations/road_floor.yaml"),
    (
        "automask_all_terms",
        "full + auto-mask on every warp term (traffic switch, off by default)",
        "ablations/automask_all_terms.yaml",
    ),
]

#: The learning ladder (issue: "where does learning fail?"): each rung replaces one network by ground truth.
LADDER: list[tuple[str, str, str]] = [
    ("pose_gt_depth", "PoseNet alone, ground-truth depth", "ladder/pose_gt_depth.yaml"),
    (
        "depth_gt_pose_monodepth2",
        "depth net alone (monodepth2 losses), ground-truth motion",
        "ladder/depth_gt_pose_monodepth2.yaml",
    ),
    ("monodepth2", "monodepth2 baseline, self-supervised", "ablations/monodepth2.yaml"),
    ("depth_gt_pose", "depth net alone (full method), ground-truth motion", "ladder/depth_gt_pose.yaml"),
    ("full_unanchored", "full method without pose prior and scale anchor (before the fix)", "ladder/unanchored.yaml"),
    ("monodepth2_anchored", "monodepth2 baseline + pose prior + scale anchor", "ladder/monodepth2_anchored.yaml"),
    ("full", "full method, self-supervised", "train.yaml"),
]

#: ``--variants`` name → (variants, default budget file).
VARIANT_SETS: dict[str, tuple[list[tuple[str, str, str]], str]] = {
    "ablation": (VARIANTS, "ablation_budget.yaml"),
    "ladder": (LADDER, "ladder_budget.yaml"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bag", action="append", required=True, metavar="DIR", help="training bag(s)")
    p.add_argument(
        "--heldout",
        action="append",
        required=True,
        metavar="DIR",
        help="held-out bag(s) with ground-truth depth for the table",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="one run directory per variant goes here")
    p.add_argument(
        "--variants",
        choices=sorted(VARIANT_SETS),
        default="ablation",
        help="ablation: the full method minus one term at a time; ladder: each network replaced by ground truth "
        "in turn, with held-out curves by step",
    )
    p.add_argument(
        "--budget",
        metavar="YAML",
        help="the equal budget stacked on every variant (no `base:` key); default "
        "config/ablation_budget.yaml or config/ladder_budget.yaml",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        metavar="S",
        help="train every variant once per seed (optim.seed); the table gives mean ± std over seeds",
    )
    p.add_argument(
        "--protocol",
        default="dense",
        choices=("auto", "kitti", "dense"),
        help="evaluation protocol on the held-out drive (default dense: the synthetic ground truth is dense)",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=sorted({v[0] for vs, _ in VARIANT_SETS.values() for v in vs}),
        help="run only these variants",
    )
    p.add_argument("--gt-depth-topic", help="GT depth topic of the held-out bags (default: as `dualdepth eval`)")
    p.add_argument("--table", metavar="MD", help="write the Markdown table here (e.g. docs/ablation.md)")
    p.add_argument("--json", metavar="FILE", help="write all results as JSON")
    p.add_argument("--no-progress", action="store_true")


def _row(
    label: str, summary: dict[str, Any], train_seconds: float | None = None, ground_truth: tuple[str, ...] = ()
) -> list[str]:
    """Table cells of one variant: the figures of :data:`ROW_FIGURES` (± std over seeds when known)."""

    def fmt(path: tuple[str, ...], digits: int) -> str:
        if ("depth" in ground_truth and path[0] != "pose") or ("pose" in ground_truth and path[0] == "pose"):
            return "—"  # a rung that takes this from ground truth has no figure of its own
        v = _get(summary, path)
        if v is None:
            return "—"
        std = _get(summary, (*path[:-1], path[-1] + "_std"))
        return f"{v:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")

    digits = (3, 3, 4, 4, 3, 3)
    return [
        label,
        *(fmt(path, d) for path, d in zip(ROW_FIGURES, digits)),
        "—" if train_seconds is None else f"{train_seconds / 60:.1f}",
    ]


def format_table(results: list[dict[str, Any]], budget: str, reference: dict[str, Any] | None = None) -> str:
    head = ["variant", "AbsRel ↓", "δ<1.25 ↑", "AUSE ↓", "AURG ↑", "temporal ratio ↓", "ATE m ↓", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = _row(r["label"], r["eval"], r.get("train_seconds"), tuple(r.get("ground_truth", ())))
        lines.append("| " + " | ".join(cells) + " |")
    if reference is not None:
        # A constant has no confidence and no frame-to-frame change: its depth metrics and the no-motion ATE.
        full = _row(REFERENCE_LABEL, reference)
        cells = [full[i] if i in (0, 1, 2, 6) else "—" for i in range(len(head))]
        lines.append("| " + " | ".join(f"*{c}*" if c != "—" else c for c in cells) + " |")
    return "\n".join(lines) + f"\n\nEqual training budget for every variant: {budget}.\n"


#: The last row: a constant depth scored through the same pipeline (what "no structure" scores).
REFERENCE_LABEL = "constant depth, no motion (reference)"


def _display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it is inside it (tables are committed)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def describe_budget(
    cfg: Any, total_steps: int, files: list[str], overrides: list[str], seeds: list[int] | None = None
) -> str:
    """The budget in words (steps, batch, input, encoders, seed or seeds) and the files that set it."""
    seeds = seeds if seeds and len(seeds) > 1 else [cfg.optim.seed]
    text = (
        f"{total_steps} steps × batch {cfg.optim.batch_size} at {cfg.input.width}×{cfg.input.height}, "
        f"depth encoder {cfg.model.encoder} (width {cfg.model.encoder_width}), "
        f"pose encoder {cfg.pose.encoder} (width {cfg.pose.encoder_width}), "
        + (f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(str(x) for x in seeds)}")
    )
    return text + " (`" + " + ".join([*files, *overrides]) + "`)"


def _train_seconds(run_dir: Path, checkpoint: dict[str, Any]) -> float | None:
    """Training wall time of a run: the checkpoint's running total, else the run's metrics.json."""
    if "train_seconds" in checkpoint:
        return float(checkpoint["train_seconds"])
    try:
        return float(json.loads((run_dir / "metrics.json").read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run(args: argparse.Namespace) -> int:
    from .data import FrameSequence, resolve_gt_topics
    from .evaluation import ConstantDepthNet, evaluate_sequence
    from .evaluation.reference import StillPoseNet
    from .training.checkpoint import load_checkpoint, model_from_checkpoint
    from .training.trainer import train

    variants, default_budget = VARIANT_SETS[args.variants]
    budget = Path(args.budget or CONFIG_DIR / default_budget)
    if not budget.is_file():
        raise DualDepthError(f"budget file not found: {budget}")
    out = Path(args.out)
    results = []
    reference = budget_text = None
    frames_cache: dict[tuple[int, int], list[Any]] = {}

    def heldout_frames(loaded: Any) -> list[Any]:
        w, h = loaded.cfg.input.width, loaded.cfg.input.height
        if (w, h) not in frames_cache:
            frames = []
            for bag in args.heldout:  # GT topics found as `dualdepth eval` finds them (depth, pose, moving mask)
                topics = resolve_gt_topics(bag, gt_depth_topic=args.gt_depth_topic, require_depth=True)
                data = dataclasses.replace(
                    loaded.data,
                    gt_depth_topic=topics["gt_depth"],
                    gt_pose_topic=topics["gt_pose"],
                    gt_moving_mask_topic=topics["gt_moving_mask"],
                )
                frames.extend(FrameSequence.from_bag(bag, data, w, h))
            frames_cache[(w, h)] = frames
        return frames_cache[(w, h)]

    def evaluate(loaded: Any, frames: list[Any], **kw: Any) -> dict[str, Any]:
        return _summary(evaluate_sequence(loaded, frames, protocol=args.protocol, **kw))

    for slug, label, cfg_file in variants:
        if args.only and slug not in args.only:
            continue
        configs = [str(CONFIG_DIR / cfg_file), str(budget)]
        runs = []
        for seed in args.seeds:
            run_dir = out / slug if len(args.seeds) == 1 else out / slug / f"seed{seed}"
            overrides = [*args.set, f"optim.seed={seed}"] if len(args.seeds) > 1 else list(args.set)
            last = run_dir / "last.pt"
            ckpt = load_checkpoint(last) if last.exists() else {}
            if not ckpt or ckpt.get("step") != ckpt.get("total_steps"):
                print(f"[{slug}] training: {label}" + (f" (seed {seed})" if len(args.seeds) > 1 else ""), flush=True)
                done = train(args.bag, run_dir, configs, overrides, resume=last.exists(), progress=not args.no_progress)
                if done["step"] < done["total_steps"]:  # stopped by Ctrl-C / SIGTERM: stop the study too
                    print(f"[{slug}] stopped at step {done['step']}; run the same command again to resume", flush=True)
                    return 130
                ckpt = load_checkpoint(last)
            loaded = model_from_checkpoint(ckpt)
            frames = heldout_frames(loaded)
            curve = []
            for snap in sorted((run_dir / "snapshots").glob("step_*.pt")):
                snap_ckpt = load_checkpoint(snap)
                point = evaluate(model_from_checkpoint(snap_ckpt), frames)
                curve.append({"step": int(snap_ckpt["step"]), **_curve_point(point, loaded.cfg)})
            runs.append(
                {
                    "seed": seed,
                    "eval": evaluate(loaded, frames),
                    "train_seconds": _train_seconds(run_dir, ckpt),
                    "curve": curve,
                    "collapse": _final_collapse_check(run_dir),
                }
            )
            if reference is None:  # the budget's input size and frames are the same for every variant
                budget_text = describe_budget(
                    loaded.cfg, int(ckpt["total_steps"]), [_display_path(budget)], list(args.set), args.seeds
                )
                loaded.model.depth = ConstantDepthNet()
                loaded.model.pose = StillPoseNet()  # its ATE: the no-motion floor of "started"
                reference = evaluate(loaded, frames)
        gt_parts = tuple(_replaced_by_ground_truth(loaded.cfg))
        result = {
            "slug": slug,
            "label": label,
            "configs": [_display_path(c) for c in configs],
            "ground_truth": list(gt_parts),
            "runs": runs,
            **_over_seeds(runs),
        }
        results.append(result)
        print(f"[{slug}] " + " | ".join(_row(label, result["eval"], result["train_seconds"], gt_parts)[1:]), flush=True)
        for point in result["curve"]:
            print(f"[{slug}]   step {point['step']}: {_format_point(point)}", flush=True)
    if not results:
        raise DualDepthError("no variant was run")
    table = format_table(results, budget_text or "", reference)
    table += "\n" + format_starts(results, reference)
    if any(r["curve"] for r in results):
        table += "\n" + format_curves(results)
    print(table)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        title = "Learning ladder" if args.variants == "ladder" else "Ablation"
        Path(args.table).write_text(
            f"# {title} on the held-out synthetic drive\n\n"
            f"Produced by `dualdepth ablate --variants {args.variants}`"
            + (f" with only the rows {', '.join(f'`{o}`' for o in args.only)} (`--only`)" if args.only else "")
            + ". Median-scaled depth metrics (method.md §8); "
            "AUSE/AURG of the fused confidence for AbsRel (— where a variant has no confidence); temporal "
            "ratio = frame-to-frame depth change of the prediction / that of the ground truth on static pixels; "
            "train min = training wall time on the machine that ran it. The constant-depth row scores a constant "
            "depth through the same pipeline: the floor a model with any structure must beat; its ATE is that of a "
            "PoseNet that predicts no motion.\n\n" + table
        )
    if args.json:
        payload = {"budget": budget_text, "variants": results, "constant_reference": reference}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=float))
    return 0


#: The figures a table row shows: (path in an evaluation summary).
ROW_FIGURES: tuple[tuple[str, ...], ...] = (
    ("median_scaled", "abs_rel"),
    ("median_scaled", "a1"),
    ("confidence", "ause", "abs_rel"),
    ("confidence", "aurg", "abs_rel"),
    ("temporal", "ratio"),
    ("pose", "ate_mean"),
)


def _get(summary: Any, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(summary, dict) or key not in summary or summary[key] is None:
            return None
        summary = summary[key]
    return float(summary) if isinstance(summary, (int, float)) else None


#: A run has started when its ATE is below this share of the no-motion ATE (the reference row's).
START_ATE_SHARE = 0.1


def _final_collapse_check(run_dir: Path) -> dict[str, Any] | None:
    """The collapse check of a run's last validation (``metrics.json``), or None when it has none."""
    try:
        report = json.loads((run_dir / "metrics.json").read_text())["last_validation"]["collapse"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    tests = {t["name"]: t for t in report.get("tests", [])}
    order = tests.get("road_order")
    return {
        "passed": bool(report.get("passed")),
        "health": report.get("health"),
        "inverted": order is not None and not order.get("passed", True),
        "failures": list(report.get("failures", [])),
    }


def _health_text(check: dict[str, Any] | None) -> str:
    """A run's last collapse-check health, ``FAILED`` after it when the check failed (— when unknown)."""
    if check is None or check.get("health") is None:
        return "—"
    return f"{check['health']:.2f}" + ("" if check["passed"] else " FAILED")


def format_starts(results: list[dict[str, Any]], reference: dict[str, Any] | None) -> str:
    """Per variant, over its seeds: how many runs started (ATE < 0.1 × no motion), passed the collapse
    check at their last validation, and had the road's depth inverted; each run's figures after it.
    """
    floor = _get(reference or {}, ("pose", "ate_mean"))
    head = "| variant | started | collapse check passed | inverted road | per seed: ATE m, health |"
    lines = [head, "|---|---|---|---|---|"]
    for r in results:
        runs = r["runs"]
        ates = [_get(run["eval"], ("pose", "ate_mean")) for run in runs]
        checks = [run.get("collapse") for run in runs]
        n_started = sum(a is not None and floor is not None and a < START_ATE_SHARE * floor for a in ates)
        started = "—" if floor is None else f"{n_started}/{len(runs)}"
        known = [c for c in checks if c is not None]
        passed = f"{sum(c['passed'] for c in known)}/{len(known)}" if known else "—"
        inverted = f"{sum(c['inverted'] for c in known)}/{len(known)}" if known else "—"
        per_seed = "; ".join(
            f"{run['seed']}: {'—' if a is None else f'{a:.3f}'}, {_health_text(c)}"
            for run, a, c in zip(runs, ates, checks)
        )
        lines.append(f"| {r['label']} | {started} | {passed} | {inverted} | {per_seed} |")
    rule = (
        "no ATE for the no-motion reference (the held-out drive has no poses)"
        if floor is None
        else f"started: ATE < {START_ATE_SHARE:g} × the no-motion ATE {floor:.3f} m"
    )
    return (
        "\n".join(lines)
        + f"\n\n{rule}; collapse check and inverted road (depth not growing towards the horizon): the run's last "
        "validation (evaluation/collapse.py).\n"
    )


def _over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A variant's runs over seeds → ``eval`` (mean of every row figure, with ``*_std``), mean time and curve."""
    import numpy as np

    evals = [r["eval"] for r in runs]
    merged: dict[str, Any] = {}
    for path in ROW_FIGURES:
        values = [v for v in (_get(e, path) for e in evals) if v is not None]
        if not values:
            continue
        node = merged
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = float(np.mean(values))
        if len(values) > 1:
            node[path[-1] + "_std"] = float(np.std(values))
    seconds = [r["train_seconds"] for r in runs if r["train_seconds"] is not None]
    steps = sorted({p["step"] for r in runs for p in r["curve"]})
    curve = []
    for step in steps:
        points = [p for r in runs for p in r["curve"] if p["step"] == step]
        point: dict[str, Any] = {"step": step}
        for key in ("abs_rel", "a1", "ate_mean"):
            values = [p[key] for p in points if p.get(key) is not None]
            point[key] = float(np.mean(values)) if values else None
        curve.append(point)
    return {"eval": merged, "train_seconds": float(np.mean(seconds)) if seconds else None, "curve": curve}


def _replaced_by_ground_truth(cfg: Any) -> list[str]:
    """Which network a variant replaced by ground truth (its own metrics are then meaningless)."""
    out = []
    if cfg.model.depth_source == "ground_truth":
        out.append("depth")
    if cfg.pose.source == "topic":
        out.append("pose")
    return out


def _curve_point(summary: dict[str, Any], cfg: Any) -> dict[str, float | None]:
    """AbsRel, δ<1.25 and ATE of one snapshot; None for the part a rung takes from ground truth."""
    gt = _replaced_by_ground_truth(cfg)
    depth = summary.get("median_scaled") or {}
    pose = summary.get("pose") or {}
    return {
        "abs_rel": None if "depth" in gt else depth.get("abs_rel"),
        "a1": None if "depth" in gt else depth.get("a1"),
        "ate_mean": None if "pose" in gt else pose.get("ate_mean"),
    }


def _format_point(point: dict[str, Any]) -> str:
    def f(key: str, digits: int = 3) -> str:
        v = point.get(key)
        return "—" if v is None else f"{v:.{digits}f}"

    return f"AbsRel {f('abs_rel')}, δ<1.25 {f('a1')}, ATE {f('ate_mean')} m"


def format_curves(results: list[dict[str, Any]]) -> str:
    """Held-out AbsRel / δ<1.25 / ATE by step for every variant that kept snapshots."""
    steps = sorted({p["step"] for r in results for p in r["curve"]})
    head = ["variant", "metric", *[str(s) for s in steps]]
    lines = ["Held-out curves by training step (— where the rung takes that quantity from ground truth):", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        by_step = {p["step"]: p for p in r["curve"]}
        for key, name, digits in (("abs_rel", "AbsRel", 3), ("a1", "δ<1.25", 3), ("ate_mean", "ATE m", 3)):
            cells = []
            for s in steps:
                v = by_step.get(s, {}).get(key)
                cells.append("—" if v is None else f"{v:.{digits}f}")
            lines.append("| " + " | ".join([r["label"], name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def _summary(result: Any) -> dict[str, Any]:
    return getattr(result, "report", result).summary()
