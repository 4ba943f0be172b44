"""Does a converted model run wholly on the delegates? GPU: TFLite's Analyzer; XNNPACK: the delegated plan.

    python -m keras_cmt.tflite.compatibility MODEL.tflite [--threads 2]

prints the XNNPACK partitions, the nodes left to the default CPU kernels (by op type), the op types of
the model and the Analyzer's GPU-compatibility verdict; exits 1 when either delegate leaves ops behind.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from collections import Counter


def analyzer_report(model_bytes: bytes, gpu_compatibility: bool = True) -> str:
    """The text of TFLite's model Analyzer, with its GPU-delegate compatibility check.

    The Analyzer is the native `ModelAnalyzer` that `tf.lite.experimental.Analyzer.analyze` prints; LiteRT's wheel
    ships the same wrapper (built from LiteRT's sources), which this uses first: no TensorFlow import, so the
    benchmark's worker processes can ask for the verdict too. TensorFlow's copy is the fallback.
    """
    try:
        from ai_edge_litert import _pywrap_analyzer_wrapper as wrapper
    except ImportError:  # pragma: no cover - a LiteRT wheel without the analyzer
        wrapper = None
    if wrapper is not None:
        return wrapper.ModelAnalyzer(bytes(model_bytes), False, gpu_compatibility)
    import tensorflow as tf

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        tf.lite.experimental.Analyzer.analyze(model_content=bytes(model_bytes), gpu_compatibility=gpu_compatibility)
    return buffer.getvalue()


def gpu_incompatible_ops(report: str) -> list:
    """Lines of the Analyzer report that flag an op as GPU-incompatible (empty when compatible)."""
    flagged = [line.strip() for line in report.splitlines() if "GPU COMPATIBILITY WARNING" in line]
    if not flagged and "Your model looks compatible with GPU delegate" not in report:
        flagged.append("the Analyzer did not report GPU compatibility")
    return flagged


def gpu_flagged_op_types(report: str) -> dict:
    """Op type -> number of nodes the Analyzer flags as GPU-incompatible (its warning follows the node's line)."""
    counts, last_op = Counter(), None
    for line in report.splitlines():
        match = re.match(r"^\s+Op#\d+ (\w+)\(", line)
        if match:
            last_op = match.group(1)
        elif "GPU COMPATIBILITY WARNING" in line and "Subgraph#" not in line and last_op is not None:
            counts[last_op] += 1
            last_op = None
    return dict(counts.most_common())


def gpu_verdict(model_bytes: bytes) -> dict:
    """The Analyzer's GPU-delegate verdict: whether the whole model is compatible, the flagged lines and op types."""
    report = analyzer_report(model_bytes)
    flagged = gpu_incompatible_ops(report)
    return {
        "gpu_compatible": not flagged,
        "gpu_incompatible": flagged,
        "gpu_incompatible_op_types": gpu_flagged_op_types(report),
    }


def gpu_verdict_text(result: dict) -> str:
    """'compatible', or 'not compatible: OPxN, ...', for a table cell."""
    if result.get("gpu_compatible", not result.get("gpu_incompatible")):
        return "compatible"
    ops = ", ".join(f"{k}x{v}" for k, v in result.get("gpu_incompatible_op_types", {}).items())
    return "not compatible" + (f": {ops}" if ops else "")


def op_types(model_bytes: bytes) -> dict:
    """Op type -> count over the model's main subgraph, read from the Analyzer listing."""
    report = analyzer_report(model_bytes, gpu_compatibility=False)
    return dict(Counter(re.findall(r"^\s+Op#\d+ (\w+)\(", report, flags=re.M)).most_common())


def check(model_bytes: bytes, num_threads: int = 2) -> dict:
    from keras_cmt.tflite.runner import LiteRTModel

    report = analyzer_report(model_bytes)
    delegation = LiteRTModel(model_bytes, num_threads=num_threads).delegation()
    flagged = gpu_incompatible_ops(report)
    return {
        "op_types": dict(Counter(re.findall(r"^\s+Op#\d+ (\w+)\(", report, flags=re.M)).most_common()),
        "gpu_compatible": not flagged,
        "gpu_incompatible": flagged,
        "gpu_incompatible_op_types": gpu_flagged_op_types(report),
        **delegation.as_dict(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m keras_cmt.tflite.compatibility", description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    try:
        with open(args.model, "rb") as f:
            data = f.read()
        result = check(data, args.threads)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    ok = not result["gpu_incompatible"] and result["nodes_on_default_kernels"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
