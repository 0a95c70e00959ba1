"""``bu-osprofiler demo``: one small cloud request traced across processes, on this machine.

The request: a client (``novaclient``-like, this process) POSTs to an API process whose WSGI app
sits behind :class:`bu_osprofiler.web.WsgiMiddleware`; the API makes an RPC ``call`` (build) and a
``cast`` (notify) over oslo.messaging to a conductor whose manager (``TracedMeta``) schedules with a
DB query, forks three concurrent steps into a thread pool, joins them, and writes the result. Every
process exports Jaeger Thrift over UDP to an embedded collector started here; at the end the trace
is printed as a tree with its critical path and written as an HTML waterfall.

With the default ``fake://`` transport the conductor runs inside the API process (the fake driver
cannot cross processes); with ``--transport-url rabbit://...`` it is a third process.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from typing import Any, Optional, Sequence

from bu_osprofiler import profiler

KEY = "demo-hmac-key"
TOPIC = "bu-osprofiler-demo"
STEPS = (("allocate_network", 0.030), ("attach_volume", 0.010), ("fetch_image", 0.020))


# ================================================================ shared by the service roles

def _setup_service(service: str, agent: str) -> None:
    import bu_osprofiler
    from bu_osprofiler import concurrency, messaging, web

    bu_osprofiler.configure(service, agent, sampler="const", sampler_param=1)
    concurrency.install()  # thread pools become recorded forks and joins
    messaging.install(hmac_keys=KEY)
    web.enable(KEY)


def _transport(url: str) -> Any:
    import oslo_messaging as om
    from oslo_config import cfg
    from oslo_messaging import opts as om_opts

    # oslo.messaging reads some of its option groups from the global CONF only.
    conf = cfg.CONF
    if not getattr(_transport, "configured", False):
        for group, options in om_opts.list_opts():
            conf.register_opts(options, group=group)
        conf([], project="bu-osprofiler-demo")
        # Our own exchange, unique per run, on a broker a real cloud may share: never the
        # "openstack" exchange of other applications (redeclaring it with other settings fails
        # with PRECONDITION_FAILED). Being ours, it and its queues go when the demo ends.
        conf.set_override("control_exchange", os.environ.get(_EXCHANGE_ENV) or
                          "bu-osprofiler-demo-%d" % os.getpid())
        conf.set_override("amqp_auto_delete", True, group="oslo_messaging_rabbit")
        _transport.configured = True  # type: ignore[attr-defined]
    return om.get_rpc_transport(conf, url=url)


def _engine(path: str) -> Any:
    import sqlalchemy as sa

    from bu_osprofiler import sqlalchemy as traced_sa

    engine = sa.create_engine("sqlite:///" + path)
    traced_sa.add_tracing(sa, engine, "db")
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE IF NOT EXISTS hosts (name TEXT PRIMARY KEY, free INT)"))
        c.execute(sa.text("CREATE TABLE IF NOT EXISTS instances (name TEXT, host TEXT)"))
        c.execute(sa.text("CREATE TABLE IF NOT EXISTS events (name TEXT, kind TEXT)"))
        c.execute(sa.text("INSERT OR IGNORE INTO hosts VALUES ('compute-1', 8), "
                          "('compute-2', 2)"))
    return engine


class ConductorManager(metaclass=profiler.TracedMeta):
    """The conductor's RPC endpoint, traced the way Nova traces its managers."""

    __trace_args__ = {"name": "rpc", "hide_args": False}

    def __init__(self, engine: Any) -> None:
        import concurrent.futures

        self.engine = engine
        self.pool = concurrent.futures.ThreadPoolExecutor(4, "demo-step")

    def build_instance(self, ctxt: Any, name: str) -> dict:
        import concurrent.futures

        import sqlalchemy as sa

        with profiler.Trace("schedule", info={"instance": name}):
            with self.engine.connect() as c:
                host = c.execute(sa.text(
                    "SELECT name FROM hosts ORDER BY free DESC LIMIT 1")).scalar()
        # Three concurrent steps (forks), then one wait for all of them (the join).
        futures = [self.pool.submit(self._step, step, delay) for step, delay in STEPS]
        concurrent.futures.wait(futures)
        with self.engine.begin() as c:
            c.execute(sa.text("INSERT INTO instances VALUES (:n, :h)"), {"n": name, "h": host})
        return {"name": name, "host": host, "steps": [f.result() for f in futures]}

    def _step(self, step: str, delay: float) -> str:
        import sqlalchemy as sa

        with profiler.Trace(step):
            time.sleep(delay)
            with self.engine.connect() as c:
                c.execute(sa.text("SELECT count(*) FROM instances")).scalar()
        return step

    def notify_created(self, ctxt: Any, name: str) -> None:
        import sqlalchemy as sa

        with self.engine.begin() as c:
            c.execute(sa.text("INSERT INTO events VALUES (:n, 'created')"), {"n": name})


def _rpc_server(url: str, db: str, in_process: bool = False) -> Any:
    import oslo_messaging as om

    server = om.get_rpc_server(_transport(url), om.Target(topic=TOPIC, server="conductor-1"),
                               [ConductorManager(_engine(db))], executor="threading")
    if in_process:
        _report_as(server, "nova-conductor")
    server.start()
    return server


def _report_as(server: Any, service: str) -> None:
    """Make the spans of each message this RPC server handles (and of the threads it starts)
    report as ``service``: the fake transport puts the conductor inside the API process, and it
    should still look like its own service. Spans take their process when they start, and the
    API thread waits while the conductor works, so switching the process around each message is
    exact for the demo's one request at a time (not a pattern for real services)."""
    from bu_osprofiler import _core, config, exporters

    own = _core.register_process(service, list(exporters.process_tags({}).items()))
    home = config._settings.get("process_index", 0)
    lock = threading.Lock()
    handle = server._process_incoming

    def process_incoming(incoming: Any) -> Any:
        with lock:
            _core.set_process(own)
            try:
                return handle(incoming)
            finally:
                _core.set_process(home)

    server._process_incoming = process_incoming


def role_conductor(args: argparse.Namespace) -> int:
    _setup_service("nova-conductor", args.agent)
    server = _rpc_server(args.transport_url, args.db)
    print("READY", flush=True)
    sys.stdin.read()  # the demo closes stdin to stop us
    server.stop()
    server.wait()
    return 0


def role_api(args: argparse.Namespace) -> int:
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import oslo_messaging as om
    import webob
    import webob.dec
    import webob.exc

    from bu_osprofiler import web

    _setup_service("nova-api", args.agent)
    server = (_rpc_server(args.transport_url, args.db, in_process=True)
              if args.with_conductor else None)
    client = om.get_rpc_client(_transport(args.transport_url), om.Target(topic=TOPIC),
                               timeout=30)

    @profiler.trace_cls("compute_api")
    class ComputeAPI:
        def create(self, name: str) -> dict:
            built = client.call({}, "build_instance", name=name)
            client.cast({}, "notify_created", name=name)
            return built

    api = ComputeAPI()

    @webob.dec.wsgify
    def app(req: Any) -> Any:
        if req.method == "POST" and req.path_info == "/v2.1/servers":
            return webob.Response(json_body={"server": api.create(req.json["server"]["name"])},
                                  status=202)
        return webob.exc.HTTPNotFound()

    class Quiet(WSGIRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    httpd = make_server("127.0.0.1", 0, web.WsgiMiddleware(app, hmac_keys=KEY, enabled=True),
                        server_class=Server, handler_class=Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("PORT %d" % httpd.server_port, flush=True)
    sys.stdin.read()
    httpd.shutdown()
    if server is not None:
        server.stop()
        server.wait()
    return 0


# ================================================================ the demo itself

_EXCHANGE_ENV = "BU_OSPROFILER_DEMO_EXCHANGE"


def _start(role: str, extra: Sequence[str], ready: str, timeout: float, log: str) -> tuple:
    env = dict(os.environ, PYTHONWARNINGS="ignore")  # library deprecation chatter
    with open(log, "ab") as err:  # the services' own logs, kept out of the demo's output
        proc = subprocess.Popen([sys.executable, "-m", "bu_osprofiler.demo", role, *extra],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                text=True, env=env)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(ready):
            return proc, line[len(ready):].strip()
    proc.kill()
    proc.wait()
    raise RuntimeError("the %s process did not start (exit code %s)" % (role, proc.poll()))


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    try:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout)
    except (subprocess.TimeoutExpired, OSError):
        proc.kill()
        proc.wait()


def _wait_for_trace(store: Any, trace_id: str, want: set, timeout: float) -> Optional[dict]:
    """Poll the store until the trace has every wanted operation and stops growing."""
    deadline = time.monotonic() + timeout
    last, stable = -1, 0
    trace = None
    while time.monotonic() < deadline:
        trace = store.get_trace(trace_id)
        if trace is not None:
            names = {s["operationName"] for s in trace["spans"]}
            n = len(trace["spans"])
            stable = stable + 1 if n == last else 0
            last = n
            if want <= names and stable >= 3:
                return trace
        time.sleep(0.1)
    return trace


def run_demo(args: argparse.Namespace) -> int:
    import bu_osprofiler
    from bu_osprofiler import analysis, web
    from bu_osprofiler.cmd import render
    from bu_osprofiler.collector.server import Collector
    from bu_osprofiler.collector.web import fmt_duration, render_trace

    t0 = time.monotonic()
    os.environ.setdefault(_EXCHANGE_ENV, "bu-osprofiler-demo-%s" % uuid.uuid4().hex[:12])
    ok = False
    workdir = tempfile.mkdtemp(prefix="bu-osprofiler-demo-")
    db_path = args.db or os.path.join(workdir, "traces.db")
    app_db = os.path.join(workdir, "cloud.sqlite")
    html_path = args.html or os.path.join(workdir, "trace.html")
    log = os.path.join(workdir, "services.log")
    collector = Collector(db_path=db_path, udp_port=0, udp_binary_port=None, http_port=0,
                          query_port=args.query_port).start()
    procs = []
    try:
        agent = "jaeger://127.0.0.1:%d" % collector.ports["udp_compact"]
        print("collector: spans to %s, query API and web view on %s"
              % (agent, collector.urls()["query"]))
        fake = args.transport_url.startswith("fake:")
        common = ["--agent", agent, "--transport-url", args.transport_url, "--db", app_db]
        if not fake:
            procs.append(_start("conductor", common, "READY", 60, log)[0])
        api, port = _start("api", common + (["--with-conductor"] if fake else []), "PORT ", 60,
                           log)
        procs.append(api)

        # The client: as novaclient with --profile, it starts the trace and sends its headers.
        bu_osprofiler.configure("novaclient", agent, sampler="const", sampler_param=1)
        profiler.init(KEY)
        trace_id = "%032x" % profiler.get().span.trace_id

        @profiler.trace("novaclient", hide_args=True)
        def boot(name: str) -> dict:
            req = urllib.request.Request(
                "http://127.0.0.1:%s/v2.1/servers" % port, method="POST",
                data=json.dumps({"server": {"name": name}}).encode(),
                headers=dict(web.get_trace_id_headers(), **{"Content-Type": "application/json"}))
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())

        server = boot("demo-vm")["server"]
        print("booted %s on %s (steps: %s)" % (server["name"], server["host"],
                                               ", ".join(server["steps"])))
        base_uuid = profiler.get().get_base_id()
        profiler.clean()
        bu_osprofiler.flush(10)
        for p in procs:
            _stop(p)  # each service flushes its spans at exit
        procs = []
        want = {"novaclient", "wsgi", "compute_api", "rpc", "schedule", "join", "db"}
        want |= {s for s, _ in STEPS}
        trace = _wait_for_trace(collector.store, trace_id, want, 20)
        if trace is None:
            print("error: trace %s did not reach the collector (service logs: %s)"
                  % (trace_id, log), file=sys.stderr)
            return 1
        print()
        print(render.tree(trace, critical_path=True))
        with open(html_path, "w", encoding="utf-8") as f:
            f.write(render_trace(trace, standalone=True))
        services = sorted({p["serviceName"] for p in trace["processes"].values()})
        t_start = min(s["startTime"] for s in trace["spans"])
        t_end = max(s["startTime"] + s["duration"] for s in trace["spans"])
        root = analysis.from_jaeger(trace).root()
        print("trace %s (osprofiler id %s): %d spans from %d services (%s); the request took"
              " %s, the whole trace with its asynchronous cast %s; the demo ran %.1f s"
              % (trace_id, base_uuid, len(trace["spans"]), len(services), ", ".join(services),
                 fmt_duration(root.duration if root else 0), fmt_duration(t_end - t_start),
                 time.monotonic() - t0))
        print("HTML waterfall: %s  (open it in a browser; it works offline)" % html_path)
        print("stored in %s; browse it with:" % db_path)
        print("  bu-osprofiler collector --db %s   then open http://127.0.0.1:16686/trace/%s"
              % (db_path, trace_id))
        print("  bu-osprofiler trace show --db %s %s --critical-path" % (db_path, trace_id))
        if args.keep_running:
            print("web view: %strace/%s  (Ctrl-C to stop)" % (collector.urls()["query"], trace_id))
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        ok = True
        return 0
    finally:
        for p in procs:
            p.kill()
        collector.stop()
        _clean(workdir, keep=(db_path, html_path) if ok else (), log=log)


def _clean(workdir: str, keep: Sequence[str], log: str) -> None:
    """Remove the demo's scratch files; keep the store and page it told the user about. After a
    failure, the services' log is shown first (it is the only place their errors went)."""
    keep_abs = {os.path.abspath(k) for k in keep}
    if not keep and os.path.exists(log) and os.path.getsize(log):
        with open(log, encoding="utf-8", errors="replace") as f:
            tail = f.readlines()[-30:]
        print("--- the services' log (last %d lines) ---\n%s---" % (len(tail), "".join(tail)),
              file=sys.stderr)
    for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        if os.path.abspath(path) in keep_abs or any(
                k.startswith(os.path.abspath(path) + os.sep) for k in keep_abs):
            continue
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass
    try:
        os.rmdir(workdir)  # only when nothing is kept in it
    except OSError:
        pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transport-url", default="fake://",
                   help="oslo.messaging transport (default fake://; e.g. "
                        "rabbit://guest:guest@127.0.0.1:5672/ for a real broker)")
    p.add_argument("--db", metavar="PATH", help="collector store (default: a new temporary file)")
    p.add_argument("--html", metavar="FILE", help="where to write the HTML waterfall")
    p.add_argument("--query-port", type=int, default=0,
                   help="port of the query API / web view while the demo runs (default: any)")
    p.add_argument("--keep-running", action="store_true",
                   help="keep the collector and its web view up after the demo")


def _role_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bu_osprofiler.demo")
    p.add_argument("role", choices=("api", "conductor"))
    p.add_argument("--agent", required=True)
    p.add_argument("--transport-url", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--with-conductor", action="store_true")
    args = p.parse_args(argv)
    return role_api(args) if args.role == "api" else role_conductor(args)


if __name__ == "__main__":
    sys.exit(_role_main(sys.argv[1:]))
