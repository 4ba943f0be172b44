"""keras-hub's image classifier preprocessor with CMT's converter: what `CMTImageClassifier.predict` and `fit`
run on raw images (labels and sample weights pass through)."""

import keras
from keras_hub.models import ImageClassifierPreprocessor

from keras_cmt.hub.cmt_backbone import CMTBackbone
from keras_cmt.hub.cmt_image_converter import CMTImageConverter
from keras_cmt.hub import cmt_presets
from keras_cmt.hub.class_property import classproperty


@keras.saving.register_keras_serializable(package="keras_cmt")
class CMTImageClassifierPreprocessor(ImageClassifierPreprocessor):
    backbone_cls = CMTBackbone
    image_converter_cls = CMTImageConverter

    def load_preset_assets(self, preset):
        """keras-hub's hook after loading a preset's preprocessor: remembered, so that a classifier keras-hub then
        builds without num_classes (a preset whose task.json is missing or another model's) names the preset."""
        self._cmt_preset = preset
        return super().load_preset_assets(preset)

    @classproperty
    def presets(cls):
        """keras_cmt's named presets ({name: {"metadata": ..., "variant": ...}}), built on first use."""
        return cmt_presets.listing()

    @classmethod
    def from_preset(cls, preset, **kwargs):
        return super().from_preset(cmt_presets.resolve(preset, need=cmt_presets.PREPROCESSOR_FILES), **kwargs)
