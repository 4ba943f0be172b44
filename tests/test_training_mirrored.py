"""MirroredStrategy over two logical CPU devices: keras_cmt.training.train on a folder of JPEG/PNG files with a corrupt
one trains, the loss goes down, the bad files are skipped and counted, and model_dir holds every promised output."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "training"))

import helpers  # noqa: E402


def test_mirrored_two_cpus_on_a_folder_with_corrupt_files(tmp_path):
    folder = tmp_path / "images"
    n_images = helpers.make_image_folder(str(folder), per_class=16, size=36)
    model_dir = tmp_path / "run"
    result = helpers.run_train(
        f"--model_dir={model_dir}",
        f"--dataset={folder}",
        "--strategy=mirrored",
        "--num_cpu_devices=2",
        "--image_size=32",
        "--batch_size=8",
        "--epochs=3",
        "--steps_per_epoch=5",
        "--val_fraction=0.25",
        # The small-data preset (no Mixup/CutMix/RandAugment) so that the training loss is a clean signal.
        "--preset=small_data",
        "--base_lr=2e-3",
        "--lr_reference_batch=8",
        "--warmup_epochs=0",
        "--crop_pct=0.875",
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "2 replicas" in log
    assert "Skipping 1 file(s) under" in log and "(1 not an image)" in log

    rows = helpers.read_csv_rows(model_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert {"epoch", "loss", "accuracy", "top5", "val_accuracy", "val_top5", "val_loss"} <= set(rows[0])
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0], losses

    results = json.loads((model_dir / "results.json").read_text())
    assert results["replicas"] == 2 and results["epochs"] == 3 and results["steps"] == 15
    assert results["skipped_files"] == 1
    assert 0.0 <= results["val_accuracy"] <= 1.0 and results["val_top5"] == 1.0  # 2 classes: top-5 is certain
    assert results["num_classes"] == 2
    for name in (
        "model.keras",
        "model.weights.h5",
        "curves.png",
        "checkpoints/best.weights.h5",
        "checkpoints/last.weights.h5",
    ):
        assert (model_dir / name).stat().st_size > 0, name
    assert any(f.startswith("events.out.tfevents") for _, _, files in os.walk(model_dir / "logs") for f in files)
    assert not (model_dir / "backup" / "train").exists()  # the backup is removed once the run has finished
    assert n_images == 32

    # keras_cmt.training.evaluate on the exported model reproduces the final validation top-1 on the same held-out
    # split.
    evaluation = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_cmt.training.evaluate",
            f"--model_path={model_dir / 'model.keras'}",
            f"--dataset={folder}",
            "--val_fraction=0.25",
            f"--output={tmp_path / 'eval.json'}",
        ],
        cwd=helpers.REPO,
        env=helpers.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["images"] >= 8 and evaluated["crop_pct"] == 0.875
    assert abs(evaluated["top1"] - results["val_accuracy"]) < 1e-6
    assert "top-1" in evaluation.stdout
