"""Unmodified Nova 34 code under bu-osprofiler-run: RPC over RabbitMQ with Nova's serializer
between two processes, spawns through nova.thread_pool_factory, threading or eventlet mode.

    python nova_rpc.py check MODE        run collector + server + client, check the traces
    python nova_rpc.py server|client ... (started by `check` under bu-osprofiler-run)

The client starts REQUESTS traces at once, as novaclient --profile does (profiler.init(KEY)),
and calls the server's `build` (a TracedMeta endpoint, like Nova's managers) through
nova.rpc.get_client (Nova's ProfilerRequestContextSerializer). `build` spawns STEPS tasks with
nova.thread_pool_factory.spawn on a pool smaller than the load (workers are reused) and waits
for them; meanwhile the client casts heartbeats and the server runs a periodic spawn, both
outside any trace. `check` then reads every trace from the embedded collector and asserts: each
request's spans in its own trace (0 foreign), every parent / reference resolving, no idle
traces, and the HMAC key in no message published on the bus.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

KEY = "nova-e2e-hmac"
REQUESTS = 4
STEPS = 3
RABBIT = "rabbit://guest:guest@127.0.0.1:5672/"
HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nova_conf(role, exchange, port, mode):
    import nova.conf

    from nova import config

    conf = nova.conf.CONF
    # Nova's own start-up (nova.config.parse_args, as every nova-* binary), RPC set up later
    config.parse_args(["nova-e2e"], default_config_files=[], configure_db=False,
                      init_rpc=False)
    from oslo_messaging import transport

    conf.register_opts(transport._transport_opts)  # (what rpc.init's get_transport does)
    conf.set_override("transport_url", RABBIT)
    conf.set_override("control_exchange", exchange)  # ours, unique per run
    conf.set_override("host", "e2e-%s" % role)
    conf.set_override("default_thread_pool_size", 2)  # fewer workers than tasks: reuse
    conf.set_override("enabled", True, group="profiler")
    conf.set_override("hmac_keys", KEY, group="profiler")
    conf.set_override("connection_string", "jaeger://127.0.0.1:%d" % port, group="profiler")
    return conf


def _watch_bus(leaks):
    """Record every message published that contains the HMAC key (an independent look at
    what goes on the wire: the driver's serialized message)."""
    from oslo_messaging._drivers import impl_rabbit

    orig = impl_rabbit.Connection._publish

    def _publish(self, exchange, msg, *args, **kwargs):
        if KEY in json.dumps(msg, default=str):
            leaks.append(msg)
        return orig(self, exchange, msg, *args, **kwargs)

    impl_rabbit.Connection._publish = _publish


def role_main(role, mode, exchange, port):
    if mode == "eventlet":
        os.environ["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "0"
        import nova.monkey_patch

        nova.monkey_patch.patch(backend="eventlet")
    else:
        os.environ["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"
    conf = _nova_conf(role, exchange, port, mode)
    from nova import rpc, service, utils
    from nova import context as nova_context
    from nova import profiler as nova_profiler
    from nova import thread_pool_factory as tpf
    import oslo_messaging as messaging
    from osprofiler import profiler  # bu_osprofiler under bu-osprofiler-run

    assert profiler.__name__ == "bu_osprofiler.profiler", profiler.__name__
    assert utils.concurrency_mode_threading() == (mode == "threading")
    rpc.init(conf)
    service.setup_profiler("nova-%s" % role, conf.host)
    leaks = []
    _watch_bus(leaks)
    target = messaging.Target(topic="e2e-build", server="e2e-server", version="1.0")

    if role == "server":
        def step(i):
            with profiler.Trace("build-step", info={"step": i}):
                time.sleep(0.02)
                p = profiler.get()
                return p.get_base_id() if p else None

        class BuildManager(metaclass=nova_profiler.get_traced_meta()):
            __trace_args__ = {"name": "rpc"}
            target = messaging.Target(version="1.0")

            def build(self, ctxt, n):
                futures = [tpf.spawn(step, i) for i in range(STEPS)]
                seen = [f.result() for f in futures]
                # and a spawn made with no trace active runs untraced
                return {"seen": seen}

            def heartbeat(self, ctxt):
                """Cast outside any trace (like report_state): must record nothing."""
                with profiler.Trace("idle-step"):
                    pass

            def stop(self, ctxt):
                def bye():
                    import bu_osprofiler

                    time.sleep(0.2)
                    bu_osprofiler.flush(5)
                    os._exit(3 if leaks else 0)

                threading.Thread(target=bye, daemon=True).start()
                return {"leaks": len(leaks)}

        def periodic():
            # a periodic task spawning through Nova's pool with no trace active: it runs on
            # workers that served requests before, and must see none of their traces
            def idle_step():
                with profiler.Trace("idle-step"):
                    pass

            while True:
                tpf.spawn(idle_step).result()
                time.sleep(0.05)

        server = rpc.get_server(target, [BuildManager()])
        server.start()
        threading.Thread(target=periodic, daemon=True).start()
        print("READY", flush=True)
        while True:
            time.sleep(1)

    client = rpc.get_client(target)
    ctxt = nova_context.get_admin_context()
    results = {}

    def request(i):
        profiler.init(KEY)  # novaclient --profile KEY
        base = profiler.get().get_base_id()
        with profiler.Trace("client-request", info={"n": i}):
            reply = client.prepare(timeout=60).call(ctxt, "build", n=i)
        results[base] = reply["seen"]
        profiler.clean()

    beating = [True]

    def heartbeats():  # casts outside any trace, during the requests
        while beating[0]:
            client.cast(ctxt, "heartbeat")
            time.sleep(0.05)

    beat = threading.Thread(target=heartbeats)
    beat.start()
    threads = [threading.Thread(target=request, args=(i,)) for i in range(REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    beating[0] = False
    beat.join()
    stop = client.prepare(timeout=60).call(ctxt, "stop")
    import bu_osprofiler

    bu_osprofiler.flush(5)
    print(json.dumps({"results": results, "client_leaks": len(leaks),
                      "server_leaks": stop["leaks"]}), flush=True)


def _collector(tmp):
    udp, query = _free_port(), _free_port()
    db = os.path.join(tmp, "traces.db")
    proc = subprocess.Popen(
        ["bu-osprofiler", "collector", "--db", db, "--udp-port", str(udp), "--udp-binary-port",
         "off", "--http-port", "off", "--query-port", str(query), "--report-every", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    if proc.poll() is not None:
        sys.exit("collector failed: %s" % proc.stderr.read().decode())
    return proc, udp, db


def _traces(db):
    out = subprocess.run(["bu-osprofiler", "trace", "list", "--db", db, "--json", "--limit",
                          "1000"], check=True, capture_output=True, text=True).stdout
    ids = [t.get("trace_id") or t.get("traceID") for t in json.loads(out)]
    traces = {}
    for tid in ids:
        shown = subprocess.run(["bu-osprofiler", "trace", "show", tid, "--db", db, "--json"],
                               check=True, capture_output=True, text=True).stdout
        traces[tid] = json.loads(shown)["data"][0]
    return traces


def check(mode):
    import tempfile

    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="nova-e2e-")
    exchange = "bu-nova-e2e-%s" % uuid.uuid4().hex[:12]
    coll, udp, db = _collector(tmp)
    run = [shutil.which("bu-osprofiler-run"), sys.executable, os.path.abspath(__file__)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    server = subprocess.Popen(run + ["server", mode, exchange, str(udp)], env=env,
                              stdout=subprocess.PIPE, stderr=open(os.path.join(tmp, "server.log"),
                                                                  "w"), text=True)
    try:
        line = server.stdout.readline()
        if "READY" not in line:
            sys.exit("nova server did not start:\n" + open(os.path.join(tmp, "server.log")).read())
        client = subprocess.run(run + ["client", mode, exchange, str(udp)], env=env,
                                capture_output=True, text=True, timeout=300)
        if client.returncode != 0:
            sys.exit("nova client failed:\n" + client.stderr[-4000:])
        report = json.loads(client.stdout.strip().splitlines()[-1])
        server.wait(timeout=30)
        time.sleep(1.5)  # UDP batches in flight
    finally:
        if server.poll() is None:
            server.kill()
        coll.terminate()
        coll.wait(timeout=10)
    traces = _traces(db)
    problems = []
    per_request = []
    foreign = 0
    results = report["results"]
    wanted = {str(uuid.UUID(b)).replace("-", "")[-32:] for b in results}
    for base, seen in results.items():
        if any(s != base for s in seen):
            problems.append("spawned work of %s saw traces %s" % (base, seen))
    for tid, t in traces.items():
        spans = t["spans"]
        ids = {s["spanID"] for s in spans}
        procs = {p: v["serviceName"] for p, v in t["processes"].items()}
        for s in spans:
            for r in s.get("references", []):
                if r["traceID"] != tid:
                    problems.append("%s: reference to trace %s" % (s["operationName"],
                                                                     r["traceID"]))
                elif r["spanID"] not in ids:
                    problems.append("%s: dangling %s" % (s["operationName"], r["refType"]))
        norm = tid.rjust(32, "0")
        if norm not in wanted:
            foreign += len(spans)
            problems.append("idle / foreign trace %s: %s" % (
                tid, sorted({s["operationName"] for s in spans})))
            continue
        names = [s["operationName"] for s in spans]
        foreign += names.count("idle-step")
        if "idle-step" in names:
            problems.append("trace %s holds %d idle-step spans (untraced work)"
                            % (tid, names.count("idle-step")))
        steps = names.count("build-step")
        if steps != STEPS:
            problems.append("trace %s has %d build-step spans (want %d)" % (tid, steps, STEPS))
        per_request.append((len(spans), sorted(set(procs.values()))))
    if len(per_request) != REQUESTS:
        problems.append("%d request traces found, want %d" % (len(per_request), REQUESTS))
    if report["client_leaks"] or report["server_leaks"]:
        problems.append("HMAC key on the bus: %s" % report)
    services = sorted({n for _, svc in per_request for n in svc})
    print("nova %s mode%s: %d requests, spans per request %s, services %s, foreign spans %d, "
          "problems %d, %.1f s" % (mode, " (fork/join)" if os.environ.get(
              "BU_OSPROFILER_FORK_JOIN") == "1" else "", len(per_request),
              [n for n, _ in per_request], services, foreign, len(problems),
              time.monotonic() - t0))
    for p in problems:
        print("  PROBLEM:", p)
    if services != ["nova-client", "nova-server"]:
        problems.append("service names %s" % services)
    shutil.rmtree(tmp, ignore_errors=True)
    return not problems


if __name__ == "__main__":
    if sys.argv[1] == "check":
        ok = all(check(m) for m in (sys.argv[2:] or ["threading", "eventlet"]))
        sys.exit(0 if ok else 1)
    role_main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
