"""The interface every inference backend implements, its result, its errors and its input check.

A backend runs the exported graph (:class:`~dualdepth_ros.networks.ExportModule`; design.md
"Model graph") on a batch of preprocessed images::

    image  N×3×H×W float32 RGB in [0, 1], H×W = the model's input size (model.json)
      → depth       N×1×H×W float32, model units (metres only after scale recovery)
      → confidence  N×1×H×W float32 in [0, 1]
      (→ per branch b: depth_branch{b}, confidence_branch{b}, same shapes, when asked for)

This module imports neither torch nor onnxruntime; each backend imports its runtime itself.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DualDepthError

if TYPE_CHECKING:
    from .metadata import ModelMetadata

__all__ = [
    "BACKEND_NAMES",
    "DEVICES",
    "PRECISIONS",
    "ModelError",
    "BackendUnavailableError",
    "InferenceResult",
    "Backend",
    "check_input",
]

#: Accepted values of ``open_backend(backend=…)`` (and of the node's ``backend`` parameter).
BACKEND_NAMES = ("auto", "tensorrt", "onnxruntime", "torch")
#: Accepted values of ``precision``.
PRECISIONS = ("fp32", "fp16")
#: Accepted values of ``device``.
DEVICES = ("auto", "cpu", "cuda")


class ModelError(DualDepthError):
    """A model that cannot be served: missing, corrupt or mismatched files, wrong input, bad options."""


class BackendUnavailableError(ModelError):
    """The backend's runtime or device is not present on this machine (``auto`` tries the next one)."""


@dataclasses.dataclass
class InferenceResult:
    """What :meth:`Backend.infer` returns.

    Attributes
    ----------
    depth : ``N×1×H×W`` float32, model units: per pixel the depth of the most confident branch.
    confidence : ``N×1×H×W`` float32 in [0, 1], that branch's confidence.
    branches : with ``per_branch``, one ``(depth, confidence)`` pair per branch (same shapes),
        branch 0 first; otherwise None.
    """

    depth: np.ndarray
    confidence: np.ndarray
    branches: list[tuple[np.ndarray, np.ndarray]] | None = None


def check_input(image: Any, metadata: ModelMetadata) -> np.ndarray:
    """Validate a model input; return it as a C-contiguous array (no copy when it already is).

    Parameters
    ----------
    image : ``N×3×H×W`` float32 RGB in [0, 1], ``N ≥ 1``, ``H×W`` the model's input size.

    Raises
    ------
    ModelError : not a numpy array, not float32, or another shape (one line naming what is wrong).
    """
    expect = f"N×3×{metadata.input_height}×{metadata.input_width} float32 RGB in [0, 1]"
    if not isinstance(image, np.ndarray):
        raise ModelError(f"the model input must be a numpy array ({expect}), got {type(image).__name__}")
    if image.dtype != np.float32:
        raise ModelError(f"the model input has dtype {image.dtype}; the model takes {expect}")
    if image.ndim != 4 or image.shape[0] < 1 or image.shape[1:] != (3, metadata.input_height, metadata.input_width):
        raise ModelError(f"the model input has shape {tuple(image.shape)}; the model takes {expect}")
    return np.ascontiguousarray(image)


class Backend(abc.ABC):
    """A loaded model ready to run: ``infer``, ``describe``, ``close`` (also a context manager).

    Attributes
    ----------
    name : ``"tensorrt"``, ``"onnxruntime"`` or ``"torch"``.
    metadata : the model's :class:`~dualdepth_ros.inference.metadata.ModelMetadata`.
    device : ``"cpu"`` or ``"cuda"`` (where the graph runs).
    precision : ``"fp32"`` or ``"fp16"`` (what actually runs, which may differ from what was asked).
    per_branch : :meth:`infer` also returns each branch's outputs.
    reason : why this backend runs (for ``auto``: why each better one was unavailable).
    """

    name: str = ""

    def __init__(
        self, metadata: ModelMetadata, *, device: str, precision: str, per_branch: bool, reason: str = ""
    ) -> None:
        self.metadata = metadata
        self.device = device
        self.precision = precision
        self.per_branch = bool(per_branch)
        self.reason = reason
        self._closed = False

    def infer(self, image: np.ndarray) -> InferenceResult:
        """Run the model on ``image`` ``N×3×H×W`` float32 RGB in [0, 1] (see the module docstring).

        Raises
        ------
        ModelError : wrong shape or dtype, or the backend is closed.
        """
        if self._closed:
            raise ModelError(f"the {self.name} backend is closed")
        return self._infer(check_input(image, self.metadata))

    @abc.abstractmethod
    def _infer(self, image: np.ndarray) -> InferenceResult:
        """Run a checked, contiguous input (any ``N ≥ 1``)."""

    def describe(self) -> dict[str, Any]:
        """``name``, ``device``, ``precision``, ``input`` ``[W, H]``, ``per_branch``, ``reason`` and backend details."""
        return {
            "name": self.name,
            "device": self.device,
            "precision": self.precision,
            "input": [self.metadata.input_width, self.metadata.input_height],
            "per_branch": self.per_branch,
            "reason": self.reason,
            **self._details(),
        }

    def _details(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Release the runtime's resources; :meth:`infer` raises afterwards. Idempotent."""
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:  # noqa: B027 - optional hook, most backends free by dropping references
        """Free what the backend holds (sessions, device memory)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.metadata.input_width, self.metadata.input_height
        return f"<{type(self).__name__} {self.device} {self.precision} {w}x{h}>"
