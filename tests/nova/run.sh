#!/usr/bin/env bash
# CI stage: unmodified Nova 34 from PyPI under bu-osprofiler-run (see tests/nova/nova_rpc.py).
# The virtualenv .nova-venv/ (git-ignored) is built once and reused while its stamp matches;
# this package is reinstalled into it on every run (no osprofiler is ever installed).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.nova-venv
NOVA_SPEC=${NOVA_SPEC:-nova==34.*}
STAMP="$NOVA_SPEC eventlet oslotest ddt testscenarios requests-mock wsgi-intercept openstack-placement psycopg2-binary python-novaclient gunicorn python=$(python3 -c 'import sys; print(sys.version.split()[0])')"
t0=$(date +%s)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$STAMP" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "$NOVA_SPEC" eventlet oslotest ddt testscenarios requests-mock wsgi-intercept \
        openstack-placement psycopg2-binary python-novaclient gunicorn
    echo "$STAMP" > "$VENV/.stamp"
fi
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . 2>/dev/null ||
    "$VENV/bin/pip" install -q --no-deps -e .
if "$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("osprofiler") is None)'; then
    echo "nova stage: a real osprofiler is installed in $VENV; refusing" >&2
    exit 1
fi
t1=$(date +%s)
echo "nova stage: virtualenv ready in $((t1 - t0)) s"

export PATH="$PWD/$VENV/bin:$PATH"
"$VENV/bin/python" tests/nova/nova_rpc.py check threading eventlet
BU_OSPROFILER_FORK_JOIN=1 "$VENV/bin/python" tests/nova/nova_rpc.py check threading eventlet
t2=$(date +%s)
echo "nova stage: RPC scenarios in $((t2 - t1)) s"

# Nova's own profiler-related unit tests (testtools runner, as Nova's stestr uses), with
# `import osprofiler` resolving to this package.
(cd "$VENV" && OS_NOVA_DISABLE_EVENTLET_PATCHING=1 bin/bu-osprofiler-run bin/python -m testtools.run \
    nova.tests.unit.test_profiler \
    nova.tests.unit.test_rpc.TestProfilerRequestContextSerializer \
    nova.tests.unit.test_rpc.TestRPC.test_get_client_profiler_enabled \
    nova.tests.unit.test_thread_pool_factory.SpawnOnTestCase \
    nova.tests.unit.test_thread_pool_factory.SerializeProfileInfoTestCase 2>&1 |
    grep -E "^(Ran|OK|FAILED|ERROR|FAIL:)" ; exit "${PIPESTATUS[0]}")
t3=$(date +%s)
echo "nova stage: Nova's profiler unit tests in $((t3 - t2)) s"

# The mini cloud (PostgreSQL on 127.0.0.1:5432 as postgres): with and without fork/join.
if "$VENV/bin/python" -c 'import psycopg2; psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")' 2>/dev/null; then
    "$VENV/bin/python" tests/nova/minicloud.py
    BU_OSPROFILER_FORK_JOIN=1 "$VENV/bin/python" tests/nova/minicloud.py
else
    echo "nova stage: mini cloud skipped: no PostgreSQL at 127.0.0.1:5432 (user postgres)" >&2
fi
t4=$(date +%s)
echo "nova stage: mini cloud in $((t4 - t3)) s; total $((t4 - t0)) s"
