"""Local sink for exporters under benchmark (standard library only; 127.0.0.1 only).

Discards UDP datagrams (Jaeger agent protocol) and answers HTTP POST/PUT (OTLP/HTTP, Jaeger
collector, Datadog agent) with success.  Prints ``{"udp": PORT, "http": PORT}`` on its first
line and exits when its standard input closes (so it never outlives the benchmark run) or after
``--max-seconds``.
"""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real collectors

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self.server.stats["http_requests"] += 1
        self.server.stats["http_bytes"] += n
        if self.path.startswith("/api/traces"):
            code, body, ctype = 202, b"", "text/plain"
        elif self.path.startswith("/v1/"):
            code, body, ctype = 200, b"", "application/x-protobuf"
        else:
            code, body, ctype = 200, b"{}", "application/json"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = _answer

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    max_s = float(sys.argv[sys.argv.index("--max-seconds") + 1]) if "--max-seconds" in sys.argv \
        else 3600.0
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    http.daemon_threads = True
    http.stats = {"http_requests": 0, "http_bytes": 0}
    stats = {"udp_datagrams": 0, "udp_bytes": 0}

    def drain() -> None:
        while True:
            try:
                data = udp.recv(1 << 16)
            except OSError:
                return
            stats["udp_datagrams"] += 1
            stats["udp_bytes"] += len(data)

    threading.Thread(target=drain, daemon=True).start()
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(json.dumps({"udp": udp.getsockname()[1], "http": http.server_address[1]}), flush=True)

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the parent went away or closed the pipe

    w = threading.Thread(target=watch_stdin, daemon=True)
    w.start()
    w.join(max_s)
    stats.update(http.stats)
    print(json.dumps(stats), flush=True)
    time.sleep(0)


if __name__ == "__main__":
    main()
