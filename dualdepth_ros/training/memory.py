"""Fit a training step into the memory there is: measure, then micro-batch with gradient accumulation.

Before the first step the trainer runs trial steps (forward, losses, backward; no update) on 1 and
2 clips and measures the peak memory each needs above what was resident before it: host memory on
the CPU (the process's resident set, sampled every 2 ms while the step runs) or the CUDA allocator's
peak on a GPU. A line through the two points gives a fixed cost and a cost per clip; the largest
micro-batch whose predicted peak fits in ``train.memory_fraction`` of the memory available (host:
``MemAvailable`` and the cgroup limit; GPU: free device memory) is used, and the configured batch is
reached by accumulating gradients over several micro-batches. If even one clip does not fit, the
run stops before training with a one-line error that says what to lower.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import DualDepthError

__all__ = ["MemoryPlan", "available_memory", "PeakMemory", "plan_micro_batch"]

GiB = float(2**30)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """The measured cost of a step and the micro-batch chosen from it (bytes)."""

    micro_batch: int
    batch: int
    fixed: float
    per_clip: float
    available: float
    device: str

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimiser step."""
        return -(-self.batch // self.micro_batch)

    def describe(self) -> str:
        return (
            f"memory: a step needs {self.fixed / GiB:.2f} GiB + {self.per_clip / GiB:.2f} GiB per clip "
            f"({self.device}, measured); {self.available / GiB:.1f} GiB available → micro-batch of at most "
            f"{self.micro_batch} clips: batch {self.batch} in "
            + ("one pass" if self.accumulation == 1 else f"{self.accumulation} passes ({self.split()}) by accumulation")
        )

    def split(self) -> str:
        """Clips per pass, as the trainer splits a batch (``tensor_split``: as even as possible)."""
        q, r = divmod(self.batch, self.accumulation)
        return " + ".join(str(q + (i < r)) for i in range(self.accumulation))


def _cgroup_limit() -> float | None:
    """Bytes this process's cgroup may still use (cgroup v2 or v1), or None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            raw = Path(limit_file).read_text().strip()
            if raw == "max":
                return None
            limit = float(raw)
            if limit > 2**60:  # v1 "unlimited"
                return None
            return max(0.0, limit - float(Path(usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def available_memory(device: torch.device) -> float:
    """Bytes a training step may still allocate on ``device`` (free GPU memory, or available host RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = float(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:  # not Linux: assume the page size × available pages, else 4 GiB
        try:
            avail = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            avail = 4 * GiB
    limit = _cgroup_limit()
    return min(avail, limit) if limit is not None else avail


def _release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``), so that the resident set
    afterwards is what is live and a step's growth is what it allocates (not hidden by freed memory that
    the allocator kept). A no-op where glibc is absent.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> float:
    with open("/proc/self/statm") as fh:
        return float(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry, while the ``with`` block runs (bytes, :attr:`peak`)."""

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device = device
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = float(torch.cuda.memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _release_free_heap()
            self._base = _rss()
            self._max = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = float(torch.cuda.max_memory_allocated(self.device)) - self._base
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = max(self._max, _rss()) - self._base


def plan_micro_batch(
    trial: Callable[[int], None],
    batch: int,
    device: torch.device,
    fraction: float = 0.8,
    available: float | None = None,
    what_to_lower: str = "input.width/input.height or model.encoder_width",
) -> MemoryPlan:
    """Measure ``trial(n)`` (one forward + backward on ``n`` clips) for n = 1, 2 and choose the micro-batch.

    Parameters
    ----------
    trial : runs one step on ``n`` clips and frees everything it allocated.
    batch : the configured batch (clips per optimiser step and process).
    fraction : share of the available memory a step may use.
    available : bytes available (default: :func:`available_memory`, read before the trials).

    Raises
    ------
    DualDepthError : even one clip needs more than the memory available.
    """
    avail = available_memory(device) if available is None else float(available)
    budget = fraction * avail
    peaks = {}
    for n in (1, 2) if batch > 1 else (1,):
        with PeakMemory(device) as pm:
            trial(n)
        peaks[n] = max(pm.peak, 1.0)
        if peaks[n] > budget:
            break
    if 2 in peaks:
        per_clip = max(peaks[2] - peaks[1], 0.05 * peaks[2])
        fixed = max(peaks[1] - per_clip, 0.0)
    else:
        per_clip, fixed = peaks[1], 0.0
    if fixed + per_clip > budget:
        raise DualDepthError(
            f"one training clip needs about {(fixed + per_clip) / GiB:.1f} GiB but only {avail / GiB:.1f} GiB of "
            f"{'GPU' if device.type == 'cuda' else 'host'} memory is available ({fraction:.0%} of it may be used); "
            f"lower {what_to_lower}, or free memory"
        )
    micro = int(max(1, min(batch, (budget - fixed) // per_clip)))
    return MemoryPlan(micro, batch, fixed, per_clip, avail, device.type)
