"""The command line: predict (official transform, top-k, saved models, checkpoint weights, labels), info (params
counted from the built model, GMACs from the variant table), `python -m keras_cmt`, and one-line errors. Prediction
and info also on JAX and PyTorch (`all_backends`)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "pretrained"))

import pretrained_helpers as helpers  # noqa: E402

import keras_cmt  # noqa: E402
from conftest import numpy  # noqa: E402
from keras_cmt import cli  # noqa: E402


IMAGES = [
    os.path.join(os.path.dirname(__file__), "fixtures", "pretrained", name)
    for name in ("eval_transform_input.png", "eval_transform_input_portrait.png")
]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(text):
    """{image: [(probability, label), ...]} from predict's output."""
    results, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^\s+\d+\. (\d\.\d{4})  (.+)$", line)
        if match:
            results[current].append((float(match.group(1)), match.group(2)))
        else:
            current = line
            results[current] = []
    return results


def expected_top(model, top, labels):
    batch = np.stack([keras_cmt.eval_transform(keras_cmt.load_image(p), 64) for p in IMAGES])
    probabilities = numpy(model(batch, training=False))
    return {
        path: [(round(float(row[i]), 4), labels[i]) for i in np.argsort(-row)[:top]]
        for path, row in zip(IMAGES, probabilities)
    }


@pytest.fixture(scope="module")
def official_micro():
    model = helpers.micro_model()
    keras_cmt.weights.loading.assign_state_dict(model, helpers.micro_state_dict())
    return model


@pytest.fixture(scope="module")
def saved_micro(official_micro, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("saved") / "micro.keras")
    official_micro.save(path)
    return path


@pytest.mark.all_backends
def test_predict_with_a_saved_model_and_checkpoint_weights(official_micro, saved_micro, tmp_path, capsys):
    labels = [f"thing {i}" for i in range(10)]
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(labels) + "\n")
    expected = expected_top(official_micro, 3, labels)
    # Predictions differ from image to image and from a uniform guess, so the comparison below means something.
    assert expected[IMAGES[0]] != expected[IMAGES[1]] and expected[IMAGES[0]][0][0] > 0.11

    assert cli.main(["predict", *IMAGES, "--model", saved_micro, "--top", "3", "--labels", str(labels_file)]) == 0
    printed = parse(capsys.readouterr().out)
    assert list(printed) == IMAGES
    for path in IMAGES:
        assert [label for _, label in printed[path]] == [label for _, label in expected[path]]
        np.testing.assert_allclose([p for p, _ in printed[path]], [p for p, _ in expected[path]], atol=2e-4)

    # A randomly initialised saved model plus the official .pth gives the same predictions.
    random_saved = str(tmp_path / "random.keras")
    helpers.micro_model().save(random_saved)
    assert cli.main(["predict", *IMAGES, "--model", random_saved, "--weights", helpers.MICRO_PTH, "--top", "2"]) == 0
    printed = parse(capsys.readouterr().out)
    for path in IMAGES:
        assert [label for _, label in printed[path]] == [
            f"class_{labels.index(label)}" for _, label in expected[path][:2]
        ]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["predict", "{broken}", "--model", "cmt_ti"], r"broken\.jpg: cannot decode the image"),
        (["predict", "{missing}"], r"missing\.png: no such image file\."),
        (["predict", IMAGES[0], "--model", "cmt_huge"], r"Unknown CMT variant 'cmt_huge'"),
        (["predict", IMAGES[0], "--model", "cmt_ti", "--weights", "{missing}"], r"missing\.png.*no such file"),
        (["predict", IMAGES[0], "--model", "{missing}.keras"], r"model .*missing\.png\.keras: no such file\."),
        (["predict", IMAGES[0], "--model", "{saved}", "--weights", "imagenet"], r"weights 'imagenet' need a variant"),
        (["predict", IMAGES[0], "--model", "{saved}", "--size", "96"], r"an input size applies to variants"),
        (["predict", IMAGES[0], "--model", "{saved}", "--labels", "{labels}"], r"2 names for a model with 10 classes"),
    ],
)
def test_predict_errors_are_one_line(argv, message, tmp_path, capsys, saved_micro):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    names = {"broken": broken, "missing": tmp_path / "missing.png", "saved": saved_micro, "labels": labels}
    argv = [a.format(**names) for a in argv]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-cmt: error: ") and re.search(message, lines[0])


def test_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", IMAGES[0], "--top", "0"])
    assert exit_info.value.code == 2 and "expected a positive integer, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2


@pytest.mark.all_backends
def test_info_counts_params_and_reads_gmacs_from_the_table(capsys):
    assert cli.main(["info", "--model", "CMTTiny"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("cmt_ti "))
    assert row.split() == ["cmt_ti", "CMTTiny", "9,546,058", "0.639", "160^2", "79.0", "cmt_tiny.pth"]
    assert "cmt_xs" not in out


def test_python_dash_m(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")  # KERAS_BACKEND is inherited: the same backend
    missing = str(tmp_path / "missing.png")
    result = subprocess.run(
        [sys.executable, "-m", "keras_cmt", "predict", missing],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert f"keras-cmt: error: {missing}: no such image file." in result.stderr.splitlines()
    assert result.stdout == ""


def test_default_labels():
    args = cli._parser().parse_args(["predict", "x.png"])
    imagenet = cli._labels(args, 1000)
    assert imagenet[0] == "tench (n01440764)" and imagenet[999] == "toilet_tissue (n15075141)"
    assert cli._labels(args, 3) == ["class_0", "class_1", "class_2"]
    assert (args.model, args.weights, args.top) == ("cmt_small", None, 5)


@pytest.mark.channels_first
def test_predict_with_a_channels_first_model(official_micro, channels_first_format, tmp_path, capsys):
    """A model saved channels-first gets its images transposed: the same predictions as channels-last."""
    import keras

    first = helpers.micro_model(input_shape=(3, 64, 64))
    first.set_weights(official_micro.get_weights())
    path = str(tmp_path / "first.keras")
    first.save(path)
    assert cli.main(["predict", *IMAGES, "--model", path, "--top", "3"]) == 0
    printed = parse(capsys.readouterr().out)
    keras.config.set_image_data_format("channels_last")
    expected = expected_top(official_micro, 3, [f"class_{i}" for i in range(10)])
    for path_ in IMAGES:
        assert [label for _, label in printed[path_]] == [label for _, label in expected[path_]]
        np.testing.assert_allclose([p for p, _ in printed[path_]], [p for p, _ in expected[path_]], atol=2e-4)
