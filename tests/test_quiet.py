"""keras_cmt's commands start quiet (no C++ log lines or library warnings) unless --verbose; a program that imports
keras_cmt keeps its logging as it was."""

import os
import subprocess
import sys

import pytest

from keras_cmt import quiet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["python", "-m", "keras_cmt.training.demo", "--seed", "1"], True),
        (["python", "-W", "ignore", "-m", "keras_cmt"], True),
        (["/usr/bin/python3", "/usr/local/bin/cmt-train", "--model_dir=x"], True),
        (["python", "/home/me/venv/bin/keras-cmt-tflite", "--model", "cmt_ti"], True),
        (["python", "my_script.py", "-m", "keras_cmt.cli"], False),
        (["python", "-c", "import keras_cmt"], False),
        (["python", "-m", "pytest", "tests"], False),
        (["python"], False),
    ],
)
def test_started_as_command(argv, expected):
    assert quiet.started_as_command(argv) is expected


def test_verbose_requested(monkeypatch):
    monkeypatch.delenv("KERAS_CMT_VERBOSE", raising=False)
    assert quiet.verbose_requested(["--seed", "1", "--verbose"])
    assert quiet.verbose_requested(["--verbose=true"])
    assert not quiet.verbose_requested(["--seed", "1"])
    assert not quiet.verbose_requested(["--verbose=false"])
    monkeypatch.setenv("KERAS_CMT_VERBOSE", "1")
    assert quiet.verbose_requested([])


def _run(code_or_module, *args, module=False):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_CMT_VERBOSE")}
    env["KERAS_BACKEND"] = "tensorflow"
    command = [sys.executable, "-m", code_or_module] if module else [sys.executable, "-c", code_or_module]
    return subprocess.run(command + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_command_screen_is_quiet_and_verbose_brings_the_logs_back():
    result = _run("keras_cmt.cli", "info", "--model", "cmt_ti", module=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""
    assert result.stdout.startswith("variant  builder")
    verbose = _run("keras_cmt.cli", "info", "--model", "cmt_ti", "--verbose", module=True)
    assert verbose.returncode == 0 and verbose.stdout == result.stdout
    # TensorFlow's start-up records (absl format), shown only with --verbose.
    assert any(quiet.NATIVE_NOISE.match(line.encode()) for line in verbose.stderr.splitlines()), verbose.stderr


def test_importing_keras_cmt_leaves_a_programs_logging_alone():
    """The log level, warning filters and loggers after `import keras_cmt` are those after `import keras`."""
    report = (
        "; import os, warnings, logging; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), "
        "[(f[0], f[2]) for f in warnings.filters], logging.getLogger('absl').level, "
        "logging.getLogger('tensorflow').level)"
    )
    plain = _run("import keras" + report)
    ours = _run("import keras_cmt; assert not keras_cmt.quiet.is_quiet()" + report)
    assert plain.returncode == 0 and ours.returncode == 0, ours.stderr[-2000:]
    assert ours.stdout == plain.stdout


def test_native_stderr_filter_drops_only_the_noise():
    code = r"""
import os, sys
from keras_cmt import quiet
quiet._quiet = True
os.write(2, b"BEGIN\n")  # what came before is TensorFlow's import by keras_cmt, not quiet here (python -c)
with quiet.native_stderr_filtered():
    os.write(2, b"I0000 00:00:1795995152.040697    2143 port.cc:153] oneDNN custom operations are on.\n")
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\n")
    os.write(2, b"a real error line\n")
    sys.stderr.write("a Python line\n")
try:
    with quiet.native_stderr_filtered():
        os.write(2, b"E0000 00:00:1.0 1 x.cc:1] dropped\n")
        os.write(2, b"kept although the block raised\n")
        raise KeyError("k")
except KeyError:
    pass
"""
    result = _run(code)
    assert result.returncode == 0
    after = result.stderr.split("BEGIN\n", 1)[1]
    assert after.splitlines() == ["a real error line", "a Python line", "kept although the block raised"]
