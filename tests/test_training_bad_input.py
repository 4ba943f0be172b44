"""Bad input to keras_cmt.training.train is a clear one-line error (exit status 2) before any work starts: an unknown
dataset, an empty folder, a batch size the replicas cannot split, a missing TPU address, no TF_CONFIG."""

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "training"))

import helpers  # noqa: E402

sys.path.insert(0, helpers.REPO)

from keras_cmt.training import flags as training_flags  # noqa: E402
from keras_cmt.training import train  # noqa: E402


def _run_in_process(argv, capsys):
    """Parses argv into the global flags and runs keras_cmt.training.train; returns (exit status, stderr)."""
    training_flags.define_flags()
    training_flags.FLAGS.unparse_flags()
    training_flags.FLAGS(["train"] + argv)
    with pytest.raises(SystemExit) as exit_info:
        train.run()
    return exit_info.value.code, capsys.readouterr().err


def _one_line(err):
    lines = [line for line in err.strip().splitlines() if line.startswith("keras_cmt.training.train: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset=no_such_dataset_xyz"], "--dataset=no_such_dataset_xyz: unknown dataset"),
        (["--strategy=tpu"], "--strategy=tpu needs --tpu"),
        (["--strategy=multi_worker"], "--strategy=multi_worker needs the TF_CONFIG environment variable"),
        (["--weights=/no/such/file.weights.h5"], "--weights=/no/such/file.weights.h5: no such file"),
    ],
)
def test_bad_flags_fail_in_one_line_before_work(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code, err = _run_in_process([f"--model_dir={tmp_path / 'run'}"] + argv, capsys)
    assert code == 2
    assert message in _one_line(err)
    assert not (tmp_path / "run").exists()  # nothing was started or written


def test_malformed_tf_config_fails_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    code, err = _run_in_process([f"--model_dir={tmp_path / 'run'}", "--strategy=multi_worker"], capsys)
    assert code == 2
    assert "TF_CONFIG is not JSON with 'cluster' and 'task'" in _one_line(err)


def test_empty_folder_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    code, err = _run_in_process([f"--model_dir={tmp_path / 'run'}", f"--dataset={tmp_path / 'data'}"], capsys)
    assert code == 2
    assert f"--dataset={tmp_path / 'data'}: no images found" in _one_line(err)


def test_batch_size_the_replicas_cannot_split_fails_in_one_line(tmp_path):
    result = subprocess.run(
        helpers.train_command(
            f"--model_dir={tmp_path / 'run'}",
            "--strategy=mirrored",
            "--num_cpu_devices=2",
            "--batch_size=7",
            "--image_size=32",
        ),
        cwd=helpers.REPO,
        env=helpers.env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert _one_line(result.stderr) == (
        "keras_cmt.training.train: error: --batch_size=7 cannot be split over 2 replicas (use a multiple of 2)"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_flag_validators_reject_bad_values(tmp_path):
    result = subprocess.run(
        helpers.train_command(f"--model_dir={tmp_path}", "--image_size=100"),
        cwd=helpers.REPO,
        env=helpers.env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode != 0
    assert "--image_size must be a positive multiple of 32" in result.stderr
    assert "Traceback" not in result.stderr
