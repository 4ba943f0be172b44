"""Each LayerNorm of an ONNX file as one `LayerNormalization` node, over the trailing axis.

The model normalises each position over its channels in Keras' moments form (`keras_cmt.layers.layer_norm`):
mean, the mean of the squared difference, `x * g + (beta - mean * g)` with `g = gamma / sqrt(var + eps)`. In the
exported graph that is eight to eleven element-wise kernels, and no runtime fuses it: onnxruntime's
LayerNormFusion matches another form, and in the TensorFlow-written file tf2onnx's transpose optimizer has put the
feature maps in NCHW, so each LayerNorm reduces axis 1, which `LayerNormalization` (normalising trailing axes)
cannot express. This pass replaces each such chain by the standard opset-17 node: in place where the chain reduces
the last axis, and between a Transpose to NHWC and the NHWC readers where it reduces axis 1 of an NCHW map and that
adds no Transpose (the map's readers already wanted it in NHWC). The same function to rounding; chains it cannot
prove are LayerNorms are left alone.
"""

from __future__ import annotations

import collections

import numpy as np

_TO_NHWC = [0, 2, 3, 1]
_TO_NCHW = [0, 3, 1, 2]
MIN_OPSET = 17  # LayerNormalization's first opset


def _attribute(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _shapes(model) -> dict:
    """Name -> tuple of dims (None where unknown) of every tensor ONNX shape inference can type."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model).graph
    shapes = {}
    for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        if v.type.tensor_type.HasField("shape"):
            dims = v.type.tensor_type.shape.dim
            shapes[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return shapes


def _topological(nodes: list) -> list:
    """`nodes` reordered so that each follows its inputs' producers (unchanged for an already ordered list)."""
    produced = {out: node for node in nodes for out in node.output}
    done, order = set(), []
    for root in nodes:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in done:
                continue
            if expanded:
                done.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            for name in reversed(node.input):
                parent = produced.get(name)
                if parent is not None and id(parent) not in done:
                    stack.append((parent, False))
    return order


class _Graph:
    """Producers, readers and constants of an ONNX graph, for matching."""

    def __init__(self, model):
        from onnx import numpy_helper

        graph = model.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.readers = collections.defaultdict(list)
        for node in graph.node:
            for name in dict.fromkeys(node.input):  # a node reading a tensor twice (x * x) is one reader
                self.readers[name].append(node)
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input}
        self.constants = {
            t.name: numpy_helper.to_array(t)
            for t in graph.initializer
            if not t.external_data and t.name not in self.inputs
        }
        for node in graph.node:
            if node.op_type == "Constant" and len(node.output) == 1:
                for a in node.attribute:
                    if a.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(a.t)
        self.shapes = _shapes(model)

    def single(self, name, op_type):
        users = self.readers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in self.outputs:
            return users[0]
        return None

    def other(self, node, name):
        """The input of a two-input node that is not `name` (None unless exactly one input is `name`)."""
        if len(node.input) != 2 or (node.input[0] == name) == (node.input[1] == name):
            return None
        return node.input[1] if node.input[0] == name else node.input[0]

    def axes(self, node):
        axes = _attribute(node, "axes")
        if axes is None and len(node.input) > 1:
            axes = self.constants.get(node.input[1])
            axes = None if axes is None else axes.ravel().tolist()
        return None if axes is None else list(axes)


def _per_channel(value, rank, axis, channels):
    """`value` as a (channels,) vector if it broadcasts along `axis` of a rank-`rank` tensor only, else None."""
    value = np.asarray(value)
    if value.dtype != np.float32 or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(shape[axis]), (channels,)).astype(np.float32)


def _match(g: _Graph, mean):
    """The LayerNorm chain that starts at ReduceMean `mean`, as a dict, or None."""
    x = mean.input[0]
    shape = g.shapes.get(x)
    axes = g.axes(mean)
    if shape is None or axes is None or len(axes) != 1 or _attribute(mean, "keepdims", 1) != 1:
        return None
    rank = len(shape)
    axis = axes[0] % rank if -rank <= axes[0] < rank else None
    if axis is None or shape[axis] is None or (axis != rank - 1 and not (rank == 4 and axis == 1)):
        return None
    channels = shape[axis]
    chain = [mean]
    means = {mean.output[0]}
    mean_shape = g.shapes.get(mean.output[0])
    for user in g.readers[mean.output[0]]:  # tf2onnx may reshape the mean to its own shape
        target = g.constants.get(user.input[1]) if user.op_type == "Reshape" and len(user.input) == 2 else None
        if target is not None and mean_shape is not None and None not in mean_shape[1:]:
            if target.ravel().tolist() in ([-1, *mean_shape[1:]], list(mean_shape)):
                means.add(user.output[0])
                chain.append(user)
    subs = [n for name in means for n in g.readers[name] if n.op_type == "Sub" and list(n.input) == [x, name]]
    negs = [n for n in g.readers[mean.output[0]] if n.op_type == "Neg"]
    if len(subs) != 1 or len(negs) > 1:
        return None
    sub = subs[0]
    chain.append(sub)
    diff = sub.output[0]
    square = [n for n in g.readers[diff] if n.op_type == "Mul" and list(n.input) == [diff, diff]]
    if len(square) != 1:
        return None
    variance = g.single(square[0].output[0], "ReduceMean")
    if variance is None or g.axes(variance) not in ([axis], [axis - rank]) or _attribute(variance, "keepdims", 1) != 1:
        return None
    add_eps = g.single(variance.output[0], "Add")
    eps = None if add_eps is None else g.constants.get(g.other(add_eps, variance.output[0]))
    if eps is None or eps.size != 1 or eps.dtype != np.float32:
        return None
    sqrt = g.single(add_eps.output[0], "Sqrt")
    users = [] if sqrt is None or sqrt.output[0] in g.outputs else g.readers[sqrt.output[0]]
    reciprocal = users[0] if len(users) == 1 else None
    if (
        reciprocal is None
        or not (
            reciprocal.op_type == "Reciprocal"
            or reciprocal.op_type == "Div"  # jax2onnx: 1 / sqrt
            and list(reciprocal.input[1:]) == [sqrt.output[0]]
            and np.array_equal(g.constants.get(reciprocal.input[0], np.float32(0)).ravel(), [1.0])
        )
    ):
        return None
    chain += [square[0], variance, add_eps, sqrt, reciprocal]
    inv = reciprocal.output[0]
    gamma = beta = None
    if len(g.readers[inv]) == 1 and not negs and g.readers[inv][0].op_type == "Mul":
        # (x - mean) * inv, gamma and beta folded away (the serving form)
        y_node = g.readers[inv][0]
        if g.other(y_node, inv) != diff or len(g.readers[diff]) != 2:
            return None
        chain.append(y_node)
    else:
        # x * g + (beta - mean * g), g = inv * gamma
        if len(g.readers[diff]) != 1 or len(negs) != 1:
            return None
        scale = g.readers[inv][0] if len(g.readers[inv]) == 1 else None
        if scale is not None and scale.op_type == "Mul" and g.other(scale, inv) in g.constants:
            gamma = g.constants[g.other(scale, inv)]
            chain.append(scale)
            inv = scale.output[0]
        users = g.readers[inv]
        x_mul = [n for n in users if n.op_type == "Mul" and g.other(n, inv) == x]
        neg_mul = [n for n in users if n.op_type == "Mul" and g.other(n, inv) == negs[0].output[0]]
        if len(users) != 2 or len(x_mul) != 1 or len(neg_mul) != 1 or len(g.readers[negs[0].output[0]]) != 1:
            return None
        chain += [negs[0], x_mul[0], neg_mul[0]]
        shift = neg_mul[0].output[0]
        user = g.readers[shift][0] if len(g.readers[shift]) == 1 else None
        if user is not None and user.op_type == "Add" and g.other(user, shift) in g.constants:
            beta = g.constants[g.other(user, shift)]
            chain.append(user)
            shift = user.output[0]
        y_node = g.single(shift, "Add")
        if y_node is None or g.other(y_node, shift) != x_mul[0].output[0] or len(g.readers[x_mul[0].output[0]]) != 1:
            return None
        chain.append(y_node)
    y = y_node.output[0]
    inner = {out for node in chain for out in node.output} - {y}
    if inner & g.outputs or any(r not in chain for name in inner for r in g.readers[name]):
        return None
    gamma = np.ones(channels, np.float32) if gamma is None else _per_channel(gamma, rank, axis, channels)
    beta = np.zeros(channels, np.float32) if beta is None else _per_channel(beta, rank, axis, channels)
    if gamma is None or beta is None:
        return None
    return {
        "x": x,
        "y": y,
        "axis": axis,
        "rank": rank,
        "eps": float(eps.ravel()[0]),
        "gamma": gamma,
        "beta": beta,
        "chain": chain,
    }


def fuse_layer_norms(model) -> int:
    """Rewrites `model` (an onnx.ModelProto, opset 17 or later) in place; returns how many LayerNorms it fused."""
    from onnx import helper, numpy_helper

    if _opset(model) < MIN_OPSET:
        return 0
    graph = model.graph
    g = _Graph(model)
    taken = set(g.producer) | {t.name for t in graph.initializer} | g.inputs

    def fresh(stem):
        name, i = stem, 0
        while name in taken:
            i += 1
            name = f"{stem}_{i}"
        taken.add(name)
        return name

    removed, added, initializers = set(), [], []
    renamed = {}  # output of a Transpose made redundant -> the NHWC LayerNorm output
    changed = 0
    for mean in list(graph.node):
        if mean.op_type != "ReduceMean" or id(mean) in removed:
            continue
        match = _match(g, mean)
        if match is None or any(id(n) in removed for n in match["chain"]):
            continue
        x, y = match["x"], match["y"]
        stem = fresh(f"keras_cmt_layer_norm_{changed}")
        gamma, beta = fresh(f"{stem}_gamma"), fresh(f"{stem}_beta")
        source, target, before, after = x, y, [], []
        if match["axis"] != match["rank"] - 1:
            to_nhwc = [n for n in g.readers[y] if n.op_type == "Transpose" and _attribute(n, "perm") == _TO_NHWC]
            others = [n for n in g.readers[y] if n not in to_nhwc]
            existing = [
                n
                for n in g.readers[x]
                if n.op_type == "Transpose" and _attribute(n, "perm") == _TO_NHWC and id(n) not in removed
            ]
            if y in g.outputs or any(n.output[0] in g.outputs for n in to_nhwc):
                continue
            if (0 if existing else 1) + (1 if others else 0) > len(to_nhwc):
                continue  # it would add a Transpose
            if existing:
                source = existing[0].output[0]
            else:
                source = fresh(f"{stem}_nhwc_input")
                before.append(helper.make_node("Transpose", [x], [source], perm=_TO_NHWC, name=source))
            target = fresh(f"{stem}_nhwc")
            for t in to_nhwc:
                renamed[t.output[0]] = target
                removed.add(id(t))
            if others:
                after.append(helper.make_node("Transpose", [target], [y], perm=_TO_NCHW, name=fresh(f"{stem}_nchw")))
        layer_norm = helper.make_node(
            "LayerNormalization", [source, gamma, beta], [target], axis=-1, epsilon=match["eps"], name=stem
        )
        added += [*before, layer_norm, *after]
        initializers += [numpy_helper.from_array(match["gamma"], gamma), numpy_helper.from_array(match["beta"], beta)]
        removed.update(id(n) for n in match["chain"])
        changed += 1
    if not changed:
        return 0
    nodes = []
    for node in [n for n in graph.node if id(n) not in removed] + added:
        copy = type(node)()
        copy.CopyFrom(node)
        copy.input[:] = [renamed.get(name, name) for name in node.input]
        nodes.append(copy)
    del graph.node[:]
    graph.node.extend(_topological(nodes))
    graph.initializer.extend(initializers)
    read = {name for node in graph.node for name in node.input} | g.outputs
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)
    return changed
