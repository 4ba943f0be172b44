"""CMT's classifier as a keras-hub `ImageClassifier`: the backbone's 1280-channel map, average pooling, dropout
and a dense layer, the official head; with `CMTImageClassifierPreprocessor`, `predict` and `fit` take raw images."""

import keras
from keras_hub.models import ImageClassifier
from keras_hub.src.utils.python_utils import classproperty

from keras_cmt.hub.cmt_backbone import CMTBackbone
from keras_cmt.hub.cmt_image_classifier_preprocessor import CMTImageClassifierPreprocessor
from keras_cmt.hub import cmt_presets


@keras.saving.register_keras_serializable(package="keras_cmt")
class CMTImageClassifier(ImageClassifier):
    """`keras_hub.models.ImageClassifier` for `CMTBackbone`; the official head's dropout (0.1) by default.

    Args:
        backbone: a `CMTBackbone`.
        num_classes: classes of the dense layer.
        preprocessor: a `CMTImageClassifierPreprocessor`, or None for already preprocessed input.
        pooling: "avg" (the official head) or "max".
        activation: of the dense layer (None: logits, keras-hub's default).
        dropout: before the dense layer.
        head_dtype: dtype policy of the head (default the backbone's).
    """

    backbone_cls = CMTBackbone
    preprocessor_cls = CMTImageClassifierPreprocessor

    def __init__(self, backbone, num_classes, preprocessor=None, pooling="avg", activation=None, dropout=0.1,
                 head_dtype=None, **kwargs):
        super().__init__(backbone=backbone, num_classes=num_classes, preprocessor=preprocessor, pooling=pooling,
                         activation=activation, dropout=dropout, head_dtype=head_dtype, **kwargs)

    @classproperty
    def presets(cls):
        """keras_cmt's named presets ({name: {"metadata": ..., "variant": ...}}), built on first use."""
        return cmt_presets.listing()

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `Task.from_preset`, plus keras_cmt's named presets (built from the official release on
        first use) and a one-line error for a local directory that is not a CMT preset or lacks a file."""
        need = cmt_presets.classifier_files(load_weights, new_head="num_classes" in kwargs)
        return super().from_preset(cmt_presets.resolve(preset, need=need), load_weights=load_weights, **kwargs)
