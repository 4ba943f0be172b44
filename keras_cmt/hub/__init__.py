"""CMT in keras-hub's form: `CMTBackbone`, `CMTImageConverter`, `CMTImageClassifierPreprocessor`,
`CMTImageClassifier`, named presets and `export_preset`. Needs keras-hub (`pip install "keras-cmt[hub]"`).

`import keras_cmt` registers these classes as soon as keras_hub is imported (`keras_cmt.hub_registration`), so
`keras_hub.models.ImageClassifier.from_preset(directory)` loads a CMT preset.
"""

import importlib.util

if importlib.util.find_spec("keras_hub") is None:
    raise ImportError("keras_cmt.hub needs keras-hub: pip install 'keras-cmt[hub]'.")

from keras_cmt.hub.cmt_backbone import CMTBackbone, backbone_config
from keras_cmt.hub.cmt_image_classifier import CMTImageClassifier
from keras_cmt.hub.cmt_image_classifier_preprocessor import CMTImageClassifierPreprocessor
from keras_cmt.hub.cmt_image_converter import CMTImageConverter
from keras_cmt.hub import cmt_presets
from keras_cmt.hub.cmt_presets import PRESETS
from keras_cmt.hub.export import backbone_from_model, export_preset, task_from_model

cmt_presets.set_exporter(export_preset)

__all__ = [
    "CMTBackbone",
    "CMTImageClassifier",
    "CMTImageClassifierPreprocessor",
    "CMTImageConverter",
    "PRESETS",
    "backbone_config",
    "backbone_from_model",
    "export_preset",
    "task_from_model",
]
