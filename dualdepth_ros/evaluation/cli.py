"""``dualdepth eval``: score a checkpoint on bags with ground truth (``docs/method.md`` §8).

Rebuilds the model and its input pipeline from the checkpoint, finds the ground truth in each
bag (:func:`~dualdepth_ros.data.bags.resolve_gt_topics`: depth, camera pose, moving mask),
runs :func:`~dualdepth_ros.evaluation.sequence.evaluate_sequence`, prints the tables and
writes JSON and pictures. It says, per bag, what was done to the image (resize/crop), which
ground truth was used and why any is missing, and the protocol the depth was scored with. A
bag with ground-truth poses but no depth (a real drive without LiDAR) gets the pose ATE and
a line saying why there are no depth metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import DualDepthError
from ..preprocess import RESIZE_MODES
from .grid import INTERPOLATIONS
from .plots import mosaic_rows, save_png, save_sparsification_plot
from .protocols import MAX_DEPTH, PROTOCOL_NAMES
from .reference import ConstantDepthNet
from .sequence import evaluate_sequence
from .tables import format_evaluation, json_ready

__all__ = ["add_arguments", "run"]

#: A ``resize`` that changes the aspect ratio by more than this gets a note suggesting a crop.
SQUASH_NOTE = 0.02


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.pt) written by dualdepth train")
    parser.add_argument(
        "--bag", action="append", required=True, help="bag (or folder of bags) with ground truth; repeatable"
    )
    parser.add_argument(
        "--gt-depth-topic",
        help="GT depth Image (32FC1 m / 16UC1 mm) on the rectified camera's grid; default /gt/depth, else the one "
        "depth image topic",
    )
    parser.add_argument("--image-topic", help="camera image topic (default: the checkpoint's, else auto-detect)")
    parser.add_argument("--info-topic", help="camera_info topic (default: beside the image topic)")
    parser.add_argument(
        "--gt-pose-topic",
        help="GT camera pose: a PoseStamped/PoseWithCovarianceStamped/Odometry/TransformStamped topic, or "
        "TOPIC:CHILD_FRAME for TF (e.g. /tf:camera_optical_frame); default /gt/pose, else auto-detected",
    )
    parser.add_argument("--moving-mask-topic", help="moving-object mask Image (default /gt/moving_mask if present)")
    parser.add_argument("--intrinsics", metavar="FX,FY,CX,CY", help="camera intrinsics instead of camera_info")
    parser.add_argument("--max-frames", type=int, metavar="N", help="evaluate at most the first N frames of each bag")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOL_NAMES,
        default="auto",
        help="kitti: Eigen/Garg crop, 1e-3-80 m; dense: the full image up to --max-depth; auto (default): kitti for "
        "KITTI-shaped ground truth (aspect ~3.31), else dense",
    )
    parser.add_argument(
        "--max-depth", type=float, metavar="M", help=f"the dense protocol's depth cap in metres (default {MAX_DEPTH:g})"
    )
    parser.add_argument(
        "--interpolation",
        choices=INTERPOLATIONS,
        default="bilinear",
        help="how the prediction is upsampled to the ground truth's grid (default: bilinear on inverse depth)",
    )
    parser.add_argument(
        "--resize-mode",
        choices=RESIZE_MODES,
        help="how images reach the model's input size (default: the checkpoint's); crop_* keep the aspect ratio",
    )
    parser.add_argument(
        "--metric-scale", type=float, metavar="S", help="also score depth × S without median scaling (1 = metric)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per forward pass (default 8)")
    parser.add_argument("--no-pose", action="store_true", help="skip the PoseNet / ATE")
    parser.add_argument(
        "--constant-reference",
        action="store_true",
        help="score a constant depth instead of the model (same frames, same pipeline): the floor a model must beat",
    )
    parser.add_argument(
        "--photometric-floor",
        nargs="?",
        type=int,
        const=64,
        metavar="CLIPS",
        help="also compute the training loss's photometric term with the model's and with the GT depth and pose on "
        "CLIPS clips spread over the bags (default 64; needs GT pose; ignores --max-frames): how far the model is "
        "from what the loss can reach",
    )
    parser.add_argument(
        "--cache-dir", help="decoded-frame cache folder, or 'memory' (default: the checkpoint's data.cache_dir)"
    )
    parser.add_argument("--json", metavar="FILE", help="write every number as JSON ('-' for stdout)")
    parser.add_argument(
        "--plots", metavar="DIR", help="write sparsification_abs_rel.png and mosaic.png (image | depth | confidence)"
    )


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise DualDepthError(f"unknown device {name!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DualDepthError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return dev


def _check_args(args: argparse.Namespace) -> None:
    if args.max_frames is not None and args.max_frames < 1:
        raise DualDepthError("--max-frames must be at least 1")
    if args.batch_size < 1:
        raise DualDepthError("--batch-size must be at least 1")
    if args.max_depth is not None and args.protocol == "kitti":
        raise DualDepthError(
            "--max-depth sets the dense protocol's cap; the kitti protocol's range is fixed (1e-3-80 m)"
        )
    if args.max_depth is not None and not args.max_depth > 1e-3:
        raise DualDepthError(f"--max-depth must be more than 1e-3 m, got {args.max_depth}")
    if args.photometric_floor is not None and args.photometric_floor < 1:
        raise DualDepthError("--photometric-floor needs at least 1 clip")
    _check_outputs(args)


def _check_outputs(args: argparse.Namespace) -> None:
    """``--json FILE`` and ``--plots DIR`` must be writable as asked before anything is evaluated."""
    from ..training.checkpoint import check_writable

    if args.json and args.json != "-":
        path = Path(args.json)
        if path.is_dir() or args.json.endswith(("/", "\\")):
            raise DualDepthError(f"--json {args.json} is a folder; give the file to write, e.g. {path / 'eval.json'}")
        check_writable(path.parent, target=args.json)
    if args.plots:
        plots = Path(args.plots)
        if plots.exists() and not plots.is_dir():
            raise DualDepthError(
                f"--plots {args.plots} is a file; give a folder for sparsification_abs_rel.png and mosaic.png"
            )
        if args.json and args.json != "-" and Path(args.json).absolute() == plots.absolute():
            raise DualDepthError("--json and --plots name the same path; give a file and a folder")
        check_writable(plots, target=args.plots)


def _squash_note(plan: Any) -> str:
    """A hint when ``resize`` changes the aspect ratio noticeably."""
    if plan.mode != "resize":
        return ""
    change = (plan.width / plan.height) / (plan.in_width / plan.in_height)
    if abs(change - 1.0) <= SQUASH_NOTE:
        return ""
    return (
        f"  note: the checkpoint's resize changes the image's aspect ratio by {100 * (change - 1):+.0f}%; "
        "--resize-mode crop_center keeps the geometry"
    )


def run(args: argparse.Namespace) -> int:
    from ..data import Bag, FrameSequence, expand_bag_paths, resolve_gt_topics
    from ..training.checkpoint import model_from_checkpoint
    from ..training.floor import photometric_floor

    device = _device(args.device)
    _check_args(args)
    loaded = model_from_checkpoint(args.checkpoint, device)
    if args.constant_reference:
        loaded.model.depth = ConstantDepthNet().to(device)
        args.no_pose = True
    inp = loaded.checkpoint.get("input") or {}
    try:
        width, height = int(inp["width"]), int(inp["height"])
    except (KeyError, TypeError, ValueError):
        raise DualDepthError(f"checkpoint {args.checkpoint} does not record its input size") from None
    mode = args.resize_mode or inp.get("resize_mode", loaded.data.resize_mode)
    base = dataclasses.replace(loaded.data, resize_mode=mode)
    for attr, value in (
        ("image_topic", args.image_topic),
        ("camera_info_topic", args.info_topic),
        ("intrinsics", args.intrinsics),
        ("cache_dir", args.cache_dir),
    ):
        if value:
            base = dataclasses.replace(base, **{attr: value})
    preferred = {
        "gt_depth": base.gt_depth_topic,
        "gt_pose": base.gt_pose_topic,
        "gt_moving_mask": base.gt_moving_mask_topic,
    }
    out = sys.stderr if args.json == "-" else sys.stdout

    sequences = []
    stores = []
    bag_info = []
    depth_absent: list[str] = []
    pose_absent: list[str] = []
    for bag in expand_bag_paths(args.bag):
        topics = resolve_gt_topics(
            bag,
            gt_depth_topic=args.gt_depth_topic,
            gt_pose_topic=args.gt_pose_topic,
            gt_moving_mask_topic=args.moving_mask_topic,
            image_topic=base.image_topic,
            preferred=preferred,
        )
        if topics.gt_depth is None and topics.gt_pose is None:
            with Bag(bag) as b:
                listing = b.describe_topics()
            raise DualDepthError(
                f"bag {bag}: nothing to evaluate: no ground-truth depth topic ({topics.notes['gt_depth']}) and no "
                f"ground-truth pose ({topics.notes.get('gt_pose', 'none')}). Topics in the bag:\n{listing}"
            )
        cfg = dataclasses.replace(
            base,
            gt_depth_topic=topics.gt_depth,
            gt_pose_topic=topics.gt_pose,
            gt_moving_mask_topic=topics.gt_moving_mask,
        )
        seq = FrameSequence.from_bag(bag, cfg, width, height)
        n = len(seq) if args.max_frames is None else min(len(seq), args.max_frames)
        store = seq.store
        sel = store.topics
        plan = cfg.preprocessor(width, height).plan(store.source_width, store.source_height)
        if topics.gt_depth is None:
            depth_absent.append(f"{bag}: {topics.notes['gt_depth']}")
        if topics.gt_pose is None and not args.no_pose:
            pose_absent.append(f"{bag}: {topics.notes.get('gt_pose', 'none')}")
        bag_info.append(
            {
                "path": str(bag),
                "frames": n,
                "image_topic": sel.image,
                "camera_info_topic": sel.camera_info,
                "image_size": [store.source_width, store.source_height],
                "preprocessing": plan.describe(),
                "gt_depth_topic": sel.gt_depth,
                "gt_pose_topic": sel.gt_pose,
                "gt_moving_mask_topic": sel.gt_moving_mask,
                "notes": dict(topics.notes),
            }
        )
        depth_text = (
            f"GT depth {sel.gt_depth} (scored on its {store.source_width}x{store.source_height} grid)"
            if sel.gt_depth
            else "no GT depth"
        )
        pose_text = f"GT pose {sel.gt_pose} ({topics.notes.get('gt_pose', '')})" if sel.gt_pose else "no GT pose"
        print(
            f"{bag}: {n} frames of {sel.image}; {depth_text}; {pose_text}; moving mask {sel.gt_moving_mask or '-'}\n"
            f"  image: {plan.describe()} ({mode})",
            file=out,
        )
        note = _squash_note(plan)
        if note:
            print(note, file=out)
        sequences.append(itertools.islice(seq, n))
        stores.append(store)

    result = evaluate_sequence(
        loaded,
        itertools.chain.from_iterable(sequences),
        device=device,
        batch_size=args.batch_size,
        protocol=args.protocol,
        max_depth=args.max_depth,
        interpolation=args.interpolation,
        metric_scale=args.metric_scale,
        with_pose=not args.no_pose,
    )
    summary = result.summary()
    has_depth = any(info["gt_depth_topic"] for info in bag_info)
    if has_depth and summary["n_images"] == 0:
        raise DualDepthError(
            f"no frame had valid ground-truth depth ({summary['n_skipped']} frames skipped); "
            "check --gt-depth-topic and that its stamps match the images"
        )
    if not has_depth:
        summary["depth_absent"] = "; ".join(depth_absent)
    if summary.get("pose") is None:
        summary["pose_absent"] = (
            "--no-pose"
            if args.no_pose
            else ("; ".join(pose_absent) or "no segment of 5 frames with ground-truth poses and a PoseNet")
        )
    if summary.get("pose") is None and not has_depth:
        raise DualDepthError(f"nothing was scored: no ground-truth depth, and no pose ATE ({summary['pose_absent']})")
    print("", file=out)
    print(format_evaluation(summary), file=out)
    print(
        f"\n{result.n_frames} frames in {result.seconds:.1f} s ({summary['frames_per_second']:.1f} frames/s)", file=out
    )

    floor = None
    if args.photometric_floor is not None:
        floor = photometric_floor(loaded, stores, max_clips=args.photometric_floor, batch_size=args.batch_size)
        print(
            f"\nphotometric loss on {floor['clips']} clips (training objective, gate off): model "
            f"{floor['model']:.4f} | model depth (median-scaled) + GT pose {floor['model_depth_gt_pose']:.4f} | "
            f"GT depth + GT pose {floor['gt_depth_gt_pose']:.4f} (the floor)",
            file=out,
        )

    if args.plots:
        plots = Path(args.plots)
        sp = result.report.sparsification_mean()
        written = []
        try:
            if sp is not None and "abs_rel" in sp.curves:
                save_sparsification_plot(plots / "sparsification_abs_rel.png", sp, "abs_rel")
                written.append("sparsification_abs_rel.png")
            else:
                print(
                    "no confidence evaluated (no confidence output or no GT depth): sparsification plot skipped",
                    file=out,
                )
            if result.examples:
                save_png(plots / "mosaic.png", mosaic_rows(result.examples))
                written.append("mosaic.png")
        except OSError as err:
            if err.errno is not None:
                raise  # the CLI names a full or read-only disk
            raise DualDepthError(f"--plots {args.plots}: {err} (is the disk full?)") from None
        print(f"wrote {', '.join(written) or 'nothing'} to {plots}", file=out)

    if args.json:
        sp = result.report.sparsification_mean()
        data = {
            "checkpoint": str(args.checkpoint),
            "checkpoint_step": loaded.checkpoint.get("step"),
            "config_hash": loaded.checkpoint.get("config_hash"),
            "input": {"width": width, "height": height, "resize_mode": mode},
            "bags": bag_info,
            "protocol_requested": args.protocol,
            **summary,
        }
        if floor is not None:
            data["photometric_floor"] = floor
        if sp is not None:
            data["sparsification_curves"] = {
                "fractions": sp.fractions.tolist(),
                "curves": {m: {k: v.tolist() for k, v in c.items()} for m, c in sp.curves.items()},
            }
        text = json.dumps(json_ready(data), indent=2, allow_nan=False, ensure_ascii=False)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            try:
                tmp.write_text(text + "\n", encoding="utf-8")
                tmp.replace(path)  # atomic: a reader never sees half a file
            finally:
                tmp.unlink(missing_ok=True)  # nothing left behind when the write or the rename failed
            print(f"wrote {path}", file=out)
    return 0
