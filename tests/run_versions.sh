#!/usr/bin/env bash
# The C-heavy tests on other CPython versions (the full suite runs on the default python3).
#
#   bash tests/run_versions.sh [3.9 3.10 ...] [-- pytest args...]
#
# Versions default to $BU_PY_VERSIONS or "3.9 3.10 3.12 3.13"; an interpreter is found with
# `pyenv which pythonX.Y`, ~/.pyenv/versions/X.Y*/bin/python or pythonX.Y on PATH (a missing one
# fails the run unless BU_PY_OPTIONAL=1). Per version: a cached virtualenv in .ci-pyenvs/pyXY
# (git-ignored; reinstalled only when pyproject.toml changes), the extension built into
# .ci-pyenvs/build-pyXY (never the in-place build), and pytest over the C-heavy tests from
# inside that build dir so the source tree cannot shadow it. Bounded by VERSIONS_TIMEOUT s each.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=$ROOT/.ci-pyenvs
TIMEOUT=${VERSIONS_TIMEOUT:-600}
versions=()
pyargs=()
while [ "$#" -gt 0 ]; do
    if [ "$1" = "--" ]; then
        shift
        pyargs=("$@")
        break
    fi
    versions+=("$1")
    shift
done
if [ "${#versions[@]}" -eq 0 ]; then
    read -r -a versions <<<"${BU_PY_VERSIONS:-3.9 3.10 3.12 3.13}"
fi
if [ "${#pyargs[@]}" -eq 0 ]; then
    # The tests that drive _core directly, encode/decode on the wire, or stress re-entrancy
    # (the reference-leak loops take minutes: they run on the default version and under ASan).
    for pat in test_reentrancy test_span test_context test_decorator test_trace_point test_profiler \
               test_propagation_codecs test_propagation_base test_export_spans test_export_thrift test_opentracing \
               test_export_udp_routes test_fuzz_regressions test_collector_otlp_decode; do
        for f in "$ROOT"/tests/${pat}*.py; do
            [ -e "$f" ] && pyargs+=("$f")
        done
    done
    pyargs+=("$ROOT/tests/test_fork_branch_c.py")  # fork / join in C (ext/branch.c, ext/branch_task.c)
fi

find_python() {
    local v=$1 p
    p=$(pyenv which "python$v" 2>/dev/null) && [ -x "$p" ] && { echo "$p"; return; }
    for p in "$HOME"/.pyenv/versions/"$v".*/bin/python "$HOME"/.pyenv/versions/"$v"/bin/python; do
        [ -x "$p" ] && { echo "$p"; return; }
    done
    command -v "python$v" 2>/dev/null || return 1
}

stamp=$(sha1sum pyproject.toml | cut -c1-12)
rc=0
for v in "${versions[@]}"; do
    tag=py${v/./}
    if ! py=$(find_python "$v"); then
        if [ "${BU_PY_OPTIONAL:-0}" = 1 ]; then
            echo "[$tag] no python$v: skipped"
            continue
        fi
        echo "[$tag] no python$v found" >&2
        rc=1
        continue
    fi
    venv=$CACHE/$tag
    start=$(date +%s)
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$venv"
        "$py" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
        # the `test` extra of pyproject.toml, without installing the project itself
        mapfile -t deps < <(sed -n '/^test = \[/,/^\]/p' pyproject.toml | grep -o '"[^"]*"' | tr -d '"')
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "${deps[@]}"
        echo "$stamp" >"$venv/.stamp"
    fi
    build=$CACHE/build-$tag
    echo "[$tag] building with $("$venv/bin/python" -V)"
    if ! "$venv/bin/python" setup.py -q build --build-base "$build" >"$CACHE/build-$tag.log" 2>&1; then
        cat "$CACHE/build-$tag.log" >&2
        rc=1
        continue
    fi
    lib=$(ls -d "$build"/lib.*/ | head -n1)
    lib=${lib%/}
    if ! (cd "$build" && PYTHONPATH="$lib" timeout --signal=INT --kill-after=30 "$TIMEOUT" \
            "$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" "${pyargs[@]}"); then
        rc=1
    fi
    echo "[$tag] $(( $(date +%s) - start )) s"
done
exit $rc
