"""Branches and joins: the fork/join model's core (explicit API and the helpers every
integration shares)."""
from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from bu_osprofiler import _core
from bu_osprofiler import profiler as _profiler
from bu_osprofiler._log import warn_limited

T = TypeVar("T")

_active = _core.active_span
_activate = _core.activate
_deactivate = _core.deactivate
_start_span = _core.start_span
_time_ns = time.time_ns          # CLOCK_REALTIME, the clock span start times use
_hmac_var = _profiler._hmac_key  # carried into branches so legacy header helpers keep working

_NEW, _RUNNING, _DONE = 0, 1, 2


# ---------------------------------------------------------------- process work vs request work

# Packages whose threads, greenthreads and loop tasks serve the process (pool workers, RPC
# listeners, reply waiters, heartbeats, timers, loop housekeeping). Work they start is never a
# branch of the request that happened to be active when they started it lazily; the tasks such
# pools run fork on their own (e.g. through submit). See doc/fork-join.md.
SERVICE_PACKAGES = [
    "threading", "concurrent.futures", "multiprocessing", "asyncio", "eventlet", "greenlet",
    "futurist", "oslo_messaging", "oslo_service", "oslo_concurrency", "oslo_log", "oslo_db",
    "oslo_privsep", "kombu", "amqp", "pika", "logging", "socketserver", "cotyledon",
    "bu_osprofiler",
]


def _module_of(fn: Any) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "cr_frame", None)  # a coroutine: the module it was defined in
    if code is not None:
        return str(code.f_globals.get("__name__", ""))
    mod = getattr(fn, "__module__", None)
    return mod if isinstance(mod, str) else type(fn).__module__


def serves_process(fn: Any) -> bool:
    """True when ``fn`` (a thread target, a spawned callable, a coroutine) belongs to a package
    that serves the process (:data:`SERVICE_PACKAGES`): starting it does not fork a branch."""
    try:
        mod = _module_of(fn)
    except Exception:
        return False
    for pkg in SERVICE_PACKAGES:
        if mod == pkg or mod.startswith(pkg + "."):
            return True
    return False


# ---------------------------------------------------------------- names

def _qualname(fn: Any) -> str:
    """What runs in a branch, for its span name: the callable's or coroutine's qualname."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, _BranchCall):
        fn = fn.fn
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not isinstance(name, str):
        name = type(fn).__qualname__
    return name


def _frame_qualname(frame: Any) -> str:
    code = frame.f_code
    return getattr(code, "co_qualname", code.co_name)


def _detect_kind() -> str:
    """thread / greenthread / task: what kind of concurrent unit the caller runs in."""
    aio = sys.modules.get("asyncio")
    if aio is not None:
        try:
            if aio._get_running_loop() is not None and aio.current_task() is not None:
                return "task"
        except Exception:
            pass
    gl = sys.modules.get("greenlet")
    if gl is not None:
        try:
            if gl.getcurrent().parent is not None:
                return "greenthread"
        except Exception:
            pass
    return "thread"


# ---------------------------------------------------------------- branches

class Branch:
    """A forked unit of concurrent work (returned by :func:`fork`).

    Enter it (``with branch:``) or call :meth:`run` in the concurrent code: the branch span
    starts, becomes the active span there, and finishes when the block / call ends (an exception
    marks it ``error=True`` and propagates unchanged).  A branch runs once; re-entering it runs
    the code without a second span.  ``span`` is the branch span once the branch has started.
    """

    __slots__ = ("parent", "kind", "target", "name", "span", "_hmac", "_token", "_htoken",
                 "_claim", "_state", "_extra")

    def __init__(self, parent: Any, kind: Optional[str] = None, target: Any = None,
                 name: Optional[str] = None, hmac: Optional[str] = None) -> None:
        self.parent = parent
        self.kind = kind
        self.target = target
        self.name = name
        self.span: Any = None
        self._hmac = hmac
        self._token: Any = None
        self._htoken: Any = None
        self._claim = [None]  # popped by the one join that records this branch (atomic)
        self._state = _NEW
        self._extra = 0

    @property
    def joined(self) -> bool:
        return not self._claim

    @property
    def finished(self) -> bool:
        return self._state == _DONE

    def __repr__(self) -> str:
        state = ("new", "running", "finished")[self._state]
        return "<Branch %s %s>" % (self.name or self.kind or "?", state)

    def __enter__(self) -> "Branch":
        return self._begin()

    def _begin(self) -> "Branch":
        # (frames: _begin, __enter__ / __aenter__, then the code that entered the branch)
        if self._state != _NEW:
            self._extra += 1
            warn_limited("branch-reuse", "a fork() branch was entered more than once; "
                         "only its first run is recorded")
            return self
        self._state = _RUNNING
        try:
            name = self.name
            if name is None:
                kind = self.kind or _detect_kind()
                target = self.target
                what = (_qualname(target) if target is not None
                        else _frame_qualname(sys._getframe(2)))
                name = kind + ":" + what
            self.target = None  # named: no need to keep what ran (or a cycle through it)
            span = _start_span(name, self.parent)  # (positional + set_tag: the fast paths)
            span.set_tag("fork", True)
            self._token = _activate(span)
            self.span = span
            if self._hmac is not None:
                self._htoken = _hmac_var.set(self._hmac)
        except Exception:
            self._state = _DONE
            warn_limited("branch-start", "could not start a branch span", exc_info=True)
        return self

    def __exit__(self, etype: Any, exc: Any, tb: Any) -> bool:
        if self._extra:
            self._extra -= 1
            return False
        if self._state != _RUNNING:
            return False
        span = self.span
        try:
            if exc is not None:
                span.__exit__(etype, exc, tb)  # error tag + error log, then finish
            else:
                span.finish()
        except Exception:
            warn_limited("branch-finish", "could not finish a branch span", exc_info=True)
        self._state = _DONE
        try:
            if self._htoken is not None:
                _hmac_var.reset(self._htoken)
                self._htoken = None
            token, self._token = self._token, None
            _deactivate(token)
        except Exception:  # e.g. entered and left in different contexts
            warn_limited("branch-context", "a branch was left in another context than it was "
                         "entered in; its span was not deactivated")
        return False

    async def __aenter__(self) -> "Branch":
        return self._begin()

    async def __aexit__(self, etype: Any, exc: Any, tb: Any) -> bool:
        return self.__exit__(etype, exc, tb)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` as this branch and return (or raise) what it does."""
        if self.target is None:
            self.target = fn
        with self:
            return fn(*args, **kwargs)


class _NullBranch:
    """The branch of untraced work: runs the code and records nothing."""

    __slots__ = ()
    span = None
    parent = None
    joined = True
    finished = True

    def __enter__(self) -> "_NullBranch":
        return self

    def __exit__(self, etype: Any, exc: Any, tb: Any) -> bool:
        return False

    async def __aenter__(self) -> "_NullBranch":
        return self

    async def __aexit__(self, etype: Any, exc: Any, tb: Any) -> bool:
        return False

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)

    def __repr__(self) -> str:
        return "<Branch untraced>"


_NULL_BRANCH = _NullBranch()


def fork(name: Optional[str] = None) -> Any:
    """Fork a branch of the active span, to be run (``with branch:`` / ``branch.run``) elsewhere.

    ``name`` defaults to ``<thread|greenthread|task>:<qualname>`` of what the branch runs. Without
    an active sampled span this returns an inert branch that only runs the code.
    """
    parent = _active()
    if parent is None or not parent.sampled:
        return _NULL_BRANCH
    return Branch(parent, None, None, name, _hmac_var.get())


def _branches_of(objs: Iterable[Any]) -> Iterator[Branch]:
    """The branches behind join() arguments: Branch handles, or threads, futures, greenthreads
    and tasks forked by the automatic integration; lists / tuples of those are flattened."""
    for o in objs:
        if isinstance(o, Branch):
            yield o
        elif isinstance(o, (list, tuple, set, frozenset)):
            yield from _branches_of(o)
        else:
            try:
                b = getattr(o, "_bu_branch", None)
            except Exception:
                b = None
            if isinstance(b, Branch):
                yield b


def _record_join(waiter: Any, t0_ns: int, branches: Iterable[Any], started: bool = False) -> None:
    """Record a ``join`` span from ``t0_ns`` to now, CHILD_OF ``waiter``, FOLLOWS_FROM every
    branch of ``branches`` not joined yet that has finished (or ``started``, for explicit
    joins). Each branch is joined at most once, and only by a span of its own trace (a future
    shared between requests is the business of the request that forked it). Never raises."""
    try:
        refs = []
        trace_id = None
        for b in branches:
            if b is None:
                continue
            st = b._state
            if st == _DONE or (started and st == _RUNNING):
                span = b.span
                if span is None:
                    continue
                if b.parent is not waiter:
                    if trace_id is None:
                        trace_id = waiter.trace_id
                    if span.trace_id != trace_id:
                        continue
                try:
                    b._claim.pop()
                except IndexError:  # another wait recorded it already
                    continue
                refs.append(("follows_from", span))
        if refs:
            # start_span(operation_name, child_of, references, tags, start_time)
            span = _start_span("join", waiter, refs, None, t0_ns / 1e9)
            span.finish(_time_ns() / 1e9)
    except Exception:
        warn_limited("join", "could not record a join span", exc_info=True)


def join(*branches: Any) -> None:
    """Record that the active span has waited for ``branches`` (a join span of ~0 duration).

    Use :func:`joining` around the wait instead to record how long the wait took.
    """
    waiter = _active()
    if waiter is None or not waiter.sampled:
        return
    if len(branches) == 1 and type(branches[0]) is Branch:
        _record_join(waiter, _time_ns(), branches, started=True)
    else:
        _record_join(waiter, _time_ns(), _branches_of(branches), started=True)


class joining:
    """Context manager around a wait for ``branches``: records the join span over the block."""

    __slots__ = ("_branches", "_waiter", "_t0")

    def __init__(self, *branches: Any) -> None:
        self._branches = branches
        self._waiter: Any = None
        self._t0 = 0

    def __enter__(self) -> "joining":
        waiter = _active()
        if waiter is not None and waiter.sampled:
            self._waiter = waiter
            self._t0 = _time_ns()
        return self

    def __exit__(self, etype: Any, exc: Any, tb: Any) -> bool:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _record_join(waiter, self._t0, _branches_of(self._branches), started=True)
        return False

    async def __aenter__(self) -> "joining":
        return self.__enter__()

    async def __aexit__(self, etype: Any, exc: Any, tb: Any) -> bool:
        return self.__exit__(etype, exc, tb)


# ---------------------------------------------------------------- callables run in branches

class _BranchCall:
    """``fn`` wrapped to run as ``branch`` (what the integrations hand to the spawner)."""

    __slots__ = ("branch", "fn")

    def __init__(self, branch: Branch, fn: Callable[..., Any]) -> None:
        self.branch = branch
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.branch.run(self.fn, *args, **kwargs)

    def __repr__(self) -> str:
        return "<branch of %r>" % (self.fn,)


class _Carry:
    """``fn`` run with ``span`` active but no branch span (spawner internals, e.g. imap's
    producer greenthread, whose own spawns are the real branches)."""

    __slots__ = ("span", "fn")

    def __init__(self, span: Any, fn: Callable[..., Any]) -> None:
        self.span = span
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = _activate(self.span)
        try:
            return self.fn(*args, **kwargs)
        finally:
            try:
                _deactivate(token)
            except Exception:
                pass


def _explicit(fn: Any) -> bool:
    """True for ``branch.run`` handed to a spawner: the explicit branch is the branch."""
    return isinstance(getattr(fn, "__self__", None), (Branch, _NullBranch))


def _traced() -> Any:
    """The active span when it is sampled, else None (the one check on every untraced path)."""
    span = _active()
    if span is None or not span.sampled:
        return None
    return span


def _unforked(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn`` with no active span: what it spawns is not a branch (e.g. the greenthread
    under a monkey-patched Thread, which is the Thread's branch already)."""
    token = _activate(None)
    try:
        return fn(*args)
    finally:
        _deactivate(token)


def _make_joining_wait(orig: Callable[..., Any],
                       finished: Callable[[Any], bool]) -> Callable[..., Any]:
    """A wait on one forked branch (Thread.join, Future.result / exception) that records the
    join once the branch is ``finished`` (the wait may time out first)."""
    def wait(self: Any, timeout: Optional[float] = None) -> Any:
        branch = self.__dict__.get("_bu_branch")
        if branch is None or not branch._claim:
            return orig(self, timeout)
        waiter = _traced()
        if waiter is None:
            return orig(self, timeout)
        t0 = _time_ns()
        try:
            return orig(self, timeout)
        finally:
            if finished(self):
                _record_join(waiter, t0, (branch,))

    return wait
