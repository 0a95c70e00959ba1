"""The collector's query port: Jaeger's query API (JSON) and the web view, behind a Host check,
security headers and an optional token.

Every answer of the API is Jaeger's envelope ``{"data", "total", "limit", "offset", "errors"}``;
errors are ``{"errors": [{"code": 400, "msg": "..."}]}`` with the matching HTTP status.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import math
import socket
from http.cookies import SimpleCookie
from typing import Any, Dict, Iterable, List, Optional
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from bu_osprofiler.collector import server as _server
from bu_osprofiler.collector import store as _store
from bu_osprofiler.collector import web

MAX_TRACE_IDS = 100      # traceID= values answered by one /api/traces request
MAX_LIMIT = 1500         # Jaeger UI's largest "Limit Results"
MAX_US = 253402300799999999  # 9999-12-31T23:59:59.999999Z: beyond, times are not dates
MAX_DURATION_US = 100 * 365 * 86400 * 10**6
TOKEN_COOKIE = "bu_osprofiler_token"
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


class BadRequest(ValueError):
    """A parameter the query API cannot use: answered 400 with this message."""


# ---------------------------------------------------------------- parameters

def parse_duration_us(text: str, what: str = "duration") -> int:
    """'1.5s', '300ms', '50us', '2m', '1h' or µs as a bare number -> µs, finite, 0..100 years."""
    try:
        v = _server.parse_duration_us(text)
    except OverflowError:  # inf, 1e400
        v = MAX_DURATION_US + 1
    except ValueError:
        raise BadRequest(f"{what}: not a duration: {text!r} (e.g. 500us, 20ms, 1.5s, 10m, 2h)") \
            from None
    if not 0 <= v <= MAX_DURATION_US:
        raise BadRequest(f"{what}: out of range: {text!r} (0 to 100 years)")
    return v


def _int(q: Dict[str, List[str]], key: str, lo: int, hi: int) -> Optional[int]:
    raw = (q.get(key) or [""])[0].strip()
    if not raw:
        return None
    try:
        v = int(raw)
    except ValueError:
        try:
            f = float(raw)
        except ValueError:
            f = math.nan
        if not math.isfinite(f) or f != int(f):
            raise BadRequest(f"{key}: not an integer: {raw!r}") from None
        v = int(f)
    if not lo <= v <= hi:
        raise BadRequest(f"{key}: {raw} is out of range ({lo} to {hi})")
    return v


def search_criteria(q: Dict[str, List[str]]) -> Dict[str, Any]:
    """Validated Jaeger search parameters -> the store's search criteria. Raises BadRequest."""
    start = _int(q, "start", 0, MAX_US)
    end = _int(q, "end", 0, MAX_US)
    limit = _int(q, "limit", 0, MAX_LIMIT)  # 0: Jaeger's "no limit given" -> default
    lookback = (q.get("lookback") or [""])[0].strip()
    if lookback and lookback != "custom":
        parse_duration_us(lookback, "lookback")
    for k in ("minDuration", "maxDuration"):
        if (q.get(k) or [""])[0].strip():
            parse_duration_us(q[k][0], k)
    q = dict(q)
    if limit is not None:
        q["limit"] = [str(limit)]
    try:
        crit = _server.search_criteria(q)
    except json.JSONDecodeError as e:
        raise BadRequest(f"tags: not a JSON object: {e}") from None
    except ValueError as e:
        raise BadRequest(str(e)) from None
    if start is not None and end is not None and end < start:
        raise BadRequest("end is before start")
    return crit


def resolve_trace_id(st: "_store.Store", text: str, limit: int = 20) -> List[str]:
    """Trace ids meant by ``text``: a full id (16 or 32 hex digits, or an osprofiler UUID) is
    itself; a shorter hex string is an id (zero-padded) if that trace exists, else a prefix."""
    tid = _store.normalize_trace_id(text)  # raises TraceIdError for non-hex
    s = text.strip().lower()
    if "-" in s or len(s) in (16, 32):
        return [tid]
    if st.get_trace(tid) is not None:
        return [tid]
    return _store.trace_ids_with_prefix(st, s, limit)


# ---------------------------------------------------------------- security

def _host_part(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.split(":")[0]
    return h.rstrip(".")


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> frozenset:
    """Host names the query port answers to: loopback names, the bound address, this machine's
    names when bound to all addresses, and ``extra`` (``--allowed-host``). IP literals of any
    kind are always accepted: DNS rebinding needs a name."""
    names = set(LOOPBACK_NAMES) | {bound.strip("[]").lower()}
    if bound in ("0.0.0.0", "::", ""):
        try:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        except OSError:
            pass
    names |= {e.strip().lower().rstrip(".") for e in extra if e.strip()}
    return frozenset(names)


def host_ok(host_header: Optional[str], allowed: frozenset) -> bool:
    if not host_header:
        return True  # HTTP/1.0 clients without Host: no browser sends this
    h = _host_part(host_header)
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        return h in allowed or "*" in allowed


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() in LOOPBACK_NAMES


# ---------------------------------------------------------------- handler

def envelope(data: Any, total: Optional[int] = None, errors: Any = None) -> Dict[str, Any]:
    n = total if total is not None else (len(data) if isinstance(data, list) else 0)
    return {"data": data, "total": n, "limit": 0, "offset": 0, "errors": errors}


class QueryHandler(_server._BaseHandler):
    """Jaeger query API (JSON) and the web view.

    The collector object may carry ``query_token`` (str) and ``query_allowed_hosts``
    (extra Host names); both are optional."""

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", web.csp(frame_ancestors=True))
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_HEAD(self) -> None:
        self.do_GET()

    def _html(self, status: int, page: str, extra: Optional[Dict[str, str]] = None) -> None:
        self.send_body(status, page.encode(), "text/html; charset=utf-8", extra)

    def _error(self, api: bool, status: int, msg: str) -> None:
        if api:
            self.send_json(status, envelope(None, 0, [{"code": status, "msg": msg}]))
        else:
            self._html(status, web.render_error(status, msg))

    def _redirect(self, location: str, extra: Optional[Dict[str, str]] = None) -> None:
        self.send_body(302, b"", "text/plain", dict(extra or {}, Location=location))

    def do_POST(self) -> None:  # only the control plane takes writes (collector/control.py)
        self.do_GET()

    do_PUT = do_POST

    def do_GET(self) -> None:
        c = self.server.collector
        url = urlsplit(self.path)
        raw_parts = [p for p in url.path.split("/") if p]
        parts = [unquote(p) for p in raw_parts]  # split first: a service name may hold '/'
        api = parts[:1] == ["api"]
        try:
            q = parse_qs(url.query, keep_blank_values=False, max_num_fields=2 * MAX_TRACE_IDS + 50)
        except ValueError:
            self._error(api, 400, "too many query parameters")
            return
        try:
            allowed = getattr(self.server, "allowed_hosts", None)
            if allowed is None:
                allowed = self.server.allowed_hosts = allowed_hosts(
                    c.host, getattr(c, "query_allowed_hosts", ()))
            if not host_ok(self.headers.get("Host"), allowed):
                self._error(api, 421, "unknown Host %r: this collector answers to %s (add names"
                            " with --allowed-host)" % (self.headers.get("Host"),
                                                       ", ".join(sorted(allowed))))
                return
            if not self._authorized(c, url, q, api):
                return
            self._route(c, parts, q, api)
        except (BadRequest, _store.TraceIdError) as e:
            self._error(api, 400, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001 -- e.g. a damaged store: answer, log, keep serving
            c._warn.warn("query", "collector: %s failed: %s", url.path, e)
            try:
                self._error(api, 500, f"internal error: {type(e).__name__}: {e}")
            except OSError:
                pass

    def _authorized(self, c: Any, url: Any, q: Dict[str, List[str]], api: bool) -> bool:
        token = getattr(c, "query_token", None)
        if not token:
            return True
        given = []
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie") or "")
        except Exception:  # noqa: BLE001 -- a malformed cookie is no token
            pass
        if TOKEN_COOKIE in cookie:
            given.append(unquote(cookie[TOKEN_COOKIE].value))
        from_query = (q.get("token") or [""])[0]
        if any(hmac.compare_digest(g.encode(), token.encode()) for g in given if g):
            return True
        if from_query and hmac.compare_digest(from_query.encode(), token.encode()):
            # a browser opened the link printed by the collector: keep the token in a cookie
            # and drop it from the address bar
            rest = urlencode([(k, v) for k, vs in q.items() if k != "token" for v in vs],
                             doseq=True)
            self._redirect(url.path + ("?" + rest if rest else ""), {
                "Set-Cookie": f"{TOKEN_COOKIE}={quote(token, safe='')}; Path=/; HttpOnly;"
                              " SameSite=Strict"})
            return False
        self._error(api, 401, "this collector's query port needs its token: open the link the"
                    " collector printed (…/?token=…) or send 'Authorization: Bearer TOKEN'")
        return False

    def _route(self, c: Any, parts: List[str], q: Dict[str, List[str]], api: bool) -> None:
        st = c.store
        if parts[:2] == ["api", "services"] and len(parts) == 2:
            self.send_json(200, envelope(st.services()))
        elif parts[:2] == ["api", "services"] and len(parts) == 4 and parts[3] == "operations":
            self.send_json(200, envelope(st.operations(parts[2])))
        elif parts == ["api", "operations"]:
            svc = (q.get("service") or [""])[0]
            self.send_json(200, envelope([{"name": o, "spanKind": ""}
                                          for o in st.operations(svc)]))
        elif parts[:2] == ["api", "traces"] and len(parts) == 3:
            t = st.get_trace(parts[2])
            if t is None:
                self._error(True, 404, "trace not found")
            else:
                self.send_json(200, envelope([t]))
        elif parts == ["api", "traces"]:
            ids = [i for v in q.get("traceID", []) for i in v.split(",") if i.strip()]
            if len(ids) > MAX_TRACE_IDS:
                raise BadRequest(f"traceID: {len(ids)} ids in one request, at most"
                                 f" {MAX_TRACE_IDS}")
            if ids:
                traces = [t for t in (st.get_trace(i) for i in ids) if t]
            else:
                traces = st.find_traces(**search_criteria(q))
            self.send_json(200, envelope(traces))
        elif parts == ["api", "summaries"]:
            self.send_json(200, envelope(st.recent(**search_criteria(q))))
        elif parts == ["api", "stats"]:
            self.send_json(200, c.stats())
        elif parts[:2] == ["api", "tracepoints"]:  # adaptive instrumentation: collector/control.py
            from bu_osprofiler.collector import control
            control.handle(self, c, self.command, parts)
        elif self.command not in ("GET", "HEAD"):
            self._error(api, 405, "method not allowed")
        elif api:
            self._error(True, 404, "no such API: /" + "/".join(parts))
        elif not parts:
            crit = search_criteria(q)
            svc = crit.get("service")
            self._html(200, web.render_index(st.recent(**crit), st.services(), q,
                                             st.operations(svc) if svc else []))
        elif parts == ["lookup"]:
            text = (q.get("id") or [""])[0].strip()
            if not text:
                self._redirect("/")
            else:
                self._show(st, text)
        elif parts[0] == "trace" and len(parts) == 2:
            self._show(st, parts[1])
        elif parts == ["tracepoints"]:  # adaptive instrumentation page (collector/control.py)
            from bu_osprofiler.collector import control
            self._html(200, control.render_page(c))
        elif parts == ["favicon.ico"]:
            self.send_body(204, b"", "image/x-icon")
        else:
            self._error(False, 404, "no page at /" + "/".join(parts))

    def _show(self, st: Any, text: str) -> None:
        ids = resolve_trace_id(st, text)
        if len(ids) == 1:
            t = st.get_trace(ids[0])
            if t is not None:
                if ids[0] != text:
                    self._redirect("/trace/" + quote(ids[0]))
                else:
                    self._html(200, web.render_trace(t))
                return
            ids = []
        if not ids:
            self._error(False, 404, f"trace {text.strip().lower()} not found (no stored trace id"
                        " is or starts with it)")
            return
        self._html(200, web.render_candidates(text, st.summaries(ids)))

