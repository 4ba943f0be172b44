"""Runs the test suite once per Keras backend, each in its own process (Keras fixes its backend at import).

    python3 tests/run.py [pytest arguments ...]

TensorFlow runs every test except those needing channels-first convolutions (TensorFlow has none on the CPU); JAX
and PyTorch run the tests marked `all_backends` (the model, its weights and inference) and `channels_first`. JAX
compiles with XLA's fast settings: the tests time nothing, and XLA's optimising passes dominate their run time.
A backend whose package is not installed is a failure, not a skip. Exit status 0 only if every backend passed.
"""

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = (
    ("tensorflow", "not channels_first"),
    ("jax", "all_backends or channels_first"),
    ("torch", "all_backends or channels_first"),
)


def main(argv):
    results = []
    for backend, marks in RUNS:
        env = dict(os.environ, KERAS_BACKEND=backend)
        if backend == "jax":
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                                " --xla_llvm_disable_expensive_passes=true").strip()
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", marks, HERE, *argv]
        print(f"\n=== KERAS_BACKEND={backend}: pytest -m '{marks}'", flush=True)
        start = time.time()
        code = subprocess.call(command, env=env)
        results.append((backend, code, time.time() - start))
    print("\n=== summary")
    for backend, code, seconds in results:
        print(f"{backend:<11} {'passed' if code == 0 else f'FAILED (exit {code})':<16} {seconds:6.0f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
