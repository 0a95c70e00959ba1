"""Exporters: connection strings -> a running reporter.

* ``jaeger://HOST:PORT``         Thrift Compact ``emitBatch`` datagrams to a Jaeger agent (6831).
* ``jaeger+binary://HOST:PORT``  the same in Thrift Binary (agent port 6832).
* ``jaeger+http://HOST:PORT[/path]``, ``jaeger+https://...``  POST a bare Binary ``Batch`` to a
  Jaeger collector (default port 14268, path ``/api/traces``), expecting 202.
* ``otlp://HOST:PORT[/path]``, ``otlp+https://...``  POST OTLP/HTTP protobuf
  ``ExportTraceServiceRequest``s (default port 4318, path ``/v1/traces``), expecting 200.
* ``memory://``                  keep finished spans in process (tests).

The UDP path is entirely native (``_core.reporter_start``: a C thread packs and sends without the
GIL). The HTTP path gets its bodies from the same C encoder and sends them from one Python thread
over a keep-alive ``http.client`` connection. Errors are counted (``stats()``) and logged at most
once per ``error_log_interval`` seconds; nothing raises into the application.
"""
from __future__ import annotations

import atexit
import base64
import http.client
import json
import logging
import email.utils
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from bu_osprofiler import _core
from bu_osprofiler._periodic import Chore, Periodic

LOG = logging.getLogger(__name__)

DEFAULT_CONNECTION_STRING = "jaeger://127.0.0.1:6831"
DEFAULT_PORTS = {"jaeger": 6831, "jaeger+binary": 6832, "jaeger+http": 14268,
                 "jaeger+https": 14268, "otlp": 4318, "otlp+https": 4318}
DEFAULT_HTTP_PATH = "/api/traces"
DEFAULT_OTLP_PATH = "/v1/traces"
RETRY_STATUSES = (429, 502, 503, 504)  # overload / gateway answers: the only ones retried
OTLP_RETRY_STATUSES = RETRY_STATUSES  # (OTLP/HTTP allows retrying exactly these)
MAX_UDP_PACKET = 65000  # the Jaeger agent's default maximum datagram
DEFAULTS: Dict[str, Any] = {
    "flush_interval": 1.0,          # seconds between flushes (sooner when a datagram is full)
    "max_packet_size": MAX_UDP_PACKET,
    "http_timeout": 5.0,            # seconds per HTTP request (connect + send + answer)
    "http_max_body": 4 * 1024 * 1024,
    "http_retry_time": 30.0,        # seconds one batch may spend waiting between retries
    "shutdown_timeout": 2.0,        # bound of the flush at interpreter exit / shutdown()
    "error_log_interval": 60.0,     # at most one warning per kind of failure per interval
    "error_check_interval": 2.0,    # how often UDP send errors (counted in C) are looked at
    "sampling_refresh_interval": 60.0,
}


def _version() -> str:
    try:
        from bu_osprofiler import __version__
        return __version__
    except ImportError:  # pragma: no cover - partially initialised package
        return "unknown"


# ---------------------------------------------------------------- connection strings

@dataclass(frozen=True)
class Endpoint:
    """A parsed connection string."""

    scheme: str
    transport: str          # "udp" | "http" | "memory"
    protocol: str = ""      # "compact" | "binary" (jaeger) | "otlp"
    host: str = ""
    port: int = 0
    path: str = ""
    options: Dict[str, str] = field(default_factory=dict)  # from the query string

    @property
    def url(self) -> str:
        """The collector URL (HTTP transports)."""
        tls = self.scheme.endswith("s")
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s://%s:%d%s" % ("https" if tls else "http", host, self.port, self.path)


def parse_connection_string(cs: str) -> Endpoint:
    """Parse and validate ``cs``; raise ValueError naming the problem."""
    if not isinstance(cs, str) or not cs.strip():
        raise ValueError("connection string must be a non-empty string, got %r" % (cs,))
    cs = cs.strip()
    if "://" not in cs:
        raise ValueError("connection string %r has no scheme (expected e.g. %s)"
                         % (cs, DEFAULT_CONNECTION_STRING))
    parts = urllib.parse.urlsplit(cs)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return Endpoint("memory", "memory")
    if scheme not in DEFAULT_PORTS:
        raise ValueError("unknown connection string scheme %r in %r (expected jaeger://, "
                         "jaeger+binary://, jaeger+http://, jaeger+https://, otlp://, "
                         "otlp+https:// or memory://)" % (parts.scheme, cs))
    host = parts.hostname
    if not host:
        raise ValueError("connection string %r has no host" % cs)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        port = DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        netloc_port = parts.netloc.rpartition(":")[2]
        raise ValueError("connection string %r has an invalid port %r (expected 1-65535)"
                         % (cs, netloc_port))
    options = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError("connection string %r has unknown option(s) %s (known: %s)"
                         % (cs, ", ".join(unknown), ", ".join(sorted(DEFAULTS))))
    if scheme in ("jaeger", "jaeger+binary"):
        if parts.path not in ("", "/"):
            raise ValueError("connection string %r: a UDP agent address takes no path" % cs)
        return Endpoint(scheme, "udp", "compact" if scheme == "jaeger" else "binary",
                        host, port, "", options)
    if scheme.startswith("otlp"):
        return Endpoint(scheme, "http", "otlp", host, port, parts.path or DEFAULT_OTLP_PATH,
                        options)
    return Endpoint(scheme, "http", "binary", host, port, parts.path or DEFAULT_HTTP_PATH,
                    options)


def _number(name: str, value: Any, minimum: float, maximum: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError("option %s must be a number, got %r" % (name, value)) from None
    if not minimum <= v <= maximum:
        raise ValueError("option %s must be within [%g, %g], got %r" % (name, value, minimum,
                                                                        maximum))
    return v


def resolve_options(ep: Endpoint, options: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Defaults < query-string options < explicit options, validated."""
    opts = dict(DEFAULTS)
    opts.update(ep.options)
    opts.update({k: v for k, v in (options or {}).items() if v is not None})
    opts["flush_interval"] = _number("flush_interval", opts["flush_interval"], 0.001, 86400)
    opts["max_packet_size"] = int(_number("max_packet_size", opts["max_packet_size"], 512,
                                          65507))
    opts["http_timeout"] = _number("http_timeout", opts["http_timeout"], 0.001, 3600)
    opts["http_retry_time"] = _number("http_retry_time", opts["http_retry_time"], 0, 3600)
    opts["http_max_body"] = int(_number("http_max_body", opts["http_max_body"], 512, 1 << 30))
    opts["shutdown_timeout"] = _number("shutdown_timeout", opts["shutdown_timeout"], 0, 3600)
    opts["error_log_interval"] = _number("error_log_interval", opts["error_log_interval"], 0,
                                         86400)
    opts["error_check_interval"] = _number("error_check_interval",
                                           opts["error_check_interval"], 0.01, 86400)
    opts["sampling_refresh_interval"] = _number(
        "sampling_refresh_interval", opts["sampling_refresh_interval"], 0.01, 86400)
    return opts


# ---------------------------------------------------------------- JAEGER_* environment

def _env_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError("environment variable %s must be true or false, got %r" % (name, value))


def parse_tags(text: str) -> Dict[str, str]:
    """``k=v,k2=v2`` (JAEGER_TAGS) -> dict; ``${VAR:default}`` values read the environment."""
    tags: Dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError("JAEGER_TAGS entry %r is not key=value" % item)
        value = value.strip()
        if value.startswith("${") and value.endswith("}"):
            var, _, default = value[2:-1].partition(":")
            value = os.environ.get(var, default)
        tags[key.strip()] = value
    return tags


def connection_string_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """JAEGER_ENDPOINT (collector URL) or JAEGER_AGENT_HOST / JAEGER_AGENT_PORT, if set."""
    env = os.environ if environ is None else environ
    endpoint = env.get("JAEGER_ENDPOINT", "").strip()
    if endpoint:
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https"):
            raise ValueError("JAEGER_ENDPOINT must be an http(s) URL, got %r" % endpoint)
        return "jaeger+" + endpoint
    host = env.get("JAEGER_AGENT_HOST", "").strip()
    port = env.get("JAEGER_AGENT_PORT", "").strip()
    if host or port:
        host = host or "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = "[%s]" % host
        return "jaeger://%s:%s" % (host, port or DEFAULT_PORTS["jaeger"])
    return None


def env_config(environ: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """configure() keyword arguments from the JAEGER_* conventions (only those that are set).

    Keys: service_name, connection_string, sampler, sampler_param, tags, trace_id_128bit,
    and options (flush_interval, max_queue_spans, sampling_server, http_headers).
    """
    env = os.environ if environ is None else environ
    out: Dict[str, Any] = {}
    cs = connection_string_from_env(env)
    if cs:
        out["connection_string"] = cs
    if env.get("JAEGER_SERVICE_NAME", "").strip():
        out["service_name"] = env["JAEGER_SERVICE_NAME"].strip()
    if env.get("JAEGER_TAGS", "").strip():
        out["tags"] = parse_tags(env["JAEGER_TAGS"])
    if env.get("JAEGER_SAMPLER_TYPE", "").strip():
        out["sampler"] = env["JAEGER_SAMPLER_TYPE"].strip().lower()
    if env.get("JAEGER_SAMPLER_PARAM", "").strip():
        out["sampler_param"] = _number("JAEGER_SAMPLER_PARAM", env["JAEGER_SAMPLER_PARAM"], 0,
                                       1e9)
    if env.get("JAEGER_TRACEID_128BIT", "").strip():
        out["trace_id_128bit"] = _env_bool("JAEGER_TRACEID_128BIT", env["JAEGER_TRACEID_128BIT"])
    manager = (env.get("JAEGER_SAMPLER_MANAGER_HOST_PORT", "").strip()
               or env.get("JAEGER_SAMPLING_ENDPOINT", "").strip())
    if manager:
        out["sampling_server"] = manager
    if env.get("JAEGER_REPORTER_FLUSH_INTERVAL", "").strip():
        # Jaeger clients take milliseconds (or a Go duration); accept "500", "500ms", "1s".
        text = env["JAEGER_REPORTER_FLUSH_INTERVAL"].strip().lower()
        if text.endswith("ms"):
            seconds = float(text[:-2]) / 1000
        elif text.endswith("s"):
            seconds = float(text[:-1])
        else:
            seconds = float(text) / 1000
        out["flush_interval"] = seconds
    if env.get("JAEGER_REPORTER_MAX_QUEUE_SIZE", "").strip():
        out["max_queue_spans"] = int(env["JAEGER_REPORTER_MAX_QUEUE_SIZE"])
    headers = {}
    if env.get("JAEGER_AUTH_TOKEN"):
        headers["Authorization"] = "Bearer " + env["JAEGER_AUTH_TOKEN"]
    elif env.get("JAEGER_USER"):
        cred = "%s:%s" % (env["JAEGER_USER"], env.get("JAEGER_PASSWORD", ""))
        headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
    if headers:
        out["http_headers"] = headers
    return out


def local_ip() -> str:
    """This host's address as other hosts likely see it (no traffic is sent)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def process_tags(user_tags: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Process tags Jaeger clients send: jaeger.version, hostname, ip, then the user's tags."""
    tags: Dict[str, Any] = {
        "jaeger.version": "bu_osprofiler-" + _version(),
        "hostname": socket.gethostname(),
        "ip": local_ip(),
    }
    tags.update(user_tags or {})
    return tags


# ---------------------------------------------------------------- rate-limited logging

class RateLimitedLog:
    """One warning per key per ``interval`` seconds; repeats in between are counted."""

    def __init__(self, interval: float, logger: logging.Logger = LOG) -> None:
        self.interval = interval
        self.logger = logger
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = args + (suppressed,)
        self.logger.warning(msg, *args)
        return True


# ---------------------------------------------------------------- remote sampler

def parse_sampling_strategy(doc: Mapping[str, Any]) -> Tuple[str, float]:
    """A Jaeger sampling strategy response -> (sampler type, param) for ``_core.set_sampler``.

    Per-operation strategies are reduced to their default probability (the C sampler decides
    for root spans by trace id only).
    """
    ops = doc.get("operationSampling")
    if isinstance(ops, Mapping) and "defaultSamplingProbability" in ops:
        return "probabilistic", float(ops["defaultSamplingProbability"])
    kind = doc.get("strategyType", "PROBABILISTIC")
    if kind in ("RATE_LIMITING", 1):
        return "ratelimiting", float(doc["rateLimitingSampling"]["maxTracesPerSecond"])
    if kind in ("PROBABILISTIC", 0):
        return "probabilistic", float(doc["probabilisticSampling"]["samplingRate"])
    raise ValueError("unknown strategyType %r" % (kind,))


def sampling_url(server: Optional[str], agent_host: Optional[str], service: str) -> str:
    """``http://AGENT:5778/sampling?service=NAME`` from ``host:port``, a URL or the agent host."""
    if server and "://" in server:
        base = server
    else:
        base = "http://%s/sampling" % (server or "%s:5778" % (agent_host or "127.0.0.1"))
    parts = urllib.parse.urlsplit(base)
    path = parts.path if parts.path not in ("", "/") else "/sampling"
    query = urllib.parse.urlencode({"service": service})
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))


class RemoteSampler:
    """Polls a Jaeger sampling endpoint and reconfigures the C root sampler.

    Until the first answer, and whenever the endpoint is unreachable or answers nonsense, the
    initial sampler is in force.
    """

    def __init__(self, url: str, initial: Tuple[str, float], timeout: float = 2.0,
                 log: Optional[RateLimitedLog] = None) -> None:
        self.url = url
        self.initial = initial
        self.timeout = timeout
        self.current: Tuple[str, float] = initial
        self.log = log or RateLimitedLog(60.0)

    def _apply(self, sampler: Tuple[str, float]) -> None:
        _core.set_sampler(*sampler)
        self.current = sampler

    def poll_once(self) -> bool:
        """Fetch the strategy once; True when it was applied."""
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as resp:
                doc = json.loads(resp.read().decode("utf-8"))
            sampler = parse_sampling_strategy(doc)
            self._apply(sampler)
            return True
        except (OSError, ValueError, KeyError, TypeError, urllib.error.URLError,
                http.client.HTTPException) as exc:
            self.log.warning("sampling", "bu_osprofiler: sampling strategy from %s unavailable "
                             "(%s); using the initial sampler %s(%g)", self.url, exc,
                             *self.initial)
            try:
                self._apply(self.initial)
            except ValueError:  # pragma: no cover - validated at configure time
                pass
            return False


# ---------------------------------------------------------------- periodic chores

# the poller thread is shared with the adaptive control plane (bu_osprofiler/_periodic.py)
_Periodic = Periodic


# ---------------------------------------------------------------- exporters

_lock = threading.Lock()
_active: Optional["Exporter"] = None


class Exporter:
    """Base: owns the reporter while started; at most one is active per process."""

    def __init__(self, endpoint: Endpoint, options: Mapping[str, Any]) -> None:
        self.endpoint = endpoint
        self.options = dict(options)
        self.log = RateLimitedLog(self.options["error_log_interval"])
        self.remote_sampler: Optional[RemoteSampler] = None
        self._chores: Optional[_Periodic] = None
        self._started = False
        # The C counter is process-wide: only failures after this point are this exporter's.
        self._seen_errors = _core.stats()["send_errors"]
        sampler = str(self.options.get("sampler") or "").lower()
        if sampler == "remote":
            initial = self.options.get("initial_sampler")
            if initial is None:
                param = self.options.get("sampler_param")
                initial = ("probabilistic", 0.001 if param is None else float(param))
            server = (self.options.get("sampling_server")
                      or os.environ.get("JAEGER_SAMPLER_MANAGER_HOST_PORT")
                      or os.environ.get("JAEGER_SAMPLING_ENDPOINT"))
            url = sampling_url(server, endpoint.host or None,
                               str(self.options.get("service_name") or "unknown_service"))
            self.remote_sampler = RemoteSampler(url, tuple(initial), log=self.log)

    # -- public contract (used by configure()) --
    def start(self) -> None:
        """Start sending (stops the previously active exporter, if any)."""
        global _active
        with _lock:
            previous, _active = _active, self
        if previous is not None and previous is not self:
            previous.shutdown(previous.options["shutdown_timeout"])
        limits = (self.options.get("max_queue_spans"), self.options.get("max_queue_bytes"))
        if limits != (None, None):
            _core.set_limits(int(limits[0] or 100000), int(limits[1] or 64 * 1024 * 1024))
        if self.remote_sampler is not None:
            self.remote_sampler._apply(self.remote_sampler.initial)
        self._start_reporter()
        if self.endpoint.transport != "memory":
            _core.set_mode(_core.MODE_REPORTER)
        self._start_chores()
        self._started = True

    def flush(self, timeout: float = 5.0) -> bool:
        """True when everything queued before the call was sent within ``timeout`` seconds."""
        if not self._started:
            return _core.stats()["queued_spans"] == 0
        return bool(_core.reporter_flush(float(timeout)))

    def shutdown(self, timeout: float = 5.0) -> None:
        """Send what is queued (bounded by ``timeout``) and stop every thread."""
        global _active
        if not self._started:
            return
        self._started = False
        deadline = time.monotonic() + max(0.0, timeout)
        if _active is self and _core.get_mode() == _core.MODE_REPORTER:
            # Spans finished from now on would have nobody to take them: discard (and count)
            # them; those already queued go out with the reporter's last cycle.
            _core.set_mode(_core.MODE_DISCARD)
        try:
            self._stop_reporter(deadline)
        finally:
            if self._chores is not None:
                self._chores.stop(max(0.0, deadline - time.monotonic()))
                self._chores = None
            self._check_errors()
            with _lock:
                if _active is self:
                    _active = None

    # -- internals --
    def _start_reporter(self) -> None:
        raise NotImplementedError

    def _stop_reporter(self, deadline: float) -> None:
        _core.reporter_stop(max(0.0, deadline - time.monotonic()))

    def _chore_list(self) -> List[Chore]:
        chores: List[Chore] = [(self.options["error_check_interval"], self._check_errors, False)]
        if self.remote_sampler is not None:
            chores.append((self.options["sampling_refresh_interval"],
                           self.remote_sampler.poll_once, True))
        return chores

    def _start_chores(self) -> None:
        self._chores = _Periodic("bu_osprofiler-exporter", self._chore_list())
        self._chores.start()

    def _check_errors(self) -> None:
        """Turn new send errors (counted in C) into a rate-limited warning."""
        errors = _core.stats()["send_errors"]
        if errors > self._seen_errors:
            info = _core.reporter_info()
            self.log.warning("send", "bu_osprofiler: %d send(s) to %s failed (last error: %s); "
                             "the spans were dropped and counted", errors - self._seen_errors,
                             self.describe(), info.get("last_error") or "unknown")
            self._seen_errors = errors

    def describe(self) -> str:
        return "%s://%s:%d" % (self.endpoint.scheme, self.endpoint.host, self.endpoint.port)

    def _restart_in_child(self) -> None:
        """After os.fork() in the child: the parent's threads do not exist here."""
        self.log = RateLimitedLog(self.options["error_log_interval"])
        if self.remote_sampler is not None:
            self.remote_sampler.log = self.log
        self._seen_errors = _core.stats()["send_errors"]
        self._chores = None
        self._start_reporter()
        self._start_chores()
        self._started = True


class UdpExporter(Exporter):
    """Jaeger agent over UDP: the native flusher thread does everything."""

    def _start_reporter(self) -> None:
        _core.reporter_start(self.endpoint.host, self.endpoint.port, self.endpoint.protocol,
                             self.options["flush_interval"], self.options["max_packet_size"])


def _retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None


class HttpExporter(Exporter):
    """Jaeger collector (binary Thrift Batches) or OTLP/HTTP receiver (protobuf requests) over
    HTTP(S): bodies from the C encoder, POSTed from one Python thread on a keep-alive
    connection."""

    def __init__(self, endpoint: Endpoint, options: Mapping[str, Any]) -> None:
        super().__init__(endpoint, options)
        self._thread: Optional[threading.Thread] = None
        self._conn: Optional[http.client.HTTPConnection] = None
        self._retry_stop = threading.Event()  # set on stop: no more waiting between retries
        self.retries = 0  # requests repeated after a 429 / 502 / 503 / 504
        self.otlp = endpoint.protocol == "otlp"
        headers = {"Content-Type": ("application/x-protobuf" if self.otlp
                                    else "application/x-thrift"),
                   "User-Agent": "bu_osprofiler/" + _version()}
        headers.update(self.options.get("http_headers") or {})
        self.headers = headers

    def describe(self) -> str:
        return self.endpoint.url

    def _start_reporter(self) -> None:
        max_body = self.options["http_max_body"]
        # The session number: once another exporter starts, this sender's calls fail and it
        # exits, even if it was stuck in a slow POST past this exporter's shutdown.
        epoch = _core.reporter_start_external(min(max_body, 1024 * 1024))
        self._conn = None
        self._retry_stop.clear()
        self._thread = threading.Thread(target=self._run, args=(epoch,),
                                        name="bu_osprofiler-http-sender", daemon=True)
        self._thread.start()

    def _stop_reporter(self, deadline: float) -> None:
        self._retry_stop.set()
        _core.reporter_stop(0.0)  # the sender does one last cycle, then exits
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            self._thread = None
        _core.reporter_stop(0.0)  # back to "off" (a late sender finds no reporter and quits)

    def _run(self, epoch: int) -> None:
        try:
            self._loop(epoch)
        finally:
            self._close()

    def _loop(self, epoch: int) -> None:
        interval = self.options["flush_interval"]
        max_body = self.options["http_max_body"]
        while True:
            try:
                gen, stopping = _core.reporter_wait(interval, epoch)
            except RuntimeError:  # the reporter was reset (fork) or replaced
                return
            ok = True
            try:
                batches, too_large = _core.take_batches(max_body, self.endpoint.protocol, epoch)
                ok = too_large == 0
                for body, nspans in batches:
                    ok = self._post(body, nspans) and ok
            except RuntimeError:  # replaced between the wait and the take: nothing taken
                return
            except Exception as exc:  # MemoryError and the like: counted in C, logged here
                ok = False
                self.log.warning("encode", "bu_osprofiler: encoding spans failed: %r", exc)
            try:
                _core.reporter_cycle_end(gen, ok, epoch)
            except RuntimeError:
                return
            if stopping:
                return

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # pragma: no cover
                pass
            self._conn = None

    def _connect(self) -> http.client.HTTPConnection:
        ep, timeout = self.endpoint, self.options["http_timeout"]
        if ep.scheme.endswith("s"):
            return http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout)
        return http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)

    def _retry_delay(self, resp: http.client.HTTPResponse, attempt: int,
                     budget: float) -> Optional[float]:
        """Seconds to wait before retrying after ``resp``, or None (give up): 429 / 502 / 503 /
        504 only, after ``Retry-After`` (seconds or an HTTP date) when the receiver sent one,
        else exponential back-off with jitter; never past ``budget`` seconds."""
        if resp.status not in RETRY_STATUSES or self._retry_stop.is_set():
            return None
        delay = _retry_after(resp.getheader("Retry-After"))
        if delay is None:
            delay = min(0.1 * (2 ** attempt), 5.0) * random.uniform(0.5, 1.0)
        return delay if delay <= budget else None

    def _post(self, body: bytes, nspans: int) -> bool:
        error = None
        stale_retry = True
        give_up = time.monotonic() + self.options["http_retry_time"]
        for attempt in range(64):
            reused = self._conn is not None
            try:
                if self._conn is None:
                    self._conn = self._connect()
                self._conn.request("POST", self.endpoint.path, body, self.headers)
                resp = self._conn.getresponse()
                resp.read()
                if resp.will_close:
                    self._close()
                if 200 <= resp.status < 300:
                    _core.count_stat("exported", nspans)
                    _core.count_stat("batches_sent", 1)
                    _core.count_stat("bytes_sent", len(body))
                    return True
                error = "HTTP %d %s" % (resp.status, resp.reason)
                delay = self._retry_delay(resp, attempt, give_up - time.monotonic())
                if delay is None:
                    break
                self.retries += 1
                if self._retry_stop.wait(delay):
                    break
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as exc:
                self._close()
                error = repr(exc)
                if not (reused and stale_retry):  # a stale keep-alive connection: retry once
                    break
                stale_retry = False
            except Exception as exc:  # OSError, HTTPException, UnicodeError from idna, ...
                self._close()
                error = repr(exc)
                break
        _core.count_stat("send_errors", 1)
        _core.count_stat("dropped_send_failed", nspans)
        self._seen_errors += 1
        self.log.warning("send", "bu_osprofiler: POST %s failed (%s); %d span(s) dropped",
                         self.endpoint.url, error, nspans)
        return False

    def _check_errors(self) -> None:
        """HTTP errors are logged where they happen (in the sender thread)."""


class MemoryExporter(Exporter):
    """memory://: spans stay in process; nothing to run."""

    def _start_reporter(self) -> None:
        _core.set_mode(_core.MODE_MEMORY)

    def _stop_reporter(self, deadline: float) -> None:
        pass

    def _chore_list(self) -> List[Chore]:
        return super()._chore_list()[1:]

    def flush(self, timeout: float = 5.0) -> bool:
        return True


def create(connection_string: str, options: Optional[Mapping[str, Any]] = None) -> Exporter:
    """An exporter for ``connection_string`` (not started); ValueError if it is invalid.

    ``options``: flush_interval, max_packet_size, max_queue_spans, max_queue_bytes,
    http_timeout, http_max_body, http_headers, http_retry_time (seconds a batch may wait between
    retries of a 429 / 502 / 503 / 504), shutdown_timeout, error_log_interval, and for
    ``sampler="remote"``: service_name, sampler_param (initial probability), sampling_server
    (``host:port`` or URL of the agent's sampling endpoint), sampling_refresh_interval.
    """
    ep = parse_connection_string(connection_string)
    opts = resolve_options(ep, options)
    cls = {"udp": UdpExporter, "http": HttpExporter, "memory": MemoryExporter}[ep.transport]
    return cls(ep, opts)


def active() -> Optional[Exporter]:
    """The exporter currently started, if any."""
    return _active


# ---------------------------------------------------------------- process lifecycle

def _at_exit() -> None:
    exp = _active
    if exp is not None:
        try:
            exp.shutdown(exp.options["shutdown_timeout"])
        except Exception:  # pragma: no cover - never raise at interpreter exit
            LOG.debug("bu_osprofiler: shutdown at exit failed", exc_info=True)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # may have been held by a parent thread
    # bu_osprofiler's own at-fork hook (registered first, at import) has already emptied the
    # queue: the spans queued before the fork are the parent's, which sends them.
    exp = _active
    if exp is not None and exp._started:
        try:
            exp._restart_in_child()
        except Exception:  # pragma: no cover - never raise in the child
            LOG.warning("bu_osprofiler: could not restart the exporter after fork",
                        exc_info=True)


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
