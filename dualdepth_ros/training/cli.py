"""``dualdepth train``: train the two-branch depth net and the PoseNet from rosbags."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from ..config import DEFAULT_CONFIG


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bag",
        action="append",
        required=True,
        metavar="DIR",
        help="a rosbag2 folder (sqlite3/mcap), a ROS 1 .bag, or a folder of bags; repeat for more",
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory: checkpoints, TensorBoard, metrics")
    p.add_argument(
        "--config",
        action="append",
        metavar="YAML",
        help=f"training config (default {DEFAULT_CONFIG.name}); repeat to stack overrides, "
        "e.g. --config config/ablations/monodepth2.yaml",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set optim.batch_size=4 --set loss.temporal.enabled=false",
    )
    p.add_argument("--image-topic", help="image topic (Image or CompressedImage); auto-detected if the bag has one")
    p.add_argument("--info-topic", help="camera_info topic; auto-detected if the bag has one")
    p.add_argument(
        "--intrinsics", metavar="FX,FY,CX,CY", help="intrinsics of the recorded images when the bag has no camera_info"
    )
    p.add_argument(
        "--gt-depth-topic", help="ground-truth depth topic (validation metrics by eval's protocol; never trained on)"
    )
    p.add_argument(
        "--gt-pose-topic", help="ground-truth camera pose topic, or TOPIC:CHILD_FRAME for TF (validation only)"
    )
    p.add_argument(
        "--pose-topic",
        help="train with the motion from this pose topic (PoseStamped, Odometry …) instead of the PoseNet "
        "(sets pose.source=topic; depth comes out in metres); see pose.camera_in_body for a body-frame topic",
    )
    p.add_argument("--moving-mask-topic", help="moving-object mask topic (evaluation only)")
    p.add_argument("--max-steps", type=int, help="stop after N optimiser steps (default: optim.epochs epochs)")
    p.add_argument("--batch-size", type=int, help="clips per step per process (optim.batch_size)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="train.device (default auto)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR exactly where it stopped")
    p.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from this checkpoint's (or packed model's) weights with a fresh optimiser, schedule and step 0 "
        "(fine-tuning, e.g. models/dualdepth_default.pt); the config must build the same network",
    )
    p.add_argument(
        "--resume-if-exists",
        action="store_true",
        help="resume when RUN_DIR holds a checkpoint, else start a new run (with --init: from its weights); "
        "idempotent `make train`",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from ..errors import DualDepthError
    from .trainer import train

    if args.init and args.resume:
        raise DualDepthError(
            "--init starts a new run from a checkpoint's weights and --resume continues a run: give one"
        )
    overrides = list(args.set)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.batch_size is not None:
        overrides.append(f"optim.batch_size={args.batch_size}")
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    if args.pose_topic:
        if args.gt_pose_topic and args.gt_pose_topic != args.pose_topic:
            raise DualDepthError("--pose-topic and --gt-pose-topic name different topics; give one")
        overrides.append("pose.source=topic")
        args.gt_pose_topic = args.pose_topic
    data = {
        "image_topic": args.image_topic,
        "camera_info_topic": args.info_topic,
        "intrinsics": args.intrinsics,
        "gt_depth_topic": args.gt_depth_topic,
        "gt_pose_topic": args.gt_pose_topic,
        "gt_moving_mask_topic": args.moving_mask_topic,
    }
    resume = args.resume or (args.resume_if_exists and (Path(args.out) / "last.pt").exists())
    summary = train(
        args.bag,
        args.out,
        args.config or [str(DEFAULT_CONFIG)],
        overrides,
        data_overrides=data,
        resume=resume,
        progress=not args.no_progress,
        init=None if resume else args.init,  # --resume-if-exists --init: a started fine-tuning run continues
    )
    if args.json:
        json.dump(summary, sys.stdout, indent=2, default=float)
        print()
    else:
        print(
            f"trained {summary['step']}/{summary['total_steps']} steps in {summary['seconds']:.0f} s; "
            f"checkpoint {args.out}/last.pt"
        )
    signum = summary.get("stopped_by_signal")
    if signum:
        # Not finished: exit as a process killed by that signal would (130 SIGINT, 143 SIGTERM), so that
        # `make train && make export-default` stops here.
        print(
            f"stopped by {signal.Signals(signum).name} before the last step; "
            f"continue with: dualdepth train … --out {args.out} --resume",
            file=sys.stderr,
        )
        return 128 + int(signum)
    return 0
