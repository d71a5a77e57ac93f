"""The trainer: bags → clips → DepthModel + SelfSupervisedLoss → checkpoints, logs, validation.

One step (sc_depth_pl style, short enough to read on one screen) is :meth:`Trainer.train_step`::

    batch = to_model_batch(items)          # ("color", f, 0), ("color_aug", f, 0), ("K", 0)
    outputs = model(batch)                 # depth per branch/scale, fused depth, poses
    total, terms = loss_fn(batch, outputs) # every term of config/train.yaml
    total.backward(); optimiser.step(); scheduler.step()

Exact resume: the order of the clips in epoch ``e`` and every clip's augmentation are functions
of ``(seed, e, index)`` only (not of the number of loader workers or of where a run stopped),
and the checkpoint holds model, optimiser, schedule, step and RNG states, so ``--resume``
continues exactly as if the run had not stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import (
    Config,
    ConfigError,
    coerce_section,
    config_from_dict,
    config_to_dict,
    load_config,
    register_section,
)
from ..data import ClipDataset, DataConfig, load_stores
from ..data.batch import to_model_batch
from ..errors import DualDepthError
from ..intrinsics import Intrinsics
from ..losses import SelfSupervisedLoss, clip_layout, enabled_terms
from ..networks import DepthModel, count_parameters
from . import distributed
from .checkpoint import (
    atomic_save,
    check_writable,
    load_checkpoint,
    make_checkpoint,
    rng_state,
    set_rng_state,
    weights_mismatch,
)
from .memory import MemoryPlan, plan_micro_batch
from .runlog import RunLogger

__all__ = ["TrainSection", "Trainer", "train"]


@dataclasses.dataclass
class TrainSection:
    """The ``train:`` section of the training config (loop mechanics, not the method).

    max_steps : stop after this many optimiser steps (0 = ``optim.epochs`` epochs).
    log_every, image_every : TensorBoard scalars / images period in steps.
    checkpoint_every : write ``last.pt`` every N steps (and at every epoch end and at the end).
    val_every : validate every N steps (0 = at every epoch end only).
    val_max_clips : validation clips used for the photometric validation loss (0 = all).
    num_workers : DataLoader workers (-1 = min(4, cores − 1)).
    device : ``auto`` (CUDA when available), ``cuda`` or ``cpu``.
    amp : mixed precision on CUDA (bfloat16 where supported, else float16 with a grad scaler).
    channels_last : NHWC memory format on CUDA (faster convolutions with tensor cores).
    compile : ``torch.compile`` the model on CUDA.
    grad_clip : clip the global gradient norm (0 = off).
    lr_warmup_steps : linear learning-rate warm-up.
    micro_batch : clips per forward/backward (0 = measured: the largest that fits in ``memory_fraction`` of
        the memory available, see :mod:`.memory`); the configured batch is reached by gradient accumulation.
    memory_fraction : share of the available host (CPU) or device (GPU) memory a step may use.
    snapshot_every : also keep the weights every N steps as ``snapshots/step_NNNNNN.pt`` (packed, no
        optimiser state) for learning curves on held-out data (0 = off).
    """

    max_steps: int = 0
    log_every: int = 20
    image_every: int = 200
    checkpoint_every: int = 200
    val_every: int = 0
    val_max_clips: int = 64
    num_workers: int = -1
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    grad_clip: float = 0.0
    lr_warmup_steps: int = 0
    snapshot_every: int = 0
    micro_batch: int = 0
    memory_fraction: float = 0.8

    @classmethod
    def coerce(cls, value: Any) -> TrainSection:
        return coerce_section(cls, value, "train")

    def validate(self) -> TrainSection:
        """Raise :class:`~dualdepth_ros.config.ConfigError` for a value the loop cannot run with."""
        if self.max_steps < 0:
            raise ConfigError(
                f"train.max_steps (--max-steps) must be 0 (train optim.epochs epochs) or more, got {self.max_steps}"
            )
        for name in ("image_every", "val_every", "val_max_clips", "lr_warmup_steps", "snapshot_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1 step, got {getattr(self, name)}")
        if self.micro_batch < 0:
            raise ConfigError(f"train.micro_batch must be 0 (measured) or more, got {self.micro_batch}")
        if self.num_workers < -1:
            raise ConfigError(f"train.num_workers must be -1 (automatic) or more, got {self.num_workers}")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be 0 (off) or more, got {self.grad_clip}")
        if not 0.0 < self.memory_fraction <= 1.0:
            raise ConfigError(f"train.memory_fraction must be in (0, 1], got {self.memory_fraction}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"train.device must be auto, cpu or cuda, got {self.device!r}")
        return self


register_section("train", TrainSection)


# ---------------------------------------------------------------------------------------
# Data plumbing
# ---------------------------------------------------------------------------------------
class _SeededClips(Dataset):
    """Makes a clip's random augmentation a function of ``(seed, epoch, index)`` only."""

    def __init__(self, dataset: ClipDataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[Any, Any]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch * 10_007 + int(index)) % (2**63 - 1))
            return self.dataset[index]


class _EpochSampler(Sampler[int]):
    """The share of one rank of a seeded permutation of the epoch, from position ``start`` on."""

    def __init__(self, n: int, seed: int, epoch: int, batch: int, rank: int, world: int, start_batch: int) -> None:
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        per_rank = (n // (batch * world)) * batch  # drop the ragged tail so every rank has equal steps
        mine = perm[rank * per_rank : (rank + 1) * per_rank]
        self.indices = mine[start_batch * batch :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ---------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------
class Trainer:
    """Owns the model, optimiser, schedule, data and run directory of one training run."""

    def __init__(
        self,
        cfg: Config,
        bags: list[str],
        out_dir: str | Path,
        data_cfg: DataConfig | None = None,
        resume: bool = False,
        progress: bool = True,
        init: str | Path | None = None,
    ) -> None:
        if init is not None and resume:
            raise DualDepthError(
                "--init starts a new run from a checkpoint's weights; --resume continues one: give one"
            )
        self.cfg = cfg
        self.tc = TrainSection.coerce(cfg.extra.get("train"))
        self.data_cfg = data_cfg or DataConfig.coerce(cfg.extra.get("data"))
        self.out = Path(out_dir)
        if self.tc.device.startswith("cuda") and not torch.cuda.is_available():
            raise DualDepthError(
                f"train.device {self.tc.device} (--device) was asked for, but PyTorch sees no CUDA device; "
                "use --device cpu or auto"
            )
        self.dist = distributed.init(self.tc.device)
        self.device = self.dist.device
        self.cuda = self.device.type == "cuda"
        torch.manual_seed(cfg.optim.seed)
        np.random.seed(cfg.optim.seed)

        self.layout = clip_layout(cfg)
        offsets = sorted(self.layout.frames)
        missing = sorted(set(offsets) - {int(o) for o in self.data_cfg.frame_offsets})
        if missing:
            raise DualDepthError(
                f"data.frame_offsets {list(self.data_cfg.frame_offsets)} lacks {missing}: this method's clips need "
                f"frames {offsets} ({'the two-branch rule' if cfg.loss.two_branch.enabled else 'single branch'}); "
                f"set data.frame_offsets: {offsets}"
            )
        self.configured_offsets = [int(o) for o in self.data_cfg.frame_offsets]
        if sorted(self.data_cfg.frame_offsets) != offsets:
            self.data_cfg = dataclasses.replace(self.data_cfg, frame_offsets=offsets)
        self._check_run_dir(resume)
        # Read (and check) the checkpoint to resume before any data is decoded: a bad file fails at once.
        resume_ckpt = self._read_resume(self.out / "last.pt") if resume else None
        init_ckpt = self._read_init(Path(init)) if init is not None else None
        #: Where this run's weights started (``--init``): path, step, input size, config hash; None from scratch.
        self.init_info: dict[str, Any] | None = None
        if init_ckpt is not None:
            self.init_info = {
                "path": str(Path(init).absolute()),
                "step": init_ckpt.get("step"),
                "input": init_ckpt.get("input"),
                "config_hash": init_ckpt.get("config_hash"),
            }

        # Decode once on rank 0 (it fills the cache); the others then read the cache.
        if self.dist.enabled and not self.dist.is_main:
            torch.distributed.barrier()
        stores = load_stores(bags, self.data_cfg, cfg.input.width, cfg.input.height, progress=progress)
        if self.dist.enabled and self.dist.is_main:
            torch.distributed.barrier()
        gt_depth_all = cfg.model.depth_source == "ground_truth"
        self._check_ground_truth_sources(stores)
        epipolar = any(t.name == "pose_prior" for t in enabled_terms(cfg)) and cfg.loss.pose_prior.weight > 0
        self.train_set = ClipDataset(stores, self.data_cfg, "train", gt_all_frames=gt_depth_all, epipolar=epipolar)
        self.val_set = ClipDataset(stores, self.data_cfg, "val", gt_all_frames=gt_depth_all, epipolar=epipolar)
        self.stores = stores
        if cfg.pose.source == "topic":
            for split in (self.train_set, self.val_set):
                dropped = split.drop_clips_without_pose()
                if dropped:
                    print(f"{split.split}: {dropped} clips left out: a frame has no pose on the pose topic", flush=True)

        bs = cfg.optim.batch_size
        self.steps_per_epoch = len(self.train_set) // (bs * self.dist.world_size)
        if self.steps_per_epoch == 0:
            t = self.train_set.totals()
            raise DualDepthError(
                f"{len(self.train_set)} training clips are fewer than one batch of {bs} × {self.dist.world_size} "
                f"process(es): {t['frames']} frames, {t['kept']} moving ({self.train_set.threshold_text()}), "
                f"{t['clips']} clips of {len(offsets)} frames, {t['val']} of them set aside for validation; lower "
                "data.static_threshold (still-camera filter), optim.batch_size or data.val_fraction, or record more "
                f"data:\n{self.train_set.describe()}"
            )
        self.total_steps = self.tc.max_steps or cfg.optim.epochs * self.steps_per_epoch

        self.model = DepthModel(cfg).to(self.device)
        if init_ckpt is not None:  # its weights; the optimiser, schedule and step start fresh below
            self.model.load_state_dict(init_ckpt["model"])
        if self.cuda and self.tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = SelfSupervisedLoss(cfg)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        amp_dtype = torch.bfloat16 if self.cuda and torch.cuda.is_bf16_supported() else torch.float16
        self.amp = self.cuda and self.tc.amp
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and amp_dtype == torch.float16)
        self.step = 0
        self.metrics: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.best_health: dict[str, Any] | None = None  # the healthiest validation (collapse check) so far
        self._seconds_before = 0.0  # training wall time of earlier (resumed-from) runs
        self._fit_t0: float | None = None
        self.micro_batch = 0
        self.memory_plan: MemoryPlan | None = None
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        if not self.micro_batch:  # a resumed run keeps its micro-batch (same arithmetic as without the stop)
            self._choose_micro_batch()
        self.net: torch.nn.Module = self.model
        if self.dist.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.cuda else None, find_unused_parameters=True
            )
        if self.cuda and self.tc.compile:
            self.net = torch.compile(self.net)
        self._stop = False
        self.stop_signal: int | None = None  # SIGINT/SIGTERM that stopped fit() before the last step
        self._saved_step = -1  # the step whose checkpoint is on disk (a resumed run's is written again)

    # -- setup helpers ---------------------------------------------------------------------
    def _choose_micro_batch(self) -> None:
        """``train.micro_batch``, or the largest that fits the memory available (measured trial steps)."""
        bs = self.cfg.optim.batch_size
        if self.tc.micro_batch > 0:
            self.micro_batch = min(self.tc.micro_batch, bs)
            return
        self.memory_plan = plan_micro_batch(
            self._trial_step,
            bs,
            self.device,
            fraction=self.tc.memory_fraction,
            what_to_lower="input.width/input.height (the model size) or model.encoder_width",
        )
        self.micro_batch = self.memory_plan.micro_batch

    def _trial_step(self, n: int) -> None:
        """Forward + losses + backward on ``n`` training clips, leaving no trace (weights, BN statistics, RNG)."""
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}
        devices = [self.device.index or 0] if self.cuda else []
        with torch.random.fork_rng(devices=devices):
            items = torch.utils.data.default_collate([self.train_set[i % len(self.train_set)] for i in range(n)])
            batch = to_model_batch(items, self.device, self.cuda and self.tc.channels_last)
            self.model.train()
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                outputs = self.model(batch)
                total, _ = self.loss_fn(batch, outputs)
            total.backward()
            del batch, outputs, total
        self.model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, v in self.model.named_buffers():
                v.copy_(buffers[k])

    def _check_ground_truth_sources(self, stores: list[Any]) -> None:
        """``pose.source: topic`` / ``model.depth_source: ground_truth`` need those topics in every bag."""
        needs = []
        if self.cfg.pose.source == "topic":
            needs.append(("gt_pose", "pose.source: topic", "--pose-topic (data.gt_pose_topic)"))
        if self.cfg.model.depth_source == "ground_truth":
            needs.append(("gt_depth", "model.depth_source: ground_truth", "--gt-depth-topic (data.gt_depth_topic)"))
        for attr, what, how in needs:
            lacking = [str(st.bag) for st in stores if getattr(st, attr) is None]
            if lacking:
                raise DualDepthError(f"{what} needs that topic in every bag; name it with {how}. Missing in: {lacking}")

    def _check_run_dir(self, resume: bool) -> None:
        last = self.out / "last.pt"
        if resume and not last.exists():
            raise DualDepthError(f"--resume: no checkpoint to resume in {self.out} (expected {last})")
        if not resume and last.exists():
            raise DualDepthError(
                f"{self.out} already holds a run ({last}); pass --resume to continue it or choose another --out"
            )
        if self.dist.is_main:  # a read-only or forbidden --out fails now, not after the data is decoded
            check_writable(self.out)

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        if o.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=o.learning_rate, weight_decay=o.weight_decay)
        return torch.optim.Adam(params, lr=o.learning_rate, weight_decay=o.weight_decay)

    def _lr_factor(self, step: int) -> float:
        """Warm-up, then monodepth2's step decay at ``lr_step_epochs/epochs`` of the run."""
        o, tc = self.cfg.optim, self.tc
        factor = min(1.0, (step + 1) / tc.lr_warmup_steps) if tc.lr_warmup_steps else 1.0
        milestone = math.ceil(self.total_steps * o.lr_step_epochs / max(o.epochs, 1))
        return factor * (o.lr_gamma if step >= milestone else 1.0)

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        tc, bs = self.tc, self.cfg.optim.batch_size
        workers = tc.num_workers if tc.num_workers >= 0 else max(0, min(4, (os.cpu_count() or 1) - 1))
        seeded = _SeededClips(self.train_set, self.cfg.optim.seed)
        seeded.epoch = epoch
        sampler = _EpochSampler(
            len(self.train_set), self.cfg.optim.seed, epoch, bs, self.dist.rank, self.dist.world_size, start_batch
        )
        return DataLoader(
            seeded,
            batch_size=bs,
            sampler=sampler,
            num_workers=workers,
            drop_last=True,
            pin_memory=self.cuda,
            persistent_workers=False,
            # The loader draws its workers' base seed from this generator, not from the global RNG
            # (which would shift the training stream every time a resumed run creates a loader).
            generator=torch.Generator().manual_seed(self.cfg.optim.seed * 31 + epoch),
        )

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return make_checkpoint(
            self.model,
            self.cfg,
            self.data_cfg,
            step=self.step,
            epoch=self.step // self.steps_per_epoch,
            total_steps=self.total_steps,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=rng_state(),
            metrics=self.metrics,
            history=self.history,
            best_health=self.best_health,
            train_seconds=self.train_seconds,
            world_size=self.dist.world_size,
            micro_batch=self.micro_batch,
            camera_topics=self.camera_topics(),
            init=self.init_info,
        )

    def save(self, name: str = "last.pt") -> Path | None:
        self._saved_step = self.step
        if not self.dist.is_main:
            return None
        return atomic_save(self.state(), self.out / name)

    def snapshot(self) -> Path | None:
        """Keep this step's weights as ``snapshots/step_NNNNNN.pt`` (a packed checkpoint: no training state)."""
        return self._pack_weights(self.out / "snapshots" / f"step_{self.step:06d}.pt")

    def _pack_weights(self, path: Path, **extra: Any) -> Path | None:
        """Save the current weights as a packed checkpoint (no optimiser or RNG state) at ``path``."""
        if not self.dist.is_main:
            return None
        ckpt = make_checkpoint(
            self.model,
            self.cfg,
            self.data_cfg,
            step=self.step,
            total_steps=self.total_steps,
            train_seconds=self.train_seconds,
            camera_topics=self.camera_topics(),
            init=self.init_info,
            **extra,
        )
        return atomic_save(ckpt, path)

    def _read_resume(self, path: Path) -> dict[str, Any]:
        """The checkpoint ``path`` to resume (read without running code), checked against this run's config."""
        ckpt = load_checkpoint(path, map_location=self.device)
        lacking = [k for k in ("step", "optimizer", "scheduler", "scaler", "rng") if k not in ckpt]
        if lacking:
            raise DualDepthError(
                f"{path} is a packed model file, not a training checkpoint (no {', '.join(lacking)}): it cannot be "
                f"resumed; to train from its weights with a fresh optimiser, start a new --out with --init {path}"
            )
        cfg_dict = config_to_dict(self.cfg)
        cfg_dict["data"] = dataclasses.asdict(self.data_cfg)
        mine = _method_signature(cfg_dict)
        theirs = _method_signature(ckpt.get("config", {}))
        if mine != theirs:
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise DualDepthError(
                f"{path} was trained with another configuration (sections that differ: {', '.join(changed)}); "
                "resume with the same --config/--set/topics, or start a new --out"
            )
        return ckpt

    def _read_init(self, path: Path) -> dict[str, Any]:
        """The checkpoint (or packed model) ``--init`` names, read without running code; its network must fit.

        Compared with this config's network by key and shape (built on the meta device: no memory, no
        RNG draw); the first difference is the error. The input size may differ (the networks are
        fully convolutional).
        """
        ckpt = load_checkpoint(path, map_location="cpu")
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            expected = DepthModel(self.cfg).state_dict()
        mismatch = weights_mismatch(expected, ckpt["model"])
        if mismatch:
            theirs = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
            arch = ", ".join(
                f"{sec}.{key} {theirs.get(sec, {}).get(key)}"
                for sec, key in (("model", "encoder"), ("model", "encoder_width"), ("model", "num_branches"))
                if isinstance(theirs.get(sec), dict) and key in theirs[sec]
            )
            raise DualDepthError(
                f"--init {path}: its network does not fit this config's: {mismatch}; train with the config it "
                f"was trained with" + (f" ({arch})" if arch else "")
            )
        return ckpt

    def _restore(self, ckpt: dict[str, Any]) -> None:
        """Continue the run saved in ``ckpt`` (model, optimiser, schedule, step, RNG states)."""
        self.init_info = ckpt.get("init")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.metrics = dict(ckpt.get("metrics", {}))
        self.history = list(ckpt.get("history", []))
        self.best_health = ckpt.get("best_health")
        self._seconds_before = float(ckpt.get("train_seconds", 0.0))
        self.micro_batch = int(ckpt.get("micro_batch", 0))
        set_rng_state(ckpt["rng"])

    @property
    def train_seconds(self) -> float:
        """Wall time spent in :meth:`fit` so far, summed over resumed runs."""
        running = time.monotonic() - self._fit_t0 if self._fit_t0 is not None else 0.0
        return self._seconds_before + running

    # -- one step --------------------------------------------------------------------------
    def _forward(self, items: Mapping[Any, Any]) -> tuple[dict[Any, Any], dict[Any, Any], torch.Tensor, dict]:
        batch = to_model_batch(items, self.device, self.cuda and self.tc.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            outputs = self.net(batch)
            total, terms = self.loss_fn(batch, outputs)
        return batch, outputs, total, terms

    def train_step(self, items: Mapping[Any, Any]) -> dict[str, float]:
        """One optimiser step on one batch, in micro-batches of :attr:`micro_batch` clips if it is smaller.

        With micro-batches the gradient is exactly the full batch's: each micro-batch's loss (a mean
        over its kept samples) is back-propagated times its kept count, and the accumulated gradient
        is divided by the batch's kept count. Only BatchNorm and the scale anchor (a statistic of the
        clips in one pass: their mean translation, as under DDP) see the smaller batches; the anchor
        reaches only the PoseNet (``test_the_scale_anchor_is_the_one_term_computed_per_micro_batch``).
        """
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = int(items[("color", 0)].shape[0])
        chunks = -(-n // self.micro_batch) if self.micro_batch else 1
        if chunks <= 1:
            batch, outputs, total, terms = self._forward(items)
            self.scaler.scale(total).backward()
            logged = {"total": float(total.detach())}
            logged.update({k: float(v.detach().float().mean()) for k, v in terms.items()})
        else:
            sums: dict[str, float] = {}
            kept_total = 0.0
            for i, idx in enumerate(torch.arange(n).tensor_split(chunks)):
                part = {k: (v[idx] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in items.items()}
                sync = contextlib.nullcontext() if (i == chunks - 1 or not self.dist.enabled) else self.net.no_sync()
                with sync:
                    batch, outputs, total, terms = self._forward(part)
                    kept = float(terms["gate_kept"]) * len(idx)
                    self.scaler.scale(total * kept).backward()
                kept_total += kept
                for k, v in terms.items():
                    w = len(idx) if k in ("gate_kept", "first_difference") else kept
                    sums[k] = sums.get(k, 0.0) + float(v.detach().float().mean()) * w
                sums["total"] = sums.get("total", 0.0) + float(total.detach()) * kept
            denom = max(kept_total, 1.0)
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.div_(denom)
            logged = {k: v / (n if k in ("gate_kept", "first_difference") else denom) for k, v in sums.items()}
        if self.tc.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self._last = (batch, outputs)
        return logged

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """Photometric validation loss (works without ground truth) + GT metrics when GT exists.

        Runs on forked RNG states so that validating never changes the training run's random
        stream (a resumed run stays identical to an uninterrupted one).
        """
        devices = [self.device.index or 0] if self.cuda else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            return self._validate()

    def _validate(self) -> dict[str, Any]:
        self.model.eval()
        out: dict[str, Any] = {}
        n = len(self.val_set)
        if n:
            limit = min(n, self.tc.val_max_clips or n)
            idx = np.linspace(0, n - 1, limit).round().astype(int)
            sums: dict[str, float] = {}
            bs = self.cfg.optim.batch_size
            depths: list[np.ndarray] = []
            cams: list[Intrinsics] = []
            for start in range(0, limit, bs):
                items = [self.val_set[int(i)] for i in idx[start : start + bs]]
                batch = to_model_batch(torch.utils.data.default_collate(items), self.device)
                outputs = self.model(batch)
                total, terms = self.loss_fn(batch, outputs)
                k = len(items)
                sums["total"] = sums.get("total", 0.0) + float(total) * k
                for name, v in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(v.float().mean()) * k
                depth = outputs[("depth_fused", self.layout.target, 0)].detach().float().cpu().numpy()
                K = batch[("K", 0)].detach().double().cpu().numpy()
                depths.extend(depth[:, 0])
                cams.extend(Intrinsics.from_matrix(K[j, :3, :3], depth.shape[-1], depth.shape[-2]) for j in range(k))
            out["val_loss"] = {k: v / limit for k, v in sums.items()}
            out["val_clips"] = int(limit)
            if self.cfg.model.depth_source != "ground_truth":  # a ladder rung's depth is not the net's
                out["collapse"] = self._collapse_check(depths, cams)
        gt = self._validate_gt()
        if gt:
            out["val_gt"] = gt
        return out

    def _collapse_check(self, depths: list[np.ndarray], cams: list[Intrinsics]) -> dict[str, Any]:
        """The ground-truth-free collapse check (:mod:`~dualdepth_ros.evaluation.collapse`) of the validation depth.

        ``depths``: the fused depth of every validation clip's target (``H×W``, model units) and
        ``cams`` its intrinsics at that size. Returns the report as a dict (``passed``, ``health``,
        the scores and a reason per test).
        """
        from ..evaluation.collapse import check_depth

        m = self.cfg.model
        limits = (1.0 / (m.disp_scale + m.disp_offset), 1.0 / m.disp_offset)
        report = check_depth(np.stack(depths), cams, limits=limits)
        return {**report.as_dict(), "failures": report.failures}

    def _keep_best_by_collapse_check(self, log: RunLogger, report: dict[str, Any]) -> None:
        """Keep the weights of the healthiest validation so far (``best_health.pt``); warn when the check fails."""
        health = float(report.get("health", float("nan")))
        best = self.best_health or {}
        if math.isfinite(health) and health > best.get("health", -math.inf):
            self.best_health = {"step": self.step, "health": health, "passed": bool(report.get("passed"))}
            self._pack_weights(self.out / "best_health.pt", collapse=report)
        if not report.get("passed"):
            b = self.best_health or {}
            where = (
                f"the healthiest weights so far are {self.out / 'best_health.pt'} (step {b['step']}, "
                f"health {b['health']:.3f})"
                if b
                else "no healthy weights yet"
            )
            log.write(
                f"WARNING: collapse check failed at step {self.step} (health {health:.3f}): "
                f"{'; '.join(report.get('failures', [])) or 'see the validation metrics'}. The depth may be "
                f"inverted or collapsed (e.g. traffic keeping pace with the camera, or long stops); {where}"
            )

    def _validate_gt(self) -> dict[str, Any]:
        """Standard depth metrics, AUSE/AURG and temporal stability on the validation frames.

        The same code and protocol (``auto``, on the ground truth's own grid) as ``dualdepth eval``.
        """
        from ..data import FrameSequence
        from ..evaluation.sequence import evaluate_sequence
        from .checkpoint import LoadedModel

        if self.cfg.model.depth_source == "ground_truth":  # a ladder rung: no depth net of its own to score
            return {}
        frames = []
        for store in self.stores:
            if store.gt_depth is None:
                continue
            seq = FrameSequence(store)
            val_idx = _val_frame_indices(self.val_set, store)
            frames.extend(seq[i] for i in val_idx)
        if not frames:
            return {}
        loaded = LoadedModel(model=self.model, cfg=self.cfg, data=self.data_cfg, checkpoint={})
        summary = evaluate_sequence(loaded, frames, device=self.device).report.summary()
        return summary if summary["n_images"] else {}

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        tc = self.tc
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            (self.out / "config.json").write_text(json.dumps(self.run_config(), indent=2, default=str))
        log = RunLogger(self.out, self.total_steps, self.step, enabled=self.dist.is_main)
        # From here on SIGINT/SIGTERM stop the run after the current step and save it (the banner
        # below is printed once they are in place): fit() then reports the signal, the CLI exits 128 + N.
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        self.stop_signal = None

        def request_stop(signum: int, frame: Any) -> None:
            self._stop = True
            self.stop_signal = self.stop_signal or signum
            log.write(f"signal {signum}: stopping after this step and saving a checkpoint")

        for s in previous:
            signal.signal(s, request_stop)
        t0, last_t, last_step = time.monotonic(), time.monotonic(), self.step
        self._fit_t0 = t0
        try:
            self._write_banner(log)
            while self.step < self.total_steps and not self._stop:
                epoch, start_batch = divmod(self.step, self.steps_per_epoch)
                for items in self._loader(epoch, start_batch):
                    logged = self.train_step(items)
                    self.step += 1
                    if not math.isfinite(logged["total"]):
                        raise DualDepthError(f"the loss became {logged['total']} at step {self.step}; see {self.out}")
                    log.progress(1, loss=logged["total"])
                    if self.step % tc.log_every == 0 or self.step == self.total_steps:
                        now = time.monotonic()
                        logged["lr"] = self.scheduler.get_last_lr()[0]
                        logged["clips_per_s"] = (
                            (self.step - last_step) * self.cfg.optim.batch_size * self.dist.world_size
                        ) / max(now - last_t, 1e-9)
                        last_t, last_step = now, self.step
                        log.scalars(self.step, logged)
                    if tc.image_every and self.step % tc.image_every == 0:
                        self._log_images(log)
                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    if end_of_epoch or (tc.val_every and self.step % tc.val_every == 0):
                        self._run_validation(log, final=self.step == self.total_steps)
                    if end_of_epoch or self.step % tc.checkpoint_every == 0:
                        self.save()
                    if tc.snapshot_every and self.step % tc.snapshot_every == 0:
                        self.snapshot()
                    if self.step >= self.total_steps or self._stop:
                        break
            if self.step >= self.total_steps and not self.metrics.get("final"):
                self._run_validation(log, final=True)
            if self._saved_step != self.step:
                self.save()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            log.close()
            self._seconds_before, self._fit_t0 = self.train_seconds, None
        elapsed = time.monotonic() - t0
        stopped = self._stop and self.step < self.total_steps
        if stopped:
            log.write(f"stopped at step {self.step}/{self.total_steps}; continue with --resume")
        summary = {
            "step": self.step,
            "total_steps": self.total_steps,
            "seconds": elapsed,
            "train_seconds": self.train_seconds,
            "last_validation": self.metrics,
            "collapse_check": (self.metrics.get("collapse") or {}).get("passed"),
            "best_health": self.best_health,
            "stopped_by_signal": self.stop_signal if stopped else None,
        }
        if self.dist.is_main:
            (self.out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
        return summary

    def camera_topics(self) -> list[dict[str, Any]]:
        """Per bag, the camera topics the data layer actually read (auto-detected or given).

        ``[{"bag": path, "image_topic": str, "image_type": str, "camera_info_topic": str | None}]``
        (``camera_info_topic`` is None when ``data.intrinsics`` stands in for it).
        """
        return [
            {
                "bag": str(st.bag),
                "image_topic": st.topics.image,
                "image_type": st.topics.image_type,
                "camera_info_topic": st.topics.camera_info,
            }
            for st in self.stores
        ]

    def run_config(self) -> dict[str, Any]:
        """The run's config as trained (``RUN/config.json``): the topics resolved, every bag's listed.

        ``data.image_topic`` / ``data.camera_info_topic`` are the topics used when every bag used the
        same one (else they stay as configured); ``bags`` gives each bag's. The checkpoint's ``config``
        keeps the topics as asked for (None = auto-detect), so evaluating on another drive still
        auto-detects its camera; the checkpoint's ``camera_topics`` records what was used.
        """
        cfg = make_checkpoint(self.model, self.cfg, self.data_cfg)["config"]
        used = self.camera_topics()
        for key in ("image_topic", "camera_info_topic"):
            values = {u[key] for u in used}
            if len(values) == 1:
                cfg["data"][key] = values.pop()
        cfg["bags"] = used
        cfg["init"] = self.init_info
        return cfg

    def _write_banner(self, log: RunLogger) -> None:
        """The run's first lines: size, clips, steps, networks, device, memory plan, data pipeline."""
        n_depth = count_parameters(self.model.depth)
        n_pose = count_parameters(self.model.pose)
        log.write(
            f"training {self.cfg.input.width}x{self.cfg.input.height}: {len(self.train_set)} train / "
            f"{len(self.val_set)} val clips, {self.steps_per_epoch} steps/epoch, {self.total_steps} steps, "
            f"depth net {n_depth / 1e6:.2f} M params, pose net {n_pose / 1e6:.2f} M, device {self.device}"
            + (f" × {self.dist.world_size} processes" if self.dist.enabled else "")
            + (f", resuming at step {self.step}" if self.step else "")
        )
        if self.init_info is not None:
            i = self.init_info
            size = f"{i['input']['width']}x{i['input']['height']}" if isinstance(i.get("input"), dict) else "unknown"
            log.write(
                f"initialised from {i['path']} (its step {i.get('step')}, input {size}): its weights, "
                "a fresh optimiser and schedule"
            )
        if self.memory_plan is not None:
            log.write(self.memory_plan.describe())
        elif self.micro_batch < self.cfg.optim.batch_size:
            log.write(f"memory: micro-batch {self.micro_batch} (batch {self.cfg.optim.batch_size} by accumulation)")
        for line in self._data_banner():
            log.write("  " + line)

    def _data_banner(self) -> list[str]:
        """What the data pipeline did: the image preprocessing, the clip layout, the still-camera filter, the split."""
        t = self.train_set.totals()
        plans = sorted(
            {
                self.data_cfg.preprocessor(self.cfg.input.width, self.cfg.input.height)
                .plan(st.source_width, st.source_height)
                .describe()
                for st in self.stores
            }
        )
        offsets = list(self.layout.frames)
        rule = "two-branch rule" if self.cfg.loss.two_branch.enabled else "single branch"
        layout = f"clips: {len(offsets)} frames at offsets {offsets} ({rule})"
        if sorted(self.configured_offsets) != sorted(offsets):
            layout += f" of data.frame_offsets {self.configured_offsets}"
        val = (
            f"validation: {len(self.val_set)} clips in up to {self.data_cfg.val_blocks} blocks spread over each drive, "
            f"{self.data_cfg.split_gap_s:g} s from any training clip"
        )
        note = self.val_set.validation_note()
        if not len(self.val_set):
            val = f"no validation ({note or 'data.val_fraction is 0'}); training on every clip"
        elif note:
            val += f" (none from {note})"
        cameras = []
        for entry in self.camera_topics():
            info = entry["camera_info_topic"] or f"no camera_info (intrinsics {self.data_cfg.intrinsics})"
            text = f"{entry['image_topic']} ({entry['image_type'].rsplit('/', 1)[-1]}) with {info}"
            if text not in cameras:
                cameras.append(text)
        if len(cameras) > 1:  # bags that differ: name each bag's
            cameras = [
                f"{Path(e['bag']).name}: {e['image_topic']} with {e['camera_info_topic'] or 'no camera_info'}"
                for e in self.camera_topics()
            ]
        return [
            f"camera: {'; '.join(cameras)}",
            f"images: {'; '.join(plans)} ({self.data_cfg.resize_mode})",
            layout,
            f"still-camera filter: {t['kept']} of {t['frames']} frames moving ({self.train_set.threshold_text()})",
            val,
        ]

    def _run_validation(self, log: RunLogger, final: bool = False) -> None:
        if not self.dist.is_main:
            return
        if not len(self.val_set):
            return  # no validation split (said once in the banner): nothing to report, no NaN
        metrics = self.validate()
        self.metrics = {"step": self.step, **metrics, **({"final": True} if final else {})}
        self.history.append({"step": self.step, **metrics})
        flat: dict[str, float] = {}
        for k, v in metrics.get("val_loss", {}).items():
            flat[f"loss/{k}"] = v
        for k, v in _flatten(metrics.get("val_gt", {})).items():
            flat[k] = v
        collapse = metrics.get("collapse")
        if collapse:
            flat["collapse/health"] = float(collapse["health"])
            flat["collapse/passed"] = float(bool(collapse["passed"]))
        log.scalars(self.step, flat, prefix="val")
        parts = [f"val @ {self.step}: photometric loss {metrics['val_loss']['total']:.4f}"]
        if collapse:
            parts.append(f"collapse check {'ok' if collapse['passed'] else 'FAILED'} (health {collapse['health']:.3f})")
        gt = _flatten(metrics.get("val_gt", {}))
        for key, label in (
            ("median_scaled/abs_rel", "AbsRel"),
            ("median_scaled/a1", "δ<1.25"),
            ("confidence/ause/abs_rel", "AUSE"),
            ("confidence/aurg/abs_rel", "AURG"),
            ("temporal/ratio", "temporal ratio"),
        ):
            if key in gt:
                parts.append(f"{label} {gt[key]:.4f}")
        log.write(", ".join(parts))
        if collapse:
            self._keep_best_by_collapse_check(log, collapse)

    def _log_images(self, log: RunLogger) -> None:
        if not self.dist.is_main or not hasattr(self, "_last"):
            return
        batch, outputs = self._last
        tgt = self.layout.target
        log.image(
            self.step, "image", (batch[("color", tgt, 0)][0].detach().float().cpu().numpy() * 255).astype(np.uint8)
        )
        log.depth_image(self.step, "depth_fused", outputs[("depth_fused", tgt, 0)][0, 0])
        for b in range(self.cfg.model.num_branches):
            key = ("conf", tgt, b, 0)
            if key in outputs:
                log.depth_image(self.step, f"confidence_branch{b}", outputs[key][0, 0], confidence=True)


def _val_frame_indices(val_set: ClipDataset, store: Any) -> list[int]:
    """Frame indices of ``store`` that are the centre of a validation clip, in time order."""
    centre = val_set.offsets.index(0)
    idx = sorted(
        {int(frames[centre]) for i in range(len(val_set)) for s, frames in [val_set.clip_frames(i)] if s is store}
    )
    return idx


def _method_signature(cfg_dict: Mapping[str, Any]) -> dict[str, str]:
    """Per section, the canonical JSON of a checkpoint's config read through the current schema.

    Reading it through the schema gives keys added since the checkpoint was written their
    defaults, so a run resumes after such an addition; every value the run was trained with
    must still be equal. The loop mechanics (``train:``, e.g. ``max_steps``) may change.
    """
    d = dict(cfg_dict)
    data = d.pop("data", None)
    d.pop("train", None)
    norm = config_to_dict(config_from_dict(d))
    norm["data"] = dataclasses.asdict(DataConfig.coerce(data))
    norm.pop("train", None)
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in norm.items()}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            flat.update(_flatten(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[key] = float(v)
    return flat


def train(
    bags: list[str],
    out_dir: str | Path,
    config_paths: list[str],
    overrides: list[str],
    data_overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    init: str | Path | None = None,
) -> dict[str, Any]:
    """Load the config, build a :class:`Trainer` and run it; returns the final summary.

    ``init``: a checkpoint or packed model whose weights start the run (:class:`Trainer`).
    """
    cfg = load_config(*config_paths, overrides=overrides).validate()
    data_cfg = DataConfig.coerce(cfg.extra.get("data"))
    if data_overrides:
        data_cfg = dataclasses.replace(data_cfg, **{k: v for k, v in data_overrides.items() if v is not None})
        data_cfg.validate()
    trainer = Trainer(cfg, bags, out_dir, data_cfg=data_cfg, resume=resume, progress=progress, init=init)
    try:
        return trainer.fit()
    finally:
        distributed.shutdown()
