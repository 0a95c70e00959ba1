"""Set a service up from its oslo.config ``[profiler]`` section (osprofiler's initializer).

Nova calls ``init_from_conf(conf=CONF, context=..., project="nova", service=binary,
host=host)`` when ``[profiler] enabled`` is true: this configures the exporter (service name
as operators know it, e.g. ``nova-conductor``, ``nova-api``, ``placement-api``), the WSGI
middleware, and the requests / oslo.messaging hooks the options ask for.
"""
from __future__ import annotations

from typing import Any, Optional

from bu_osprofiler import config as _config
from bu_osprofiler._log import LOG

__all__ = ["init_from_conf", "service_name", "LegacyConnectionStringError"]

# osprofiler's storage drivers: a connection string naming one of them is refused (never
# silently ignored), with the alternatives this project exports to.
_LEGACY_SCHEMES = {
    "messaging": "osprofiler's oslo.messaging notifier driver (spans sent to Ceilometer)",
    "redis": "osprofiler's Redis driver",
    "redissentinel": "osprofiler's Redis Sentinel driver",
    "mongodb": "osprofiler's MongoDB driver",
    "elasticsearch": "osprofiler's Elasticsearch driver",
    "loginsight": "osprofiler's VMware Log Insight driver",
    "sqlalchemy": "osprofiler's SQLAlchemy driver",
}
# SQLAlchemy URL dialects (mysql+pymysql://, postgresql://, sqlite://, ...).
_SQL_DIALECTS = ("mysql", "mariadb", "postgresql", "postgres", "sqlite", "oracle", "mssql")

ALTERNATIVES = ("jaeger://HOST:6831 (Jaeger agent, UDP), jaeger+http://HOST:14268 (Jaeger "
                "collector), otlp://HOST:4318 (OpenTelemetry collector, OTLP/HTTP); "
                "`bu-osprofiler collector` receives these on one machine and stores traces "
                "in SQLite")


class LegacyConnectionStringError(ValueError):
    """``[profiler] connection_string`` names an osprofiler storage driver not provided here."""


def _legacy_kind(connection_string: str) -> Optional[str]:
    scheme = connection_string.split("://", 1)[0].lower()
    if scheme in _LEGACY_SCHEMES:
        return _LEGACY_SCHEMES[scheme]
    if scheme.split("+", 1)[0] in _SQL_DIALECTS:
        return "osprofiler's SQLAlchemy driver"
    return None


def check_connection_string(connection_string: str) -> None:
    """Raise LegacyConnectionStringError for osprofiler-only storage back ends."""
    kind = _legacy_kind(connection_string)
    if kind is not None:
        raise LegacyConnectionStringError(
            "[profiler] connection_string = %s selects %s, which bu_osprofiler does not "
            "provide: spans are exported as Jaeger or OTLP traces. Use one of: %s."
            % (_redact(connection_string), kind, ALTERNATIVES))


def _redact(url: str) -> str:
    """The URL without a password (it ends up in an error message and the log)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return "%s%s%s:***@%s" % (scheme, sep, user, host)
    return url


# What operators call the WSGI services whose code passes another name to init_from_conf.
_SERVICE_ALIASES = {"osapi_compute": "api", "metadata": "metadata-api"}


def service_name(project: str, service: str) -> str:
    """The name operators know a service by: ``nova-conductor`` (Nova passes its binary name,
    which repeats the project), ``nova-api`` (``osapi_compute``), ``placement-api`` (a WSGI
    service named after its project), ``glance-api`` (``project="glance", service="api"``)."""
    project = str(project or "").strip()
    name = str(service or "").strip()
    if project and name.startswith(project + "-"):
        name = name[len(project) + 1:]
    if not name or name == project:
        name = "api"
    name = _SERVICE_ALIASES.get(name, name)
    return "%s-%s" % (project, name) if project else name


def _service_name(conf: Any, project: str, service: str) -> str:
    explicit = conf.profiler.service_name
    if explicit:
        return explicit
    name = service_name(project, service)
    scheme = conf.profiler.connection_string.split("://", 1)[0].lower()
    group = "profiler_otlp" if scheme.startswith("otlp") else "profiler_jaeger"
    prefix = getattr(getattr(conf, group, None), "service_name_prefix", None)
    return "%s-%s" % (prefix, name) if prefix else name


ACCEPTED = ("jaeger://, jaeger+http://, jaeger+https://, otlp://, otlp+http://, memory://, "
            "none://")


def init_from_conf(conf: Any, context: Any, project: str, service: str, host: str,
                   **kwargs: Any) -> None:
    """Configure tracing of this service from ``conf.profiler`` (upstream signature).

    ``context`` and extra ``kwargs`` are accepted for compatibility (upstream hands them to its
    notifier drivers). Tracing never stops a service from starting: an unusable
    ``connection_string`` (an osprofiler-only driver, an unknown scheme, a malformed URL) or
    any other invalid value logs one error naming the accepted schemes, and the service runs
    untraced.
    """
    try:
        _init_from_conf(conf, project, service, host)
    except Exception as exc:
        from bu_osprofiler import web

        web.disable()
        try:
            _config.configure(connection_string="none://")
        except Exception:
            pass
        LOG.error("bu_osprofiler: tracing of %s is OFF, the service runs untraced: %s "
                  "(accepted [profiler] connection_string schemes: %s)",
                  "%s-%s" % (project, service), exc, ACCEPTED)


def _init_from_conf(conf: Any, project: str, service: str, host: str) -> None:
    from bu_osprofiler import opts

    opts._register(conf)  # idempotent; makes a bare ConfigOpts usable too
    p = conf.profiler
    connection_string = p.connection_string
    check_connection_string(connection_string)
    jaeger = getattr(conf, "profiler_jaeger", None)
    tags: dict[str, Any] = dict(getattr(jaeger, "process_tags", None) or {})
    if host:
        tags.setdefault("host", str(host))
    name = _service_name(conf, project, service)
    try:
        _config.configure(
            service_name=name, connection_string=connection_string,
            sampler=p.sampler_type, sampler_param=p.sampler_param, tags=tags,
            trace_id_128bit=p.trace_id_128bit, max_queue_spans=p.max_queue_spans,
            max_queue_bytes=p.max_queue_bytes, tail_errors=p.filter_error_trace,
            control=p.control,
            log_correlation=True if p.log_correlation else None, log_span_level=p.log_span_level)
    except ImportError as exc:
        raise ValueError("[profiler] connection_string = %s: its exporter cannot be loaded "
                         "(%s)" % (_redact(connection_string), exc)) from exc
    from bu_osprofiler import web

    web.set_policy(trust_incoming=p.trust_incoming, propagation=p.propagation,
                   max_forced_traces_per_second=p.max_forced_traces_per_second)
    web.enable(p.hmac_keys)
    if p.trace_requests:
        from bu_osprofiler import requests as _requests

        _requests.enable()
    if p.enabled:
        try:
            import oslo_messaging  # noqa: F401
        except ImportError:
            pass
        else:
            from bu_osprofiler import messaging

            messaging.install(legacy_trace_info=p.rpc_legacy_trace_info, hmac_keys=p.hmac_keys,
                              spans=p.trace_rpc, start_traces=p.rpc_start_traces)
    LOG.info("bu_osprofiler: tracing %s to %s", name, _redact(connection_string))
