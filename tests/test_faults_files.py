"""Odd images and broken or crafted model files through every entry point: each is one line naming the file.

- A 1x8000 PNG (about 100 bytes) used to take 2 GB (PIL path) and more than 20 GB (tf path) of memory: its shorter
  side scaled to 256 is 256x2048000 pixels. The transform now computes only the crop (measured in a subprocess).
- `.keras` files whose config names os.system, garbage and truncated ones, through `keras-cmt predict`,
  `keras-cmt export-preset` and `keras_cmt.tflite.convert`: one line naming the file, never "not found".
- Truncated or garbage `.weights.h5` files through `keras_cmt.load_weights`.
- Damaged keras-hub presets through keras-hub's generic classes and ours: a task.json of another model, a truncated
  model.weights.h5 or task.weights.h5, a missing task.weights.h5 (which used to load with a random head).

TensorFlow run only (unmarked): file handling, not the model's numerics.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "pretrained"))

import pretrained_helpers as helpers  # noqa: E402

import keras_cmt  # noqa: E402
from keras_cmt import cli, image_transforms  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.path.join(ROOT, "tests", "fixtures", "pretrained", "eval_transform_input.png")


def _one_line(text, name):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert str(name) in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------- odd images

# Peak resident memory of eval_transform on a 1x8000 PNG, over what the imports took, on both paths.
_MEASURE = """
import resource, sys
import numpy as np
import tensorflow as tf
from keras_cmt import image_transforms
image = image_transforms.load_image(sys.argv[1])
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base = peak()
crop = image_transforms.eval_transform(image, 224)
pil = peak() - base
tf_crop = image_transforms.eval_transform(tf.constant(image), 224).numpy()
both = peak() - base
assert crop.shape == tf_crop.shape == (224, 224, 3)
print(pil, both, float(np.abs(crop - tf_crop).max()))
"""


def test_a_1x8000_png_costs_no_more_memory_than_its_crop(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((1, 8000, 3), 128, np.uint8)).save(path)
    assert path.stat().st_size < 200
    env = dict(
        os.environ,
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
    )
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-2000:]
    pil, both, diff = result.stdout.split()[-3:]
    # The full resize held 1.5 GB (uint8) and 6 GB (float32) on the two paths; the crop is 150 KB.
    assert int(pil) < 256 << 20 and int(both) < 256 << 20, result.stdout
    assert float(diff) <= 1.0 / min(image_transforms.IMAGENET_STD) / 255.0 + 1e-5  # within a grey level


@pytest.mark.parametrize("shape", [(1, 1200), (1500, 2), (3, 900), (700, 5)])
def test_the_crop_alone_is_pils_resize_and_crop_for_extreme_shapes(shape):
    # Shapes whose full resize the PIL path no longer materialises: the same bytes as Pillow's two passes.
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape + (3,), dtype=np.uint8)
    size, short = 64, image_transforms.short_side(64)
    new_h, new_w = image_transforms._resized_shape(shape[0], shape[1], min(shape), short)
    full = Image.fromarray(image).resize((new_w, shape[0]), Image.BICUBIC).resize((new_w, new_h), Image.BICUBIC)
    top, left = image_transforms._crop_offset(new_h - size), image_transforms._crop_offset(new_w - size)
    expected = np.asarray(full)[top : top + size, left : left + size].astype(np.float32)
    np.testing.assert_array_equal(image_transforms.eval_transform(image, size, normalize=False), expected)


def test_predict_classifies_a_1x8000_png(saved_micro, tmp_path, capsys):
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((1, 8000, 3), 200, np.uint8)).save(path)
    assert cli.main(["predict", str(path), "--model", saved_micro, "--top", "1"]) == 0
    assert str(path) in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ .keras files


@pytest.fixture(scope="module")
def saved_micro(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("saved") / "micro.keras")
    helpers.micro_model(classifier_activation=None).save(path)
    return path


def _rewrite(source, target, config=None, members=None):
    """A copy of the .keras zip `source` with config.json replaced by `config` and other members by `members`."""
    members = dict(members or {})
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "config.json" and config is not None:
                data = json.dumps(config).encode()
            zout.writestr(name, members.get(name, data))
    return str(target)


def _config(source):
    with zipfile.ZipFile(source) as archive:
        return json.loads(archive.read("config.json"))


@pytest.fixture(scope="module")
def bad_keras_files(saved_micro, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    files = {}
    config = _config(saved_micro)
    layer = config["config"]["layers"][1]
    layer.update(module="os", class_name="system", registered_name=None)
    files["os.system"] = _rewrite(saved_micro, folder / "layer_system.keras", config)
    config = _config(saved_micro)
    config.update(module="os", class_name="system", registered_name=None)
    files["os.system "] = _rewrite(saved_micro, folder / "model_system.keras", config)
    garbage = folder / "garbage.keras"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    files["not a zip archive"] = str(garbage)
    truncated = folder / "truncated.keras"
    data = open(saved_micro, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    files["not a zip archive "] = str(truncated)
    files["no config.json"] = str(folder / "no_config.keras")
    with zipfile.ZipFile(files["no config.json"], "w") as archive:
        archive.writestr("metadata.json", "{}")
    files["weights"] = _rewrite(
        saved_micro, folder / "bad_weights.keras", members={"model.weights.h5": b"\x89HDF\r\n\x1a\n" + b"\0" * 64}
    )
    return files


def _expect_one_line(capsys, path, expected):
    captured = capsys.readouterr()
    line = _one_line(captured.err, path)
    assert "not found" not in line.lower() and "Traceback" not in captured.err, line
    if expected.strip() != "weights":
        assert expected.strip() in line, line
    return line


def test_bad_keras_files_through_predict(bad_keras_files, capsys):
    for expected, path in bad_keras_files.items():
        assert cli.main(["predict", IMAGE, "--model", path]) == 1, expected
        _expect_one_line(capsys, path, expected)


def test_bad_keras_files_through_export_preset(bad_keras_files, tmp_path, capsys):
    for expected, path in bad_keras_files.items():
        out = tmp_path / "out"
        assert cli.main(["export-preset", str(out), "--model", path]) == 1, expected
        _expect_one_line(capsys, path, expected)
        assert not out.exists()


def test_bad_keras_files_through_tflite_convert(bad_keras_files, tmp_path, capsys):
    from keras_cmt.tflite import convert

    for expected, path in bad_keras_files.items():
        output = tmp_path / "model.tflite"
        assert convert.main(["--model", path, "--output", str(output)]) == 2, expected
        _expect_one_line(capsys, path, expected)
        assert not output.exists()


def test_a_lambda_layer_is_refused_in_safe_mode(tmp_path):
    import keras

    from keras_cmt.weights.loading import load_model_file

    inputs = keras.Input((4,))
    path = str(tmp_path / "lambda.keras")
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(path)
    with pytest.raises(ValueError) as excinfo:
        load_model_file(path)
    line = _one_line(str(excinfo.value), path)
    assert "safe mode" in line and "safe_mode=False" not in line


def test_broken_weights_files_name_their_path(tmp_path):
    model = helpers.micro_model()
    good = str(tmp_path / "micro.weights.h5")
    model.save_weights(good)
    data = open(good, "rb").read()
    truncated, garbage = tmp_path / "truncated.weights.h5", tmp_path / "garbage.weights.h5"
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(np.random.default_rng(1).bytes(2048))
    for path in (truncated, garbage):
        with pytest.raises(ValueError) as excinfo:
            keras_cmt.load_weights(model, str(path))
        _one_line(str(excinfo.value), path)


# ------------------------------------------------------------------------------------------------------ presets


@pytest.fixture(scope="module")
def micro_preset(tmp_path_factory):
    from keras_cmt import hub

    model = helpers.micro_model(classifier_activation=None, default_size=64)
    keras_cmt.weights.loading.assign_state_dict(model, helpers.micro_state_dict())
    path = str(tmp_path_factory.mktemp("presets") / "micro")
    hub.export_preset(model, path)
    return path


def _damaged(micro_preset, tmp_path, name, edit):
    path = tmp_path / name
    shutil.copytree(micro_preset, path)
    edit(path)
    return str(path)


def _truncate(name):
    def edit(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return edit


def _loaders():
    import keras_hub

    from keras_cmt import hub

    return {
        "ImageClassifier": keras_hub.models.ImageClassifier.from_preset,
        "CMTImageClassifier": hub.CMTImageClassifier.from_preset,
        "Backbone": keras_hub.models.Backbone.from_preset,
        "CMTBackbone": hub.CMTBackbone.from_preset,
    }


def _fails(load, path, names):
    with pytest.raises(ValueError) as excinfo:
        load(path)
    line = _one_line(str(excinfo.value), path)
    assert any(name in line for name in names), line
    return line


def test_a_task_json_of_another_model(micro_preset, tmp_path):
    def edit(folder):
        task = json.loads((folder / "task.json").read_text())
        task.update(
            module="keras_hub.src.models.resnet.resnet_image_classifier",
            class_name="ResNetImageClassifier",
            registered_name="keras_hub>ResNetImageClassifier",
        )
        (folder / "task.json").write_text(json.dumps(task))

    path = _damaged(micro_preset, tmp_path, "other_task", edit)
    for name in ("ImageClassifier", "CMTImageClassifier"):
        line = _fails(_loaders()[name], path, ["task.json"])
        assert "ResNetImageClassifier" in line, line


def test_truncated_weights_in_a_preset(micro_preset, tmp_path):
    path = _damaged(micro_preset, tmp_path, "truncated_model", _truncate("model.weights.h5"))
    for load in _loaders().values():
        _fails(load, path, [os.path.join(path, "model.weights.h5")])
    path = _damaged(micro_preset, tmp_path, "truncated_task", _truncate("task.weights.h5"))
    for name in ("ImageClassifier", "CMTImageClassifier"):
        _fails(_loaders()[name], path, [os.path.join(path, "task.weights.h5")])


def test_a_missing_head_is_refused_not_random(micro_preset, tmp_path):
    import keras_hub

    from keras_cmt import hub

    path = _damaged(micro_preset, tmp_path, "no_head", lambda folder: os.remove(folder / "task.weights.h5"))
    for name in ("ImageClassifier", "CMTImageClassifier"):
        _fails(_loaders()[name], path, ["task.weights.h5"])
    # A new head by request still loads, through either class, with the preset's backbone.
    assert keras_hub.models.ImageClassifier.from_preset(path, num_classes=3).num_classes == 3
    assert hub.CMTImageClassifier.from_preset(path, num_classes=10).num_classes == 10
    path = _damaged(micro_preset, tmp_path, "no_task_json", lambda folder: os.remove(folder / "task.json"))
    _fails(keras_hub.models.ImageClassifier.from_preset, path, ["task.json"])


def test_missing_backbone_weights_are_refused_naming_the_file(micro_preset, tmp_path):
    """A preset without model.weights.h5 never builds a randomly initialised model, through any of the classes.
    keras-hub's generic classes read a local preset without single-file weights as a sharded one, so their line
    names the shard index (model.weights.json); ours name the file that is missing."""
    path = _damaged(micro_preset, tmp_path, "no_weights", lambda folder: os.remove(folder / "model.weights.h5"))
    for name, load in _loaders().items():
        with pytest.raises((ValueError, FileNotFoundError)) as excinfo:
            load(path)
        line = _one_line(str(excinfo.value), path)
        expected = "model.weights.h5" if name.startswith("CMT") else "model.weights.json"
        assert expected in line, (name, line)
