"""Where the CLI reads traces from: the embedded store (SQLite) or a Jaeger query endpoint."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import quote, urlencode

from bu_osprofiler.collector.store import Store, normalize_trace_id


class SourceError(Exception):
    """The source cannot be read (missing store, unreachable endpoint, bad answer)."""


def summarize(trace: Mapping[str, Any]) -> Dict[str, Any]:
    """The list view's summary of one Jaeger JSON trace."""
    spans = trace.get("spans") or []
    procs = trace.get("processes") or {}
    svc = lambda s: (procs.get(s.get("processID")) or {}).get("serviceName", "")  # noqa: E731
    ids = {s.get("spanID") for s in spans}
    start = min((s["startTime"] for s in spans), default=0)
    end = max((s["startTime"] + s["duration"] for s in spans), default=0)
    roots = [s for s in spans
             if not any(r.get("spanID") in ids for r in s.get("references") or [])]
    root = min(roots or spans, key=lambda s: s["startTime"]) if spans else {}
    errors = sum(1 for s in spans for t in s.get("tags") or []
                 if t.get("key") == "error" and t.get("value") in (True, "true"))
    return {"traceID": trace.get("traceID", ""), "start": start, "duration": end - start,
            "spans": len(spans), "errors": errors,
            "services": sorted({svc(s) for s in spans}),
            "service": svc(root) if root else "", "operation": root.get("operationName", "")}


def _is_envelope(body: bytes) -> bool:
    """Jaeger's query API answers {"data": ..., "errors": ...}."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and "data" in doc


class StoreSource:
    """The embedded collector's SQLite store, read-only."""

    def __init__(self, path: Optional[str] = None):
        try:
            self.store = Store(path, readonly=True)
        except FileNotFoundError as e:
            raise SourceError(f"{e} (start `bu-osprofiler collector` or pass --db PATH)") from None
        self.name = self.store.path

    def get_trace(self, trace_id: str) -> Optional[Dict[str, Any]]:
        try:
            return self.store.get_trace(trace_id)
        except Exception as e:  # sqlite3.DatabaseError etc.
            if isinstance(e, ValueError):
                raise
            raise SourceError(f"cannot read {self.name}: {e}") from None

    def list(self, **criteria: Any) -> List[Dict[str, Any]]:
        try:
            return self.store.recent(**criteria)
        except Exception as e:
            raise SourceError(f"cannot read {self.name}: {e}") from None

    def call(self, fn: Any, *args: Any) -> Any:
        """``fn(store, *args)``; a damaged store is a SourceError, a bad argument raises."""
        try:
            return fn(self.store, *args)
        except ValueError:
            raise
        except Exception as e:  # sqlite3.DatabaseError etc.
            raise SourceError(f"cannot read {self.name}: {e}") from None


class JaegerSource:
    """A Jaeger query service (or this project's collector) at ``url`` (e.g. http://host:16686)."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.base = url.rstrip("/")
        if not self.base.startswith(("http://", "https://")):
            self.base = "http://" + self.base
        self.timeout = timeout
        self.name = self.base

    def _get(self, path: str, params: Optional[Dict[str, Any]] = None) -> Any:
        url = self.base + path + ("?" + urlencode(params, doseq=True) if params else "")
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 404 and _is_envelope(e.read()):
                return None  # the API's own "not found" (a trace id it does not have)
            if e.code == 404:
                raise SourceError(f"{self.base} is not a Jaeger query API ({url}: HTTP 404); "
                                  "give the address the Jaeger UI is served at, e.g. "
                                  "http://HOST:16686") from None
            raise SourceError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SourceError(f"cannot reach {self.base}: {reason}") from None
        if not _is_envelope(body):
            raise SourceError(f"{self.base} is not a Jaeger query API ({url} did not answer "
                              "with Jaeger's JSON envelope)")
        return json.loads(body)

    def get_trace(self, trace_id: str) -> Optional[Dict[str, Any]]:
        tid = normalize_trace_id(trace_id)
        doc = self._get("/api/traces/" + quote(tid))
        if not doc or not doc.get("data"):
            return None
        return doc["data"][0]

    def list(self, service: Optional[str] = None, operation: Optional[str] = None,
             start_us: Optional[int] = None, end_us: Optional[int] = None,
             min_duration_us: Optional[int] = None, max_duration_us: Optional[int] = None,
             tags: Optional[Dict[str, str]] = None, limit: int = 20,
             errors_only: bool = False) -> List[Dict[str, Any]]:
        # Jaeger's search needs a service: without one, search each service and merge.
        services = [service] if service else ((self._get("/api/services") or {}).get("data") or [])
        tags = dict(tags or {})
        if errors_only:
            tags["error"] = "true"
        seen: Dict[str, Dict[str, Any]] = {}
        for svc in services:
            params: Dict[str, Any] = {"service": svc, "limit": limit}
            if operation:
                params["operation"] = operation
            if start_us is not None:
                params["start"] = start_us
            if end_us is not None:
                params["end"] = end_us
            if min_duration_us:
                params["minDuration"] = f"{int(min_duration_us)}us"
            if max_duration_us:
                params["maxDuration"] = f"{int(max_duration_us)}us"
            if tags:
                params["tags"] = json.dumps(tags)
            for t in (self._get("/api/traces", params) or {}).get("data") or []:
                seen.setdefault(t.get("traceID", ""), t)
        out = [summarize(t) for t in seen.values()]
        out.sort(key=lambda s: s["start"], reverse=True)
        return out[:limit]
