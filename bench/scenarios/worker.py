"""Worker: runs scenarios for one peer inside that peer's virtualenv; prints one JSON object.

Usage: worker.py PEER SCENARIO[,SCENARIO...] [--quick]

The peer's libraries are imported once here; every scenario then runs in a forked child (fresh
tracer state, no cross-scenario pollution, no repeated import cost).  A child that crashes or
exceeds its time limit is reported as an error, not a number.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import select
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Settings, Unavailable  # noqa: E402

SCENARIO_TIMEOUT_S = 240


def _child(peer_cls, name: str, settings: Settings, wfd: int) -> None:
    try:
        peer = peer_cls()
        res = __import__("common").run_scenario(peer, name, settings)
        if getattr(peer, "connection", None):
            res["connection"] = peer.connection  # where spans went (e.g. ours' fallback)
    except Unavailable as e:
        res = {"na": str(e) or "n/a"}
    except BaseException as e:  # a peer failing a scenario is a result, not a crash
        res = {"error": f"{type(e).__name__}: {e}",
               "trace": traceback.format_exc(limit=6)}
    data = json.dumps(res).encode()
    with os.fdopen(wfd, "wb") as f:
        f.write(data)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run_forked(peer_cls, name: str, settings: Settings) -> dict:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _child(peer_cls, name, settings, wfd)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + SCENARIO_TIMEOUT_S
    with os.fdopen(rfd, "rb") as f:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"error": f"timeout after {SCENARIO_TIMEOUT_S}s"}
            ready, _, _ = select.select([f], [], [], left)
            if ready:
                b = os.read(f.fileno(), 1 << 16)
                if not b:
                    break
                chunks.append(b)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return {"error": f"child died (wait status {status})"}
    return json.loads(b"".join(chunks))


def main() -> None:
    peer_name = sys.argv[1]
    scenarios = sys.argv[2].split(",")
    settings = Settings(quick="--quick" in sys.argv[3:])
    out = {"peer": peer_name, "python": platform.python_version(), "results": {}}
    try:
        mod = importlib.import_module("peer_" + peer_name.replace("-", "_"))
        peer_cls = mod.Peer
        out["versions"] = peer_cls().versions()
    except Exception as e:
        out["versions"] = {}
        for s in scenarios:
            out["results"][s] = {"na": f"peer unavailable: {type(e).__name__}: {e}"}
        print(json.dumps(out))
        return
    for s in scenarios:
        out["results"][s] = _run_forked(peer_cls, s, settings)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
