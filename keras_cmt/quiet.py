"""The quiet screen of keras_cmt's commands: their own lines, not the libraries' chatter (`--verbose` brings it back).

TensorFlow and LiteRT log from C++ straight to the process's stderr (CPU-feature and oneDNN notices, a CUDA
`failed call to cuInit` on machines without a GPU, the converter's `fully_quantize: ...`, LiteRT's `Created ...
XNNPACK delegate`), and the Python libraries warn about their own deprecations. TensorFlow reads its C++ log level
when it is first imported, and importing any `keras_cmt` module imports Keras, hence TensorFlow, before a command's
`main` runs; so `keras_cmt/__init__.py` imports inside `command_startup()`. It acts only when the process was
started as one of keras_cmt's commands (`python -m keras_cmt...` or one of the console scripts below) without
`--verbose`, and it never overrides a log level the user set in the environment. TensorFlow logs through absl,
which writes to stderr before anyone calls absl::InitializeLog() whatever the level, so the C++ lines of the imports,
the converter and LiteRT's interpreter are filtered out of file descriptor 2 around those calls. A program that imports
keras_cmt as a library keeps its logging as it was. Errors still reach the screen: each command reports its own
failure as one line, and an exception from a library propagates as before.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings

# setup.py's console scripts.
COMMANDS = ("keras-cmt", "keras-cmt-tflite", "cmt-train", "cmt-evaluate", "keras-cmt-tflite-benchmark")
# Where the Python-side chatter comes from (warnings are matched on the module that issues them).
LIBRARIES = (
    "tensorflow",
    "keras",
    "absl",
    "jax",
    "jaxlib",
    "torch",
    "ai_edge_litert",
    "h5py",
    "google",
    "matplotlib",
    "tf_keras",
    "numpy",
    "sklearn",
    "tensorflow_datasets",
    "mediapipe",
)
# Native stderr lines dropped in quiet mode: absl/glog-format records (TensorFlow logs through absl, which writes
# everything to stderr until absl::InitializeLog() is called, whatever TF_CPP_MIN_LOG_LEVEL says), the second line
# of TensorFlow's CPU-feature notice, LiteRT's INFO lines, the MLIR quantizer's settings line and JAX's CPU
# collectives (gloo) reporting its peers.
NATIVE_NOISE = re.compile(
    rb"^([IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]]+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: "
    rb"|INFO: "
    rb"|fully_quantize: \d+, inference_type: "
    rb"|\[Gloo\] Rank \d+ is connected to )"
)

_quiet = False


def started_as_command(orig_argv=None):
    """Whether this process is `python -m keras_cmt...` or one of keras_cmt's console scripts."""
    argv = list(sys.orig_argv if orig_argv is None else orig_argv)
    args = iter(argv[1:])
    for arg in args:  # the interpreter's own options come first, then -m MODULE, -c CODE or a script
        if arg == "-m":
            module = next(args, "")
            return module == "keras_cmt" or module.startswith("keras_cmt.")
        if arg == "-c":
            return False
        if arg in ("-W", "-X"):
            next(args, None)
        elif not arg.startswith("-"):
            return os.path.splitext(os.path.basename(arg))[0] in COMMANDS
    return False


def verbose_requested(args=None):
    """`--verbose` (or `--verbose=true|1`) among the arguments, or KERAS_CMT_VERBOSE=1 in the environment."""
    args = sys.argv[1:] if args is None else args
    if os.environ.get("KERAS_CMT_VERBOSE", "") in ("1", "true", "yes"):
        return True
    return any(a == "--verbose" or a.lower() in ("--verbose=true", "--verbose=1") for a in args)


VERBOSE_HELP = (
    "also show the libraries' log lines and warnings (TensorFlow's C++ logs, LiteRT's INFO lines, "
    "deprecations), hidden by default"
)


def add_verbose_argument(parser):
    """The `--verbose` switch of an argparse command line (read at import time by `verbose_requested`)."""
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def configure_for_command():
    """Quiet mode for a keras_cmt command started without `--verbose`; nothing otherwise."""
    if started_as_command() and not verbose_requested():
        enable()


def enable():
    """Hides the libraries' C++ log lines, Python warnings and INFO/WARNING logs (before TensorFlow is imported
    for the C++ part). Child processes inherit the environment part."""
    global _quiet
    _quiet = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    pattern = r"(%s)(\.|$)" % "|".join(LIBRARIES)
    warnings.filterwarnings("ignore", module=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("tensorflow", "absl", "jax", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


def is_quiet():
    return _quiet


@contextlib.contextmanager
def command_startup():
    """`configure_for_command()`, then (in quiet mode) the native stderr of the block filtered: the package's
    imports, where TensorFlow prints its start-up records."""
    configure_for_command()
    with native_stderr_filtered():
        yield


@contextlib.contextmanager
def native_stderr_filtered(noise=NATIVE_NOISE):
    """In quiet mode, the stderr of the block (C/C++ and Python alike) minus the lines `noise` matches; the rest
    is written back when the block ends, also when it raises. Outside quiet mode, nothing changes."""
    if not _quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured if not noise.match(line)]
            if kept:
                os.write(2, b"".join(kept))
