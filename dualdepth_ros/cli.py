"""``dualdepth <command>``: the package's command-line entry point.

Each command lives in the module that owns its job and exposes two functions::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

Modules are imported only when their command runs, so ``dualdepth --help`` stays fast.
A :class:`~dualdepth_ros.errors.DualDepthError` is printed as ``error: …`` (exit 2) with no
traceback; ``DUALDEPTH_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import DualDepthError

#: name → (module, one-line help). Keep this table true: only commands that exist.
COMMANDS: dict[str, tuple[str, str]] = {
    "make-sample": ("dualdepth_ros.synth.record", "render a synthetic drive and record it as a rosbag2"),
    "kitti-to-bag": ("dualdepth_ros.data.kitti", "convert a KITTI raw *_sync drive to a rosbag2 (LiDAR depth, poses)"),
    "train": ("dualdepth_ros.training.cli", "train the depth and pose networks from rosbags (self-supervised)"),
    "pack": ("dualdepth_ros.training.pack", "strip a training checkpoint into a small model file to ship"),
    "ablate": ("dualdepth_ros.ablation", "run the ablation study (equal budget) and write its table"),
    "eval": ("dualdepth_ros.evaluation.cli", "evaluate a checkpoint on bags with ground-truth depth and/or poses"),
    "infer": ("dualdepth_ros.ros.infer", "run the depth node's processing over a bag and write a bag with its outputs"),
    "demo": (
        "dualdepth_ros.ros.demo",
        "depth_node as its own process on a recorded drive: outputs, mosaic, latency, accuracy",
    ),
    "export": (
        "dualdepth_ros.inference.cli",
        "export a checkpoint to ONNX + model.json (+ weights.pt) for the backends",
    ),
    "bench": ("dualdepth_ros.bench", "run a benchmark (rendering, training, memory, inference)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualdepth",
        description="Self-supervised two-branch monocular depth for ROS 2 cameras.",
    )
    parser.add_argument("--version", action="version", version=f"dualdepth_ros {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        # Arguments are added lazily (below) so that --help of the top level imports nothing heavy.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Find the command (first non-option word) and let its module add its arguments.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMANDS:
        module = importlib.import_module(COMMANDS[command][0])
        sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        module.add_arguments(sub_action.choices[command])
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except DualDepthError as err:
        if os.environ.get("DUALDEPTH_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
