"""Replay the fuzz seeds and every saved crash input (fuzz/regressions/TARGET/) through its target.

Each target runs in a subprocess so that a C crash fails one test instead of the whole session.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")
sys.path.insert(0, FUZZ)
import targets  # noqa: E402


def _inputs(target):
    files = []
    for sub in ("corpus", "regressions"):
        d = os.path.join(FUZZ, sub, target)
        if os.path.isdir(d):
            files += sorted(os.path.join(d, f) for f in os.listdir(d))
    return files


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_replay(target):
    files = _inputs(target)
    if not files:
        pytest.skip("no saved inputs")
    out = subprocess.run([sys.executable, os.path.join(FUZZ, "replay.py"), target] + files,
                         capture_output=True, text=True, timeout=300)
    if out.stdout.startswith("skipped:"):
        pytest.skip(out.stdout.strip())
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert out.stdout.startswith("ok:")


# Found by fuzz/ (uberctx_baggage): a baggage value holding a lone surrogate made inject()
# write no header at all, losing the trace downstream.
def test_baggage_with_lone_surrogate_does_not_lose_the_trace():
    propagation = pytest.importorskip("bu_osprofiler.propagation")
    carrier = {"uber-trace-id": "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1",
               "uberctx-k": "a\udc80"}
    ctx = propagation.extract(carrier)
    assert ctx is not None
    out = {}
    propagation.inject(ctx, out)
    assert out.get("uber-trace-id", "").startswith("4bf92f3577b34da6a3ce929d0e0e4736:")
