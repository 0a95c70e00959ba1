"""Shared parts of the end-to-end "Nova": written against osprofiler's API only.

Run under ``bu-osprofiler-run``, ``import osprofiler`` resolves to bu_osprofiler: nothing here
knows about this project. The serializer is what nova/rpc.py's ProfilerRequestContextSerializer
does; the manager is traced the way nova/manager.py traces its managers (TracedMeta).
"""
import json
import os

import oslo_messaging as om
import sqlalchemy as sa
from osprofiler import profiler

KEY = "e2e-hmac-key"


class ProfilerRequestContextSerializer(om.Serializer):
    """Nova's serializer: trace_info into the RPC context, profiler.init() on the server."""

    def __init__(self, base=None):
        self._base = base or om.NoOpSerializer()

    def serialize_entity(self, ctxt, entity):
        return self._base.serialize_entity(ctxt, entity)

    def deserialize_entity(self, ctxt, entity):
        return self._base.deserialize_entity(ctxt, entity)

    def serialize_context(self, context):
        _context = dict(self._base.serialize_context(context))
        prof = profiler.get()
        if prof:
            _context.update({"trace_info": {"hmac_key": prof.hmac_key,
                                            "base_id": prof.get_base_id(),
                                            "parent_id": prof.get_id()}})
        return _context

    def deserialize_context(self, context):
        trace_info = context.pop("trace_info", None)
        if trace_info:
            profiler.init(**trace_info)
        return self._base.deserialize_context(context)


class ComputeManager(metaclass=profiler.TracedMeta):
    __trace_args__ = {"name": "rpc"}

    def __init__(self, engine, suffix):
        self.engine = engine
        meta = sa.MetaData()
        self.servers = sa.Table("e2e_servers_" + suffix, meta,
                                sa.Column("id", sa.String(40), primary_key=True),
                                sa.Column("name", sa.String(80)))
        self.access = sa.Table("e2e_access_" + suffix, meta,
                               sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
                               sa.Column("server_id", sa.String(40)))
        self.meta = meta

    def _setup(self, server_id, name):
        self.meta.create_all(self.engine)
        with self.engine.begin() as c:
            c.execute(self.servers.insert(), {"id": server_id, "name": name})

    def get_server(self, ctxt, server_id):
        with self.engine.connect() as c:
            row = c.execute(sa.select(self.servers.c.name)
                            .where(self.servers.c.id == server_id)).first()
        return {"id": server_id, "name": row[0] if row else None}

    def record_access(self, ctxt, server_id):
        with self.engine.begin() as c:
            c.execute(self.access.insert(), {"server_id": server_id})


def transport_conf(conf):
    """Options shared by both processes: our own exchange, unique per run (the broker may be
    shared with a real cloud: never redeclare its "openstack" exchange), and queues that
    vanish when the test is over."""
    conf.set_override("control_exchange", os.environ.get("E2E_EXCHANGE") or
                      "bu-e2e-%d" % os.getppid())
    conf.set_override("amqp_auto_delete", True, group="oslo_messaging_rabbit")


def profiler_conf(conf, service_db=False):
    from osprofiler import opts

    opts.set_defaults(conf, enabled=True, hmac_keys=KEY, connection_string="memory://",
                      trace_sqlalchemy=service_db)


def dump_spans(path):
    """Write this process's finished spans (memory://) as JSON."""
    import bu_osprofiler

    out = []
    for s in bu_osprofiler.finished_spans():
        out.append({
            "trace_id": s.trace_id, "span_id": s.span_id, "parent_id": s.parent_id,
            "name": s.operation_name, "service": s.service_name,
            "start_ns": s.start_ns, "end_ns": s.end_ns,
            "tags": {k: (v if isinstance(v, (str, int, float, bool)) else str(v))
                     for k, v in s.tags.items()},
            "references": [[kind, c.trace_id, c.span_id] for kind, c in s.references],
            "pid": os.getpid(),
        })
    with open(path, "w") as f:
        json.dump(out, f)
