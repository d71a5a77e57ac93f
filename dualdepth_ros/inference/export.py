"""Export a checkpoint to a model folder: ``model.onnx`` + ``model.json`` + ``weights.pt``.

One exporter: ``torch.onnx.export(dynamo=True)`` (the ``torch.export``-based one), asked for
opset 17 — the highest that TensorRT 8.6 (JetPack 5) parses; TensorRT 10 parses it too. Any
failure is an error: there is no fallback to the TorchScript exporter, and the result is
checked before it is published:

* opset exactly 17, no local functions, no control flow or data-sized ops (``If``, ``Loop``,
  ``Scan``, ``NonZero``, ``Unique``, ``Compress``, ``Sequence*``), ``onnx.checker`` with shape
  inference;
* input ``image`` and outputs ``depth``, ``confidence`` (+ ``depth_branch{b}``,
  ``confidence_branch{b}``) with float32 type and static shapes (batch 1);
* ONNX Runtime loads the folder (every check of :class:`.OnnxRuntimeBackend`) and its outputs
  equal the PyTorch module's on a probe image (bounds in :data:`VERIFY_BOUNDS`).

The graph is :class:`~dualdepth_ros.networks.ExportModule` in eval mode, traced with a dummy
input built on the model's own device (a CUDA model exports as well as a CPU one). With
``precision="fp16"`` the network's weights and compute are float16 while the input, the outputs,
the confidence comparison and the ``argmax`` stay float32 (see ``ExportModule``); fp32 is the
default and what TensorRT should be given (it builds fp16 engines from an fp32 graph itself).

The folder is written to a temporary sibling and renamed into place, so ``--out`` holds either
the previous export or the complete new one; ``overwrite`` replaces only an exported model folder
(:func:`dualdepth_ros.outdir.looks_like_model`), never a folder holding anything else.
``onnx_sha256`` in ``model.json`` is the SHA-256 of the final ``model.onnx`` bytes; the ONNX
``metadata_props`` hold every other field (a file cannot contain its own hash). Needs torch and
onnx (an export machine), not the runtime.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import DualDepthError
from ..outdir import MODEL, check_output_dir, check_separate, replace_dir, temporary_sibling
from .backend import ModelError
from .metadata import (
    FORMAT,
    INPUT_NAME,
    METADATA_FILE,
    MODEL_FILE,
    ONNX_OPSET,
    WEIGHTS_FILE,
    ModelMetadata,
    file_sha256,
    output_names,
)
from .weights import depth_state_dict, save_weights, state_dict_sha256

__all__ = [
    "VERIFY_BOUNDS",
    "FORBIDDEN_OPS",
    "metadata_from_checkpoint",
    "export_onnx",
    "export_model",
    "export_resized",
]

#: Ops that would make the graph's work or shapes depend on the data (control flow, data-sized outputs);
#: ``Sequence*`` ops are refused as well.
FORBIDDEN_OPS = frozenset({"If", "Loop", "Scan", "NonZero", "Unique", "Compress"})

#: (relative tolerance of depth, absolute tolerance of confidence, confidence margin) of the
#: post-export check of ONNX Runtime against PyTorch. Fused outputs are compared only where the
#: reference's two best branch confidences differ by more than the margin (elsewhere a rounding
#: difference may pick the other branch, which is the fusion rule working, not an error).
VERIFY_BOUNDS = {"fp32": (1e-4, 1e-5, 1e-5), "fp16": (5e-2, 1e-2, 1e-2)}

_PLACEHOLDER = "0" * 64


def _training_intrinsics(value: Any, width: int, height: int) -> tuple[dict[str, float] | None, float | None]:
    """``{"fx","fy","cx","cy"}`` and the horizontal field of view (degrees) from ``"fx,fy,cx,cy"``."""
    from ..preprocess import PreprocessError, parse_intrinsics

    try:
        k = parse_intrinsics(value)
    except PreprocessError as err:
        raise DualDepthError(f"--training-intrinsics: {err}") from None
    if k is None:
        return None, None
    fx, fy, cx, cy = k
    # The image spans [-0.5, W - 0.5] horizontally (pixel centres at integers).
    hfov = math.degrees(math.atan((cx + 0.5) / fx) + math.atan((width - 0.5 - cx) / fx))
    return {"fx": fx, "fy": fy, "cx": cx, "cy": cy}, round(hfov, 4)


def metadata_from_checkpoint(
    checkpoint: Mapping[str, Any],
    data_cfg: Any,
    model_cfg: Any,
    *,
    width: int,
    height: int,
    per_branch: bool,
    precision: str,
    training_intrinsics: Any = None,
) -> ModelMetadata:
    """The :class:`ModelMetadata` of an export (``onnx_sha256`` still a placeholder).

    ``checkpoint`` is the loaded checkpoint dict, ``data_cfg``/``model_cfg`` its ``DataConfig``
    and ``ModelConfig``. The resize mode is the checkpoint's recorded input mode; ``rectify`` the
    data config's; the depth range follows from ``disp_scale``/``disp_offset``.
    """
    inp = checkpoint.get("input") or {}
    k, hfov = _training_intrinsics(training_intrinsics, width, height)
    n_branches = int(model_cfg.num_branches)
    return ModelMetadata(
        format=FORMAT,
        input_width=int(width),
        input_height=int(height),
        resize_mode=str(inp.get("resize_mode", data_cfg.resize_mode)),
        rectify=bool(data_cfg.rectify),
        min_depth=1.0 / (float(model_cfg.disp_scale) + float(model_cfg.disp_offset)),
        max_depth=1.0 / float(model_cfg.disp_offset),
        output_names=output_names(n_branches, per_branch),
        num_branches=n_branches,
        per_branch=bool(per_branch),
        intrinsics_convention=str(checkpoint.get("intrinsics_convention") or ""),
        training_intrinsics=k,
        training_hfov_deg=hfov,
        config_hash=str(checkpoint.get("config_hash") or ""),
        weights_sha256=state_dict_sha256(depth_state_dict(checkpoint)),
        checkpoint_step=int(checkpoint["step"]) if isinstance(checkpoint.get("step"), int) else None,
        package_version=__version__,
        onnx_sha256=_PLACEHOLDER,
        precision=precision,
        opset=ONNX_OPSET,
    )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """Keep the exporter's progress lines and version-conversion notices off the console.

    What it prints is kept in the yielded buffer (added to an error message if the export fails);
    the result is checked explicitly afterwards (opset, names, shapes, numbers).
    """
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    buf = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecations inside torch's own exporter code
            yield buf
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(module: torch.nn.Module, path: str | os.PathLike, metadata: ModelMetadata) -> None:
    """Export ``module`` (an :class:`~dualdepth_ros.networks.ExportModule`) to ``path`` and check the graph.

    The dummy input is ``metadata.input_shape`` on the module's device. Adds ``metadata_props``
    (every field of ``metadata`` but ``onnx_sha256``). Raises :class:`ModelError` on any failure.
    """
    import onnx

    param = next(module.parameters())
    dummy = torch.rand(metadata.input_shape, generator=torch.Generator().manual_seed(0)).to(param.device)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with _quiet_exporter() as printed, torch.no_grad():
            try:
                torch.onnx.export(
                    module,
                    (dummy,),
                    str(path),
                    dynamo=True,
                    opset_version=metadata.opset,
                    input_names=[INPUT_NAME],
                    output_names=list(metadata.output_names),
                    external_data=False,
                    optimize=True,
                    verbose=False,
                )
            except Exception as err:  # noqa: BLE001 - the exporter raises many types; all are failures
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                tail = printed.getvalue().strip().splitlines()[-1:] or [""]
                raise ModelError(f"ONNX export failed: {type(err).__name__}: {first} {tail[0]}".rstrip()) from err
    finally:
        for m, mode in modes:  # every submodule back to its own mode
            m.training = mode
    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"the exporter wrote an unreadable ONNX file: {err}") from None
    _check_graph(model, metadata)
    onnx.helper.set_model_props(model, metadata.metadata_props())
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString(deterministic=True))
        fh.flush()
        os.fsync(fh.fileno())


def _check_graph(model: Any, metadata: ModelMetadata) -> None:
    """Opset, op set, names, dtypes and static shapes of an exported graph (module docstring)."""
    import onnx

    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if opsets.get("ai.onnx") != metadata.opset or len(opsets) != 1:
        raise ModelError(
            f"the exporter wrote opsets {opsets}, not ai.onnx {metadata.opset} alone "
            "(TensorRT 8.6 parses up to opset 17); the version conversion failed"
        )
    if len(model.functions):
        raise ModelError(f"the exported graph has local functions {[f.name for f in model.functions]}; expected none")
    ops = {n.op_type for n in model.graph.node}
    bad = sorted(op for op in ops if op in FORBIDDEN_OPS or op.startswith("Sequence"))
    if bad:
        raise ModelError(f"the exported graph has data-dependent ops {bad}; the model must be a static graph")

    def describe(vi: Any) -> tuple[str, int, list[Any]]:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        return vi.name, t.elem_type, dims

    inputs = [describe(v) for v in model.graph.input]
    want_in = [(metadata.input_name, onnx.TensorProto.FLOAT, list(metadata.input_shape))]
    if inputs != want_in:
        raise ModelError(f"the exported graph's inputs are {inputs}, expected {want_in} (static, float32)")
    outputs = [describe(v) for v in model.graph.output]
    want_out = [(n, onnx.TensorProto.FLOAT, list(metadata.output_shape)) for n in metadata.output_names]
    if outputs != want_out:
        raise ModelError(f"the exported graph's outputs are {outputs}, expected {want_out} (static, float32)")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"the exported graph fails onnx.checker: {str(err).splitlines()[0]}") from None


def _verify(tmp: Path, metadata: ModelMetadata, reference: torch.nn.Module, log: Callable[[str], None]) -> dict:
    """Load the written folder with ONNX Runtime and compare with ``reference`` (an fp32 per-branch
    ``ExportModule``) on a probe image; :class:`ModelError` when a bound of :data:`VERIFY_BOUNDS` is exceeded.
    """
    from .onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(tmp, metadata, per_branch=metadata.per_branch)
    try:
        probe = torch.rand(metadata.input_shape, generator=torch.Generator().manual_seed(1))
        got = backend.infer(probe.numpy())
    finally:
        backend.close()
    device = next(reference.parameters()).device
    with torch.no_grad():
        ref = [t.float().cpu().numpy() for t in reference(probe.to(device))]
    rtol, atol, margin = VERIFY_BOUNDS[metadata.precision]
    confs = np.sort(np.concatenate(ref[3::2], axis=1), axis=1)
    clear = (confs[:, -1:] - confs[:, -2:-1] > margin) if confs.shape[1] > 1 else np.ones_like(ref[1], dtype=bool)
    pairs = [("depth", got.depth, ref[0], clear), ("confidence", got.confidence, ref[1], clear)]
    for b, (d, c) in enumerate(got.branches or []):
        everywhere = np.ones_like(d, dtype=bool)
        pairs += [(f"depth_branch{b}", d, ref[2 + 2 * b], everywhere)]
        pairs += [(f"confidence_branch{b}", c, ref[3 + 2 * b], everywhere)]
    worst: dict[str, float] = {}
    for name, a, r, mask in pairs:
        if not np.all(np.isfinite(a)):
            raise ModelError(f"export check: ONNX Runtime's {name} has non-finite values")
        if name.startswith("depth"):
            err = float(np.max(np.abs(a - r)[mask] / r[mask], initial=0.0))
            ok = err <= rtol
        else:
            err = float(np.max(np.abs(a - r)[mask], initial=0.0))
            ok = err <= atol and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
        worst[name] = err
        if not ok:
            raise ModelError(
                f"export check: ONNX Runtime's {name} differs from PyTorch by {err:.3g} "
                f"(bound {rtol if name.startswith('depth') else atol:g}, {metadata.precision})"
            )
    log(
        f"checked with ONNX Runtime: max relative depth difference {worst['depth']:.2g}, "
        f"max confidence difference {worst['confidence']:.2g} (fused, {int(clear.sum())} of {clear.size} pixels "
        f"with a clear branch choice)"
    )
    return worst


def _prepare_out(out: Path, overwrite: bool, inputs: dict[str, Any]) -> None:
    """Refuse ``out`` before any work: not a replaceable model folder, or overlapping an input."""
    check_output_dir(out, overwrite, MODEL)
    check_separate(out, inputs)


def export_model(
    checkpoint: str | os.PathLike | Any,
    out_dir: str | os.PathLike,
    *,
    precision: str = "fp32",
    height: int | None = None,
    width: int | None = None,
    per_branch: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    training_intrinsics: Any = None,
    log: Callable[[str], None] | None = None,
) -> ModelMetadata:
    """Export a checkpoint to ``out_dir`` (``model.onnx``, ``model.json``, ``weights.pt``); see the module docstring.

    Parameters
    ----------
    checkpoint : a checkpoint path (``dualdepth train``/``pack`` output) or a
        :class:`~dualdepth_ros.training.checkpoint.LoadedModel`.
    out_dir : the model folder to write (must be empty or absent; with ``overwrite``, an existing model
        folder is replaced; any other folder is refused, and so is one that holds the checkpoint).
    precision : ``fp32`` or ``fp16`` (weights and compute of the graph; I/O stays float32).
    height, width : the graph's input size (default: the checkpoint's training size).
    per_branch : also expose ``depth_branch{b}`` / ``confidence_branch{b}``.
    device : where the model runs while it is traced (``cpu``, ``cuda``, ``cuda:N``).
    training_intrinsics : ``"fx,fy,cx,cy"`` of the training camera at the exported input size
        (recorded in ``model.json``; informative), or None when unknown.
    log : receives progress lines.

    Returns
    -------
    The written :class:`ModelMetadata`.
    """
    from ..networks import ExportModule
    from ..training.checkpoint import LoadedModel, model_from_checkpoint

    log = log or (lambda _line: None)
    if precision not in ("fp32", "fp16"):
        raise DualDepthError(f"precision must be fp32 or fp16, got {precision!r}")
    out = Path(out_dir)
    _prepare_out(out, overwrite, {"--checkpoint": None if isinstance(checkpoint, LoadedModel) else checkpoint})
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise DualDepthError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DualDepthError("export on cuda was asked for, but PyTorch sees no CUDA device")
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else model_from_checkpoint(checkpoint, dev)
    if getattr(loaded.cfg.model, "depth_source", "network") != "network":
        raise DualDepthError(
            f"this checkpoint takes its depth from {loaded.cfg.model.depth_source} (model.depth_source), "
            "not from its depth network: there is no trained depth net to export"
        )
    net = loaded.depth_net
    net_device = next(net.parameters()).device
    inp = loaded.checkpoint.get("input") or {}
    if (height is None) != (width is None):
        raise DualDepthError("give both --height and --width, or neither")
    width = int(width if width is not None else inp.get("width", loaded.cfg.input.width))
    height = int(height if height is not None else inp.get("height", loaded.cfg.input.height))
    if width < 1 or height < 1:
        raise DualDepthError(f"the input size must be positive, got {width}x{height}")
    md = metadata_from_checkpoint(
        loaded.checkpoint,
        loaded.data,
        loaded.cfg.model,
        width=width,
        height=height,
        per_branch=per_branch,
        precision=precision,
        training_intrinsics=training_intrinsics,
    )
    trained = (inp.get("width"), inp.get("height"))
    if trained != (width, height):
        log(f"note: the model was trained at {trained[0]}x{trained[1]}; exporting at {width}x{height}")
    was_training = net.training
    net.eval()
    tmp = temporary_sibling(out)
    try:
        served = net if precision == "fp32" else copy.deepcopy(net).half()
        module = ExportModule(served, per_branch=per_branch, precision=precision)
        log(f"exporting {width}x{height} {precision} on {net_device} (opset {md.opset}) …")
        export_onnx(module, tmp / MODEL_FILE, md)
        md = dataclasses.replace(md, onnx_sha256=file_sha256(tmp / MODEL_FILE))
        md.validate()
        md.write_json(tmp / METADATA_FILE)
        digest = save_weights(
            tmp / WEIGHTS_FILE,
            depth_state_dict(loaded.checkpoint),
            loaded.cfg.model,
            md.config_hash,
            {"width": inp.get("width", width), "height": inp.get("height", height), "resize_mode": md.resize_mode},
        )
        if digest != md.weights_sha256:  # pragma: no cover - the same tensors hashed twice
            raise ModelError("weights.pt does not hold the checkpoint's depth weights")
        _verify(tmp, md, ExportModule(net, per_branch=True).eval(), log)
        replace_dir(tmp, out, overwrite, MODEL)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        net.train(was_training)
    return md


def export_resized(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    width: int,
    height: int,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> ModelMetadata:
    """Export an existing model folder again at another input size, from its ``weights.pt``.

    The same weights (their ``weights_sha256`` is checked against ``model.json``), per-branch
    outputs and precision; ``training_intrinsics`` (given at the old size) is dropped. Used where
    a model folder but no checkpoint is at hand (``dualdepth bench infer`` at 640×192). The new
    folder is checked and published like :func:`export_model`'s.
    """
    from ..networks import ExportModule
    from .metadata import load_metadata
    from .weights import load_weights

    log = log or (lambda _line: None)
    src = Path(model_dir)
    md = load_metadata(src)
    if int(width) < 1 or int(height) < 1:
        raise DualDepthError(f"the input size must be positive, got {width}x{height}")
    out = Path(out_dir)
    _prepare_out(out, overwrite, {"the model folder": src})
    net, info = load_weights(src / WEIGHTS_FILE)
    if info.get("weights_sha256") != md.weights_sha256:
        raise ModelError(f"{src / WEIGHTS_FILE} does not hold the weights {src / METADATA_FILE} describes")
    new = dataclasses.replace(
        md,
        input_width=int(width),
        input_height=int(height),
        training_intrinsics=None,
        training_hfov_deg=None,
        package_version=__version__,
        onnx_sha256=_PLACEHOLDER,
    )
    tmp = temporary_sibling(out)
    try:
        served = net if md.precision == "fp32" else copy.deepcopy(net).half()
        module = ExportModule(served, per_branch=md.per_branch, precision=md.precision)
        log(f"exporting {src} again at {width}x{height} {md.precision} (opset {new.opset}) …")
        export_onnx(module, tmp / MODEL_FILE, new)
        new = dataclasses.replace(new, onnx_sha256=file_sha256(tmp / MODEL_FILE))
        new.validate()
        new.write_json(tmp / METADATA_FILE)
        shutil.copy2(src / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        _verify(tmp, new, ExportModule(net, per_branch=True).eval(), log)
        replace_dir(tmp, out, overwrite, MODEL)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return new
