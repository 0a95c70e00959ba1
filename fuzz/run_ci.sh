#!/usr/bin/env bash
# Short, bounded fuzzing run for CI: every available target for FUZZ_SECONDS (default 10) each.
#
#   bash fuzz/run_ci.sh [TARGET...]
#
# Builds the extension into build-fuzz/ and fuzzes it from .fuzz-venv/ (atheris only; the
# project is imported from the build, never from an editable install).  With clang on PATH
# (apt-get install clang) the build is coverage-instrumented C with ASan+UBSan
# (-fsanitize=fuzzer-no-link + BU_OSPROFILER_SANITIZE=1, atheris' asan_with_fuzzer.so
# preloaded): coverage-guided fuzzing of the C parsers themselves.  Without clang it is a plain
# gcc build and only the Python side gives coverage feedback.  Seeds: fuzz/corpus/TARGET/ and
# fuzz/regressions/TARGET/.  A crash or a violated property fails the run and leaves the input
# in fuzz/crashes/ (replay: `python fuzz/replay.py TARGET FILE`; then add it to
# fuzz/regressions/TARGET/ once fixed).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
SECS=${FUZZ_SECONDS:-10}
VENV=${FUZZ_VENV:-$ROOT/.fuzz-venv}
BUILD=$ROOT/build-fuzz

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || { echo "[fuzz] cannot create $VENV"; exit 1; }
fi
if ! "$VENV/bin/python" -c 'import atheris' 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check setuptools wheel atheris || {
        echo "[fuzz] atheris unavailable: skipped"; exit 0; }
fi
SITE=$("$VENV/bin/python" -c 'import atheris, os; print(atheris.path())')
ENVS=()
if [ "${FUZZ_NO_CLANG:-0}" != 1 ] && command -v clang >/dev/null 2>&1 &&
        [ -e "$SITE/asan_with_fuzzer.so" ]; then
    MODE="clang + ASan/UBSan, C coverage"
    BUILD_ENV=(CC=clang LDSHARED="clang -shared" CFLAGS=-fsanitize=fuzzer-no-link
               BU_OSPROFILER_SANITIZE=1)
    ENVS=(PYTHONMALLOC=malloc LD_PRELOAD="$SITE/asan_with_fuzzer.so"
          ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:quarantine_size_mb=64
          UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1)
else
    MODE="gcc, Python coverage only (install clang for C coverage + ASan)"
    BUILD_ENV=()
fi
echo "[fuzz] building into build-fuzz/ ($MODE)"
env "${BUILD_ENV[@]}" "$VENV/bin/python" setup.py -q build --build-base "$BUILD" --force \
    > "$BUILD.log" 2>&1 || { tail -30 "$BUILD.log"; exit 1; }
LIB=$(ls -d "$BUILD"/lib.*/ | head -n1)
LIB=${LIB%/}

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cd "$BUILD" && PYTHONPATH="$LIB" "$VENV/bin/python" \
                           "$ROOT/fuzz/fuzz.py" --list | awk '{print $1}')
fi
mkdir -p fuzz/crashes
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failed=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$WORK/$t"
    seeds=()
    for d in "$ROOT/fuzz/corpus/$t" "$ROOT/fuzz/regressions/$t"; do
        [ -d "$d" ] && seeds+=("$d")
    done
    # -timeout: one input taking >10 s is a hang; -rss_limit_mb bounds memory (a flood is a
    # bug); -keep_seed: keep every seed to mutate even when it adds no new coverage.
    (cd "$BUILD" && env PYTHONPATH="$LIB" "${ENVS[@]}" \
        timeout --kill-after=10 $((SECS + 120)) "$VENV/bin/python" "$ROOT/fuzz/fuzz.py" "$t" \
        -max_total_time="$SECS" -max_len=4096 -timeout=10 -rss_limit_mb=4096 -keep_seed=1 \
        -artifact_prefix="$ROOT/fuzz/crashes/$t-" -print_final_stats=1 \
        "$WORK/$t" "${seeds[@]}") > "$WORK/$t.log" 2>&1
    rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/$t.log" | grep -o '[0-9]*$')
    cov=$(grep -o 'cov: [0-9]*' "$WORK/$t.log" | tail -n1)
    if grep -q 'skipped (' "$WORK/$t.log"; then
        echo "[fuzz] $t: $(grep -o 'skipped (.*' "$WORK/$t.log")"
    elif ! grep -q "fuzzing $LIB" "$WORK/$t.log"; then
        echo "[fuzz] $t: FAILED: did not fuzz the build in $LIB"
        tail -20 "$WORK/$t.log"
        failed=1
    elif [ $rc -ne 0 ]; then
        echo "[fuzz] $t: FAILED (rc=$rc)"
        grep -v '^#\|^INFO\|^MS:\|^"' "$WORK/$t.log" | tail -40
        failed=1
    else
        echo "[fuzz] $t: ok, ${runs:-?} inputs in ${SECS} s${cov:+, $cov}"
    fi
done
exit $failed
