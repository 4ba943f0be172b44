"""weights="imagenet": download through a local release server, conversion, cache, offline use, pinning, the
model_ema/model choice, other input sizes and every error path (each leaving no file in the cache)."""

import hashlib
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "pretrained"))

import pretrained_helpers as helpers  # noqa: E402

from conftest import numpy  # noqa: E402

import keras_cmt  # noqa: E402
from keras_cmt import checkpoint_mapping  # noqa: E402
from keras_cmt.weights import position_bias_resize, pretrained  # noqa: E402

VARIANT = helpers.MICRO_VARIANT


@pytest.fixture(scope="module")
def official():
    io = np.load(helpers.MICRO_IO)
    ema = helpers.micro_state_dict()  # the official weights: what must come out with prefer="auto"
    return {"ema": ema, "model": helpers.perturbed(ema), "x": io["input_nhwc"], "logits": io["logits"]}


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    for name in (pretrained.PREFER_ENV, pretrained.SHA256_ENV_PREFIX + "CMT_MICRO"):
        monkeypatch.delenv(name, raising=False)
    with helpers.release_server() as srv:
        monkeypatch.setenv(pretrained.BASE_URL_ENV, srv.base_url)
        yield srv


def cache_dir(tmp_path):
    return tmp_path / "keras_home" / "models" / "keras_cmt"


def cache_files(tmp_path):
    folder = cache_dir(tmp_path)
    return sorted(os.listdir(folder)) if folder.exists() else []


def logits(model, x):
    return numpy(model(x, training=False))


def assert_holds(model, state_dict):
    """Every variable of `model` equals the state dict's tensor in Keras layout (cheaper than running it)."""
    for key, variable, transform in checkpoint_mapping.official_mapping(model):
        np.testing.assert_array_equal(variable.numpy(), transform(state_dict[key]), err_msg=key)


@pytest.mark.all_backends
def test_download_converts_caches_and_then_works_offline(server, official, tmp_path, monkeypatch):
    body = helpers.serve_checkpoint(
        server, "cmt_micro.pth", helpers.release_checkpoint(official["model"], official["ema"])
    )
    model = helpers.micro_model(classifier_activation=None)
    pretrained.load_imagenet_weights(model, VARIANT, keras_cmt.CMT)

    # auto = model_ema, as the official evaluation: the official logits come out.
    np.testing.assert_allclose(logits(model, official["x"]), official["logits"], atol=1e-4)
    assert server.requests == ["/release-v1/cmt_micro.pth"]
    # Only the converted weights and their record are left: no .pth, no temporary file.
    assert cache_files(tmp_path) == ["cmt_micro_imagenet.weights.h5", "cmt_micro_imagenet.weights.h5.json"]
    record = json.loads((cache_dir(tmp_path) / "cmt_micro_imagenet.weights.h5.json").read_text())
    assert record["source_sha256"] == hashlib.sha256(body).hexdigest()
    assert record["url"] == server.base_url + "/cmt_micro.pth"
    assert record["weights"] == "model_ema" and record["epoch"] == 299
    assert record["weights_sha256"] == pretrained.sha256_of(cache_dir(tmp_path) / "cmt_micro_imagenet.weights.h5")

    # Offline: the release host is gone, the cache serves.
    monkeypatch.setenv(pretrained.BASE_URL_ENV, "http://127.0.0.1:9/nowhere")
    again = helpers.micro_model(classifier_activation=None)
    pretrained.load_imagenet_weights(again, VARIANT, keras_cmt.CMT)
    np.testing.assert_allclose(logits(again, official["x"]), official["logits"], atol=1e-4)
    assert len(server.requests) == 1


def test_prefer_model_takes_the_raw_weights_and_has_its_own_cache(server, official, tmp_path, monkeypatch):
    helpers.serve_checkpoint(server, "cmt_micro.pth", helpers.release_checkpoint(official["model"], official["ema"]))
    model = helpers.micro_model(classifier_activation=None)
    pretrained.load_imagenet_weights(model, VARIANT, keras_cmt.CMT, prefer="model")
    path = pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT, prefer="model")  # cached: no second request
    assert_holds(model, official["model"])
    assert os.path.basename(path) == "cmt_micro_imagenet_model.weights.h5"
    assert json.loads(open(path + ".json").read())["weights"] == "model"

    # The documented override for the builders: the environment variable.
    monkeypatch.setenv(pretrained.PREFER_ENV, "model")
    assert pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT) == path
    assert len(server.requests) == 1


def test_checkpoint_without_ema_loads_model(server, official, tmp_path):
    # CMT-Ti trained with --no-model-ema: model_ema is None in the checkpoint.
    helpers.serve_checkpoint(server, "cmt_micro.pth", helpers.release_checkpoint(official["ema"], None))
    model = helpers.micro_model(classifier_activation=None)
    pretrained.load_imagenet_weights(model, VARIANT, keras_cmt.CMT)
    assert_holds(model, official["ema"])
    record = json.loads((cache_dir(tmp_path) / "cmt_micro_imagenet.weights.h5.json").read_text())
    assert record["weights"] == "model"


def test_prefer_ema_without_ema_fails_cleanly(server, official, tmp_path):
    helpers.serve_checkpoint(server, "cmt_micro.pth", helpers.release_checkpoint(official["ema"], None))
    with pytest.raises(ValueError, match=r"cmt_micro\.pth: has no model_ema weights\. Nothing was cached"):
        pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT, prefer="ema")
    assert cache_files(tmp_path) == []


@pytest.mark.all_backends
def test_other_input_sizes_load_resized_biases(server, official, tmp_path):
    helpers.serve_checkpoint(server, "cmt_micro.pth", helpers.release_checkpoint(official["model"], official["ema"]))
    model = helpers.micro_model(input_shape=(96, 128, 3), include_top=False, pooling="avg")
    pretrained.load_imagenet_weights(model, VARIANT, keras_cmt.CMT)
    # Each stage's bias is the checkpoint's, resized over the query grid and over the key grid.
    for letter, sr, stride in (("a", 8, 4), ("b", 4, 8), ("c", 2, 16), ("d", 1, 32)):
        old_q = (64 // stride,) * 2
        new_q = (96 // stride, 128 // stride)
        expected = position_bias_resize.resize_relative_position_bias(
            official["ema"][f"relative_pos_{letter}"],
            old_q,
            tuple(s // sr for s in old_q),
            new_q,
            tuple(s // sr for s in new_q),
        )
        np.testing.assert_allclose(model.get_layer(f"relative_pos_{letter}").bias.numpy(), expected, atol=1e-6)
    features = numpy(model(np.random.default_rng(0).uniform(-1, 1, (2, 96, 128, 3)).astype("float32")))
    assert features.shape == (2, 64) and np.isfinite(features).all()
    # Everything but the biases loads unchanged.
    assert_holds(
        model,
        {k: v for k, v in official["ema"].items() if not k.startswith("relative_pos_")}
        | {f"relative_pos_{c}": model.get_layer(f"relative_pos_{c}").bias.numpy() for c in "abcd"},
    )


def test_sha256_pinning(server, official, tmp_path, monkeypatch):
    body = helpers.serve_checkpoint(
        server, "cmt_micro.pth", helpers.release_checkpoint(official["model"], official["ema"])
    )
    right = hashlib.sha256(body).hexdigest()
    wrong = "0" * 64
    with pytest.raises(ValueError, match=f"has sha256 {right}, not the pinned {wrong}; nothing was cached"):
        pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT, sha256=wrong)
    assert cache_files(tmp_path) == []

    monkeypatch.setenv(pretrained.SHA256_ENV_PREFIX + "CMT_MICRO", right)
    path = pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT)
    assert json.loads(open(path + ".json").read())["source_sha256"] == right
    # A cache converted from another file than the one now pinned is rebuilt, not trusted.
    with pytest.raises(ValueError, match="not the pinned"):
        pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT, sha256="f" * 64)
    assert len(server.requests) == 3
    with pytest.raises(ValueError, match="not 64 hex digits"):
        pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT, sha256="abc")


def test_a_damaged_cache_is_rebuilt(server, official, tmp_path):
    helpers.serve_checkpoint(server, "cmt_micro.pth", helpers.release_checkpoint(official["model"], official["ema"]))
    path = pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    assert pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT) == path
    assert len(server.requests) == 2
    model = helpers.micro_model(classifier_activation=None)
    keras_cmt.load_weights(model, path)
    assert_holds(model, official["ema"])


def test_failed_download_names_url_and_where_to_put_the_file(server, official, tmp_path, monkeypatch):
    # Nothing served: the release host answers 404.
    url = server.base_url + "/cmt_micro.pth"
    hand_placed = cache_dir(tmp_path) / "cmt_micro.pth"
    with pytest.raises(ValueError) as error:
        pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT)
    message = str(error.value)
    assert "\n" not in message and url in message and str(hand_placed) in message and "404" in message
    assert cache_files(tmp_path) == []

    # Following the message: the file fetched by hand is converted with no network, and left in place.
    helpers.torch_zip.write_checkpoint(hand_placed, helpers.release_checkpoint(official["model"], official["ema"]))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, "http://127.0.0.1:9/nowhere")
    model = helpers.micro_model(classifier_activation=None)
    pretrained.load_imagenet_weights(model, VARIANT, keras_cmt.CMT)
    assert_holds(model, official["ema"])
    assert hand_placed.exists() and len(server.requests) == 1


@pytest.mark.parametrize("case", ["html", "truncated"])
def test_bad_download_leaves_nothing(server, official, tmp_path, case):
    good = helpers.torch_zip.checkpoint_bytes(helpers.release_checkpoint(official["model"], official["ema"]))
    if case == "html":
        body, expected = b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>", "looks like an HTML page"
    else:
        body, expected = good[: len(good) // 2], "not a PyTorch checkpoint"
    helpers.serve_checkpoint(server, "cmt_micro.pth", body)
    with pytest.raises(ValueError) as error:
        pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT)
    message = str(error.value)
    assert expected in message and server.base_url + "/cmt_micro.pth" in message and "\n" not in message
    assert "Nothing was cached" in message
    assert cache_files(tmp_path) == []


def test_interrupted_download_leaves_nothing(server, official, tmp_path):
    good = helpers.torch_zip.checkpoint_bytes(helpers.release_checkpoint(official["model"], official["ema"]))
    # The server announces the whole file and stops after half of it (a dropped connection).
    helpers.serve_checkpoint(server, "cmt_micro.pth", good[: len(good) // 2], declared_length=len(good))
    with pytest.raises(ValueError) as error:
        pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT)
    message = str(error.value)
    assert "could not download " + server.base_url + "/cmt_micro.pth" in message and "\n" not in message
    assert "retrieval incomplete" in message and str(cache_dir(tmp_path) / "cmt_micro.pth") in message
    assert cache_files(tmp_path) == []


def test_truncated_storage_is_reported(server, official, tmp_path):
    # A complete zip whose last tensor storage is cut short: the archive reads, the tensor does not.
    import io
    import zipfile

    good = helpers.torch_zip.checkpoint_bytes(helpers.release_checkpoint(official["model"], official["ema"]))
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(out, "w") as dst:
        names = src.namelist()
        storages = [n for n in names if "/data/" in n]
        for name in names:
            data = src.read(name)
            dst.writestr(name, data[: len(data) // 2] if name == storages[0] else data)
    helpers.serve_checkpoint(server, "cmt_micro.pth", out.getvalue())
    with pytest.raises(ValueError, match="runs past its storage"):
        pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT)
    assert cache_files(tmp_path) == []


def _shape_only_state_dict(variant):
    """Just enough of a variant's state dict for the variant check (tiny arrays with the right leading sizes)."""
    state = {"stem_conv1.weight": np.zeros((variant.stem_channels, 1), "float32")}
    for letter, dim, depth in zip("abcd", variant.embed_dims, variant.depths):
        state[f"patch_embed_{letter}.proj.weight"] = np.zeros((dim, 1), "float32")
        for i in range(depth):
            state[f"blocks_{letter}.{i}.norm1.weight"] = np.zeros((1,), "float32")
    return state


def test_checkpoint_of_another_variant(server, tmp_path):
    # The old cmt_xs.pth mix-up: the file under the XS name holds CMT-S weights.
    small = _shape_only_state_dict(keras_cmt.VARIANTS["cmt_s"])
    helpers.serve_checkpoint(server, "cmt_xs.pth", {"model": small, "model_ema": small})
    with pytest.raises(ValueError) as error:
        pretrained.imagenet_weights_path("cmt_xs", keras_cmt.CMT)
    message = str(error.value)
    assert "holds cmt_s weights" in message and "not cmt_xs" in message and "copy of cmt_small.pth" in message
    assert "cmt_xs.pth" in message and "\n" not in message
    assert cache_files(tmp_path) == []


def test_classes_other_than_1000_with_imagenet_fail_before_any_download(server, tmp_path):
    with pytest.raises(ValueError, match=r"needs classes=1000 \(got classes=10\)"):
        keras_cmt.CMTTiny(weights="imagenet", classes=10)
    assert server.requests == [] and cache_files(tmp_path) == []


def test_bad_prefer_value(server):
    with pytest.raises(ValueError, match="must be 'auto', 'ema' or 'model'; got 'best'"):
        pretrained.imagenet_weights_path(VARIANT, keras_cmt.CMT, prefer="best")


def test_default_url_and_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv(pretrained.BASE_URL_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert pretrained.weights_url("CMTSmall") == (
        "https://github.com/ggjy/CMT.pytorch/releases/download/release-v1/cmt_small.pth"
    )
    assert [pretrained.weights_url(v).rsplit("/", 1)[1] for v in ("cmt_ti", "cmt_xs", "cmt_b")] == [
        "cmt_tiny.pth",
        "cmt_xs.pth",
        "cmt_base.pth",
    ]
    weights, record, hand_placed = pretrained.cache_paths("cmt_b")
    assert weights == str(tmp_path / "models" / "keras_cmt" / "cmt_b_imagenet.weights.h5")
    assert record == weights + ".json" and hand_placed == str(tmp_path / "models" / "keras_cmt" / "cmt_base.pth")
