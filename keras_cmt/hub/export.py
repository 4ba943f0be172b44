"""Turns a plain keras_cmt model (a variant with any weights, or a saved `.keras` model) into keras-hub objects
and a keras-hub preset directory: `CMTBackbone` with the same layers and weights, `CMTImageClassifier` with the
model's head, and the official evaluation transform as the preprocessor."""

import os
import shutil
import tempfile

import keras
import numpy as np

from keras_cmt import cmt, model_loading
from keras_cmt.hub.cmt_backbone import CMTBackbone
from keras_cmt.hub.cmt_image_classifier import CMTImageClassifier
from keras_cmt.hub.cmt_image_classifier_preprocessor import CMTImageClassifierPreprocessor
from keras_cmt.hub.cmt_image_converter import CMTImageConverter


def _spatial(image_shape, data_format):
    """(height, width) of an image shape without the batch axis."""
    return tuple(image_shape[:2]) if data_format == "channels_last" else tuple(image_shape[1:])


def config_from_model(model, source="model"):
    """The `CMTBackbone` arguments that rebuild a plain CMT model's layers (`keras_cmt.cmt.architecture`), at the
    model's input size."""
    config = cmt.architecture(model, source)
    bias = model.get_layer("relative_pos_a")
    return dict(
        config,
        position_bias_size=[4 * s for s in bias.query_size],
        image_shape=tuple(model.input_shape[1:]),
    )


def backbone_from_model(model, source="model", **overrides):
    """A `CMTBackbone` holding a plain CMT model's weights (shared by layer name)."""
    backbone = CMTBackbone(**{**config_from_model(model, source), **overrides})
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(cmt.named_layer(model, layer.name, source).get_weights())
    return backbone


def task_from_model(model, source="model"):
    """A `CMTImageClassifier` (with the official evaluation transform at the model's input size) for a plain CMT
    model with its classifier, or a `CMTBackbone` and `CMTImageConverter` pair for one without."""
    backbone = backbone_from_model(model, source)
    size = _spatial(backbone.image_shape, backbone.data_format)
    if None in size:
        raise ValueError(f"{source}: the preprocessor needs a fixed input size; the model takes any size.")
    if size[0] != size[1]:
        raise ValueError(f"{source}: the preprocessor's official crop is square; the model takes {size[0]}x{size[1]}.")
    converter = CMTImageConverter(image_size=size, data_format=backbone.data_format)
    names = {layer.name for layer in model.layers}
    if "head" not in names:
        return backbone, converter
    head = model.get_layer("head")
    dropout = model.get_layer("head_dropout").rate if "head_dropout" in names else 0.0
    task = CMTImageClassifier(
        backbone=backbone,
        num_classes=head.units,
        preprocessor=CMTImageClassifierPreprocessor(image_converter=converter),
        dropout=dropout,
    )
    task.output_dense.set_weights(head.get_weights())
    return task, converter


def _check_same_outputs(model, exported, source):
    """The exported model's logits (or features) on a random input equal the plain model's."""
    names = {layer.name for layer in model.layers}
    reference = keras.Model(model.input, model.get_layer("head" if "head" in names else "head_swish").output)
    shape = (1,) + tuple(model.input_shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    expected = keras.ops.convert_to_numpy(reference(x))
    got = keras.ops.convert_to_numpy(exported(x))
    scale = max(1.0, float(np.abs(expected).max()))
    if got.shape != expected.shape or np.abs(got - expected).max() > 1e-4 * scale:
        raise RuntimeError(f"{source}: the keras-hub model's outputs differ from the plain model's; not exported.")


def _swap_into_place(tmp, out_dir, overwrite):
    """Renames the finished `tmp` to `out_dir`. An empty or missing `out_dir` is replaced by one rename (which
    fails rather than replace a folder that filled up meanwhile); with `overwrite`, an existing preset is moved
    aside first and deleted only once the new one is in place."""
    if not (os.path.isdir(out_dir) and os.listdir(out_dir)):
        os.rename(tmp, out_dir)
        return
    if not overwrite or not os.path.isfile(os.path.join(out_dir, "config.json")):
        raise ValueError(f"{out_dir}: filled up during the export; left as it is.")
    aside = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old.", dir=os.path.dirname(out_dir))
    os.rename(out_dir, os.path.join(aside, "preset"))
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(os.path.join(aside, "preset"), out_dir)
        os.rmdir(aside)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def export_preset(model, out_dir, weights=None, size=None, overwrite=False):
    """Writes a keras-hub preset directory for a CMT model and returns its path.

    Args:
        model: a variant name ("cmt_s", "CMTSmall", ...), a `.keras` file of a keras_cmt model, or the model.
        out_dir: the preset directory to create; it appears whole or not at all.
        weights: for a variant, "imagenet", a `.weights.h5` / official `.pth` file, or None (random); for a
            `.keras` file, optionally weights to load onto it.
        size: a variant's input size (default the variant's); the preprocessor crops to it.
        overwrite: replace `out_dir` if it holds a keras-hub preset (never any other folder).

    The directory holds config.json, model.weights.h5, metadata.json, image_converter.json, preprocessor.json,
    and, for a model with its classifier, task.json and task.weights.h5: after `import keras_cmt`,
    `keras_hub.models.ImageClassifier.from_preset(out_dir)` gives the plain model's logits.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"{out_dir}: exists and is a file.")
        if os.listdir(out_dir):
            if not overwrite:
                raise ValueError(f"{out_dir}: exists and is not empty (overwrite replaces a preset directory).")
            if not os.path.isfile(os.path.join(out_dir, "config.json")):
                raise ValueError(f"{out_dir}: not a keras-hub preset directory; refusing to replace it.")
    plain = model_loading.load_model(model, weights, size, logits=not model_loading.is_saved_model(model))
    source = model_loading.describe(model, weights)
    exported, converter = task_from_model(plain, source)
    _check_same_outputs(plain, exported, source)

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would keep the preset from other users
        exported.save_to_preset(tmp)
        if isinstance(exported, CMTBackbone):
            converter.save_to_preset(tmp)
        _swap_into_place(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
