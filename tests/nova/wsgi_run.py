"""Serve a WSGI application (module:attr) on 127.0.0.1:PORT with a threading server.

Nova's WSGI application parses sys.argv with oslo.config, so it cannot run under a server
whose own command-line arguments it would see (gunicorn's): this runner leaves argv empty."""
import importlib
import socketserver
import sys
import wsgiref.simple_server


class Server(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True


class Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *a):
        pass


def main():
    port, target, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.argv = [name]
    module, attr = target.split(":")
    app = getattr(importlib.import_module(module), attr)
    server = wsgiref.simple_server.make_server("127.0.0.1", port, app, server_class=Server,
                                               handler_class=Quiet)
    print("serving", flush=True)
    server.serve_forever()


main()
