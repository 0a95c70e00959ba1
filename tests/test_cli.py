"""``bu-osprofiler`` command line: trace list / show in every format, help, errors."""
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest
from collector_helpers import batch, collector, emit_batch, span

from bu_osprofiler import _core
from bu_osprofiler.cmd.main import main as cli_main

__all__ = ["collector"]

TRACE = 0x6E0C63257DE34C926F9EFCD03927272E
T0 = 1_700_000_000_000_000


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main([str(a) for a in argv])
        except SystemExit as e:  # argparse: --help, --version, usage errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def db(collector):
    """A store holding one fork/join trace across two services, and a second small trace."""
    api = batch("nova-api", [
        span(TRACE, 1, 0, "POST /servers", T0, 45_000, tags={"http.method": "POST"}),
        span(TRACE, 2, 1, "db.select", T0 + 1000, 2000),
    ])
    compute = batch("nova-compute", [
        span(TRACE, 3, 1, "thread:small", T0 + 4000, 10_000, tags={"fork": True}),
        span(TRACE, 4, 1, "thread:big", T0 + 4100, 30_000, tags={"fork": True, "error": True}),
        span(TRACE, 5, 1, "join", T0 + 5000, 29_200,
             refs=[("child_of", TRACE, 1), ("follows_from", TRACE, 3),
                   ("follows_from", TRACE, 4)]),
    ])
    other = batch("keystone", [span(0x99, 7, 0, "GET /v3/auth/tokens", T0 + 60_000_000, 800)])
    for b in (api, compute, other):
        collector.submit(emit_batch(b), _core.THRIFT_COMPACT_MESSAGE, "test")
    assert collector.flush()
    return collector.store.path


def test_version_and_help():
    from bu_osprofiler import __version__
    rc, out, _ = run("--version")
    assert rc == 0 and out.strip() == f"bu-osprofiler {__version__}"
    for argv in ([], ["--help"], ["collector", "--help"], ["trace", "--help"], ["trace"],
                 ["trace", "list", "--help"], ["trace", "show", "--help"]):
        rc, out, err = run(*argv)
        assert "usage: bu-osprofiler" in out + err, argv
        assert rc == (0 if "--help" in argv else 2), argv
    rc, out, _ = run("collector", "--help")
    for opt in ("--db", "--host", "--udp-port", "--udp-binary-port", "--http-port",
                "--query-port"):
        assert opt in out
    rc, out, _ = run("trace", "show", "--help")
    for opt in ("--json", "--html", "--dot", "--critical-path", "--out", "--jaeger-url", "--db"):
        assert opt in out


def test_console_script_is_installed():
    exe = shutil.which("bu-osprofiler", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("bu-osprofiler console script not installed next to this interpreter")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("bu-osprofiler ")


def test_list(db):
    rc, out, _ = run("trace", "list", "--db", db)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["TRACE", "ID", "START"]
    assert lines[1].startswith("0000000000000099") and "keystone: GET /v3/auth/tokens" in lines[1]
    assert lines[2].startswith(f"{TRACE:032x}") and "nova-api: POST /servers" in lines[2]
    assert re.search(r"45(\.0)?ms\s+5\s+1\s", lines[2])  # duration, spans, errors
    assert lines[-1] == f"2 traces from {db}"
    rc, out, _ = run("trace", "list", "--db", db, "--service", "nova-compute", "--json")
    (s,) = json.loads(out)
    assert (s["traceID"], s["spans"], s["errors"], s["service"], s["operation"]) == (
        f"{TRACE:032x}", 5, 1, "nova-api", "POST /servers")
    assert s["services"] == ["nova-api", "nova-compute"]
    assert json.loads(run("trace", "list", "--db", db, "--errors", "--json")[1])[0]["traceID"] \
        == f"{TRACE:032x}"
    assert json.loads(run("trace", "list", "--db", db, "--tag", "http.method=POST",
                          "--json")[1])[0]["spans"] == 5
    assert json.loads(run("trace", "list", "--db", db, "--min-duration", "20ms",
                          "--json")[1])[0]["spans"] == 5
    assert run("trace", "list", "--db", db, "--operation", "nothing")[1].startswith("no traces")


def test_show_tree_with_critical_path(db):
    rc, out, _ = run("trace", "show", f"{TRACE:x}", "--db", db, "--critical-path")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == f"Trace {TRACE:032x}: 5 spans, 2 services, 45.0ms, 1 error"
    assert lines[1].startswith("nova-api: POST /servers  45.0ms  (+0µs)") and lines[1].endswith("*")
    body = "\n".join(lines[2:6])
    assert "├─ nova-api: db.select  2.00ms  (+1.00ms) *" in body
    assert "├─ nova-compute: thread:small  10.0ms  (+4.00ms) [fork]" in body
    assert "thread:small  10.0ms  (+4.00ms) [fork] *" not in body
    assert "├─ nova-compute: thread:big  30.0ms  (+4.10ms) [fork] [ERROR] *" in body
    assert "└─ nova-compute: join  29.2ms  (+5.00ms) [join <- 2 branches] *" in body
    cp = out.split("Critical path")[1]
    assert "thread:big" in cp and "thread:small" not in cp
    # without the flag: no stars, no path
    rc, plain, _ = run("trace", "show", f"{TRACE:x}", "--db", db)
    assert "*" not in plain and "Critical path" not in plain


def test_show_by_osprofiler_uuid_and_formats(db, tmp_path):
    uid = str(uuid.UUID(int=TRACE))
    rc, out, _ = run("trace", "show", uid, "--db", db, "--json")
    doc = json.loads(out)
    assert doc["data"][0]["traceID"] == f"{TRACE:032x}" and len(doc["data"][0]["spans"]) == 5

    rc, out, _ = run("trace", "show", uid, "--db", db, "--dot")
    assert out.startswith('digraph "trace ') and out.rstrip().endswith("}")
    assert '"s0000000000000001" -> "s0000000000000004" [style=dashed' in out  # fork
    assert '"s0000000000000004" -> "s0000000000000005" [style=dotted, color="#6a1b9a", ' \
           'label="join"]' in out
    assert out.count("->") == 6
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg"], input=out, text=True, check=True, capture_output=True)

    target = tmp_path / "t.html"
    rc, out, err = run("trace", "show", uid, "--db", db, "--html", "--out", target)
    assert rc == 0 and out == ""
    assert f"wrote {target}" in err
    page = target.read_text()
    assert page.startswith("<!DOCTYPE html>") and "waterfall" in page
    # self-contained: nothing is loaded from elsewhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|@import|url\((?!#)|<script src""", page)
    assert "fetch(" not in page and "XMLHttpRequest" not in page


def test_unknown_and_bad_ids(db, tmp_path):
    rc, out, err = run("trace", "show", "1234abcd", "--db", db)
    assert rc == 1 and out == ""
    assert err.strip() == (f"bu-osprofiler: trace 1234abcd not found in {db} (no stored trace id"
                           " is or starts with it)")
    rc, _, err = run("trace", "show", "not-an-id", "--db", db)
    assert rc == 2 and "not a trace id" in err
    rc, _, err = run("trace", "show", "1", "--db", str(tmp_path / "missing.db"))
    assert rc == 1 and "no trace store at" in err
    rc, _, err = run("trace", "list", "--db", str(tmp_path / "missing.db"))
    assert rc == 1 and "no trace store at" in err
    rc, _, err = run("trace", "show", f"{TRACE:x}", "--db", db, "--out",
                     str(tmp_path / "no" / "such" / "dir" / "x"))
    assert rc == 1 and "No such file or directory" in err


def test_reads_a_jaeger_query_endpoint(db, collector):
    url = f"http://127.0.0.1:{collector.ports['query']}"
    rc, out, _ = run("trace", "show", f"{TRACE:x}", "--jaeger-url", url, "--json")
    assert rc == 0
    assert json.loads(out)["data"][0] == collector.store.get_trace(f"{TRACE:x}")
    rc, out, _ = run("trace", "list", "--jaeger-url", url.replace("http://", ""), "--json")
    assert [s["traceID"] for s in json.loads(out)] == ["0000000000000099", f"{TRACE:032x}"]
    rc, _, err = run("trace", "show", "abc", "--jaeger-url", url)
    assert rc == 1 and f"trace 0000000000000abc not found in {url}" in err
    rc, _, err = run("trace", "list", "--jaeger-url", "http://127.0.0.1:9")
    assert rc == 1 and "cannot reach http://127.0.0.1:9" in err


# ================================================================ issue 17: arguments, prefixes, escapes

def test_bad_arguments_are_usage_errors(db):
    for argv, msg in ((["--limit", "0"], "0 is out of range"), (["--limit", "-5"], "out of range"),
                      (["--limit", "abc"], "not a number"),
                      (["--lookback", "1e400"], "out of range"),
                      (["--min-duration", "inf"], "out of range"),
                      (["--min-duration", "soon"], "not a duration")):
        rc, out, err = run("trace", "list", "--db", db, *argv)
        assert rc == 2 and msg in err and out == "", (argv, err)


def test_launcher_without_a_command_says_so():
    r = subprocess.run([sys.executable, "-m", "bu_osprofiler.launcher"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert "no COMMAND given" in r.stderr and "args" not in r.stderr.split("error:")[1]


@pytest.fixture
def prefixed(db, collector):
    b = batch("svc", [span(0xABCD000000000001, 1, 0, "one", T0, 10),
                      span(0xABCD000000000002, 2, 0, "two", T0 + 5, 10)])
    collector.submit(emit_batch(b), _core.THRIFT_COMPACT_MESSAGE, "test")
    assert collector.flush()
    return db


def test_trace_id_prefixes(prefixed):
    db = prefixed
    rc, out, err = run("trace", "show", f"{TRACE:032x}"[:8], "--db", db)
    assert rc == 0 and out.startswith(f"Trace {TRACE:032x}: 5 spans")
    rc, out, err = run("trace", "show", "abcd", "--db", db)
    assert rc == 1 and out == ""
    assert "abcd is the start of 2 trace ids" in err
    assert "abcd000000000001  svc: one" in err and "abcd000000000002  svc: two" in err
    rc, out, _ = run("trace", "show", "abcd000000000002", "--db", db)
    assert rc == 0 and "svc: two" in out
    rc, out, _ = run("trace", "show", "99", "--db", db)  # a short whole id still works
    assert rc == 0 and "keystone" in out


def test_critical_path_in_every_format(db, tmp_path):
    rc, out, _ = run("trace", "show", f"{TRACE:x}", "--db", db, "--json", "--critical-path")
    cp = json.loads(out)["criticalPath"]
    assert "0000000000000004" in cp["spanIDs"] and "0000000000000003" not in cp["spanIDs"]
    assert cp["duration"] == 45_000 and {s["spanID"] for s in cp["segments"]} <= set(cp["spanIDs"])
    assert "criticalPath" not in json.loads(run("trace", "show", f"{TRACE:x}", "--db", db,
                                                "--json")[1])
    rc, out, _ = run("trace", "show", f"{TRACE:x}", "--db", db, "--dot", "--critical-path")
    assert '"s0000000000000004" [label="nova-compute\\nthread:big\\n30.0ms", color="#c62828"' in out
    assert "#c62828" not in run("trace", "show", f"{TRACE:x}", "--db", db, "--dot")[1]
    for flag, shown in (([], False), (["--critical-path"], True)):
        target = tmp_path / f"cp{shown}.html"
        assert run("trace", "show", f"{TRACE:x}", "--db", db, "--html", "--out", target,
                   *flag)[0] == 0
        m = re.search(r'id="bu-data">(.*?)</script>', target.read_text(), re.S)
        assert json.loads(m.group(1))["showCriticalPath"] is shown


HOSTILE_SERVICE = "svc\x1b]0;pwned\x07\x1b[2J"
HOSTILE_OP = "op\x1b]52;c;aGk=\x07\x1b]8;;http://x/\x07link\x1b]8;;\x07\u202etxt.exe\x9b31m"


def test_control_characters_never_reach_the_terminal(collector):
    b = batch(HOSTILE_SERVICE, [span(0x77, 1, 0, HOSTILE_OP, T0, 10),
                                span(0x77, 2, 1, "child\r\n", T0 + 1, 5)])
    collector.submit(emit_batch(b), _core.THRIFT_COMPACT_MESSAGE, "test")
    assert collector.flush()
    db = collector.store.path
    outputs = [run("trace", "list", "--db", db)[1],
               run("trace", "show", "77", "--db", db)[1],
               run("trace", "show", "77", "--db", db, "--critical-path")[1],
               run("trace", "show", "77", "--db", db, "--json")[1],
               run("trace", "show", "77", "--db", db, "--dot")[1]]
    for out in outputs:
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", out), repr(out)
        assert "pwned" in out
    assert "svc\\x1b]0;pwned\\x07\\x1b[2J: op\\x1b]52;c;aGk=\\x07" in outputs[0]
    assert "\\u202etxt.exe\\x9b31m" in outputs[1] and "child\\x0d\\x0a" in outputs[1]
    assert json.loads(outputs[3])["data"][0]["spans"][0]["operationName"] in (HOSTILE_OP,
                                                                            "child\r\n")


def test_out_of_range_times_are_shown_as_such(collector):
    b = batch("future", [span(0x88, 1, 0, "far", 2**62, 10)])
    collector.submit(emit_batch(b), _core.THRIFT_COMPACT_MESSAGE, "test")
    assert collector.flush()
    assert collector.stats()["spans_rejected_time"] == 1  # the intake refuses it ...
    w = collector.store.writer()  # ... so it can only come from elsewhere (an older store)
    w.add("future", "[]", [("0000000000000088", 1, 0, "far", 1, 2**62, 10, 0, None, None, None)])
    w.close()
    rc, out, err = run("trace", "list", "--db", collector.store.path)
    assert rc == 0 and "out of range (4611686018427387904 µs)" in out and err == ""
    rc, out, _ = run("trace", "show", "88", "--db", collector.store.path)
    assert rc == 0 and "future: far" in out


def test_a_wrong_jaeger_url_is_named(db, collector):
    base = f"http://127.0.0.1:{collector.ports['query']}"
    for url in (base + "/search", base + "/trace/x"):
        rc, _, err = run("trace", "list", "--jaeger-url", url)
        assert rc == 1 and "is not a Jaeger query API" in err, err
        rc, _, err = run("trace", "show", "99", "--jaeger-url", url)
        assert rc == 1 and "is not a Jaeger query API" in err, err


def test_trace_commands_find_the_running_collector(tmp_path):
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "xdg"), PYTHONUNBUFFERED="1")
    store = tmp_path / "elsewhere" / "spans.db"
    col = subprocess.Popen(
        [sys.executable, "-m", "bu_osprofiler.cmd.main", "collector", "--db", str(store),
         "--udp-port", "0", "--udp-binary-port", "off", "--http-port", "off",
         "--otlp-port", "off", "--query-port", "0"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert col.stdout.readline().startswith("bu-osprofiler collector: store")
        advert = tmp_path / "xdg" / "bu_osprofiler" / "collector.json"
        assert json.loads(advert.read_text())["db"] == str(store)
        r = subprocess.run([sys.executable, "-m", "bu_osprofiler.cmd.main", "trace", "list"],
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == f"no traces in {store}", r
    finally:
        col.send_signal(2)
        col.communicate(timeout=60)
    assert col.returncode == 0
    assert not advert.exists()
    # no collector running: the default store path, as before
    r = subprocess.run([sys.executable, "-m", "bu_osprofiler.cmd.main", "trace", "list"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no trace store at " + str(tmp_path / "xdg") in r.stderr
