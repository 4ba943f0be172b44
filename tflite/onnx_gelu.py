"""The exact GELU of an ONNX file in the form onnxruntime fuses into one `Gelu` kernel.

The model computes 0.5 x (1 + erf(x / sqrt 2)) (`keras_cmt.layers.gelu`). onnxruntime's GeluFusion matches only
`Div(x, sqrt 2) -> Erf -> Add 1 -> Mul(0.5 x)` with scalar constants. The TensorFlow-written file differs twice:
tf2onnx runs Grappler's constant folding before it converts, which turns every division by a constant into a
multiplication by its reciprocal (`ReduceDivToReciprocalMul`; `model.export(format="onnx")` has no option to skip
it), and its transpose optimizer gives the 1 of a GELU after an NCHW convolution the shape (1, 1, 1, 1). Each GELU
then ran as five element-wise kernels. This pass puts each such chain back in the form the model wrote: the
division, and one-element constants as scalars where the operand's rank already holds the constant's (so no shape
changes). The same function to one rounding, standard ONNX, and a no-op on files already in that form.
"""

from __future__ import annotations

import collections

import numpy as np

_CONSTANTS = {"sqrt_two": np.float32(np.sqrt(2.0)), "one": np.float32(1.0), "half": np.float32(0.5)}
_INV_SQRT_TWO = np.float32(1.0 / np.sqrt(2.0))


def _one_element_constants(graph) -> dict:
    """Name -> (value, rank) of every one-element float32 constant (initializers and Constant nodes)."""
    from onnx import TensorProto, numpy_helper

    tensors = [(t.name, t) for t in graph.initializer]
    for node in graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            tensors += [(node.output[0], a.t) for a in node.attribute if a.name == "value"]
    found = {}
    for name, tensor in tensors:
        if tensor.data_type == TensorProto.FLOAT and not tensor.external_data and int(np.prod(tensor.dims)) == 1:
            found[name] = (numpy_helper.to_array(tensor).reshape(()), len(tensor.dims))
    return found


def _ranks(model) -> dict:
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model).graph
    infos = list(inferred.value_info) + list(inferred.input) + list(inferred.output)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in infos if v.type.tensor_type.HasField("shape")}


def fuse_ready_gelus(model) -> int:
    """Rewrites `model` (an onnx.ModelProto) in place; returns how many GELU chains it changed."""
    from onnx import numpy_helper

    graph = model.graph
    constants = _one_element_constants(graph)
    ranks = _ranks(model)
    producer = {out: node for node in graph.node for out in node.output}
    readers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    kept = {o.name for o in graph.output}
    initializers = {t.name for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    taken = set(producer) | initializers | graph_inputs
    scalars = {}
    orphans = set()
    existing = {}  # a scalar initializer already holding the value is reused
    for name, (value, rank) in constants.items():
        for key, wanted in _CONSTANTS.items():
            if rank == 0 and value == wanted and name in initializers and name not in graph_inputs:
                existing.setdefault(key, name)

    def scalar(key):
        if key in existing:
            return existing[key]
        if key not in scalars:
            name = f"keras_cmt_gelu_{key}"
            while name in taken:
                name += "_"
            scalars[key] = name
        return scalars[key]

    def only_reader(name, op_type):
        users = readers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in kept:
            return users[0]
        return None

    def constant_input(node, values):
        """(index of the constant input, index of the other) when one input is a one-element constant in values."""
        for i in (0, 1):
            found = constants.get(node.input[i])
            if found is not None and any(found[0] == v for v in values):
                return i, 1 - i
        return None

    changed = 0
    for erf in list(graph.node):
        if erf.op_type != "Erf" or erf.domain not in ("", "ai.onnx") or erf.input[0] not in producer:
            continue
        scaling = producer[erf.input[0]]
        if (
            scaling.op_type not in ("Mul", "Div")
            or len(scaling.input) != 2
            or not only_reader(scaling.output[0], "Erf")
        ):
            continue
        if scaling.op_type == "Mul":
            found = constant_input(scaling, (_INV_SQRT_TWO,))
        else:  # already a division: only its divisor's shape may need the scalar
            found = (1, 0) if constants.get(scaling.input[1], (None,))[0] == _CONSTANTS["sqrt_two"] else None
        add = only_reader(erf.output[0], "Add")
        if found is None or add is None:
            continue
        x = scaling.input[found[1]]
        one = constant_input(add, (_CONSTANTS["one"],))
        mul = only_reader(add.output[0], "Mul")
        if one is None or mul is None:
            continue
        other = mul.input[1] if mul.input[0] == add.output[0] else mul.input[0]
        half_mul = producer.get(other)
        half = (
            constant_input(half_mul, (_CONSTANTS["half"],))
            if half_mul is not None and half_mul.op_type == "Mul"
            else None
        )
        if half is None or half_mul.input[half[1]] != x:
            continue
        rank = ranks.get(x)
        if rank is None or any(
            constants[n.input[i]][1] > rank for n, i in ((scaling, found[0]), (add, one[0]), (half_mul, half[0]))
        ):
            continue
        was_division = scaling.op_type == "Div"
        old_inputs = [list(n.input) for n in (scaling, add, half_mul)]
        scaling.op_type = "Div"
        del scaling.input[:]
        scaling.input.extend([x, scalar("sqrt_two")])
        add.input[one[0]] = scalar("one")
        half_mul.input[half[0]] = scalar("half")
        orphans.update(name for inputs in old_inputs for name in inputs if name in constants)
        changed += not was_division or old_inputs != [list(n.input) for n in (scaling, add, half_mul)]
    read = {name for node in graph.node for name in node.input}
    unread = [t for t in graph.initializer if t.name in orphans and t.name not in read and t.name not in kept]
    for tensor in unread:
        graph.initializer.remove(tensor)
    for key, name in scalars.items():
        graph.initializer.append(numpy_helper.from_array(_CONSTANTS[key], name))
    return changed
