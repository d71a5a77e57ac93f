"""``dualdepth bench <name>``: benchmarks, one module per benchmark.

To add one (say ``step``), write ``dualdepth_ros/bench/step.py`` with::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

and add one line to :data:`BENCHMARKS`. Every benchmark should accept ``--json`` (print the
figures as one JSON object on stdout) and otherwise print a short human-readable table.
A benchmark module that fails to import does not break the others: selecting it reports the
import error.
"""

from __future__ import annotations

import argparse
import importlib

from ..errors import DualDepthError

#: name → (module, one-line help). Keep this table true: only benchmarks that exist.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "render": ("dualdepth_ros.bench.render", "synthetic-world rendering throughput (frames/s)"),
    "step": ("dualdepth_ros.bench.step", "one training step (forward + backward) per configuration and size"),
    "train": ("dualdepth_ros.bench.train", "end-to-end training throughput (clips/s) with the real trainer"),
    "node": ("dualdepth_ros.bench.node", "depth_node end-to-end latency (two processes) beside the backend alone"),
    "memory": ("dualdepth_ros.bench.memory", "peak host memory of one training step (activation checkpointing on/off)"),
    "infer": ("dualdepth_ros.bench.infer", "inference latency (p50/p95) and throughput per backend at batch 1"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_bench_module=module_name, _bench_import_error=None)
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:  # report it only if this benchmark is the one asked for
            sp.set_defaults(_bench_import_error=f"benchmark {name!r} is unavailable: {err}")
            continue
        module.add_arguments(sp)


def run(args: argparse.Namespace) -> int:
    if args._bench_import_error:
        raise DualDepthError(args._bench_import_error)
    return int(importlib.import_module(args._bench_module).run(args) or 0)
