"""The collector's query port under hostile input: validated parameters with JSON errors,
bounded lookups, the Host check, security headers, the optional token, trace-id prefixes."""
import json
import os
from urllib.parse import quote

import pytest
from collector_helpers import batch, collector, emit_batch, http_request, span

from bu_osprofiler import _core
from bu_osprofiler.collector.server import Collector

__all__ = ["collector"]
T0 = 1_700_000_000_000_000


def load(c, *batches):
    for b in batches:
        c.submit(emit_batch(b), _core.THRIFT_COMPACT_MESSAGE, "test")
    assert c.flush()


@pytest.fixture
def loaded(collector):
    collector.max_age_s = None  # the traces start in 2023: keep them for the whole test
    load(collector,
         batch("a/b service", [span(0xABCD000000000001, 1, 0, "GET /x", T0, 100),
                               span(0xABCD000000000002, 1, 0, "GET /y", T0 + 10, 100)]))
    # the intake rejects a span starting in 2**62 µs (counted): such a row can only come from
    # elsewhere (an older store, another writer); written straight into the store here
    w = collector.store.writer()
    w.add("future", "[]", [("0000000000005151", 1, 0, "far", 1, 2**62, 10, 0, None, None, None)])
    w.close()
    return collector


def get(c, path, headers=None):
    status, h, body = http_request(c.ports["query"], "GET", path, headers=headers)
    return status, h, body.decode("utf-8", "replace")


@pytest.mark.parametrize("query, msg", [
    ("limit=abc", "limit: not an integer: 'abc'"),
    ("limit=-1", "limit: -1 is out of range"),
    ("limit=99999999999999999999", "limit: 99999999999999999999 is out of range"),
    ("lookback=1e400", "lookback: out of range: '1e400'"),
    ("lookback=nan", "lookback: not a duration: 'nan'"),
    ("minDuration=inf", "minDuration: out of range: 'inf'"),
    ("maxDuration=-5ms", "maxDuration: out of range: '-5ms'"),
    ("start=1e23", "start: 1e23 is out of range"),
    ("end=abc", "end: not an integer: 'abc'"),
    ("start=200&end=100", "end is before start"),
    ("tags=[1]", "tags must be a JSON object"),
    ("tags={", "tags: not a JSON object"),
])
def test_bad_parameters_are_400_with_a_message(loaded, query, msg):
    for path in ("/api/traces?", "/api/summaries?"):
        status, h, body = get(loaded, path + query)
        assert status == 400 and h["Content-Type"] == "application/json"
        doc = json.loads(body)
        assert doc["data"] is None and doc["errors"][0]["code"] == 400
        assert msg in doc["errors"][0]["msg"], doc
    status, h, body = get(loaded, "/?" + query)  # the list page says it too, as HTML
    assert status == 400 and h["Content-Type"].startswith("text/html")
    assert "Traceback" not in body


def test_lookups_per_request_are_capped(loaded):
    ids = "&".join(f"traceID={i:x}" for i in range(1, 5001))
    status, _, body = get(loaded, "/api/traces?" + ids)
    assert status == 400 and "too many query parameters" in json.loads(body)["errors"][0]["msg"]
    ids = "&".join(f"traceID={i:x}" for i in range(1, 102))
    status, _, body = get(loaded, "/api/traces?" + ids)
    assert status == 400 and "101 ids in one request, at most 100" in body
    ids = ",".join(f"{i:x}" for i in range(1, 150))  # comma lists count too
    assert get(loaded, "/api/traces?traceID=" + ids)[0] == 400
    status, _, body = get(loaded, "/api/traces?traceID=5151&traceID=abcd000000000001")
    assert status == 200 and len(json.loads(body)["data"]) == 2


def test_service_names_with_a_slash(loaded):
    status, _, body = get(loaded, "/api/services/" + quote("a/b service", safe="") + "/operations")
    assert status == 200 and json.loads(body)["data"] == ["GET /x", "GET /y"]


def test_far_future_times_do_not_break_the_list(loaded):
    status, _, page = get(loaded, "/")
    assert status == 200 and "out of range (4611686018427387904 µs)" in page
    assert "1 trace with times out of range not plotted" in page
    assert get(loaded, "/trace/0000000000005151")[0] == 200
    status, _, body = get(loaded, "/api/summaries")
    assert status == 200 and len(json.loads(body)["data"]) == 3


def test_security_headers_on_every_answer(loaded):
    for path in ("/", "/trace/0000000000005151", "/trace/5151", "/api/services", "/api/traces/1", "/nowhere"):
        _, h, _ = get(loaded, path)
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["X-Frame-Options"] == "DENY"
        csp = h["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("script-src")[1] \
            .split(";")[0]


def test_host_header_is_checked(loaded):
    port = loaded.ports["query"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "10.1.2.3:80"):
        assert get(loaded, "/api/services", {"Host": host})[0] == 200, host
    for host in ("evil.example", f"attacker.test:{port}", "localhost.evil.example"):
        status, _, body = get(loaded, "/api/services", {"Host": host})
        assert status == 421 and "unknown Host" in json.loads(body)["errors"][0]["msg"]
        status, _, body = get(loaded, "/", {"Host": host})
        assert status == 421 and "--allowed-host" in body


def test_allowed_hosts_are_configurable(tmp_path):
    c = Collector(os.path.join(str(tmp_path), "t.db"), udp_port=None, udp_binary_port=None,
                  http_port=None, otlp_port=None, query_port=0)
    c.query_allowed_hosts = ("traces.example.org",)
    with c:
        assert get(c, "/api/services", {"Host": "traces.example.org:16686"})[0] == 200
        assert get(c, "/api/services", {"Host": "other.example.org"})[0] == 421


def test_token_protects_the_query_port(tmp_path):
    c = Collector(os.path.join(str(tmp_path), "t.db"), udp_port=None, udp_binary_port=None,
                  http_port=None, otlp_port=None, query_port=0)
    c.query_token = "s3cret"
    with c:
        status, _, body = get(c, "/api/services")
        assert status == 401 and "token" in json.loads(body)["errors"][0]["msg"]
        assert get(c, "/", {"Authorization": "Bearer wrong"})[0] == 401
        assert get(c, "/api/services", {"Authorization": "Bearer s3cret"})[0] == 200
        # the link the collector prints: the token moves into a cookie and out of the URL
        status, h, _ = get(c, "/?token=s3cret&service=x")
        assert status == 302 and h["Location"] == "/?service=x"
        cookie = h["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in h["Set-Cookie"] and "SameSite=Strict" in h["Set-Cookie"]
        assert get(c, "/?service=x", {"Cookie": cookie})[0] == 200
        assert get(c, "/?token=nope")[0] == 401


def test_trace_id_lookup_and_prefixes(loaded):
    status, h, _ = get(loaded, "/trace/abcd000000000001")
    assert status == 200
    status, h, _ = get(loaded, "/lookup?id=ABCD000000000002")
    assert status == 302 and h["Location"] == "/trace/abcd000000000002"
    status, h, page = get(loaded, "/trace/abcd")  # ambiguous: the candidates
    assert status == 200 and "2 traces start with abcd" in page
    assert 'data-trace-id="abcd000000000001"' in page and 'data-trace-id="abcd000000000002"' in page
    status, h, _ = get(loaded, "/lookup?id=00000000000051")  # unique prefix
    assert status == 302 and h["Location"] == "/trace/0000000000005151"
    status, h, _ = get(loaded, "/lookup?id=5151")  # a short whole id
    assert status == 302 and h["Location"] == "/trace/0000000000005151"
    status, _, page = get(loaded, "/lookup?id=ffff")
    assert status == 404 and "no stored trace id is or starts with it" in page
    assert get(loaded, "/lookup?id=xyz")[0] == 400
