"""preprocess_input and decode_predictions."""

import numpy as np
import pytest
from keras import ops

import keras_cmt
from conftest import numpy

pytestmark = pytest.mark.all_backends


def test_preprocess_input_uses_imagenet_mean_and_std():
    x = np.array([[[0.485 * 255, 0.456 * 255, 0.406 * 255], [255.0, 0.0, 255.0]]], dtype="float32")
    out = keras_cmt.preprocess_input(x)
    np.testing.assert_allclose(out[0, 0], 0.0, atol=1e-5)
    np.testing.assert_allclose(out[0, 1], [(1 - 0.485) / 0.229, -0.456 / 0.224, (1 - 0.406) / 0.225], rtol=1e-5)


def test_preprocess_input_accepts_tensors_and_uint8():
    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype("uint8")
    np.testing.assert_allclose(
        numpy(keras_cmt.preprocess_input(ops.convert_to_tensor(x))), keras_cmt.preprocess_input(x), rtol=1e-6
    )


def test_preprocess_input_rejects_non_rgb():
    with pytest.raises(ValueError, match="3 channels"):
        keras_cmt.preprocess_input(np.zeros((4, 4, 1)))


def test_decode_predictions_is_offline_and_sorted():
    preds = np.zeros((2, 1000), dtype="float32")
    preds[0, 207], preds[0, 1] = 0.7, 0.2
    preds[1, 999] = 1.0
    decoded = keras_cmt.decode_predictions(preds, top=2)
    assert decoded[0][0][1] == "golden_retriever"
    assert decoded[0][1][1] == "goldfish"
    assert decoded[0][0][2] == pytest.approx(0.7)
    assert decoded[1][0][:2] == ("n15075141", "toilet_tissue")
    assert len(keras_cmt.imagenet_labels()) == 1000


def test_decode_predictions_rejects_wrong_width():
    with pytest.raises(ValueError, match="1000"):
        keras_cmt.decode_predictions(np.zeros((1, 10)))
