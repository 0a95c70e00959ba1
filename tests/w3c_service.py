"""A test service for the W3C Trace Context harness, built only from bu_osprofiler's public API.

    python tests/w3c_service.py wsgi|plain

Prints the port it listens on (127.0.0.1), then serves until killed. The harness POSTs a JSON
list of ``{"url": ..., "arguments": [...]}``; the service POSTs ``arguments`` to each ``url``
while propagating the request's context.

* ``wsgi``: the deployment an operator would make: ``WsgiMiddleware`` (``trust_incoming =
  always``) around a plain WSGI app under ``wsgiref``, outgoing calls with ``requests`` and
  ``bu_osprofiler.requests.enable()`` (which adds ``web.get_trace_id_headers()``).
* ``plain``: ``http.server`` with ``propagation.extract`` on its ``HTTPMessage`` headers (repeated
  fields included) and ``propagation.inject`` into ``http.client`` requests.
"""
from __future__ import annotations

import http.client
import json
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bu_osprofiler
from bu_osprofiler import propagation, web


def _calls(body: bytes) -> list:
    data = json.loads(body or b"[]")
    return data if isinstance(data, list) else []


def wsgi_app(environ, start_response):
    import requests

    size = int(environ.get("CONTENT_LENGTH") or 0)
    for call in _calls(environ["wsgi.input"].read(size)):
        requests.post(call["url"], json=call.get("arguments", []), timeout=10)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b"{}"]


class _QuietWSGIHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class PlainHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        ctx = propagation.extract(self.headers)  # an HTTPMessage: repeated fields kept
        size = int(self.headers.get("Content-Length") or 0)
        with bu_osprofiler.start_span("handle", child_of=ctx, ignore_active_span=True) as span:
            for call in _calls(self.rfile.read(size)):
                url = urlsplit(call["url"])
                body = json.dumps(call.get("arguments", [])).encode()
                # One client span per outgoing call, whose context the call carries.
                with bu_osprofiler.start_span("POST", child_of=span) as client:
                    headers = propagation.inject(client, {"Content-Type": "application/json"})
                    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
                    try:
                        conn.request("POST", url.path, body, headers)
                        conn.getresponse().read()
                    finally:
                        conn.close()
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


class _ThreadingHTTPServer(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True


def main() -> None:
    mode = sys.argv[1]
    bu_osprofiler.configure("w3c-conformance", "memory://")
    if mode == "wsgi":
        from bu_osprofiler import requests as bu_requests

        bu_requests.enable()
        app = web.WsgiMiddleware(wsgi_app, enabled=True, trust_incoming="always")
        server = make_server("127.0.0.1", 0, app, server_class=_ThreadingWSGIServer,
                             handler_class=_QuietWSGIHandler)
    else:
        server = _ThreadingHTTPServer(("127.0.0.1", 0), PlainHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
