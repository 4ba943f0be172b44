"""The one way keras_cmt's commands get a model: a variant name or a `.keras` file, with optional weights, at a size.

`keras-cmt predict|export|export-preset`, `keras_cmt.tflite.convert` and `keras_cmt.hub.export_preset` all call
`load_model`, so they accept the same names and files and refuse the same mistakes with the same one-line errors.
"""

import os

import keras

from keras_cmt import variants

MODEL_HELP = f"variant ({variants.names_text()}, or an alias such as cmt_small) or a saved keras_cmt .keras model"


def is_saved_model(model):
    """Whether `model` is a `.keras` file or a model (as opposed to a variant name)."""
    if isinstance(model, keras.Model):
        return True
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".keras")


def ends_in_softmax(model):
    """Whether the model outputs probabilities: keras_cmt puts the classifier's activation in a float32 layer named
    "predictions" after the Dense "head"; other models are judged by their last layer."""
    layer = model.layers[-1]
    return getattr(getattr(layer, "activation", None), "__name__", "") == "softmax"


def describe(model, weights=None):
    """What a `load_model` argument is, for messages: "cmt_s (imagenet weights)", a file's path, a model's name."""
    if isinstance(model, keras.Model):
        return model.name
    if is_saved_model(model):
        return os.fspath(model)
    return f"{variants.get_variant(model).name} ({weights or 'random'} weights)"


def output_stem(model, size=None):
    """The base of a default output file name: the variant's name or the `.keras` file's, and a non-default size."""
    if isinstance(model, keras.Model):
        return model.name
    base = os.path.splitext(os.path.basename(os.fspath(model)))[0]
    return base + (f"_{size}" if size else "")


def load_model(model, weights=None, size=None, classes=None, logits=False):
    """A keras_cmt model from `model`: a variant name or alias ("cmt_s", "CMTSmall"), a `.keras` file, or a model.

    Args:
        weights: "imagenet", a `.weights.h5` or official `.pth` file, or None / "none" (a variant's random
            initialisation; a file's or model's own weights). A file is loaded onto a `.keras` model too.
        size: a variant's square input size (default: the variant's); a `.keras` model keeps its own.
        classes: a variant's number of classes (default 1000); a `.keras` model keeps its head.
        logits: a variant built without the final softmax; a saved model must already end without one.

    Raises ValueError, in one line naming the model, for an unknown variant, a missing file, or an argument
    that does not apply to it.
    """
    from keras_cmt import cmt
    from keras_cmt.weights.loading import load_model_file, load_weights

    weights = None if weights in (None, "none") else weights
    if is_saved_model(model):
        source = describe(model)
        for given, what in ((size, "an input size"), (classes, "a number of classes")):
            if given:
                raise ValueError(f"model {source}: {what} applies to variants; a saved model keeps its own.")
        if weights == "imagenet":
            raise ValueError(f"model {source}: weights 'imagenet' need a variant; a saved model has its own weights.")
        if not isinstance(model, keras.Model):
            if not os.path.isfile(source):
                raise ValueError(f"model {source}: no such file.")
            model = load_model_file(source)  # Keras' safe mode; a bad file is one ValueError line naming it
        if weights is not None:
            load_weights(model, weights)
        if logits and ends_in_softmax(model):
            raise ValueError(
                f"model {source}: ends in a softmax; logits apply to variants (a saved model keeps its output)."
            )
        return model
    variant = variants.get_variant(model)
    size = int(size or variant.default_size)
    channels_first = keras.config.image_data_format() == "channels_first"
    return cmt.build_model(
        variant.name,
        weights=weights,
        input_shape=(3, size, size) if channels_first else (size, size, 3),
        classes=1000 if classes is None else int(classes),
        classifier_activation=None if logits else "softmax",
    )
