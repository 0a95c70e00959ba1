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
from collector_helpers import batch, emit_batch, http_request, span

from bu_osprofiler import _core
from bu_osprofiler.cmd.main import main as cli_main


CHROMIUM = "/usr/bin/chromium"
TRACE = 0x3F1E2D4C5B6A79880112233445566778
T0 = 1_700_000_000_000_000
SPAN_IDS = [f"{i:016x}" for i in (1, 2, 3, 4, 5, 6, 7)]


@pytest.fixture
def collector(tmp_path):
    """A collector without age retention: the traces here start in 2023, and a browser test can
    outlast the writer's first retention pass."""
    from bu_osprofiler.collector.server import Collector
    c = Collector(os.path.join(str(tmp_path), "traces.db"), udp_port=0, udp_binary_port=0,
                  http_port=0, otlp_port=None, query_port=0, max_age_s=None)
    with c:
        yield c


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


@pytest.fixture
def browser(tmp_path):
    from browser import Browser
    b = Browser(tmp_path)
    try:
        yield b
    finally:
        b.close()


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


# The label rules, checked in the page: every visible span name and badge fits its label cell;
# every duration label lies inside its lane, has an opaque background with text contrast >= 4.5
# (WCAG AA), and is the topmost element at its centre even when fork/join lines are made
# hit-testable (so no line is drawn over it).
LABEL_RULES = r"""
(function () {
  function rgba(css) {
    var m = /rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?/.exec(css);
    return m ? [+m[1], +m[2], +m[3], m[4] === undefined ? 1 : +m[4]] : null;
  }
  function lum(c) {
    var v = c.slice(0, 3).map(function (x) { x /= 255;
      return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
  }
  function inside(a, b) {
    return a.left >= b.left - 0.5 && a.right <= b.right + 0.5 && a.top >= b.top - 0.5 &&
      a.bottom <= b.bottom + 0.5;
  }
  var st = document.createElement("style");
  st.textContent = "svg.edges, svg.edges * { pointer-events: auto !important; }";
  document.head.appendChild(st);
  var bad = [];
  var checked = 0;
  document.querySelectorAll(".span-row").forEach(function (row) {
    if (row.hidden) { return; }
    var id = row.getAttribute("data-span-id");
    var label = row.querySelector(".label");
    var lr = label.getBoundingClientRect();
    var name = row.querySelector(".name");
    if (name.scrollWidth > name.clientWidth + 1) { bad.push(id + ": name truncated"); }
    row.querySelectorAll(".mark, .name").forEach(function (m) {
      if (!inside(m.getBoundingClientRect(), lr)) { bad.push(id + ": " + m.className + " outside its label"); }
    });
    var dur = row.querySelector(".dur");
    var texts = Array.from(row.querySelectorAll(".name, .mark"));
    if (!dur.hidden) {
      checked += 1;
      texts.push(dur);
      var dr = dur.getBoundingClientRect();
      if (!inside(dr, row.querySelector(".lane").getBoundingClientRect())) { bad.push(id + ": duration outside its lane"); }
      var cs = getComputedStyle(dur);
      var fg = rgba(cs.color);
      var bg = rgba(cs.backgroundColor);
      if (!bg || bg[3] < 1) { bad.push(id + ": duration background not opaque: " + cs.backgroundColor); }
      else {
        var L1 = lum(fg), L2 = lum(bg);
        var ratio = (Math.max(L1, L2) + 0.05) / (Math.min(L1, L2) + 0.05);
        if (ratio < 4.5) { bad.push(id + ": duration contrast " + ratio.toFixed(2) + " (" + cs.color + " on " + cs.backgroundColor + ")"); }
      }
    }
    /* no line over any text: sample each text box; the topmost element must be the text */
    texts.forEach(function (t) {
      var r = t.getBoundingClientRect();
      for (var i = 1; i < 6; i++) {
        for (var j = 1; j < 3; j++) {
          var x = r.left + r.width * i / 6, y = r.top + r.height * j / 3;
          var top = document.elementFromPoint(x, y);
          if (top && top.closest && top.closest("svg.edges")) {
            bad.push(id + ": a " + top.getAttribute("class") + " line crosses " + t.className + " '" + t.textContent + "'");
            return;
          }
          if (top === null) { bad.push(id + ": " + t.className + " off screen at " + x + "," + y + " of " + innerWidth + "x" + innerHeight); return; }
        }
      }
    });
  });
  st.remove();
  return {bad: bad, checked: checked, lines: document.querySelectorAll("svg.edges line").length};
})()
"""


def full_height(b):
    """Make the viewport as tall as the page, so that elementFromPoint sees every row."""
    w = b.js("innerWidth")
    for _ in range(3):
        h = b.js("document.documentElement.scrollHeight")
        if h <= b.js("innerHeight"):
            break
        b.resize(w, h)


def open_full(b, url, width):
    b.open(url, width=width, height=900)
    full_height(b)
    return b


def open_trace(c, b, width, fragment=""):
    return open_full(b, f"http://127.0.0.1:{c.ports['query']}/trace/{TRACE:x}{fragment}", width)


def check_label_rules(b):
    full_height(b)
    got = b.js(LABEL_RULES)
    assert got["bad"] == [] and got["checked"] >= 1, got
    return got


@needs_chromium
@pytest.mark.parametrize("width", [700, 1400])
def test_browser_waterfall_label_rules(loaded, browser, tmp_path, width):
    open_trace(loaded, browser, width)
    assert browser.js("document.body.getAttribute('data-rendered')") == "7"
    assert browser.js("document.querySelectorAll('svg.edges line.join').length") == 2
    assert browser.js("document.querySelectorAll('svg.edges line.fork').length") == 2
    critical = browser.js("Array.from(document.querySelectorAll('.span-row.critical'))"
                          ".map(function (r) { return r.getAttribute('data-span-id'); })")
    assert "0000000000000004" in critical and "0000000000000003" not in critical
    check_label_rules(browser)
    shot = browser.screenshot(tmp_path / f"waterfall-{width}.png")
    assert png_size(shot)[0] == width
    keep(shot)
    # the details panel: beside the waterfall when wide, under the clicked row when narrow;
    # it never covers a span row
    browser.js("document.querySelector('[data-span-id=\"0000000000000005\"]').click()")
    d = browser.js("""(function () {
        var d = document.getElementById('details').getBoundingClientRect();
        var over = Array.from(document.querySelectorAll('.span-row')).filter(function (r) {
          var b = r.getBoundingClientRect();
          return b.right > d.left && b.left < d.right && b.bottom > d.top && b.top < d.bottom; });
        return {text: document.getElementById('details').textContent, covered: over.length,
                inline: document.getElementById('details').classList.contains('inline')};
    })()""")
    assert "libvirt.spawn" in d["text"] and "no host" in d["text"] and "self time" in d["text"]
    assert d["covered"] == 0 and d["inline"] == (width < 900)
    check_label_rules(browser)
    if width >= 900:  # the side panel is resizable: drag its divider 200 px to the left
        from browser import drag
        r = browser.js("(function () { var r = document.getElementById('splitter')"
                       ".getBoundingClientRect(); return [r.left + r.width / 2, r.top + 40,"
                       " document.getElementById('details').offsetWidth]; })()")
        drag(browser, r[0], r[1], r[0] - 200, r[1])
        assert abs(browser.js("document.getElementById('details').offsetWidth") - r[2] - 200) < 3
        check_label_rules(browser)
    shot = browser.screenshot(tmp_path / f"waterfall-details-{width}.png")
    keep(shot)
    assert browser.problems() == []


def ids_of(b, selector, attr="data-span-id"):
    return b.js(f"Array.from(document.querySelectorAll({json.dumps(selector)}))"
                f".map(function (e) {{ return e.getAttribute({json.dumps(attr)}); }})")


@needs_chromium
def test_browser_collapse_search_zoom(loaded, browser, tmp_path):
    from browser import drag, type_text
    open_trace(loaded, browser, 1400)
    visible = ".span-row:not([hidden])"
    # collapse the fork that holds libvirt.spawn: its child disappears, and so does its line
    browser.js("document.querySelector('[data-span-id=\"0000000000000004\"] .toggle').click()")
    assert "0000000000000005" not in ids_of(browser, visible)
    assert len(ids_of(browser, visible)) == 6
    browser.js("document.getElementById('collapse-all').click()")
    assert ids_of(browser, visible) == SPAN_IDS[:4] + SPAN_IDS[5:]  # only the root's children
    browser.js("document.getElementById('expand-all').click()")
    assert sorted(ids_of(browser, visible)) == SPAN_IDS
    check_label_rules(browser)

    # search in the trace: by name, tag value and log field; hidden matches are revealed
    browser.js("document.querySelector('[data-span-id=\"0000000000000004\"] .toggle').click()")
    browser.js("document.getElementById('find').focus()")
    type_text(browser, "no host")  # a log field of libvirt.spawn
    assert ids_of(browser, ".span-row.match") == ["0000000000000005"]
    assert "0000000000000005" in ids_of(browser, visible)
    assert browser.js("document.getElementById('find-count').textContent") == "1 match"
    browser.js("var f = document.getElementById('find'); f.value = 'THREAD:';"
               "f.dispatchEvent(new Event('input'))")
    assert ids_of(browser, ".span-row.match") == ["0000000000000003", "0000000000000004"]
    shot = browser.screenshot(tmp_path / "search-1400.png")
    keep(shot)
    browser.js("var f = document.getElementById('find'); f.value = '';"
               "f.dispatchEvent(new Event('input'))")
    assert ids_of(browser, ".span-row.match") == []

    # zoom: drag across the middle of the minimap, with the mouse
    r = browser.js("(function () { var r = document.getElementById('minimap')"
                   ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()")
    y = r[1] + r[3] / 2
    drag(browser, r[0] + r[2] * 0.25, y, r[0] + r[2] * 0.5, y)
    a, b = map(float, browser.js("document.body.getAttribute('data-zoom')").split("-"))
    assert abs(a - 0.25) < 0.02 and abs(b - 0.5) < 0.02
    ticks = browser.js("Array.from(document.querySelectorAll('.axis .tick'))"
                       ".map(function (t) { return t.textContent; })")
    assert ticks[0] == "12.5ms" and ticks[-1] == "25.0ms"
    assert not browser.js("document.getElementById('reset-zoom').hidden")
    check_label_rules(browser)
    shot = browser.screenshot(tmp_path / "zoomed-1400.png")
    keep(shot)
    browser.js("document.getElementById('reset-zoom').click()")
    assert browser.js("document.body.getAttribute('data-zoom')") == "0.0000-1.0000"
    assert browser.problems() == []


@needs_chromium
@pytest.mark.parametrize("width", [700, 1400])
def test_browser_graph_view(loaded, browser, tmp_path, width):
    open_trace(loaded, browser, width, "#view=dag")
    assert browser.js("document.body.getAttribute('data-view')") == "dag"
    assert sorted(ids_of(browser, "#dag .node")) == SPAN_IDS
    critical = ids_of(browser, "#dag .node.critical")
    assert "0000000000000004" in critical and "0000000000000003" not in critical
    # the join waits for both branches: two join edges into it, drawn from each branch
    joins = browser.js("Array.from(document.querySelectorAll('#dag path.edge.join'))"
                       ".map(function (e) { return [e.getAttribute('data-from'),"
                       " e.getAttribute('data-to')]; })")
    assert sorted(joins) == [["0000000000000003", "0000000000000006"],
                             ["0000000000000004", "0000000000000006"]]
    # the join edge on the critical path (from the branch that finished last) is marked
    assert ids_of(browser, "#dag path.edge.cp", "data-from").count("0000000000000004") >= 1
    # node texts stay inside their boxes; nodes do not overlap
    bad = browser.js("""(function () {
      var bad = [];
      var boxes = [];
      document.querySelectorAll('#dag .node').forEach(function (n) {
        var r = n.querySelector('rect.box').getBoundingClientRect();
        n.querySelectorAll('text').forEach(function (t) {
          var b = t.getBoundingClientRect();
          if (b.left < r.left || b.right > r.right || b.top < r.top || b.bottom > r.bottom) {
            bad.push(n.getAttribute('data-span-id') + ': text outside its box'); }
        });
        boxes.forEach(function (o) {
          if (r.left < o.right && o.left < r.right && r.top < o.bottom && o.top < r.bottom) {
            bad.push(n.getAttribute('data-span-id') + ': overlaps another node'); }
        });
        boxes.push(r);
      });
      return bad; })()""")
    assert bad == []
    browser.js("document.querySelector('#dag .node[data-span-id=\"0000000000000006\"]')"
               ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    assert "join" in browser.js("document.getElementById('details').textContent")
    covered = browser.js("""(function () {
      var d = document.getElementById('details').getBoundingClientRect();
      return Array.from(document.querySelectorAll('#dag .node')).filter(function (n) {
        var b = n.getBoundingClientRect();
        return b.right > d.left && b.left < d.right && b.bottom > d.top && b.top < d.bottom;
      }).length; })()""")
    assert covered == 0
    shot = browser.screenshot(tmp_path / f"graph-{width}.png")
    keep(shot)
    browser.js("document.getElementById('tab-waterfall').click()")
    assert browser.js("document.body.getAttribute('data-view')") == "waterfall"
    check_label_rules(browser)
    assert browser.problems() == []


@needs_chromium
def test_browser_index_scatter_and_operations(loaded, browser, tmp_path):
    base = f"http://127.0.0.1:{loaded.ports['query']}"
    for width in (700, 1400):
        open_full(browser, base + "/", width)
        assert sorted(ids_of(browser, "#scatter a.dot", "data-trace")) == sorted(
            ids_of(browser, "tr.trace-row", "data-trace-id"))
        shot = browser.screenshot(tmp_path / f"index-{width}.png")
        keep(shot)
    # choosing a service fills the operation list at once (no submit)
    browser.js("var s = document.querySelector('select[name=service]'); s.value = 'nova-compute';"
               "s.dispatchEvent(new Event('change'))")
    browser.js("new Promise(function (r) { (function w() { if (document.body.getAttribute("
               "'data-ops') === 'nova-compute') { r(); } else { setTimeout(w, 20); } })(); })")
    ops = browser.js("Array.from(document.querySelector('select[name=operation]').options)"
                     ".map(function (o) { return o.value; })")
    assert ops == ["", "join", "libvirt.spawn", "notify", "thread:big", "thread:small"]
    assert browser.js("location.pathname + location.search") == "/"
    # a dot opens its trace
    from browser import click_at
    r = browser.js(f"(function () {{ var r = document.querySelector('#scatter a.dot[data-trace="
                   f"\"{TRACE:032x}\"] circle').getBoundingClientRect();"
                   " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
    browser.events = [e for e in browser.events if e["method"] != "Page.loadEventFired"]
    click_at(browser, *r)
    browser.wait_event("Page.loadEventFired")
    assert browser.js("location.pathname") == f"/trace/{TRACE:032x}"
    assert browser.js("document.body.getAttribute('data-rendered')") == "7"
    assert browser.problems() == []


@needs_chromium
def test_browser_renders_the_standalone_html_file(loaded, browser, tmp_path):
    out = tmp_path / "trace.html"
    with contextlib.redirect_stderr(io.StringIO()):
        assert cli_main(["trace", "show", f"{TRACE:x}", "--db", loaded.store.path,
                         "--html", "--out", str(out)]) == 0
    loaded.stop()  # no server: the file alone must do
    for width in (700, 1400):
        open_full(browser, out.as_uri(), width)
        assert browser.js("document.body.getAttribute('data-rendered')") == "7"
        check_label_rules(browser)
        shot = browser.screenshot(tmp_path / f"standalone-{width}.png")
        assert png_size(shot)[0] == width
        keep(shot)
    assert browser.problems() == []


HOSTILE = ["<!--", "<!-- x -->", "</script><script>alert(1)</script>", "<\\!--", "\u2028|\u2029",
           "'\"&amp;<>", "</SCRIPT >", "<![CDATA[", "\\u003c", "😀 é", "\x00\x1b[31m", "-->",
           "<script>document.body.setAttribute('data-pwned','1')</script>", "]]>", "\\"]


@needs_chromium
def test_browser_hostile_strings_round_trip(collector, browser, tmp_path):
    """Every string reaches the page's text as it was sent, and nothing in it runs."""
    spans_ = [span(0x4444, i + 1, 0 if i == 0 else 1, name, T0 + i, 100 - i,
                   tags={"v": name}) for i, name in enumerate(HOSTILE)]
    collector.submit(emit_batch(batch("svc<!--</script>", spans_)),
                     _core.THRIFT_COMPACT_MESSAGE, "test")
    assert collector.flush()
    stored = collector.store.get_trace("4444")
    assert sorted(s["operationName"] for s in stored["spans"]) == sorted(HOSTILE)
    status, _, page = get(collector, "/trace/0000000000004444")
    assert status == 200
    m = re.search(r'<script type="application/json" id="bu-data">(.*?)</script>', page, re.S)
    assert json.loads(m.group(1))["trace"] == stored
    out = tmp_path / "hostile.html"
    with contextlib.redirect_stderr(io.StringIO()):
        assert cli_main(["trace", "show", "4444", "--db", collector.store.path, "--html",
                         "--out", str(out)]) == 0
    base = f"http://127.0.0.1:{collector.ports['query']}"
    for url in (base + "/trace/0000000000004444", out.as_uri(), base + "/"):
        browser.open(url, width=1400)
        assert browser.js("document.body.getAttribute('data-pwned')") is None
        assert not any(e["method"] == "Page.javascriptDialogOpening" for e in browser.events)
        if url.endswith("/"):
            assert HOSTILE[0] in browser.js("document.getElementById('traces').textContent")
            continue
        assert browser.js("document.body.getAttribute('data-rendered')") == str(len(HOSTILE))
        ops = browser.js("Array.from(document.querySelectorAll('.span-row .op'))"
                         ".map(function (e) { return e.textContent; })")
        assert sorted(ops) == sorted(HOSTILE)
        svcs = set(browser.js("Array.from(document.querySelectorAll('.span-row .svc'))"
                              ".map(function (e) { return e.textContent; })"))
        assert svcs == {"svc<!--</script>: "}
        check_label_rules(browser)
        # the search box takes hostile text too
        browser.js("var f = document.getElementById('find'); f.value = '</script>';"
                   "f.dispatchEvent(new Event('input'))")
        assert len(ids_of(browser, ".span-row.match")) == len(HOSTILE)  # the service matches
    assert browser.problems() == []


@needs_chromium
def test_browser_long_names_deep_trees_and_many_spans(collector, browser, tmp_path):
    """A deep chain with a very long name, many siblings and spans ending at the right edge:
    labels wrap rather than hide, durations stay readable at both widths."""
    long = "nova.compute.manager.ComputeManager._build_and_run_instance." * 3
    spans_ = [span(0x6666, 1, 0, "root", T0, 1_000_000)]
    for d in range(2, 9):  # a chain 8 deep, the deepest with the long name
        spans_.append(span(0x6666, d, d - 1, long if d == 8 else f"level{d}", T0 + d * 1000,
                           1_000_000 - d * 2000, tags={"span.kind": "server"}))
    for i in range(300):  # many short siblings, some at the very end of the trace
        spans_.append(span(0x6666, 100 + i, 1, f"db.query {i}", T0 + 3000 * i + 50_000,
                           40 + i, tags={"span.kind": "client", "error": i % 97 == 0}))
    spans_.append(span(0x6666, 999, 1, "tail", T0 + 999_000, 1000))
    collector.submit(emit_batch(batch("nova-compute", spans_)), _core.THRIFT_COMPACT_MESSAGE,
                     "test")
    assert collector.flush()
    url = f"http://127.0.0.1:{collector.ports['query']}/trace/0000000000006666"
    for width in (700, 1400):
        open_full(browser, url, width)
        assert browser.js("document.body.getAttribute('data-rendered')") == str(len(spans_))
        check_label_rules(browser)
        assert long in browser.js("document.querySelector('[data-span-id=\"0000000000000008\"]"
                                  " .op').textContent")
        shot = browser.screenshot(tmp_path / f"long-{width}.png")
        keep(shot)
    assert browser.problems() == []
