"""The "nova-api": a webob WSGI app behind osprofiler's WsgiMiddleware on 127.0.0.1.

GET /v2.1/servers/<id> does an RPC call (get_server) and an RPC cast (record_access) through
oslo.messaging with Nova's serializer. Prints "PORT <n>", serves until stdin closes, then writes
its spans (memory://) as JSON. With --in-process-rpc-server (for fake://, which cannot cross
processes) it also hosts the conductor's RPC server.
"""
import argparse
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from socketserver import ThreadingMixIn

import oslo_messaging as om
import webob
import webob.dec
import webob.exc
from oslo_config import cfg
from oslo_messaging import opts as om_opts
from osprofiler import initializer, profiler, web

import compute


class _Quiet(WSGIRequestHandler):
    def log_message(self, *a):
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@profiler.trace_cls("compute_api")
class ComputeAPI:
    def __init__(self, client):
        self.client = client

    def get(self, server_id):
        server = self.client.call({"user_id": "u1"}, "get_server", server_id=server_id)
        self.client.cast({"user_id": "u1"}, "record_access", server_id=server_id)
        return server


def make_app(api):
    @webob.dec.wsgify
    def app(req):
        parts = req.path_info.strip("/").split("/")
        if len(parts) == 3 and parts[1] == "servers":
            return webob.Response(json_body={"server": api.get(parts[2])})
        return webob.exc.HTTPNotFound()

    # As api-paste.ini would build it: strings, like an ini file gives them.
    return web.WsgiMiddleware.factory({}, hmac_keys=compute.KEY, enabled="True")(app)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--transport", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--in-process-rpc-server", action="store_true")
    p.add_argument("--db")
    p.add_argument("--suffix")
    args = p.parse_args()

    conf = cfg.CONF
    for group, options in om_opts.list_opts():
        conf.register_opts(options, group=group)
    compute.profiler_conf(conf, service_db=args.in_process_rpc_server)
    conf([], project="nova")
    compute.transport_conf(conf)
    initializer.init_from_conf(conf=conf, context={}, project="nova", service="api",
                               host="e2e-host")

    transport = om.get_rpc_transport(conf, url=args.transport)
    rpc_server = None
    if args.in_process_rpc_server:
        import sqlalchemy as sa
        from osprofiler import sqlalchemy as osp_sqlalchemy

        engine = sa.create_engine(args.db)
        osp_sqlalchemy.add_tracing(sa, engine, "db")
        manager = compute.ComputeManager(engine, args.suffix)
        manager._setup("srv-1", "vm-one")
        rpc_server = om.get_rpc_server(
            transport, om.Target(topic=args.topic, server="conductor-1"), [manager],
            executor="threading", serializer=compute.ProfilerRequestContextSerializer())
        rpc_server.start()
    client = om.get_rpc_client(transport, om.Target(topic=args.topic), timeout=30,
                               serializer=compute.ProfilerRequestContextSerializer())
    httpd = make_server("127.0.0.1", 0, make_app(ComputeAPI(client)), server_class=_Server,
                        handler_class=_Quiet)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    print("PORT %d" % httpd.server_port, flush=True)
    sys.stdin.read()
    httpd.shutdown()
    if rpc_server is not None:
        rpc_server.stop()
        rpc_server.wait()
    compute.dump_spans(args.out)
    transport.cleanup()


if __name__ == "__main__":
    main()
