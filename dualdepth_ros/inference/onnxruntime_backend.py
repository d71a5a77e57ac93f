"""ONNX Runtime backend: ``model.onnx`` on the CPU provider, or the CUDA provider when present.

The session uses full graph optimisation (``ORT_ENABLE_ALL``) and, on the CPU, ``threads``
intra-op threads (None: ONNX Runtime's default, one per core). Outputs are fetched **by
name**, never by position. Before the first frame the model folder is checked end to end:
``model.onnx`` must be the file whose SHA-256 ``model.json`` records, its ``metadata_props``
must equal ``model.json``, and its input and outputs must carry the names, float32 type and
static shapes that ``model.json`` describes; anything else is a one-line :class:`ModelError`.

The graph has a static batch (``metadata.batch_size``, 1); a larger batch runs in chunks.
Imports neither torch nor rosbags.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .backend import Backend, BackendUnavailableError, InferenceResult, ModelError
from .metadata import MODEL_FILE, ModelMetadata, file_sha256

__all__ = ["OnnxRuntimeBackend", "ort_cuda_available", "import_onnxruntime"]

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module; :class:`BackendUnavailableError` when it is not installed."""
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailableError(f"onnxruntime is not importable ({err}); pip install onnxruntime") from None
    return onnxruntime


def ort_cuda_available() -> str | None:
    """None when ONNX Runtime lists its CUDA provider, else the reason it cannot be used."""
    try:
        ort = import_onnxruntime()
    except BackendUnavailableError as err:
        return str(err)
    providers = ort.get_available_providers()
    if _CUDA not in providers:
        return f"this onnxruntime build has no CUDA provider (providers: {', '.join(providers)})"
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


class OnnxRuntimeBackend(Backend):
    """Run ``model.onnx`` with ONNX Runtime.

    Parameters
    ----------
    model_dir : folder with ``model.onnx`` and ``model.json``.
    metadata : its :class:`ModelMetadata` (``load_metadata(model_dir)``).
    device : ``"cpu"`` or ``"cuda"`` (the CUDA provider; :class:`BackendUnavailableError` if it
        does not start).
    threads : CPU intra-op threads (None or 0: ONNX Runtime's default).
    per_branch : also return the per-branch outputs (the model must have been exported with them).
    reason, log : why this backend was chosen; where to send human-readable lines.

    The precision is the ONNX file's (``metadata.precision``): ONNX Runtime runs the graph as exported.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        metadata: ModelMetadata,
        *,
        device: str = "cpu",
        threads: int | None = None,
        per_branch: bool = False,
        reason: str = "",
        log: Callable[[str], None] | None = None,
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise ModelError(f"the onnxruntime backend runs on 'cpu' or 'cuda', not {device!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 0):
            raise ModelError(f"threads must be a non-negative integer or None, got {threads!r}")
        if per_branch and not metadata.per_branch:
            raise ModelError(
                f"per-branch outputs were asked for, but {Path(model_dir) / MODEL_FILE} has none; "
                "export the model with --per-branch"
            )
        super().__init__(metadata, device=device, precision=metadata.precision, per_branch=per_branch, reason=reason)
        ort = import_onnxruntime()
        path = Path(model_dir) / MODEL_FILE
        if not path.is_file():
            raise ModelError(f"no {MODEL_FILE} in {Path(model_dir)} (written by dualdepth export)")
        digest = file_sha256(path)
        if digest != metadata.onnx_sha256:
            raise ModelError(
                f"{path} is not the file model.json describes (SHA-256 {digest[:12]}…, model.json records "
                f"{metadata.onnx_sha256[:12]}…): the files come from different exports, or model.onnx is damaged; "
                "export them again together (dualdepth export)"
            )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(threads or 0)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: the node logs through its own logger
        providers = [_CUDA, _CPU] if device == "cuda" else [_CPU]
        try:
            sess = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types for bad files
            raise ModelError(f"cannot load {path} with ONNX Runtime: {_first_line(err)}") from None
        if device == "cuda" and sess.get_providers()[0] != _CUDA:
            raise BackendUnavailableError(
                "ONNX Runtime lists a CUDA provider but could not start it (no GPU or CUDA libs?)"
            )
        self._check_graph(sess, path)
        metadata.check_metadata_props(sess.get_modelmeta().custom_metadata_map, source=str(path))
        self._session = sess
        self._path = path
        self._threads = threads
        self._providers = list(sess.get_providers())
        names = list(metadata.output_names)
        self._fetch = names if per_branch else names[:2]
        if log is not None:
            log(f"onnxruntime {ort.__version__}: {path} on {', '.join(sess.get_providers())}")

    def _check_graph(self, sess: Any, path: Path) -> None:
        md = self.metadata
        inputs = sess.get_inputs()
        if [i.name for i in inputs] != [md.input_name]:
            raise ModelError(f"{path} has input(s) {[i.name for i in inputs]}; model.json says {[md.input_name]}")
        want = list(md.input_shape)
        if inputs[0].type != "tensor(float)" or list(inputs[0].shape) != want:
            raise ModelError(
                f"{path} input {md.input_name!r} is {inputs[0].type} {inputs[0].shape}; model.json says float32 {want}"
            )
        outputs = {o.name: o for o in sess.get_outputs()}
        missing = [n for n in md.output_names if n not in outputs]
        if missing:
            raise ModelError(f"{path} has no output(s) {missing} (it has {sorted(outputs)}); model.json lists them")
        want = list(md.output_shape)
        for n in md.output_names:
            o = outputs[n]
            if o.type != "tensor(float)" or list(o.shape) != want:
                raise ModelError(f"{path} output {n!r} is {o.type} {o.shape}; model.json says float32 {want}")

    def _infer(self, image: np.ndarray) -> InferenceResult:
        bs = self.metadata.batch_size
        chunks = []
        for start in range(0, image.shape[0], bs):
            x = image[start : start + bs]
            pad = bs - x.shape[0]
            if pad:  # the last chunk of a batch that is not a multiple of the graph's batch
                x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), dtype=np.float32)])
            try:
                out = self._session.run(self._fetch, {self.metadata.input_name: x})
            except Exception as err:  # noqa: BLE001
                raise ModelError(f"ONNX Runtime failed to run {self._path}: {_first_line(err)}") from None
            chunks.append([o[: bs - pad] for o in out])
        outs = chunks[0] if len(chunks) == 1 else [np.concatenate(parts) for parts in zip(*chunks)]
        branches = None
        if self.per_branch:
            branches = [(outs[2 + 2 * b], outs[3 + 2 * b]) for b in range(self.metadata.num_branches)]
        return InferenceResult(depth=outs[0], confidence=outs[1], branches=branches)

    def _details(self) -> dict[str, Any]:
        return {"providers": self._providers, "threads": self._threads, "model": str(self._path)}

    def _release(self) -> None:
        self._session = None
