"""CMT in keras-hub's form, checked with keras-hub's own test harness (`keras_hub.src.tests.test_case.TestCase`,
what keras-hub asks of its own models) and against the official fixtures: the backbone and its pyramid, the
classifier on raw images, saving, presets written by `export_preset` and loaded through keras-hub's base classes,
the named presets built from a (local) release, and DeepLabV3 / RetinaNet on a CMT encoder. The model-facing tests
run on every backend (`all_backends`); the file handling (export, presets' errors, the command) on TensorFlow."""

import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest
from keras import ops

import keras_hub  # noqa: E402  (the test extra installs it: missing, the suite fails rather than skips)
from keras_hub.src.tests import test_case as keras_hub_tests  # noqa: E402  (not its TestCase: pytest would collect it)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "pretrained"))

import pretrained_helpers as helpers  # noqa: E402

from conftest import MICRO_CONFIG, numpy  # noqa: E402

import keras_cmt  # noqa: E402
from keras_cmt import hub  # noqa: E402

MICRO_BACKBONE = dict(MICRO_CONFIG, position_bias_size=(64, 64))


def micro_plain(**kwargs):
    """The official micro fixture as a plain keras_cmt model (10 classes, logits)."""
    model = helpers.micro_model(classifier_activation=None, default_size=64, **kwargs)
    keras_cmt.weights.loading.assign_state_dict(model, helpers.micro_state_dict())
    return model


def micro_classifier(crop_pct=0.875):
    converter = hub.CMTImageConverter(image_size=(64, 64), crop_pct=crop_pct)
    return dict(
        backbone=hub.CMTBackbone(**MICRO_BACKBONE),
        num_classes=4,
        preprocessor=hub.CMTImageClassifierPreprocessor(image_converter=converter),
    )


@pytest.mark.all_backends
class CMTBackboneHarnessTest(keras_hub_tests.TestCase):
    test_session = None  # tf.test.TestCase's helper, which pytest would collect and skip as "Not a test"

    def test_backbone_basics(self):
        # keras-hub's vision backbone checks: serialization, outputs, predict (numpy and tf.data), the pyramid
        # (P2..P5 at strides 4..32), mixed_float16 / mixed_bfloat16 / bfloat16 on every sublayer, quantization and,
        # where the backend convolves channels-first on a CPU (JAX, PyTorch), all of it again channels-first.
        self.run_vision_backbone_test(
            cls=hub.CMTBackbone,
            init_kwargs=dict(MICRO_BACKBONE, image_shape=(None, None, 3)),
            input_data=ops.ones((2, 64, 64, 3)),
            expected_output_shape=(2, 2, 2, 64),
            expected_pyramid_output_keys=["P2", "P3", "P4", "P5"],
            expected_pyramid_image_sizes=[(16, 16), (8, 8), (4, 4), (2, 2)],
        )

    def test_saved_model(self):
        self.run_model_saving_test(
            cls=hub.CMTBackbone,
            init_kwargs=dict(MICRO_BACKBONE, image_shape=(64, 64, 3)),
            input_data=ops.ones((2, 64, 64, 3)),
        )


@pytest.mark.all_backends
class CMTImageClassifierHarnessTest(keras_hub_tests.TestCase):
    test_session = None

    def test_classifier_basics(self):
        # Raw RGB images of another size go through the official transform in predict and fit (tf.data, grain
        # and eager). The harness wants those paths equal to 1e-6: TensorFlow's resize runs in all of them on the
        # TensorFlow backend; on JAX and PyTorch the eager path resizes with that backend's kernel (about 5e-4
        # from TensorFlow's), so there the images come at the model's size with crop_pct 1 (no resampling).
        if keras.config.backend() == "tensorflow":
            images, init_kwargs = np.random.default_rng(0).uniform(0, 255, (2, 80, 96, 3)), micro_classifier()
        else:
            images, init_kwargs = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)), micro_classifier(1.0)
        self.run_task_test(
            cls=hub.CMTImageClassifier,
            init_kwargs=init_kwargs,
            train_data=(images.astype("float32"), np.array([0, 3])),
            expected_output_shape=(2, 4),
        )

    def test_saved_model(self):
        init_kwargs = dict(micro_classifier(), preprocessor=None)
        self.run_model_saving_test(
            cls=hub.CMTImageClassifier, init_kwargs=init_kwargs, input_data=ops.ones((2, 64, 64, 3))
        )

    def test_preset(self):
        # A preset exported from the official micro checkpoint gives the official logits.
        preset = os.path.join(self.get_temp_dir(), "micro_preset")
        hub.export_preset(micro_plain(), preset)
        io = np.load(helpers.MICRO_IO)
        self.run_preset_test(
            cls=hub.CMTImageClassifier, preset=preset, input_data=io["input_nhwc"], expected_output_shape=(2, 10)
        )
        task = hub.CMTImageClassifier.from_preset(preset)
        np.testing.assert_allclose(numpy(task(io["input_nhwc"])), io["logits"], atol=1e-4)


@pytest.fixture(scope="module")
def micro_preset(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("presets") / "micro")
    hub.export_preset(micro_plain(), path)
    return path


@pytest.mark.all_backends
def test_base_classes_load_an_exported_preset(micro_preset):
    io = np.load(helpers.MICRO_IO)
    assert sorted(os.listdir(micro_preset)) == [
        "config.json",
        "image_converter.json",
        "metadata.json",
        "model.weights.h5",
        "preprocessor.json",
        "task.json",
        "task.weights.h5",
    ]
    task = keras_hub.models.ImageClassifier.from_preset(micro_preset)
    assert isinstance(task, hub.CMTImageClassifier)
    np.testing.assert_allclose(numpy(task(io["input_nhwc"])), io["logits"], atol=1e-4)

    backbone = keras_hub.models.Backbone.from_preset(micro_preset)
    assert isinstance(backbone, hub.CMTBackbone)
    pooled = numpy(ops.mean(backbone(io["input_nhwc"]), axis=(1, 2)))
    head = micro_plain().get_layer("head")
    np.testing.assert_allclose(pooled @ numpy(head.kernel) + numpy(head.bias), io["logits"], atol=1e-4)
    pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)(io["input_nhwc"])
    assert {k: tuple(v.shape) for k, v in pyramid.items()} == {
        "P2": (2, 16, 16, 16),
        "P3": (2, 8, 8, 32),
        "P4": (2, 4, 4, 64),
        "P5": (2, 2, 2, 128),
    }


@pytest.mark.all_backends
def test_raw_images_predict_like_eval_transform(micro_preset):
    """predict on uint8 images of any size = the plain model on `keras_cmt.eval_transform` of each image (the
    official transform, PIL's resize; TensorFlow's resize is within one grey level of it)."""
    task = keras_hub.models.ImageClassifier.from_preset(micro_preset)
    plain = micro_plain()
    rng = np.random.default_rng(4)
    for shape in ((1, 90, 120, 3), (2, 64, 64, 3), (1, 200, 70, 3)):
        images = rng.integers(0, 256, shape).astype("uint8")
        expected = numpy(plain(np.stack([keras_cmt.eval_transform(image, 64) for image in images])))
        got = task.predict(images, verbose=0)
        np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max())
        assert (got.argmax(-1) == expected.argmax(-1)).all()


@pytest.mark.all_backends
def test_converter_is_the_official_transform_within_one_grey_level():
    rng = np.random.default_rng(5)
    converter = hub.CMTImageConverter(image_size=(64, 64), scale=1.0, offset=0.0)
    for shape in ((90, 120, 3), (64, 64, 3), (301, 77, 3)):
        image = rng.integers(0, 256, shape).astype("uint8")
        expected = keras_cmt.eval_transform(image, 64, normalize=False)
        got = numpy(converter(image))
        assert got.shape == (64, 64, 3)
        assert np.abs(got - expected).max() <= 1.0 + 1e-4, shape
    normalised = hub.CMTImageConverter(image_size=(64, 64))
    image = rng.integers(0, 256, (80, 80, 3)).astype("uint8")
    np.testing.assert_allclose(numpy(normalised(image)), keras_cmt.preprocess_input(numpy(converter(image))), atol=1e-5)


def test_fine_tuning_to_new_classes_keeps_the_backbone(micro_preset):
    task = hub.CMTImageClassifier.from_preset(micro_preset, num_classes=3)
    assert task.output_dense.units == 3
    original = keras_hub.models.Backbone.from_preset(micro_preset)
    assert len(task.backbone.weights) == len(original.weights)
    for a, b in zip(task.backbone.weights, original.weights):
        np.testing.assert_array_equal(numpy(a), numpy(b))
    # (fit on raw images is the harness's task test)


def test_bad_presets_fail_in_one_line_naming_the_path(micro_preset, tmp_path):
    missing = str(tmp_path / "nothing_here")
    with pytest.raises(ValueError, match=f"{missing}: no such preset directory"):
        hub.CMTImageClassifier.from_preset(missing)

    other = tmp_path / "other_model"
    other.mkdir()
    (other / "config.json").write_text(
        json.dumps(
            {
                "module": "keras_hub.src.models.resnet.resnet_backbone",
                "class_name": "ResNetBackbone",
                "config": {},
                "registered_name": "keras_hub>ResNetBackbone",
            }
        )
    )
    with pytest.raises(ValueError, match=f"{other}: a preset of keras_hub>ResNetBackbone, not of keras_cmt"):
        hub.CMTBackbone.from_preset(str(other))

    before = sorted(os.listdir(micro_preset))
    for name in ("task.weights.h5", "model.weights.h5", "task.json"):
        damaged = tmp_path / f"without_{name}"
        shutil.copytree(micro_preset, damaged)
        os.remove(damaged / name)
        with pytest.raises(ValueError, match=f"{damaged}: incomplete CMT preset, missing .*{name}"):
            hub.CMTImageClassifier.from_preset(str(damaged))
        assert sorted(os.listdir(damaged)) == sorted(set(before) - {name})  # nothing written
    damaged = tmp_path / "without_image_converter.json"
    shutil.copytree(micro_preset, damaged)
    for name in ("image_converter.json", "preprocessor.json"):
        os.remove(damaged / name)
    with pytest.raises(ValueError, match="missing preprocessor.json or image_converter.json"):
        hub.CMTImageClassifierPreprocessor.from_preset(str(damaged))


def test_export_refuses_a_folder_it_would_overwrite(micro_preset, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match=f"{folder}: exists and is not empty"):
        hub.export_preset(micro_plain(), str(folder))
    with pytest.raises(ValueError, match=f"{folder}: not a keras-hub preset directory"):
        hub.export_preset(micro_plain(), str(folder), overwrite=True)
    assert os.listdir(folder) == ["keep.txt"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary folder left


def test_export_preset_command_from_a_keras_file(tmp_path, capsys):
    from keras_cmt import cli

    source = str(tmp_path / "micro.keras")
    micro_plain().save(source)
    out = str(tmp_path / "out")
    assert cli.main(["export-preset", "--model", source, out]) == 0
    assert out in capsys.readouterr().out
    io = np.load(helpers.MICRO_IO)
    task = keras_hub.models.ImageClassifier.from_preset(out)
    np.testing.assert_allclose(numpy(task(io["input_nhwc"])), io["logits"], atol=1e-4)
    assert cli.main(["export-preset", "--model", source, out]) == 1  # not over an existing preset...
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli.main(["export-preset", "--model", source, "--overwrite", out]) == 0  # ...unless asked
    assert sorted(os.listdir(tmp_path)) == ["micro.keras", "out"]  # the old preset and temporaries are gone
    task = keras_hub.models.ImageClassifier.from_preset(out)
    np.testing.assert_allclose(numpy(task(io["input_nhwc"])), io["logits"], atol=1e-4)


def test_a_failed_overwrite_keeps_the_old_preset(micro_preset, tmp_path, monkeypatch):
    out = tmp_path / "preset"
    shutil.copytree(micro_preset, out)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    def broken(self, preset_dir, **kwargs):
        open(os.path.join(preset_dir, "config.json"), "w").close()
        raise OSError("disk full")

    monkeypatch.setattr(hub.CMTImageClassifier, "save_to_preset", broken)
    with pytest.raises(OSError, match="disk full"):
        hub.export_preset(micro_plain(), str(out), overwrite=True)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert os.listdir(tmp_path) == ["preset"]


def test_non_square_models_are_refused_with_the_size():
    with pytest.raises(ValueError, match="official crop is square; the model takes 64x96"):
        hub.export_preset(micro_plain(input_shape=(64, 96, 3)), "/nonexistent/never-written")
    with pytest.raises(ValueError, match=r"image_size must be square.*\(64, 96\)"):
        hub.CMTImageConverter(image_size=(64, 96))


def test_named_preset_builds_from_the_release_once(ti_fixture, tmp_path, monkeypatch, capsys):
    """`CMTImageClassifier.from_preset("cmt_tiny_imagenet")` downloads the release (here the official CMT-Ti
    fixture from 127.0.0.1), converts it, builds the preset in the cache and gives the official logits; the next
    load is offline. `keras-cmt export-preset --model cmt_ti --weights PATH` writes the same preset."""
    from keras_cmt import cli
    from keras_cmt.weights import pretrained

    checkpoint, io = ti_fixture
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with helpers.release_server() as server:
        monkeypatch.setenv(pretrained.BASE_URL_ENV, server.base_url)
        with open(checkpoint, "rb") as f:
            helpers.serve_checkpoint(server, "cmt_tiny.pth", f.read())
        task = hub.CMTImageClassifier.from_preset("cmt_tiny_imagenet")
        assert server.requests == ["/release-v1/cmt_tiny.pth"]
    np.testing.assert_allclose(numpy(task(io["input_nhwc"])), io["logits"], atol=1e-4)
    built = tmp_path / "keras_home" / "models" / "keras_cmt" / "presets" / "cmt_tiny_imagenet"
    assert (built / "task.weights.h5").is_file()
    monkeypatch.setenv(pretrained.BASE_URL_ENV, "http://127.0.0.1:9/nowhere")  # offline from now on
    backbone = hub.CMTBackbone.from_preset("cmt_tiny_imagenet")
    assert backbone.image_shape == (160, 160, 3) and "cmt_tiny_imagenet" in hub.CMTImageClassifier.presets

    out = str(tmp_path / "exported")
    assert cli.main(["export-preset", "--model", "cmt_ti", "--weights", checkpoint, out]) == 0
    again = keras_hub.models.ImageClassifier.from_preset(out)
    np.testing.assert_allclose(numpy(again(io["input_nhwc"])), io["logits"], atol=1e-4)


def test_any_input_size_serves_dense_models():
    """DeepLabV3 (segmentation) and RetinaNet (detection) take CMTBackbone as their image encoder at keras-hub's
    default image_shape (None, None, 3) and train a step."""
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=keras_hub.models.DeepLabV3Backbone(
            image_encoder=hub.CMTBackbone(**MICRO_BACKBONE),
            spatial_pyramid_pooling_key="P5",
            upsampling_size=8,
            dilation_rates=[6, 12, 18],
            low_level_feature_key="P2",
            projection_filters=16,
        ),
        num_classes=3,
    )
    segmenter.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(7)
    images = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    loss = segmenter.train_on_batch(images, rng.integers(0, 3, (2, 64, 64, 1)))
    assert np.isfinite(np.asarray(loss)).all()
    # One model, other input sizes: the biases are resized at call time. (Eager calls: a second traced size makes
    # TensorFlow relax the traced shapes to None, which DeepLabV3's UpSampling2D does not take, with any encoder.)
    for size in (64, 96):
        assert tuple(segmenter(rng.uniform(-1, 1, (1, size, size, 3)).astype("float32")).shape) == (1, size, size, 3)

    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=keras_hub.models.RetinaNetBackbone(
            image_encoder=hub.CMTBackbone(**MICRO_BACKBONE), min_level=3, max_level=5, use_p5=False
        ),
        num_classes=4,
        bounding_box_format="yxyx",
        preprocessor=keras_hub.models.RetinaNetObjectDetectorPreprocessor(
            image_converter=keras_hub.layers.RetinaNetImageConverter(
                image_size=(64, 64), scale=1 / 255.0, bounding_box_format="yxyx"
            )
        ),
    )
    images = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    labels = {
        "boxes": np.array([[[4, 4, 30, 30], [10, 20, 50, 60]], [[0, 0, 63, 63], [-1, -1, -1, -1]]], "float32"),
        "labels": np.array([[0, 2], [3, -1]], "int32"),
    }
    history = detector.fit(images, labels, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert detector.predict(images, verbose=0)["boxes"].shape == (2, 100, 4)


def test_import_keras_cmt_registers_the_classes_when_keras_hub_loads(micro_preset):
    """In a fresh process: `import keras_cmt` alone does not import keras_hub; importing keras_hub afterwards
    registers the CMT classes, so keras-hub's base class loads the preset."""
    import subprocess

    script = (
        "import sys, keras_cmt\n"
        "assert 'keras_hub' not in sys.modules\n"
        "import keras_hub\n"
        f"task = keras_hub.models.ImageClassifier.from_preset({micro_preset!r})\n"
        "print(type(task).__name__)\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script.replace(
                "import keras_hub\n",
                "import importlib.util\nimportlib.util.find_spec('keras_hub')  # a probe first\nimport keras_hub\n",
            ),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, KERAS_BACKEND=keras.config.backend()),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "CMTImageClassifier"


@pytest.mark.channels_first
def test_a_channels_first_preset_keeps_its_layout(channels_first_format, tmp_path):
    """Exported in a channels-first session, the preset records its layout: loaded where channels-last is the
    default it still takes NCHW images (official logits) and its converter crops the right axes."""
    path = str(tmp_path / "nchw")
    hub.export_preset(micro_plain(input_shape=(3, 64, 64)), path)
    keras.config.set_image_data_format("channels_last")
    task = keras_hub.models.ImageClassifier.from_preset(path)
    assert task.backbone.data_format == "channels_first"
    io = np.load(helpers.MICRO_IO)
    np.testing.assert_allclose(numpy(task(io["input_nchw"])), io["logits"], atol=1e-4)
    image = np.random.default_rng(8).integers(0, 256, (1, 3, 90, 120)).astype("float32")
    assert tuple(numpy(task.preprocessor(image)).shape) == (1, 3, 64, 64)
