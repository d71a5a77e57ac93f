"""The trainer on the committed sample drive: exact resume, interruption, DDP (gloo), errors."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_config import TINY_MODEL

from dualdepth_ros.config import DEFAULT_CONFIG, load_config
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.training.checkpoint import atomic_save, load_checkpoint, model_from_checkpoint
from dualdepth_ros.training.trainer import Trainer

#: A tiny but complete two-branch configuration (every loss term on) that trains in seconds.
TINY = [
    *TINY_MODEL,
    "train.log_every=1",
    "train.image_every=2",
    "train.checkpoint_every=100",
    "train.val_max_clips=4",
]


@pytest.fixture(scope="module", autouse=True)
def frame_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One decoded-frame cache for the module (decode the sample once), outside the user's home."""
    old = os.environ.get("DUALDEPTH_CACHE")
    os.environ["DUALDEPTH_CACHE"] = str(tmp_path_factory.mktemp("frame_cache"))
    yield
    if old is None:
        os.environ.pop("DUALDEPTH_CACHE")
    else:
        os.environ["DUALDEPTH_CACHE"] = old


def tiny_cfg(*extra: str):
    return load_config(DEFAULT_CONFIG, overrides=TINY + list(extra))


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_after_interrupt_is_exact(sample_bag: Path, tmp_path: Path) -> None:
    steps = 2
    straight = Trainer(tiny_cfg(f"train.max_steps={steps}"), [str(sample_bag)], tmp_path / "a", progress=False)
    straight.fit()
    reference = params(straight.model)

    class Interrupted(Trainer):
        def train_step(self, items):  # the real SIGINT handler stops the run after this step
            out = super().train_step(items)
            if self.step == 0:  # incremented by the loop after this returns: stop at step 1
                os.kill(os.getpid(), signal.SIGINT)
            return out

    first = Interrupted(tiny_cfg(f"train.max_steps={steps}"), [str(sample_bag)], tmp_path / "b", progress=False)
    summary = first.fit()
    assert summary["step"] == 1
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ckpt["step"] == 1 and not list((tmp_path / "b").glob(".last.pt.*"))  # no half-written file

    resumed = Trainer(
        tiny_cfg(f"train.max_steps={steps}"), [str(sample_bag)], tmp_path / "b", resume=True, progress=False
    )
    assert resumed.step == 1
    second = resumed.fit()
    for k, v in params(resumed.model).items():
        assert torch.equal(v, reference[k]), f"{k} differs after resume"
    final = load_checkpoint(tmp_path / "b" / "last.pt")
    assert final["step"] == steps
    # Training wall time is a running total over the interrupted and the resumed run.
    assert 0 < ckpt["train_seconds"] <= summary["seconds"]
    assert final["train_seconds"] == pytest.approx(ckpt["train_seconds"] + second["seconds"], rel=0.05, abs=0.5)
    assert second["train_seconds"] == pytest.approx(final["train_seconds"], abs=0.5)
    # The checkpoint records what is needed to rebuild the model and its input pipeline.
    assert final["input"] == {"width": 96, "height": 32, "resize_mode": "crop_center"}
    assert "optical frame" in final["intrinsics_convention"]
    loaded = model_from_checkpoint(tmp_path / "b" / "last.pt")
    out = loaded.depth_net(torch.rand(1, 3, 32, 96))
    assert out[("depth_fused", 0)].shape == (1, 1, 32, 96)
    assert (tmp_path / "b" / "tb").is_dir() and any((tmp_path / "b" / "tb").iterdir())
    assert (tmp_path / "b" / "metrics.json").exists()


def test_run_dir_and_resume_errors(sample_bag: Path, tmp_path: Path) -> None:
    with pytest.raises(DualDepthError, match="no checkpoint to resume"):
        Trainer(tiny_cfg("train.max_steps=1"), [str(sample_bag)], tmp_path / "r", resume=True, progress=False)
    Trainer(tiny_cfg("train.max_steps=1"), [str(sample_bag)], tmp_path / "r", progress=False).fit()
    with pytest.raises(DualDepthError, match="already holds a run"):
        Trainer(tiny_cfg("train.max_steps=2"), [str(sample_bag)], tmp_path / "r", progress=False)
    with pytest.raises(DualDepthError, match="another configuration"):
        Trainer(
            tiny_cfg("train.max_steps=2", "loss.structure.weight=0.25"),
            [str(sample_bag)],
            tmp_path / "r",
            resume=True,
            progress=False,
        )
    # A checkpoint written before a config key existed resumes: the key takes its default.
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    del ckpt["config"]["loss"]["photometric"]["checkpoint"]
    atomic_save(ckpt, tmp_path / "r" / "last.pt")
    # A larger step budget is a change of loop mechanics only: resuming is allowed.
    t = Trainer(tiny_cfg("train.max_steps=2"), [str(sample_bag)], tmp_path / "r", resume=True, progress=False)
    assert t.step == 1 and t.total_steps == 2


def test_cli_missing_topic_is_a_clear_error(sample_bag: Path, tmp_path: Path, dualdepth_exe: list[str]) -> None:
    proc = subprocess.run(
        dualdepth_exe
        + [
            "train",
            "--bag",
            str(sample_bag),
            "--out",
            str(tmp_path / "x"),
            "--image-topic",
            "/nope",
            "--max-steps",
            "1",
        ]
        + [a for s in TINY for a in ("--set", s)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert proc.returncode == 2, proc.stderr
    assert "/nope" in proc.stderr and "/camera/image_raw" in proc.stderr  # lists what the bag has
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x" / "last.pt").exists()


def test_ddp_two_cpu_processes_gloo(sample_bag: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.fail(f"torchrun is missing next to {sys.executable}")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "dualdepth_ros.cli",
        "train",
        "--bag",
        str(sample_bag),
        "--out",
        str(tmp_path / "ddp"),
        "--max-steps",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ] + [a for s in TINY for a in ("--set", s)]
    env = os.environ.copy()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 2
    assert "× 2 processes" in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------
# Memory: measured micro-batches with exact gradient accumulation
# ---------------------------------------------------------------------------------------
def _frozen_batchnorm(model: torch.nn.Module) -> None:
    """BatchNorm with running statistics even in train mode: the only part micro-batching may change."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.forward = lambda x, m=m: torch.nn.functional.batch_norm(  # noqa: E731
                x, m.running_mean, m.running_var, m.weight, m.bias, False
            )


def _micro_batch_gradients(sample_bag: Path, tmp_path: Path, *overrides: str) -> dict[int, dict[str, torch.Tensor]]:
    """Gradients of one step on the same 4 clips with micro-batches of 4 (one pass), 1 and 3 (ragged 2 + 2)."""
    from dualdepth_ros.data.batch import to_model_batch
    from dualdepth_ros.losses import gate_statistic

    grads, threshold = {}, None
    for micro in (4, 1, 3):
        # no random auto-mask tie-breaker: the split would draw it differently
        micro_cfg = ("optim.batch_size=4", f"train.micro_batch={micro}", "loss.photometric.automask_noise=0")
        cfg = tiny_cfg(*micro_cfg, *overrides)
        trainer = Trainer(cfg, [str(sample_bag)], tmp_path / f"m{micro}", progress=False)
        assert trainer.micro_batch == micro
        _frozen_batchnorm(trainer.model)
        torch.manual_seed(0)
        items = torch.utils.data.default_collate([trainer.train_set[i] for i in range(4)])
        if threshold is None:  # gate two of the four clips (the same weights in every run: same seed)
            with torch.no_grad():
                batch = to_model_batch(items, torch.device("cpu"))
                stat = gate_statistic(batch, trainer.model(batch), cfg).sort().values
            threshold = float(stat[1] + stat[2]) / 2
        trainer.cfg.loss.two_branch.gate_threshold = threshold
        trainer.optimizer.step = lambda: None  # keep the weights: compare the accumulated gradients
        torch.manual_seed(1)
        logged = trainer.train_step(items)
        grads[micro] = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        grads[micro]["kept"] = torch.tensor(logged["gate_kept"])
    assert 0.0 < float(grads[4]["kept"]) < 1.0, "the threshold should gate some but not all of the 4 clips"
    return grads


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm()) / max(float(b.norm()), 1e-12)


def test_micro_batches_accumulate_exactly_the_full_batch_gradient(sample_bag: Path, tmp_path: Path) -> None:
    # Every term but the scale anchor is a mean of per-clip values, so accumulation is exact; a wrong
    # accumulation (a missing 1/n, a gate weighted per micro-batch) is off by tens of percent.
    grads = _micro_batch_gradients(sample_bag, tmp_path, "loss.scale_anchor.enabled=false")
    for micro in (1, 3):
        assert grads[micro].keys() == grads[4].keys()
        for name, g in grads[4].items():
            torch.testing.assert_close(grads[micro][name], g, rtol=1e-4, atol=1e-7, msg=f"micro {micro}: {name}")


def test_the_scale_anchor_is_the_one_term_computed_per_micro_batch(sample_bag: Path, tmp_path: Path) -> None:
    # The anchor pins the mean translation of the clips in one forward pass (like any batch statistic
    # under DDP): with micro-batches it is their mean. It reaches only the PoseNet; depth stays exact.
    grads = _micro_batch_gradients(sample_bag, tmp_path / "anchored", "loss.scale_anchor.enabled=true")
    for micro in (1, 3):
        depth = [n for n in grads[4] if n.startswith("depth.")]
        assert depth, list(grads[4])[:5]
        for name in depth:
            torch.testing.assert_close(
                grads[micro][name], grads[4][name], rtol=1e-4, atol=1e-7, msg=f"micro {micro}: {name}"
            )
        pose = max(_relative_error(grads[micro][n], grads[4][n]) for n in grads[4] if n.startswith("pose."))
        assert pose < 0.5, f"micro {micro}: PoseNet gradient differs by {pose:.3g}"
        if micro == 1:  # one clip per pass: the anchor pins each clip's own translation, not the mean
            assert pose > 1e-4, f"the anchor's gradient should differ per clip (relative {pose:.3g})"


def test_memory_plan_picks_the_largest_micro_batch_that_fits_and_refuses_one_that_cannot() -> None:
    import numpy as np

    from dualdepth_ros.training.memory import GiB, plan_micro_batch

    def trial(n: int) -> None:  # a step that needs 50 MiB + 100 MiB per clip, touched so it is resident
        block = np.ones(int((50 + 100 * n) * 2**20) // 8)
        block[::512] += 1.0
        del block

    plan = plan_micro_batch(trial, 12, torch.device("cpu"), fraction=1.0, available=0.6 * GiB)
    assert 80 * 2**20 < plan.per_clip < 120 * 2**20, plan
    assert plan.micro_batch in (4, 5), plan  # (614 − 50) / 100 ≈ 5.6 → 5 (4 with sampling slack)
    assert plan.accumulation == -(-12 // plan.micro_batch)
    assert "micro-batch" in plan.describe() and "GiB per clip" in plan.describe()
    passes = [len(c) for c in torch.arange(12).tensor_split(plan.accumulation)]  # as Trainer.train_step splits
    assert plan.split() == " + ".join(map(str, passes)) and f"({plan.split()})" in plan.describe()
    with pytest.raises(DualDepthError, match="one training clip needs about .* lower input.width"):
        plan_micro_batch(trial, 12, torch.device("cpu"), fraction=1.0, available=0.1 * GiB)


# ---------------------------------------------------------------------------------------
# Ground-truth sources: training from a pose topic (odometry) and the learning ladder's GT depth
# ---------------------------------------------------------------------------------------
def _rot_z(deg: float) -> torch.Tensor:
    import math

    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_pose_topic_motion_is_the_cameras_in_model_units_with_extrinsics_and_flips() -> None:
    from dualdepth_ros.data.augment import flip_pose
    from dualdepth_ros.geometry import invert_pose
    from dualdepth_ros.networks import DepthModel

    # camera 1.2 m forward, 0.5 m up of a body frame, looking along the body's x (optical z = body x)
    R_cb = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # optical axes in body axes
    X = torch.eye(4)
    X[:3, :3], X[:3, 3] = R_cb, torch.tensor([1.2, 0.0, 0.5])
    # quaternion of R_cb ([x, y, z, w]), via the bagio helper
    from dualdepth_ros.bagio import rotation_to_quaternion

    q = rotation_to_quaternion(R_cb.numpy().astype("float64"))
    cfg = load_config(
        DEFAULT_CONFIG,
        overrides=TINY + ["pose.source=topic", f"pose.camera_in_body=[1.2, 0.0, 0.5, {q[0]}, {q[1]}, {q[2]}, {q[3]}]"],
    )
    model = DepthModel(cfg).eval()
    # body poses in the world: driving along x, turning 3° per frame
    P = {}
    for o in model.layout.frames:
        T = torch.eye(4)
        T[:3, :3], T[:3, 3] = _rot_z(3.0 * o), torch.tensor([2.0 * o, 0.1 * o, 0.0])
        P[o] = T
    batch = {("color", o, 0): torch.rand(2, 3, 32, 96) for o in model.layout.frames}
    batch[("K", 0)] = torch.eye(3).expand(2, 3, 3)
    for o in model.layout.frames:  # what the dataset gives: T_{0→o} = P_o⁻¹ P_0, mirrored for flipped clips
        rel = invert_pose(P[o][None]) @ P[0][None]
        batch[("gt_pose", o)] = torch.cat([rel, flip_pose(rel)])
    batch["flipped"] = torch.tensor([False, True])
    with torch.no_grad():
        out = model(batch)
    for a, b in model.layout.pose_pairs:
        cam_a, cam_b = P[a] @ X, P[b] @ X  # camera poses in the world
        expected = invert_pose(cam_b[None]) @ cam_a[None]
        expected[:, :3, 3] *= cfg.pose.topic_scale
        torch.testing.assert_close(out[("T", a, b)][0:1], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[("T", a, b)][1:2], flip_pose(expected), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[("T", b, a)], invert_pose(out[("T", a, b)]), atol=1e-5, rtol=1e-5)


def test_training_from_the_pose_topic_runs_and_needs_the_topic(sample_bag: Path, tmp_path: Path) -> None:
    from dualdepth_ros.data import DataConfig

    cfg = tiny_cfg("train.max_steps=2", "pose.source=topic")
    with pytest.raises(DualDepthError, match="pose.source: topic needs that topic in every bag"):
        Trainer(cfg, [str(sample_bag)], tmp_path / "no_topic", progress=False)
    data = DataConfig(gt_pose_topic="/gt/pose")
    trainer = Trainer(cfg, [str(sample_bag)], tmp_path / "topic", data_cfg=data, progress=False)
    before = params(trainer.model.pose)
    summary = trainer.fit()
    assert summary["step"] == 2
    after = params(trainer.model.pose)
    assert all(torch.equal(before[k], after[k]) for k in before), "the PoseNet is not used, so it must not change"


def test_ground_truth_depth_outputs_follow_the_bag(sample_bag: Path) -> None:
    from dualdepth_ros.data import ClipDataset, DataConfig, load_stores
    from dualdepth_ros.networks import DepthModel

    cfg = load_config(
        "monodepth2",
        overrides=["input.width=96", "input.height=32", "model.depth_source=ground_truth", "pose.output_scale=1.0"],
    )
    data = DataConfig(gt_depth_topic="/gt/depth", frame_offsets=[-1, 0, 1], cache_dir=None)
    (store,) = load_stores([sample_bag], data, 96, 32)
    items = torch.utils.data.default_collate([ClipDataset([store], data, "all", augment=False, gt_all_frames=True)[5]])
    batch = {("color", o, 0): items[("color", o)] for o in (-1, 0, 1)}
    batch.update({("gt_depth", o): items[("gt_depth", o)] for o in (-1, 0, 1)})
    model = DepthModel(cfg).eval()
    with torch.no_grad():
        out = model(batch)
    gt = items[("gt_depth", 0)]
    valid = gt > 0
    assert bool((~valid).any()), "the sample has sky (no GT): it must become the far limit"
    far = 1 / cfg.model.disp_offset  # the network's range ends there, so does the GT that replaces it
    torch.testing.assert_close(out[("depth_fused", 0, 0)][valid], gt[valid].clamp(max=far))
    assert float(out[("depth_fused", 0, 0)][~valid].min()) == pytest.approx(1 / cfg.model.disp_offset)
    assert out[("depth_fused", 0, 1)].shape[-2:] == (16, 48)


def test_banner_and_config_json_name_the_camera_topics_used(
    sample_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Auto-detected topics are named in the banner and recorded in config.json and the checkpoint."""
    import json

    Trainer(
        tiny_cfg("train.max_steps=1", "train.micro_batch=2"), [str(sample_bag)], tmp_path / "t", progress=False
    ).fit()
    assert "camera: /camera/image_raw (Image) with /camera/camera_info" in capsys.readouterr().out
    recorded = json.loads((tmp_path / "t" / "config.json").read_text())
    assert recorded["data"]["image_topic"] == "/camera/image_raw"
    assert recorded["data"]["camera_info_topic"] == "/camera/camera_info"
    assert recorded["bags"] == [
        {
            "bag": str(sample_bag),
            "image_topic": "/camera/image_raw",
            "image_type": "sensor_msgs/msg/Image",
            "camera_info_topic": "/camera/camera_info",
        }
    ]
    ckpt = load_checkpoint(tmp_path / "t" / "last.pt")
    assert ckpt["camera_topics"] == recorded["bags"]
    assert ckpt["config"]["data"]["image_topic"] is None  # as asked: eval on another drive still auto-detects
