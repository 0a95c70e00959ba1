"""oslo.config options of the ``[profiler]`` group (osprofiler's names, plus this project's).

Every option upstream osprofiler defines keeps its name, type and default, except
``connection_string`` whose default is ``jaeger://127.0.0.1:6831``. The options this project adds
(sampler, propagation, trust policy, ids, queue limits, RPC hooks) are documented in
doc/openstack.md. ``oslo-config-generator --namespace bu_osprofiler`` lists them all.
"""
from __future__ import annotations

from typing import Any, Optional

from oslo_config import cfg
from oslo_config import types

from bu_osprofiler.config import DEFAULT_CONNECTION_STRING

__all__ = [
    "list_opts", "set_defaults", "is_trace_enabled", "is_db_trace_enabled",
    "enable_web_trace", "disable_web_trace",
]

_profiler_opt_group = cfg.OptGroup(
    "profiler",
    title="OpenStack cross-service tracing (bu_osprofiler)",
    help="Traces requests through OpenStack services as Jaeger/OpenTracing spans "
         "(a drop-in replacement for OSProfiler).")

# ---------------------------------------------------------------- upstream options

_enabled_opt = cfg.BoolOpt(
    "enabled", default=False, deprecated_name="profiler_enabled",
    help="Trace this service. When False nothing is traced here, even for requests "
         "that another service traces.")
_trace_sqlalchemy_opt = cfg.BoolOpt(
    "trace_sqlalchemy", default=False,
    help="Record every SQL statement as a span (db.statement, db.params).")
_trace_requests_opt = cfg.BoolOpt(
    "trace_requests", default=False,
    help="Record outgoing HTTP calls made with the python requests package as client spans "
         "carrying the trace headers.")
_hmac_keys_opt = cfg.StrOpt(
    "hmac_keys", default="SECRET_KEY", secret=True,
    help="Comma-separated shared keys (<key1>[,<key2>...]) that sign the legacy "
         "X-Trace-Info header. A client starting a trace (e.g. novaclient --profile KEY) "
         "must use one of them; with trust_incoming=signed only signed contexts are "
         "honoured. Never sent over RPC by this project's hooks.")
_connection_string_opt = cfg.StrOpt(
    "connection_string", default=DEFAULT_CONNECTION_STRING,
    help="Where spans go: jaeger://HOST:6831 (Jaeger agent, UDP), "
         "jaeger+http://HOST:14268 (Jaeger collector), otlp://HOST:4318 (OpenTelemetry "
         "collector, OTLP/HTTP), memory:// (tests), none:// (discard). osprofiler's legacy "
         "drivers (messaging://, redis://, mongodb://, elasticsearch://, loginsight://, "
         "sqlalchemy URLs) are refused at start-up with an error naming these instead.")
_es_doc_type_opt = cfg.StrOpt(
    "es_doc_type", default="notification",
    help="Accepted for compatibility (osprofiler's Elasticsearch driver); unused.")
_es_scroll_time_opt = cfg.StrOpt(
    "es_scroll_time", default="2m",
    help="Accepted for compatibility (osprofiler's Elasticsearch driver); unused.")
_es_scroll_size_opt = cfg.IntOpt(
    "es_scroll_size", default=10000,
    help="Accepted for compatibility (osprofiler's Elasticsearch driver); unused.")
_socket_timeout_opt = cfg.FloatOpt(
    "socket_timeout", default=0.1,
    help="Accepted for compatibility (osprofiler's Redis sentinel driver); unused.")
_sentinel_service_name_opt = cfg.StrOpt(
    "sentinel_service_name", default="mymaster",
    help="Accepted for compatibility (osprofiler's Redis sentinel driver); unused.")
_filter_error_trace_opt = cfg.BoolOpt(
    "filter_error_trace", default=False,
    help="Keep traces with an error even when the head sampler said no: unsampled spans are "
         "held in a bounded buffer until their local root ends, then exported if the trace "
         "had an error span (tail keep, see doc/adaptive.md).")
_control_opt = cfg.StrOpt(
    "control", default=None,
    help="Where this service reads its tracepoint control state (adaptive instrumentation): "
         "the collector's query URL (http://HOST:16686) or a local JSON file. Unset: every "
         "trace point on.")

# ---------------------------------------------------------------- this project's options

_sampler_type_opt = cfg.StrOpt(
    "sampler_type", default="const",
    choices=["const", "probabilistic", "ratelimiting", "remote"],
    help="Sampler deciding whether a request arriving without a trusted trace context starts "
         "a new trace: const (sampler_param 1 = all, 0 = none), probabilistic (fraction "
         "0..1), ratelimiting (traces per second), remote (Jaeger agent's sampling "
         "strategy). A trusted incoming context (nova --profile, a signed X-Trace-Info, an "
         "RPC message from a traced service) is always continued, whatever the sampler says.")
_sampler_param_opt = cfg.FloatOpt(
    "sampler_param", default=0.0, min=0,
    help="Parameter of sampler_type. The default (const, 0) starts no trace on its own: only "
         "requests a client asked to profile are traced, as with osprofiler, so an idle "
         "or busy cloud records nothing else. E.g. sampler_type = ratelimiting, "
         "sampler_param = 1 also records up to one unsolicited request per second and "
         "process; set both together.")
_propagation_opt = cfg.ListOpt(
    "propagation", default=["jaeger", "w3c", "osprofiler"],
    item_type=types.String(choices=["jaeger", "w3c", "b3", "osprofiler"]),
    help="Context formats written on outgoing requests: jaeger (uber-trace-id, uberctx-*), "
         "w3c (traceparent, baggage), b3, osprofiler (signed X-Trace-Info/X-Trace-HMAC, "
         "only when an HMAC key is known). Incoming requests are read in any of them.")
_trust_incoming_opt = cfg.StrOpt(
    "trust_incoming", default="signed", choices=["always", "signed", "never"],
    help="Which incoming HTTP trace contexts the WSGI middleware continues: always (any "
         "valid header; sampling forced by callers is rate-limited by "
         "max_forced_traces_per_second), signed (only a context vouched for by a valid "
         "X-Trace-HMAC for one of hmac_keys; protects public endpoints from forced "
         "tracing), never (every request starts a new trace chosen by the sampler).")
_max_forced_opt = cfg.FloatOpt(
    "max_forced_traces_per_second", default=100.0, min=0,
    help="With trust_incoming=always: at most this many new incoming unsigned traces per "
         "second keep the sampled/debug decision the caller made; beyond it they are "
         "continued unsampled. 0 means no limit.")
_trace_id_128bit_opt = cfg.BoolOpt(
    "trace_id_128bit", default=True,
    help="Generate 128-bit trace ids (False: 64-bit, for old Jaeger back ends).")
_max_queue_spans_opt = cfg.IntOpt(
    "max_queue_spans", default=100000, min=1,
    help="Finished spans held for export at most; more are dropped and counted.")
_max_queue_bytes_opt = cfg.IntOpt(
    "max_queue_bytes", default=64 * 1024 * 1024, min=1024,
    help="Memory held by finished spans awaiting export at most (bytes).")
_trace_rpc_opt = cfg.BoolOpt(
    "trace_rpc", default=True,
    help="With enabled=True, init_from_conf installs the oslo.messaging hooks: an RPC call "
         "becomes a client span and a server span, a cast a producer span and a consumer "
         "span; the context travels in the RPC context dict. False: no RPC spans (the "
         "hooks still keep HMAC keys off the bus).")
_rpc_legacy_trace_info_opt = cfg.BoolOpt(
    "rpc_legacy_trace_info", default=False,
    help="Also write osprofiler's legacy trace_info (hmac_key, base_id, parent_id) into "
         "outgoing RPC contexts, for services still running stock osprofiler. Note that "
         "this puts an HMAC key on the message bus. Incoming trace_info is always read.")
_rpc_start_traces_opt = cfg.BoolOpt(
    "rpc_start_traces", default=False,
    help="Start a new trace (subject to the sampler) for an incoming RPC message that "
         "carries no trace context. Off by default: periodic tasks and service "
         "heartbeats would each become a trace, and osprofiler records none of them.")
_service_name_opt = cfg.StrOpt(
    "service_name",
    help="Service name of this process's spans (default: the name operators know: "
         "nova-api, nova-conductor, nova-compute, placement-api, ...).")
_log_correlation_opt = cfg.BoolOpt(
    "log_correlation", default=False,
    help="Add trace_id, span_id, trace_sampled and base_id to every log record (usable in "
         "logging_context_format_string and the other oslo.log format strings; empty outside "
         "a trace) and record log records at or above log_span_level inside sampled spans as "
         "span logs.")
_log_span_level_opt = cfg.StrOpt(
    "log_span_level", default="WARNING", ignore_case=True,
    choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "OFF"],
    help="With log_correlation: the lowest level (DEBUG, INFO, WARNING, ERROR, CRITICAL or "
         "OFF) of the log records recorded as span logs.")

_PROFILER_OPTS = [
    _enabled_opt,
    _trace_sqlalchemy_opt,
    _trace_requests_opt,
    _hmac_keys_opt,
    _connection_string_opt,
    _es_doc_type_opt,
    _es_scroll_time_opt,
    _es_scroll_size_opt,
    _socket_timeout_opt,
    _sentinel_service_name_opt,
    _filter_error_trace_opt,
    _control_opt,
    _sampler_type_opt,
    _sampler_param_opt,
    _propagation_opt,
    _trust_incoming_opt,
    _max_forced_opt,
    _trace_id_128bit_opt,
    _max_queue_spans_opt,
    _max_queue_bytes_opt,
    _trace_rpc_opt,
    _rpc_legacy_trace_info_opt,
    _rpc_start_traces_opt,
    _service_name_opt,
    _log_correlation_opt,
    _log_span_level_opt,
]

# Groups upstream defines for its Jaeger and OTLP drivers; honoured here (name prefix, tags).
_jaegerprofiler_opt_group = cfg.OptGroup(
    "profiler_jaeger", title="Jaeger exporter options (osprofiler compatible)")
_JAEGER_OPTS = [
    cfg.StrOpt("service_name_prefix",
               help="Prefix of the service name: <prefix>-<project>-<service>."),
    cfg.DictOpt("process_tags", default={},
                help="Process tags reported with every span (key:value,...)."),
]
_otlp_profiler_opt_group = cfg.OptGroup(
    "profiler_otlp", title="OTLP exporter options (osprofiler compatible)")
_OTLP_OPTS = [
    cfg.StrOpt("service_name_prefix",
               help="Prefix of the service name when exporting with otlp://."),
]

cfg.CONF.register_opts(_PROFILER_OPTS, group=_profiler_opt_group)
cfg.CONF.register_opts(_JAEGER_OPTS, group=_jaegerprofiler_opt_group)
cfg.CONF.register_opts(_OTLP_OPTS, group=_otlp_profiler_opt_group)


def _register(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(_PROFILER_OPTS, group=_profiler_opt_group)
    conf.register_opts(_JAEGER_OPTS, group=_jaegerprofiler_opt_group)
    conf.register_opts(_OTLP_OPTS, group=_otlp_profiler_opt_group)


def set_defaults(conf: cfg.ConfigOpts, enabled: Optional[bool] = None,
                 trace_sqlalchemy: Optional[bool] = None, hmac_keys: Optional[str] = None,
                 connection_string: Optional[str] = None, es_doc_type: Optional[str] = None,
                 es_scroll_time: Optional[str] = None, es_scroll_size: Optional[int] = None,
                 socket_timeout: Optional[float] = None,
                 sentinel_service_name: Optional[str] = None, **ours: Any) -> None:
    """Register the options on ``conf`` and override the defaults given (upstream signature).

    Keyword arguments named after this project's options (``sampler_type=...``,
    ``trust_incoming=...``) set their defaults too; an unknown name raises TypeError.
    """
    _register(conf)
    given = dict(enabled=enabled, trace_sqlalchemy=trace_sqlalchemy, hmac_keys=hmac_keys,
                 connection_string=connection_string, es_doc_type=es_doc_type,
                 es_scroll_time=es_scroll_time, es_scroll_size=es_scroll_size,
                 socket_timeout=socket_timeout, sentinel_service_name=sentinel_service_name)
    known = {o.dest for o in _PROFILER_OPTS}
    for name in ours:
        if name not in known:
            raise TypeError("set_defaults() got an unexpected keyword argument %r" % name)
    given.update(ours)
    for name, value in given.items():
        if value is not None:
            conf.set_default(name, value, group=_profiler_opt_group.name)


def _conf(conf: Optional[cfg.ConfigOpts]) -> cfg.ConfigOpts:
    return cfg.CONF if conf is None else conf


def is_trace_enabled(conf: Optional[cfg.ConfigOpts] = None) -> bool:
    """``[profiler] enabled``."""
    return bool(_conf(conf).profiler.enabled)


def is_db_trace_enabled(conf: Optional[cfg.ConfigOpts] = None) -> bool:
    """``[profiler] enabled`` and ``trace_sqlalchemy``."""
    c = _conf(conf)
    return bool(c.profiler.enabled and c.profiler.trace_sqlalchemy)


def enable_web_trace(conf: Optional[cfg.ConfigOpts] = None) -> None:
    """Turn the WSGI middleware on with the configured keys (when ``enabled``)."""
    c = _conf(conf)
    if c.profiler.enabled:
        from bu_osprofiler import web

        web.enable(c.profiler.hmac_keys)


def disable_web_trace(conf: Optional[cfg.ConfigOpts] = None) -> None:
    """Turn the WSGI middleware off (when ``enabled``)."""
    c = _conf(conf)
    if c.profiler.enabled:
        from bu_osprofiler import web

        web.disable()


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Options for oslo-config-generator (entry point ``oslo.config.opts``)."""
    return [
        (_profiler_opt_group.name, list(_PROFILER_OPTS)),
        (_jaegerprofiler_opt_group.name, list(_JAEGER_OPTS)),
        (_otlp_profiler_opt_group.name, list(_OTLP_OPTS)),
    ]
