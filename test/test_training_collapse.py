"""The trainer's ground-truth-free collapse check: in validation, in the run summary, and the best weights by it."""

import json
from pathlib import Path

import numpy as np
import pytest
from test_training import tiny_cfg

from dualdepth_ros import bagio
from dualdepth_ros.images import decode_image
from dualdepth_ros.intrinsics import Intrinsics
from dualdepth_ros.training.checkpoint import load_checkpoint, model_from_checkpoint
from dualdepth_ros.training.runlog import RunLogger
from dualdepth_ros.training.trainer import Trainer

SAMPLE_K = Intrinsics(160.0, 160.0, 159.5, 47.5, 320, 96)  # the sample drive's camera (its README)
LIMITS = (1 / 10.01, 100.0)


@pytest.fixture(scope="module")
def trained(sample_bag: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Path, dict]:
    """Two steps of a tiny model with a validation after each: the check runs on its (untrained) depth."""
    out = tmp_path_factory.mktemp("collapse") / "run"
    cfg = tiny_cfg("train.max_steps=2", "train.val_every=1", "data.cache_dir=memory")
    trainer = Trainer(cfg, [str(sample_bag)], out, progress=False)
    summary = trainer.fit()
    return trainer, out, summary


def _gt_depth(sample_bag: Path) -> np.ndarray:
    """Every 10th ground-truth depth of the sample drive as the depth head would give it (sky at its far limit)."""
    maps = np.stack([decode_image(m.msg) for m in bagio.read_messages(sample_bag, ["/gt/depth"])][::10])
    return np.where(np.isfinite(maps), np.clip(maps, *LIMITS), LIMITS[1]).astype(np.float32)


def test_validation_reports_the_check_and_keeps_the_healthiest_weights(trained) -> None:
    trainer, out, summary = trained
    assert len(trainer.history) == 2
    for val in trainer.history:
        report = val["collapse"]
        assert 0.0 <= report["health"] <= 1.0 and report["n_frames"] == val["val_clips"]
        assert {t["name"] for t in report["tests"]} >= {"road_order", "road_plane", "spread", "pinned"}
        assert report["passed"] == (not report["failures"])
    best = max(trainer.history, key=lambda v: v["collapse"]["health"])
    assert summary["best_health"]["step"] == best["step"]
    assert summary["best_health"]["health"] == pytest.approx(best["collapse"]["health"])
    assert summary["collapse_check"] == trainer.history[-1]["collapse"]["passed"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["best_health"] == summary["best_health"]
    # best_health.pt is a packed model of that step that loads safely and rebuilds the network.
    ckpt = load_checkpoint(out / "best_health.pt")
    assert ckpt["step"] == best["step"] and ckpt["collapse"]["health"] == pytest.approx(best["collapse"]["health"])
    assert "optimizer" not in ckpt
    model_from_checkpoint(out / "best_health.pt")


def test_a_good_depth_then_an_inverted_one_warns_and_keeps_the_good_weights(
    trained, sample_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer, _, _ = trained
    trainer.out = tmp_path
    trainer.best_health = None
    good = _gt_depth(sample_bag)
    inverted = (good.min() * good.max() / good).astype(np.float32)  # near ↔ far, same range
    cams = [SAMPLE_K] * len(good)
    log = RunLogger(tmp_path, 10, 0, enabled=True)
    try:
        trainer.step = 5
        good_report = trainer._collapse_check(list(good), cams)
        assert good_report["passed"], good_report["failures"]
        trainer._keep_best_by_collapse_check(log, good_report)
        trainer.step = 6
        bad_report = trainer._collapse_check(list(inverted), cams)
        assert not bad_report["passed"] and bad_report["health"] < good_report["health"]
        trainer._keep_best_by_collapse_check(log, bad_report)
    finally:
        log.close()
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "WARNING: collapse check failed at step 6" in text
    assert f"{tmp_path / 'best_health.pt'} (step 5" in text
    assert trainer.best_health["step"] == 5 and trainer.best_health["passed"]
    assert load_checkpoint(tmp_path / "best_health.pt")["step"] == 5  # the inverted step did not replace it
