"""The collector's web view: trace list and waterfall, checked as HTML and in a real headless
browser (Debian's chromium)."""
import contextlib
import io
import json
import os
import re
import shutil
import struct
import subprocess

import pytest
from collector_helpers import batch, collector, emit_batch, http_request, span

from bu_osprofiler import _core
from bu_osprofiler.cmd.main import main as cli_main

__all__ = ["collector"]

CHROMIUM = "/usr/bin/chromium"
TRACE = 0x3F1E2D4C5B6A79880112233445566778
T0 = 1_700_000_000_000_000
SPAN_IDS = [f"{i:016x}" for i in (1, 2, 3, 4, 5, 6, 7)]


@pytest.fixture
def loaded(collector):
    """A two-service trace with a fork/join, an error, logs and a tricky operation name."""
    api = batch("nova-api", [
        span(TRACE, 1, 0, "POST /servers", T0, 50_000, tags={"http.status_code": 202}),
        span(TRACE, 2, 1, "db.select </script><b>x</b>", T0 + 1000, 2000,
             tags={"db.statement": "SELECT * FROM instances"}),
    ], {"hostname": "api-1"})
    compute = batch("nova-compute", [
        span(TRACE, 3, 1, "thread:small", T0 + 4000, 10_000, tags={"fork": True}),
        span(TRACE, 4, 1, "thread:big", T0 + 4100, 30_000, tags={"fork": True}),
        span(TRACE, 5, 4, "libvirt.spawn", T0 + 6000, 20_000, tags={"error": True},
             logs=[(T0 + 7000, {"event": "error", "message": "no host"})]),
        span(TRACE, 6, 1, "join", T0 + 5000, 29_200,
             refs=[("child_of", TRACE, 1), ("follows_from", TRACE, 3),
                   ("follows_from", TRACE, 4)]),
        span(TRACE, 7, 1, "notify", T0 + 36_000, 3000),
    ])
    for b in (api, compute, batch("glance", [span(0x51, 9, 0, "GET /images", T0 + 10**7, 900)])):
        collector.submit(emit_batch(b), _core.THRIFT_COMPACT_MESSAGE, "test")
    assert collector.flush()
    return collector


def get(c, path):
    status, headers, body = http_request(c.ports["query"], "GET", path)
    return status, headers, body.decode()


def test_index_lists_traces_with_filters(loaded):
    status, headers, page = get(loaded, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    rows = re.findall(r'<tr class="trace-row" data-trace-id="([0-9a-f]+)">', page)
    assert rows == ["0000000000000051", f"{TRACE:032x}"]
    row = page[page.index(f'data-trace-id="{TRACE:032x}"'):]
    row = row[:row.index("</tr>")]
    assert "nova-api: POST /servers" in row and "1 error" in row and "50.0ms" in row
    assert "<td class=\"num\">7</td>" in row and "nova-api, nova-compute" in row
    for name in ("service", "operation", "lookback", "minDuration", "tags", "error", "limit"):
        assert f'name="{name}"' in page
    assert '<option value="nova-compute">' in page
    _, _, page = get(loaded, "/?service=glance")
    assert re.findall(r'data-trace-id="([0-9a-f]+)"', page) == ["0000000000000051"]
    assert '<option value="GET /images">' in page  # the service's operations
    _, _, page = get(loaded, "/?error=1")
    assert re.findall(r'data-trace-id="([0-9a-f]+)"', page) == [f"{TRACE:032x}"]
    _, _, page = get(loaded, "/?service=nobody")
    assert "No traces match" in page


def test_trace_page_embeds_the_trace_safely(loaded):
    status, _, page = get(loaded, f"/trace/{TRACE:x}")
    assert status == 200
    assert "<b>x</b>" not in page  # the span name cannot inject markup
    m = re.search(r'<script type="application/json" id="bu-data">(.*?)</script>', page, re.S)
    data = json.loads(m.group(1))
    assert len(data["trace"]["spans"]) == 7
    assert data["view"]["critical"][:2] == ["0000000000000001", "0000000000000002"]
    assert "0000000000000004" in data["view"]["critical"]
    assert "0000000000000003" not in data["view"]["critical"]
    assert ["0000000000000004", "0000000000000006", "join"] in data["view"]["edges"]
    assert ["0000000000000001", "0000000000000003", "fork"] in data["view"]["edges"]
    assert get(loaded, "/trace/abcdef")[0] == 404
    assert get(loaded, "/trace/xyz")[0] == 400
    assert get(loaded, "/nowhere")[0] == 404


# ---------------------------------------------------------------- headless browser

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} not installed (Debian package 'chromium'; .ci/run installs it)")


def chromium(*args, tmp_path):
    """Run headless chromium; returns (stdout, console lines)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--disable-extensions", "--enable-logging=stderr", "--v=0",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000",
           *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, HOME=str(tmp_path)))
    console = [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln]
    return r.stdout, console


def keep(shot):
    """Copy a screenshot to $BU_OSPROFILER_SCREENSHOTS (if set) for a person to look at."""
    where = os.environ.get("BU_OSPROFILER_SCREENSHOTS")
    if where:
        os.makedirs(where, exist_ok=True)
        shutil.copy(shot, os.path.join(where, os.path.basename(shot)))


def png_size(path):
    data = open(path, "rb").read(32)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def check_rendered(dom):
    assert 'data-rendered="7"' in re.search(r"<body[^>]*>", dom).group(0), dom[-2000:]
    assert re.search(r"<body[^>]*>", dom) and "data-errors" not in re.search(r"<body[^>]*>",
                                                                           dom).group(0)
    rows = re.findall(r'class="span-row[^"]*" data-span-id="([0-9a-f]{16})"', dom)
    assert sorted(rows) == SPAN_IDS
    critical = re.findall(r'class="span-row critical[^"]*" data-span-id="([0-9a-f]{16})"', dom)
    assert "0000000000000004" in critical and "0000000000000003" not in critical
    assert len(re.findall(r'<line [^>]*class="join"', dom)) == 2
    assert len(re.findall(r'<line [^>]*class="fork"', dom)) == 2


@needs_chromium
def test_browser_renders_every_span_without_errors(loaded, tmp_path):
    base = f"http://127.0.0.1:{loaded.ports['query']}"
    dom, console = chromium("--dump-dom", f"{base}/trace/{TRACE:x}#span=0000000000000005",
                            tmp_path=tmp_path)
    assert console == []
    check_rendered(dom)
    # the span named in the link is opened: its tags and logs are shown
    details = dom[dom.index('<aside id="details"'):]
    assert "libvirt.spawn" in details and "no host" in details and "error" in details

    shot = tmp_path / "waterfall.png"
    _, console = chromium(f"--screenshot={shot}", "--window-size=1280,800",
                          f"{base}/trace/{TRACE:x}#span=0000000000000005", tmp_path=tmp_path)
    assert console == []
    assert png_size(shot) == (1280, 800)
    keep(shot)
    assert shot.stat().st_size > 10_000  # a drawn page, not a blank one

    dom, console = chromium("--dump-dom", base + "/", tmp_path=tmp_path)
    assert console == []
    assert f'data-trace-id="{TRACE:032x}"' in dom
    shot = tmp_path / "index.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,400", base + "/", tmp_path=tmp_path)
    keep(shot)


@needs_chromium
def test_browser_renders_the_standalone_html_file(loaded, tmp_path):
    out = tmp_path / "trace.html"
    with contextlib.redirect_stderr(io.StringIO()):
        assert cli_main(["trace", "show", f"{TRACE:x}", "--db", loaded.store.path,
                         "--html", "--out", str(out)]) == 0
    loaded.stop()  # no server: the file alone must do
    dom, console = chromium("--dump-dom", out.as_uri(), tmp_path=tmp_path)
    assert console == []
    check_rendered(dom)
    shot = tmp_path / "standalone.png"
    chromium(f"--screenshot={shot}", "--window-size=1024,600", out.as_uri(), tmp_path=tmp_path)
    assert png_size(shot) == (1024, 600)
    keep(shot)
