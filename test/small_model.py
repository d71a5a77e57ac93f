"""The small untrained two-branch model that the evaluation tests share (96×32, tiny encoders)."""

from __future__ import annotations

from pathlib import Path

import torch

from dualdepth_ros import cli
from dualdepth_ros.config import load_config
from dualdepth_ros.data import DataConfig
from dualdepth_ros.networks import DepthModel
from dualdepth_ros.training.checkpoint import atomic_save, make_checkpoint

W, H = 96, 32
GT_TOPICS = {"gt_depth_topic": "/gt/depth", "gt_pose_topic": "/gt/pose", "gt_moving_mask_topic": "/gt/moving_mask"}
LIGHT = [
    f"input.width={W}",
    f"input.height={H}",
    "model.encoder=resnet10",
    "model.encoder_width=8",
    "model.decoder_channels=[4, 8, 8, 16, 16]",
    "pose.encoder=resnet10",
    "pose.encoder_width=8",
]


def write_small_checkpoint(folder: Path, cache_dir: Path) -> Path:
    """An untrained two-branch model at 96×32 whose data config caches frames in ``cache_dir``."""
    torch.manual_seed(0)
    cfg = load_config("config/train.yaml", overrides=LIGHT)
    path = folder / "small.pt"
    atomic_save(make_checkpoint(DepthModel(cfg), cfg, DataConfig(cache_dir=str(cache_dir)), step=7), path)
    return path


def eval_cli(*argv: object) -> int:
    return cli.main(["eval", *map(str, argv)])
