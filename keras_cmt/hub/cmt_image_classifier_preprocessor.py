"""keras-hub's image classifier preprocessor with CMT's converter: what `CMTImageClassifier.predict` and `fit`
run on raw images (labels and sample weights pass through)."""

import keras
from keras_hub.models import ImageClassifierPreprocessor
from keras_hub.src.utils.python_utils import classproperty

from keras_cmt.hub.cmt_backbone import CMTBackbone
from keras_cmt.hub.cmt_image_converter import CMTImageConverter
from keras_cmt.hub import cmt_presets


@keras.saving.register_keras_serializable(package="keras_cmt")
class CMTImageClassifierPreprocessor(ImageClassifierPreprocessor):
    backbone_cls = CMTBackbone
    image_converter_cls = CMTImageConverter

    @classproperty
    def presets(cls):
        """keras_cmt's named presets ({name: {"metadata": ..., "variant": ...}}), built on first use."""
        return cmt_presets.listing()

    @classmethod
    def from_preset(cls, preset, **kwargs):
        return super().from_preset(cmt_presets.resolve(preset, need=cmt_presets.PREPROCESSOR_FILES), **kwargs)
