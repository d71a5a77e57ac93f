"""``dualdepth <command>``: the package's command-line entry point.

Each command lives in the module that owns its job and exposes two functions::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

Modules are imported only when their command runs, so ``dualdepth --help`` stays fast.
A :class:`~dualdepth_ros.errors.DualDepthError` is printed as ``error: …`` (exit 2) with no
traceback, and so is a full, read-only or forbidden disk (exit 1: what could not be written, the
system's reason, what to do); ``DUALDEPTH_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from pathlib import Path

from . import __version__
from .errors import DualDepthError

#: name → (module, one-line help). Keep this table true: only commands that exist.
COMMANDS: dict[str, tuple[str, str]] = {
    "make-sample": ("dualdepth_ros.synth.record", "render a synthetic drive and record it as a rosbag2"),
    "kitti-to-bag": ("dualdepth_ros.data.kitti", "convert a KITTI raw *_sync drive to a rosbag2 (LiDAR depth, poses)"),
    "gpu-cache": ("dualdepth_ros.data.gpu_cache", "decode the real drives into a small folder that travels (GPU runs)"),
    "train": ("dualdepth_ros.training.cli", "train the depth and pose networks from rosbags (self-supervised)"),
    "pack": ("dualdepth_ros.training.pack", "strip a training checkpoint into a small model file to ship"),
    "ablate": ("dualdepth_ros.ablation", "run the ablation study (equal budget) and write its table"),
    "eval": ("dualdepth_ros.evaluation.cli", "evaluate a checkpoint on bags with ground-truth depth and/or poses"),
    "real-eval": (
        "dualdepth_ros.evaluation.drives",
        "score a model and a constant depth on every real drive with ground truth (one table)",
    ),
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
    except Exception as err:  # noqa: BLE001 - only a disk error becomes a line; anything else is re-raised
        disk = _disk_error(err)
        if disk is None or os.environ.get("DUALDEPTH_DEBUG"):
            raise
        print(f"error: {_describe_disk_error(disk, args)}", file=sys.stderr)
        return 1


#: errno → (what happened, what to do) for the errors a full, read-only or foreign disk gives.
DISK_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free space there or write to another disk"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space there or write to another disk"),
    errno.EFBIG: ("the file is too large (file system or `ulimit -f` limit)", "write to another disk"),
    errno.EROFS: ("the file system is read-only", "write to a writable disk"),
    errno.EACCES: ("permission denied", "write to a folder you own"),
    errno.EPERM: ("operation not permitted", "write to a folder you own"),
}


def _disk_error(err: BaseException) -> OSError | None:
    """The disk-full/read-only/permission :class:`OSError` behind ``err`` (itself or a cause), or None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_ERRORS:
            return err
        err = err.__cause__ or err.__context__
    return None


def _describe_disk_error(err: OSError, args: argparse.Namespace) -> str:
    """One line: what could not be written, the system's reason, what to do."""
    what, todo = DISK_ERRORS[err.errno]
    outputs = [(a, v) for a in ("out", "json", "plots") if isinstance(v := getattr(args, a, None), str) and v != "-"]
    target = None
    if err.filename:
        # Name the user's output, not the hidden temporary file or folder written beside or inside it.
        failed = Path(os.fsdecode(err.filename)).absolute()
        for _, value in outputs:
            out = Path(value).absolute()
            inside = out in failed.parents or failed in out.parents  # a file in it, or a folder on the way
            if failed == out or inside or (failed.parent == out.parent and out.name in failed.name):
                target = value
                break
        target = target or os.fsdecode(err.filename)
    elif outputs:
        target = outputs[0][1]
    option = next((f"--{a}" for a, v in outputs if v == target), "--out")
    where = f"cannot write {target}" if target else "cannot write the output"
    return f"{where}: {what} ({errno.errorcode[err.errno]}); {todo} (another {option})"


if __name__ == "__main__":
    sys.exit(main())
