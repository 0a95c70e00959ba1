"""Adaptive instrumentation in one process: registry, switches, request types, tail keep, the
file control source and bad control input."""
import json
import logging
import re
import time

import pytest

import bu_osprofiler
from bu_osprofiler import _core, profiler
from bu_osprofiler.adaptive import control, parse_state, apply_state, registry, route_template
from bu_osprofiler.adaptive.rules import State


@pytest.fixture(autouse=True)
def memory():
    bu_osprofiler.configure("adaptive-test", "memory://")
    apply_state(State())
    bu_osprofiler.clear_finished_spans()
    yield
    apply_state(State())
    control.stop()


@profiler.trace("ad.leaf")
def leaf(fail=False):
    if fail:
        raise KeyError("boom")
    return 1


@profiler.trace("ad.mid")
def mid(fail=False):
    with profiler.Trace("ad.named"):
        return leaf(fail)


def run(fail=False, rtype=None):
    root = _core.start_span("root")
    if rtype:
        _core.set_request_type(root, rtype)
    tok = _core.activate(root)
    try:
        mid(fail)
    except KeyError:
        root.set_tag("error", True)
    finally:
        _core.deactivate(tok)
        root.finish()
    spans = {s.operation_name: s for s in bu_osprofiler.finished_spans()}
    bu_osprofiler.clear_finished_spans()
    return spans


def test_registry_lists_points_with_ids_places_and_counters():
    run()
    pts = {p["id"]: p for p in bu_osprofiler.tracepoints()}
    leaf_id = "ad.leaf@%s:leaf" % __name__
    assert pts[leaf_id]["kind"] == "function" and pts[leaf_id]["file"] == __file__
    assert pts[leaf_id]["line"] == leaf.__wrapped__.__code__.co_firstlineno
    assert "ad.named@trace" in pts and pts["ad.named@trace"]["kind"] == "trace"
    before = pts[leaf_id]["hits"], pts[leaf_id]["sampled_hits"]
    leaf()  # untraced call: a hit, not a sampled hit
    pts = {p["id"]: p for p in bu_osprofiler.tracepoints()}
    assert (pts[leaf_id]["hits"], pts[leaf_id]["sampled_hits"]) == (before[0] + 1, before[1])


def test_disabled_points_children_attach_to_the_nearest_enabled_ancestor():
    apply_state(parse_state({"rules": [{"enabled": False, "prefix": "ad.mid"},
                                       {"enabled": False, "id": "ad.named@trace"}]}))
    s = run()
    assert set(s) == {"root", "ad.leaf"}
    assert s["ad.leaf"].parent_id == s["root"].span_id
    apply_state(State())
    assert set(run()) == {"root", "ad.mid", "ad.named", "ad.leaf"}


def test_module_rule_and_last_match_wins():
    apply_state(parse_state({"rules": [{"enabled": False, "module": __name__},
                                       {"enabled": True, "id": "ad.leaf@%s:leaf" % __name__}]}))
    assert set(run()) == {"root", "ad.named", "ad.leaf"}


def test_per_request_type_switch():
    apply_state(parse_state({"rules": [
        {"enabled": False, "prefix": "ad.leaf"},
        {"enabled": True, "prefix": "ad.leaf", "request_type": "GET /a/{id}"}]}))
    assert "ad.leaf" in run(rtype="GET /a/{id}")
    assert "ad.leaf" not in run(rtype="GET /b")
    assert "ad.leaf" not in run()


def test_route_template():
    assert route_template("/v2.1/servers/7c9e6679-7425-40de-944b-e07fc1f90ae7/action") == \
        "/v2.1/servers/{id}/action"
    assert route_template("/flavors/42") == "/flavors/{id}"
    assert route_template("/images/detail") == "/images/detail"


def test_request_type_sampling_rate_at_the_root():
    from bu_osprofiler.adaptive.registry import at_root
    apply_state(parse_state({"sampling": {"GET /never": 0.0, "GET /always": 1.0}}))
    _core.set_sampler("const", 0)
    try:
        for rt, expect in (("GET /never", False), ("GET /always", True)):
            root = _core.start_span("root")
            at_root(root, rt, True)
            assert root.sampled is expect
            assert root.get_baggage_item(registry.REQUEST_TYPE_KEY) == rt
            root.finish()
    finally:
        _core.set_sampler("const", 1)


def test_tail_keeps_error_and_slow_traces_at_sampling_rate_zero():
    _core.set_sampler("const", 0)
    try:
        apply_state(parse_state({"tail": {"errors": True, "slow_ms": 10_000}}))
        assert run() == {}
        kept = run(fail=True)
        assert set(kept) == {"root", "ad.mid", "ad.named", "ad.leaf"}
        assert kept["ad.leaf"].tags["error"] is True and kept["root"].flags & 1
        assert kept["ad.leaf"].parent_id == kept["ad.named"].span_id
        apply_state(parse_state({"tail": {"slow_ms_by_type": {"GET /slow": 0}}}))
        assert set(run(rtype="GET /slow")) == {"root", "ad.mid", "ad.named", "ad.leaf"}
        assert run(rtype="GET /fast") == {}
        st = bu_osprofiler.stats()
        assert st["tail_kept_traces"] >= 2 and st["tail_dropped_traces"] >= 2
        assert st["tail_held_traces"] == 0 and st["tail_held_bytes"] == 0
    finally:
        _core.set_sampler("const", 1)
        apply_state(State())


def test_tail_store_is_bounded():
    _core.set_sampler("const", 0)
    try:
        _core.set_tail(errors=True, max_traces=1, max_bytes=1024)
        r1 = _core.start_span("r1")
        r2 = _core.start_span("r2")  # over max_traces: not held
        big = _core.start_span("big", child_of=r1)
        big.set_tag("x", "y" * 4000)
        big.finish()  # over max_bytes: dropped
        r2.finish()
        r1.set_tag("error", True)
        r1.finish()
        names = [s.operation_name for s in bu_osprofiler.finished_spans()]
        assert names == ["r1"]
        st = _core.tail_stats()
        assert st["tail_overflow_traces"] >= 1 and st["tail_overflow_spans"] >= 1
    finally:
        _core.set_sampler("const", 1)
        _core.set_tail(max_traces=4096, max_bytes=16 << 20)


def test_file_source_and_bad_input_keep_the_last_good_state(tmp_path, caplog):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 1, "rules": [{"enabled": False,
                                                          "prefix": "ad.leaf"}]}))
    c = control.start(str(path), "adaptive-test", interval=0.05)
    assert "ad.leaf" not in run()
    with caplog.at_level(logging.WARNING):
        path.write_text("{not json")
        time.sleep(0.3)
        assert "ad.leaf" not in run()  # still the last good state
        path.write_text(json.dumps({"rules": [{"enabled": "no", "prefix": "x"}]}))
        time.sleep(0.3)
        assert "ad.leaf" not in run()
    assert "keeping the last good state" in caplog.text
    path.write_text(json.dumps({"version": 2, "rules": []}))
    deadline = time.monotonic() + 2
    while "ad.leaf" not in run():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert c.is_alive()


def test_unreachable_collector_is_a_warning_not_a_failure(caplog):
    from bu_osprofiler import _log
    _log.reset()
    with caplog.at_level(logging.WARNING):
        bu_osprofiler.configure("adaptive-test", "memory://", control="http://127.0.0.1:1",
                                control_interval=0.05)
    assert "control state unavailable" in caplog.text
    assert "ad.leaf" in run()


@pytest.mark.parametrize("doc, msg", [
    ([], "JSON object"), ({"rules": [{"enabled": True}]}, "exactly one"),
    ({"rules": [{"enabled": 1, "id": "x"}]}, "true or false"),
    ({"sampling": {"x": 2}}, "within [0, 1]"), ({"tail": {"slow_ms": -1}}, "milliseconds"),
    ({"bogus": 1}, "unknown control state keys")])
def test_parse_state_errors(doc, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        parse_state(doc)


def test_cli_edits_a_local_state_file_the_service_follows(tmp_path, capsys):
    from bu_osprofiler.cmd.main import main as cli
    path = str(tmp_path / "control.json")
    control.start(path, "adaptive-test", interval=0.05)
    assert cli(["tracepoints", "disable", "--file", path, "--prefix", "ad.mid",
                "--request-type", "GET /x"]) == 0
    deadline = time.monotonic() + 2
    while "ad.mid" in run(rtype="GET /x"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "ad.mid" in run(rtype="GET /y")
    assert cli(["tracepoints", "list", "--file", path]) == 0
    assert '"request_type": "GET /x"' in capsys.readouterr().out
    assert cli(["tracepoints", "enable", "--file", path]) == 1
    assert "name what to enable" in capsys.readouterr().err
    with open(path, "w") as f:
        f.write("[1, 2]")
    assert cli(["tracepoints", "enable", "--file", path, "--prefix", "x"]) == 1
    assert "JSON object" in capsys.readouterr().err


def test_analyze_report_renders_text_and_html():
    from bu_osprofiler.adaptive.analyze import analyze, render_html, render_text

    def trace(i, slow):
        base = 1_700_000_000_000_000 + i * 10_000_000
        d = 50_000 if slow else 1_000
        return {"traceID": "%032x" % (i + 1), "processes": {"p1": {"serviceName": "api"}},
                "spans": [
                    {"traceID": "%032x" % (i + 1), "spanID": "%016x" % 1, "references": [],
                     "operationName": "wsgi", "startTime": base, "duration": d + 2_000,
                     "processID": "p1", "tags": [{"key": "request.type", "value": "GET /a"}]},
                    {"traceID": "%032x" % (i + 1), "spanID": "%016x" % 2,
                     "references": [{"refType": "CHILD_OF", "spanID": "%016x" % 1}],
                     "operationName": "work", "startTime": base + 1_000, "duration": d,
                     "processID": "p1", "tags": [{"key": "name", "value": "app.mod.work"}]}]}
    report = analyze([trace(i, i % 4 == 0) for i in range(20)],
                     [{"id": "db@app.mod:q", "name": "db", "module": "app.mod",
                       "enabled": False, "hits": 9, "service": "api"},
                      {"id": "x@other:f", "name": "x", "module": "other", "enabled": False}])
    (rt,) = report["request_types"]
    assert rt["request_type"] == "GET /a" and rt["traces"] == 20
    assert rt["latency_us"]["p50"] == 3_000 and rt["latency_us"]["max"] == 52_000
    assert rt["spans"][0]["name"] == "work" and rt["spans"][0]["variance_explained"] > 0.99
    assert [s["id"] for s in rt["suggest"]] == ["db@app.mod:q"]
    assert "-> enable db@app.mod:q" in render_text(report)
    page = render_html(report)
    assert "<svg" in page and "GET /a" in page and sum(c for _, _, c in rt["histogram"]) == 20


def test_collector_control_state_persists_and_rejects_bad_input(tmp_path):
    import urllib.error
    import urllib.request

    from bu_osprofiler.collector.server import Collector

    def http(col, method, path, body=None, headers=None):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (col.ports["query"], path),
                                     data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    db = str(tmp_path / "t.db")
    kw = dict(udp_port=None, udp_binary_port=None, http_port=None, otlp_port=None, query_port=0)
    with Collector(db, **kw) as col:
        doc = {"rules": [{"enabled": False, "prefix": "db"}], "tail": {"errors": True}}
        code, state = http(col, "PUT", "/api/tracepoints/state", json.dumps(doc).encode())
        assert code == 200 and state["version"] == 1
        assert http(col, "PUT", "/api/tracepoints/state", b'{"rules": 3}')[0] == 400
        assert http(col, "POST", "/api/tracepoints/rules", b"{",
                    {"Content-Type": "application/json"})[0] == 400
        code, err = http(col, "POST", "/api/tracepoints/rules",
                         json.dumps({"rules": [{"enabled": True, "id": "nope@x"}]}).encode())
        assert code == 404 and "unknown tracepoint id" in err["error"]
        assert http(col, "POST", "/api/tracepoints/report", b'{"service": 1}')[0] == 400
        assert http(col, "GET", "/api/tracepoints/nothing")[0] == 404
    with Collector(db, **kw) as col:  # the desired state survives a restart
        code, state = http(col, "GET", "/api/tracepoints/state?service=x")
        assert code == 200 and state["version"] == 1 and state["tail"]["errors"] is True
        assert state["rules"] == [{"enabled": False, "prefix": "db"}]


def test_wsgi_entry_switch_and_request_type():
    from bu_osprofiler import web

    seen = {}

    def app(environ, start_response):
        seen["headers"] = web.get_trace_id_headers()
        leaf()
        start_response("200 OK", [])
        return [b"ok"]

    mw = web.WsgiMiddleware(app, enabled=True, trust_incoming="always")
    caller = _core.start_span("caller")

    def request(path):
        bu_osprofiler.clear_finished_spans()
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.url_scheme": "http",
                   "SERVER_NAME": "x", "SERVER_PORT": "80"}
        from bu_osprofiler import propagation
        environ.update(("HTTP_" + k.upper().replace("-", "_"), v)
                       for k, v in propagation.inject(caller, {}).items())
        b"".join(mw(environ, lambda s, h, e=None: None))
        return {s.operation_name: s for s in bu_osprofiler.finished_spans()}

    spans = request("/servers/123")
    assert spans["wsgi"].tags["request.type"] == "GET /servers/{id}"
    assert spans["ad.leaf"].parent_id == spans["wsgi"].span_id
    apply_state(parse_state({"rules": [{"enabled": False, "id": "wsgi@wsgi"}]}))
    spans = request("/servers/124")
    assert "wsgi" not in spans and spans["ad.leaf"].parent_id == caller.span_id
    assert "%x" % caller.span_id in seen["headers"]["uber-trace-id"]


def test_named_points_registry_is_bounded():
    # in a child process: a full registry would leave later tests' new names unswitchable
    import subprocess
    import sys

    code = """
import bu_osprofiler
from bu_osprofiler import _core, profiler
bu_osprofiler.configure("bounded", "memory://")
profiler.init("k")
for i in range(4200):
    with profiler.Trace("ad.dyn.%d" % i):
        pass
profiler.clean()
assert 4000 < len(_core.named_tracepoints()) <= 4096, len(_core.named_tracepoints())
assert len([s for s in bu_osprofiler.finished_spans()
            if s.operation_name.startswith("ad.dyn.")]) == 4200
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_tail_local_root_that_stops_recording_still_ends_its_trace():
    _core.set_sampler("const", 0)
    try:
        _core.set_tail(errors=True)
        root = _core.start_span("root")
        child = _core.start_span("child", child_of=root)
        child.set_tag("error", True)
        child.finish()
        assert _core.tail_stats()["tail_held_traces"] >= 1
        root.set_tag("sampling.priority", 0)  # the root stops recording
        root.finish()
        st = _core.tail_stats()
        assert st["tail_held_traces"] == 0 and st["tail_held_bytes"] == 0
        assert [s.operation_name for s in bu_osprofiler.finished_spans()] == ["child"]
    finally:
        _core.set_sampler("const", 1)
        _core.set_tail(errors=False)


# ---------------------------------------------------------------- named points switched off

def _off_named(*names):
    apply_state(parse_state({"rules": [{"enabled": False, "id": n + "@trace"} for n in names]}))


def _finished():
    spans = {s.operation_name: s for s in bu_osprofiler.finished_spans()}
    bu_osprofiler.clear_finished_spans()
    return spans


def test_off_named_point_sets_no_context_and_children_attach_to_the_ancestor():
    _off_named("nm.off")
    profiler.init("k")
    try:
        profiler.start("nm.outer")
        outer = _core.active_span()
        profiler.start("nm.off")
        assert _core.active_span() is outer  # nothing pushed, nothing set
        with profiler.Trace("nm.off"):
            assert _core.active_span() is outer
            with profiler.Trace("nm.on"):
                pass
            profiler.start("nm.on2")
            profiler.stop()
        profiler.stop()  # the off start(): consumes its skip, outer stays active
        assert _core.active_span() is outer
        profiler.stop()  # outer
        assert _core.active_span() is not outer
    finally:
        profiler.clean()
    s = _finished()
    assert set(s) == {"nm.outer", "nm.on", "nm.on2"}
    assert s["nm.on"].parent_id == s["nm.on2"].parent_id == s["nm.outer"].span_id
    tp = {p["id"]: p for p in bu_osprofiler.tracepoints()}["nm.off@trace"]
    assert tp["hits"] >= 2 and tp["sampled_hits"] == 0


def test_off_named_point_unbalanced_stop_and_switch_flips():
    profiler.init("k")
    try:
        profiler.start("nm.outer")
        outer = _core.active_span()
        _off_named("nm.flip")
        profiler.start("nm.flip")  # off at start ...
        apply_state(State())
        profiler.stop()  # ... on at stop: still the off point's stop
        assert _core.active_span() is outer
        profiler.start("nm.flip")  # on at start ...
        _off_named("nm.flip")
        profiler.stop()  # ... off at stop: pops the span start() made
        assert _core.active_span() is outer
        profiler.start("nm.flip")  # off
        profiler.stop()
        profiler.stop()  # outer, as osprofiler's stack would
        profiler.stop()  # one too many: nothing to pop, no error
    finally:
        profiler.clean()
    s = _finished()
    assert set(s) == {"nm.outer", "nm.flip"} and s["nm.flip"].parent_id == s["nm.outer"].span_id


def test_off_named_point_exception_propagates_and_the_stack_stays_balanced():
    _off_named("nm.off")
    profiler.init("k")
    try:
        with profiler.Trace("nm.outer"):
            outer = _core.active_span()
            with pytest.raises(ValueError):
                with profiler.Trace("nm.off"):
                    raise ValueError("x")
            assert _core.active_span() is outer
        with pytest.raises(KeyError):
            with profiler.Trace("nm.outer2"):
                with profiler.Trace("nm.off"):
                    raise KeyError("y")
    finally:
        profiler.clean()
    s = _finished()
    assert set(s) == {"nm.outer", "nm.outer2"}
    assert "error" not in s["nm.outer"].tags and s["nm.outer2"].tags["error"] is True


def test_off_named_point_is_silent_to_the_legacy_notifier():
    from bu_osprofiler import notifier

    _off_named("nm.off")
    got = []
    notifier.set(got.append)
    profiler.init("k")
    try:
        with profiler.Trace("nm.outer"):
            with profiler.Trace("nm.off"):
                profiler.start("nm.off")
                with profiler.Trace("nm.child"):
                    pass
                profiler.stop()
    finally:
        notifier.set(None)
        profiler.clean()
    names = [p["name"] for p in got]
    assert names == ["nm.outer-start", "nm.child-start", "nm.child-stop", "nm.outer-stop"]
    # the child's parent is the enabled ancestor the notifier heard
    assert got[1]["parent_id"] == got[0]["trace_id"]


def _run_async(coro):
    """asyncio.run without touching the thread's current event loop (later tests may use it)."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_off_named_points_in_threads_and_tasks_sharing_an_ancestor():
    import asyncio
    import contextvars
    import threading

    _off_named("nm.off")
    profiler.init("k")
    try:
        profiler.start("nm.outer")
        outer = _core.active_span()
        barrier = threading.Barrier(4)

        def worker(i):
            for j in range(200):
                profiler.start("nm.off")
                if j == 0:
                    barrier.wait()  # every thread is inside an off point at once
                with profiler.Trace("nm.t%d" % i):
                    pass
                assert _core.active_span() is outer
                profiler.stop()

        threads = [threading.Thread(target=contextvars.copy_context().run, args=(worker, i))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        async def task(i):
            for _ in range(50):
                with profiler.Trace("nm.off"):
                    await asyncio.sleep(0)
                    profiler.start("nm.a%d" % i)
                    await asyncio.sleep(0)
                    profiler.stop()
                    assert _core.active_span() is outer

        async def main():
            await asyncio.gather(*(task(i) for i in range(4)))

        _run_async(main())
        assert _core.active_span() is outer
        profiler.stop()  # every skip was consumed: this pops outer
        assert _core.active_span() is not outer
    finally:
        profiler.clean()
    spans = bu_osprofiler.finished_spans()
    bu_osprofiler.clear_finished_spans()
    by_name = {}
    for s in spans:
        by_name.setdefault(s.operation_name, []).append(s)
    assert {n: len(v) for n, v in by_name.items()} == dict(
        {"nm.outer": 1}, **{"nm.t%d" % i: 200 for i in range(4)},
        **{"nm.a%d" % i: 50 for i in range(4)})
    assert {s.parent_id for s in spans if s.operation_name != "nm.outer"} == {outer.span_id}


def test_off_named_points_nested_past_the_skip_counter():
    _off_named("nm.off")
    profiler.init("k")
    try:
        profiler.start("nm.outer")
        outer = _core.active_span()
        for _ in range(300):  # more than a span counts (255): the rest push placeholders
            profiler.start("nm.off")
        with profiler.Trace("nm.deep"):
            pass
        for _ in range(300):
            profiler.stop()
        assert _core.active_span() is outer
        profiler.stop()
    finally:
        profiler.clean()
    s = _finished()
    assert set(s) == {"nm.outer", "nm.deep"} and s["nm.deep"].parent_id == s["nm.outer"].span_id


def test_tail_keep_records_db_and_async_spans_of_an_unsampled_trace():
    sa = pytest.importorskip("sqlalchemy")
    from bu_osprofiler import sqlalchemy as bu_sa

    @profiler.trace("ad.async")
    async def coro():
        return 1

    eng = sa.create_engine("sqlite://")
    bu_sa.add_tracing(sa, eng, "db")
    _core.set_sampler("const", 0)
    apply_state(parse_state({"tail": {"errors": True}}))
    try:
        root = _core.start_span("root")
        tok = _core.activate(root)
        with eng.connect() as c:
            c.execute(sa.text("select 1"))
        _run_async(coro())
        _core.deactivate(tok)
        root.set_tag("error", True)
        root.finish()
    finally:
        _core.set_sampler("const", 1)
    s = {sp.operation_name: sp for sp in bu_osprofiler.finished_spans()}
    assert set(s) == {"root", "db", "ad.async"}
    assert s["db"].parent_id == s["ad.async"].parent_id == s["root"].span_id


def test_configured_tail_keep_survives_control_states(caplog):
    bu_osprofiler.configure("adaptive-test", "memory://", tail_errors=True)
    try:
        _core.set_sampler("const", 0)
        apply_state(parse_state({"version": 3, "rules": []}))  # a collector's state, no tail
        assert "ad.leaf" in run(fail=True)  # still kept: the process asked for it
        assert run() == {}
    finally:
        _core.set_sampler("const", 1)
        bu_osprofiler.configure("adaptive-test", "memory://")
    _core.set_sampler("const", 0)
    try:
        assert run(fail=True) == {}  # configured without it: off again
    finally:
        _core.set_sampler("const", 1)


def test_http_source_applies_a_changed_state_with_a_version_seen_before():
    import http.server
    import threading

    docs = [{"version": 1, "rules": [{"enabled": False, "prefix": "ad.leaf"}]},
            {"version": 1, "rules": []}]  # a restarted collector counting from 0 again

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(docs[0]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        src = control.HttpSource("http://127.0.0.1:%d" % srv.server_port, "s")
        assert src.fetch().rules and src.fetch() is None  # unchanged: nothing to apply
        docs.pop(0)
        assert src.fetch().rules == []
    finally:
        srv.shutdown()
        srv.server_close()


def test_named_points_found_by_fresh_name_objects_and_switched_one_by_one():
    # bu_tp_named keeps the last points found by the name object's address: names built per call
    # (new objects, equal text; more names than the cache has slots) still reach their own point
    _off_named("nc.5")
    profiler.init("k")
    try:
        for _ in range(3):
            for i in range(100):
                with profiler.Trace("nc.%d" % i):
                    pass
    finally:
        profiler.clean()
    s = [sp.operation_name for sp in bu_osprofiler.finished_spans()]
    bu_osprofiler.clear_finished_spans()
    assert "nc.5" not in s and s.count("nc.4") == 3 and s.count("nc.99") == 3
    pts = {p["id"]: p for p in bu_osprofiler.tracepoints()}
    assert all(pts["nc.%d@trace" % i]["hits"] == 3 for i in range(100))
    assert pts["nc.5@trace"]["sampled_hits"] == 0 and pts["nc.6@trace"]["sampled_hits"] == 3
