"""The benchmark tool: a table and a JSON with latency, memory, size and the XNNPACK partitions."""

import json
import os

import keras

from keras_cmt.tflite import benchmark, convert


def _small_model():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="gelu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="head")(x))


def test_benchmark_table_and_json(tmp_path, capsys):
    model_path = tmp_path / "small.tflite"
    convert.convert(_small_model(), model_path)
    out = tmp_path / "bench.json"
    assert benchmark.main([str(model_path), "--threads", "1", "2", "--runs", "5", "--warmup", "1",
                           "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| model" in table and "small.tflite" in table
    results = json.loads(out.read_text())["results"]
    assert [r["threads"] for r in results] == [1, 2]
    for r in results:
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["p10_ms"]
        assert r["file_mb"] == os.path.getsize(model_path) / 1e6
        assert r["input_shape"] == [1, 32, 32, 3]
        assert r["xnnpack_partitions"] == 1 and r["nodes_on_default_kernels"] == 0
        assert r["peak_rss_mb"] >= r["model_mem_mb"] > 0
    no_xnnpack = benchmark.run(str(model_path), 1, runs=2, warmup=0, use_xnnpack=False)
    assert no_xnnpack["xnnpack_partitions"] == 0 and no_xnnpack["nodes_on_default_kernels"] > 0


def test_interleaved_ab_reports_ratios_to_the_first(tmp_path, capsys):
    small, wider = tmp_path / "small.tflite", tmp_path / "wider.tflite"
    convert.convert(_small_model(), small)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(64, 3, padding="same", activation="gelu")(inputs)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="gelu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    convert.convert(keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="head")(x)), wider)
    out = tmp_path / "ab.json"
    assert benchmark.main([str(small), str(wider), "--interleave", "--runs", "7", "--warmup", "1",
                           "--json", str(out)]) == 0
    assert "ratio to first" in capsys.readouterr().out
    results = json.loads(out.read_text())["results"]
    assert [r["model"] for r in results] == ["small.tflite", "wider.tflite"]
    assert results[0]["ratio_to_first"] == 1.0
    # About 300x the multiply-adds of the small model: slower whatever the load.
    assert results[1]["ratio_to_first"] > 1.0
    assert all(r["interleaved"] and r["runs"] == 7 and r["xnnpack_partitions"] == 1 for r in results)


def test_interleaved_names_a_missing_file(tmp_path, capsys):
    assert benchmark.main([str(tmp_path / "missing.tflite"), "--interleave"]) == 2
    assert "missing.tflite" in capsys.readouterr().err
