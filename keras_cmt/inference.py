"""`fuse_for_inference`: the same CMT with its normalisations folded into convolutions, for serving.

Training needs the official structure (BatchNorm statistics, LayerNorm affines, residual adds); inference does not.
The serving model is the trained model's own graph, cloned (`keras.models.clone_model`) with each part replaced by
its folded form: a BatchNorm right after a convolution goes into that convolution; one ahead of a convolution goes
into its kernel (plus a per-channel shift of its input where the convolution zero-pads); each `CMTBlock` becomes a
`FusedCMTBlock` (`keras_cmt.fused_layers`); every other layer is copied with its weights. Folding is exact up to
float rounding (the official fixtures still match to 1e-4) and leaves fewer ops, which is what TensorFlow's CPU
executor and TFLite/XNNPACK spend their time on.
"""

import keras
import numpy as np
from keras import tree

from keras_cmt import cmt
from keras_cmt.fused_layers import HEAD_PROJECTIONS, ChannelShift, absorbs_projections
from keras_cmt.layers import CMTBlock, PatchEmbedding, RelativePositionBias, exact_gelu
from keras_cmt.layers.folding import array, batch_norm_affine, conv_weights, shift_and_scale


def is_training_form(model):
    """Whether `model` is a CMT built by `keras_cmt.CMT` with its normalisations still separate: what
    `fuse_for_inference` takes (an already fused model, or any other model, is not)."""
    return cmt.is_training_cmt(model)


def _stage_uses_key_side(feature_shape, heads, sr_ratio, key_side_projections, projection_cost):
    _, height, width, dim = feature_shape
    queries = height * width
    return key_side_projections and absorbs_projections(queries, queries // sr_ratio**2, dim, heads, projection_cost)


def _pads(conv):
    return conv.padding == "same" and tuple(conv.kernel_size) != (1, 1)


class _Folding:
    """What each layer of the training model becomes: the replacement layer and the weights to give it once the
    cloned model has built it."""

    def __init__(self, model, key_side_projections, projection_cost, head_projections="matmul"):
        self.key_side_projections, self.projection_cost = key_side_projections, projection_cost
        self.head_projections = head_projections
        self.layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        producers = {id(layer.output): layer for layer in self.layers}
        self.producer, self.consumers = {}, {}
        for layer in self.layers:
            inputs = tree.flatten(layer.input)
            self.producer[layer.name] = producers.get(id(inputs[0]))
            for tensor in inputs:
                self.consumers.setdefault(id(tensor), []).append(layer)
        self.folded_before = {}  # consumer name -> (a, c, exact) of the BatchNorm folded into its input
        self.folded_after = {}  # convolution name -> (a, c) of the BatchNorm folded into its output
        self.assignments = []

    def _only_consumer(self, layer):
        consumers = self.consumers.get(id(layer.output), [])
        return consumers[0] if len(consumers) == 1 else None

    def plan(self):
        """Decides where each BatchNorm goes before anything is cloned."""
        self.replacements = {}
        for layer in self.layers:
            if not isinstance(layer, keras.layers.BatchNormalization):
                continue
            a, c = batch_norm_affine(layer)
            producer, consumer = self.producer[layer.name], self._only_consumer(layer)
            if (
                isinstance(producer, keras.layers.Conv2D)
                and self._only_consumer(producer) is layer
                and producer.activation is keras.activations.linear
            ):
                self.folded_after[producer.name] = (a, c)
                self.replacements[layer.name] = keras.layers.Identity(name=layer.name)
            elif isinstance(consumer, (keras.layers.Conv2D, PatchEmbedding)):
                conv = consumer.proj if isinstance(consumer, PatchEmbedding) else consumer
                if _pads(conv):  # zero padding sees the shifted input, not the BatchNorm's output: keep the shift
                    shift, a = shift_and_scale(a, c)
                    self.folded_before[consumer.name] = (a, None)
                    replacement = ChannelShift(name=layer.name)
                    self.assignments.append((replacement, {"shift": shift}))
                else:
                    self.folded_before[consumer.name] = (a, c)
                    replacement = keras.layers.Identity(name=layer.name)
                self.replacements[layer.name] = replacement
            else:
                raise ValueError(f"fuse_for_inference: {layer.name} is neither after nor before a convolution.")
        return self

    def _fold_conv(self, name, kernel, bias):
        if name in self.folded_before:  # a BatchNorm y = a x + c ahead of it
            a, c = self.folded_before[name]
            if c is not None:
                bias = bias + np.einsum("hwio,i->o", kernel, c)
            kernel = kernel * a[None, None, :, None]
        if name in self.folded_after:  # a BatchNorm y = a x + c after it
            a, c = self.folded_after[name]
            kernel, bias = kernel * a, bias * a + c
        return kernel, bias

    def clone(self, layer):
        """The `clone_function` of `keras.models.clone_model`."""
        if layer.name in self.replacements:
            return self.replacements[layer.name]
        if isinstance(layer, CMTBlock):  # each part folds itself
            key_side = _stage_uses_key_side(
                layer.input[0].shape, layer.num_heads, layer.sr_ratio, self.key_side_projections, self.projection_cost
            )
            serving, weights = layer.serving_form(key_side, self.head_projections)
            self.assignments.append((serving, weights))
            return serving
        if isinstance(layer, RelativePositionBias):
            heads = layer.bias.shape[0]
            key_side = _stage_uses_key_side(
                layer.input.shape, heads, layer.sr_ratio, self.key_side_projections, self.projection_cost
            )
            replacement = layer.serving_form(key_side)
            if replacement is not None:
                self.assignments.append(replacement)
                return replacement[0]
        if isinstance(layer, keras.layers.Activation) and layer.activation is keras.activations.gelu:
            # A model saved before the stem's GELUs were `exact_gelu`: Activation("gelu") is the same function,
            # but on TensorFlow it is tf.nn.gelu, whose Erfc ONNX lacks.
            return keras.layers.Activation(exact_gelu, name=layer.name, dtype=layer.dtype_policy)
        clone = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = self._fold_conv(layer.name, *conv_weights(layer))
            clone.use_bias = True
            self.assignments.append((clone, {"kernel": kernel, "bias": bias}))
        elif isinstance(layer, PatchEmbedding):
            kernel, bias = self._fold_conv(layer.name, *conv_weights(layer.proj))
            self.assignments.append((clone.proj, {"kernel": kernel, "bias": bias}))
            self.assignments.append((clone.norm, {"gamma": array(layer.norm.gamma), "beta": array(layer.norm.beta)}))
        elif layer.weights:
            self.assignments.append((clone, {v.name: v for v in layer.weights}))
        return clone

    def call(self, layer, *args, **kwargs):
        """The `call_function` of `keras.models.clone_model`: a folded BatchNorm takes its input alone."""
        if layer.name in self.replacements:
            return layer(args[0])
        return layer(*args, **kwargs)

    def assign(self):
        for layer, values in self.assignments:
            for variable in layer.weights:
                value = values[variable.name]
                variable.assign(np.asarray(keras.ops.convert_to_numpy(value), np.float32).reshape(variable.shape))


def fuse_for_inference(model, name=None, key_side_projections=True, projection_cost=1.0, head_projections="matmul"):
    """Returns a new model computing `model`'s inference function with folded normalisations.

    With `key_side_projections` (the default), the stages where it saves multiply-adds (`absorbs_projections`,
    with `projection_cost`, the cost of a projection multiply-add relative to an attention one) move their
    attention's query and output projections onto the keys and values; `head_projections` ("matmul" for
    TensorFlow, "conv" for TFLite: `keras_cmt.fused_layers.HEAD_PROJECTIONS`) says how their per-head products run.

    `model` is any channels_last model built by `keras_cmt.CMT` or a variant builder (any input size, with or
    without top). The result has the same inputs, outputs and layer names ("head", "predictions",
    "stage_1".."stage_4"), is for inference only (no dropout, drop path or BatchNorm updates; its weights are not
    trainable) and saves as a `.keras` file like any model.
    """
    if not is_training_form(model):
        raise ValueError(
            f"fuse_for_inference needs a model built by keras_cmt.CMT (not yet fused); {model.name!r} is not one."
        )
    if cmt.architecture(model)["data_format"] != "channels_last":
        raise ValueError(
            "fuse_for_inference builds the channels_last serving form (TensorFlow, TFLite, ONNX); build the model "
            "with keras.config.set_image_data_format('channels_last') and load the same weights into it."
        )
    if head_projections not in HEAD_PROJECTIONS:
        raise ValueError(f"head_projections={head_projections!r}: expected one of {', '.join(HEAD_PROJECTIONS)}")
    folding = _Folding(model, key_side_projections, projection_cost, head_projections).plan()
    clone = keras.models.clone_model(model, clone_function=folding.clone, call_function=folding.call)
    folding.assign()
    fused = keras.Model(clone.input, clone.output, name=name or f"{model.name}_fused")
    fused.trainable = False
    return fused
