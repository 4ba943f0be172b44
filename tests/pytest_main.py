"""The `main` of the Bazel py_test targets in BUILD: runs pytest on the test files given as arguments.

    tests/pytest_main.py [--backend=tensorflow|jax|torch] [pytest arguments ...] tests/test_x.py
    tests/pytest_main.py --check-model-tests tests/test_a.py tests/test_b.py ...

--backend sets KERAS_BACKEND (and for JAX the fast XLA settings of tests/run.py) before anything imports Keras.
keras_cmt is imported from the sources beside this file (under Bazel: the runfiles tree), never from an installed
copy: that root goes first on sys.path and setuptools' editable-install finder, which maps keras_cmt (and
keras_cmt.training/.tflite) to a checkout, is switched off. The path imported is printed; under Bazel a keras_cmt
from outside the runfiles is an error.

--check-model-tests compares the files given (BUILD's MODEL_TESTS) with the tests/test_*.py modules that use the
`all_backends` marker and fails when they differ.
"""

import glob
import os
import re
import sys

JAX_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
MARKER = re.compile(r"\bmark\.all_backends\b")


def source_root():
    """The runfiles root of this workspace under Bazel, else the checkout (the folder above tests/)."""
    if os.environ.get("TEST_SRCDIR") and os.environ.get("TEST_WORKSPACE"):
        return os.path.join(os.environ["TEST_SRCDIR"], os.environ["TEST_WORKSPACE"])
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_model_tests(root, listed):
    """0 if `listed` (paths relative to root) are exactly the tests/test_*.py files using the all_backends marker."""
    marked = set()
    for path in sorted(glob.glob(os.path.join(root, "tests", "test_*.py"))):
        with open(path, encoding="utf-8") as f:
            if MARKER.search(f.read()):
                marked.add(os.path.relpath(path, root))
    listed = set(listed)
    if not marked:
        print("no tests/test_*.py files found under", root)
        return 1
    for path in sorted(marked - listed):
        print(f"{path} has all_backends tests but is not in BUILD's MODEL_TESTS")
    for path in sorted(listed - marked):
        print(f"{path} is in BUILD's MODEL_TESTS but has no all_backends tests")
    if marked != listed:
        return 1
    print(f"BUILD's MODEL_TESTS lists the {len(marked)} modules with all_backends tests")
    return 0


def import_keras_cmt_from(root):
    """Imports keras_cmt from root, not from site-packages or an editable install, and returns its __file__."""
    sys.path[:] = [root] + [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
    sys.path_importer_cache.clear()
    for name in [m for m in sys.modules if m == "keras_cmt" or m.startswith("keras_cmt.")]:
        del sys.modules[name]
    import keras_cmt

    return os.path.abspath(keras_cmt.__file__)


def main(argv):
    root = source_root()
    if argv[:1] == ["--check-model-tests"]:
        return check_model_tests(root, argv[1:])

    backend = None
    for arg in [a for a in argv if a.startswith("--backend=")]:
        backend = arg.split("=", 1)[1]
        argv.remove(arg)
    if backend:
        os.environ["KERAS_BACKEND"] = backend
        if backend == "jax":
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + JAX_XLA_FLAGS).strip()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as conftest.py, which runs after keras_cmt's import here
    if os.environ.get("TEST_TMPDIR"):
        # Under Bazel: ~/.keras, ~/.config/matplotlib, pytest's tmp_path, ... in the test's own temporary folder.
        for name in ("HOME", "TMPDIR"):
            os.environ[name] = os.environ["TEST_TMPDIR"]
    # No __pycache__ or .pytest_cache (nor rewritten test modules) written into the sources: the runfiles tree is
    # Bazel's, and the Python subprocesses some tests start may import keras_cmt from the checkout itself.
    sys.dont_write_bytecode = True
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    keras_cmt_file = import_keras_cmt_from(root)
    print(f"keras_cmt from {keras_cmt_file} (KERAS_BACKEND={os.environ.get('KERAS_BACKEND', 'default')})", flush=True)
    if "TEST_SRCDIR" in os.environ and not keras_cmt_file.startswith(root + os.sep):
        print(f"keras_cmt was not imported from the Bazel runfiles ({root})", file=sys.stderr)
        return 1

    import pytest

    args = ["-q", "-p", "no:cacheprovider", "--rootdir", root]
    if os.environ.get("XML_OUTPUT_FILE"):
        args.append(f"--junitxml={os.environ['XML_OUTPUT_FILE']}")  # Bazel's test.xml, per test case
    return pytest.main(args + argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
