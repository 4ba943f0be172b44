"""A `.keras` file saved on one backend loads on the others and gives the same outputs: TensorFlow saves the official
micro model, JAX loads it and saves its own, PyTorch loads both and saves its own, and TensorFlow loads the JAX and
PyTorch files (one process per backend; five of the six directions)."""

import importlib.util
import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "fixtures", "cross_backend", "cross_backend.py")


def _script():
    spec = importlib.util.spec_from_file_location("cross_backend", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _in_subprocess(backend, folder):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, SCRIPT, str(folder)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{backend}: {result.stderr[-2000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_keras_files_move_between_backends(tmp_path):
    script = _script()
    script.save(str(tmp_path))  # this process: TensorFlow
    loaded = {
        "jax": _in_subprocess("jax", tmp_path),
        "torch": _in_subprocess("torch", tmp_path),
        "tensorflow": script.load(str(tmp_path)),
    }
    assert {target: sorted(d) for target, d in loaded.items()} == {
        "jax": ["tensorflow"],
        "torch": ["jax", "tensorflow"],
        "tensorflow": ["jax", "torch"],
    }
    for target, differences in loaded.items():
        for source, difference in differences.items():
            assert difference <= 1e-5, f"a {source} file on {target}: {difference}"
