"""Mixed deployments: stock osprofiler (PyPI, in its own virtualenv) and this project, one trace.

The stock package runs in a subprocess of a separate virtualenv (its import name would clash with
``install_as_osprofiler``). The virtualenv is created on first use under the temp directory, or
taken from $BU_STOCK_OSPROFILER_VENV.
"""
import json
import os
import subprocess
import sys
import tempfile
import uuid

import pytest

import bu_osprofiler
from bu_osprofiler import propagation

KEY = "SECRET_KEY"
MASK64 = (1 << 64) - 1


def _venv_python(path):
    return os.path.join(path, "bin", "python")


@pytest.fixture(scope="session")
def stock():
    """A callable running Python code under stock osprofiler; returns its stdout parsed as JSON."""
    path = os.environ.get("BU_STOCK_OSPROFILER_VENV") or os.path.join(
        tempfile.gettempdir(), "bu-osprofiler-stock-venv")
    py = _venv_python(path)
    probe = [py, "-c", "import osprofiler.web, webob"]
    if not (os.path.exists(py) and subprocess.run(probe, capture_output=True).returncode == 0):
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", path], check=True,
                           capture_output=True, timeout=300)
            subprocess.run([py, "-m", "pip", "install", "-q", "osprofiler", "webob"],
                           check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip("cannot install stock osprofiler from PyPI: %s" % exc)

    def run(code, stdin=None):
        res = subprocess.run([py, "-c", code], input=json.dumps(stdin) if stdin else None,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    return run


GET_HEADERS = """
import json
from osprofiler import profiler, web
profiler.init(%r)
p = profiler.get()
out = {"root": web.get_trace_id_headers(), "base_id": p.get_base_id()}
profiler.start("inner")
out["inner"] = web.get_trace_id_headers()
out["inner_id"] = profiler.get().get_id()
profiler.stop()
print(json.dumps(out))
""" % KEY


def test_stock_headers_continue_the_same_trace(stock, spans):
    got = stock(GET_HEADERS)
    base = uuid.UUID(got["base_id"]).int
    # A fresh profiler.init(): its headers name the base only; our spans are roots of that trace.
    root_ctx = propagation.extract(got["root"], hmac_keys=KEY)
    assert root_ctx is not None
    with bu_osprofiler.start_span("wsgi", child_of=root_ctx):
        pass
    # Inside a trace point: our span is a child of that point's id (low 64 bits).
    inner_ctx = propagation.extract(got["inner"], hmac_keys=KEY)
    with bu_osprofiler.start_span("wsgi-inner", child_of=inner_ctx):
        pass
    recs = {s.operation_name: s for s in spans()}
    assert recs["wsgi"].trace_id == base and recs["wsgi"].parent_id == 0
    assert recs["wsgi-inner"].trace_id == base
    assert recs["wsgi-inner"].parent_id == uuid.UUID(got["inner_id"]).int & MASK64
    # wrong key: untraced
    assert propagation.extract(got["inner"], hmac_keys="other") is None


MIDDLEWARE = """
import json, sys
import webob
from osprofiler import profiler, web

seen = {}

def app(environ, start_response):
    p = profiler.get()
    if p is not None:
        seen.update(base_id=p.get_base_id(), parent_id=p.get_parent_id())
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

mw = web.WsgiMiddleware(app, hmac_keys=%r, enabled=True)
headers = json.load(sys.stdin)
req = webob.Request.blank("/servers", headers=headers)
resp = req.get_response(mw)
print(json.dumps({"status": resp.status_int, "seen": seen}))
""" % KEY


def test_our_legacy_headers_accepted_by_stock_middleware(stock):
    with bu_osprofiler.start_span("client") as span:
        headers = propagation.inject(span, {}, hmac_key=KEY)
    got = stock(MIDDLEWARE, stdin=headers)
    assert got["status"] == 200
    seen = got["seen"]
    assert seen, "stock WsgiMiddleware did not accept our X-Trace-Info / X-Trace-HMAC"
    assert uuid.UUID(seen["base_id"]).int == span.trace_id
    # the middleware's "wsgi" trace point is a child of our span
    assert uuid.UUID(seen["parent_id"]).int & MASK64 == span.span_id


def test_stock_middleware_rejects_a_wrong_key(stock):
    with bu_osprofiler.start_span("client") as span:
        headers = propagation.inject(span, {}, formats=["osprofiler"], hmac_key="not-the-key")
    got = stock(MIDDLEWARE, stdin=headers)
    assert got == {"status": 200, "seen": {}}
