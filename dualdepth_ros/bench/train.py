"""``dualdepth bench train``: end-to-end training throughput (clips/s) with the real trainer.

Runs :class:`~dualdepth_ros.training.trainer.Trainer` (bag → cached frames → clips → model →
losses → optimiser) on a bag for a few steps per configuration and reports clips per second
after warm-up, and on CUDA the peak GPU memory. Validation and checkpoints are switched off so
only training is timed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ..config import DEFAULT_CONFIG

SAMPLE = Path(__file__).resolve().parents[2] / "test" / "data" / "sample_drive"
CONFIGS = {
    "monodepth2": [str(DEFAULT_CONFIG.parent / "ablations" / "monodepth2.yaml")],
    "two-branch": [str(DEFAULT_CONFIG)],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bag", default=str(SAMPLE), help="bag to train on (default: the bundled sample drive)")
    p.add_argument("--size", action="append", metavar="WxH", help="input size(s) (default 320x96)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=6, help="timed steps per configuration (after 2 warm-up steps)")
    p.add_argument("--config", action="append", choices=sorted(CONFIGS), help="configurations (default: all)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision on CUDA")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def _measure(bag: str, configs: list[str], size: tuple[int, int], args: argparse.Namespace) -> dict:
    from ..config import load_config
    from ..training.trainer import Trainer

    w, h = size
    warm = 2
    overrides = [
        f"input.width={w}",
        f"input.height={h}",
        f"optim.batch_size={args.batch_size}",
        f"train.max_steps={warm + args.steps}",
        f"train.device={args.device}",
        f"train.amp={str(args.amp).lower()}",
        "train.val_every=0",
        "train.checkpoint_every=1000000",
        "train.image_every=0",
        "train.num_workers=0",
        "train.log_every=1000000",
        "data.val_fraction=0.0",
        "data.split_gap_s=0.0",
    ]
    cfg = load_config(*configs, overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, [bag], Path(tmp) / "run", progress=False)
        loader = iter(trainer._loader(0, 0))
        cuda = trainer.cuda
        times = []
        for i in range(warm + args.steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()  # from loading the batch (cached frames, augmentation) to the update
            trainer.train_step(next(loader))
            if cuda:
                torch.cuda.synchronize()
            if i >= warm:
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    step_s = sorted(times)[len(times) // 2]
    plan = trainer.memory_plan  # the trainer's own trial steps on 1 and 2 clips (GPU: the allocator's peak)
    return {
        "size": f"{w}x{h}",
        "batch": args.batch_size,
        "device": str(trainer.device),
        "median_step_s": step_s,
        "clips_per_s": args.batch_size / step_s,
        "peak_gpu_mib": peak,
        "per_clip_mib": plan.per_clip / 2**20 if plan is not None else None,
        "fixed_mib": plan.fixed / 2**20 if plan is not None else None,
        "micro_batch": trainer.micro_batch,
    }


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in (args.size or ["320x96"])]
    results = []
    for name in args.config or sorted(CONFIGS):
        for size in sizes:
            r = {"config": name, **_measure(args.bag, CONFIGS[name], size, args)}
            results.append(r)
            if not args.json:
                mem = f", peak GPU {r['peak_gpu_mib']:.0f} MiB" if r["peak_gpu_mib"] is not None else ""
                print(
                    f"{name:>11} {r['size']:>8} batch {r['batch']} on {r['device']}: "
                    f"{r['median_step_s']:.3f} s/step, {r['clips_per_s']:.2f} clips/s{mem}",
                    flush=True,
                )
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2))
    return 0
