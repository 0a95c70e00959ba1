"""The UDP reporter's routes (issue 11): name resolution off the exit path and bounded by the
shutdown timeout, re-resolution when the agent moves, every address tried like a datagram
client, and "exported" counting only datagrams that left on a working route.

Resolution is steered with a getaddrinfo() shim preloaded into a child process: the name
``agent.test`` resolves to what a file says (an address, or "hang": a resolver that never
answers). Only 127.0.0.x / ::1 are used."""
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from bu_osprofiler import _core, exporters

from jaeger_wire import counters, decode_message, delta, one_process, reset_core

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    gai_fn real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    const char *path = getenv("AGENT_TEST_FILE");
    if (node != NULL && path != NULL && strcmp(node, "agent.test") == 0) {
        char buf[256] = {0};
        FILE *f = fopen(path, "r");
        if (f != NULL) {
            if (fgets(buf, sizeof(buf), f) == NULL) {
                buf[0] = 0;
            }
            fclose(f);
        }
        buf[strcspn(buf, "\r\n")] = 0;
        if (strcmp(buf, "hang") == 0) {
            sleep(30); /* a resolver that does not answer */
            return EAI_AGAIN;
        }
        return real(buf, service, hints, res);
    }
    return real(node, service, hints, res);
}
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    d = tmp_path_factory.mktemp("shim")
    src = d / "gai_shim.c"
    src.write_text(SHIM)
    so = d / "gai_shim.so"
    try:
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"], check=True,
                       capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as e:  # pragma: no cover
        pytest.skip("cannot build the getaddrinfo shim: %s" % e)
    return so


@pytest.fixture(autouse=True)
def clean_core():
    reset_core(exporters)
    yield
    reset_core(exporters)


def receiver(host):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(5.0)
    return s


def child_env(shim, addr_file):
    """The environment of a child whose `agent.test` resolves to what addr_file says."""
    return dict(os.environ, AGENT_TEST_FILE=str(addr_file),
                LD_PRELOAD=" ".join(p for p in (os.environ.get("LD_PRELOAD"), str(shim)) if p))


def spawn(shim, addr_file, code):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            env=child_env(shim, addr_file), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def two_agents():
    """A receiver on 127.0.0.1 and one on 127.0.0.2, same port (the agent before / after)."""
    old = receiver("127.0.0.1")
    port = old.getsockname()[1]
    try:
        new = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        new.bind(("127.0.0.2", port))
    except OSError:  # pragma: no cover
        old.close()
        pytest.skip("127.0.0.2 is not a local address here")
    new.settimeout(20.0)
    return old, new, port


def run_child(shim, tmp_path, code, answer, timeout=60):
    addr_file = tmp_path / "agent-addr"
    addr_file.write_text(answer)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          env=child_env(shim, addr_file), capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - t0


def test_every_address_is_tried_and_only_delivered_datagrams_count():
    """[::1] first (as `localhost` resolves on many hosts), the agent only on 127.0.0.1: the
    datagram refused on ::1 goes to 127.0.0.1, and nothing refused is counted as exported."""
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:  # pragma: no cover
        pytest.skip("no IPv6 loopback")
    rx = receiver("127.0.0.1")
    port = rx.getsockname()[1]
    one_process("routes")
    before = counters()
    _core.set_mode(_core.MODE_REPORTER)
    _core.reporter_start("::1,127.0.0.1", port, "compact", 60.0)
    for i in range(5):
        _core._push_record(1, i + 1, 0, 1, "op%d" % i, 10 ** 18, 1000)
    assert _core.reporter_flush(10.0) is True
    data = rx.recv(70000)
    batch = decode_message(data, "compact")[0]
    assert sorted(s.operationName for s in batch.spans) == ["op%d" % i for i in range(5)]
    assert delta(before, "spans_exported") == 5
    assert delta(before, "dropped_send_failed") == 0
    assert delta(before, "batches_sent") == 1
    rx.close()


def test_nothing_listening_on_any_address_counts_no_export():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    one_process("routes-down")
    before = counters()
    _core.set_mode(_core.MODE_REPORTER)
    _core.reporter_start("::1,127.0.0.1", port, "compact", 60.0)
    for i in range(3):
        _core._push_record(1, i + 1, 0, 1, "op", 10 ** 18, 1000)
    assert _core.reporter_flush(10.0) is False
    assert delta(before, "spans_exported") == 0
    assert delta(before, "dropped_send_failed") == 3
    assert _core.reporter_info()["last_error"]


def test_agent_that_moves_is_found_again(shim, tmp_path):
    """The agent's name moves from 127.0.0.1 to 127.0.0.2: after the old route fails the
    reporter resolves again and the spans reach the new address."""
    old, new, port = two_agents()
    addr_file = tmp_path / "agent-addr"
    code = """
        import sys, time
        from bu_osprofiler import _core
        _core.set_mode(_core.MODE_REPORTER)
        _core.reporter_start("agent.test", %d, "compact", 60.0, resolve_interval=3600)
        _core._push_record(1, 1, 0, 1, "first", 10 ** 18, 1000)
        print("first", _core.reporter_flush(10.0), flush=True)
        sys.stdin.readline()  # the test moves the agent
        for i in range(200):
            _core._push_record(1, i + 2, 0, 1, "moved", 10 ** 18, 1000)
            if _core.reporter_flush(5.0):
                print("moved-ok", i, flush=True)
                break
            time.sleep(0.05)
        print(dict(_core.stats()), flush=True)
    """ % port
    addr_file.write_text("127.0.0.1")
    proc = spawn(shim, addr_file, code)
    try:
        assert proc.stdout.readline().split() == ["first", "True"]
        assert decode_message(old.recv(70000))[0].spans[0].operationName == "first"
        old.close()  # the agent leaves 127.0.0.1 ...
        addr_file.write_text("127.0.0.2")  # ... and its name now points elsewhere
        proc.stdin.write("\n")
        proc.stdin.flush()
        data = new.recv(70000)
        assert decode_message(data)[0].spans[0].operationName == "moved"
        out = proc.communicate(timeout=60)[0]
        assert "moved-ok" in out
    finally:
        proc.kill()
        new.close()


def test_periodic_reresolution_follows_a_moved_agent(shim, tmp_path):
    """No send error at all (the old agent is still there): the name is resolved again every
    resolve_interval and the new address used."""
    old, new, port = two_agents()
    addr_file = tmp_path / "agent-addr"
    code = """
        import sys, time
        from bu_osprofiler import _core
        _core.set_mode(_core.MODE_REPORTER)
        _core.reporter_start("agent.test", %d, "compact", 60.0, resolve_interval=0.2)
        _core._push_record(1, 1, 0, 1, "first", 10 ** 18, 1000)
        print("first", _core.reporter_flush(10.0), flush=True)
        sys.stdin.readline()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _core._push_record(1, 2, 0, 1, "later", 10 ** 18, 1000)
            _core.reporter_flush(5.0)
            time.sleep(0.1)
            if sys.stdin.readline().strip() == "stop":
                break
    """ % port
    addr_file.write_text("127.0.0.1")
    proc = spawn(shim, addr_file, code)
    try:
        assert proc.stdout.readline().split() == ["first", "True"]
        old.recv(70000)
        addr_file.write_text("127.0.0.2")
        proc.stdin.write("\n")
        proc.stdin.flush()
        for _ in range(200):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            try:
                new.settimeout(0.1)
                data = new.recv(70000)
                break
            except socket.timeout:
                continue
        else:
            pytest.fail("the moved agent never got a datagram")
        assert decode_message(data)[0].spans[0].operationName == "later"
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
    finally:
        proc.kill()
        old.close()
        new.close()


@pytest.mark.parametrize("explicit_shutdown", [True, False])
def test_dns_that_does_not_answer_never_holds_exit(shim, tmp_path, explicit_shutdown):
    """The resolver hangs for 30 s: shutdown(1.0) returns within its timeout and the process
    exits right after, with or without an explicit shutdown (interpreter exit)."""
    code = """
        import time, bu_osprofiler
        bu_osprofiler.configure("dns-hang", "jaeger://agent.test:6831",
                                shutdown_timeout=1.0, flush_interval=0.05)
        with bu_osprofiler.start_span("s"):
            pass
        time.sleep(0.3)  # the flusher is now waiting for the resolver
        if %s:
            t0 = time.monotonic()
            bu_osprofiler.shutdown(1.0)
            print("shutdown %%.3f" %% (time.monotonic() - t0), flush=True)
        print("exiting", flush=True)
    """ % explicit_shutdown
    proc, elapsed = run_child(shim, tmp_path, code, "hang")
    assert proc.returncode == 0, proc.stderr
    assert "exiting" in proc.stdout
    if explicit_shutdown:
        took = float(proc.stdout.split("shutdown ")[1].split()[0])
        assert took < 1.5, proc.stdout  # within the timeout (+ scheduling slack)
    # started python, imported, waited 0.3 s, then at most the shutdown timeout: far from 30 s
    assert elapsed < 15, elapsed
