"""eventlet: spawn / spawn_n / spawn_after and GreenPool fork, GreenThread.wait and
GreenPool.waitall join (patched at install, or as soon as eventlet is imported)."""
from __future__ import annotations

import functools
import importlib.abc
import sys
from typing import Any, Callable

from bu_osprofiler import _core
from bu_osprofiler.concurrency import patching
from bu_osprofiler.concurrency.branches import (
    Branch, _BranchCall, _Carry, _activate, _active, _deactivate, _explicit, _hmac_var,
    _record_join, _time_ns, _traced, serves_process)
from bu_osprofiler.concurrency.patching import _lock, _patch, _patched_modules
from bu_osprofiler._log import warn_limited

# ---------------------------------------------------------------- eventlet

_POOL_PRUNE = 256


def _pool_register(pool: Any, branch: Branch) -> None:
    """Remember a GreenPool's branch for waitall(); joined / old entries are dropped."""
    try:
        lst = pool.__dict__.get("_bu_branches")
        if lst is None:
            lst = pool._bu_branches = []
        lst.append(branch)
        if len(lst) > _POOL_PRUNE:
            lst[:] = [b for b in lst if not b.joined][-_POOL_PRUNE * 8:]
    except Exception:
        pass


def _is_branch_call(func: Any, args: tuple) -> bool:
    # spawns made by a patched GreenPool method carry the branch already; so does branch.run
    return (type(func) is _BranchCall or (bool(args) and type(args[0]) is _BranchCall)
            or _explicit(func))


_carry_var: Any = None  # ContextVar set by GreenPool.starmap: its producer carries, not forks


def _make_ev_spawn(orig: Callable[..., Any], delayed: bool) -> Callable[..., Any]:
    if delayed:  # spawn_after(seconds, func, *args, **kwargs)
        def spawn_after(seconds: float, func: Callable[..., Any], *args: Any,
                        **kwargs: Any) -> Any:
            parent = _active()
            if (parent is None or not parent.sampled or _is_branch_call(func, args)
                    or serves_process(func)):
                return orig(seconds, func, *args, **kwargs)
            branch = Branch(parent, "greenthread", func, None, _hmac_var.get())
            gt = orig(seconds, _BranchCall(branch, func), *args, **kwargs)
            _set_branch(gt, branch)
            return gt

        return spawn_after

    def spawn(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        parent = _active()
        if parent is None or not parent.sampled or _is_branch_call(func, args):
            return orig(func, *args, **kwargs)
        carry = _carry_var.get()
        if carry is not None:
            return orig(_Carry(carry, func), *args, **kwargs)
        if serves_process(func):
            return orig(func, *args, **kwargs)
        branch = Branch(parent, "greenthread", func, None, _hmac_var.get())
        gt = orig(_BranchCall(branch, func), *args, **kwargs)
        _set_branch(gt, branch)
        return gt

    return spawn


def _set_branch(obj: Any, branch: Branch) -> None:
    try:
        obj._bu_branch = branch
    except Exception:
        pass


def _make_gt_wait(orig: Callable[..., Any]) -> Callable[..., Any]:
    def wait(self: Any) -> Any:
        branch = self.__dict__.get("_bu_branch")
        if branch is None or branch.joined:
            return orig(self)
        waiter = _traced()
        if waiter is None:
            return orig(self)
        t0 = _time_ns()
        try:
            return orig(self)
        finally:
            _record_join(waiter, t0, (branch,))

    return wait


def _make_pool_spawn(orig: Callable[..., Any]) -> Callable[..., Any]:
    # GreenPool.spawn / spawn_n: the branch is also remembered by the pool for waitall()
    def spawn(self: Any, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        parent = _active()
        if (parent is None or not parent.sampled or type(function) is _BranchCall
                or _explicit(function)):
            return orig(self, function, *args, **kwargs)
        branch = Branch(parent, "greenthread", function, None, _hmac_var.get())
        gt = orig(self, _BranchCall(branch, function), *args, **kwargs)
        if gt is not None:
            _set_branch(gt, branch)
        _pool_register(self, branch)
        return gt

    return spawn


def _make_pool_waitall(orig: Callable[..., Any]) -> Callable[..., Any]:
    def waitall(self: Any) -> Any:
        branches = self.__dict__.get("_bu_branches")
        if not branches:
            return orig(self)
        waiter = _traced()
        if waiter is None:
            return orig(self)
        t0 = _time_ns()
        try:
            return orig(self)
        finally:
            # (a pool shared by concurrent requests: each waiter joins its own trace's branches)
            _record_join(waiter, t0, list(branches))
            branches[:] = [b for b in branches if not b.joined]

    return waitall


def _make_pool_starmap(orig: Callable[..., Any]) -> Callable[..., Any]:
    # starmap/imap spawn a producer greenthread that spawns the workers: the producer only
    # carries the caller's span, so that each worker is a branch of the caller.
    def starmap(self: Any, function: Any, iterable: Any) -> Any:
        parent = _traced()
        if parent is None:
            return orig(self, function, iterable)
        token = _carry_var.set(parent)
        try:
            return orig(self, function, iterable)
        finally:
            _carry_var.reset(token)

    return starmap


def _make_unforked(orig: Callable[..., Any]) -> Callable[..., Any]:
    # GreenMap.done_spawning spawns an end-of-results sentinel: not a branch
    def unforked(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _active() is None:
            return orig(self, *args, **kwargs)
        token = _activate(None)
        try:
            return orig(self, *args, **kwargs)
        finally:
            _deactivate(token)

    return unforked


def install() -> None:
    import eventlet
    import eventlet.greenpool as gp
    import eventlet.greenthread as gth

    global _carry_var
    if _carry_var is None:
        _carry_var = _core.context_var("bu_osprofiler.eventlet_carry", None)
    for mod in (eventlet, gth):
        for attr in ("spawn", "spawn_n"):
            if hasattr(mod, attr):
                _patch(mod, attr, functools.partial(_make_ev_spawn, delayed=False))
        for attr in ("spawn_after", "spawn_after_local"):
            if hasattr(mod, attr):
                _patch(mod, attr, functools.partial(_make_ev_spawn, delayed=True))
    _patch(gth.GreenThread, "wait", _make_gt_wait)
    _patch(gp.GreenPool, "spawn", _make_pool_spawn)
    _patch(gp.GreenPool, "spawn_n", _make_pool_spawn)
    _patch(gp.GreenPool, "waitall", _make_pool_waitall)
    _patch(gp.GreenPool, "starmap", _make_pool_starmap)
    if hasattr(gp, "GreenMap"):
        _patch(gp.GreenMap, "done_spawning", _make_unforked)
    _patched_modules.add("eventlet")


class _PatchingLoader(importlib.abc.Loader):
    """Loads eventlet with its own loader, then patches it (eventlet imported after install)."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
            module.__loader__ = self._loader
        with _lock:
            if patching._installed and "eventlet" not in _patched_modules:
                try:
                    install()
                except Exception:
                    warn_limited("eventlet", "could not patch eventlet for fork/join",
                                 exc_info=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class ImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "eventlet":
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _PatchingLoader(spec.loader)
            return spec
        return None


