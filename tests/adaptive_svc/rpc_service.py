"""Test services for the adaptive instrumentation end-to-end test over RabbitMQ.

``python rpc_service.py ROLE NAME UDP_PORT CONTROL_URL TRANSPORT_URL EXCHANGE TOPIC``

* ``api``: a WSGI server on a free port (printed as ``PORT n``) behind the tracing middleware.
  Each request runs ``step`` (a trace point both services have) and ``NAME.work``, then makes an
  RPC call ``handle`` to the worker (the request type travels in the RPC context's baggage);
  the response body is the trace id (hex).
* ``worker``: an oslo.messaging RPC server (prints ``READY``) whose ``handle`` runs ``step`` and
  ``NAME.work`` and raises when the request's query asks it to (``fail``).

Both report spans to the collector over UDP, poll its control endpoint, and use the RPC
exchange EXCHANGE (unique per test run: the broker may be shared with a real cloud).
"""
import sys
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import oslo_messaging as om
from oslo_config import cfg
from oslo_messaging import opts as om_opts

import bu_osprofiler
from bu_osprofiler import _core, messaging, profiler, web

ROLE, NAME, UDP, CONTROL, URL, EXCHANGE, TOPIC = sys.argv[1:8]
bu_osprofiler.configure(NAME, "jaeger://127.0.0.1:%s" % UDP, flush_interval=0.05,
                        control=CONTROL, control_interval=0.2)
messaging.install()


@profiler.trace("step")
def step():
    time.sleep(0.001)


@profiler.trace(NAME + ".work")
def work(slow):
    with profiler.Trace(NAME + ".inner"):
        time.sleep(0.05 if slow else 0.001)


def transport():
    conf = cfg.ConfigOpts()
    for group, options in om_opts.list_opts():
        conf.register_opts(options, group=group)
    # recent oslo.messaging releases read these groups from the transport's conf but register
    # them on cfg.CONF only
    for module, name in (("oslo_messaging._tracing.client", "oslo_messaging_tracing"),
                         ("oslo_messaging._metrics.client", "oslo_messaging_metrics")):
        try:
            conf.register_opts(getattr(__import__(module, fromlist=[name]), name), group=name)
        except (ImportError, AttributeError, cfg.DuplicateOptError):
            pass
    conf([], project="bu-adaptive-e2e")
    conf.set_override("control_exchange", EXCHANGE)  # never the "openstack" exchange
    conf.set_override("amqp_auto_delete", True, group="oslo_messaging_rabbit")
    return om.get_rpc_transport(conf, url=URL)


class Worker:
    target = om.Target(version="1.0")

    def handle(self, ctxt, query):
        step()
        work("slow" in query)
        if "fail" in query:
            raise RuntimeError("injected failure")
        return "ok"


class Quiet(WSGIRequestHandler):
    def log_message(self, *a):
        pass


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def api():
    client = om.get_rpc_client(transport(), om.Target(topic=TOPIC, server="worker-1"),
                               timeout=20)

    def app(environ, start_response):
        query = environ.get("QUERY_STRING", "")
        step()
        work("slow" in query)
        client.call({}, "handle", query=query)  # raises (500) when the worker failed
        start_response("200 OK", [("Content-Type", "text/plain")])
        span = _core.active_span()  # the trace id, sampled or not (the test looks it up)
        return [b"%032x" % (span.trace_id if span is not None else 0)]

    srv = make_server("127.0.0.1", 0,
                      web.WsgiMiddleware(app, enabled=True, trust_incoming="always"),
                      server_class=Server, handler_class=Quiet)
    print("PORT", srv.server_address[1], flush=True)
    srv.serve_forever()


def worker():
    server = om.get_rpc_server(transport(), om.Target(topic=TOPIC, server="worker-1"),
                               [Worker()], executor="threading")
    server.start()
    print("READY", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.stop()
    server.wait()


if __name__ == "__main__":
    api() if ROLE == "api" else worker()
