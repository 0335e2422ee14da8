"""fp16 mixed precision as a rewrite of any fp32 ONNX graph (no knowledge of the model's modules).

The policy, applied node by node:

* **kept in float32** (the fp32 islands):
  - normalisations: ``GroupNormalization``, ``InstanceNormalization``, ``LayerNormalization``,
    ``BatchNormalization`` (their mean/variance over many elements lose accuracy in fp16);
  - decomposed normalisation statistics: ``ReduceMean``/``ReduceSum``/``ReduceSumSquare``/``ReduceL2``,
    ``Pow``, ``Sqrt``, ``Reciprocal``, and a ``Sub``/``Add``/``Div``/``Mul`` directly consuming one of
    those (``x - mean``, ``var + eps``, ``(x - mean) / std``);
  - ``Softmax``/``LogSoftmax``;
  - the timestep embedding: ``Sin``/``Cos`` and every node that feeds them (``t * freq`` reaches
    ~1000, where fp16 spacing is 0.5); likewise a table read at fractional t (a learned embedding:
    ``Floor``/``Ceil`` of t and the fraction ``t - floor(t)``). Only such nodes that do not depend
    on the image input count (a ``Sin`` of activations is no timestep embedding); the walk stops
    at ``Shape``/``Size``, which read no values (:func:`timestep_seeds`).
* **float16**: everything else (Conv, MatMul, Gemm and the elementwise ops between them).
* graph inputs and outputs stay float32, so the engine interface does not change.

The rewrite then follows the ONNX schemas: a node's float inputs bound to the same type
parameter as its first float output take the node's dtype, inputs of other type parameters
(``Resize``'s ``scales``, ...) keep theirs; ``Cast``/``Constant``/``ConstantOfShape`` get their
attribute changed; float initializers used only by fp16 nodes are stored in fp16 (values beyond
±65504 are clipped), those used by both keep an fp32 copy; everywhere a value's dtype differs
from what its consumer needs, one ``Cast`` is inserted (shared by all such consumers).

Why not a library: onnxconverter-common 1.16's ``convert_float_to_float16`` (``keep_io_types``,
op block list) did not finish within minutes on the 546-node default-model graph, and its earlier
version produced a graph ONNX Runtime refused (DESIGN.md); ModelOpt pulls CUDA torch;
onnx-graphsurgeon would add a dependency for what is a walk over ``graph.node`` here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pndm.errors import PndmError

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = 65504.0

NORM_OPS = frozenset({"GroupNormalization", "InstanceNormalization", "LayerNormalization",
                      "BatchNormalization"})
SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax"})
TIMESTEP_OPS = frozenset({"Sin", "Cos", "Floor", "Ceil"})
STAT_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt", "Reciprocal"})
STAT_CONSUMER_OPS = frozenset({"Sub", "Add", "Div", "Mul"})
SHAPE_OPS = frozenset({"Shape", "Size"})  # read only the shape: any dtype in, no cast needed
RESHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
# Ops whose output dtype is an attribute this pass does not rewrite: left in float32.
DTYPE_ATTRIBUTE_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                                 "EyeLike", "Multinomial", "Bernoulli"})


@dataclass
class Fp16Report:
    """Why each node stayed float32 (node name -> reason), and how many nodes run in fp16."""

    kept: dict[str, str] = field(default_factory=dict)
    fp16_nodes: int = 0
    casts: int = 0
    clipped_initializers: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        """{reason: count} of the fp32 islands plus the fp16 node and cast counts (for the manifest)."""
        counts: dict[str, int] = defaultdict(int)
        for reason in self.kept.values():
            counts[reason] += 1
        return {**dict(sorted(counts.items())), "fp16_nodes": self.fp16_nodes, "casts": self.casts}


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({init.name: init.data_type for init in graph.initializer})
    for node in graph.node:  # Constant nodes' outputs, in case shape inference left them out
        if node.op_type == "Constant" and node.output[0] not in types:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                types[node.output[0]] = value.data_type
    return types


def fp32_islands(graph: onnx.GraphProto) -> dict[str, str]:
    """{node name: reason} for every node the policy keeps in float32 (module docstring)."""
    producer = {out: node for node in graph.node for out in node.output if out}
    kept: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in NORM_OPS:
            kept[node.name] = "normalization"
        elif node.op_type in SOFTMAX_OPS:
            kept[node.name] = "softmax"
        elif node.op_type in STAT_OPS:
            kept[node.name] = "normalization statistics"
        elif node.op_type in STAT_CONSUMER_OPS and any(
                i in producer and producer[i].op_type in STAT_OPS for i in node.input):
            kept[node.name] = "normalization statistics"
        elif node.op_type in DTYPE_ATTRIBUTE_OPS:
            kept[node.name] = "dtype attribute"
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    constants = {init.name for init in graph.initializer}
    for node in graph.node:  # a normalisation's affine (x * gamma + beta after a reshape) stays with it
        if node.op_type not in NORM_OPS:
            continue
        current = node
        while len(consumers[current.output[0]]) == 1:
            current = consumers[current.output[0]][0]
            if current.op_type in RESHAPE_OPS or (current.op_type in ("Mul", "Add")
                                                 and any(i in constants for i in current.input)):
                kept.setdefault(current.name, "normalization affine")
            else:
                break
    stack = timestep_seeds(graph)
    while stack:  # sin/cos, floor/ceil and everything that computes their argument
        node = stack.pop()
        if kept.get(node.name) == "timestep embedding":
            continue
        kept[node.name] = "timestep embedding"
        stack += [producer[i] for i in node.input
                  if i in producer and producer[i].op_type not in SHAPE_OPS]
    return kept


def timestep_seeds(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes the timestep-embedding island grows from (module docstring): ``TIMESTEP_OPS`` nodes and
    ``Sub`` nodes taking a ``Floor`` output (the fraction t - floor(t)), unless they depend on the image
    input (the graph's 4-d input)."""
    image = {i.name for i in graph.input if len(i.type.tensor_type.shape.dim) == 4}
    on_image: set[str] = set()
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(i in image or i in on_image for i in node.input):
            on_image.update(node.output)
    floors = {node.output[0] for node in graph.node if node.op_type == "Floor"}
    return [node for node in graph.node
            if (node.op_type in TIMESTEP_OPS or (node.op_type == "Sub" and floors.intersection(node.input)))
            and not on_image.intersection(node.output)]


def _check_convertible(model: onnx.ModelProto) -> None:
    graph = model.graph
    names = [node.name for node in graph.node]
    if len(set(names)) != len(names) or not all(names):
        raise PndmError("fp16 conversion needs unique node names; re-export the fp32 graph with pndm-export")
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise PndmError(f"fp16 conversion: node {node.name!r} ({node.op_type}) has a subgraph; graphs "
                            "with control flow are not supported, export with --precision fp32 or bf16")
    integer_inputs = {v.name for v in graph.input
                      if v.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)}
    for value in (*graph.input, *graph.output):
        # integer inputs (class labels) pass through unchanged: only float values are converted
        if value.type.tensor_type.elem_type != FLOAT and value.name not in integer_inputs:
            raise PndmError(f"fp16 conversion expects a float32 graph; {value.name!r} is not float32")


def _fp16_tensor(tensor: onnx.TensorProto, name: str) -> tuple[onnx.TensorProto, bool]:
    """``tensor`` as float16 named ``name``; True if values had to be clipped to the fp16 range."""
    array = numpy_helper.to_array(tensor)
    clipped = bool(np.abs(array).max(initial=0.0) > FP16_MAX)
    return numpy_helper.from_array(np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16), name), clipped


def _schema(node: onnx.NodeProto, opset: int):
    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None


def _type_param(formals, index: int) -> str:
    """Type string of the formal parameter at ``index`` (the last one repeats when variadic)."""
    return formals[min(index, len(formals) - 1)].type_str


def convert_to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Fp16Report]:
    """The mixed fp16 version of the float32 ``model`` (policy: module docstring) and what was kept."""
    _check_convertible(model)
    model = onnx.shape_inference.infer_shapes(model)
    graph, opset = model.graph, _opset(model)
    types = _value_types(model)
    report = Fp16Report()
    kept = fp32_islands(graph)
    wanted: dict[tuple[int, int], int] = {}  # (node index, input index) -> dtype the input must have
    new_node_out: dict[str, int] = {}  # float outputs: dtype after conversion

    for n, node in enumerate(graph.node):
        schema = _schema(node, opset)
        if schema is None and node.name not in kept:
            kept[node.name] = "unknown op"
        low = node.name not in kept
        dtype = FLOAT16 if low else FLOAT
        float_outputs = [k for k, out in enumerate(node.output) if out and types.get(out) == FLOAT]
        if low and float_outputs:
            report.fp16_nodes += 1
        if node.op_type in ("Cast", "Constant", "ConstantOfShape") or schema is None:
            for k in float_outputs:
                new_node_out[node.output[k]] = dtype
            continue
        param = _type_param(schema.outputs, float_outputs[0]) if float_outputs else None
        for k in float_outputs:
            same = _type_param(schema.outputs, k) == param
            new_node_out[node.output[k]] = dtype if same else FLOAT
        for i, name in enumerate(node.input):
            if not name or types.get(name) != FLOAT or node.op_type in SHAPE_OPS:
                continue
            same = param is not None and _type_param(schema.inputs, i) == param
            wanted[(n, i)] = dtype if same else FLOAT

    # Initializers: fp16 when every consumer wants fp16; an extra fp16 copy when consumers disagree.
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, set[int]] = defaultdict(set)
    for (n, i), dtype in wanted.items():
        name = graph.node[n].input[i]
        if name in initializers and initializers[name].data_type == FLOAT:
            consumers[name].add(dtype)
    produced: dict[str, int] = {v.name: v.type.tensor_type.elem_type for v in graph.input}
    renamed_fp16: dict[str, str] = {}
    new_initializers = []
    for init in graph.initializer:
        wants = consumers.get(init.name, set())
        if init.data_type != FLOAT or FLOAT16 not in wants:
            new_initializers.append(init)
            produced[init.name] = init.data_type
            continue
        fp16_name = init.name if wants == {FLOAT16} else f"{init.name}__fp16"
        converted, clipped = _fp16_tensor(init, fp16_name)
        if clipped:
            report.clipped_initializers.append(init.name)
        new_initializers.append(converted)
        produced[fp16_name] = FLOAT16
        if fp16_name != init.name:
            new_initializers.append(init)
            produced[init.name] = FLOAT
            renamed_fp16[init.name] = fp16_name

    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast_to(name: str, dtype: int) -> str:
        if produced.get(name) == dtype:
            return name
        if dtype == FLOAT16 and name in renamed_fp16:
            return renamed_fp16[name]
        key = (name, dtype)
        if key not in casts:
            casts[key] = f"{name}__to_{'fp16' if dtype == FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=dtype,
                                              name=f"{casts[key]}__cast"))
            produced[casts[key]] = dtype
        return casts[key]

    for n, node in enumerate(graph.node):
        low = node.name not in kept
        for i, name in enumerate(node.input):
            if (n, i) in wanted:
                node.input[i] = cast_to(name, wanted[(n, i)])
        if low and node.op_type == "Cast" and any(a.name == "to" and a.i == FLOAT for a in node.attribute):
            next(a for a in node.attribute if a.name == "to").i = FLOAT16
        if low and node.op_type in ("Constant", "ConstantOfShape"):
            _constant_to_fp16(node, report)
        new_nodes.append(node)
        for out in node.output:
            if out:
                produced[out] = new_node_out.get(out, types.get(out, 0))

    outputs_fp16 = [v.name for v in graph.output if produced.get(v.name) == FLOAT16]
    for name in outputs_fp16:  # the producer writes name__fp16; a Cast restores the float32 output
        internal = f"{name}__fp16"
        for node in new_nodes:
            node.input[:] = [internal if i == name else i for i in node.input]
            node.output[:] = [internal if o == name else o for o in node.output]
        new_nodes.append(helper.make_node("Cast", [internal], [name], to=FLOAT, name=f"{name}__output_cast"))

    report.casts = len(casts) + len(outputs_fp16)
    report.kept = {name: reason for name, reason in kept.items()}
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(new_initializers)
    del graph.value_info[:]
    converted = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return converted, report


def _constant_to_fp16(node: onnx.NodeProto, report: Fp16Report) -> None:
    """A float32 Constant/ConstantOfShape in the fp16 part of the graph produces float16."""
    for k, attribute in enumerate(node.attribute):
        if attribute.name in ("value_float", "value_floats"):  # scalar/list forms become a tensor
            values = [attribute.f] if attribute.name == "value_float" else list(attribute.floats)
            shape = () if attribute.name == "value_float" else (len(values),)
            tensor = numpy_helper.from_array(np.array(values, np.float32).reshape(shape))
            node.attribute[k].CopyFrom(helper.make_attribute("value", tensor))
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.t.data_type == FLOAT:
            converted, clipped = _fp16_tensor(attribute.t, attribute.t.name)
            if clipped:
                report.clipped_initializers.append(node.name)
            attribute.t.CopyFrom(converted)
    if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
        zero = numpy_helper.from_array(np.zeros(1, np.float16))
        node.attribute.append(helper.make_attribute("value", zero))
