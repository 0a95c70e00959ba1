"""A test service for the adaptive instrumentation end-to-end test.

``python service.py NAME UDP_PORT CONTROL_URL [DOWNSTREAM_URL]``: a WSGI server on a free port
(printed on stdout as ``PORT n``) behind the tracing middleware. Each request runs ``step`` (a
trace point both services have) and ``NAME.work``; with a downstream URL it then calls it with
the trace headers (the request type travels in baggage).
"""
import sys
import time
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from socketserver import ThreadingMixIn

import bu_osprofiler
from bu_osprofiler import profiler, web

NAME, UDP, CONTROL = sys.argv[1], int(sys.argv[2]), sys.argv[3]
DOWN = sys.argv[4] if len(sys.argv) > 4 else None
bu_osprofiler.configure(NAME, "jaeger://127.0.0.1:%d" % UDP, flush_interval=0.05,
                        control=CONTROL, control_interval=0.2)


@profiler.trace("step")
def step():
    time.sleep(0.001)


@profiler.trace(NAME + ".work")
def work(slow):
    with profiler.Trace(NAME + ".inner"):
        time.sleep(0.2 if slow else 0.001)  # well above the noise of a loaded machine


def app(environ, start_response):
    step()
    work("slow" in environ.get("QUERY_STRING", ""))
    if DOWN:
        req = urllib.request.Request(DOWN + environ.get("PATH_INFO", "/"),
                                     headers=web.get_trace_id_headers())
        urllib.request.urlopen(req, timeout=5).read()
    if "fail" in environ.get("QUERY_STRING", ""):
        raise RuntimeError("injected failure")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class Quiet(WSGIRequestHandler):
    def log_message(self, *a):
        pass


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


srv = make_server("127.0.0.1", 0, web.WsgiMiddleware(app, enabled=True, trust_incoming="always"),
                  server_class=Server,
                  handler_class=Quiet)
print("PORT", srv.server_address[1], flush=True)
srv.serve_forever()
