"""[profiler] options, set_defaults, list_opts, the generator entry point and init_from_conf."""
import os
import shutil
import subprocess
import sys

import pytest

cfg = pytest.importorskip("oslo_config.cfg")

import bu_osprofiler  # noqa: E402
from bu_osprofiler import initializer, opts, profiler, web  # noqa: E402

# Upstream osprofiler's [profiler] options: (name, oslo.config type, default).
UPSTREAM = [
    ("enabled", cfg.BoolOpt, False),
    ("trace_sqlalchemy", cfg.BoolOpt, False),
    ("trace_requests", cfg.BoolOpt, False),
    ("hmac_keys", cfg.StrOpt, "SECRET_KEY"),
    ("connection_string", cfg.StrOpt, "jaeger://127.0.0.1:6831"),  # the one changed default
    ("es_doc_type", cfg.StrOpt, "notification"),
    ("es_scroll_time", cfg.StrOpt, "2m"),
    ("es_scroll_size", cfg.IntOpt, 10000),
    ("socket_timeout", cfg.FloatOpt, 0.1),
    ("sentinel_service_name", cfg.StrOpt, "mymaster"),
    ("filter_error_trace", cfg.BoolOpt, False),
]
OURS = ["sampler_type", "sampler_param", "propagation", "trust_incoming",
        "max_forced_traces_per_second", "trace_id_128bit", "max_queue_spans", "max_queue_bytes",
        "trace_rpc", "rpc_legacy_trace_info", "service_name"]


@pytest.fixture
def conf():
    c = cfg.ConfigOpts()
    opts.set_defaults(c)
    c([], project="test")
    return c


@pytest.fixture(autouse=True)
def _restore():
    # OptGroup copies share their option table, so ConfigOpts.set_default() in one test would
    # change the default every later ConfigOpts sees: snapshot and restore it.
    groups = (opts._profiler_opt_group, opts._jaegerprofiler_opt_group,
              opts._otlp_profiler_opt_group)
    saved = [(g, {k: dict(v) for k, v in g._opts.items()}) for g in groups]
    yield
    for g, table in saved:
        for k, v in table.items():
            g._opts[k].clear()
            g._opts[k].update(v)
    web._reset()
    bu_osprofiler.configure("test", "memory://")


def _profiler_opts():
    groups = dict(opts.list_opts())
    return {o.dest: o for o in groups["profiler"]}


@pytest.mark.parametrize("name,typ,default", UPSTREAM)
def test_every_upstream_option_keeps_name_type_default(name, typ, default, conf):
    opt = _profiler_opts()[name]
    assert isinstance(opt, typ)
    assert opt.default == default
    assert getattr(conf.profiler, name) == default


def test_hmac_keys_is_secret_and_enabled_has_deprecated_name():
    o = _profiler_opts()
    assert o["hmac_keys"].secret
    assert any(d.name == "profiler_enabled" for d in o["enabled"].deprecated_opts)


def test_our_options_and_defaults(conf):
    o = _profiler_opts()
    for name in OURS:
        assert name in o
    p = conf.profiler
    # production-safe: no trace starts on its own (osprofiler's behaviour); trusted contexts
    # (nova --profile, signed X-Trace-Info, RPC from a traced service) always continue
    assert (p.sampler_type, p.sampler_param) == ("const", 0.0)
    assert p.rpc_start_traces is False
    assert p.trust_incoming == "signed"
    assert p.propagation == ["jaeger", "w3c", "osprofiler"]
    assert p.trace_id_128bit and p.trace_rpc and not p.rpc_legacy_trace_info


def test_choices_are_enforced():
    c = cfg.ConfigOpts()
    opts.set_defaults(c)
    c([], project="test")
    with pytest.raises(ValueError):
        c.set_override("trust_incoming", "sometimes", group="profiler")
    with pytest.raises(ValueError):
        c.set_override("propagation", ["jaeger", "zipkin"], group="profiler")


def test_list_opts_has_upstream_groups():
    groups = dict(opts.list_opts())
    assert set(groups) == {"profiler", "profiler_jaeger", "profiler_otlp"}
    assert {o.dest for o in groups["profiler_jaeger"]} == {"service_name_prefix", "process_tags"}
    # Nova's nova/conf/profiler.py reads these private names.
    assert opts._profiler_opt_group.name == "profiler"
    assert opts._PROFILER_OPTS == groups["profiler"]


def test_set_defaults_overrides(conf):
    c = cfg.ConfigOpts()
    opts.set_defaults(c, enabled=True, trace_sqlalchemy=True, hmac_keys="k1,k2",
                      connection_string="otlp://127.0.0.1:4318", es_scroll_size=5,
                      socket_timeout=2.5, sentinel_service_name="m", trust_incoming="never")
    c([], project="test")
    p = c.profiler
    assert (p.enabled, p.trace_sqlalchemy, p.hmac_keys) == (True, True, "k1,k2")
    assert p.connection_string == "otlp://127.0.0.1:4318"
    assert (p.es_scroll_size, p.socket_timeout, p.sentinel_service_name) == (5, 2.5, "m")
    assert p.trust_incoming == "never"
    with pytest.raises(TypeError):
        opts.set_defaults(c, no_such_option=1)


def test_enabled_helpers(conf):
    assert not opts.is_trace_enabled(conf) and not opts.is_db_trace_enabled(conf)
    conf.set_override("enabled", True, group="profiler")
    assert opts.is_trace_enabled(conf) and not opts.is_db_trace_enabled(conf)
    conf.set_override("trace_sqlalchemy", True, group="profiler")
    assert opts.is_db_trace_enabled(conf)


def _traced_request(mw):
    seen = []

    def app(environ, start_response):
        seen.append(bu_osprofiler.active_span())
        start_response("200 OK", [])
        return [b"x"]

    m = web.WsgiMiddleware(app, enabled=False)
    list(m({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http",
            "SERVER_NAME": "h", "SERVER_PORT": "80"}, lambda *a: None))
    return seen[0]


def test_enable_and_disable_web_trace(conf):
    bu_osprofiler.configure("test", "memory://")
    opts.enable_web_trace(conf)  # not enabled: no effect
    assert _traced_request(None) is None
    conf.set_override("enabled", True, group="profiler")
    opts.enable_web_trace(conf)
    assert _traced_request(None) is not None
    opts.disable_web_trace(conf)
    assert _traced_request(None) is None


def test_oslo_config_generator_lists_our_namespace(tmp_path):
    exe = shutil.which("oslo-config-generator",
                       path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if exe is None:
        pytest.skip("oslo-config-generator not installed")
    out = tmp_path / "sample.conf"
    subprocess.run([exe, "--namespace", "bu_osprofiler", "--output-file", str(out)],
                   check=True, capture_output=True, timeout=60)
    text = out.read_text()
    assert "[profiler]" in text and "[profiler_jaeger]" in text
    assert "#connection_string = jaeger://127.0.0.1:6831" in text
    assert "#trust_incoming = signed" in text


# ---------------------------------------------------------------- init_from_conf

def _conf(**overrides):
    c = cfg.ConfigOpts()
    opts.set_defaults(c)
    c([], project="test")
    # Group tables are shared between ConfigOpts (oslo.config): start from no overrides.
    for o in opts._PROFILER_OPTS:
        c.clear_override(o.dest, group="profiler")
    for k, v in overrides.items():
        c.set_override(k, v, group="profiler")
    return c


def test_init_from_conf_configures_service_and_web():
    c = _conf(enabled=True, connection_string="memory://", hmac_keys="abc",
              sampler_type="probabilistic", sampler_param=0.25, trace_id_128bit=False,
              trust_incoming="always", trace_rpc=False)
    initializer.init_from_conf(c, context={}, project="nova", service="api", host="h1")
    s = bu_osprofiler.settings()
    assert s["service_name"] == "nova-api"
    assert (s["sampler"], s["sampler_param"], s["trace_id_128bit"]) == \
        ("probabilistic", 0.25, False)
    _, tags = bu_osprofiler._core.process_info(s["process_index"])
    assert tags["host"] == "h1"
    assert web._ENABLED and web._HMAC_KEYS == (b"abc",)
    assert web.policy()["trust_incoming"] == "always"


def test_init_from_conf_service_name_prefix_and_tags():
    c = _conf(enabled=True, connection_string="memory://", trace_rpc=False)
    c.set_override("service_name_prefix", "prod", group="profiler_jaeger")
    c.set_override("process_tags", {"region": "r1"}, group="profiler_jaeger")
    initializer.init_from_conf(c, context=None, project="nova", service="compute", host="h")
    s = bu_osprofiler.settings()
    assert s["service_name"] == "prod-nova-compute"
    assert bu_osprofiler._core.process_info(s["process_index"])[1]["region"] == "r1"


def test_init_from_conf_enables_requests_tracing():
    requests = pytest.importorskip("requests")
    from bu_osprofiler import requests as bu_requests

    c = _conf(enabled=True, connection_string="memory://", trace_requests=True, trace_rpc=False)
    try:
        initializer.init_from_conf(c, context={}, project="p", service="s", host="h")
        assert requests.adapters.HTTPAdapter.send is bu_requests._send
    finally:
        bu_requests.disable()


@pytest.mark.parametrize("url", [
    "messaging://", "redis://127.0.0.1:6379", "redissentinel://127.0.0.1:26379",
    "mongodb://127.0.0.1:27017", "elasticsearch://127.0.0.1:9200",
    "loginsight://user:pw@host", "mysql+pymysql://nova:secret@127.0.0.1/osprofiler",
    "postgresql://u:p@127.0.0.1/x", "sqlite:////tmp/x.db",
])
def test_legacy_connection_strings_are_refused_with_alternatives(url, caplog):
    c = _conf(enabled=True, connection_string=url)
    with pytest.raises(initializer.LegacyConnectionStringError) as ei:
        initializer.check_connection_string(url)
    assert isinstance(ei.value, ValueError)
    caplog.clear()
    # the service still starts: one error naming the alternatives, then untraced
    initializer.init_from_conf(c, context={}, project="nova", service="api", host="h")
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    msg = errors[0].getMessage()
    assert "jaeger://" in msg and "otlp://" in msg and "none://" in msg and "untraced" in msg
    assert "secret" not in msg and ":pw@" not in msg  # passwords are not echoed
    _assert_untraced()


def _uninstall_rpc():
    try:
        from bu_osprofiler import messaging
    except ImportError:
        return
    messaging.uninstall()


def _assert_untraced():
    from bu_osprofiler import web

    assert bu_osprofiler.settings()["connection_string"] == "none://"
    assert web._ENABLED is False
    app_calls = []

    def app(environ, start_response):
        app_calls.append(profiler.get())
        start_response("200 OK", [])
        return [b"ok"]

    mw = web.WsgiMiddleware(app, enabled=True)
    body = mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None)
    assert list(body) == [b"ok"] and app_calls == [None]


@pytest.mark.parametrize("url", ["foo://127.0.0.1:1", "jaeger://[::1", "jaeger",
                                 "otlp://host:notaport"])
def test_bad_connection_string_logs_and_runs_untraced(url, caplog):
    c = _conf(enabled=True, connection_string=url)
    initializer.init_from_conf(c, context={}, project="nova", service="nova-compute", host="h")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "none://" in errors[0] and "untraced" in errors[0]
    _assert_untraced()


def test_invalid_sampler_is_logged_and_the_service_runs_untraced(caplog):
    c = _conf(enabled=True, connection_string="memory://", sampler_type="probabilistic",
              sampler_param=3.0)
    initializer.init_from_conf(c, context={}, project="p", service="s", host="h")
    assert any(r.levelname == "ERROR" and "untraced" in r.getMessage() for r in caplog.records)
    _assert_untraced()


@pytest.mark.parametrize("project, service, expected", [
    ("nova", "nova-conductor", "nova-conductor"),
    ("nova", "nova-compute", "nova-compute"),
    ("nova", "nova-scheduler", "nova-scheduler"),
    ("nova", "osapi_compute", "nova-api"),
    ("nova", "metadata", "nova-metadata-api"),
    ("placement", "placement", "placement-api"),
    ("glance", "api", "glance-api"),
    ("neutron", "neutron-server", "neutron-server"),
])
def test_service_names_are_the_ones_operators_know(project, service, expected):
    c = _conf(enabled=True, connection_string="memory://", trace_rpc=False)
    initializer.init_from_conf(c, context={}, project=project, service=service, host="h")
    _uninstall_rpc()
    assert bu_osprofiler.settings()["service_name"] == expected
    assert not expected.startswith("%s-%s-" % (project, project))


def test_init_from_conf_installs_rpc_hooks_only_when_enabled():
    pytest.importorskip("oslo_messaging")
    from bu_osprofiler import messaging

    try:
        c = _conf(enabled=False, connection_string="memory://")
        initializer.init_from_conf(c, context={}, project="p", service="s", host="h")
        assert not messaging.installed()
        c = _conf(enabled=True, connection_string="memory://", trace_rpc=False)
        initializer.init_from_conf(c, context={}, project="p", service="s", host="h")
        # no RPC spans, but the hooks keep HMAC keys off the bus
        assert messaging.installed() and not messaging._settings["spans"]
        messaging.uninstall()
        c = _conf(enabled=True, connection_string="memory://", rpc_legacy_trace_info=True)
        initializer.init_from_conf(c, context={}, project="p", service="s", host="h")
        assert messaging.installed() and messaging._settings["legacy_trace_info"]
    finally:
        messaging.uninstall()


def test_default_sampler_traces_only_profiled_requests():
    """With [profiler] enabled and the defaults, ordinary API requests (and service-to-service
    calls of periodic tasks) start no trace, while every request a client asked to profile (a
    signed X-Trace-Info, as novaclient --profile sends) is traced. A rate limit is opt-in."""
    import uuid as _uuid

    from bu_osprofiler import propagation

    def burst(mw, seen):
        for _ in range(20):
            b"".join(mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/servers"}, lambda *a: None))
        for _ in range(5):
            base = str(_uuid.uuid4())
            info, sig = propagation.legacy_pack({"base_id": base, "parent_id": base}, "k1")
            b"".join(mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/servers",
                         "HTTP_X_TRACE_INFO": info, "HTTP_X_TRACE_HMAC": sig},
                        lambda *a: None))

    seen = []

    def app(environ, start_response):
        seen.append(profiler.get() is not None)
        start_response("200 OK", [])
        return [b""]

    mw = web.WsgiMiddleware(app)
    c = _conf(enabled=True, connection_string="memory://", hmac_keys="k1", trace_rpc=False)
    initializer.init_from_conf(c, context={}, project="nova", service="osapi_compute",
                               host="h")
    burst(mw, seen)
    assert seen == [False] * 20 + [True] * 5
    spans = [s for s in bu_osprofiler.finished_spans() if s.operation_name == "wsgi"]
    assert len(spans) == 5 and {s.service_name for s in spans} == {"nova-api"}
    # opting in to a rate limit: a burst gets about one unsolicited trace per second
    del seen[:]
    c = _conf(enabled=True, connection_string="memory://", hmac_keys="k1", trace_rpc=False,
              sampler_type="ratelimiting", sampler_param=1.0)
    initializer.init_from_conf(c, context={}, project="nova", service="osapi_compute",
                               host="h")
    burst(mw, seen)
    assert 1 <= sum(seen[:20]) <= 2 and seen[20:] == [True] * 5
