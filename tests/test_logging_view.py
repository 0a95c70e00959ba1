"""Log records in spans, seen from the reading side: ``trace show --logs``, ``trace list --log``,
the query API's ``logs`` search and the web view's marks and details panel. The spans come from
bu_osprofiler with log correlation on, and reach the collector as Jaeger Thrift written by
jaeger-client's classes (an encoder independent of ours)."""
import contextlib
import io
import json
import logging
import re
import urllib.parse

import pytest
from collector_helpers import batch, collector, emit_batch, get_json, span_from_record
from test_collector_web import browser, check_label_rules, ids_of, needs_chromium, open_full

import bu_osprofiler
from bu_osprofiler import _core, profiler
from bu_osprofiler import logging as logcorr
from bu_osprofiler.cmd.main import main as cli_main

__all__ = ["browser", "collector"]


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def stored(collector):
    """Two traces of a compute service with log correlation on: one with a warning and an
    exception logged inside spans, one quiet."""
    log = logging.getLogger("nova.compute.manager")
    log.propagate = False
    log.handlers[:] = [logging.NullHandler()]
    log.setLevel(logging.INFO)
    logcorr.install()
    try:
        profiler.init("key")
        with profiler.Trace("build_instance"):
            log.info("info stays out of the span")
            with profiler.Trace("claim"):
                log.warning("quota almost exhausted: %d%%", 95)
            with profiler.Trace("spawn"):
                try:
                    raise RuntimeError("hypervisor went away")
                except RuntimeError:
                    log.exception("spawn failed")
        profiler.clean()
        profiler.init("key")
        with profiler.Trace("quiet"):
            log.info("all good")
        profiler.clean()
    finally:
        logcorr.uninstall()
    recs = bu_osprofiler.finished_spans()
    collector.submit(emit_batch(batch("nova-compute", [span_from_record(r) for r in recs])),
                     _core.THRIFT_COMPACT_MESSAGE, "test")
    assert collector.flush()
    by_name = {r.operation_name: r for r in recs}
    return collector, by_name


def test_trace_show_logs_prints_them_under_their_spans(stored):
    c, spans = stored
    tid = "%032x" % spans["build_instance"].trace_id
    rc, out, _ = run("trace", "show", tid, "--db", c.store.path, "--logs")
    assert rc == 0
    lines = out.splitlines()
    claim = next(i for i, ln in enumerate(lines) if "nova-compute: claim" in ln)
    spawn = next(i for i, ln in enumerate(lines) if "nova-compute: spawn" in ln)
    assert lines[claim].endswith("[WARN]") and lines[spawn].endswith("[WARN]")
    assert re.search(r"· \+\S+ WARNING nova.compute.manager: quota almost exhausted: 95%$",
                     lines[claim + 1])
    assert re.search(r"· \+\S+ ERROR nova.compute.manager: spawn failed "
                     r"\[RuntimeError: hypervisor went away\]$", lines[spawn + 1])
    assert "info stays out" not in out
    # without --logs: the plain tree
    rc, plain, _ = run("trace", "show", tid, "--db", c.store.path)
    assert "quota almost" not in plain and "[WARN]" not in plain
    assert len(plain.splitlines()) == len(lines) - 2


def test_trace_list_and_query_api_search_by_log_field(stored):
    c, spans = stored
    tid = "%032x" % spans["build_instance"].trace_id
    db = c.store.path

    def ids(*filters):
        rc, out, err = run("trace", "list", "--db", db, "--json",
                           *[a for f in filters for a in ("--log", f)])
        assert rc == 0, err
        return [t["traceID"] for t in json.loads(out)]

    assert ids("level=error") == [tid]  # case-insensitive level
    assert ids("level=WARNING", "message=quota almost") == [tid]  # one log, both fields
    assert ids("level=ERROR", "message=quota") == []  # no single log has both
    assert ids("exception.type=RuntimeError") == [tid]
    assert ids("message=all good") == []  # INFO never went into a span
    assert ids("logger=nova.compute.manager", "level=warning") == [tid]
    q = urllib.parse.urlencode({"logs": json.dumps({"level": "ERROR"})})
    found = get_json(c.ports["query"], "/api/traces?" + q)["data"]
    assert [t["traceID"] for t in found] == [tid]
    rc, _, err = run("trace", "list", "--jaeger-url", "http://127.0.0.1:1", "--log", "level=x")
    assert rc == 2 and "--log needs" in err


@needs_chromium
def test_web_view_marks_spans_and_shows_log_records(stored, browser):
    c, spans = stored
    tid = "%032x" % spans["build_instance"].trace_id
    sid = "%016x" % spans["spawn"].span_id
    claim = "%016x" % spans["claim"].span_id
    b = open_full(browser, f"http://127.0.0.1:{c.ports['query']}/trace/{tid}#span={sid}", 1400)
    assert b.js("document.body.getAttribute('data-rendered')") == "3"
    assert ids_of(b, ".span-row.log-errors") == [sid]
    assert ids_of(b, ".span-row.log-warnings") == [claim]
    marks = b.js("Array.from(document.querySelectorAll('.mark.log-errors, .mark.log-warnings'))"
                 ".map(function (m) { return m.textContent; })")
    assert sorted(marks) == ["log error", "log warning"]
    # a tick per log, on its span's bar
    assert ids_of(b, ".logtick.sev2", "class") == ["logtick sev2"]
    assert b.js("document.querySelector('.logtick.sev2').closest('.span-row')"
                ".getAttribute('data-span-id')") == sid
    assert b.js("document.querySelectorAll('.logtick.sev1').length") == 1
    # the details panel of the span named in the link: one line per log, exception, stack
    details = b.js("document.getElementById('details').innerHTML")
    assert '<span class="loglevel">ERROR</span>' in details
    assert '<span class="loglogger">nova.compute.manager</span>' in details
    assert '<span class="logmsg">spawn failed</span>' in details
    assert "RuntimeError: hypervisor went away" in details
    assert '<pre class="logstack">Traceback (most recent call last):' in details
    check_label_rules(b)  # the marks fit their label cells
    assert b.problems() == []
