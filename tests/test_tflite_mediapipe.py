"""The converted files in the real client: MediaPipe's ImageClassifier (the C++ task Android runs).

Two models: an ImageNet-style one (the official micro fixture's backbone with a 1000-class head and the
ImageNet label names) and one trained on scikit-learn's digits inside the test. Real images are written
as PNG files at the model's input size and handed to MediaPipe as uint8 RGB, as an app does; the scores
must match the project's own Keras prediction on the same pixels. The digits model also carries the
int8 accuracy checks (agreement with fp32 and validation-accuracy drop).
"""

import keras
import numpy as np
import pytest
from PIL import Image

import keras_cmt
from conftest import build_micro
from keras_cmt.tflite import compatibility, convert, metadata, representative_data
from keras_cmt.tflite.runner import LiteRTModel

DIGITS_SIZE = 32


def _write_pngs(pixels, folder):
    paths = []
    for i, image in enumerate(pixels):
        path = folder / f"image_{i}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return paths


def _mediapipe_scores(model_path, image_paths, num_classes):
    """(scores [N, classes], category names [N, classes]) from MediaPipe's ImageClassifier."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(model_path)), max_results=-1)
    scores = np.zeros((len(image_paths), num_classes), np.float32)
    names = np.empty((len(image_paths), num_classes), dtype=object)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for i, path in enumerate(image_paths):
            image = mp.Image.create_from_file(path)
            assert image.image_format == mp.ImageFormat.SRGB  # uint8 RGB, as an app hands it over
            categories = classifier.classify(image).classifications[0].categories
            assert len(categories) == num_classes
            for category in categories:
                scores[i, category.index] = category.score
                names[i, category.index] = category.category_name
    return scores, names


def _sample_photos(size):
    """scikit-learn's two bundled photographs, centre-cropped and resized to size x size, uint8."""
    from sklearn.datasets import load_sample_images

    photos = []
    for image in load_sample_images().images:
        h, w = image.shape[:2]
        side = min(h, w)
        crop = image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
        photos.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC)))
        photos.append(np.asarray(Image.fromarray(image[:side, :side]).resize((size, size), Image.BICUBIC)))
    return np.stack(photos)


def test_imagenet_style_model_in_mediapipe(micro_checkpoint, tmp_path):
    model = build_micro(classes=1000, weights=None)
    keras_cmt.load_weights(model, str(micro_checkpoint), exclude_head=True)
    path = tmp_path / "cmt_micro_imagenet.tflite"
    convert.convert(model, path)
    data = path.read_bytes()

    meta = metadata.read_metadata(data)
    image_meta = meta.subgraphMetadata[0].inputTensorMetadata[0]
    assert image_meta.processUnits[0].options.mean == [0.0] and image_meta.processUnits[0].options.std == [1.0]
    labels = metadata.read_associated_file(data, "labels.txt").decode().splitlines()
    assert labels == convert.default_labels(1000) and labels[1] == "goldfish"

    pixels = _sample_photos(64)
    scores, names = _mediapipe_scores(path, _write_pngs(pixels, tmp_path), 1000)
    expected = model.predict(keras_cmt.preprocess_input(pixels.astype(np.float32)), verbose=0)
    assert np.abs(scores - expected).max() <= 1e-4
    np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-6)
    assert np.array_equal(np.argsort(-scores, -1)[:, :5], np.argsort(-expected, -1)[:, :5])
    assert list(names[0]) == labels


@pytest.fixture(scope="module")
def digits_model():
    """A micro CMT trained on digits for a few epochs (about 97% validation accuracy)."""
    keras.utils.set_random_seed(0)
    images, labels = representative_data.digits(DIGITS_SIZE, "train")
    model = build_micro(weights=None, input_shape=(DIGITS_SIZE, DIGITS_SIZE, 3))
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", jit_compile=False)
    model.fit(keras_cmt.preprocess_input(images), labels, batch_size=32, epochs=3, verbose=0)
    return model


@pytest.fixture(scope="module")
def digits_validation():
    return representative_data.digits(DIGITS_SIZE, "validation")


@pytest.fixture(scope="module")
def digits_files(digits_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits_tflite")
    labels = [f"digit {i}" for i in range(10)]
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    fp32 = folder / "digits_fp32.tflite"
    int8 = folder / "digits_int8.tflite"
    assert (
        convert.main(
            ["--model", _save(digits_model, folder), "--labels", str(folder / "labels.txt"), "--output", str(fp32)]
        )
        == 0
    )
    convert.convert(
        digits_model, int8, quantize="int8", representative_data="digits", num_calibration_images=100, labels=labels
    )
    dynamic = folder / "digits_dynamic.tflite"
    convert.convert(digits_model, dynamic, quantize="dynamic", labels=labels)
    return dict(folder=folder, labels=labels, fp32=fp32, int8=int8, dynamic=dynamic)


def _save(model, folder):
    path = folder / "digits.keras"
    model.save(path)
    return str(path)


def test_digits_model_in_mediapipe(digits_model, digits_files, digits_validation, tmp_path):
    pixels = np.round(digits_validation[0][:12]).astype(np.uint8)
    paths = _write_pngs(pixels, tmp_path)
    expected = digits_model.predict(keras_cmt.preprocess_input(pixels.astype(np.float32)), verbose=0)
    scores, names = _mediapipe_scores(digits_files["fp32"], paths, 10)
    assert np.abs(scores - expected).max() <= 1e-4
    assert list(names[0]) == digits_files["labels"]
    assert (scores.argmax(-1) == digits_validation[1][:12]).mean() >= 0.75  # it did learn the digits
    # The int8 file (float I/O) loads in MediaPipe too and picks the same digits as LiteRT runs it.
    int8_scores, _ = _mediapipe_scores(digits_files["int8"], paths, 10)
    litert = LiteRTModel(str(digits_files["int8"])).predict(pixels.astype(np.float32))
    assert np.array_equal(int8_scores.argmax(-1), litert.argmax(-1))
    assert np.abs(int8_scores - litert).max() <= 1e-5


@pytest.mark.parametrize("mode", ["int8", "dynamic"])
def test_int8_accuracy_and_delegation(digits_files, digits_validation, mode):
    images, labels = digits_validation
    fp32 = LiteRTModel(str(digits_files["fp32"])).predict(images).argmax(-1)
    int8 = LiteRTModel(str(digits_files[mode])).predict(images).argmax(-1)
    agreement = (fp32 == int8).mean()
    fp32_accuracy, int8_accuracy = (fp32 == labels).mean(), (int8 == labels).mean()
    assert agreement >= 0.95, agreement
    assert fp32_accuracy >= 0.9, fp32_accuracy
    assert int8_accuracy >= fp32_accuracy - 0.01, (fp32_accuracy, int8_accuracy)
    data = digits_files[mode].read_bytes()
    result = compatibility.check(data)
    assert result["gpu_incompatible"] == []
    assert result["xnnpack_partitions"] == 1 and result["nodes_on_default_kernels"] == 0, result
    assert result["op_types"]["CONV_2D"] > 0
    assert metadata.read_associated_file(data, "labels.txt").decode().splitlines() == digits_files["labels"]


def test_full_integer_int8_leaves_ops_to_default_kernels(digits_model, digits_validation):
    """The strict TFLITE_BUILTINS_INT8 form: every tensor int8 (int8 I/O), and the delegation check sees
    what XNNPACK cannot take (that is why int8_ops='xnnpack' is the default)."""
    data = convert.convert(
        digits_model,
        quantize="int8",
        int8_ops="all",
        io_type="int8",
        representative_data=digits_validation[0][:50],
        with_metadata=False,
    )
    model = LiteRTModel(data)
    assert model.input_dtype == np.int8 and model.output_dtype == np.int8
    delegation = model.delegation()
    assert not delegation.fully_delegated and len(delegation.default_kernel_ops) > 0
    assert "SOFTMAX" in delegation.default_kernel_op_counts() or "GELU" in delegation.default_kernel_op_counts()
    assert delegation.partitions > 1
    fp32 = digits_model.predict(keras_cmt.preprocess_input(digits_validation[0]), verbose=0).argmax(-1)
    assert (model.predict(digits_validation[0]).argmax(-1) == fp32).mean() >= 0.9
