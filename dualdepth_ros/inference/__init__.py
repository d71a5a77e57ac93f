"""Inference: the exported model (ONNX + ``model.json``) and the backends that run it.

Data flow::

    checkpoint (.pt) ──dualdepth export──► DIR/model.onnx   (image → depth, confidence [+ per branch])
                                           DIR/model.json   (ModelMetadata: input size, resize mode, …)
                                           DIR/weights.pt   (depth net weights for the torch backend)
    DIR ──open_backend(DIR, "auto")──► Backend.infer(N×3×H×W float32) → InferenceResult

Modules: :mod:`.metadata` (``model.json``, ``metadata_props``), :mod:`.backend` (the interface,
:class:`ModelError`, input checks), :mod:`.selection` (``open_backend``, the ``auto`` rule),
:mod:`.tensorrt_backend` (engine cache use, name-based binding, running), :mod:`.tensorrt_build`
(the engine build), :mod:`.engine_cache` (keys, sidecars, the use/build/refuse decision),
:mod:`.tensorrt_cuda` (the tensorrt module and CUDA memory), :mod:`.onnxruntime_backend`,
:mod:`.torch_backend`, :mod:`.weights` (``weights.pt``), :mod:`.export` and :mod:`.cli`
(``dualdepth export [--engine]``).

Importing this package imports neither torch nor rosbags (nor onnxruntime, nor TensorRT): the
runtime path (metadata, preprocessing, ONNX Runtime, TensorRT) works on a machine without torch.
torch is imported only by the torch backend, the exporter and — where it is installed with CUDA —
as the TensorRT backend's source of CUDA memory (else cuda-python or pycuda).
"""

from .backend import BACKEND_NAMES, Backend, BackendUnavailableError, InferenceResult, ModelError
from .metadata import ModelMetadata, load_metadata
from .selection import open_backend

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendUnavailableError",
    "InferenceResult",
    "ModelError",
    "ModelMetadata",
    "load_metadata",
    "open_backend",
]
