"""``model.json`` and the ONNX ``metadata_props``: everything a runtime needs besides the graph.

A model folder written by ``dualdepth export`` holds::

    model.onnx    the graph (image → depth, confidence [, depth_branch{b}, confidence_branch{b}])
    model.json    this module's ModelMetadata, as JSON
    weights.pt    the depth net's weights for the PyTorch backend (loaded with weights_only=True)

A shipped model's folder is derived from its packed checkpoint (``models/NAME.pt`` beside
``models/NAME/``) at build or first use (:mod:`.derive`), never stored.

A runtime (the node, ``dualdepth infer``) takes its preprocessing (input size, resize/crop mode,
rectification, colour order, value range) from here, never from the training config.

Fields (:class:`ModelMetadata`)
-------------------------------
``format``                ``"dualdepth_ros.model/1"``
``input_width/height``    the graph's static input size, pixels
``batch_size``            the graph's static batch (1); backends run larger batches in chunks
``resize_mode``           ``resize`` | ``crop_bottom`` | ``crop_center`` (:mod:`dualdepth_ros.preprocess`)
``rectify``               raw images are rectified from CameraInfo before the resize
``color_order``           ``"RGB"``; ``value_range`` ``[0, 1]`` (float32 ``pixel / 255``)
``depth_units``           ``"model"`` (metres only after scale recovery)
``min_depth/max_depth``   the network's output range in model units, ``1/(disp_scale+disp_offset)``
                          … ``1/disp_offset``
``input_name``            ``"image"``; ``output_names``: ``depth``, ``confidence`` (+ per branch)
``num_branches``          branches of the depth net; ``per_branch``: the graph has per-branch outputs
``intrinsics_convention`` how intrinsics are expressed (the checkpoint's convention text)
``training_intrinsics``   ``{"fx","fy","cx","cy"}`` at the input size, or null when unknown (a
                          checkpoint does not record its camera; ``dualdepth export
                          --training-intrinsics`` sets it); ``training_hfov_deg`` follows from it
                          (informative only)
``config_hash``           the training config's hash (the checkpoint's ``config_hash``)
``weights_sha256``        SHA-256 of the depth net's weights as stored in the checkpoint
                          (:func:`dualdepth_ros.inference.weights.state_dict_sha256`)
``checkpoint_step``       training step of the checkpoint (informative)
``package_version``       dualdepth_ros version that exported the model
``onnx_sha256``           SHA-256 of the bytes of ``model.onnx`` as written (metadata_props
                          included); a runtime refuses a model.json whose hash is not its
                          model.onnx's
``precision``             ``fp32`` | ``fp16`` (weights and compute of the graph; I/O is float32)
``opset``                 the ONNX opset (17: TensorRT 8.6 parses up to 17)

``metadata_props`` of ``model.onnx`` hold every field except ``onnx_sha256`` (a file cannot
contain its own hash), each value JSON-encoded. This module imports neither torch nor onnx.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backend import ModelError

if TYPE_CHECKING:
    from ..preprocess import Preprocessor

__all__ = [
    "FORMAT",
    "INPUT_NAME",
    "FUSED_OUTPUT_NAMES",
    "ONNX_OPSET",
    "MODEL_FILE",
    "METADATA_FILE",
    "WEIGHTS_FILE",
    "output_names",
    "ModelMetadata",
    "load_metadata",
    "parse_metadata_props",
    "file_sha256",
]

FORMAT = "dualdepth_ros.model/1"
#: The graph's fixed names (design.md "Model graph"): the node binds by name, never by index.
INPUT_NAME = "image"
FUSED_OUTPUT_NAMES = ("depth", "confidence")
#: TensorRT 8.6 (JetPack 5) parses ONNX up to opset 17; opset 17 is required.
ONNX_OPSET = 17
MODEL_FILE = "model.onnx"
METADATA_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"

_RESIZE_MODES = ("resize", "crop_bottom", "crop_center")  # = preprocess.RESIZE_MODES (tested)
_DEPTH_UNITS = ("model", "m")
_PRECISIONS = ("fp32", "fp16")


def output_names(num_branches: int, per_branch: bool) -> list[str]:
    """The graph's output names in order.

    ``depth``, ``confidence``, then with ``per_branch`` for each branch ``depth_branch{b}``,
    ``confidence_branch{b}``.
    """
    names = list(FUSED_OUTPUT_NAMES)
    if per_branch:
        for b in range(num_branches):
            names += [f"depth_branch{b}", f"confidence_branch{b}"]
    return names


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass(kw_only=True)
class ModelMetadata:
    """What a runtime needs to feed and read the exported graph (module docstring for each field)."""

    format: str = FORMAT
    input_width: int
    input_height: int
    batch_size: int = 1
    resize_mode: str
    rectify: bool
    color_order: str = "RGB"
    value_range: list[float] = dataclasses.field(default_factory=lambda: [0.0, 1.0])
    depth_units: str = "model"
    min_depth: float
    max_depth: float
    input_name: str = INPUT_NAME
    output_names: list[str]
    num_branches: int
    per_branch: bool
    intrinsics_convention: str
    training_intrinsics: dict[str, float] | None = None
    training_hfov_deg: float | None = None
    config_hash: str
    weights_sha256: str
    checkpoint_step: int | None = None
    package_version: str
    onnx_sha256: str
    precision: str = "fp32"
    opset: int = ONNX_OPSET

    # -- conversion ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, fields in declaration order."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write ``model.json`` (``path`` a file, or a folder to write ``model.json`` into); flushed to disk."""
        path = Path(path)
        if path.is_dir():
            path = path / METADATA_FILE
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = METADATA_FILE) -> ModelMetadata:
        """Build and validate from a parsed ``model.json``.

        Raises
        ------
        ModelError : not an object, another ``format``, a missing or unknown field, or a value
            of the wrong type or out of range (the message names ``source`` and the field).
        """
        if not isinstance(data, Mapping):
            raise ModelError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ModelError(f"{source}: format is {data.get('format')!r}, expected {FORMAT!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ModelError(f"{source}: unknown field(s) {', '.join(unknown)} (written by a newer dualdepth_ros?)")
        required = [
            n
            for n, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in data
        ]
        if required:
            raise ModelError(f"{source}: missing field(s) {', '.join(required)}")
        md = cls(**dict(data))
        md.validate(source)
        return md

    def metadata_props(self) -> dict[str, str]:
        """The ONNX ``metadata_props``: every field but ``onnx_sha256``, values JSON-encoded."""
        return {k: json.dumps(v, allow_nan=False) for k, v in self.to_dict().items() if k != "onnx_sha256"}

    def check_metadata_props(self, props: Mapping[str, str], source: str = MODEL_FILE) -> None:
        """Raise :class:`ModelError` naming every field where ``props`` (of the ONNX) and this metadata differ."""
        try:
            got = parse_metadata_props(props)
        except ModelError as err:
            raise ModelError(f"{source}: {err}") from None
        want = {k: v for k, v in self.to_dict().items() if k != "onnx_sha256"}
        diff = sorted(k for k in set(want) | set(got) if want.get(k, "<absent>") != got.get(k, "<absent>"))
        if diff:
            shown = ", ".join(
                f"{k} ({got.get(k, '<absent>')!r} in the ONNX, {want.get(k, '<absent>')!r})" for k in diff
            )
            raise ModelError(
                f"{source} and {METADATA_FILE} disagree on {shown}: they come from different exports; "
                "export them again together (dualdepth export)"
            )

    # -- validation ---------------------------------------------------------------------
    def validate(self, source: str = METADATA_FILE) -> None:
        """Check every field's type and range; :class:`ModelError` naming the first bad field."""

        def bad(name: str, what: str) -> ModelError:
            return ModelError(f"{source}: field {name!r} must be {what}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("input_width", "input_height", "batch_size", "num_branches"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        if self.resize_mode not in _RESIZE_MODES:
            raise bad("resize_mode", f"one of {', '.join(_RESIZE_MODES)}")
        for name in ("rectify", "per_branch"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        if self.color_order != "RGB":
            raise bad("color_order", '"RGB"')
        if not isinstance(self.value_range, list) or [float(v) for v in self.value_range if is_num(v)] != [0.0, 1.0]:
            raise bad("value_range", "[0, 1]")
        if self.depth_units not in _DEPTH_UNITS:
            raise bad("depth_units", f"one of {', '.join(_DEPTH_UNITS)}")
        if not is_num(self.min_depth) or self.min_depth <= 0:
            raise bad("min_depth", "a positive number")
        if not is_num(self.max_depth) or self.max_depth <= self.min_depth:
            raise bad("max_depth", "a number above min_depth")
        if self.input_name != INPUT_NAME:
            raise bad("input_name", repr(INPUT_NAME))
        if self.output_names != output_names(self.num_branches, self.per_branch):
            expect = output_names(self.num_branches, self.per_branch)
            raise bad("output_names", f"{expect} (from num_branches, per_branch)")
        for name in ("intrinsics_convention", "config_hash", "weights_sha256", "package_version", "onnx_sha256"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad(name, "a non-empty string")
        k = self.training_intrinsics
        if k is not None:
            keys_ok = isinstance(k, Mapping) and set(k) == {"fx", "fy", "cx", "cy"}
            if not keys_ok or not all(is_num(v) for v in k.values()):
                raise bad("training_intrinsics", 'null or {"fx", "fy", "cx", "cy"} numbers')
            if k["fx"] <= 0 or k["fy"] <= 0:
                raise bad("training_intrinsics", "null or intrinsics with positive focal lengths")
        if self.training_hfov_deg is not None and (
            not is_num(self.training_hfov_deg) or not 0 < self.training_hfov_deg < 180
        ):
            raise bad("training_hfov_deg", "null or an angle in (0, 180) degrees")
        if self.checkpoint_step is not None and not is_int(self.checkpoint_step):
            raise bad("checkpoint_step", "null or an integer")
        if self.precision not in _PRECISIONS:
            raise bad("precision", f"one of {', '.join(_PRECISIONS)}")
        if not is_int(self.opset) or self.opset < ONNX_OPSET:
            raise bad("opset", f"an integer ≥ {ONNX_OPSET}")

    # -- use ----------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The graph's static input shape ``(batch_size, 3, input_height, input_width)``."""
        return (self.batch_size, 3, self.input_height, self.input_width)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """Every output's static shape ``(batch_size, 1, input_height, input_width)``."""
        return (self.batch_size, 1, self.input_height, self.input_width)

    def preprocessor(self, rectify: bool | None = None, intrinsics: Any = None) -> Preprocessor:
        """The runtime's :class:`~dualdepth_ros.preprocess.Preprocessor` for this model.

        Sized and moded from this metadata (never from a training config). ``rectify``
        overrides the model's choice (False for an already rectified ``image_rect`` topic);
        ``intrinsics`` (``"fx,fy,cx,cy"`` of the incoming images) replaces CameraInfo.
        """
        from ..preprocess import Preprocessor

        return Preprocessor(
            self.input_width,
            self.input_height,
            self.resize_mode,
            rectify=self.rectify if rectify is None else bool(rectify),
            intrinsics=intrinsics,
        )


def parse_metadata_props(props: Mapping[str, str]) -> dict[str, Any]:
    """Decode ONNX ``metadata_props`` written by :meth:`ModelMetadata.metadata_props` (JSON values)."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            raise ModelError(f"metadata_props[{key!r}] is not JSON: {value!r}") from None
    return out


def load_metadata(model_dir_or_json: str | os.PathLike, log: Callable[[str], None] | None = None) -> ModelMetadata:
    """Read and validate ``model.json`` from a model folder (or the path of the JSON file itself).

    A folder without ``model.onnx``/``model.json`` whose packed checkpoint lies beside it
    (``NAME.pt`` next to ``NAME``) is derived from it first (:func:`~.derive.ensure_model_dir`;
    ``log`` gets its one line, default stderr).

    Raises
    ------
    ModelError : the folder or file is missing, the file is not JSON, or a field is wrong; a folder
        to derive where torch is not importable (the message gives the ``dualdepth export`` command).
    """
    from .derive import ensure_model_dir

    path = Path(model_dir_or_json)
    ensure_model_dir(path, log=log)
    if path.is_dir():
        path = path / METADATA_FILE
    elif path.suffix == ".onnx":
        path = path.with_name(METADATA_FILE)
    if not path.is_file():
        where = path.parent if path.parent.is_dir() else None
        if where is None:
            raise ModelError(f"model folder not found: {path.parent}")
        raise ModelError(f"no {path.name} in {where} (a model folder holds model.onnx + model.json: dualdepth export)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelError(f"{path} is not a text file (expected model.json)") from None
    except json.JSONDecodeError as err:
        raise ModelError(f"{path} is not valid JSON (line {err.lineno}: {err.msg})") from None
    return ModelMetadata.from_dict(data, source=str(path))
