"""The README's main job: `bu-osprofiler demo` traces one request across processes."""
import re
import socket
import subprocess
import sys

import pytest


def _run_demo(tmp_path, *extra):
    html = tmp_path / "trace.html"
    proc = subprocess.run(
        [sys.executable, "-m", "bu_osprofiler.cmd.main", "demo", "--db", str(tmp_path / "t.db"),
         "--html", str(html), *extra],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, html


def _check(out, html, services):
    trace_id = re.search(r"^Trace ([0-9a-f]{32}):", out, re.M).group(1)
    for needle in ("novaclient: novaclient", ": wsgi", "rpc.call:build_instance",
                   "rpc.cast:notify_created", "[fork]", "[join <- 3 branches]", ": db",
                   "allocate_network", "Critical path"):
        assert needle in out, needle
    # the critical path runs through the longest (30 ms) of the three forked steps
    crit = out.split("Critical path", 1)[1]
    assert "allocate_network" in crit and "fetch_image" not in crit
    assert "attach_volume" not in crit
    assert trace_id in html.read_text()
    m = re.search(r"(\d+) spans from ([\w\-, ]+), in", out)
    assert sorted(m.group(2).split(", ")) == services
    assert int(m.group(1)) >= 20


def test_demo_fake_transport(tmp_path):
    out, html = _run_demo(tmp_path)
    _check(out, html, ["nova-api", "novaclient"])


def _rabbit_up():
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _rabbit_up(), reason="no RabbitMQ broker on 127.0.0.1:5672")
def test_demo_over_rabbitmq(tmp_path):
    out, html = _run_demo(tmp_path, "--transport-url", "rabbit://guest:guest@127.0.0.1:5672/")
    _check(out, html, ["nova-api", "nova-conductor", "novaclient"])


def test_demo_uses_its_own_control_exchange(monkeypatch):
    """A broker shared with a real OpenStack: the demo never declares the "openstack" exchange."""
    pytest.importorskip("oslo_messaging")
    from oslo_config import cfg

    from bu_osprofiler import demo

    monkeypatch.setenv("BU_OSPROFILER_DEMO_EXCHANGE", "bu-osprofiler-demo-test123")
    monkeypatch.setattr(demo._transport, "configured", False, raising=False)
    transport = demo._transport("fake://")
    try:
        assert cfg.CONF.control_exchange == "bu-osprofiler-demo-test123"
    finally:
        transport.cleanup()


def test_a_service_that_fails_to_start_shows_its_error(tmp_path):
    from bu_osprofiler import demo

    log = str(tmp_path / "services.log")
    with pytest.raises(RuntimeError) as ei:
        # a role that exits at once with a usage error on stderr
        demo._start("no-such-role", ["--bogus"], "READY", 30, log)
    msg = str(ei.value)
    assert "no-such-role" in msg and "exit code" in msg
    assert "usage" in msg.lower() or "error" in msg.lower()
