"""PyTorch backend: the exported module (:class:`~dualdepth_ros.networks.ExportModule`) from ``weights.pt``.

Loads ``weights.pt`` with ``torch.load(weights_only=True)`` (no pickled code: the path may come
from a ROS parameter) and checks it against ``model.json`` (its weights digest and input size).
Runs on the CPU (float32) or on CUDA (float32 or float16; in float16 the confidence comparison
and the ``argmax`` stay float32, as in the exported graph). On CUDA the module is compiled with
``torch.compile(mode="reduce-overhead")`` (CUDA graphs) by default: the GPU path for a machine
without TensorRT; the first frames then take the compile time.

This module imports torch; :func:`~dualdepth_ros.inference.open_backend` imports it only when
the torch backend is chosen.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backend import Backend, BackendUnavailableError, InferenceResult, ModelError
from .metadata import WEIGHTS_FILE, ModelMetadata
from .weights import load_weights

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """Run the depth net with PyTorch.

    Parameters
    ----------
    model_dir : folder with ``model.json`` and ``weights.pt``.
    metadata : its :class:`ModelMetadata`.
    device : ``"cpu"`` or ``"cuda"`` (:class:`BackendUnavailableError` when torch sees no CUDA device).
    precision : ``"fp32"``, or ``"fp16"`` (CUDA only; :class:`ModelError` on the CPU).
    threads : torch intra-op threads (``torch.set_num_threads``: process-wide); None leaves it.
    per_branch : also return each branch's outputs.
    compile : ``torch.compile`` the module (CUDA graphs); None = on CUDA, falling back to eager
        (logged) if compiling fails; True = required (failure is a :class:`ModelError`); False = eager.
    reason, log : why this backend was chosen; where to send human-readable lines.
    """

    name = "torch"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        metadata: ModelMetadata,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
        per_branch: bool = False,
        compile: bool | None = None,
        reason: str = "",
        log: Callable[[str], None] | None = None,
    ) -> None:
        from ..networks import ExportModule

        if device not in ("cpu", "cuda"):
            raise ModelError(f"the torch backend runs on 'cpu' or 'cuda', not {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("torch sees no CUDA device")
        if precision not in ("fp32", "fp16"):
            raise ModelError(f"precision must be fp32 or fp16, got {precision!r}")
        if precision == "fp16" and device != "cuda":
            raise ModelError("the torch backend runs fp16 on CUDA only; use precision fp32 on the CPU")
        super().__init__(metadata, device=device, precision=precision, per_branch=per_branch, reason=reason)
        log = log or (lambda _line: None)
        path = Path(model_dir) / WEIGHTS_FILE
        net, info = load_weights(path)
        if info.get("weights_sha256") != metadata.weights_sha256:
            raise ModelError(
                f"{path} does not hold the weights model.json describes (weights_sha256 differs): "
                "export the model folder again (dualdepth export)"
            )
        if threads:
            torch.set_num_threads(int(threads))
        self._device = torch.device(device)
        net = net.to(self._device)
        if precision == "fp16":
            net = net.half()
        self._module = ExportModule(net, per_branch=per_branch, precision=precision).eval()
        self._runner: Any = self._module
        self.compiled = False
        if device == "cuda" and compile is not False:
            try:
                self._runner = torch.compile(self._module, mode="reduce-overhead", fullgraph=True)
                self._run(np.zeros(metadata.input_shape, dtype=np.float32))  # compile now, not on the first frame
                self._run(np.zeros(metadata.input_shape, dtype=np.float32))  # records the CUDA graph
                self.compiled = True
            except Exception as err:  # noqa: BLE001 - compile failures come in many types
                msg = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                if compile:
                    raise ModelError(f"torch.compile of the depth net failed: {msg}") from None
                log(f"torch.compile failed ({msg}); running the torch backend eagerly")
                self._runner = self._module
        self._threads = threads
        log(f"torch {torch.__version__}: {path} on {self._device} ({precision}{', compiled' if self.compiled else ''})")

    def _run(self, image: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(image).to(self._device, non_blocking=False)
            if self._runner is not self._module:
                torch.compiler.cudagraph_mark_step_begin()  # a new iteration: earlier graph outputs were copied out
            outs = self._runner(x)
            return [o.float().cpu().numpy() for o in outs]

    def _infer(self, image: np.ndarray) -> InferenceResult:
        try:
            outs = self._run(image)
        except RuntimeError as err:
            msg = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ModelError(f"the torch backend failed: {msg}") from None
        branches = None
        if self.per_branch:
            branches = [(outs[2 + 2 * b], outs[3 + 2 * b]) for b in range(self.metadata.num_branches)]
        return InferenceResult(depth=outs[0], confidence=outs[1], branches=branches)

    def _details(self) -> dict[str, Any]:
        return {"torch": torch.__version__, "compiled": self.compiled, "threads": self._threads}

    def _release(self) -> None:
        self._runner = None
        self._module = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
