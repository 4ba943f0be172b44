"""Benchmarks: scripts that print tables and save JSON (never timed tests)."""

import importlib.util
import os
import sys

_VARIANTS_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "keras_cmt", "variants.py")


def variant_table():
    """`keras_cmt.VARIANTS`, read from keras_cmt/variants.py without importing keras_cmt: that imports Keras, which
    fixes its backend, and a benchmark parses its arguments before it picks one (or runs it in a child process)."""
    module = sys.modules.get("keras_cmt.variants") or sys.modules.get("_keras_cmt_variants")
    if module is None:
        spec = importlib.util.spec_from_file_location("_keras_cmt_variants", _VARIANTS_PY)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module.VARIANTS
