"""``dualdepth bench step``: the cost of one training step per configuration and input size.

For each configuration (default: the ``monodepth2`` baseline and the full two-branch ``train``)
and each size (default 320×96 and 640×192) it times one training step — the networks' forward
pass, the losses and the backward pass, batch 4, no optimiser update — on random images, and
reports parameter counts and FLOPs (``torch.utils.flop_counter``: convolutions and matmuls, the
loss's 3×3 SSIM filters included; 2 FLOPs per multiply-add).

Example::

    dualdepth bench step                       # table
    dualdepth bench step --json --threads 1    # one JSON object
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from ..config import load_config
from ..geometry import Intrinsics
from ..losses import compute_losses
from ..networks import DepthModel, count_flops, count_parameters

DEFAULT_CONFIGS = ("monodepth2", "train")
DEFAULT_SIZES = ("320x96", "640x192")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="shipped names or YAML paths")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="WIDTHxHEIGHT, e.g. 640x192")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per case (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def _batch(frames: tuple[int, ...], b: int, w: int, h: int, device: torch.device) -> dict[Any, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch: dict[Any, torch.Tensor] = {("color", f, 0): torch.rand(b, 3, h, w, generator=g).to(device) for f in frames}
    k = Intrinsics(fx=0.58 * w, fy=1.92 * h, cx=(w - 1) / 2, cy=(h - 1) / 2, width=w, height=h)  # KITTI-like
    batch[("K", 0)] = k.tensor(b, device=device)
    return batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare(cfg: Any, w: int, h: int, batch_size: int, device: torch.device) -> tuple[Any, Any, Any]:
    torch.manual_seed(0)
    model = DepthModel(cfg).to(device).train()
    return cfg, model, _batch(model.layout.frames, batch_size, w, h, device)


def _time_step(case: tuple[Any, Any, Any], device: torch.device) -> tuple[float, float, float, float]:
    """(networks forward, losses forward, backward, CPU seconds of the whole step) of one step."""
    cfg, model, batch = case
    model.zero_grad(set_to_none=True)
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    outputs = model(batch)
    _sync(device)
    t1 = time.perf_counter()
    total, _ = compute_losses(batch, outputs, cfg)
    _sync(device)
    t2 = time.perf_counter()
    total.backward()
    _sync(device)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, time.process_time() - c0


def bench_cases(
    cases: dict[str, tuple[Any, Any, Any]], repeats: int, warmup: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Time every case, interleaved (A, B, A, B …) so that machine load affects all alike; medians."""
    runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in cases}
    for i in range(warmup + repeats):
        for name, case in cases.items():
            r = _time_step(case, device)
            if i >= warmup:
                runs[name].append(r)
    out = {}
    for name, rs in runs.items():
        nets, losses, bwd, cpu = (statistics.median(col) for col in zip(*rs))
        out[name] = {
            "networks_s": nets,
            "losses_s": losses,
            "forward_s": nets + losses,
            "backward_s": bwd,
            "step_s": nets + losses + bwd,
            "cpu_s": cpu,
        }
    return out


def bench_case(cfg: Any, w: int, h: int, batch_size: int, repeats: int, warmup: int, device: torch.device) -> dict:
    """Time forward (networks + losses) and backward of one step; returns seconds (medians)."""
    return bench_cases({"case": _prepare(cfg, w, h, batch_size, device)}, repeats, warmup, device)["case"]


def step_flops(cfg: Any, w: int, h: int, batch_size: int) -> int:
    """FLOPs of one training step (forward + losses + backward) at ``w``×``h``."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = DepthModel(cfg).train()
    batch = _batch(model.layout.frames, batch_size, w, h, torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter:
        total, _ = compute_losses(batch, model(batch), cfg)
        total.backward()
    return int(counter.get_total_flops())


def run(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [_parse_size(s) for s in args.sizes]
    report: dict[str, Any] = {
        "batch": args.batch,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timing": f"median of {args.repeats} interleaved steps after {args.warmup} warm-up; cpu = process CPU time",
        "configs": {},
    }
    cfgs = {name: load_config(name) for name in args.configs}
    for name, cfg in cfgs.items():
        model = DepthModel(cfg).eval()
        report["configs"][name] = {
            "depth_params": count_parameters(model.depth),
            "pose_params": count_parameters(model.pose),
            "frames": list(model.layout.frames),
            "depth_frames": list(model.layout.depth_frames),
            "sizes": {},
        }
    first = args.configs[0]
    for w, h in sizes:
        cases = {name: _prepare(cfg, w, h, args.batch, device) for name, cfg in cfgs.items()}
        timed = bench_cases(cases, args.repeats, args.warmup, device)
        for name, cfg in cfgs.items():
            case: dict[str, Any] = {}
            if not args.no_flops:
                model = cases[name][1]
                with torch.no_grad():
                    x = torch.rand(1, 3, h, w, device=device)
                    case["depth_gflops_per_image"] = count_flops(model.depth, x) / 1e9
                    case["pose_gflops_per_call"] = count_flops(model.pose, [x] * model.pose.num_frames) / 1e9
                case["step_gflops"] = step_flops(cfg, w, h, args.batch) / 1e9
            case.update(timed[name])
            case["step_ratio"] = timed[name]["step_s"] / timed[first]["step_s"]
            case["cpu_ratio"] = timed[name]["cpu_s"] / timed[first]["cpu_s"]
            report["configs"][name]["sizes"][f"{w}x{h}"] = case
        del cases

    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"training step, batch {args.batch}, {report['device']}, {report['threads']} threads, torch {torch.__version__}"
    )
    print(f"({report['timing']}; FLOPs: 2 per multiply-add, convs + matmuls; × = step time / {first}'s)")
    header = f"{'config':<12} {'size':>8} {'depth M':>8} {'pose M':>7} {'depth GF/img':>12} {'step GF':>8}"
    print(header + f" {'nets s':>7} {'loss s':>7} {'bwd s':>7} {'step s':>7} {'×':>6} {'× cpu':>6}")
    for name, entry in report["configs"].items():
        for size, case in entry["sizes"].items():
            gf = case.get("depth_gflops_per_image", float("nan"))
            sgf = case.get("step_gflops", float("nan"))
            print(
                f"{name:<12} {size:>8} {entry['depth_params'] / 1e6:>8.2f} {entry['pose_params'] / 1e6:>7.2f} "
                f"{gf:>12.2f} {sgf:>8.1f} {case['networks_s']:>7.2f} {case['losses_s']:>7.2f} "
                f"{case['backward_s']:>7.2f} {case['step_s']:>7.2f} "
                f"{case['step_ratio']:>6.2f} {case['cpu_ratio']:>6.2f}"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dualdepth bench step", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
