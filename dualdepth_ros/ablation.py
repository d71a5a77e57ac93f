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
]


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
        "--budget",
        default=str(CONFIG_DIR / "ablation_budget.yaml"),
        metavar="YAML",
        help="the equal budget stacked on every variant (no `base:` key)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    p.add_argument("--only", action="append", choices=[v[0] for v in VARIANTS], help="run only these variants")
    p.add_argument("--gt-depth-topic", help="GT depth topic of the held-out bags (default: as `dualdepth eval`)")
    p.add_argument("--table", metavar="MD", help="write the Markdown table here (e.g. docs/ablation.md)")
    p.add_argument("--json", metavar="FILE", help="write all results as JSON")
    p.add_argument("--no-progress", action="store_true")


def _row(label: str, summary: dict[str, Any], train_seconds: float | None = None) -> list[str]:
    def get(*path: str) -> float | None:
        node: Any = summary
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return float(node) if isinstance(node, (int, float)) else None

    def fmt(v: float | None, digits: int = 3) -> str:
        return "—" if v is None else f"{v:.{digits}f}"

    return [
        label,
        fmt(get("median_scaled", "abs_rel")),
        fmt(get("median_scaled", "a1")),
        fmt(get("confidence", "ause", "abs_rel"), 4),
        fmt(get("confidence", "aurg", "abs_rel"), 4),
        fmt(get("temporal", "ratio")),
        "—" if train_seconds is None else f"{train_seconds / 60:.1f}",
    ]


def format_table(results: list[dict[str, Any]], budget: str, reference: dict[str, Any] | None = None) -> str:
    head = ["variant", "AbsRel ↓", "δ<1.25 ↑", "AUSE ↓", "AURG ↑", "temporal ratio ↓", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        lines.append("| " + " | ".join(_row(r["label"], r["eval"], r.get("train_seconds"))) + " |")
    if reference is not None:
        # A constant has no confidence and no frame-to-frame change: only its depth metrics mean something.
        cells = _row(REFERENCE_LABEL, reference)[:3] + ["—"] * (len(head) - 3)
        lines.append("| " + " | ".join(f"*{c}*" if c != "—" else c for c in cells) + " |")
    return "\n".join(lines) + f"\n\nEqual training budget for every variant: {budget}.\n"


#: The last row: a constant depth scored through the same pipeline (what "no structure" scores).
REFERENCE_LABEL = "constant depth (reference)"


def _display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it is inside it (tables are committed)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def describe_budget(cfg: Any, total_steps: int, files: list[str], overrides: list[str]) -> str:
    """The budget in words (steps, batch, input, encoders, seed) and the files that set it."""
    text = (
        f"{total_steps} steps × batch {cfg.optim.batch_size} at {cfg.input.width}×{cfg.input.height}, "
        f"depth encoder {cfg.model.encoder} (width {cfg.model.encoder_width}), "
        f"pose encoder {cfg.pose.encoder} (width {cfg.pose.encoder_width}), seed {cfg.optim.seed}"
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
    from .training.checkpoint import load_checkpoint, model_from_checkpoint
    from .training.trainer import train

    budget = Path(args.budget)
    if not budget.is_file():
        raise DualDepthError(f"budget file not found: {budget}")
    out = Path(args.out)
    results = []
    reference = budget_text = None
    for slug, label, cfg_file in VARIANTS:
        if args.only and slug not in args.only:
            continue
        run_dir = out / slug
        last = run_dir / "last.pt"
        configs = [str(CONFIG_DIR / cfg_file), str(budget)]
        ckpt = load_checkpoint(last) if last.exists() else {}
        if not ckpt or ckpt.get("step") != ckpt.get("total_steps"):
            print(f"[{slug}] training: {label}", flush=True)
            train(args.bag, run_dir, configs, list(args.set), resume=last.exists(), progress=not args.no_progress)
            ckpt = load_checkpoint(last)
        loaded = model_from_checkpoint(ckpt)
        w, h = loaded.cfg.input.width, loaded.cfg.input.height
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
        summary = _summary(evaluate_sequence(loaded, frames))
        seconds = _train_seconds(run_dir, ckpt)
        results.append(
            {
                "slug": slug,
                "label": label,
                "configs": [_display_path(c) for c in configs],
                "eval": summary,
                "train_seconds": seconds,
            }
        )
        print(f"[{slug}] " + " | ".join(_row(label, summary, seconds)[1:]), flush=True)
        if reference is None:  # the budget's input size and frames are the same for every variant
            budget_text = describe_budget(loaded.cfg, int(ckpt["total_steps"]), [_display_path(budget)], list(args.set))
            loaded.model.depth = ConstantDepthNet()
            reference = _summary(evaluate_sequence(loaded, frames, with_pose=False))
    if not results:
        raise DualDepthError("no variant was run")
    table = format_table(results, budget_text or "", reference)
    print(table)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(
            "# Ablation on the held-out synthetic drive\n\n"
            "Produced by `make ablation` (`dualdepth ablate`). Median-scaled depth metrics (method.md §8); "
            "AUSE/AURG of the fused confidence for AbsRel (— where a variant has no confidence); temporal "
            "ratio = frame-to-frame depth change of the prediction / that of the ground truth on static pixels; "
            "train min = training wall time on the machine that ran it. The last row scores a constant depth "
            "through the same pipeline: the floor a model with any structure must beat.\n\n" + table
        )
    if args.json:
        payload = {"budget": budget_text, "variants": results, "constant_reference": reference}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=float))
    return 0


def _summary(result: Any) -> dict[str, Any]:
    return getattr(result, "report", result).summary()
