"""Drop-in: install_as_osprofiler() and the bu-osprofiler-run launcher (real subprocesses)."""
import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import bu_osprofiler
from bu_osprofiler import launcher

BIN = os.path.dirname(sys.executable)


def _run_launcher(args, code, env_extra=None, tmp_path=None):
    exe = shutil.which("bu-osprofiler-run", path=BIN)
    if exe is None:
        pytest.skip("bu-osprofiler-run console script not installed (pip install -e .)")
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.update(env_extra or {})
    return subprocess.run([exe] + args + ["python", "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def aliased():
    saved = {k: v for k, v in sys.modules.items()
             if k == "osprofiler" or k.startswith("osprofiler.")}
    bu_osprofiler.install_as_osprofiler()
    yield
    launcher.uninstall_as_osprofiler()
    sys.modules.update(saved)


def test_install_as_osprofiler_resolves_every_upstream_module(aliased):
    names = ["profiler", "web", "opts", "initializer", "notifier", "sqlalchemy", "requests",
             "exc"]
    import osprofiler

    assert osprofiler is bu_osprofiler
    for name in names:
        mod = importlib.import_module("osprofiler." + name)
        assert mod is importlib.import_module("bu_osprofiler." + name)
        assert mod.__spec__.name == "bu_osprofiler." + name  # its own identity is kept
    from osprofiler import profiler, web

    assert profiler.init is bu_osprofiler.profiler.init
    assert web.get_trace_id_headers is bu_osprofiler.web.get_trace_id_headers


def test_oslo_try_import_sees_us(aliased):
    importutils = pytest.importorskip("oslo_utils.importutils")
    assert importutils.try_import("osprofiler.profiler") is bu_osprofiler.profiler
    assert importutils.try_import("osprofiler.drivers") is None  # not provided: ImportError


def test_install_is_idempotent_and_uninstall_removes_aliases():
    bu_osprofiler.install_as_osprofiler()
    bu_osprofiler.install_as_osprofiler()
    assert sum(isinstance(f, launcher._AliasFinder) for f in sys.meta_path) == 1
    launcher.uninstall_as_osprofiler()
    assert not any(isinstance(f, launcher._AliasFinder) for f in sys.meta_path)
    assert "osprofiler" not in sys.modules


def test_when_imported_runs_after_the_module_loads(tmp_path, monkeypatch):
    (tmp_path / "bu_fresh_module.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    launcher.when_imported("bu_fresh_module", lambda m: seen.append(m.VALUE))
    assert seen == []
    import bu_fresh_module  # noqa: F401

    assert seen == [42]
    launcher.when_imported("bu_fresh_module", lambda m: seen.append("again"))
    assert seen == [42, "again"]  # already imported: called at once


def test_launcher_makes_unmodified_code_import_us(tmp_path):
    code = """
        import json, osprofiler, osprofiler.profiler as p, osprofiler.web as w
        p.init("key")
        print(json.dumps({"name": p.__name__, "base": p.get().get_base_id(),
                          "headers": sorted(w.get_trace_id_headers())}))
    """
    r = _run_launcher([], code)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["name"] == "bu_osprofiler.profiler"
    assert {"uber-trace-id", "traceparent", "X-Trace-Info", "X-Trace-HMAC"} <= set(out["headers"])


def test_launcher_chains_an_existing_sitecustomize(tmp_path):
    other = tmp_path / "site"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITE'] = 'ran'\n")
    code = """
        import os, osprofiler
        print(os.environ.get("OTHER_SITE"), osprofiler.__name__)
    """
    r = _run_launcher([], code, {"PYTHONPATH": str(other)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ran", "bu_osprofiler"]


def test_launcher_service_name_configures_and_hooks_messaging_on_import():
    pytest.importorskip("oslo_messaging")
    code = """
        import bu_osprofiler
        from bu_osprofiler import messaging
        before = messaging.installed()
        import oslo_messaging
        s = bu_osprofiler.settings()
        print(before, messaging.installed(), s["service_name"], s["connection_string"])
    """
    r = _run_launcher(["--service-name", "demo", "--connection-string", "memory://"], code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-4:] == ["False", "True", "demo", "memory://"]


def test_launcher_errors():
    exe = shutil.which("bu-osprofiler-run", path=BIN)
    if exe is None:
        pytest.skip("bu-osprofiler-run not installed")
    r = subprocess.run([exe, "no-such-command-xyz"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 127 and "not found" in r.stderr
    r = subprocess.run([exe], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2  # usage


def test_exit_status_and_arguments_pass_through():
    r = _run_launcher([], "import sys; print(sys.argv[1:]); sys.exit(3)")
    assert r.returncode == 3
