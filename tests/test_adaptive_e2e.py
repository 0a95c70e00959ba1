"""Adaptive instrumentation end to end: a collector, two service processes (A calls B over HTTP),
the CLI switching trace points, and the spans the collector receives."""
import os
import subprocess
import sys
import time
import urllib.request
import urllib.error
import uuid

import pytest

from bu_osprofiler.cmd.main import main as cli
from bu_osprofiler.collector.server import Collector

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS = "GET /servers/{id}"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("adaptive") / "traces.db")
    col = Collector(db, udp_port=0, udp_binary_port=None, http_port=None, otlp_port=None,
                    query_port=0, commit_interval_s=0.05).start()
    control = "http://127.0.0.1:%d" % col.ports["query"]
    procs = []

    def spawn(*args):
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "adaptive_svc", "service.py"),
                              *args], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        line = p.stdout.readline()
        assert line.startswith("PORT"), line
        return "http://127.0.0.1:%s" % line.split()[1]

    try:
        b = spawn("svc-b", str(col.ports["udp_compact"]), control)
        a = spawn("svc-a", str(col.ports["udp_compact"]), control, b)
        yield {"collector": col, "control": control, "a": a, "db": db}
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        col.stop()


def request(env, path):
    """One request through A (and B); returns the {service: [span names]} of its trace."""
    mark = uuid.uuid4().hex
    path, _, extra = path.partition("?")
    query = "m=" + mark + ("&" + extra if extra else "")
    urllib.request.urlopen("%s%s?%s" % (env["a"], path, query), timeout=10).read()
    store = env["collector"].store
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ids = store.find_trace_ids(tags={"http.query": query}, limit=1)
        if ids:
            t = store.get_trace(ids[0])
            names = {}
            procs = t["processes"]
            for s in t["spans"]:
                names.setdefault(procs[s["processID"]]["serviceName"], []).append(
                    s["operationName"])
            if len(names) == 2 and sum(map(len, names.values())) >= 4:
                time.sleep(0.2)  # B's spans may arrive a little later than A's
                t = store.get_trace(ids[0])
                names = {}
                for s in t["spans"]:
                    names.setdefault(procs[s["processID"]]["serviceName"], []).append(
                        s["operationName"])
                return names
        time.sleep(0.05)
    raise AssertionError("trace of request %s not stored" % mark)


def until(env, path, pred, timeout=1.5):
    """Send requests until pred(names) holds; return seconds it took."""
    t0 = time.monotonic()
    while True:
        names = request(env, path)
        if pred(names):
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, names


def wait_reported(env, capsys, *ids):
    """Until every id is in the collector's listing (services report every few seconds)."""
    deadline = time.monotonic() + 10
    while True:
        assert cli(["tracepoints", "list", "--collector", env["control"], "--json"]) == 0
        out = capsys.readouterr().out
        if all('"%s"' % i in out for i in ids):
            return out
        assert time.monotonic() < deadline, out
        time.sleep(0.2)


def test_cli_switches_a_point_in_both_processes(env, capsys):
    names = request(env, "/servers/%s" % uuid.uuid4())
    assert "step" in names["svc-a"] and "step" in names["svc-b"]
    wait_reported(env, capsys, "svc-b.work@__main__:work", "svc-a.work@__main__:work")
    page = urllib.request.urlopen(env["control"] + "/tracepoints", timeout=10).read().decode()
    assert "<code>svc-b.work@__main__:work</code>" in page and ">disable</button>" in page
    assert " ms</td>" in page  # mean / p99 latency from the stored spans
    index = urllib.request.urlopen(env["control"] + "/", timeout=10).read().decode()
    assert 'href="/tracepoints"' in index  # the page is reachable from the trace list

    assert cli(["tracepoints", "disable", "--collector", env["control"], "--prefix", "step"]) == 0
    took = until(env, "/servers/1", lambda n: "step" not in n["svc-a"] and
                 "step" not in n["svc-b"])
    assert took < 1.5
    names = request(env, "/servers/2")
    # the disabled point's children attach to the nearest enabled ancestor: still one trace
    assert "svc-a.work" in names["svc-a"] and "svc-b.work" in names["svc-b"]

    assert cli(["tracepoints", "enable", "--collector", env["control"], "--prefix", "step"]) == 0
    until(env, "/servers/3", lambda n: "step" in n["svc-a"] and "step" in n["svc-b"])


def test_request_type_rule_applies_across_the_boundary(env):
    assert cli(["tracepoints", "disable", "--collector", env["control"], "--prefix", "svc-b.work",
                "--request-type", SERVERS]) == 0
    # B never sees A's URL: the type decided at A's root travels in baggage
    until(env, "/servers/%s" % uuid.uuid4(), lambda n: "svc-b.work" not in n["svc-b"])
    other = request(env, "/flavors/42")
    assert "svc-b.work" in other["svc-b"]
    assert "svc-b.inner" in request(env, "/servers/%s" % uuid.uuid4())["svc-b"]
    assert cli(["tracepoints", "enable", "--collector", env["control"], "--prefix", "svc-b.work",
                "--request-type", SERVERS]) == 0
    until(env, "/servers/9", lambda n: "svc-b.work" in n["svc-b"])


def test_analyze_finds_the_slow_step_and_suggests_its_point(env, capsys):
    # the slow step hides inside svc-a.work: switch its inner point off, make some requests slow
    request(env, "/servers/4")
    wait_reported(env, capsys, "svc-a.inner@trace")
    assert cli(["tracepoints", "disable", "--collector", env["control"],
                "svc-a.inner@trace"]) == 0
    until(env, "/servers/5", lambda n: "svc-a.inner" not in n["svc-a"])
    for i in range(24):
        request(env, "/images/%d%s" % (i, "?slow" if i % 3 == 0 else ""))
    # the collector learns the disabled point's state from the next report
    time.sleep(5.5)
    capsys.readouterr()
    assert cli(["analyze", "--db", env["db"], "--collector", env["control"], "--json",
                "--apply"]) == 0
    out = capsys.readouterr().out
    import json
    report = json.loads(out[:out.rindex("}") + 1])
    images = [r for r in report["request_types"] if r["request_type"] == "GET /images/{id}"][0]
    assert images["spans"][0]["name"] == "svc-a.work"
    assert images["spans"][0]["variance_explained"] > 0.5
    assert "svc-a.inner@trace" in [s["id"] for s in images["suggest"]]
    # --apply enabled it for that request type
    until(env, "/images/77", lambda n: "svc-a.inner" in n["svc-a"], timeout=2)


def test_tail_keep_exports_error_traces_at_sampling_rate_zero(env):
    import json
    url = env["control"] + "/api/tracepoints/state"
    state = json.loads(urllib.request.urlopen(url, timeout=5).read())
    state["sampling"] = {"GET /errors/{id}": 0.0}
    state["tail"] = {"errors": True, "slow_ms": None}
    req = urllib.request.Request(url, data=json.dumps(state).encode(), method="PUT")
    urllib.request.urlopen(req, timeout=5).read()
    time.sleep(1.0)  # every process has polled
    store = env["collector"].store

    def send(query):
        with pytest.raises(urllib.error.HTTPError) if "fail" in query else _nothing():
            urllib.request.urlopen("%s/errors/%s?%s" % (env["a"], uuid.uuid4(), query),
                                   timeout=10).read()

    ok, bad = "m=" + uuid.uuid4().hex, "fail&m=" + uuid.uuid4().hex
    send(ok)
    send(bad)
    deadline = time.monotonic() + 10
    while not store.find_trace_ids(tags={"http.query": bad}, limit=1):
        assert time.monotonic() < deadline, "error trace not kept"
        time.sleep(0.05)
    time.sleep(0.5)
    t = store.get_trace(store.find_trace_ids(tags={"http.query": bad}, limit=1)[0])
    services = {t["processes"][s["processID"]]["serviceName"] for s in t["spans"]}
    names = {s["operationName"] for s in t["spans"]}
    # A's local part is kept; B had decided "not sampled" and saw no error: its part is gone
    assert services == {"svc-a"} and {"wsgi", "step", "svc-a.work"} <= names
    assert all(s["flags"] & 1 for s in t["spans"])
    assert not store.find_trace_ids(tags={"http.query": ok}, limit=1)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_bad_control_input_is_a_clear_cli_error(env, capsys):
    assert cli(["tracepoints", "disable", "--collector", env["control"], "nope@x"]) == 1
    assert "unknown tracepoint id" in capsys.readouterr().err
    assert cli(["tracepoints", "disable", "--collector", "http://127.0.0.1:1", "--prefix",
                "x"]) == 1
    assert "unreachable" in capsys.readouterr().err
    req = urllib.request.Request(env["control"] + "/api/tracepoints/state", data=b"{nope",
                                 method="PUT")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 400
    # services keep running with the last good state
    assert "svc-b.work" in request(env, "/flavors/1")["svc-b"]
