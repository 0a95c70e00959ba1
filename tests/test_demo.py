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


def _us(text):
    """'39.7ms' -> 39700.0 (the tree's durations)."""
    for unit, mult in (("µs", 1), ("ms", 1e3), ("s", 1e6)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * mult
    raise ValueError(text)


def _check(out, html, services):
    trace_id = re.search(r"^Trace ([0-9a-f]{32}):", out, re.M).group(1)
    for needle in ("novaclient: novaclient", ": wsgi", "rpc.call:build_instance",
                   "rpc.cast:notify_created", "[fork]", "[join <- 3 branches]", ": db",
                   "allocate_network", "Critical path"):
        assert needle in out, needle
    # the critical path runs through the forked step that finished last: allocate_network
    # (30 ms of sleep) unless a loaded machine delayed another one past it
    crit = out.split("Critical path", 1)[1]
    ends = {name: _us(start) + _us(dur) for name, dur, start in re.findall(
        r"nova-conductor: (allocate_network|attach_volume|fetch_image)  (\S+)  \(\+(\S+)\)", out)}
    assert len(ends) == 3, out
    latest = max(ends.values())
    last = {n for n, e in ends.items() if e >= latest - 200}  # the tree rounds to 3 digits
    on_path = [n for n in ends if n in crit]
    assert len(on_path) == 1 and on_path[0] in last, (ends, crit)
    assert trace_id in html.read_text()
    m = re.search(r"(\d+) spans from (\d+) services \(([\w\-, ]+)\); the request took "
                  r"[\d.]+m?s, the whole trace with its asynchronous cast [\d.]+m?s; the demo "
                  r"ran [\d.]+ s", out)
    assert m, out
    assert sorted(m.group(3).split(", ")) == services and int(m.group(2)) == len(services)
    assert int(m.group(1)) >= 20
    # the client and server sides of each RPC are told apart, and the conductor is its own service
    assert re.search(r"nova-api: rpc.call:build_instance .*\[client\]", out)
    assert re.search(r"nova-conductor: rpc.call:build_instance .*\[server\]", out)
    assert re.search(r"nova-conductor: schedule ", out)


def test_demo_fake_transport(tmp_path):
    out, html = _run_demo(tmp_path)
    _check(out, html, ["nova-api", "nova-conductor", "novaclient"])


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


def test_a_service_that_fails_to_start_shows_its_error():
    """The terminal shows the failing service's own error, not only where its log was."""
    proc = subprocess.run(
        [sys.executable, "-m", "bu_osprofiler.cmd.main", "demo", "--transport-url",
         "nosuchdriver://"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "did not start" in proc.stderr
    assert "nosuchdriver" in proc.stderr  # oslo.messaging's own complaint, from the service


def test_demo_leaves_no_scratch_files(tmp_path):
    """Given --db and --html elsewhere, nothing of the demo stays in the temporary directory;
    a failed run removes it too, after showing the services' log."""
    import os
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    proc = subprocess.run(
        [sys.executable, "-m", "bu_osprofiler.cmd.main", "demo", "--db", str(tmp_path / "t.db"),
         "--html", str(tmp_path / "t.html")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(scratch.iterdir()) == []
    proc = subprocess.run(  # an unreachable broker: the API process cannot start
        [sys.executable, "-m", "bu_osprofiler.cmd.main", "demo", "--transport-url",
         "nosuchdriver://"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0
    assert list(scratch.iterdir()) == []
