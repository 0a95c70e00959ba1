"""End to end, all real components: novaclient --profile -> WSGI API -> oslo.messaging RPC
call + cast -> a TracedMeta manager doing SQL, every program unmodified osprofiler code run
under bu-osprofiler-run. Every span of every process lands in the one trace novaclient started,
with the CHILD_OF / FOLLOWS_FROM edges of an RPC call and cast.

Variants: RabbitMQ (rabbit://guest:guest@127.0.0.1:5672/, the RPC server in another process;
skipped with the reason when no broker answers) and fake:// (in-process RPC server; always runs).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

pytest.importorskip("oslo_messaging")
pytest.importorskip("novaclient")
pytest.importorskip("keystoneauth1")
pytest.importorskip("webob")
sa = pytest.importorskip("sqlalchemy")

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e_openstack")
BIN = os.path.dirname(sys.executable)
RABBIT = "rabbit://guest:guest@127.0.0.1:5672/"
PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
KEY = "e2e-hmac-key"  # the key in compute.py, nova-api's [profiler] hmac_keys
MASK64 = (1 << 64) - 1


def _launcher():
    exe = shutil.which("bu-osprofiler-run", path=BIN)
    if exe is None:
        pytest.skip("bu-osprofiler-run console script not installed (pip install -e .)")
    return exe


# Our own RPC exchange, unique per run: the broker may be shared with a real OpenStack.
EXCHANGE = "bu-e2e-%s" % uuid.uuid4().hex[:12]


def _env():
    env = dict(os.environ, E2E_EXCHANGE=EXCHANGE)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _rabbit_unreachable():
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            pass
    except OSError as exc:
        return "no RabbitMQ broker at 127.0.0.1:5672 (%s)" % exc
    try:
        import kombu

        with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//",
                              connect_timeout=3) as c:
            c.connect()
    except Exception as exc:  # reachable port, but no usable broker / credentials
        return "RabbitMQ at 127.0.0.1:5672 refused guest/guest (%s)" % exc
    return None


def _database(tmp_path):
    try:
        import psycopg2  # noqa: F401

        engine = sa.create_engine(PG_URL)
        with engine.connect() as c:
            c.execute(sa.text("select 1"))
        return PG_URL, engine
    except Exception:
        url = "sqlite:///%s" % (tmp_path / "nova.db")
        return url, sa.create_engine(url)


class Proc:
    """A child program run under bu-osprofiler-run, talking over stdin/stdout."""

    def __init__(self, script, args):
        self.p = subprocess.Popen([_launcher(), sys.executable, os.path.join(HERE, script)]
                                  + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=_env(), cwd=HERE)

    def read_line(self, prefix, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            if line.startswith(prefix):
                return line.split()[1:]
        self.p.kill()
        err = self.p.stderr.read()[-3000:]
        raise AssertionError("%s never said %s: %s" % (self.p.args, prefix, err))

    def finish(self, timeout=60):
        self.p.stdin.close()
        rc = self.p.wait(timeout)
        err = self.p.stderr.read()
        assert rc == 0, err[-3000:]

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


def _wait_for_access_row(engine, suffix, timeout=30):
    """The cast is fire-and-forget: wait until the conductor has recorded it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with engine.connect() as c:
                n = c.execute(sa.text("select count(*) from e2e_access_%s" % suffix)).scalar()
            if n:
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError("the cast never reached the conductor")


def _drop_tables(engine, suffix):
    with engine.begin() as c:
        for t in ("e2e_servers_", "e2e_access_"):
            c.execute(sa.text("drop table if exists %s%s" % (t, suffix)))


def run_scenario(tmp_path, transport, separate_rpc_process):
    db_url, engine = _database(tmp_path)
    suffix = uuid.uuid4().hex[:10]
    topic = "bu-e2e-" + suffix
    procs = []
    try:
        conductor_out = tmp_path / "conductor.json"
        api_out = tmp_path / "api.json"
        if separate_rpc_process:
            conductor = Proc("rpc_server.py", ["--transport", transport, "--topic", topic,
                                               "--db", db_url, "--suffix", suffix,
                                               "--out", str(conductor_out)])
            procs.append(conductor)
            conductor.read_line("READY")
            api = Proc("api_server.py", ["--transport", transport, "--topic", topic,
                                         "--out", str(api_out)])
        else:
            api = Proc("api_server.py", ["--transport", transport, "--topic", topic,
                                         "--out", str(api_out), "--in-process-rpc-server",
                                         "--db", db_url, "--suffix", suffix])
        procs.append(api)
        (port,) = api.read_line("PORT")
        client = subprocess.run(
            [_launcher(), sys.executable, os.path.join(HERE, "nova_client.py"),
             "http://127.0.0.1:%s/v2.1" % port, KEY],
            capture_output=True, text=True, env=_env(), cwd=HERE, timeout=60)
        assert client.returncode == 0, client.stderr[-3000:]
        result = json.loads(client.stdout.strip().splitlines()[-1])
        assert result["name"] == "vm-one"
        _wait_for_access_row(engine, suffix)
        for p in reversed(procs):
            p.finish()
        spans = json.loads(api_out.read_text())
        if separate_rpc_process:
            spans += json.loads(conductor_out.read_text())
        return uuid.UUID(result["base_id"]).int, spans
    finally:
        for p in procs:
            p.kill()
        _drop_tables(engine, suffix)
        engine.dispose()


def check_trace(trace_id, spans, separate_rpc_process):
    by_id = {s["span_id"]: s for s in spans}

    def one(name, kind=None):
        found = [s for s in spans if s["name"] == name
                 and (kind is None or s["tags"].get("span.kind") == kind)]
        assert len(found) == 1, (name, kind, sorted(s["name"] for s in spans))
        return found[0]

    # One trace: the one novaclient started (its base id) holds every span of every process.
    assert {s["trace_id"] for s in spans} == {trace_id}
    wsgi = one("wsgi")
    assert wsgi["parent_id"] == 0  # root of the trace (novaclient's base has no span)
    assert wsgi["tags"]["span.kind"] == "server" and wsgi["tags"]["http.status_code"] == 200
    assert wsgi["tags"]["http.path"] == "/v2.1/servers/srv-1"
    assert wsgi["service"] == "nova-api"
    api = one("compute_api")
    assert api["parent_id"] == wsgi["span_id"]

    call_client = one("rpc.call:get_server", "client")
    call_server = one("rpc.call:get_server", "server")
    assert call_client["parent_id"] == api["span_id"]
    assert call_server["parent_id"] == call_client["span_id"]  # CHILD_OF
    assert call_server["tags"]["rpc.topic"].startswith("bu-e2e-")
    assert call_server["tags"]["rpc.server"] == "conductor-1"
    assert call_client["tags"]["rpc.method"] == "get_server"

    producer = one("rpc.cast:record_access", "producer")
    consumer = one("rpc.cast:record_access", "consumer")
    assert producer["parent_id"] == api["span_id"]
    assert consumer["references"] == [["follows_from", trace_id, producer["span_id"]]]
    assert consumer["tags"]["fork"] is True

    handlers = [s for s in spans if s["name"] == "rpc"]
    assert sorted(h["parent_id"] for h in handlers) == \
        sorted([call_server["span_id"], consumer["span_id"]])
    assert {h["tags"]["name"].rsplit(".", 1)[-1] for h in handlers} == \
        {"get_server", "record_access"}
    dbs = [s for s in spans if s["name"] == "db"]
    handler_ids = {h["span_id"] for h in handlers}
    assert dbs and all(d["parent_id"] in handler_ids for d in dbs)
    assert any("SELECT" in d["tags"]["db.statement"].upper() for d in dbs)
    assert any("INSERT" in d["tags"]["db.statement"].upper() for d in dbs)

    # Every parent and every reference resolves to a recorded span: a connected DAG.
    for s in spans:
        if s["parent_id"]:
            assert s["parent_id"] in by_id, s["name"]
        for _kind, _t, ref in s["references"]:
            assert ref in by_id
    # A call nests in time; the handler ran inside its server span.
    assert call_client["start_ns"] <= call_server["start_ns"] <= call_server["end_ns"] \
        <= call_client["end_ns"]
    if separate_rpc_process:
        assert call_server["pid"] != call_client["pid"]
        assert call_server["service"] == "nova-conductor"


def test_rest_and_rpc_over_rabbitmq(tmp_path):
    reason = _rabbit_unreachable()
    if reason:
        pytest.skip(reason)
    trace_id, spans = run_scenario(tmp_path, RABBIT, separate_rpc_process=True)
    check_trace(trace_id, spans, separate_rpc_process=True)


def test_rest_and_rpc_over_fake_transport(tmp_path):
    trace_id, spans = run_scenario(tmp_path, "fake:///", separate_rpc_process=False)
    check_trace(trace_id, spans, separate_rpc_process=False)
