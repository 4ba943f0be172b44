"""Counts multiply-accumulates (MACs) of a Keras model from the TensorFlow graph it runs.

The CMT papers and the README quote GMACs of convolutions and matrix products (the attention products included,
elementwise ops, normalisation and softmax left out). Reading them off the traced TensorFlow graph counts what the
model actually executes, including the products inside custom layers, instead of a formula kept beside the code
that could drift from it. Needs the TensorFlow backend.
"""

import numpy as np

# Op types whose MACs are counted; everything else (BiasAdd, Add, Mul, Softmax, Mean, ...) is not.
COUNTED_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2", "BatchMatMulV3")


def _static_shape(tensor, op):
    shape = tensor.shape
    if shape.rank is None or any(d is None for d in shape.as_list()):
        raise ValueError(
            f"count_macs: {op.type} op {op.name!r} has a dynamic shape {shape}; "
            "give the model a fully static input shape."
        )
    return shape.as_list()


def _op_macs(op):
    if op.type == "Conv2D":
        out = _static_shape(op.outputs[0], op)
        kh, kw, cin, _ = _static_shape(op.inputs[1], op)
        return int(np.prod(out, dtype=np.int64)) * kh * kw * cin
    if op.type == "DepthwiseConv2dNative":
        out = _static_shape(op.outputs[0], op)
        kh, kw, _, _ = _static_shape(op.inputs[1], op)
        return int(np.prod(out, dtype=np.int64)) * kh * kw
    if op.type == "MatMul":
        a = _static_shape(op.inputs[0], op)
        inner = a[0] if op.get_attr("transpose_a") else a[1]
        return int(np.prod(_static_shape(op.outputs[0], op), dtype=np.int64)) * inner
    if op.type in ("BatchMatMulV2", "BatchMatMulV3"):
        a = _static_shape(op.inputs[0], op)
        inner = a[-2] if op.get_attr("adj_x") else a[-1]
        return int(np.prod(_static_shape(op.outputs[0], op), dtype=np.int64)) * inner
    return 0


def _graph_macs(graph, by_type):
    total = 0
    for op in graph.get_operations():
        if op.type in COUNTED_OPS:
            macs = _op_macs(op)
            by_type[op.type] = by_type.get(op.type, 0) + macs
            total += macs
        elif op.type in ("PartitionedCall", "StatefulPartitionedCall"):
            function_name = op.get_attr("f").name
            total += _graph_macs(graph._get_function(function_name).graph, by_type)
    return total


def count_macs(model, input_shape=None, by_type=False):
    """Returns the MACs of one inference (batch 1) of `model` (inference mode), convolutions and matmuls only.

    Args:
        model: a single-input Keras model.
        input_shape: the shape (without batch) to count at, for models whose input has unknown dimensions;
            defaults to the model's static input shape.
        by_type: also return a {op type: MACs} dict.
    """
    import tensorflow as tf

    if len(model.inputs) != 1:
        raise ValueError(f"count_macs expects a single-input model; {model.name} has {len(model.inputs)} inputs.")
    model_shape = tuple(model.inputs[0].shape[1:])
    shape = tuple(input_shape) if input_shape is not None else model_shape
    if any(d is None for d in shape):
        raise ValueError(f"count_macs needs a static input shape; the model's is {shape}: pass input_shape.")
    if len(shape) != len(model_shape) or any(m is not None and m != s for m, s in zip(model_shape, shape)):
        raise ValueError(f"input_shape {shape} does not fit the model's input {model_shape}.")
    dtype = model.inputs[0].dtype or "float32"

    @tf.function(autograph=False)
    def forward(x):
        return model(x, training=False)

    concrete = forward.get_concrete_function(tf.TensorSpec((1,) + shape, dtype))
    types = {}
    total = _graph_macs(concrete.graph, types)
    return (total, types) if by_type else total
