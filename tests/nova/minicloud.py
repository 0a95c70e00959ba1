"""A real mini cloud under bu-osprofiler-run: Nova 34 (placement-api under gunicorn, nova-api
under a threading WSGI server (tests/nova/wsgi_run.py), nova-conductor, nova-scheduler, nova-compute with Nova's fake driver), PostgreSQL,
RabbitMQ (own exchange), with minimal stand-ins for Glance and Neutron (one HTTP server) and
noauth2 instead of Keystone. Boots more servers than max_concurrent_builds at once with
novaclient's --profile (Client(profile=KEY)) and checks the traces in the embedded collector:
every boot's spans in its own trace, every parent resolving, no idle traces.

    python minicloud.py [--keep]
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
BIN = os.path.join(VENV, "bin")
KEY = "minicloud-hmac"
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/"
RABBIT = "rabbit://guest:guest@127.0.0.1:5672/"
IMAGE = "155d900f-4e14-4e4c-a73d-069cbf4541e6"
BOOTS = int(os.environ.get("MINICLOUD_BOOTS", "6"))
MAX_BUILDS = 2  # max_concurrent_builds: fewer than the boots, so build workers are reused


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandIn(BaseHTTPRequestHandler):
    """Glance v2 (one image) and Neutron v2.0 (nothing) as far as booting with no network
    needs them."""

    def log_message(self, *a):
        pass

    def _json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path.startswith("/v2/schemas/image"):
            base = ("id", "name", "status", "visibility", "container_format", "disk_format",
                    "size", "virtual_size", "min_disk", "min_ram", "checksum", "owner",
                    "created_at", "updated_at", "os_hidden", "protected", "tags", "file",
                    "schema", "self", "direct_url", "locations")
            return self._json(200, {"name": "image", "properties": {k: {} for k in base},
                                    "additionalProperties": {"type": "string"}})
        if path.startswith("/v2/images/"):
            return self._json(200, {
                "id": IMAGE, "name": "cirros", "status": "active", "visibility": "public",
                "container_format": "bare", "disk_format": "raw", "size": 1024,
                "min_disk": 0, "min_ram": 0, "protected": False, "tags": [],
                "owner": "admin", "checksum": "0" * 32, "os_hidden": False,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                "file": "/v2/images/%s/file" % IMAGE, "schema": "/v2/schemas/image"})
        if path.startswith("/v2.0/"):
            res = path[len("/v2.0/"):].split("/")[0].replace(".json", "").replace("-", "_")
            return self._json(200, {res: []})
        return self._json(404, {"error": path})

    def do_POST(self):
        self._json(201, {})

    do_PUT = do_POST

    def do_DELETE(self):
        self._json(204, {})


def _write_conf(tmp, run, ports):
    db = {n: "%sbu_%s_%s" % (PG, n, run) for n in ("nova_api", "nova", "nova_cell0",
                                                      "placement")}
    # Nova's own paste pipeline, with keystonemiddleware's authtoken replaced by a stand-in
    with open(os.path.join(VENV, "etc", "nova", "api-paste.ini")) as f:
        paste = f.read().replace(" authtoken keystonecontext ",
                                 " authtoken_standin keystonecontext ")
    paste += ("\n[filter:authtoken_standin]\n"
              "paste.filter_factory = keystone_standin:filter_factory\n")
    with open(os.path.join(tmp, "api-paste.ini"), "w") as f:
        f.write(paste)
    standin = "http://127.0.0.1:%d" % ports["standin"]
    placement = "http://127.0.0.1:%d" % ports["placement"]
    common_profiler = """
[profiler]
enabled = true
hmac_keys = %s
connection_string = jaeger://127.0.0.1:%d
trace_sqlalchemy = true
""" % (KEY, ports["udp"])
    nova = """[DEFAULT]
transport_url = %(rabbit)s
control_exchange = bu-minicloud-%(run)s
compute_driver = fake.FakeDriver
host = minicloud
state_path = %(tmp)s
max_concurrent_builds = %(builds)d
instances_path = %(tmp)s/instances
[oslo_messaging_rabbit]
amqp_auto_delete = true
[wsgi]
api_paste_config = %(tmp)s/api-paste.ini
[api_database]
connection = %(nova_api)s
[database]
connection = %(nova)s
[placement]
auth_type = admin_token
endpoint = %(placement_url)s
token = admin
region_name = RegionOne
[glance]
endpoint_override = %(standin)s
[neutron]
endpoint_override = %(standin)s
auth_type = admin_token
endpoint = %(standin)s
token = admin
[scheduler]
discover_hosts_in_cells_interval = -1
[oslo_concurrency]
lock_path = %(tmp)s/locks
%(profiler)s""" % dict(rabbit=RABBIT, run=run, tmp=tmp, builds=MAX_BUILDS, standin=standin,
                       placement_url=placement, profiler=common_profiler, **db)
    with open(os.path.join(tmp, "nova.conf"), "w") as f:
        f.write(nova)
    with open(os.path.join(tmp, "placement.conf"), "w") as f:
        f.write("""[api]
auth_strategy = noauth2
[placement_database]
connection = %s
%s""" % (db["placement"], common_profiler))
    return db


def _sh(cmd, env, log):
    with open(log, "a") as f:
        f.write("$ %s\n" % " ".join(cmd))
        f.flush()
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True,
                       timeout=600)


def main():
    keep = "--keep" in sys.argv
    import tempfile

    import psycopg2

    t0 = time.monotonic()
    run = uuid.uuid4().hex[:10]
    tmp = tempfile.mkdtemp(prefix="minicloud-")
    log = os.path.join(tmp, "setup.log")
    ports = {"standin": _port(), "placement": _port(), "api": _port(), "udp": _udp_port(),
             "query": _port()}
    db = _write_conf(tmp, run, ports)
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    conn.autocommit = True
    for url in db.values():
        conn.cursor().execute("CREATE DATABASE %s" % url.rsplit("/", 1)[1])
    standin = ThreadingHTTPServer(("127.0.0.1", ports["standin"]), StandIn)
    threading.Thread(target=standin.serve_forever, daemon=True).start()
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"],
               OS_NOVA_CONFIG_DIR=tmp, OS_NOVA_CONFIG_FILES="api-paste.ini;nova.conf",
               OS_PLACEMENT_CONFIG_DIR=tmp, PYTHONWARNINGS="ignore")
    procs = []
    ok = False
    try:
        procs.append(subprocess.Popen(
            ["bu-osprofiler", "collector", "--db", os.path.join(tmp, "traces.db"),
             "--udp-port", str(ports["udp"]), "--udp-binary-port", "off", "--http-port", "off",
             "--query-port", str(ports["query"]), "--report-every", "0"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "collector.log"), "w")))
        conf = ["--config-file", os.path.join(tmp, "nova.conf")]
        _sh(["placement-manage", "--config-file", os.path.join(tmp, "placement.conf"), "db",
             "sync"], env, log)
        _sh(["nova-manage"] + conf + ["api_db", "sync"], env, log)
        _sh(["nova-manage"] + conf + ["cell_v2", "map_cell0", "--database_connection",
                                      db["nova_cell0"]], env, log)
        _sh(["nova-manage"] + conf + ["cell_v2", "create_cell", "--name", "cell1"], env, log)
        _sh(["nova-manage"] + conf + ["db", "sync"], env, log)
        t_setup = time.monotonic() - t0
        run_ = [os.path.join(BIN, "bu-osprofiler-run")]

        def start(name, cmd):
            out = open(os.path.join(tmp, name + ".log"), "w")
            procs.append(subprocess.Popen(run_ + cmd, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))

        start("placement-api", ["gunicorn", "-b", "127.0.0.1:%d" % ports["placement"], "-w",
                                "1", "--threads", "8", "placement.wsgi.api:application"])
        start("nova-api", [sys.executable, os.path.join(HERE, "wsgi_run.py"), str(ports["api"]),
                           "nova.wsgi.osapi_compute:application", "nova-api"])
        for svc in ("nova-conductor", "nova-scheduler", "nova-compute"):
            start(svc, [svc] + conf)
        # the compute service registers, then is mapped into cell1
        deadline = time.monotonic() + 180
        while True:
            r = subprocess.run(["nova-manage"] + conf + ["cell_v2", "discover_hosts",
                                                         "--verbose"],
                               env=env, capture_output=True, text=True)
            if "minicloud" in r.stdout or time.monotonic() > deadline:
                break
            time.sleep(2)
        for p in procs:
            if p.poll() is not None:
                raise SystemExit("a service exited: see %s" % tmp)
        t_up = time.monotonic() - t0
        result = subprocess.run(
            run_ + ["--service-name", "novaclient", "--connection-string",
                    "jaeger://127.0.0.1:%d" % ports["udp"], sys.executable,
                    os.path.join(HERE, "minicloud_client.py"), str(ports["api"]), str(BOOTS),
                    IMAGE, KEY],
            env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise SystemExit("boots failed:\n%s" % result.stderr[-3000:])
        boots = json.loads(result.stdout.strip().splitlines()[-1])
        time.sleep(3)  # last UDP batches
        t_boot = time.monotonic() - t0
        ok = _check(os.path.join(tmp, "traces.db"), boots)
        print("minicloud: setup %.0f s, services up at %.0f s, %d boots done at %.0f s"
              % (t_setup, t_up, BOOTS, t_boot))
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        standin.shutdown()
        if ok and not keep:
            for url in db.values():
                conn.cursor().execute("DROP DATABASE IF EXISTS %s WITH (FORCE)"
                                      % url.rsplit("/", 1)[1])
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("minicloud: logs and databases kept in %s" % tmp)
    sys.exit(0 if ok else 1)


def _check(db, boots):
    sys.path.insert(0, HERE)
    from nova_rpc import _traces

    traces = _traces(db)
    wanted = {b.replace("-", "") for b in boots.values()}
    server_of = {b.replace("-", ""): sid for sid, b in boots.items()}
    problems = []
    per_boot = []
    foreign = 0
    for tid, t in traces.items():
        spans = t["spans"]
        ids = {s["spanID"] for s in spans}
        services = sorted({v["serviceName"] for v in t["processes"].values()})
        dangling = [s["operationName"] for s in spans for r in s.get("references", [])
                    if r["spanID"] not in ids]
        if tid.rjust(32, "0") not in wanted:
            problems.append("idle / foreign trace %s (%d spans, %s)" % (tid, len(spans),
                                                                        services))
            continue
        # a span naming another boot's server (in its args, instance, URL...) and not this
        # trace's own server is that boot's work recorded in the wrong trace
        # (the resource tracker's sweep over every allocation on the host, GET
        # /allocations/<each instance>, is host-wide work the build does itself: not counted)
        mine = server_of[tid.rjust(32, "0")]
        for s in spans:
            text = json.dumps(s.get("tags", []))
            if '"/allocations/' in text and '"GET"' in text:
                continue
            others = [sid for sid in boots if sid != mine and sid in text]
            if others and mine not in text:
                foreign += 1
        if dangling:
            problems.append("trace %s: %d dangling parents (%s)" % (tid, len(dangling),
                                                                      dangling[:5]))
        per_boot.append((len(spans), services))
    if len(per_boot) != len(boots):
        problems.append("%d boot traces of %d" % (len(per_boot), len(boots)))
    if foreign:
        problems.append("%d spans of one boot recorded in another boot's trace" % foreign)
    print("minicloud%s: %d boots (max_concurrent_builds %d), spans per boot %s, services %s, "
          "foreign spans %d, problems %d"
          % (" (fork/join)" if os.environ.get("BU_OSPROFILER_FORK_JOIN") == "1" else "",
             len(boots), MAX_BUILDS, [n for n, _ in per_boot],
             sorted({x for _, s in per_boot for x in s}), foreign, len(problems)))
    for p in problems:
        print("  PROBLEM:", p)
    return not problems


if __name__ == "__main__":
    main()
