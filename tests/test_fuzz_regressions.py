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
