"""CMT's classifier as a keras-hub `ImageClassifier`: the backbone's 1280-channel map, average pooling, dropout
and a dense layer, the official head; with `CMTImageClassifierPreprocessor`, `predict` and `fit` take raw images."""

import os
import weakref

import keras
from keras_hub.models import ImageClassifier

from keras_cmt.hub.cmt_backbone import CMTBackbone
from keras_cmt.hub.cmt_image_classifier_preprocessor import CMTImageClassifierPreprocessor
from keras_cmt.hub import cmt_presets
from keras_cmt.hub.class_property import classproperty


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

    def __init__(
        self,
        backbone,
        num_classes=None,
        preprocessor=None,
        pooling="avg",
        activation=None,
        dropout=0.1,
        head_dtype=None,
        **kwargs,
    ):
        if num_classes is None:
            raise ValueError(self._no_classes_message(backbone, preprocessor))
        super().__init__(
            backbone=backbone,
            num_classes=num_classes,
            preprocessor=preprocessor,
            pooling=pooling,
            activation=activation,
            dropout=dropout,
            head_dtype=head_dtype,
            **kwargs,
        )
        # keras-hub loads the backbone's weights after the head's: the backbone's `load_weights` checks that a
        # preset's head was loaded (or asked for anew) through this link.
        backbone._cmt_task = weakref.ref(self)

    @staticmethod
    def _no_classes_message(backbone, preprocessor):
        """keras-hub builds the classifier from the backbone and preprocessor alone (no num_classes) when a preset's
        task.json is missing or another model's: say which, naming the preset, where it is known."""
        preset = getattr(preprocessor, "_cmt_preset", None)
        weights = getattr(backbone, "_cmt_weights_file", None)
        if preset is None and weights is not None:
            preset = os.path.dirname(weights)
        if isinstance(preset, str) and os.path.isdir(preset):
            return cmt_presets.task_json_error(preset) or f"{preset}: CMTImageClassifier needs num_classes."
        return (
            "CMTImageClassifier needs num_classes (from a preset: its task.json is missing or another model's; "
            "pass num_classes= to put a new head on the backbone)."
        )

    def load_task_weights(self, filepath):
        """keras-hub's `load_task_weights` (a preset's task.weights.h5, the head), failing in one line naming a
        truncated, corrupt or mismatched file."""
        from keras_cmt.weights import loading

        path = os.fspath(filepath)
        loading.check_weights_file(path)
        try:
            super().load_task_weights(filepath)
        except Exception as e:  # noqa: BLE001 - Keras and h5py raise ValueError, OSError, KeyError, ...
            raise ValueError(
                f"{path}: cannot load the classifier head's weights (another model's?): "
                f"{' '.join(str(e).split())[:240]}"
            ) from None
        self._cmt_head_loaded = True

    @classproperty
    def presets(cls):
        """keras_cmt's named presets ({name: {"metadata": ..., "variant": ...}}), built on first use."""
        return cmt_presets.listing()

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `Task.from_preset`, plus keras_cmt's named presets (built from the official release on
        first use) and a one-line error for a local directory that is not a CMT preset or lacks a file."""
        need = cmt_presets.classifier_files(load_weights, new_head="num_classes" in kwargs)
        path = cmt_presets.resolve(preset, need=need)
        with cmt_presets.new_head("num_classes" in kwargs):
            return super().from_preset(path, load_weights=load_weights, **kwargs)
