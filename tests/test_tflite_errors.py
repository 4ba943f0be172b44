"""Bad input to the converter: one clear line naming the cause, and no file (or temp file) left behind."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cmt.tflite import benchmark, convert


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def _cli_error(capsys, argv):
    assert convert.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_unknown_quantization_mode(capsys, tmp_path):
    line = _cli_error(capsys, ["--model", "cmt_ti", "--quantize", "int4", "--output", str(tmp_path / "m.tflite")])
    assert "unknown quantization mode 'int4'" in line and "none, float16, dynamic, int8" in line
    with pytest.raises(ValueError, match="unknown quantization mode"):
        convert.convert("cmt_ti", quantize="fp8")
    assert _listing(tmp_path) == []


def test_int8_without_representative_data(capsys, tmp_path):
    line = _cli_error(capsys, ["--model", "cmt_ti", "--quantize", "int8", "--output", str(tmp_path / "m.tflite")])
    assert "int8 quantization needs representative data" in line
    with pytest.raises(ValueError, match="representative data"):
        convert.convert("cmt_ti", quantize="int8", representative_data=np.zeros((0, 64, 64, 3)))
    assert _listing(tmp_path) == []


def test_other_bad_options(capsys, tmp_path):
    # The same messages as every keras_cmt command's (keras_cmt.model_loading).
    assert "Unknown CMT variant 'cmt_huge'" in _cli_error(capsys, ["--model", "cmt_huge"])
    missing = tmp_path / "missing.keras"
    assert f"model {missing}: no such file." in _cli_error(capsys, ["--model", str(missing)])
    assert "needs full-integer" in _cli_error(
        capsys, ["--model", "cmt_ti", "--quantize", "int8", "--representative_data", "digits", "--io_type", "int8"]
    )
    assert "needs --quantize int8" in _cli_error(capsys, ["--model", "cmt_ti", "--io_type", "uint8"])
    with pytest.raises(ValueError, match="unknown input range"):
        convert.convert(keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten()]), input_range="0-65535")


def test_unwritable_output_path(capsys, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    line = _cli_error(capsys, ["--model", "cmt_ti", "--output", str(a_file / "m.tflite")])
    assert "output folder does not exist" in line and str(a_file) in line
    assert "output path is a directory" in _cli_error(capsys, ["--model", "cmt_ti", "--output", str(tmp_path)])
    assert _listing(tmp_path) == ["file.txt"]


def _unconvertible_model():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: tf.math.cumprod(t, axis=1))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))


def test_model_that_will_not_convert(tmp_path):
    target = tmp_path / "bad.tflite"
    with pytest.raises(convert.ConversionError) as info:
        convert.convert(_unconvertible_model(), target)
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "the model could not be converted to builtin TFLite ops: tf.Cumprod has no builtin "
        "TFLite op (Select TF ops are not allowed)"
    )
    assert _listing(tmp_path) == []


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"previous model")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        convert.write_atomically(str(target), b"new model" * 1000)
    assert _listing(tmp_path) == ["model.tflite"] and target.read_bytes() == b"previous model"


def test_benchmark_of_a_missing_model(capsys, tmp_path):
    assert benchmark.main([str(tmp_path / "none.tflite"), "--json", str(tmp_path / "r.json")]) == 2
    assert "TFLite model not found" in capsys.readouterr().err
    assert _listing(tmp_path) == []


def test_benchmark_runtime_without_xnnpack(capsys, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"not read")
    assert (
        benchmark.main([str(model), "--runtime", "compiled_fp16", "--no_xnnpack", "--json", str(tmp_path / "r.json")])
        == 2
    )
    assert "--no_xnnpack applies to the interpreter runtime only" in capsys.readouterr().err
    assert _listing(tmp_path) == ["m.tflite"]


def test_unknown_representative_dataset(capsys, tmp_path):
    line = _cli_error(
        capsys,
        [
            "--model",
            "cmt_ti",
            "--image_size",
            "64",
            "--classes",
            "10",
            "--quantize",
            "int8",
            "--representative_data",
            "no_such_dataset",
            "--output",
            str(tmp_path / "m.tflite"),
        ],
    )
    assert "no_such_dataset" in line and "unknown dataset" in line
    line = _cli_error(
        capsys,
        [
            "--model",
            "cmt_ti",
            "--image_size",
            "64",
            "--classes",
            "10",
            "--quantize",
            "int8",
            "--representative_data",
            str(tmp_path / "missing.npz"),
        ],
    )
    assert "representative data file not found" in line
    assert _listing(tmp_path) == []
