"""Every operator of the exported graph is one the ONNX-TensorRT parser supports, for TensorRT
8.6 (and 8.5: JetPack 5 / 6.0) and TensorRT 10.x (JetPack 6.1+, x86) — the closest check of the
TensorRT path possible on a machine without TensorRT — and the graph is static, opset 17.

Source: the operator support table of the ONNX-TensorRT parser, ``docs/operators.md`` in the
``onnx/onnx-tensorrt`` repository (columns: Operator, Supported Y/N, Supported Types,
Restrictions), as stored in the reference index used for this work:

* **TensorRT 8.6** (and 8.5: JetPack 5.1 ships 8.5.2, JetPack 6.0 ships 8.6.2). The
  ``release/8.6-GA`` copy of ``docs/operators.md`` was not in the index; the table below is the
  one headed "TensorRT 8.5 supports operators up to Opset 17" (the ``release/8.5-GA`` text) plus
  what ``docs/Changelog.md`` lists for "TensorRT 8.6 EA" / "8.6 GA": added ``GroupNormalization``,
  ``LayerNormalization``, ``IsInf`` (and N-D ``Trilu``, a new LSTM importer); nothing removed. So
  8.5 and 8.6 parse opset ≤ 17 and every row this graph uses, with the same restrictions.
  Restrictions of the rows this graph uses: Resize — coordinate transformation ``half_pixel``,
  ``pytorch_half_pixel``, ``tf_half_pixel_for_nn``, ``asymmetric`` or ``align_corners``; mode
  ``nearest`` or ``linear``; nearest mode ``floor``, ``ceil``, ``round_prefer_floor`` or
  ``round_prefer_ceil``. MaxPool — 2D or 3D only, no ``Indices`` output. Slice — ``axes`` must
  be an initializer. (Conv's row carried "weights must be an initializer" up to 8.4; checked too.)
  Types: INT64 has "limited support": the parser casts it down to INT32.
* **TensorRT 10.x** (JetPack 6 ships 10.3; x86). The table is the ``main`` branch's, headed
  "TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24"; TensorRT 10.0's
  header reads "opset 9 to opset 20", and ``docs/Changelog.md`` for 10.0 … 10.15 lists only
  additions and fixes (10.3: tensor ``axes`` for Slice; 10.4: tensor ``axes`` for Pad), so the rows
  used here hold for every 10.x. Restrictions added over 8.6 for these rows: MaxPool —
  ``dilations`` empty or all ones; Resize — aspect-ratio policy ``stretch``, no antialiasing,
  ``axes`` an iota when ``scales`` is a tensor (attributes that opset 17's Resize does not have).

The graph's *own* contract is asserted with the table: the attributes the runtime relies on —
ArgMax over the branch axis with ``keepdims=1`` (the N×1×H×W index GatherElements takes) and
``select_last_index=0`` (ties go to branch 0, the rule ``test_export`` checks), GatherElements on
axis 1, nearest Resize with ``asymmetric``/``floor`` (PyTorch's ``nearest``), no Pad (if one
appears, its mode must be ``constant``, ``edge`` or ``reflect``, the modes both tables support).
The table here is written for this test from those documents; no code was taken from them.

Checked on the shipped model (fp32, per branch, 160×48) and on a fresh fp16 per-branch export at
another size (96×64), which adds the Cast nodes of the fp16 graph.
"""

from pathlib import Path

import onnx
import pytest

from dualdepth_ros.inference.export import export_model

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "dualdepth_default"
CKPT = REPO / "models" / "dualdepth_default.pt"

# ---------------------------------------------------------------------------------------
# The published tables: operators with Supported = Y
# ---------------------------------------------------------------------------------------
_TRT85_SUPPORTED = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSwish HardSigmoid
Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression
NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign
Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
"""
# Supported = N in the same table (listed to keep the two sets honest: disjoint, and N stays N).
_TRT85_UNSUPPORTED = """
Bernoulli BitShift BlackmanWindow Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear
HammingWindow HannWindow Hardmax IsInf LayerNormalization MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix
Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul
STFT SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
SoftmaxCrossEntropyLoss SplitToSequence StringNormalizer TfIdfVectorizer Unique
"""
_TRT86_ADDED = "GroupNormalization LayerNormalization IsInf"  # docs/Changelog.md, TensorRT 8.6 EA

_TRT10_SUPPORTED = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu
Unsqueeze Upsample Where Xor
"""
_TRT10_UNSUPPORTED = """
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool
MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement
QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase
SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat
StringNormalizer StringSplit TfIdfVectorizer Unique
"""

# Supported Types of the rows an exported depth graph uses or may plausibly use (the type of the
# data input, first input). A graph op without a row here fails the test: read its row in the
# tables above and add it.
_TYPES_86 = {
    "Add": "FP32 FP16 INT32",
    "ArgMax": "FP32 FP16",
    "BatchNormalization": "FP32 FP16",
    "Cast": "FP32 FP16 INT32 INT8 BOOL",
    "Clip": "FP32 FP16 INT8",
    "Concat": "FP32 FP16 INT32 INT8 BOOL",
    "Constant": "FP32 FP16 INT32 INT8 BOOL",
    "Conv": "FP32 FP16 INT8",
    "Div": "FP32 FP16 INT32",
    "Elu": "FP32 FP16 INT8",
    "Gather": "FP32 FP16 INT8 INT32 BOOL",
    "GatherElements": "FP32 FP16 INT8 INT32 BOOL",
    "Identity": "FP32 FP16 INT32 INT8 BOOL",
    "MaxPool": "FP32 FP16 INT8",
    "Mul": "FP32 FP16 INT32",
    "Pad": "FP32 FP16 INT8 INT32",
    "Reciprocal": "FP32 FP16",
    "Relu": "FP32 FP16 INT8",
    "Reshape": "FP32 FP16 INT32 INT8 BOOL",
    "Resize": "FP32 FP16",
    "Sigmoid": "FP32 FP16 INT8",
    "Slice": "FP32 FP16 INT32 INT8 BOOL",
    "Sub": "FP32 FP16 INT32",
    "Transpose": "FP32 FP16 INT32 INT8 BOOL",
    "Unsqueeze": "FP32 FP16 INT32 INT8 BOOL",
}
_TYPES_10 = {
    "Add": "FP32 FP16 BF16 INT32 INT64",
    "ArgMax": "FP32 FP16 BF16 INT32 INT64",
    "BatchNormalization": "FP32 FP16 BF16",
    "Cast": "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL",
    "Clip": "FP32 FP16 BF16",
    "Concat": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Constant": "FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL",
    "Conv": "FP32 FP16 BF16",
    "Div": "FP32 FP16 BF16 INT32 INT64",
    "Elu": "FP32 FP16 BF16",
    "Gather": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "GatherElements": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Identity": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "MaxPool": "FP32 FP16 BF16",
    "Mul": "FP32 FP16 BF16 INT32 INT64",
    "Pad": "FP32 FP16 BF16 INT32 INT64",
    "Reciprocal": "FP32 FP16 BF16",
    "Relu": "FP32 FP16 BF16 INT32 INT64",
    "Reshape": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Resize": "FP32 FP16 BF16",
    "Sigmoid": "FP32 FP16 BF16",
    "Slice": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Sub": "FP32 FP16 BF16 INT32 INT64",
    "Transpose": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Unsqueeze": "FP32 FP16 BF16 INT32 INT64 BOOL",
}

_ONNX_TYPE = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.DOUBLE: "DOUBLE",
}

_RESIZE_CTM = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
_PAD_MODES = {"constant", "edge", "reflect"}


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


TABLES = {
    # version: (supported, unsupported, types, max opset, min opset)
    "8.6": (
        _names(_TRT85_SUPPORTED) | _names(_TRT86_ADDED),
        _names(_TRT85_UNSUPPORTED) - _names(_TRT86_ADDED),
        _TYPES_86,
        17,
        1,
    ),
    "10.x": (_names(_TRT10_SUPPORTED), _names(_TRT10_UNSUPPORTED), _TYPES_10, 20, 9),
}


def test_the_encoded_tables_are_consistent() -> None:
    for version, (yes, no, types, _, _) in TABLES.items():
        assert not yes & no, version
        assert set(types) <= yes, (version, set(types) - yes)
    # What the changelog says moved between the versions, and the ops this package's exporter refuses.
    assert {"LayerNormalization", "GroupNormalization", "IsInf"} <= TABLES["8.6"][0]
    assert {"NonZero", "If", "Loop"} <= TABLES["8.6"][
        0
    ]  # supported by TensorRT, refused by our exporter (static graph)
    assert "Unique" in TABLES["8.6"][1] and "Unique" in TABLES["10.x"][1]


# ---------------------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------------------
def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _restriction(node: onnx.NodeProto, version: str, initializers: set[str]) -> str | None:
    """None when ``node`` meets the table's restrictions for ``version`` and this graph's contract."""
    a = _attrs(node)
    op = node.op_type
    if op == "Resize":
        ctm = _text(a.get("coordinate_transformation_mode", "half_pixel"))
        mode = _text(a.get("mode", "nearest"))
        nearest = _text(a.get("nearest_mode", "round_prefer_floor"))
        if (
            ctm not in _RESIZE_CTM
            or mode not in _RESIZE_MODES
            or (mode == "nearest" and nearest not in _RESIZE_NEAREST)
        ):
            return f"Resize {ctm}/{mode}/{nearest} is not in the table"
        if a.get("antialias", 0) or _text(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch" or "axes" in a:
            return "Resize with antialias / aspect-ratio policy / axes"
        if (mode, ctm, nearest) != ("nearest", "asymmetric", "floor"):
            return f"Resize {mode}/{ctm}/{nearest}: the graph's upsampling is PyTorch's nearest (asymmetric, floor)"
    elif op == "MaxPool":
        if len(a.get("kernel_shape", [])) not in (2, 3):
            return "MaxPool must be 2D or 3D"
        if len([o for o in node.output if o]) != 1:
            return "MaxPool Indices output is unsupported"
        if version == "10.x" and any(d != 1 for d in a.get("dilations", [])):
            return "MaxPool dilations must be empty or all ones"
    elif op == "Slice":
        if len(node.input) > 3 and node.input[3] and node.input[3] not in initializers:
            return "Slice axes must be an initializer (TensorRT < 10.3)"
    elif op == "Conv":
        if len(a.get("kernel_shape", [])) not in (2, 3) or node.input[1] not in initializers:
            return "Conv must be 2D/3D with initializer weights"
    elif op == "ArgMax":
        if (a.get("axis", 0), a.get("keepdims", 1), a.get("select_last_index", 0)) != (1, 1, 0):
            return f"ArgMax axis/keepdims/select_last_index {a} (the graph needs 1/1/0: branch axis, ties to branch 0)"
    elif op == "GatherElements":
        if a.get("axis", 0) != 1:
            return f"GatherElements axis {a.get('axis', 0)} (the graph gathers over the branch axis 1)"
    elif op == "Pad":
        if _text(a.get("mode", "constant")) not in _PAD_MODES:
            return f"Pad mode {_text(a.get('mode'))}"
    return None


def check_graph(path: Path) -> dict[str, list[str]]:
    """For each TensorRT version, the problems of the graph at ``path`` (empty lists when it is supported)."""
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    initializers = {i.name for i in graph.initializer}
    types = {i.name: i.data_type for i in graph.initializer}
    for v in (*graph.input, *graph.value_info, *graph.output):
        types[v.name] = v.type.tensor_type.elem_type
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    problems: dict[str, list[str]] = {}
    for version, (yes, no, type_rows, max_opset, min_opset) in TABLES.items():
        found = []
        if set(opsets) != {"ai.onnx"} or not min_opset <= opsets["ai.onnx"] <= max_opset:
            found.append(f"opsets {opsets} (TensorRT {version} parses ai.onnx {min_opset}..{max_opset})")
        for node in graph.node:
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                found.append(f"{node.name}: custom domain {node.domain}")
            elif op in no or op not in yes:
                found.append(f"{node.name}: {op} is not supported by TensorRT {version}")
            elif op not in type_rows:
                found.append(f"{node.name}: {op} has no type row in this test (add it from the table)")
            else:
                dtype = _ONNX_TYPE.get(types.get(node.input[0]), "?")
                allowed = type_rows[op].split()
                if version == "8.6" and dtype == "INT64" and "INT32" in allowed:
                    dtype = "INT32"  # the 8.x parser casts INT64 down to INT32 (the table's note)
                if dtype not in allowed:
                    found.append(f"{node.name}: {op} on {dtype} (TensorRT {version}: {' '.join(allowed)})")
                why = _restriction(node, version, initializers)
                if why:
                    found.append(f"{node.name}: {why}")
        problems[version] = found
    return problems


def static_shapes(path: Path) -> list[str]:
    """Tensors (inputs, outputs, every inferred intermediate) whose shape is not fully static."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    bad = []
    for v in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if not v.type.tensor_type.HasField("shape") or any(
            not d.HasField("dim_value") or d.dim_value < 1 for d in dims
        ):
            bad.append(v.name)
    return bad


@pytest.fixture(scope="module")
def fresh_fp16(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ops") / "fp16"
    export_model(CKPT, out, precision="fp16", width=96, height=64, per_branch=True)
    return out


@pytest.fixture(params=["shipped", "fresh_fp16"])
def graph_path(request) -> Path:
    if request.param == "shipped":
        return SHIPPED / "model.onnx"
    return request.getfixturevalue("fresh_fp16") / "model.onnx"


def test_every_operator_is_supported_by_tensorrt_8_6_and_10(graph_path) -> None:
    problems = check_graph(graph_path)
    assert problems == {"8.6": [], "10.x": []}
    ops = {n.op_type for n in onnx.load(str(graph_path)).graph.node}
    assert {
        "Conv",
        "Resize",
        "ArgMax",
        "GatherElements",
        "Sigmoid",
        "Concat",
    } <= ops  # the graph checked is the real one


def test_graph_is_static_opset_17(graph_path) -> None:
    model = onnx.load(str(graph_path))
    assert [(o.domain or "ai.onnx", o.version) for o in model.opset_import] == [("ai.onnx", 17)]
    assert static_shapes(graph_path) == []
    assert len(model.functions) == 0


def test_the_checker_catches_what_tensorrt_would_reject(tmp_path) -> None:
    """The same checker on graphs edited to break one rule each: it must name the problem."""
    base = onnx.load(str(SHIPPED / "model.onnx"))

    def edited(edit) -> dict[str, list[str]]:
        m = onnx.ModelProto()
        m.CopyFrom(base)
        edit(m)
        path = tmp_path / "edited.onnx"
        onnx.save(m, str(path))
        return check_graph(path)

    def node(m, op):
        return next(n for n in m.graph.node if n.op_type == op)

    def set_attr(n, name, value):
        for a in list(n.attribute):
            if a.name == name:
                n.attribute.remove(a)
        n.attribute.append(onnx.helper.make_attribute(name, value))

    p = edited(lambda m: set_attr(node(m, "Resize"), "mode", "cubic"))
    assert any("Resize asymmetric/cubic" in x for x in p["8.6"]) and p["10.x"]
    p = edited(lambda m: set_attr(node(m, "ArgMax"), "select_last_index", 1))
    assert any("ties to branch 0" in x for x in p["8.6"])
    p = edited(lambda m: set_attr(node(m, "GatherElements"), "axis", 0))
    assert any("GatherElements axis 0" in x for x in p["10.x"])
    p = edited(lambda m: setattr(node(m, "Reciprocal"), "op_type", "Hardmax"))
    assert any("Hardmax is not supported by TensorRT 8.6" in x for x in p["8.6"]) and not any(
        "not supported" in x for x in p["10.x"]
    )
    p = edited(lambda m: setattr(node(m, "Elu"), "op_type", "Celu"))
    assert any("Celu has no type row" in x for x in p["8.6"])
    dilated = onnx.helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], dilations=[2, 2])
    assert _restriction(dilated, "8.6", set()) is None and "dilations" in _restriction(dilated, "10.x", set())
    sliced = onnx.helper.make_node("Slice", ["x", "s", "e", "axes"], ["y"])
    assert "axes must be an initializer" in _restriction(sliced, "8.6", {"s", "e"})
    assert _restriction(sliced, "8.6", {"s", "e", "axes"}) is None
    padded = onnx.helper.make_node("Pad", ["x", "p"], ["y"], mode="wrap")
    assert "Pad mode wrap" in _restriction(padded, "8.6", set())

    def opset_18(m):
        m.opset_import[0].version = 18

    p = edited(opset_18)
    assert any("parses ai.onnx 1..17" in x for x in p["8.6"]) and not any("opsets" in x for x in p["10.x"])

    def dynamic_batch(m):
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"

    m = onnx.ModelProto()
    m.CopyFrom(base)
    dynamic_batch(m)
    onnx.save(m, str(tmp_path / "dynamic.onnx"))
    assert "image" in static_shapes(tmp_path / "dynamic.onnx")
