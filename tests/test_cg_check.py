"""bench/cg_hotpath.py --check: fails (exit 1) when a hot path's instruction count grows more
than 10% over the recorded baseline, passes on the baseline's own counts. The callgrind
measurement is replaced by the baseline's numbers (scaled); the comparison is the real one."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "cg_hotpath.py")


@pytest.fixture
def cg(monkeypatch):
    spec = importlib.util.spec_from_file_location("cg_hotpath", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "unavailable", lambda: None)  # no valgrind needed here
    return mod


def baseline():
    with open(os.path.join(ROOT, "bench", "results", "cg_baseline.json")) as f:
        return json.load(f)["instructions_per_call"]


def fake_measure(counts, calls):
    def measure(variant, n):
        calls.append((variant, n))
        return counts[variant]
    return measure


def test_the_baseline_covers_every_row_of_the_issue(cg):
    base = baseline()
    for row in ("bare", "untraced", "unsampled", "sampled", "export", "with", "ot_with", "ids"):
        assert base[row] > 0
    assert set(base) == set(cg.VARIANTS)


def test_check_passes_on_the_baseline_counts(cg, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cg, "measure", fake_measure(baseline(), calls))
    assert cg.main(["--check"]) == 0
    assert sorted(v for v, _ in calls) == sorted(baseline())
    assert all(n == cg.CHECK_N for _, n in calls)
    assert "within +10%" in capsys.readouterr().out


def test_check_passes_just_under_the_limit(cg, monkeypatch):
    counts = {k: v * 1.099 for k, v in baseline().items()}
    monkeypatch.setattr(cg, "measure", fake_measure(counts, []))
    assert cg.main(["--check"]) == 0


def test_check_fails_when_one_path_grows_over_ten_percent(cg, monkeypatch, capsys):
    counts = dict(baseline())
    counts["sampled"] = counts["sampled"] * 1.11
    monkeypatch.setattr(cg, "measure", fake_measure(counts, []))
    assert cg.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "REGRESSION sampled:" in err
    assert err.count("REGRESSION") == 1


def test_check_is_skipped_without_valgrind_or_on_another_python(cg, monkeypatch, capsys):
    monkeypatch.setattr(cg, "unavailable", lambda: "valgrind not installed")
    monkeypatch.setattr(cg, "measure", lambda v, n: pytest.fail("measured without valgrind"))
    assert cg.main(["--check"]) == 0
    assert "check skipped: valgrind not installed" in capsys.readouterr().out


def test_record_writes_what_check_compares_against(cg, monkeypatch, tmp_path):
    counts = {k: float(v) for k, v in baseline().items()}
    path = str(tmp_path / "base.json")
    monkeypatch.setattr(cg, "measure", fake_measure(counts, []))
    assert cg.main(["--record", "--baseline", path]) == 0
    with open(path) as f:
        assert json.load(f)["instructions_per_call"] == {k: round(v) for k, v in counts.items()}
    counts["ids"] *= 1.5
    assert cg.main(["--check", "--baseline", path]) == 1
