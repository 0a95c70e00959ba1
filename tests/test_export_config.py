"""Connection strings, JAEGER_* environment conventions, process tags, rate-limited logging."""
import logging
import socket

import pytest

import bu_osprofiler
from bu_osprofiler import exporters
from bu_osprofiler.exporters import Endpoint, parse_connection_string as parse


@pytest.mark.parametrize("cs,expected", [
    ("jaeger://127.0.0.1:6831", ("udp", "compact", "127.0.0.1", 6831, "")),
    ("jaeger://agent.local", ("udp", "compact", "agent.local", 6831, "")),
    ("jaeger+binary://agent", ("udp", "binary", "agent", 6832, "")),
    ("jaeger+binary://[::1]:7000", ("udp", "binary", "::1", 7000, "")),
    ("jaeger+http://collector", ("http", "binary", "collector", 14268, "/api/traces")),
    ("jaeger+http://c:9999/x/y", ("http", "binary", "c", 9999, "/x/y")),
    ("jaeger+https://c.example:443", ("http", "binary", "c.example", 443, "/api/traces")),
    ("  JAEGER://h:1  ", ("udp", "compact", "h", 1, "")),
])
def test_valid_connection_strings(cs, expected):
    ep = parse(cs)
    assert (ep.transport, ep.protocol, ep.host, ep.port, ep.path) == expected


def test_http_url_and_memory():
    assert parse("jaeger+https://c:1/p").url == "https://c:1/p"
    assert parse("jaeger+http://[::1]:2").url == "http://[::1]:2/api/traces"
    assert parse("memory://").transport == "memory"


def test_query_options_are_merged_and_validated():
    ep = parse("jaeger://h:1?flush_interval=0.5&max_packet_size=1200")
    opts = exporters.resolve_options(ep, {"max_packet_size": 9000})
    assert opts["flush_interval"] == 0.5
    assert opts["max_packet_size"] == 9000  # explicit beats the string


@pytest.mark.parametrize("cs,words", [
    ("zipkin://h:9411", ["unknown", "scheme", "zipkin"]),
    ("jaeger://h:0", ["invalid port", "0"]),
    ("jaeger://h:70000", ["invalid port", "70000"]),
    ("jaeger://h:abc", ["invalid port", "abc"]),
    ("jaeger://:6831", ["no host"]),
    ("jaeger+http://", ["no host"]),
    ("127.0.0.1:6831", ["no scheme"]),
    ("", ["non-empty"]),
    ("jaeger://h:1/path", ["no path"]),
    ("jaeger://h:1?colour=red", ["unknown option", "colour"]),
])
def test_invalid_connection_strings_name_the_problem(cs, words):
    with pytest.raises(ValueError) as info:
        exporters.create(cs, {})
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("opts,word", [
    ({"flush_interval": 0}, "flush_interval"),
    ({"max_packet_size": 70000}, "max_packet_size"),
    ({"http_timeout": "soon"}, "http_timeout"),
])
def test_invalid_options_raise(opts, word):
    with pytest.raises(ValueError, match=word):
        exporters.create("jaeger://127.0.0.1:6831", opts)


def test_create_does_not_start_anything():
    exp = exporters.create("jaeger://127.0.0.1:6831", None)
    assert isinstance(exp, exporters.UdpExporter)
    assert isinstance(exp.endpoint, Endpoint)
    assert exporters.active() is not exp
    assert isinstance(exporters.create("jaeger+http://h", {}), exporters.HttpExporter)


def test_environment_conventions():
    env = {
        "JAEGER_AGENT_HOST": "agent.example", "JAEGER_AGENT_PORT": "6999",
        "JAEGER_SERVICE_NAME": "nova-api", "JAEGER_TAGS": "dc=ber1, rack=${BU_TEST_RACK:r7},x=1",
        "JAEGER_SAMPLER_TYPE": "Probabilistic", "JAEGER_SAMPLER_PARAM": "0.25",
        "JAEGER_TRACEID_128BIT": "false", "JAEGER_REPORTER_FLUSH_INTERVAL": "500ms",
        "JAEGER_SAMPLER_MANAGER_HOST_PORT": "agent.example:5778",
    }
    cfg = exporters.env_config(env)
    assert cfg == {
        "connection_string": "jaeger://agent.example:6999", "service_name": "nova-api",
        "tags": {"dc": "ber1", "rack": "r7", "x": "1"}, "sampler": "probabilistic",
        "sampler_param": 0.25, "trace_id_128bit": False, "flush_interval": 0.5,
        "sampling_server": "agent.example:5778",
    }
    parse(cfg["connection_string"])


def test_endpoint_wins_over_agent_and_auth_headers():
    cfg = exporters.env_config({"JAEGER_ENDPOINT": "https://c:14268/api/traces",
                                "JAEGER_AGENT_HOST": "ignored", "JAEGER_AUTH_TOKEN": "t0k"})
    assert cfg["connection_string"] == "jaeger+https://c:14268/api/traces"
    assert cfg["http_headers"] == {"Authorization": "Bearer t0k"}
    assert parse(cfg["connection_string"]).path == "/api/traces"
    basic = exporters.env_config({"JAEGER_USER": "u", "JAEGER_PASSWORD": "p"})
    assert basic["http_headers"] == {"Authorization": "Basic dTpw"}
    assert exporters.env_config({}) == {}
    assert exporters.connection_string_from_env({"JAEGER_AGENT_PORT": "1"}) == \
        "jaeger://127.0.0.1:1"


@pytest.mark.parametrize("env", [
    {"JAEGER_TRACEID_128BIT": "maybe"},
    {"JAEGER_TAGS": "novalue"},
    {"JAEGER_ENDPOINT": "udp://x"},
    {"JAEGER_SAMPLER_PARAM": "lots"},
])
def test_bad_environment_raises_value_error(env):
    with pytest.raises(ValueError):
        exporters.env_config(env)


def test_process_tags():
    tags = exporters.process_tags({"team": "bu", "hostname": "override"})
    assert tags["jaeger.version"] == "bu_osprofiler-" + bu_osprofiler.__version__
    assert tags["hostname"] == "override"
    socket.inet_aton(tags["ip"])
    assert tags["team"] == "bu"
    assert exporters.process_tags()["hostname"] == socket.gethostname()


def test_rate_limited_log(caplog):
    log = exporters.RateLimitedLog(3600, logging.getLogger("bu_osprofiler.test"))
    with caplog.at_level(logging.WARNING, logger="bu_osprofiler.test"):
        assert log.warning("a", "first %s", 1) is True
        assert log.warning("a", "again") is False
        assert log.warning("a", "again") is False
        assert log.warning("b", "other key") is True
    assert [r.getMessage() for r in caplog.records] == ["first 1", "other key"]
    caplog.clear()
    log.interval = 0
    with caplog.at_level(logging.WARNING, logger="bu_osprofiler.test"):
        log.warning("a", "after")
    assert caplog.records[0].getMessage() == "after (2 similar messages suppressed)"
