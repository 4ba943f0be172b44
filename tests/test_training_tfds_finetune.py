"""The tfds path (imagenet2012 through tfds.testing.mock_data) together with fine-tuning: start from a checkpoint
with another number of classes (a new head), train the head with the backbone frozen, then everything."""

import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "training"))

import helpers  # noqa: E402

sys.path.insert(0, helpers.REPO)


def test_finetune_from_a_10_class_checkpoint_on_mock_imagenet2012(tmp_path):
    import keras

    from keras_cmt.training import train

    donor = train.build_model("cmt_ti", 32, 10, 0.0, helpers.TINY_MODEL)
    checkpoint = str(tmp_path / "donor.weights.h5")
    donor.save_weights(checkpoint)
    donor_weights = {v.path: np.asarray(v) for v in donor.weights}

    model_dir = tmp_path / "run"
    command = [
        sys.executable,
        os.path.join(helpers.FIXTURES, "train_with_mock_tfds.py"),
        "48",
        "--progress=epoch",
        "--model_overrides=" + helpers.TINY_MODEL,
        f"--model_dir={model_dir}",
        "--dataset=imagenet2012",
        "--image_size=32",
        "--batch_size=8",
        "--epochs=2",
        "--freeze_epochs=1",
        "--steps_per_epoch=3",
        f"--weights={checkpoint}",
        "--randaugment_magnitude=9",
        "--mixup=0.8",
        "--cutmix=1.0",
        "--random_erasing=0.25",
    ]
    result = subprocess.run(command, cwd=helpers.REPO, env=helpers.env(), capture_output=True, text=True, timeout=400)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "imagenet2012: 1000 classes, 48 train / 48 val images" in log
    assert "loading all but the head" in log
    assert "Phase 1: head only for 1 epochs (2 trainable weights)" in log

    rows = helpers.read_csv_rows(model_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    results = json.loads((model_dir / "results.json").read_text())
    assert results["num_classes"] == 1000 and results["dataset"] == "imagenet2012"

    final = train.build_model("cmt_ti", 32, 1000, 0.0, helpers.TINY_MODEL)
    final.load_weights(str(model_dir / "model.weights.h5"))
    assert final.get_layer("head").kernel.shape[-1] == 1000
    changed = [
        v.path
        for v in final.trainable_weights
        if v.path in donor_weights and not np.array_equal(np.asarray(v), donor_weights[v.path])
    ]
    assert changed, "the backbone did not train after it was unfrozen"
    loaded = keras.saving.load_model(str(model_dir / "model.keras"))
    assert loaded.output_shape == (None, 1000)
