"""threading.Thread: start forks a branch, join joins it."""
from __future__ import annotations

import threading
from typing import Any, Callable

from bu_osprofiler.concurrency.branches import (
    Branch, _active, _explicit, _hmac_var, _make_joining_wait, _unforked, serves_process)
from bu_osprofiler.concurrency.patching import _MISSING, _patch

# ---------------------------------------------------------------- threading

class _ThreadRun:
    """Instance-level ``run`` of a forked Thread: the original run as the branch."""

    __slots__ = ("thread", "branch", "run", "prev")

    def __init__(self, thread: threading.Thread, branch: Branch) -> None:
        self.thread = thread
        self.branch = branch
        self.prev = thread.__dict__.get("run", _MISSING)
        self.run = thread.run

    def __call__(self) -> None:
        try:
            self.branch.run(self.run)
        finally:
            self.restore()

    def restore(self) -> None:
        thread = self.thread
        if thread is None:
            return
        d = thread.__dict__
        if d.get("run") is self:
            if self.prev is _MISSING:
                del d["run"]
            else:
                d["run"] = self.prev
        self.thread = self.run = None  # no reference cycle through the thread


def _untraced_thread(thread: threading.Thread, target: Any) -> bool:
    return serves_process(target if target is not None else type(thread).run)


def _make_thread_start(orig: Callable[..., Any]) -> Callable[..., Any]:
    def start(self: threading.Thread) -> None:
        parent = _active()
        if parent is None or not parent.sampled:
            return orig(self)
        target = getattr(self, "_target", None)
        if "_bu_branch" in self.__dict__ or _untraced_thread(self, target) or _explicit(target):
            return _unforked(orig, self)
        branch = Branch(parent, "thread", target if target is not None else type(self).run,
                        None, _hmac_var.get())
        runner = _ThreadRun(self, branch)
        self._bu_branch = branch
        self.run = runner  # type: ignore[method-assign]
        try:
            return _unforked(orig, self)
        except BaseException:
            runner.restore()
            self.__dict__.pop("_bu_branch", None)
            raise

    return start




def _make_thread_join(orig: Callable[..., Any]) -> Callable[..., Any]:
    return _make_joining_wait(orig, lambda t: not t.is_alive())


def install() -> None:
    _patch(threading.Thread, "start", _make_thread_start)
    _patch(threading.Thread, "join", _make_thread_join)


