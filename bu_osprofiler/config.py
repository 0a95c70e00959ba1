"""Process-wide tracer configuration: service, sampler, ids and where finished spans go."""
from __future__ import annotations

import os
import threading
import types
from typing import Any, Mapping, NamedTuple, Optional

from bu_osprofiler import _core

SpanContext = _core.SpanContext

DEFAULT_CONNECTION_STRING = "jaeger://127.0.0.1:6831"

_lock = threading.RLock()
_memory: list["FinishedSpan"] = []
_exporter: Any = None
_settings: dict[str, Any] = {}


def _renew_lock_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # a thread of the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_lock_in_child)


class FinishedSpan(NamedTuple):
    """A finished span as recorded (read-only). Ids are ints; times are ns since the epoch."""

    trace_id: int
    span_id: int
    parent_id: int
    flags: int
    operation_name: str
    start_ns: int
    end_ns: int
    tags: Mapping[str, Any]
    logs: tuple
    references: tuple
    service_name: str

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    @property
    def context(self) -> SpanContext:
        return SpanContext(self.trace_id, self.span_id, self.parent_id, self.flags)


def _to_finished(rec: tuple) -> FinishedSpan:
    (trace_id, span_id, parent_id, flags, name, start_ns, end_ns, tags, logs, refs, svc) = rec
    references = tuple((kind, SpanContext(t, s, 0, flags)) for kind, t, s in refs)
    return FinishedSpan(
        trace_id, span_id, parent_id, flags, name, start_ns, end_ns,
        types.MappingProxyType(tags),
        tuple((ts, types.MappingProxyType(f)) for ts, f in logs),
        references, svc,
    )


def configure(
    service_name: Optional[str] = None,
    connection_string: Optional[str] = None,
    sampler: Optional[str] = None,
    sampler_param: Optional[float] = None,
    tags: Optional[Mapping[str, Any]] = None,
    trace_id_128bit: Optional[bool] = None,
    max_queue_spans: Optional[int] = None,
    max_queue_bytes: int = 64 * 1024 * 1024,
    **options: Any,
) -> None:
    """Configure the process's tracer.

    ``service_name`` defaults to ``$JAEGER_SERVICE_NAME``; ``connection_string`` to
    ``$JAEGER_ENDPOINT`` / ``$JAEGER_AGENT_HOST:$JAEGER_AGENT_PORT`` / ``jaeger://127.0.0.1:6831``.
    ``memory://`` keeps finished spans for :func:`finished_spans`; ``none://`` discards them.
    The sampler (``const``, ``probabilistic``, ``ratelimiting``, ``remote``) decides for new
    root spans; defaults come from ``$JAEGER_SAMPLER_TYPE`` / ``$JAEGER_SAMPLER_PARAM`` and
    otherwise sample everything. ``fork_join=True`` (or ``$BU_OSPROFILER_FORK_JOIN=1``) installs
    the automatic fork/join integration (:mod:`bu_osprofiler.concurrency`), ``False`` removes it.
    ``log_correlation=True`` (or ``$BU_OSPROFILER_LOG_CORRELATION=1``) puts the trace ids in every
    log record and WARNING+ records into spans (:mod:`bu_osprofiler.logging`; ``log_span_level``
    changes the level), ``False`` removes it.
    Raises ValueError for invalid values. May be called again.
    """
    global _exporter
    fork_join = options.pop("fork_join", None)
    control = options.pop("control", None) or os.environ.get("BU_OSPROFILER_CONTROL") or None
    control_interval = float(options.pop("control_interval", 0.5))
    tail = {k: options.pop(k) for k in ("tail_errors", "tail_slow_ms") if k in options}
    if fork_join is None:
        env_fj = os.environ.get("BU_OSPROFILER_FORK_JOIN", "").strip().lower()
        fork_join = (env_fj in ("1", "true", "yes", "on")) if env_fj else None
    log_corr = _log_correlation_options(options)
    from bu_osprofiler import exporters

    env = exporters.env_config()  # JAEGER_* conventions; explicit arguments win
    service_name = service_name or env.get("service_name") or "unknown_service"
    if connection_string is None:
        connection_string = env.get("connection_string", DEFAULT_CONNECTION_STRING)
    if not isinstance(connection_string, str) or "://" not in connection_string:
        raise ValueError("invalid connection string %r: expected SCHEME://..., e.g. %s"
                         % (connection_string, DEFAULT_CONNECTION_STRING))
    sampler = sampler or env.get("sampler") or "const"
    if sampler_param is None:
        # remote: Jaeger clients' initial probability until the first strategy arrives
        sampler_param = env.get("sampler_param", 0.001 if sampler == "remote" else 1.0)
    if trace_id_128bit is None:
        trace_id_128bit = env.get("trace_id_128bit", True)
    if max_queue_spans is None:
        max_queue_spans = env.get("max_queue_spans", 100_000)
    for key in ("flush_interval", "sampling_server", "http_headers"):
        if key in env:
            options.setdefault(key, env[key])
    all_tags: dict[str, Any] = dict(env.get("tags") or {})
    if tags:
        all_tags.update(tags)

    scheme = connection_string.split("://", 1)[0].lower()
    with _lock:
        # Validate everything before changing anything.
        if sampler != "remote":
            _core.set_sampler(sampler, float(sampler_param))
        _core.set_limits(int(max_queue_spans), int(max_queue_bytes))
        new_exporter = None
        if scheme not in ("memory", "none", "noop"):
            new_exporter = exporters.create(connection_string, dict(
                options, service_name=service_name, sampler=sampler,
                sampler_param=sampler_param))
        _stop_exporter(timeout=options.get("shutdown_timeout", 2.0))
        idx = _core.register_process(service_name, list(exporters.process_tags(all_tags).items()))
        _core.set_process(idx)
        _core.set_trace_id_128(bool(trace_id_128bit))
        _settings.clear()
        _settings.update(service_name=service_name, connection_string=connection_string,
                         sampler=sampler, sampler_param=sampler_param,
                         trace_id_128bit=bool(trace_id_128bit), process_index=idx)
        if scheme == "memory":
            _core.set_mode(_core.MODE_MEMORY)
        elif new_exporter is None:
            _core.set_mode(_core.MODE_DISCARD)
        else:
            _core.set_mode(_core.MODE_REPORTER)
            _exporter = new_exporter
            _exporter.start()
    from bu_osprofiler.concurrency import isolation

    isolation.install()  # reused pool workers never see a previous task's trace
    _configure_adaptive(service_name, control, control_interval, tail)
    if fork_join is not None:
        from bu_osprofiler import concurrency

        if fork_join:
            concurrency.install()
        else:
            concurrency.uninstall()
    if log_corr is not None:
        from bu_osprofiler import logging as _logcorr

        if log_corr[0]:
            _logcorr.install(log_corr[1])
        else:
            _logcorr.uninstall()


def _log_correlation_options(options: dict[str, Any]) -> Optional[tuple[bool, Any]]:
    """Pop ``log_correlation`` / ``log_span_level`` (env: BU_OSPROFILER_LOG_CORRELATION)."""
    enabled = options.pop("log_correlation", None)
    level = options.pop("log_span_level", "WARNING")
    if enabled is None:
        env = os.environ.get("BU_OSPROFILER_LOG_CORRELATION", "").strip().lower()
        enabled = (env in ("1", "true", "yes", "on")) if env else None
    if enabled:
        from bu_osprofiler import logging as _logcorr

        _logcorr._span_level(level)  # ValueError before anything changes
    return None if enabled is None else (bool(enabled), level)


def _configure_adaptive(service: str, control: Optional[str], interval: float,
                        tail: dict[str, Any]) -> None:
    """Tail keep from arguments, then the control state source (adaptive instrumentation)."""
    from bu_osprofiler.adaptive import control as _control, registry

    # this configure's own tail keep (none: off), kept under whatever the control source sends
    registry.set_local_tail(bool(tail.get("tail_errors", False)), tail.get("tail_slow_ms"))
    if control:
        try:
            _control.start(control, service, interval)
        except ValueError as e:  # a bad control setting never stops the service
            from bu_osprofiler._log import warn_limited

            warn_limited("control", "bu_osprofiler: control source ignored: %s", e)


def settings() -> dict[str, Any]:
    """The values the last :func:`configure` call settled on."""
    with _lock:
        return dict(_settings)


def _stop_exporter(timeout: float) -> None:
    global _exporter
    if _exporter is not None:
        exp, _exporter = _exporter, None
        try:
            exp.shutdown(timeout)
        except Exception:  # never raise into the application
            from bu_osprofiler._log import warn_limited

            warn_limited("shutdown", "error while shutting down the exporter", exc_info=True)
    elif _core.get_mode() == _core.MODE_MEMORY:
        _drain_memory()


def _drain_memory() -> None:
    if _core.get_mode() == _core.MODE_MEMORY:
        _memory.extend(_to_finished(r) for r in _core.take_records())


def finished_spans() -> list[FinishedSpan]:
    """Spans finished so far under ``memory://``, in finish order."""
    with _lock:
        _drain_memory()
        return list(_memory)


def clear_finished_spans() -> None:
    """Forget the spans :func:`finished_spans` would return."""
    with _lock:
        _drain_memory()
        _memory.clear()


def flush(timeout: float = 5.0) -> bool:
    """Send everything finished so far; True when all of it was handed over in time."""
    exp = _exporter
    if exp is None:
        return True
    try:
        return bool(exp.flush(timeout))
    except Exception:
        from bu_osprofiler._log import warn_limited

        warn_limited("flush", "error while flushing spans", exc_info=True)
        return False


def shutdown(timeout: float = 5.0) -> None:
    """Flush and stop the exporter; finished spans afterwards are discarded."""
    with _lock:
        _stop_exporter(timeout)
        if _core.get_mode() == _core.MODE_REPORTER:
            _core.set_mode(_core.MODE_DISCARD)


def stats() -> dict[str, int]:
    """Counters: spans started / finished / sampled / exported, drops by reason, batches, bytes."""
    out = _core.stats()
    out.update(_core.tail_stats())
    return out
