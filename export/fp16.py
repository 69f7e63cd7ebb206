"""FP32 → FP16 ONNX: FP16 weights and compute, FP32 inputs and outputs (``<stem>.fp16.onnx``).

Every float32 initializer and constant becomes float16, every ``Cast(to=FLOAT)`` becomes ``Cast(to=FLOAT16)``,
and the graph's float inputs and outputs keep their float32 type through one ``Cast`` each at the border, so a
caller feeds and reads the same arrays as for the FP32 graph and a strongly typed TensorRT network computes in
FP16 throughout. Written here rather than taken from a converter library because the ECM head uses a handful of
operators (Conv, LeakyRelu, TopK, ReduceMean, Softmax, Transpose and shape arithmetic) and the conversion must
stay predictable for TensorRT: no op is silently kept in FP32.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger("ecm_edge")

FP16_MAX = float(np.finfo(np.float16).max)


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` whose float inputs and outputs stay float32."""
    model = _copy(model)
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(_to_fp16_tensor(init))
    for node in graph.node:
        _convert_node(node)
    _cast_graph_inputs(graph)
    _cast_graph_outputs(graph)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _to_fp16_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor)
    overflow = int(np.count_nonzero(np.abs(values) > FP16_MAX))
    if overflow:
        log.warning("%d values of %s exceed the float16 range and are clipped to ±%g", overflow, tensor.name,
                    FP16_MAX)
    return numpy_helper.from_array(np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16), tensor.name)


def _convert_node(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(_to_fp16_tensor(attr.t))
        if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.FLOAT16


def _cast_graph_inputs(graph: onnx.GraphProto) -> None:
    """Each float32 input feeds the graph through Cast(to=FLOAT16); the input itself stays float32."""
    casts = []
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{value.name}_fp16"
        _rename_uses(graph, value.name, half)
        casts.append(helper.make_node("Cast", [value.name], [half], to=TensorProto.FLOAT16,
                                      name=f"cast_{value.name}_to_fp16"))
    for cast in reversed(casts):
        graph.node.insert(0, cast)


def _cast_graph_outputs(graph: onnx.GraphProto) -> None:
    """Each float32 output is produced by Cast(to=FLOAT) from the float16 tensor the graph computes."""
    for value in graph.output:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{value.name}_fp16"
        for node in graph.node:
            node.output[:] = [half if o == value.name else o for o in node.output]
        _rename_uses(graph, value.name, half)
        graph.node.append(helper.make_node("Cast", [half], [value.name], to=TensorProto.FLOAT,
                                           name=f"cast_{value.name}_to_fp32"))


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
