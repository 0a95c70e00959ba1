"""Where to look: per request type latency, critical-path frequency, variance explained, and the
disabled trace points to switch on next (the Pythia loop over stored traces).

For each request type (the root span's ``request.type`` tag, else its operation name):

* the latency distribution of its traces (p50 / p90 / p99, a histogram);
* per span name, how often it lies on the critical path, its mean critical-path time, and the
  share of latency variance it explains: R² of trace latency against the span's critical-path
  time over the type's traces (a name whose time tracks the latency explains its variation);
* suggestions: disabled trace points under the names that explain the most, ranked by evidence
  that they run beneath them -- seen beneath them in stored traces (from when they were on),
  then code proximity (module of the point vs. the function behind the span), then hits.
"""
from __future__ import annotations

import html
import math
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from bu_osprofiler.analysis import from_jaeger

REQUEST_TYPE_TAG = "request.type"


def percentile(sorted_values: List[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _r2(xs: List[float], ys: List[float]) -> float:
    n = len(xs)
    if n < 3:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    if sxx <= 0 or syy <= 0:
        return 0.0
    return max(0.0, min(1.0, sxy * sxy / (sxx * syy)))


def request_type(g: TraceGraph) -> Optional[str]:
    root = g.root()
    if root is None:
        return None
    for n in [root] + [x for x, _ in g.walk()]:
        v = n.tags.get(REQUEST_TYPE_TAG)
        if v:
            return str(v)
    return root.name


def _module_of(func_name: Any) -> str:
    """``pkg.mod.Class.meth`` -> ``pkg.mod.Class`` (as a dotted prefix to compare)."""
    return str(func_name).rsplit(".", 1)[0] if func_name else ""


def _common_prefix(a: str, b: str) -> int:
    n = 0
    if not a or not b:
        return 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


Key = Tuple[str, str]  # (service, span name)


def analyze(traces: Iterable[Mapping[str, Any]], tracepoints: Optional[List[Dict[str, Any]]] = None,
            top: int = 5, suggest: int = 3) -> Dict[str, Any]:
    """The report (a JSON-able dict) over Jaeger-JSON traces and reported tracepoints.

    Span names are told apart per service (the same name in two services is two rows)."""
    by_type: Dict[str, List[Tuple[float, Dict[Key, float], Key]]] = defaultdict(list)
    beneath: Dict[Key, set] = defaultdict(set)  # (service, name) -> descendants' (service, name)
    funcs: Dict[Key, str] = {}  # the function behind a span name (its ``name`` tag)
    for t in traces:
        g = from_jaeger(t)
        root = g.root()
        rt = request_type(g)
        if root is None or rt is None:
            continue
        cp: Dict[Key, float] = defaultdict(float)
        for seg in g.critical_path(root):
            n = g.nodes[seg.span_id]
            cp[(n.service, n.name)] += seg.end - seg.start
        by_type[rt].append((root.duration, dict(cp), (root.service, root.name)))
        for n, _ in g.walk():
            if "name" in n.tags:
                funcs.setdefault((n.service, n.name), str(n.tags["name"]))
            p = g.parent(n.span_id)
            while p is not None:
                beneath[(p.service, p.name)].add((n.service, n.name))
                p = g.parent(p.span_id)
    off = [tp for tp in (tracepoints or []) if not tp.get("enabled", True)]
    out: Dict[str, Any] = {"request_types": []}
    for rt, rows in sorted(by_type.items(), key=lambda kv: -len(kv[1])):
        lat = sorted(r[0] for r in rows)
        roots = {r[2] for r in rows}
        stats = []
        for key in sorted({k for r in rows for k in r[1]} - roots):
            xs = [r[1].get(key, 0.0) for r in rows]
            stats.append({"name": key[1], "service": key[0],
                          "critical_share": sum(1 for x in xs if x > 0) / len(rows),
                          "mean_critical_us": sum(xs) / len(rows),
                          "variance_explained": _r2(xs, [r[0] for r in rows])})
        hot = sorted(stats, key=lambda s: (-s["variance_explained"] *
                                           max(s["mean_critical_us"], 1e-9), s["name"]))[:top]
        suggestions: List[Dict[str, Any]] = []
        for s in hot[:2]:
            key = (s["service"], s["name"])
            func = funcs.get(key, "")
            cands = []
            for tp in off:
                if tp.get("service") not in (None, s["service"]):
                    continue
                seen = (s["service"], tp.get("name")) in beneath.get(key, ())
                prox = _common_prefix(tp.get("module") or "", _module_of(func))
                if seen or prox > 0:
                    cands.append(((seen, prox, tp.get("hits", 0)), tp))
            cands.sort(key=lambda c: c[0], reverse=True)
            for (seen, prox, hits), tp in cands[:suggest]:
                if any(x["id"] == tp["id"] for x in suggestions):
                    continue
                suggestions.append({
                    "id": tp["id"], "service": tp.get("service"), "under": s["name"],
                    "why": ("seen beneath %s in stored traces" % s["name"] if seen else
                            "code near %s (%d common module levels)" % (func or s["name"], prox)),
                    "hits": hits})
        out["request_types"].append({
            "request_type": rt, "traces": len(rows),
            "latency_us": {"p50": percentile(lat, 50), "p90": percentile(lat, 90),
                           "p99": percentile(lat, 99), "max": lat[-1], "mean": sum(lat) / len(lat)},
            "histogram": histogram(lat), "spans": hot, "suggest": suggestions})
    return out


def histogram(values: List[float], bins: int = 20) -> List[Tuple[float, float, int]]:
    if not values:
        return []
    lo, hi = min(values), max(values)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    return [(lo + i * width, lo + (i + 1) * width, c) for i, c in enumerate(counts)]


def _ms(us: float) -> str:
    return "%.2f ms" % (us / 1000.0)


def render_text(report: Mapping[str, Any]) -> str:
    lines = []
    if not report["request_types"]:
        return "no traces to analyze\n"
    for r in report["request_types"]:
        lat = r["latency_us"]
        lines.append("%s  (%d traces)  p50 %s  p90 %s  p99 %s" % (
            r["request_type"], r["traces"], _ms(lat["p50"]), _ms(lat["p90"]), _ms(lat["p99"])))
        for s in r["spans"]:
            lines.append("  %-40s on critical path %3.0f%%  mean %s  explains %3.0f%% of variance"
                         % (("%s [%s]" % (s["name"], s["service"]))[:40], 100 * s["critical_share"], _ms(s["mean_critical_us"]),
                            100 * s["variance_explained"]))
        for sg in r["suggest"]:
            lines.append("  -> enable %s  (under %s: %s)" % (sg["id"], sg["under"], sg["why"]))
        lines.append("")
    return "\n".join(lines)


def render_html(report: Mapping[str, Any]) -> str:
    e = html.escape
    parts = ["<!doctype html><meta charset=utf-8><title>bu-osprofiler analyze</title>",
             "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{padding:2px 8px;text-align:left}rect{fill:#4a7fb0}</style>",
             "<h1>Where to look</h1>"]
    for r in report["request_types"]:
        lat = r["latency_us"]
        parts.append("<h2>%s</h2><p>%d traces; p50 %s, p90 %s, p99 %s</p>" % (
            e(r["request_type"]), r["traces"], _ms(lat["p50"]), _ms(lat["p90"]), _ms(lat["p99"])))
        hist = r["histogram"]
        peak = max([c for _, _, c in hist] + [1])
        bars = "".join('<rect x="%d" y="%.1f" width="18" height="%.1f"><title>%s - %s: %d'
                       '</title></rect>' % (i * 20, 100 - 100.0 * c / peak, 100.0 * c / peak,
                                            _ms(a), _ms(b), c)
                       for i, (a, b, c) in enumerate(hist))
        parts.append('<svg width="%d" height="100" role="img" aria-label="latency histogram">'
                     '%s</svg><p>%s ... %s</p>' % (20 * len(hist), bars,
                                                   _ms(hist[0][0]) if hist else "",
                                                   _ms(hist[-1][1]) if hist else ""))
        parts.append("<table><tr><th>span</th><th>on critical path</th><th>mean critical time"
                     "</th><th>variance explained</th></tr>")
        for s in r["spans"]:
            parts.append("<tr><td>%s [%s]</td><td>%.0f%%</td><td>%s</td><td>%.0f%%</td></tr>" % (
                e(s["name"]), e(s["service"]), 100 * s["critical_share"], _ms(s["mean_critical_us"]),
                100 * s["variance_explained"]))
        parts.append("</table>")
        if r["suggest"]:
            parts.append("<p>Enable next:</p><ul>%s</ul>" % "".join(
                "<li><code>%s</code> under %s: %s</li>" % (e(s["id"]), e(s["under"]), e(s["why"]))
                for s in r["suggest"]))
    return "\n".join(parts) + "\n"
