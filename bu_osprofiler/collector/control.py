"""The collector's control plane for adaptive instrumentation.

Keeps the desired control state (persisted next to the trace store, in ``<store>.tracepoints.json``)
and the tracepoint registries services report, and serves both on the query port:

* ``GET  /api/tracepoints/state[?service=S]``  the state document services poll
* ``PUT  /api/tracepoints/state``              replace it (validated; the version is bumped)
* ``POST /api/tracepoints/rules``              append rules: ``{"rules": [RULE, ...]}``
* ``POST /api/tracepoints/report``             a service's registry: ``{"service", "pid", "tracepoints"}``
* ``GET  /api/tracepoints``                    every reported tracepoint, with the state

Errors are JSON ``{"error": MESSAGE}`` with status 400 (bad input) or 404 (unknown tracepoint).
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from bu_osprofiler.adaptive.rules import Rule, State, parse_state

MAX_BODY = 4 * 1024 * 1024
REPORT_TTL_S = 600.0  # forget a process that has not reported for this long


class ControlError(ValueError):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status


class ControlPlane:
    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._reports: Dict[Tuple[str, int], Tuple[float, List[Dict[str, Any]]]] = {}
        self.state = State()
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    self.state = parse_state(json.load(f))
            except (OSError, ValueError) as e:
                raise RuntimeError("%s: unreadable control state: %s" % (path, e)) from e

    def _save(self) -> None:
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.state.to_json(), f, indent=1)
        os.replace(tmp, self.path)

    def get_state(self) -> Dict[str, Any]:
        with self._lock:
            return self.state.to_json()

    def put_state(self, doc: Any) -> Dict[str, Any]:
        try:
            new = parse_state(doc)
        except ValueError as e:
            raise ControlError(400, str(e)) from None
        with self._lock:
            new.version = self.state.version + 1
            self.state = new
            self._save()
            return new.to_json()

    def known_ids(self) -> set:
        with self._lock:
            return {(tp.get("id"), tp.get("name")) for _, pts in self._reports.values()
                    for tp in pts}

    def add_rules(self, doc: Any) -> Dict[str, Any]:
        if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
            raise ControlError(400, 'expected {"rules": [...]}')
        try:
            parsed = parse_state({"rules": doc["rules"]}).rules
        except ValueError as e:
            raise ControlError(400, str(e)) from None
        if not doc.get("force"):
            known = self.known_ids()
            ids = {i for i, _ in known}
            names = [n for _, n in known]
            for r in parsed:
                if r.match == "id" and r.value not in ids:
                    raise ControlError(404, "unknown tracepoint id %r (no service reported it; "
                                            "force to add anyway)" % r.value)
                if r.match == "prefix" and not any(
                        (n or "").startswith(r.value) or i.startswith(r.value)
                        for i, n in known):
                    raise ControlError(404, "no reported tracepoint matches prefix %r" % r.value)
        with self._lock:
            rules = _fold(self.state.rules, parsed)
            self.state = State(self.state.version + 1, rules, self.state.sampling,
                               self.state.tail_errors, self.state.tail_slow_ms,
                               self.state.tail_slow_ms_by_type)
            self._save()
            return self.state.to_json()

    def report(self, doc: Any) -> None:
        if not isinstance(doc, dict) or not isinstance(doc.get("service"), str) or \
                not isinstance(doc.get("tracepoints"), list):
            raise ControlError(400, 'expected {"service": str, "pid": int, "tracepoints": [...]}')
        pid = doc.get("pid") if isinstance(doc.get("pid"), int) else 0
        pts = [tp for tp in doc["tracepoints"] if isinstance(tp, dict) and
               isinstance(tp.get("id"), str)]
        now = time.time()
        with self._lock:
            self._reports[(doc["service"], pid)] = (now, pts)
            for k in [k for k, (t, _) in self._reports.items() if now - t > REPORT_TTL_S]:
                del self._reports[k]

    def listing(self) -> Dict[str, Any]:
        """Reported tracepoints merged per (service, id): hits summed over processes."""
        merged: Dict[Tuple[str, str], Dict[str, Any]] = {}
        with self._lock:
            reports = list(self._reports.items())
            state = self.state.to_json()
        for (service, pid), (seen, pts) in reports:
            for tp in pts:
                key = (service, tp["id"])
                m = merged.get(key)
                if m is None:
                    m = merged[key] = dict(tp, service=service, processes=0, hits=0,
                                           sampled_hits=0, last_report=seen)
                m["processes"] += 1
                m["hits"] += int(tp.get("hits") or 0)
                m["sampled_hits"] += int(tp.get("sampled_hits") or 0)
                m["last_report"] = max(m["last_report"], seen)
        rows = sorted(merged.values(), key=lambda d: (d["service"], d["id"]))
        return {"tracepoints": rows, "state": state}


def _fold(old: List[Rule], new: List[Rule]) -> List[Rule]:
    """Append rules, dropping older ones a new rule makes irrelevant (same target)."""
    keep = [r for r in old if not any(
        (r.match, r.value, r.request_type, r.service) == (n.match, n.value, n.request_type,
                                                          n.service) for n in new)]
    return keep + new


def plane_of(collector: Any) -> ControlPlane:
    plane = getattr(collector, "_tracepoint_control", None)
    if plane is None:
        path = getattr(collector.store, "path", None)
        plane = ControlPlane(None if not path or path == ":memory:" else path + ".tracepoints.json")
        collector._tracepoint_control = plane
    return plane


def handle(handler: Any, collector: Any, method: str, parts: List[str]) -> None:
    """Serve /api/tracepoints[...] for the query handler (``handler``: BaseHTTPRequestHandler
    with send_json)."""
    try:
        plane = plane_of(collector)
        sub = parts[2] if len(parts) == 3 else None
        if parts[:2] != ["api", "tracepoints"] or len(parts) > 3 or sub not in (None, "state", "rules", "report"):
            raise ControlError(404, "no such control endpoint")
        if method in ("GET", "HEAD"):
            if sub is None:
                handler.send_json(200, plane.listing())
            elif sub == "state":
                handler.send_json(200, plane.get_state())
            else:
                raise ControlError(405, "use POST")
            return
        try:
            n = int(handler.headers.get("Content-Length") or 0)
        except ValueError:
            raise ControlError(400, "bad Content-Length") from None
        if n < 0 or n > MAX_BODY:
            raise ControlError(400, "body too large")
        raw = handler.rfile.read(n) if n else b""
        try:
            doc = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ControlError(400, "malformed JSON: %s" % e) from None
        if sub == "state" and method in ("PUT", "POST"):
            handler.send_json(200, plane.put_state(doc))
        elif sub == "rules" and method == "POST":
            handler.send_json(200, plane.add_rules(doc))
        elif sub == "report" and method == "POST":
            plane.report(doc)
            handler.send_json(200, {"ok": True})
        else:
            raise ControlError(405, "method not allowed")
    except ControlError as e:
        handler.send_json(e.status, {"error": str(e)})
    except (BrokenPipeError, ConnectionResetError):
        pass
    except Exception as e:  # noqa: BLE001 -- e.g. the state file unwritable: answer, keep serving
        collector._warn.warn("control", "collector: %s %s failed: %s", method, "/".join(parts), e)
        try:
            handler.send_json(500, {"error": str(e)})
        except OSError:
            pass


# ---------------------------------------------------------------- the web view's tracepoints page

def latencies(store: Any, service: str, name: str, traces: int = 50) -> List[float]:
    """Durations (µs) of the recent spans named ``name`` of ``service`` in the store."""
    out: List[float] = []
    for tid in store.find_trace_ids(service=service, operation=name, limit=traces):
        t = store.get_trace(tid) or {}
        procs = t.get("processes") or {}
        out += [float(s.get("duration", 0)) for s in t.get("spans") or []
                if s.get("operationName") == name and
                (procs.get(s.get("processID")) or {}).get("serviceName") == service]
    return out


def render_page(collector: Any) -> str:
    """Reported tracepoints with hits, mean / p99 latency of their spans, and on/off toggles."""
    import html

    from bu_osprofiler.adaptive.analyze import percentile
    from bu_osprofiler.collector import web

    e = html.escape
    data = plane_of(collector).listing()
    rows = []
    for tp in data["tracepoints"]:
        lat = sorted(latencies(collector.store, tp["service"], tp.get("name") or tp["id"]))
        mean = "%.2f ms" % (sum(lat) / len(lat) / 1000) if lat else "-"
        p99 = "%.2f ms" % (percentile(lat, 99) / 1000) if lat else "-"
        on = tp.get("enabled", True)
        rule = json.dumps({"enabled": not on, "id": tp["id"], "service": tp["service"]})
        rows.append(
            "<tr><td>%s</td><td><code>%s</code></td><td>%s</td><td>%s</td><td>%d</td><td>%d</td>"
            "<td>%s</td><td>%s</td><td><button data-rule='%s'>%s</button></td></tr>" % (
                e(tp["service"]), e(tp["id"]), e(str(tp.get("kind", ""))),
                e(str(tp.get("mode", "on" if on else "off"))), tp.get("hits", 0),
                tp.get("sampled_hits", 0), mean, p99, e(rule, quote=True),
                "disable" if on else "enable"))
    rules = "".join("<li><code>%s</code></li>" % e(json.dumps(r, sort_keys=True))
                    for r in data["state"]["rules"])
    return """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Tracepoints - bu-osprofiler</title>
<style>body{font:14px sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}</style></head><body>
<p><a href="/">traces</a></p><h1>Tracepoints</h1>
<p>Reported by the services polling this collector; state version %d. A change reaches every
service within about a second.</p>
<table><tr><th>service</th><th>id</th><th>kind</th><th>state</th><th>hits</th><th>sampled</th>
<th>mean</th><th>p99</th><th></th></tr>%s</table>
<h2>Rules (last match wins)</h2><ul>%s</ul>
<script>%s</script></body></html>
""" % (data["state"]["version"], "".join(rows) or
       "<tr><td colspan=9>no tracepoints reported yet</td></tr>", rules or "<li>none</li>",
       web._asset("tracepoints.js"))
