"""Adaptive instrumentation end to end over a real RabbitMQ broker (127.0.0.1:5672, guest/guest):
a collector, an API process (WSGI) calling a worker process over oslo.messaging RPC, the CLI
switching trace points, and the spans the collector receives from both processes.

Skipped, with the reason, when no broker answers. The test uses its own RPC exchange and topic,
unique per run, with auto-deleted queues: the broker may be shared with a real cloud.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

pytest.importorskip("oslo_messaging")
kombu = pytest.importorskip("kombu")

from bu_osprofiler.cmd.main import main as cli  # noqa: E402
from bu_osprofiler.collector.server import Collector  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RABBIT = "rabbit://guest:guest@127.0.0.1:5672/"
SERVERS = "GET /servers/{id}"
API, WORKER = "rpc-api", "rpc-worker"


def _rabbit_unreachable():
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            pass
    except OSError as exc:
        return "no RabbitMQ broker at 127.0.0.1:5672 (%s)" % exc
    try:
        with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=3) as c:
            c.connect()
    except Exception as exc:  # the port answers, but no usable broker / credentials
        return "RabbitMQ at 127.0.0.1:5672 refused guest/guest (%s)" % exc
    return None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    reason = _rabbit_unreachable()
    if reason:
        pytest.skip(reason)
    db = str(tmp_path_factory.mktemp("adaptive-rabbit") / "traces.db")
    col = Collector(db, udp_port=0, udp_binary_port=None, http_port=None, otlp_port=None,
                    query_port=0, commit_interval_s=0.05).start()
    control = "http://127.0.0.1:%d" % col.ports["query"]
    run = uuid.uuid4().hex[:12]
    common = [str(col.ports["udp_compact"]), control, RABBIT, "bu-adaptive-" + run,
              "bu-adaptive-topic-" + run]
    script = os.path.join(HERE, "adaptive_svc", "rpc_service.py")
    envvars = dict(os.environ, PYTHONWARNINGS="ignore")
    procs = []

    def spawn(role, name, ready):
        p = subprocess.Popen([sys.executable, script, role, name, *common], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=envvars)
        procs.append(p)
        line = p.stdout.readline()
        assert line.startswith(ready), "%s did not start: %r" % (name, line)
        return line

    try:
        spawn("worker", WORKER, "READY")
        api = "http://127.0.0.1:%s" % spawn("api", API, "PORT").split()[1]
        yield {"collector": col, "control": control, "api": api}
    finally:
        for p in procs:
            p.stdin.close()  # the worker stops its RPC server (its queues are auto-deleted)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.terminate()
                p.wait(10)
        col.stop()


def _names(store, trace_id):
    t = store.get_trace(trace_id)
    names = {}
    for s in t["spans"]:
        names.setdefault(t["processes"][s["processID"]]["serviceName"], []).append(
            s["operationName"])
    return t, names


def request(env, path, expect_error=False):
    """One request through the API (and over RPC to the worker); returns the
    {service: [span names]} of its trace once both processes' spans are stored."""
    mark = "m=" + uuid.uuid4().hex
    path, _, extra = path.partition("?")
    query = mark + ("&" + extra if extra else "")
    try:
        urllib.request.urlopen("%s%s?%s" % (env["api"], path, query), timeout=30).read()
        assert not expect_error
    except urllib.error.HTTPError:
        assert expect_error
    store = env["collector"].store
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ids = store.find_trace_ids(tags={"http.query": query}, limit=1)
        if ids:
            _, names = _names(store, ids[0])
            if len(names) == 2 and "rpc.call:handle" in names.get(WORKER, ()):
                time.sleep(0.2)  # spans of one process arrive in more than one datagram
                return _names(store, ids[0])[1]
        time.sleep(0.05)
    raise AssertionError("trace of request %s not stored with both processes" % query)


def until(env, path, pred, timeout=1.5):
    """Send requests until pred(names) holds; returns the seconds it took."""
    t0 = time.monotonic()
    while True:
        names = request(env, path)
        if pred(names):
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, names


def wait_reported(env, capsys, *ids):
    deadline = time.monotonic() + 10
    while True:
        assert cli(["tracepoints", "list", "--collector", env["control"], "--json"]) == 0
        out = capsys.readouterr().out
        if all('"%s"' % i in out for i in ids):
            return out
        assert time.monotonic() < deadline, out
        time.sleep(0.2)


def test_cli_switches_a_point_in_both_processes_over_rabbitmq(env, capsys):
    names = request(env, "/servers/%s" % uuid.uuid4())
    assert "step" in names[API] and "step" in names[WORKER]
    assert "rpc.call:handle" in names[API]  # the client span, and the server span in the worker
    wait_reported(env, capsys, WORKER + ".work@__main__:work", API + ".work@__main__:work",
                  "rpc.server@rpc")

    assert cli(["tracepoints", "disable", "--collector", env["control"], "--prefix", "step"]) == 0
    took = until(env, "/servers/1", lambda n: "step" not in n[API] and "step" not in n[WORKER])
    assert took < 1.5
    # everything else still arrives, in one trace across the broker
    names = request(env, "/servers/2")
    assert API + ".work" in names[API] and WORKER + ".work" in names[WORKER]

    assert cli(["tracepoints", "enable", "--collector", env["control"], "--prefix", "step"]) == 0
    took = until(env, "/servers/3", lambda n: "step" in n[API] and "step" in n[WORKER])
    assert took < 1.5


def test_request_type_rules_apply_across_the_rpc_boundary(env):
    # the worker never sees the URL: the type decided at the API's root travels in the RPC
    # context (baggage) through the broker
    assert cli(["tracepoints", "disable", "--collector", env["control"], "--prefix",
                WORKER + ".work", "--request-type", SERVERS]) == 0
    try:
        until(env, "/servers/%s" % uuid.uuid4(), lambda n: WORKER + ".work" not in n[WORKER])
        names = request(env, "/servers/%s" % uuid.uuid4())
        # the off point's child attaches to its enabled ancestor: the trace stays connected
        assert WORKER + ".inner" in names[WORKER] and API + ".work" in names[API]
        assert WORKER + ".work" in request(env, "/flavors/42")[WORKER]
    finally:
        assert cli(["tracepoints", "enable", "--collector", env["control"], "--prefix",
                    WORKER + ".work", "--request-type", SERVERS]) == 0
    until(env, "/servers/9", lambda n: WORKER + ".work" in n[WORKER])


def test_tail_keep_exports_error_traces_at_sampling_rate_zero_over_rabbitmq(env):
    url = env["control"] + "/api/tracepoints/state"
    old = json.loads(urllib.request.urlopen(url, timeout=5).read())
    state = dict(old, sampling={"GET /errors/{id}": 0.0}, tail={"errors": True, "slow_ms": None})
    put = urllib.request.Request(url, data=json.dumps(state).encode(), method="PUT")
    urllib.request.urlopen(put, timeout=5).read()
    try:
        time.sleep(1.0)  # both processes have polled
        store = env["collector"].store
        ok = urllib.request.urlopen("%s/errors/%s" % (env["api"], uuid.uuid4()),
                                    timeout=30).read().decode()
        # the worker fails: the error reaches both local roots (its RPC server span, and the
        # API's WSGI span through the RemoteError), so each process keeps its part
        names = request(env, "/errors/%s?fail" % uuid.uuid4(), expect_error=True)
        assert {"rpc.call:handle", "step", WORKER + ".work"} <= set(names[WORKER])
        assert {"wsgi", "rpc.call:handle", API + ".work"} <= set(names[API])
        # the healthy unsampled request (sent first) was freed, in both processes
        assert int(ok, 16) and store.get_trace(ok) is None
    finally:
        put = urllib.request.Request(url, data=json.dumps(old).encode(), method="PUT")
        urllib.request.urlopen(put, timeout=5).read()
