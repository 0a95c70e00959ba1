#!/usr/bin/env bash
# Short, bounded fuzzing run for CI: every available target for FUZZ_SECONDS (default 10) each.
#
#   bash fuzz/run_ci.sh [TARGET...]
#
# Uses $PYTHON (default: python3 on PATH, i.e. the active virtualenv with bu_osprofiler
# installed) and installs atheris into it if missing.  Seeds come from fuzz/corpus/TARGET/ and
# fuzz/regressions/TARGET/; the working corpus lives in a temporary directory.  A crash or a
# violated property fails the run and leaves the input in fuzz/crashes/ (replay it with
# `python fuzz/replay.py TARGET FILE`, then move it to fuzz/regressions/TARGET/).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SECS=${FUZZ_SECONDS:-10}
if ! "$PY" -c 'import atheris' 2>/dev/null; then
    "$PY" -m pip install -q --disable-pip-version-check atheris || {
        echo "[fuzz] atheris unavailable: skipped"; exit 0; }
fi
if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <("$PY" fuzz/fuzz.py --list | awk '{print $1}')
fi
mkdir -p fuzz/crashes
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failed=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$WORK/$t"
    seeds=()
    for d in fuzz/corpus/$t fuzz/regressions/$t; do
        [ -d "$d" ] && seeds+=("$d")
    done
    start=$(date +%s)
    # -timeout: one input taking >10 s is a hang; -rss_limit_mb bounds memory (a flood is a bug);
    # -keep_seed: the C parsers give no coverage feedback, so keep every (valid) seed to mutate
    timeout --kill-after=10 $((SECS + 60)) "$PY" fuzz/fuzz.py "$t" \
        -max_total_time="$SECS" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -keep_seed=1 \
        -artifact_prefix="fuzz/crashes/$t-" -print_final_stats=1 \
        "$WORK/$t" "${seeds[@]}" > "$WORK/$t.log" 2>&1
    rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/$t.log" | grep -o '[0-9]*$')
    if grep -q 'skipped (' "$WORK/$t.log"; then
        echo "[fuzz] $t: $(grep -o 'skipped (.*' "$WORK/$t.log")"
    elif [ $rc -ne 0 ]; then
        echo "[fuzz] $t: FAILED (rc=$rc) after $(( $(date +%s) - start )) s"
        grep -v '^#\|^INFO\|^MS:\|^"' "$WORK/$t.log" | tail -40
        failed=1
    else
        echo "[fuzz] $t: ok, ${runs:-?} inputs in ${SECS} s"
    fi
done
exit $failed
