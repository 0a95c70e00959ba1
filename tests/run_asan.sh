#!/usr/bin/env bash
# ASan/UBSan variant of the test suite (the C core is always also tested under the sanitizers).
#
#   bash tests/run_asan.sh [pytest args...]      (default: the C-heavy tests, see below)
#
# Builds the extension with BU_OSPROFILER_SANITIZE=1 into build-asan/ (never touching the
# in-place build or any other virtualenv), installs the test dependencies into .asan-venv/, and
# runs pytest against the sanitized build with PYTHONMALLOC=malloc (so ASan sees every Python
# object) and libasan preloaded (the interpreter itself is not instrumented).  Any ASan report or
# UBSan finding aborts the run with a non-zero status.  Bounded by ASAN_TIMEOUT seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${ASAN_VENV:-$ROOT/.asan-venv}
BUILD=$ROOT/build-asan
TIMEOUT=${ASAN_TIMEOUT:-1200}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
# the `test` extra of pyproject.toml, without installing the project itself
mapfile -t DEPS < <("$VENV/bin/python" - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["test"]))
PY
)
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${DEPS[@]}"

echo "[asan] building with -fsanitize=address,undefined into $BUILD"
BU_OSPROFILER_SANITIZE=1 BU_OSPROFILER_DEBUG=${BU_OSPROFILER_DEBUG:-1} \
    "$VENV/bin/python" setup.py -q build --build-base "$BUILD" --force >/dev/null
LIB=$(ls -d "$BUILD"/lib.*/ | head -n1)
LIB=${LIB%/}

LIBASAN=$(gcc -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ]; then
    echo "[asan] libasan.so not found (gcc -print-file-name=libasan.so)" >&2
    exit 2
fi
export PYTHONPATH="$LIB"
export PYTHONMALLOC=malloc
export LD_PRELOAD="$LIBASAN"
# Python itself "leaks" at exit by design; memory errors and UB are what we want here.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export BU_OSPROFILER_ASAN=1

# Run from inside the build dir so the source tree's own bu_osprofiler/ cannot shadow the build.
cd "$BUILD"
CORE=$("$VENV/bin/python" -c 'import bu_osprofiler._core as c; print(c.__file__)')
case "$CORE" in
    "$LIB"/*) echo "[asan] testing $CORE" ;;
    *) echo "[asan] wrong module imported: $CORE" >&2; exit 2 ;;
esac

if [ "$#" -gt 0 ]; then
    ARGS=("$@")
else
    # The C-heavy tests: everything that drives _core directly or encodes/decodes on the wire.
    ARGS=()
    for pat in test_reentrancy test_leaks test_refleaks test_decorator test_core test_record test_buffer test_ids test_sampler test_span \
               test_context test_trace test_profiler test_propagation test_thrift test_jaeger \
               test_otlp test_export test_reporter test_collector_decode test_opentracing test_fuzz_regressions \
               test_collector_otlp_decode \
               test_fork test_faults; do
        for f in "$ROOT"/tests/${pat}*.py; do
            [ -e "$f" ] && ARGS+=("$f")
        done
    done
    ARGS+=("$ROOT/tests/test_adaptive.py")  # tracepoint switches and the tail store (C)
    # fork / join in C (ext/branch.c, ext/branch_task.c): tests/test_fork_branch_c.py, matched by test_fork above
    # log correlation (LogIds, records into span logs); not test_logging_view (chromium)
    [ -e "$ROOT/tests/test_logging.py" ] && ARGS+=("$ROOT/tests/test_logging.py")
fi
echo "[asan] pytest ${ARGS[*]##*/}"
timeout --signal=INT --kill-after=30 "$TIMEOUT" \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" "${ARGS[@]}"
