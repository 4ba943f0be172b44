#!/usr/bin/env bash
# Runs keras_cmt's model tests (the all_backends tests: the model, its weights and inference) with Bazel.
#
#     tools/bazel_test.sh                      # TensorFlow (the default backend) + the check of BUILD's test list
#     tools/bazel_test.sh //:model_tests       # all of it on TensorFlow, JAX and PyTorch (about 3x as long)
#     tools/bazel_test.sh //:test_cmt_jax      # any targets of BUILD; extra Bazel flags go after them
#
# Needs Debian's Bazel 4.2.3 (bazel-bootstrap, plus bazel-bootstrap-source for its offline stand-ins of rules_cc and
# rules_java; nothing is downloaded) and the interpreter named in BUILD (PYTHON3) with the project's test
# dependencies (pip install -e '.[test]'). Exits with Bazel's status.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v bazel >/dev/null 2>&1 || [ ! -d /usr/src/bazel-bootstrap/mock_repos/rules_cc ]; then
    echo "Bazel 4.2.3 and its offline rule stand-ins are missing. On Debian 12 install them with:" >&2
    echo "    sudo apt-get install -y bazel-bootstrap bazel-bootstrap-source" >&2
    exit 2
fi

python3_path=$(sed -n 's/^PYTHON3 = "\(.*\)"$/\1/p' BUILD)
if [ -z "$python3_path" ] || ! "$python3_path" -c 'import keras, pytest' >/dev/null 2>&1; then
    echo "BUILD's PYTHON3 (${python3_path:-unset}) is not an interpreter with keras and pytest installed." >&2
    echo "Set it to yours, e.g. $(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo /path/to/python3)" >&2
    exit 2
fi

targets=()
while [ $# -gt 0 ] && [[ "$1" != -* ]]; do
    targets+=("$1")
    shift
done
[ ${#targets[@]} -gt 0 ] || targets=(//:model_test_list_test //:model_tests_tensorflow)

# --jobs/--local_test_jobs=2: at most two tests at a time (each a TensorFlow, JAX or PyTorch process) on two cores.
# --nocache_test_results: the optional ../shared/fixtures are read from outside Bazel's inputs, so a cached result
#   could hide a change there; every run runs the tests.
# The rest (sandbox, no bazel-* symlinks) is in .bazelrc; test logs: $(bazel info bazel-testlogs)/<target>/test.log.
start=$(date +%s)
status=0
bazel test "${targets[@]}" \
    --jobs=2 \
    --local_test_jobs=2 \
    --nocache_test_results \
    --test_output=errors \
    --test_summary=short \
    "$@" || status=$?
echo "tools/bazel_test.sh: bazel test exited with status $status after $(( $(date +%s) - start )) s"
exit $status
