"""Training logs: TensorBoard (every loss term, images) and a console progress bar with ETA.

Only the main process (rank 0) writes; other ranks get a logger that does nothing. Depth and
confidence images are coloured by :mod:`dualdepth_ros.evaluation.plots` (the package's one
colouriser, :meth:`RunLogger.depth_image`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..evaluation.plots import colorize_confidence, colorize_inverse_depth

__all__ = ["RunLogger"]


class RunLogger:
    """TensorBoard + tqdm for one run directory.

    Parameters
    ----------
    run_dir : where ``tb/`` (event files) goes.
    total_steps : for the progress bar's ETA.
    start_step : the step a resumed run starts from.
    enabled : False on non-main ranks (nothing is written or shown).
    """

    def __init__(self, run_dir: str | Path, total_steps: int, start_step: int = 0, enabled: bool = True) -> None:
        self.enabled = enabled
        self.writer = None
        self.bar = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=start_step or None)
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            disable=None,
        )

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", float(v), step)

    def image(self, step: int, tag: str, chw_uint8: np.ndarray) -> None:
        """Log a ``3×H×W`` uint8 RGB image."""
        if self.enabled:
            self.writer.add_image(tag, chw_uint8, step, dataformats="CHW")

    def depth_image(self, step: int, tag: str, values: Any, confidence: bool = False) -> None:
        """Log an ``H×W`` depth map (inverse depth, near = bright) or, with ``confidence``, a map in [0, 1].

        Coloured by :func:`~dualdepth_ros.evaluation.plots.colorize_inverse_depth` /
        :func:`~dualdepth_ros.evaluation.plots.colorize_confidence`, as ``dualdepth eval``'s mosaics.
        """
        if self.enabled:
            rgb = colorize_confidence(values) if confidence else colorize_inverse_depth(values)
            self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def progress(self, n: int = 1, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(
                    {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False
                )

    def write(self, line: str) -> None:
        """A console line that does not break the progress bar."""
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
