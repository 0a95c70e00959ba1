"""bu_osprofiler.messaging over oslo.messaging's fake:// driver (real RPC server and client)."""
import threading
import uuid
import warnings

import pytest

om = pytest.importorskip("oslo_messaging")
cfg = pytest.importorskip("oslo_config.cfg")

import bu_osprofiler  # noqa: E402
from bu_osprofiler import messaging, profiler  # noqa: E402

KEY = "rpc-secret"


def make_conf():
    """A private ConfigOpts usable by oslo.messaging (recent releases read their metrics and
    tracing groups from the transport's conf but register them on cfg.CONF only)."""
    conf = cfg.ConfigOpts()
    for module, name, group in (("oslo_messaging._tracing.client", "oslo_messaging_tracing",
                                 "oslo_messaging_tracing"),
                                ("oslo_messaging._metrics.client", "oslo_messaging_metrics",
                                 "oslo_messaging_metrics")):
        try:
            mod = __import__(module, fromlist=[name])
        except ImportError:
            continue
        conf.register_opts(getattr(mod, name), group=group)
    conf([], project="test")
    return conf


class NovaLikeSerializer(om.Serializer):
    """What nova/rpc.py's ProfilerRequestContextSerializer does, unmodified (spec facts)."""

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


class Manager(metaclass=profiler.TracedMeta):
    __trace_args__ = {"name": "rpc"}

    def __init__(self):
        self.cast_done = threading.Event()
        self.seen = []

    def ping(self, ctxt, x):
        self.seen.append(profiler.get())
        return x + 1

    def fire(self, ctxt, x):
        self.seen.append(profiler.get())
        self.cast_done.set()

    def fail(self, ctxt):
        raise ValueError("no such server")

    def leave_stale(self, ctxt):
        profiler.clean()
        profiler.init("stale")  # handler code leaving a trace behind in its context


class Rpc:
    def __init__(self, serializer_cls=None):
        self.conf = make_conf()
        self.transport = om.get_rpc_transport(self.conf, url="fake:///")
        self.serializer_cls = serializer_cls
        self.servers = []

    def serializer(self):
        return self.serializer_cls() if self.serializer_cls else None

    def server(self, topic="compute", server="host1", manager=None):
        manager = manager or Manager()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            srv = om.get_rpc_server(self.transport, om.Target(topic=topic, server=server),
                                    [manager], executor="threading",
                                    serializer=self.serializer())
        srv.start()
        self.servers.append(srv)
        return manager

    def client(self, topic="compute", **kw):
        return om.get_rpc_client(self.transport, om.Target(topic=topic, **kw),
                                 serializer=self.serializer(), timeout=10)

    def stop(self):
        """Wait until every message received so far has been handled (spans finished)."""
        for srv in self.servers:
            executor = getattr(srv, "_work_executor", None)
            work_queue = getattr(executor, "_work_queue", None)
            if work_queue is not None and hasattr(work_queue, "join"):
                work_queue.join()  # futurist: all submitted tasks done
            else:
                srv.stop()
                srv.wait()

    def close(self):
        servers, self.servers = self.servers, []
        for srv in servers:
            srv.stop()
        # wait() also lets idle worker threads time out (about a second): do it aside.
        threading.Thread(target=lambda: [s.wait() for s in servers] and None,
                         daemon=True).start()


@pytest.fixture
def rpc_factory():
    made = []

    def make(serializer_cls=None):
        r = Rpc(serializer_cls)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def installed():
    messaging.install(legacy_trace_info=False)
    yield
    messaging.uninstall()


def spans_named(prefix):
    return [s for s in bu_osprofiler.finished_spans() if s.operation_name.startswith(prefix)]


def one(name, kind=None):
    """The one span named ``name`` (or starting with it, when a kind is given) of that kind."""
    if kind is None:
        found = [s for s in bu_osprofiler.finished_spans() if s.operation_name == name]
    else:
        found = [s for s in spans_named(name) if s.tags.get("span.kind") == kind]
    assert len(found) == 1, [s.operation_name for s in bu_osprofiler.finished_spans()]
    return found[0]


def _in_span(name, fn):
    with bu_osprofiler.start_span(name) as root:
        tok = bu_osprofiler.activate(root)
        try:
            return root, fn()
        finally:
            bu_osprofiler.deactivate(tok)


# ---------------------------------------------------------------- installed hooks

def test_call_client_and_server_spans(rpc_factory, installed):
    rpc = rpc_factory()
    rpc.server()
    root, result = _in_span("request", lambda: rpc.client(server="host1").call({}, "ping", x=1))
    assert result == 2
    rpc.stop()
    client = one("rpc.call:ping", "client")
    server = one("rpc.call:ping", "server")
    handler = one("rpc")
    assert client.parent_id == root.span_id
    assert server.parent_id == client.span_id and server.references == ()
    assert handler.parent_id == server.span_id
    assert {s.trace_id for s in (root, client, server, handler)} == {root.trace_id}
    assert client.tags["rpc.method"] == "ping" and client.tags["rpc.topic"] == "compute"
    assert client.tags["rpc.server"] == "host1" and client.tags["messaging.system"] == "fake"
    assert server.tags["rpc.topic"] == "compute" and server.tags["rpc.server"] == "host1"
    assert client.start_ns <= server.start_ns and server.end_ns <= client.end_ns


def test_cast_producer_and_consumer_follows_from(rpc_factory, installed):
    rpc = rpc_factory()
    manager = rpc.server()
    root, _ = _in_span("request", lambda: rpc.client().cast({}, "fire", x=1))
    assert manager.cast_done.wait(10)
    rpc.stop()
    producer = one("rpc.cast:fire", "producer")
    consumer = one("rpc.cast:fire", "consumer")
    assert producer.parent_id == root.span_id
    assert consumer.trace_id == root.trace_id
    refs = [(k, c.span_id) for k, c in consumer.references]
    assert refs == [("follows_from", producer.span_id)]
    assert consumer.tags["fork"] is True
    assert one("rpc").parent_id == consumer.span_id


def test_fanout_cast_reaches_every_server_from_one_producer(rpc_factory, installed):
    rpc = rpc_factory()
    m1 = rpc.server(server="host1")
    m2 = rpc.server(server="host2")
    _in_span("request", lambda: rpc.client(fanout=True).cast({}, "fire", x=1))
    assert m1.cast_done.wait(10) and m2.cast_done.wait(10)
    rpc.stop()
    producer = one("rpc.cast:fire", "producer")
    assert producer.tags["rpc.fanout"] is True
    consumers = [s for s in spans_named("rpc.cast:fire") if s.tags["span.kind"] == "consumer"]
    assert sorted(c.tags["rpc.server"] for c in consumers) == ["host1", "host2"]
    for c in consumers:
        assert c.references[0][0] == "follows_from"
        assert c.references[0][1].span_id == producer.span_id


def record_bus(monkeypatch, rpc):
    """Record the RPC context dicts handed to the driver (what goes on the bus)."""
    sent = []
    driver = rpc.transport._driver
    original = driver.send

    def send(target, ctxt, message, *a, **kw):
        sent.append(ctxt)
        return original(target, ctxt, message, *a, **kw)

    monkeypatch.setattr(driver, "send", send)
    return sent


def raw_send(rpc, ctxt, method, **args):
    """Send like a peer without our hooks (e.g. a stock osprofiler service) and get the reply."""
    return rpc.transport._driver.send(om.Target(topic="compute"), ctxt,
                                      {"method": method, "args": args},
                                      wait_for_reply=True, timeout=10)


def test_hmac_key_never_on_the_bus_by_default(rpc_factory, installed, monkeypatch):
    rpc = rpc_factory()
    sent = record_bus(monkeypatch, rpc)
    rpc.server()
    profiler.init(KEY)
    rpc.client().call({"user": "u"}, "ping", x=1)
    (ctxt,) = sent
    assert KEY not in repr(ctxt) and "trace_info" not in ctxt
    carrier = ctxt[messaging.KEY]
    assert "uber-trace-id" in carrier and carrier["rpc-kind"] == "call"
    assert ctxt["user"] == "u"


def test_legacy_trace_info_option(rpc_factory, monkeypatch):
    messaging.install(legacy_trace_info=True, hmac_keys="conf-key")
    try:
        rpc = rpc_factory()
        sent = record_bus(monkeypatch, rpc)
        rpc.server()
        prof = profiler.init(KEY)
        rpc.client().call({}, "ping", x=1)
        profiler.clean()
        with bu_osprofiler.start_span("no-key") as s:  # no key of its own: the configured one
            tok = bu_osprofiler.activate(s)
            rpc.client().call({}, "ping", x=2)
            bu_osprofiler.deactivate(tok)
        rpc.stop()
    finally:
        messaging.uninstall()
    first, second = sorted((s for s in spans_named("rpc.call:ping")
                            if s.tags["span.kind"] == "client"), key=lambda s: s.start_ns)
    assert sent[0]["trace_info"] == {
        "hmac_key": KEY, "base_id": prof.get_base_id(),
        "parent_id": profiler.span_uuid(first.trace_id, first.span_id)}
    assert sent[1]["trace_info"]["hmac_key"] == "conf-key"
    assert sent[1]["trace_info"]["parent_id"] == profiler.span_uuid(second.trace_id,
                                                                    second.span_id)


def test_incoming_legacy_trace_info_from_a_stock_osprofiler_peer(rpc_factory, installed):
    rpc = rpc_factory()
    rpc.server()
    base, parent = str(uuid.uuid4()), str(uuid.uuid4())
    # What a stock-osprofiler nova puts on the bus: only trace_info.
    reply = raw_send(rpc, {"trace_info": {"hmac_key": "k", "base_id": base,
                                          "parent_id": parent}}, "ping", x=5)
    assert reply == 6
    rpc.stop()
    server = one("rpc.call:ping", "server")
    assert server.trace_id == uuid.UUID(base).int
    assert server.parent_id == uuid.UUID(parent).int & ((1 << 64) - 1)
    assert one("rpc").parent_id == server.span_id


def test_endpoint_error_marks_server_and_client(rpc_factory, installed):
    rpc = rpc_factory()
    rpc.server()
    profiler.init(KEY)
    with pytest.raises(Exception):
        rpc.client().call({}, "fail")
    rpc.stop()
    assert one("rpc.call:fail", "server").tags["error"] is True
    assert one("rpc.call:fail", "client").tags["error"] is True
    assert bu_osprofiler.active_span() is profiler.get().span  # client stack balanced


def test_each_message_starts_from_a_clean_context(rpc_factory, installed):
    """A handler leaving a trace behind on a worker thread cannot leak it into the next one."""
    rpc = rpc_factory()
    manager = rpc.server()
    bu_osprofiler.configure("t", "memory://", sampler="const", sampler_param=0)
    client = rpc.client()
    for _ in range(3):
        client.call({}, "leave_stale")
    client.call({}, "ping", x=1)  # no trace on the client: the server follows "unsampled"
    rpc.stop()
    last = manager.seen[-1]
    assert last is None  # nothing stale, and an unsampled request has no profiler
    assert bu_osprofiler.finished_spans() == []


def test_unsampled_client_decision_is_followed(rpc_factory, installed):
    rpc = rpc_factory()
    rpc.server()
    bu_osprofiler.configure("t", "memory://", sampler="const", sampler_param=0)
    _in_span("request", lambda: rpc.client().call({}, "ping", x=1))
    rpc.stop()
    assert bu_osprofiler.finished_spans() == []


def test_nova_serializer_with_hooks_gives_one_trace(rpc_factory, installed):
    rpc = rpc_factory(NovaLikeSerializer)
    manager = rpc.server()
    prof = profiler.init(KEY)
    profiler.start("api")
    rpc.client().call({}, "ping", x=1)
    rpc.client().cast({}, "fire", x=1)
    profiler.stop()
    assert manager.cast_done.wait(10)
    rpc.stop()
    trace_id = uuid.UUID(prof.get_base_id()).int
    assert {s.trace_id for s in bu_osprofiler.finished_spans()} == {trace_id}
    api = one("api")
    assert one("rpc.call:ping", "client").parent_id == api.span_id
    handlers = spans_named("rpc")
    call_server = one("rpc.call:ping", "server")
    consumer = one("rpc.cast:fire", "consumer")
    assert sorted(h.parent_id for h in handlers if h.operation_name == "rpc") == \
        sorted([call_server.span_id, consumer.span_id])


def test_nova_serializer_without_hooks_still_connects(rpc_factory):
    """Unmodified Nova code on this package, no install(): one connected trace."""
    rpc = rpc_factory(NovaLikeSerializer)
    manager = rpc.server()
    prof = profiler.init(KEY)
    profiler.start("api")
    rpc.client().call({}, "ping", x=1)
    profiler.stop()
    rpc.stop()
    api = one("api")
    handler = one("rpc")
    assert handler.trace_id == uuid.UUID(prof.get_base_id()).int
    assert handler.parent_id == api.span_id
    assert manager.seen[0].hmac_key == KEY


def test_profiler_serializer_without_hooks(rpc_factory):
    rpc = rpc_factory(lambda: messaging.ProfilerSerializer(om.NoOpSerializer()))
    manager = rpc.server()
    root, _ = _in_span("request", lambda: rpc.client().call({}, "ping", x=1))
    rpc.client().call({}, "ping", x=2)  # no trace: the handler must not inherit the first one
    rpc.stop()
    (first, *rest) = [s for s in bu_osprofiler.finished_spans() if s.operation_name == "rpc"]
    assert first.trace_id == root.trace_id and first.parent_id == root.span_id
    assert rest == [] and manager.seen[1] is None


def test_profiler_serializer_carrier_is_text_map_and_restores_baggage(rpc_factory, installed):
    rpc = rpc_factory(lambda: messaging.ProfilerSerializer())
    manager = rpc.server()

    def call():
        bu_osprofiler.active_span().set_baggage_item("request-id", "req-1")
        return rpc.client().call({}, "ping", x=1)

    _in_span("request", call)
    rpc.stop()
    assert manager.seen[0].span.get_baggage_item("request-id") == "req-1"


def test_invalid_carrier_is_ignored(rpc_factory, installed, caplog):
    rpc = rpc_factory()
    rpc.server()
    for bad in ({"uber-trace-id": "nonsense"}, "a string", {"x": 1}):
        assert raw_send(rpc, {messaging.KEY: bad}, "ping", x=1) == 2
    rpc.stop()
    assert spans_named("rpc.call:ping") == []  # no usable context: untraced (the default)


def test_message_without_context_starts_no_trace_unless_configured(rpc_factory, installed):
    rpc = rpc_factory()
    rpc.server()
    rpc.client().call({}, "ping", x=1)  # periodic tasks, heartbeats: no trace by default
    rpc.client().call({}, "ping", x=2)
    rpc.stop()
    assert bu_osprofiler.finished_spans() == []
    messaging.install(start_traces=True)
    rpc = rpc_factory()
    rpc.server()
    rpc.client().call({}, "ping", x=1)
    rpc.stop()
    client = one("rpc.call:ping", "client")
    assert client.parent_id == 0  # the caller started a trace, as configured
    assert one("rpc.call:ping", "server").parent_id == client.span_id
    messaging.install(start_traces=False)


def test_uninstall_restores_oslo_messaging(rpc_factory):
    from oslo_messaging import transport as om_transport
    from oslo_messaging.rpc import server as om_server

    before = (om_transport.Transport._send, om_server.RPCServer._process_incoming)
    messaging.install()
    messaging.install()  # idempotent
    assert messaging.installed()
    messaging.uninstall()
    assert (om_transport.Transport._send, om_server.RPCServer._process_incoming) == before
    rpc = rpc_factory()
    rpc.server()
    _in_span("request", lambda: rpc.client().call({}, "ping", x=1))
    rpc.stop()
    assert spans_named("rpc.call") == []


def _rabbit_down():
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError as exc:
        return "no RabbitMQ at 127.0.0.1:5672 (%s)" % exc
    return None


def test_rabbit_service_threads_are_never_branches(monkeypatch):
    """oslo.messaging over RabbitMQ starts its reply waiter and heartbeat threads lazily,
    inside the first traced call: with fork/join on they must not become branches of that
    request (a branch that never ends is never exported and leaves dangling parents)."""
    reason = _rabbit_down()
    if reason:
        pytest.skip(reason)
    from oslo_messaging import opts as om_opts

    from bu_osprofiler import concurrency

    conf = make_conf()
    for group, options in om_opts.list_opts():
        conf.register_opts(options, group=group)
    # our own exchange, unique per run (never the "openstack" exchange of a real cloud)
    conf.set_override("control_exchange", "bu-test-%s" % uuid.uuid4().hex[:12])
    conf.set_override("amqp_auto_delete", True, group="oslo_messaging_rabbit")
    conf.set_override("heartbeat_timeout_threshold", 2, group="oslo_messaging_rabbit")
    transport = om.get_rpc_transport(conf, url="rabbit://guest:guest@127.0.0.1:5672/")
    target = om.Target(topic="bu-test", server="host1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = om.get_rpc_server(transport, target, [Manager()], executor="threading")
    concurrency.install()
    messaging.install()
    server.start()
    try:
        profiler.init(KEY)
        with profiler.Trace("request"):
            client = om.get_rpc_client(transport, target, timeout=30)
            assert client.call({}, "ping", x=1) == 2
            assert client.call({}, "ping", x=2) == 3
        trace_id = profiler.get().span.trace_id
        profiler.clean()
    finally:
        server.stop()
        server.wait()
        concurrency.uninstall()
        messaging.uninstall()
        transport.cleanup()
    spans = bu_osprofiler.finished_spans()
    assert {s.trace_id for s in spans} == {trace_id}
    forks = [s.operation_name for s in spans if s.tags.get("fork")]
    assert forks == [], forks  # no reply waiter / heartbeat / executor worker branch
    ids = {s.span_id for s in spans}
    root = [s for s in spans if s.operation_name == "request"][0]
    assert all(s.parent_id in ids for s in spans if s is not root and s.parent_id != 0)
    assert len([s for s in spans if s.operation_name == "rpc"]) == 2


def _capture_sent(monkeypatch):
    """The RPC context dicts as the driver gets them (what goes on the bus)."""
    from oslo_messaging import transport as om_transport

    sent = []
    real = om_transport.Transport._send

    def spy(self, target, ctxt, message, *args, **kwargs):
        sent.append(ctxt)
        return real(self, target, ctxt, message, *args, **kwargs)

    # beneath our hook when it is installed (install() wraps what it finds)
    monkeypatch.setattr(om_transport.Transport, "_send", spy)
    return sent


def test_no_hmac_key_on_the_bus_with_nova_serializer(rpc_factory, monkeypatch):
    """Nova's serializer puts trace_info with the HMAC key into every traced message; with the
    hooks (trace_rpc on or off) it never reaches the bus unless rpc_legacy_trace_info."""
    sent = _capture_sent(monkeypatch)
    for spans in (True, False):
        messaging.install(spans=spans)
        try:
            rpc = rpc_factory(NovaLikeSerializer)
            topic = "nokey-%s" % spans
            manager = rpc.server(topic=topic)
            profiler.init(KEY)
            with profiler.Trace("api"):
                rpc.client(topic=topic).call({}, "ping", x=1)
            rpc.stop()
            profiler.clean()
        finally:
            messaging.uninstall()
        assert manager.seen[-1] is not None  # the handler still ran inside the trace
    assert len(sent) == 2
    assert all(KEY not in repr(c) for c in sent), sent


def test_unsampled_request_is_not_recorded_downstream_without_hooks(rpc_factory):
    """trace_rpc = False and no hooks at all: Nova's serializer alone must not turn a request
    the sampler dropped into a trace on the receiver."""
    rpc = rpc_factory(NovaLikeSerializer)
    manager = rpc.server()
    bu_osprofiler.configure("t", "memory://", sampler="const", sampler_param=0)
    _in_span("request", lambda: rpc.client().call({}, "ping", x=1))
    rpc.stop()
    assert manager.seen == [None]
    assert bu_osprofiler.finished_spans() == []
