"""`dualdepth pack` (the shipped model file) and `dualdepth ablate` (the ablation table)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dualdepth_ros.training.checkpoint import load_checkpoint, model_from_checkpoint

#: Budget stacked on every ablation variant in the test: tiny networks, one step.
TINY_BUDGET = {
    "input": {"width": 96, "height": 32},
    "model": {"encoder": "resnet10", "encoder_width": 8, "decoder_channels": [8, 8, 16, 16, 16]},
    "pose": {"encoder": "resnet10", "encoder_width": 8},
    "optim": {"batch_size": 2},
    "train": {"max_steps": 1, "num_workers": 0, "val_every": 0, "image_every": 0},
}


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    e = os.environ.copy()
    e["DUALDEPTH_CACHE"] = str(tmp_path / "cache")
    return e


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_pack_strips_training_state_and_keeps_outputs(
    sample_bag: Path, tmp_path: Path, dualdepth_exe: list[str], env: dict[str, str]
) -> None:
    budget = tmp_path / "budget.yaml"
    budget.write_text(yaml.safe_dump(TINY_BUDGET))
    run(
        dualdepth_exe
        + [
            "train",
            "--bag",
            str(sample_bag),
            "--out",
            str(tmp_path / "run"),
            "--config",
            "config/train.yaml",
            "--config",
            str(budget),
            "--no-progress",
        ],
        env,
    )
    run(
        dualdepth_exe
        + ["pack", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "model.pt")],
        env,
    )
    full, packed = load_checkpoint(tmp_path / "run" / "last.pt"), load_checkpoint(tmp_path / "model.pt")
    assert "optimizer" not in packed and "rng" not in packed and packed["weights_dtype"] == "float16"
    assert all(v.dtype != torch.float32 for v in packed["model"].values())
    assert packed["input"] == full["input"] and packed["config"] == full["config"]
    assert (tmp_path / "model.pt").stat().st_size < 0.5 * (tmp_path / "run" / "last.pt").stat().st_size
    x = torch.rand(1, 3, 32, 96)
    with torch.inference_mode():
        a = model_from_checkpoint(full).depth_net(x)[("depth_fused", 0)]
        b = model_from_checkpoint(packed).depth_net(x)[("depth_fused", 0)]
    assert torch.allclose(a, b, rtol=2e-2, atol=1e-3)


def _constant_abs_rel(bag: Path) -> float:
    """Mean AbsRel of a constant prediction, median-scaled per frame, over every frame of ``bag``, scored on the
    GT's own 320×96 grid by the independent evaluator (kitti protocol: the sample is KITTI-shaped; 96×32 centre crop).
    """
    import independent_eval

    from dualdepth_ros import bagio
    from dualdepth_ros.images import decode_image
    from dualdepth_ros.preprocess import plan_resize

    depths = [decode_image(m.msg) for m in bagio.read_messages(bag, ["/gt/depth"])]
    plan = plan_resize(320, 96, 96, 32, "crop_center")
    window = (plan.scaled_width, plan.scaled_height, plan.x0, plan.y0)
    metrics, _ = independent_eval.score(depths, [np.ones((32, 96))] * len(depths), window, garg=True)
    return metrics["abs_rel"]


def _no_motion_ate(bag: Path) -> float:
    """ATE of a camera that never moves, from the bag's /gt/pose messages alone: the predicted path is a point,
    the least-squares scale 0, so each 5-frame snippet scores sqrt(Σ‖p_k − p_0‖²)/5 (distances need no rotation).
    """
    from dualdepth_ros import bagio

    p = np.array([[m.msg.pose.position.x, m.msg.pose.position.y, m.msg.pose.position.z]
                  for m in bagio.read_messages(bag, ["/gt/pose"])])  # fmt: skip
    snippets = [p[i : i + 5] - p[i] for i in range(len(p) - 4)]
    return float(np.mean([np.sqrt((s**2).sum()) / 5 for s in snippets]))


def test_ablate_writes_the_table_and_skips_finished_variants(
    sample_bag: Path, tmp_path: Path, dualdepth_exe: list[str], env: dict[str, str]
) -> None:
    budget = tmp_path / "budget.yaml"
    budget.write_text(yaml.safe_dump(TINY_BUDGET))
    cmd = dualdepth_exe + [
        "ablate",
        "--bag",
        str(sample_bag),
        "--heldout",
        str(sample_bag),
        "--out",
        str(tmp_path / "abl"),
        "--budget",
        str(budget),
        "--only",
        "monodepth2",
        "--only",
        "full",
        "--table",
        str(tmp_path / "ablation.md"),
        "--json",
        str(tmp_path / "ablation.json"),
        "--protocol",
        "kitti",
        "--no-progress",
    ]
    first = run(cmd, env)
    assert "[monodepth2] training" in first.stdout and "[full] training" in first.stdout
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert "with only the rows `monodepth2`, `full` (`--only`)" in table[2]  # a partial table says so
    rows = [line for line in table if line.startswith(("| single-branch", "| two-branch")) and line.count("|") == 9]
    assert len(rows) == 2
    baseline, full = (r.split("|")[2:8] for r in rows)
    float(baseline[0]), float(full[0])  # AbsRel is a number for both
    assert baseline[2].strip() == "—" and float(full[2]) >= 0  # no confidence → no AUSE for the baseline
    assert float(baseline[4]) > 0 and float(full[4]) > 0  # temporal ratio: GT pose and masks were found
    float(baseline[5]), float(full[5])  # training minutes (0.0 for one tiny step)
    # The reference row: a constant's depth metrics and a still camera's ATE, which match independent computations.
    (ref,) = [line.split("|")[2:8] for line in table if line.startswith("| *constant depth, no motion")]
    assert [c.strip() for c in ref[2:5]] == ["—"] * 3
    data = json.loads((tmp_path / "ablation.json").read_text())
    still_ate = data["constant_reference"]["pose"]["ate_mean"]
    assert float(ref[5].strip(" *")) == pytest.approx(still_ate, abs=5e-4)
    assert still_ate == pytest.approx(_no_motion_ate(sample_bag), rel=1e-6)
    starts = [line for line in table if line.startswith("| two-branch, full method | ")][-1].split("|")
    ate = data["variants"][1]["runs"][0]["eval"]["pose"]["ate_mean"]
    assert starts[2].strip() == f"{int(ate < 0.1 * still_ate)}/1" and starts[5].strip().startswith(f"0: {ate:.3f}, ")
    const = data["constant_reference"]["median_scaled"]
    assert float(ref[0].strip(" *")) == pytest.approx(const["abs_rel"], abs=5e-4)
    assert const["abs_rel"] == pytest.approx(_constant_abs_rel(sample_bag), rel=1e-9)
    assert "1 steps × batch 2 at 96×32" in data["budget"] and data["budget"] in "\n".join(table)
    assert [v["slug"] for v in data["variants"]] == ["monodepth2", "full"]
    assert all(v["train_seconds"] > 0 for v in data["variants"])  # the checkpoints' running totals
    second = run(cmd, env)
    # Finished variants are only re-evaluated (the printed table itself speaks of the "training budget").
    assert "] training:" not in second.stdout and "[full] " in second.stdout


def test_starts_and_collapses_are_counted_per_variant() -> None:
    from dualdepth_ros.ablation import format_starts

    def run(seed: int, ate: float, passed: bool | None, inverted: bool = False) -> dict:
        check = None if passed is None else {"passed": passed, "health": 0.9 if passed else 0.4, "inverted": inverted}
        return {"seed": seed, "eval": {"pose": {"ate_mean": ate}}, "collapse": check}

    results = [{"label": "full", "runs": [run(0, 0.01, True), run(1, 0.09, False, True), run(2, 0.5, None)]}]
    text = format_starts(results, {"pose": {"ate_mean": 0.8}})
    (row,) = [line for line in text.splitlines() if line.startswith("| full")]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1:4] == ["1/3", "1/2", "1/2"]  # 0.09 ≥ 0.08 has not started; seed 2 has no collapse check
    assert cells[4] == "0: 0.010, 0.90; 1: 0.090, 0.40 FAILED; 2: 0.500, —"
    assert "no ATE for the no-motion reference" in format_starts(results, {"pose": None})


def test_seeds_are_averaged_with_their_spread() -> None:
    from dualdepth_ros.ablation import _over_seeds, _row

    runs = [
        {
            "eval": {"median_scaled": {"abs_rel": a, "a1": 0.5}, "pose": {"ate_mean": 0.1}, "confidence": None},
            "train_seconds": 60.0 * (i + 1),
            "curve": [{"step": 100, "abs_rel": a + 0.1, "a1": 0.4, "ate_mean": None}],
        }
        for i, a in enumerate((0.2, 0.3, 0.4))
    ]
    merged = _over_seeds(runs)
    assert merged["eval"]["median_scaled"]["abs_rel"] == pytest.approx(0.3)
    assert merged["eval"]["median_scaled"]["abs_rel_std"] == pytest.approx(np.std([0.2, 0.3, 0.4]))
    assert merged["train_seconds"] == pytest.approx(120.0)
    assert merged["curve"] == [{"step": 100, "abs_rel": pytest.approx(0.4), "a1": pytest.approx(0.4), "ate_mean": None}]
    cells = _row("x", merged["eval"], merged["train_seconds"])
    assert cells[1] == "0.300 ± 0.082" and cells[2] == "0.500 ± 0.000" and cells[3] == "—" and cells[-1] == "2.0"
    assert _row("x", merged["eval"], None, ("depth",))[1:6] == ["—"] * 5  # a rung with GT depth: no depth figures


def test_the_budget_names_every_seed_once() -> None:
    from dualdepth_ros.ablation import describe_budget
    from dualdepth_ros.config import load_config

    cfg = load_config("config/train.yaml", overrides=["optim.seed=7"])
    assert describe_budget(cfg, 5, ["b.yaml"], [])[-len("seed 7 (`b.yaml`)") :] == "seed 7 (`b.yaml`)"
    text = describe_budget(cfg, 5, ["b.yaml"], [], [0, 1, 2])
    assert "seeds 0, 1, 2 (`b.yaml`)" in text and "seed 7" not in text
