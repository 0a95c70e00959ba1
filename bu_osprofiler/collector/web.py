"""The web view: a trace list and a trace waterfall, as self-contained HTML (no CDN, works offline).

The same waterfall page is what ``bu-osprofiler trace show --html`` writes to a file: the trace (in
Jaeger JSON) and its analysis (tree order, critical path, fork/join edges) are embedded in the
page, and a small script in the page draws it.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import html
import json
from importlib import resources
from typing import Any, Dict, List, Mapping, Optional, Sequence
from urllib.parse import quote, urlencode

from bu_osprofiler import analysis

_STATIC = "static"


def _asset(name: str) -> str:
    return resources.files("bu_osprofiler.collector").joinpath(_STATIC, name).read_text("utf-8")


def _embed_json(obj: Any) -> str:
    """JSON safe as the text of a <script> element: '<', '>' and '&' as \\u escapes (so no
    '</script', '<!--' or '-->' can appear), non-ASCII and lone surrogates escaped too. Every
    string round-trips through JSON.parse."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=str)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _sig3(v: float) -> str:
    return f"{v:.0f}" if v >= 99.95 else f"{v:.1f}" if v >= 9.995 else f"{v:.2f}"


def fmt_duration(us: float) -> str:
    """Human duration from microseconds, 3 significant digits: 850µs, 12.3ms, 4.56s."""
    us = float(us)
    if us < 999.5:
        return f"{us:.0f}µs"
    if us < 999_500:
        return _sig3(us / 1000) + "ms"
    return _sig3(us / 1e6) + "s"


def fmt_time(us: float) -> str:
    """Local time of a µs timestamp; one outside the years 1-9999 is shown as such, not a crash."""
    try:
        dt = datetime.datetime.fromtimestamp(us / 1e6)
    except (OverflowError, ValueError, OSError):
        return f"out of range ({int(us)} µs)"
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{dt.microsecond // 1000:03d}"


def trace_view_data(trace: Mapping[str, Any]) -> Dict[str, Any]:
    """What the waterfall script needs besides the trace: row order and depth, critical path
    (span ids and self-time segments), fork/join edges."""
    g = analysis.from_jaeger(trace)
    hx = lambda i: f"{i:016x}"  # noqa: E731
    rows = [[hx(n.span_id), d] for n, d in g.walk()]
    return {
        "rows": rows,
        "critical": [hx(i) for i in g.critical_span_ids()],
        "segments": [[hx(s.span_id), s.start, s.end] for s in g.critical_path()],
        "edges": [[hx(a), hx(b), kind] for a, b, kind in g.edges()],
    }


def _script_hash(name: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(_asset(name).encode()).digest()).decode() \
        + "'"


SCRIPTS = ("waterfall.js", "index.js", "tracepoints.js")


def csp(frame_ancestors: bool = False) -> str:
    """The Content-Security-Policy of every page: only our own inline scripts (by hash), no
    network but the page's own origin, no plugins, no framing (header only: a <meta> policy
    cannot say frame-ancestors)."""
    policy = ("default-src 'none'; script-src " + " ".join(_script_hash(n) for n in SCRIPTS)
              + "; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; "
              "form-action 'self'; base-uri 'none'")
    return policy + ("; frame-ancestors 'none'" if frame_ancestors else "")


def _header(title_html: str, standalone: bool = False, home: bool = True) -> str:
    if standalone:
        return f'<header><h1 id="title">{title_html}</h1></header>'
    return ('<header>' + ('<a class="home" href="/">&larr; traces</a>' if home else
                          '<a class="home" href="/tracepoints">tracepoints</a>') +
            f'<h1 id="title">{title_html}</h1>'
            '<form class="lookup" method="get" action="/lookup" role="search">'
            '<input name="id" size="18" placeholder="trace id or prefix" aria-label="trace id"'
            ' autocomplete="off" spellcheck="false"><button type="submit">Go</button></form>'
            '</header>')


def _page(title: str, body: str, script: str = "") -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{html.escape(csp())}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{html.escape(title)}</title><style>{_asset('style.css')}</style></head>"
            f"<body>{body}{script}</body></html>\n")


def render_trace(trace: Mapping[str, Any], standalone: bool = False,
                 critical_path: bool = True) -> str:
    """The page of one trace (Jaeger JSON): waterfall, graph (DAG) view and span details.
    ``standalone``: no links back to a server; ``critical_path``: the path is shown at first."""
    data = {"trace": trace, "view": trace_view_data(trace), "standalone": standalone,
            "showCriticalPath": critical_path}
    root = None
    spans = trace.get("spans") or []
    if spans:
        g = analysis.from_jaeger(trace)
        r = g.root()
        root = f"{r.service}: {r.name}" if r else None
    title = f"{root or 'trace'} — {trace.get('traceID', '')}"
    body = (_header(html.escape(title), standalone)
            + '<div id="summary"></div>'
            '<div id="toolbar"><div class="tabs" role="tablist"></div><div id="legend"></div>'
            '</div><div id="minimap" aria-label="overview: drag to zoom"></div>'
            '<div id="main"><div id="views"><div id="waterfall" aria-label="trace waterfall"></div>'
            '<div id="dag" hidden aria-label="trace graph"></div></div>'
            '<div id="splitter" title="drag to resize the details" hidden></div>'
            '<aside id="details" hidden></aside></div>'
            '<noscript>This page draws the trace with JavaScript.</noscript>')
    script = (f'<script type="application/json" id="bu-data">{_embed_json(data)}</script>'
              f"<script>{_asset('waterfall.js')}</script>")
    return _page(title, body, script)


def render_error(code: int, message: str) -> str:
    body = _header(str(code)) + f'<p class="error-message">{html.escape(message)}</p>'
    return _page(f"{code} — bu-osprofiler", body)


def _trace_rows(summaries: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for s in summaries:
        tid = s["traceID"]
        err = (f'<span class="badge err">{s["errors"]} error{"s" if s["errors"] != 1 else ""}</span>'
               if s["errors"] else "")
        rows.append(
            f'<tr class="trace-row" data-trace-id="{html.escape(tid)}">'
            f'<td><a href="/trace/{quote(tid)}">{html.escape(s["service"])}: '
            f'{html.escape(s["operation"])}</a> {err}</td>'
            f'<td class="num">{fmt_time(s["start"])}</td>'
            f'<td class="num">{fmt_duration(s["duration"])}</td>'
            f'<td class="num">{s["spans"]}</td>'
            f'<td>{html.escape(", ".join(s["services"]))}</td>'
            f'<td><code>{html.escape(tid)}</code> <a class="json" href="/api/traces/{quote(tid)}">JSON</a></td>'
            '</tr>')
    return ('<table id="traces"><thead><tr><th>Root span</th><th>Start</th><th>Duration</th>'
            '<th>Spans</th><th>Services</th><th>Trace id</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def render_candidates(prefix: str, summaries: Sequence[Mapping[str, Any]]) -> str:
    """The traces whose id starts with ``prefix`` (an ambiguous lookup)."""
    body = (_header(f"{len(summaries)} traces start with {html.escape(prefix.strip().lower())}")
            + '<p class="count">Pick one, or type more digits.</p>' + _trace_rows(summaries))
    return _page("traces " + prefix, body)


def _opt(value: str, selected: str, label: Optional[str] = None) -> str:
    sel = " selected" if value == selected else ""
    return f'<option value="{html.escape(value)}"{sel}>{html.escape(label or value or "all")}</option>'


_MAX_US = 253402300799999999


def scatter(summaries: Sequence[Mapping[str, Any]]) -> str:
    """Duration over start time, one dot per trace (red with errors); a dot links to its trace.
    Positions are percentages, so the plot scales with the page without distorting the dots.
    Traces with times that are not dates are left out and counted."""
    pts = [s for s in summaries if 0 <= s["start"] <= _MAX_US and 0 <= s["duration"] <= _MAX_US]
    if not pts:
        return ""
    t0, t1 = min(s["start"] for s in pts), max(s["start"] for s in pts)
    dmax = max(s["duration"] for s in pts) or 1
    span = (t1 - t0) or 1
    out = ['<figure id="scatter"><svg role="img" aria-label="trace durations over time"'
           ' width="100%" height="170">',
           '<line class="axis" x1="8%" y1="85%" x2="99%" y2="85%"></line>',
           '<line class="axis" x1="8%" y1="6%" x2="8%" y2="85%"></line>',
           f'<text class="tick" x="0.8%" y="10%">{fmt_duration(dmax)}</text>',
           '<text class="tick" x="0.8%" y="85%">0</text>',
           f'<text class="tick" x="8%" y="97%">{html.escape(fmt_time(t0))}</text>',
           f'<text class="tick" x="99%" y="97%" text-anchor="end">{html.escape(fmt_time(t1))}</text>']
    for s in pts:
        x = 10 + 88 * ((s["start"] - t0) / span if t1 > t0 else 0.5)
        y = 85 - 77 * (s["duration"] / dmax)
        tip = (f'{s["service"]}: {s["operation"]} — {fmt_duration(s["duration"])}, '
               f'{s["spans"]} spans' + (f', {s["errors"]} errors' if s["errors"] else "")
               + f' — {fmt_time(s["start"])}')
        out.append(f'<a href="/trace/{quote(s["traceID"])}" class="dot{" err" if s["errors"] else ""}"'
                   f' data-trace="{html.escape(s["traceID"])}"><circle cx="{x:.3f}%"'
                   f' cy="{y:.3f}%" r="5"><title>{html.escape(tip)}</title></circle></a>')
    out.append("</svg>")
    left = len(summaries) - len(pts)
    if left:
        out.append(f'<figcaption>{left} trace{"s" if left != 1 else ""} with times out of'
                   ' range not plotted</figcaption>')
    out.append("</figure>")
    return "".join(out)


def render_index(summaries: Sequence[Mapping[str, Any]], services: Sequence[str],
                 query: Mapping[str, List[str]], operations: Sequence[str] = ()) -> str:
    """Recent traces with a filter form (service, operation, lookback, durations, tags, errors),
    a duration scatter plot and a table."""
    q = {k: (v[0] if v else "") for k, v in query.items()}
    svc, op = q.get("service", ""), q.get("operation", "")
    lookbacks = [("", "any time"), ("15m", "last 15 minutes"), ("1h", "last hour"),
                 ("6h", "last 6 hours"), ("24h", "last day"), ("168h", "last week")]
    # the operation list follows the service as soon as it changes (index.js asks the API)
    form = ['<form id="filters" method="get" action="/">',
            '<label>Service <select name="service">', _opt("", svc)]
    form += [_opt(s, svc) for s in services]
    form += ['</select></label>', '<label>Operation <select name="operation">', _opt("", op)]
    form += [_opt(o, op) for o in operations]
    if op and op not in operations:
        form.append(_opt(op, op))
    form += ['</select></label>', '<label>Lookback <select name="lookback">']
    form += [_opt(v, q.get("lookback", ""), lbl) for v, lbl in lookbacks]
    form += ['</select></label>',
             f'<label>Min duration <input name="minDuration" size="6" placeholder="e.g. 10ms"'
             f' value="{html.escape(q.get("minDuration", ""))}"></label>',
             f'<label>Tags <input name="tags" size="24" placeholder=\'{{"http.status_code":"500"}}\''
             f' value="{html.escape(q.get("tags", ""))}"></label>',
             f'<label><input type="checkbox" name="error" value="1"'
             f'{" checked" if q.get("error") in ("1", "true") else ""}> errors only</label>',
             f'<label>Limit <input name="limit" size="4" value="{html.escape(q.get("limit", "") or "20")}"></label>',
             '<button type="submit">Find traces</button></form>']
    if summaries:
        table = scatter(summaries) + _trace_rows(summaries)
    else:
        table = '<p class="empty">No traces match. Send spans to this collector and reload.</p>'
    shown = urlencode({k: v for k, v in q.items() if v})
    body = (_header("bu-osprofiler traces", home=False) + "".join(form)
            + f'<p class="count">{len(summaries)} trace{"s" if len(summaries) != 1 else ""}'
            + (f' for {html.escape(shown)}' if shown else '') + '</p>' + table)
    return _page("bu-osprofiler traces", body, f"<script>{_asset('index.js')}</script>")
