"""The web view: a trace list and a trace waterfall, as self-contained HTML (no CDN, works offline).

The same waterfall page is what ``bu-osprofiler trace show --html`` writes to a file: the trace (in
Jaeger JSON) and its analysis (tree order, critical path, fork/join edges) are embedded in the
page, and a small script in the page draws it.
"""
from __future__ import annotations

import datetime
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
    """JSON safe inside <script>: no '</' (would end the element) and no HTML comment openers."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return s.replace("</", "<\\/").replace("<!--", "<\\!--").replace("\u2028", "\\u2028") \
        .replace("\u2029", "\\u2029")


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
    dt = datetime.datetime.fromtimestamp(us / 1e6)
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


def _page(title: str, body: str, script: str = "") -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{html.escape(title)}</title><style>{_asset('style.css')}</style></head>"
            f"<body>{body}{script}</body></html>\n")


def render_trace(trace: Mapping[str, Any], standalone: bool = False) -> str:
    """The waterfall page of one trace (Jaeger JSON). ``standalone``: no links back to a server."""
    data = {"trace": trace, "view": trace_view_data(trace), "standalone": standalone}
    root = None
    spans = trace.get("spans") or []
    if spans:
        g = analysis.from_jaeger(trace)
        r = g.root()
        root = f"{r.service}: {r.name}" if r else None
    title = f"{root or 'trace'} — {trace.get('traceID', '')}"
    nav = "" if standalone else '<a class="home" href="/">&larr; traces</a>'
    body = (f'<header>{nav}<h1 id="title">{html.escape(title)}</h1></header>'
            '<div id="summary"></div><div id="legend"></div>'
            '<div id="waterfall" aria-label="trace waterfall"></div>'
            '<aside id="details" hidden></aside>'
            '<noscript>This page draws the waterfall with JavaScript.</noscript>')
    script = (f'<script type="application/json" id="bu-data">{_embed_json(data)}</script>'
              f"<script>{_asset('waterfall.js')}</script>")
    return _page(title, body, script)


def render_error(code: int, message: str) -> str:
    body = (f'<header><a class="home" href="/">&larr; traces</a><h1>{code}</h1></header>'
            f'<p class="error-message">{html.escape(message)}</p>')
    return _page(f"{code} — bu-osprofiler", body)


def _opt(value: str, selected: str, label: Optional[str] = None) -> str:
    sel = " selected" if value == selected else ""
    return f'<option value="{html.escape(value)}"{sel}>{html.escape(label or value or "all")}</option>'


def render_index(summaries: Sequence[Mapping[str, Any]], services: Sequence[str],
                 query: Mapping[str, List[str]], operations: Sequence[str] = ()) -> str:
    """Recent traces with a filter form (service, operation, lookback, durations, tags, errors)."""
    q = {k: (v[0] if v else "") for k, v in query.items()}
    svc, op = q.get("service", ""), q.get("operation", "")
    lookbacks = [("", "any time"), ("15m", "last 15 minutes"), ("1h", "last hour"),
                 ("6h", "last 6 hours"), ("24h", "last day"), ("168h", "last week")]
    form = ['<form id="filters" method="get" action="/">',
            # changing the service reloads, so that the operation list matches it
            '<label>Service <select name="service" onchange="this.form.operation.value=\'\';'
            'this.form.submit()">', _opt("", svc)]
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
    if rows:
        table = ('<table id="traces"><thead><tr><th>Root span</th><th>Start</th><th>Duration</th>'
                 '<th>Spans</th><th>Services</th><th>Trace id</th></tr></thead><tbody>'
                 + "".join(rows) + "</tbody></table>")
    else:
        table = '<p class="empty">No traces match. Send spans to this collector and reload.</p>'
    shown = urlencode({k: v for k, v in q.items() if v})
    body = ('<header><h1>bu-osprofiler traces</h1></header>' + "".join(form)
            + f'<p class="count">{len(summaries)} trace{"s" if len(summaries) != 1 else ""}'
            + (f' for {html.escape(shown)}' if shown else '') + '</p>' + table)
    return _page("bu-osprofiler traces", body)
