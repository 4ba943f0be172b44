"""The CMT model builders: `CMT` for any configuration and `CMTTiny` / `CMTXS` / `CMTSmall` / `CMTBase`.

Follows the official PyTorch code (huawei-noah/Efficient-AI-Backbones, cmt_pytorch/cmt.py) operation for
operation, with stock Keras layers and the paper's parts (`keras_cmt.layers`), so official checkpoints load with a
fixed key mapping (`keras_cmt.checkpoint_mapping`) and give the official logits to 1e-4 on every backend. The model
follows `keras.config.image_data_format()` (channels_last, or channels_first on JAX and PyTorch) with the same
weights. The constructor arguments mean what they mean in `keras.applications` (ConvNeXt).

Reference:
- [CMT: Convolutional Neural Networks Meet Vision Transformers](https://arxiv.org/abs/2107.06263) (CVPR 2022)
"""

import os

import keras
import numpy as np

from keras_cmt import variants
from keras_cmt.weights import loading, pretrained
from keras_cmt.layers import CMTBlock, PatchEmbedding, RelativePositionBias, exact_gelu, initializers

BASE_DOCSTRING = """Instantiates the {name} architecture.

Reference:
- [CMT: Convolutional Neural Networks Meet Vision Transformers](https://arxiv.org/abs/2107.06263) (CVPR 2022)

The model expects RGB input normalised with `keras_cmt.preprocess_input` (ImageNet mean/std), as the official
training did; it contains no preprocessing layer. Height and width must be multiples of 32 (square or not), or
None for a model that takes any size (its relative-position biases are kept at the default size and resized to
each input's grid at call time). The default input size is {default_size}x{default_size}.

Args:
    include_top: whether to include the classifier (pooling, dropout, dense).
    weights: `None` (random initialisation), `"imagenet"` (the official ImageNet-1k weights, downloaded once and
        cached), or the path to a Keras `.weights.h5` file or an official PyTorch `.pth` checkpoint.
    input_tensor: optional Keras tensor (output of `keras.Input()`) to use as image input.
    input_shape: optional shape tuple, `(height, width, 3)` (or `(3, height, width)` with the channels_first
        image data format); defaults to a {default_size}x{default_size} RGB image. Height and width must be
        multiples of 32, or None.
    pooling: with `include_top=False`, `None` returns the stride-32 feature map (1280 channels), `"avg"` or
        `"max"` a pooled vector.
    classes: number of classes, with `include_top=True` (1000 for `weights="imagenet"`).
    classifier_activation: activation of the top layer (`"softmax"` by default; `None` returns logits).
    drop_path_rate: stochastic-depth rate, increasing linearly over the blocks up to this value (training only).
    name: the model's name.

Returns:
    A Keras `Model` instance.
"""


def _validate_weights_argument(weights):
    if weights is None or weights == "imagenet":
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be None, 'imagenet' or a file path; got {type(weights).__name__}.")
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise ValueError(
            f"weights must be None, 'imagenet' or the path to a .weights.h5 or .pth file; got {path!r} (no such file)."
        )


def check_stage_lists(**lists):
    """Each per-stage argument (depths=..., embed_dims=...) has 4 entries."""
    for arg_name, value in lists.items():
        if len(value) != 4:
            raise ValueError(f"{arg_name} must have 4 entries (one per stage); got {list(value)}.")


def resolve_input_shape(input_shape, input_tensor, default_size, data_format, arg_name="input_shape"):
    """(input_shape, (height, width) the relative-position biases are held at): sides multiples of 32 or None, an
    unknown side taking `default_size` (an int, or a (height, width) pair)."""
    default_h, default_w = (default_size, default_size) if isinstance(default_size, int) else default_size
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None:
        input_shape = (default_h, default_w, 3) if data_format == "channels_last" else (3, default_h, default_w)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"{arg_name} must have 3 entries (height, width and channels); got {input_shape}.")
    height, width = input_shape[:2] if data_format == "channels_last" else input_shape[1:]
    if any(size is not None and (size <= 0 or size % 32) for size in (height, width)):
        raise ValueError(
            f"{arg_name} {input_shape}: height and width must be multiples of 32 (CMT downsamples by 32), or None."
        )
    # An unknown height or width (any size at run time): the biases are learned at the default size and resized to
    # each input's grid when called.
    return input_shape, (height or default_h, width or default_w)


def CMT(
    depths,
    embed_dims,
    num_heads,
    mlp_ratios,
    stem_channels,
    sr_ratios=variants.SR_RATIOS,
    head_channels=variants.HEAD_CHANNELS,
    head_dropout=0.1,
    qkv_bias=True,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    drop_path_rate=0.0,
    name="cmt",
    default_size=224,
    weights_variant=None,
):
    """Builds a CMT of any configuration (see `BASE_DOCSTRING` for the shared arguments).

    Args:
        depths, embed_dims, num_heads, mlp_ratios: per-stage lists of 4.
        stem_channels: width of the three-convolution stem.
        sr_ratios: key/value spatial reduction per stage.
        head_channels: width of the final 1x1 convolution (1280 in the released models).
        head_dropout: dropout before the classifier.
        qkv_bias: whether q/k/v projections have a bias.
        default_size: the square input size used when `input_shape` is None.
        weights_variant: the `keras_cmt.VARIANTS` name whose official weights `weights="imagenet"` loads
            (set by the variant builders; `CMT` alone has no ImageNet weights).
    """
    check_stage_lists(
        depths=depths, embed_dims=embed_dims, num_heads=num_heads, mlp_ratios=mlp_ratios, sr_ratios=sr_ratios
    )
    _validate_weights_argument(weights)
    if weights == "imagenet" and weights_variant is None:
        released = ", ".join(v.builder_name for v in variants.RELEASED.values())
        raise ValueError(f"weights='imagenet' needs a variant with released weights: one of {released}.")
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(
            f"weights='imagenet' with include_top=True needs classes=1000 (got classes={classes}); "
            "use include_top=False or keras_cmt.load_weights(..., exclude_head=True) to fine-tune a new head."
        )
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max'; got {pooling!r}.")

    data_format = keras.config.image_data_format()
    input_shape, (height, width) = resolve_input_shape(input_shape, input_tensor, default_size, data_format)
    if input_tensor is None:
        img_input = keras.layers.Input(shape=input_shape)
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = keras.layers.Input(tensor=input_tensor, shape=input_shape)
    else:
        img_input = input_tensor
    x, _ = cmt_features(
        img_input,
        depths,
        embed_dims,
        num_heads,
        mlp_ratios,
        stem_channels,
        sr_ratios,
        head_channels,
        qkv_bias,
        drop_path_rate,
        (height, width),
        data_format,
    )
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(head_dropout, name="head_dropout")(x)
        x = keras.layers.Dense(classes, kernel_initializer=initializers.linear_kernel(), name="head")(x)
        # The activation runs in float32 so mixed-precision models still return float32 probabilities.
        x = keras.layers.Activation(classifier_activation or "linear", dtype="float32", name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    model = keras.Model(inputs=inputs, outputs=x, name=name)

    if weights == "imagenet":
        pretrained.load_imagenet_weights(model, weights_variant, builder=CMT)
    elif weights is not None:
        loading.load_weights(model, weights)
    return model


def cmt_features(
    img_input,
    depths,
    embed_dims,
    num_heads,
    mlp_ratios,
    stem_channels,
    sr_ratios,
    head_channels,
    qkv_bias,
    drop_path_rate,
    bias_size,
    data_format,
    dtype=None,
):
    """CMT up to the head's swish: the layers every model form shares (the plain model, keras-hub's CMTBackbone).

    `bias_size` is the (height, width) input size the relative-position biases are held at (the input's, or the
    default size for an input of unknown size). Returns the stride-32 `head_channels` feature map and the stage
    outputs {"stage_1": ..., "stage_4": ...} (strides 4, 8, 16, 32). Layer names are the checkpoint mapping's.
    """
    bn_axis = -1 if data_format == "channels_last" else 1

    def batch_norm(name):  # PyTorch's BatchNorm2d: eps 1e-5, momentum 0.1 (Keras' 0.9)
        return keras.layers.BatchNormalization(axis=bn_axis, momentum=0.9, epsilon=1e-5, name=name, dtype=dtype)

    # Stem: three 3x3 convolutions, each followed by GELU then BatchNorm (the official order). PyTorch pads the
    # stride-2 convolution by one pixel on every side; Keras' "same" would pad only bottom/right.
    x = keras.layers.ZeroPadding2D(1, data_format=data_format, name="stem_pad1", dtype=dtype)(img_input)
    for i, stride in enumerate((2, 1, 1), start=1):
        x = keras.layers.Conv2D(
            stem_channels,
            3,
            strides=stride,
            padding="valid" if stride == 2 else "same",
            data_format=data_format,
            kernel_initializer=initializers.conv_kernel(),
            name=f"stem_conv{i}",
            dtype=dtype,
        )(x)
        x = keras.layers.Activation(exact_gelu, name=f"stem_gelu{i}", dtype=dtype)(x)  # erf GELU, as nn.GELU()
        x = batch_norm(f"stem_norm{i}")(x)

    # Four stages: patch aggregation (stride 2), the stage's relative-position bias, then its CMT blocks.
    rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
    block_index = 0
    height, width = bias_size[0] // 4, bias_size[1] // 4
    stages = {}
    for stage in range(4):
        letter = variants.STAGE_LETTERS[stage]
        x = PatchEmbedding(embed_dims[stage], data_format=data_format, name=f"patch_embed_{letter}", dtype=dtype)(x)
        bias = RelativePositionBias(
            num_heads[stage],
            (height, width),
            sr_ratios[stage],
            data_format=data_format,
            name=f"relative_pos_{letter}",
            dtype=dtype,
        )(x)
        for i in range(depths[stage]):
            x = CMTBlock(
                embed_dims[stage],
                num_heads[stage],
                mlp_ratios[stage],
                sr_ratios[stage],
                qkv_bias,
                drop_path_rate=rates[block_index],
                data_format=data_format,
                name=f"blocks_{letter}_{i}",
                dtype=dtype,
            )(x, bias)
            block_index += 1
        x = keras.layers.Identity(name=f"stage_{stage + 1}", dtype=dtype)(x)
        stages[f"stage_{stage + 1}"] = x
        height, width = height // 2, width // 2

    # Head: 1x1 convolution to head_channels, BatchNorm, swish (the classifier's pooling, dropout and dense follow).
    x = keras.layers.Conv2D(
        head_channels,
        1,
        data_format=data_format,
        kernel_initializer=initializers.conv_kernel(),
        name="head_conv",
        dtype=dtype,
    )(x)
    x = batch_norm("head_norm")(x)
    x = keras.layers.Activation("swish", name="head_swish", dtype=dtype)(x)
    return x, stages


def named_layer(model, name, source="model"):
    """`model.get_layer(name)`, or a one-line error saying `source` is not a keras_cmt CMT."""
    try:
        return model.get_layer(name)
    except ValueError:
        raise ValueError(f"{source}: not a keras_cmt CMT model (it has no layer {name!r}).") from None


def stage_blocks(model, stage):
    """The CMT blocks of `stage` (0-3), in order."""
    prefix = f"blocks_{variants.STAGE_LETTERS[stage]}_"
    return [layer for layer in model.layers if layer.name.startswith(prefix)]


def is_training_cmt(model):
    """Whether `model` was built by `CMT` (or a variant builder, or `cmt_features`) and is not yet fused for
    serving: the layers `architecture` reads and `keras_cmt.fuse_for_inference` folds."""
    names = {layer.name for layer in model.layers}
    return {"stem_conv1", "stem_norm1", "head_conv"} <= names and any(
        isinstance(layer, CMTBlock) for layer in stage_blocks(model, 0)
    )


def architecture(model, source="model"):
    """The `CMT` arguments that rebuild `model`'s layers, read from them (the inverse of `CMT`): depths,
    embed_dims, num_heads, mlp_ratios, stem_channels, sr_ratios, head_channels, qkv_bias, drop_path_rate and
    data_format. The layer names this reads are the ones `cmt_features` gives; other modules ask here."""
    letters = variants.STAGE_LETTERS
    blocks = [stage_blocks(model, stage) for stage in range(4)]
    if not all(blocks):
        raise ValueError(f"{source}: not a keras_cmt CMT model (a stage without blocks).")
    biases = [named_layer(model, f"relative_pos_{letter}", source) for letter in letters]
    return dict(
        depths=[len(b) for b in blocks],
        embed_dims=[named_layer(model, f"patch_embed_{letter}", source).embed_dim for letter in letters],
        num_heads=[b.num_heads for b in biases],
        mlp_ratios=[b[0].mlp_ratio for b in blocks],
        stem_channels=named_layer(model, "stem_conv1", source).filters,
        sr_ratios=[b.sr_ratio for b in biases],
        head_channels=named_layer(model, "head_conv", source).filters,
        qkv_bias=blocks[0][0].qkv_bias,
        drop_path_rate=blocks[3][-1].drop_path_rate,
        data_format=blocks[0][0].data_format,
    )


def _variant_builder(variant):
    def builder(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        drop_path_rate=0.0,
        name=None,
    ):
        return CMT(
            **variant.builder_kwargs(),
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            drop_path_rate=drop_path_rate,
            name=name or variant.name,
            weights_variant=variant.name if variant.released else None,
        )

    builder.__name__ = builder.__qualname__ = variant.builder_name
    builder.__doc__ = BASE_DOCSTRING.format(name=variant.builder_name, default_size=variant.default_size)
    return builder


# One builder per row of the variant table (CMTTiny, CMTXS, CMTSmall, CMTBase), by its builder name.
BUILDERS = {v.builder_name: _variant_builder(v) for v in variants.VARIANTS.values()}
globals().update(BUILDERS)
__all__ = ["CMT", "build_model", *BUILDERS]


def build_model(variant, **kwargs):
    """Builds a variant by name ("cmt_ti", or an alias such as "CMTSmall"; `keras_cmt.VARIANTS`), forwarding the
    keyword arguments of the variant builders."""
    return BUILDERS[variants.get_variant(variant).builder_name](**kwargs)
