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
* ONNX Runtime loads the folder (every check of :class:`.OnnxRuntimeBackend`) and computes the
  model: on a probe image its outputs are as close to an exact (float64) evaluation of the net as
  PyTorch's own float32 evaluation is, within a factor (:func:`compare_outputs`).

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
    "PRECISION_EPS",
    "reference_outputs",
    "compare_outputs",
    "FORBIDDEN_OPS",
    "metadata_from_checkpoint",
    "export_onnx",
    "export_model",
    "export_resized",
]

#: Ops that would make the graph's work or shapes depend on the data (control flow, data-sized outputs);
#: ``Sequence*`` ops are refused as well.
FORBIDDEN_OPS = frozenset({"If", "Loop", "Scan", "NonZero", "Unique", "Compress"})

#: The post-export check (:func:`compare_outputs`): ONNX Runtime's error against a float64 evaluation of
#: the net may be ``noise_factor`` × PyTorch float32's own error plus ``floor_eps`` ε of the graph's
#: precision, on every pixel; at most ``max_share`` of the pixels may exceed 1 × that error plus the floor.
VERIFY_BOUNDS = {"noise_factor": 16.0, "floor_eps": 16.0, "max_share": 0.01}
#: Machine epsilon of each export precision.
PRECISION_EPS = {"fp32": float(np.finfo(np.float32).eps), "fp16": float(np.finfo(np.float16).eps)}

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


def reference_outputs(net: torch.nn.Module, image: torch.Tensor, dtype: torch.dtype) -> list[np.ndarray]:
    """The exported graph's outputs computed by PyTorch on the CPU in ``dtype``, every branch included.

    The computation of :class:`~dualdepth_ros.networks.ExportModule` (encoder, each branch's
    scale-0 logits, ``disp_to_depth`` and ``sigmoid``, the fusion) without its casts to float32,
    on a copy of ``net`` (the net itself is not changed).

    Returns
    -------
    ``[depth, confidence, depth_branch0, confidence_branch0, …]``, each ``N×1×H×W`` (``dtype``).
    """
    from ..networks import disp_to_depth, fuse_branches

    n = copy.deepcopy(net).to(device="cpu", dtype=dtype).eval()
    x = image.detach().to(device="cpu", dtype=dtype)
    with torch.no_grad():
        feats = n.encoder(x)
        size = (x.shape[-2], x.shape[-1])
        depths, confs = [], []
        for branch in n.branches:
            depth_logit, conf_logit = branch(feats, size)[0]
            depths.append(disp_to_depth(depth_logit, n.disp_scale, n.disp_offset))
            confs.append(torch.ones_like(depth_logit) if conf_logit is None else torch.sigmoid(conf_logit))
        depth, conf = fuse_branches(depths, confs)
    return [t.numpy() for t in (depth, conf, *[a for pair in zip(depths, confs) for a in pair])]


def compare_outputs(
    got: Mapping[str, np.ndarray],
    ref32: list[np.ndarray],
    ref64: list[np.ndarray],
    disp_scale: float,
    disp_offset: float,
    precision: str = "fp32",
    strict: bool = True,
) -> dict[str, dict[str, float]]:
    """Check a runtime's outputs against an exact evaluation; :class:`ModelError` for a graph that differs.

    Why this measure: two correct float32 runtimes differ by their rounding, which grows with the
    network's depth and with the size of its activations (a model late in training has larger
    ones), and ONNX Runtime's ``Sigmoid`` is exact to about 1 ε *absolute*, not relative. So the
    outputs are compared as the sigmoids they are — the confidence itself, and the depth as
    ``σ = (1/depth − disp_offset) / disp_scale`` (a relative depth error near ``max_depth`` is up to
    ``disp_scale/disp_offset`` = 1000 × larger than the same error of σ) — against ``ref64``
    (float64), and the rounding noise of *this* model is measured: PyTorch float32's error against
    the same float64 result (``ref32``). Per output, with ``noise`` = PyTorch's worst error scaled
    to the graph's precision and ``floor`` = ``floor_eps`` ε of that precision (:data:`VERIFY_BOUNDS`):

    * every pixel: ``|got − ref64| ≤ noise_factor · noise + floor``;
    * at most ``max_share`` of the pixels: ``|got − ref64| > noise + floor``.

    Fused outputs are compared where the float64 reference's two best branch confidences differ by
    more than twice the confidence bound (elsewhere rounding may pick the other branch: the fusion
    rule working, not an error).

    Parameters
    ----------
    got : output name (``depth``, ``confidence``, ``depth_branch{b}``, ``confidence_branch{b}``) →
        the runtime's ``N×1×H×W`` array; per-branch outputs are optional.
    ref32, ref64 : :func:`reference_outputs` in float32 and float64 on the same input.
    disp_scale, disp_offset : the model's ``depth = 1 / (disp_scale·σ + disp_offset)``.
    precision : ``fp32`` or ``fp16``, the graph's compute precision.
    strict : raise :class:`ModelError` when a bound is exceeded (False: only report, e.g. to measure
        how far a broken graph is from the bounds).

    Returns
    -------
    output name → ``{"error", "noise", "bound", "share", "used"}``: the worst error, PyTorch's (scaled to the
    precision) and the bound, in σ units; the share of pixels over ``noise + floor``; ``used`` = error / bound.
    ``"_clear_share"`` → ``{"share"}``: the share of pixels where the fused outputs were compared.
    """
    eps = PRECISION_EPS[precision]
    k, floor, max_share = (VERIFY_BOUNDS[x] for x in ("noise_factor", "floor_eps", "max_share"))
    floor *= eps
    n_branches = (len(ref64) - 2) // 2
    names = ["depth", "confidence"] + [
        f"{kind}_branch{b}" for b in range(n_branches) for kind in ("depth", "confidence")
    ]

    def sigma(name: str, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        return (1.0 / a - disp_offset) / disp_scale if name.startswith("depth") else a

    def noise_of(name: str, mask: np.ndarray) -> float:
        i = names.index(name)
        e = np.abs(sigma(name, ref32[i]) - sigma(name, ref64[i]))[mask]
        return float(e.max(initial=0.0)) * eps / PRECISION_EPS["fp32"]

    everywhere = np.ones(ref64[0].shape, dtype=bool)
    conf_noise = max(noise_of(f"confidence_branch{b}", everywhere) for b in range(n_branches))
    confs = np.sort(np.concatenate(ref64[3::2], axis=1), axis=1)
    clear = (confs[:, -1:] - confs[:, -2:-1] > 2 * (k * conf_noise + floor)) if n_branches > 1 else everywhere
    report: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names):
        if name not in got:
            continue
        a = np.asarray(got[name])
        if a.shape != ref64[i].shape:
            raise ModelError(f"export check: ONNX Runtime's {name} has shape {a.shape}, expected {ref64[i].shape}")
        if not np.all(np.isfinite(a)):
            raise ModelError(f"export check: ONNX Runtime's {name} has non-finite values")
        if name.startswith("confidence") and (float(a.min()) < 0.0 or float(a.max()) > 1.0):
            raise ModelError(f"export check: ONNX Runtime's {name} leaves [0, 1] ({a.min():.3g} … {a.max():.3g})")
        mask = clear if "branch" not in name else everywhere
        noise = noise_of(name, mask)
        err = np.abs(sigma(name, a) - sigma(name, ref64[i]))[mask]
        worst = float(err.max(initial=0.0))
        share = float(np.mean(err > noise + floor)) if err.size else 0.0
        bound = k * noise + floor
        report[name] = {"error": worst, "noise": noise, "bound": bound, "share": share, "used": worst / bound}
        what = "depth (as σ)" if name.startswith("depth") else "value"
        if not strict:
            continue
        if worst > bound:
            raise ModelError(
                f"export check: ONNX Runtime's {name} differs from an exact (float64) evaluation by {worst:.3g} in "
                f"{what}, PyTorch {precision} by {noise:.3g}: over the bound {bound:.3g} ({k:g} × PyTorch's + "
                f"{VERIFY_BOUNDS['floor_eps']:g} ε); the exported graph does not compute the model"
            )
        if share > max_share:
            raise ModelError(
                f"export check: ONNX Runtime's {name} differs from an exact (float64) evaluation by more than "
                f"PyTorch {precision} does (+ {VERIFY_BOUNDS['floor_eps']:g} ε) on {100 * share:.2g} % of the pixels "
                f"(at most {100 * max_share:g} %); the exported graph does not compute the model"
            )
    report["_clear_share"] = {"share": float(clear.mean())}
    return report


def _verify(tmp: Path, metadata: ModelMetadata, net: torch.nn.Module, log: Callable[[str], None]) -> dict:
    """Load the written folder with ONNX Runtime and check it against ``net`` (the float32 depth net)
    on a probe image (:func:`compare_outputs`); :class:`ModelError` when it does not compute the model.
    """
    from .onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(tmp, metadata, per_branch=metadata.per_branch)
    try:
        probe = torch.rand(metadata.input_shape, generator=torch.Generator().manual_seed(1))
        res = backend.infer(probe.numpy())
    finally:
        backend.close()
    got = {"depth": res.depth, "confidence": res.confidence}
    for b, (d, c) in enumerate(res.branches or []):
        got[f"depth_branch{b}"], got[f"confidence_branch{b}"] = d, c
    ref32 = reference_outputs(net, probe, torch.float32)
    ref64 = reference_outputs(net, probe, torch.float64)
    report = compare_outputs(
        got, ref32, ref64, float(net.disp_scale), float(net.disp_offset), precision=metadata.precision
    )
    name = max((n for n in report if not n.startswith("_")), key=lambda n: report[n]["used"])
    w = report[name]
    log(
        f"checked with ONNX Runtime against an exact (float64) evaluation: worst output {name}, error "
        f"{w['error']:.2g} (PyTorch {metadata.precision}: {w['noise']:.2g}; σ units) = {100 * w['used']:.2g} % of "
        f"the bound; fused outputs compared on {100 * report['_clear_share']['share']:.1f} % of the pixels "
        "(a clear branch choice)"
    )
    return report


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
        _verify(tmp, md, net, log)
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
        _verify(tmp, new, net, log)
        replace_dir(tmp, out, overwrite, MODEL)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return new
