"""Drop-in: ``bu-osprofiler-run COMMAND [ARGS...]`` and ``install_as_osprofiler()``.

``install_as_osprofiler()`` puts an import hook first on ``sys.meta_path`` that resolves
``osprofiler`` and ``osprofiler.<name>`` to ``bu_osprofiler`` and ``bu_osprofiler.<name>`` (the
very same module objects), so unmodified code (Nova, novaclient, keystoneauth, oslo.db) that
imports osprofiler runs on this package.

``bu-osprofiler-run`` runs a command with ``bu_osprofiler/_bootstrap`` first on PYTHONPATH; its
``sitecustomize`` calls ``install_as_osprofiler()`` at interpreter start (in every Python process
the command starts), then chains to any other ``sitecustomize``. An oslo.config service then
configures tracing as usual: with ``[profiler] enabled = true`` its ``init_from_conf`` call sets up
the exporter, the WSGI middleware and the oslo.messaging hooks. ``--service-name`` configures
tracing from the command line instead (for programs that never call ``init_from_conf``), and
then installs the oslo.messaging hooks as soon as the program imports oslo.messaging.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import threading
from typing import Any, Callable, Optional, Sequence

__all__ = ["install_as_osprofiler", "uninstall_as_osprofiler", "main", "when_imported"]

ALIAS = "osprofiler"
TARGET = "bu_osprofiler"
BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")

ENV_RUN = "BU_OSPROFILER_RUN"
ENV_SERVICE = "BU_OSPROFILER_SERVICE_NAME"
ENV_CONNECTION = "BU_OSPROFILER_CONNECTION_STRING"
ENV_RPC = "BU_OSPROFILER_RPC"
ENV_REQUESTS = "BU_OSPROFILER_REQUESTS"


# ================================================================ osprofiler -> bu_osprofiler

class _AliasLoader(importlib.abc.Loader):
    """Loads ``osprofiler.X`` by importing ``bu_osprofiler.X`` and handing that module out."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._spec: Any = None

    def create_module(self, spec: Any) -> Any:
        module = importlib.import_module(self.target)
        self._spec = getattr(module, "__spec__", None)
        return module

    def exec_module(self, module: Any) -> None:
        # The import system stamped the alias spec on the shared module object; give the
        # module its own back so that reloads and pickling keep using the real name.
        if self._spec is not None:
            module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real = TARGET + fullname[len(ALIAS):]
        try:
            found = importlib.util.find_spec(real)
        except (ImportError, ValueError):
            found = None
        if found is None:
            return None  # e.g. osprofiler.drivers: not provided, ModuleNotFoundError follows
        return importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(real), is_package=found.submodule_search_locations is not None)


_finder: Optional[_AliasFinder] = None
_lock = threading.Lock()


def install_as_osprofiler() -> None:
    """Make ``import osprofiler`` (and ``osprofiler.<submodule>``) resolve to this package.

    Idempotent. Modules named ``osprofiler`` imported before the call (a stock osprofiler) are
    replaced in ``sys.modules``; references already held to them are not.
    """
    global _finder
    with _lock:
        if _finder is None:
            _finder = _AliasFinder()
            sys.meta_path.insert(0, _finder)
        for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
            mod = sys.modules[name]
            if getattr(mod, "__name__", "").split(".")[0] != TARGET:
                del sys.modules[name]
        for name, mod in list(sys.modules.items()):
            if name == TARGET or name.startswith(TARGET + "."):
                sys.modules.setdefault(ALIAS + name[len(TARGET):], mod)


def uninstall_as_osprofiler() -> None:
    """Undo :func:`install_as_osprofiler` (tests)."""
    global _finder
    with _lock:
        if _finder is not None:
            try:
                sys.meta_path.remove(_finder)
            except ValueError:
                pass
            _finder = None
        for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
            if getattr(sys.modules[name], "__name__", "").split(".")[0] == TARGET:
                del sys.modules[name]


# ================================================================ post-import hooks

_pending: dict[str, list[Callable[[Any], None]]] = {}


class _WrapLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, callbacks: list[Callable[[Any], None]]) -> None:
        self._loader = loader
        self._callbacks = callbacks

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        for cb in self._callbacks:
            try:
                cb(module)
            except Exception:  # a hook must never break the program's import
                from bu_osprofiler._log import warn_limited

                warn_limited("post-import", "bu_osprofiler hook for %s failed",
                             module.__name__, exc_info=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        callbacks = _pending.get(fullname)
        if not callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    del _pending[fullname]
                    spec.loader = _WrapLoader(spec.loader, callbacks)
                return spec
        return None


_post_finder: Optional[_PostImportFinder] = None


def when_imported(module_name: str, callback: Callable[[Any], None]) -> None:
    """Call ``callback(module)`` once ``module_name`` is imported (now, if it already is)."""
    global _post_finder
    mod = sys.modules.get(module_name)
    if mod is not None:
        callback(mod)
        return
    with _lock:
        _pending.setdefault(module_name, []).append(callback)
        if _post_finder is None:
            _post_finder = _PostImportFinder()
            sys.meta_path.insert(0, _post_finder)


# ================================================================ process start (sitecustomize)

def bootstrap() -> None:
    """Run by ``_bootstrap/sitecustomize.py`` at interpreter start under bu-osprofiler-run."""
    install_as_osprofiler()
    service = os.environ.get(ENV_SERVICE)
    if not service:
        return
    import bu_osprofiler

    bu_osprofiler.configure(service_name=service,
                            connection_string=os.environ.get(ENV_CONNECTION) or None)
    from bu_osprofiler import web

    web.enable()
    if os.environ.get(ENV_RPC, "1") == "1":
        when_imported("oslo_messaging", _install_messaging)
    if os.environ.get(ENV_REQUESTS, "0") == "1":
        when_imported("requests", _install_requests)


def _install_messaging(_module: Any) -> None:
    from bu_osprofiler import messaging

    messaging.install()


def _install_requests(_module: Any) -> None:
    from bu_osprofiler import requests as _requests

    _requests.enable()


# ================================================================ the console script

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bu-osprofiler-run",
        description="Run COMMAND with `import osprofiler` resolving to bu_osprofiler. "
                    "Services configured with oslo.config trace as their [profiler] section "
                    "says; --service-name configures tracing for other programs.")
    p.add_argument("--service-name", help="trace this program as SERVICE (configures the "
                   "exporter at start-up instead of [profiler] / init_from_conf)")
    p.add_argument("--connection-string", help="where spans go (with --service-name), e.g. "
                   "jaeger://127.0.0.1:6831 or otlp://127.0.0.1:4318")
    p.add_argument("--no-rpc", action="store_true",
                   help="with --service-name: do not install the oslo.messaging hooks")
    p.add_argument("--trace-requests", action="store_true",
                   help="with --service-name: trace outgoing python-requests calls")
    p.add_argument("command", nargs="?", help="program to run (looked up on PATH)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``bu-osprofiler-run [OPTIONS] COMMAND [ARGS...]``: exec COMMAND with the hook set up."""
    parser = _parser()
    ns = parser.parse_args(argv)
    if not ns.command:
        parser.error("no COMMAND given: name the program to run, e.g. "
                     "bu-osprofiler-run nova-api --config-file /etc/nova/nova.conf")
    exe = shutil.which(ns.command)
    if exe is None:
        print("bu-osprofiler-run: %s: command not found" % ns.command, file=sys.stderr)
        return 127
    env = os.environ.copy()
    path = env.get("PYTHONPATH")
    parts = [p for p in (path.split(os.pathsep) if path else []) if p != BOOTSTRAP_DIR]
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR] + parts)
    env[ENV_RUN] = "1"
    if ns.service_name:
        env[ENV_SERVICE] = ns.service_name
        if ns.connection_string:
            env[ENV_CONNECTION] = ns.connection_string
        env[ENV_RPC] = "0" if ns.no_rpc else "1"
        env[ENV_REQUESTS] = "1" if ns.trace_requests else "0"
    try:
        os.execve(exe, [ns.command] + list(ns.args), env)
    except OSError as exc:
        print("bu-osprofiler-run: %s: %s" % (ns.command, exc.strerror), file=sys.stderr)
        return 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
