"""``dualdepth real-eval``: one table of a model and a constant depth on every real drive with ground truth.

Each drive is a folder of a data directory (by default ``../shared/data`` beside the clone) that holds a
rosbag2 (``DRIVE/bag/`` or the drive folder itself). Every drive is scored twice by ``dualdepth eval`` with
its default, automatic protocol (KITTI's Garg crop for KITTI-shaped sparse LiDAR, median-scaled): once with
the model and once with ``--constant-reference`` (the same frames through the same pipeline, with a constant
depth): the floor a model must beat. A drive with ground-truth poses and no depth gets the PoseNet's ATE
only; a drive with depth on a few frames is scored on those frames (the ``scored`` column says how many).

Without a data directory (a user's clone has none) the command says how to make one from a KITTI raw drive
with ``dualdepth kitti-to-bag``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import DualDepthError

__all__ = ["add_arguments", "run", "find_drives", "score_drive", "format_table", "learning_curve", "format_curve"]

#: The data directory of this project's development machines (``shared/`` beside the clone).
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

HOW_TO_GET_DRIVES = (
    "no drives with ground truth at {data}. Make one from a KITTI raw drive: download a `*_sync` drive (e.g. "
    "2011_09_26_drive_0009_sync, one of the Eigen test drives), its `*_calib` files and its Velodyne scans from "
    "the KITTI raw data page, then `dualdepth kitti-to-bag DRIVE_sync --calib 2011_09_26 --out DATA/drive_0009/bag` "
    "and run `dualdepth real-eval --data DATA` (docs/kitti.md)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="models/dualdepth_default.pt",
        help="checkpoint or packed model to score (default: the shipped models/dualdepth_default.pt)",
    )
    p.add_argument(
        "--data",
        default=os.environ.get("DUALDEPTH_REAL_DATA", str(DEFAULT_DATA)),
        help="folder of drives, one sub-folder each holding a rosbag2 (default: $DUALDEPTH_REAL_DATA, "
        "else ../shared/data beside the clone)",
    )
    p.add_argument("--drive", action="append", help="score only this drive (sub-folder name); repeatable")
    p.add_argument("--json", metavar="FILE", help="write every figure (both runs' full eval JSON) here")
    p.add_argument("--table", metavar="MD", help="also write the table as Markdown here")
    p.add_argument("--cache-dir", help="decoded-frame cache folder passed to eval (default: eval's)")
    p.add_argument("--verbose", action="store_true", help="print eval's own report for every run")
    p.add_argument(
        "--curve",
        metavar="RUN_DIR",
        help="also score every snapshot of a training run (RUN_DIR/snapshots/step_*.pt, train.snapshot_every) on "
        "the drives with depth ground truth: the learning curve (AbsRel, δ<1.25 by step)",
    )


def _bag_of(folder: Path) -> Path | None:
    """The rosbag2 folder of a drive folder: ``folder/bag`` or ``folder`` itself."""
    for cand in (folder / "bag", folder):
        if (cand / "metadata.yaml").is_file() or any(cand.glob("*.mcap")) or any(cand.glob("*.db3")):
            return cand
    return None


def find_drives(data: str | os.PathLike, only: list[str] | None = None) -> list[tuple[str, Path]]:
    """``(name, bag)`` for every drive folder of ``data``, sorted by name.

    Raises
    ------
    DualDepthError
        ``data`` is missing or holds no bag, or a drive named in ``only`` is not there.
    """
    root = Path(data)
    drives = []
    if root.is_dir():
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            bag = _bag_of(sub)
            if bag is not None:
                drives.append((sub.name, bag))
    if not drives:
        raise DualDepthError(HOW_TO_GET_DRIVES.format(data=root))
    if only:
        names = {n for n, _ in drives}
        missing = [n for n in only if n not in names]
        if missing:
            raise DualDepthError(f"no drive {missing[0]!r} in {root} (drives: {', '.join(sorted(names))})")
        drives = [(n, b) for n, b in drives if n in only]
    return drives


def _eval_json(args: list[str], verbose: bool) -> dict[str, Any]:
    """Run ``dualdepth eval`` in this process with ``--json`` to a temporary file; its JSON."""
    from ..cli import main

    with tempfile.TemporaryDirectory(prefix="dualdepth-real-eval-") as tmp:
        out = Path(tmp) / "eval.json"
        buf = io.StringIO()
        sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(buf)
        with sink:
            code = main(["eval", *args, "--json", str(out)])
        if code != 0 or not out.is_file():
            raise DualDepthError(f"dualdepth eval {' '.join(args)} failed (exit {code}):\n{buf.getvalue()[-2000:]}")
        return json.loads(out.read_text())


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    depth = result.get("median_scaled") or {}
    pose = result.get("pose") or {}
    return {
        "abs_rel": depth.get("abs_rel"),
        "a1": depth.get("a1"),
        "ate": pose.get("ate_mean"),
        "scored": result.get("n_images", 0),
        "frames": result.get("n_frames", 0),
        "protocol": (result.get("protocol") or {}).get("name"),
    }


def score_drive(model: str, bag: Path, cache_dir: str | None = None, verbose: bool = False) -> dict[str, Any]:
    """Score ``model`` and a constant depth on one drive.

    Returns
    -------
    dict
        ``model`` and ``constant``: each ``abs_rel``, ``a1`` (δ<1.25; None without depth ground truth),
        ``ate`` (metres, 5-frame snippets; the constant has none), ``scored`` / ``frames`` and ``protocol``;
        ``eval`` holds both runs' full JSON (the constant's is None on a drive without depth ground truth).
    """
    common = ["--checkpoint", str(model), "--bag", str(bag)]
    if cache_dir:
        common += ["--cache-dir", cache_dir]
    res_model = _eval_json(common, verbose)
    if res_model.get("median_scaled"):
        res_const = _eval_json([*common, "--constant-reference", "--no-pose"], verbose)
        const = _figures(res_const)
    else:  # poses only: a constant has no depth to score and no motion
        res_const = None
        const = {"abs_rel": None, "a1": None, "scored": 0, "frames": res_model.get("n_frames", 0), "protocol": None}
    const["ate"] = None
    return {"model": _figures(res_model), "constant": const, "eval": {"model": res_model, "constant": res_const}}


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def format_table(rows: list[tuple[str, dict[str, Any]]], model: str) -> str:
    """A Markdown table: one line per drive, the model beside the constant."""
    lines = [
        f"model: {model} (median-scaled, protocol chosen by `dualdepth eval`; ATE on 5-frame snippets)",
        "",
        "| drive | frames scored | model AbsRel ↓ | model δ<1.25 ↑ | model ATE m ↓ "
        "| constant AbsRel | constant δ<1.25 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows:
        m, c = r["model"], r["constant"]
        scored = f"{m['scored']} of {m['frames']}" if m["abs_rel"] is not None else f"0 of {m['frames']} (no depth)"
        lines.append(
            f"| {name} | {scored} | {_fmt(m['abs_rel'])} | {_fmt(m['a1'])} | {_fmt(m['ate'], 4)} "
            f"| {_fmt(c['abs_rel'])} | {_fmt(c['a1'])} |"
        )
    return "\n".join(lines)


def _snapshots(run_dir: str | os.PathLike) -> list[Path]:
    snaps = sorted(Path(run_dir).glob("snapshots/step_*.pt"))
    if not snaps:
        raise DualDepthError(
            f"no snapshots in {Path(run_dir) / 'snapshots'}: train with --set train.snapshot_every=N "
            "(config/default_model.yaml keeps one every 250 steps)"
        )
    return snaps


def learning_curve(
    run_dir: str | os.PathLike,
    drives: list[tuple[str, Path]],
    cache_dir: str | None = None,
    verbose: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """AbsRel and δ<1.25 of every snapshot of a training run on each drive, by step (depth only, no poses).

    Returns
    -------
    dict
        drive name → ``[{"step", "abs_rel", "a1", "scored"}, ...]`` in step order.

    Raises
    ------
    DualDepthError
        ``run_dir`` holds no ``snapshots/step_*.pt`` (the run did not set ``train.snapshot_every``).
    """
    snaps = _snapshots(run_dir)
    curve: dict[str, list[dict[str, Any]]] = {}
    for name, bag in drives:
        for snap in snaps:
            print(f"curve: {snap.name} on {name} …", file=sys.stderr, flush=True)
            args = ["--checkpoint", str(snap), "--bag", str(bag), "--no-pose"]
            if cache_dir:
                args += ["--cache-dir", cache_dir]
            fig = _figures(_eval_json(args, verbose))
            if fig["abs_rel"] is None:  # no depth ground truth on this drive
                break
            step = int(snap.stem.split("_")[-1])
            curve.setdefault(name, []).append({"step": step, **{k: fig[k] for k in ("abs_rel", "a1", "scored")}})
    return curve


def format_curve(curve: dict[str, list[dict[str, Any]]], run_dir: str | os.PathLike) -> str:
    """A Markdown table: one line per snapshot step, AbsRel / δ<1.25 on each drive."""
    names = sorted(curve)
    steps = sorted({p["step"] for pts in curve.values() for p in pts})
    lines = [
        f"learning curve of {run_dir} (snapshots; median-scaled, AbsRel / δ<1.25)",
        "",
        "| step | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for step in steps:
        cells = []
        for n in names:
            pt = next((p for p in curve[n] if p["step"] == step), None)
            cells.append("—" if pt is None else f"{_fmt(pt['abs_rel'])} / {_fmt(pt['a1'])}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not Path(args.model).is_file():
        raise DualDepthError(f"model not found: {args.model}")
    if args.curve:
        _snapshots(args.curve)  # its one-line error before anything is scored
    drives = find_drives(args.data, args.drive)
    rows = []
    for name, bag in drives:
        print(f"scoring {name} ({bag}) …", file=sys.stderr, flush=True)
        rows.append((name, score_drive(args.model, bag, args.cache_dir, args.verbose)))
    table = format_table(rows, args.model)
    curve = None
    if args.curve:
        with_depth = [(n, b) for (n, b), (_, r) in zip(drives, rows) if r["model"]["abs_rel"] is not None]
        curve = learning_curve(args.curve, with_depth, args.cache_dir, args.verbose)
        table += "\n\n" + format_curve(curve, args.curve)
    print(table)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload = {"model": args.model, "data": str(args.data), "drives": {n: r for n, r in rows}}
        if curve is not None:
            payload["curve"] = {"run": str(args.curve), "drives": curve}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return 0
