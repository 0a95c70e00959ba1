"""The "conductor": an oslo.messaging RPC server whose TracedMeta manager queries a database.

Configured like a Nova service (oslo.config [profiler], init_from_conf, add_tracing on its
engine when trace_sqlalchemy). Prints READY, serves until stdin closes, then waits for the
messages in progress, writes its spans (memory://) as JSON and exits.
"""
import argparse
import sys

import oslo_messaging as om
import sqlalchemy as sa
from oslo_config import cfg
from oslo_messaging import opts as om_opts
from osprofiler import initializer, opts
from osprofiler import sqlalchemy as osp_sqlalchemy

import compute


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--transport", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--suffix", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    conf = cfg.CONF
    for group, options in om_opts.list_opts():
        conf.register_opts(options, group=group)
    compute.profiler_conf(conf, service_db=True)
    conf([], project="nova")
    compute.transport_conf(conf)
    initializer.init_from_conf(conf=conf, context={}, project="nova", service="conductor",
                               host="e2e-host")

    engine = sa.create_engine(args.db)
    if opts.is_db_trace_enabled(conf):
        osp_sqlalchemy.add_tracing(sa, engine, "db")
    manager = compute.ComputeManager(engine, args.suffix)
    manager._setup("srv-1", "vm-one")

    transport = om.get_rpc_transport(conf, url=args.transport)
    server = om.get_rpc_server(transport, om.Target(topic=args.topic, server="conductor-1"),
                               [manager], executor="threading",
                               serializer=compute.ProfilerRequestContextSerializer())
    server.start()
    print("READY", flush=True)
    sys.stdin.read()
    server.stop()
    server.wait()
    compute.dump_spans(args.out)
    transport.cleanup()


if __name__ == "__main__":
    main()
