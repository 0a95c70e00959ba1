"""Fork and join: concurrency-correct trace context (the model is in the fork-join spec).

A *fork* is where a span starts work that runs concurrently with it; the concurrent work is a
*branch* whose outermost span (``thread:<qualname>``, ``greenthread:<qualname>``,
``task:<qualname>``) is a CHILD_OF the forking span and carries the tag ``fork=True``.  A *join* is
where a span waits for branches: a ``join`` span, CHILD_OF the waiting span, with one FOLLOWS_FROM
reference per branch it waited for, lasting exactly as long as the wait.  Together these edges let
:mod:`bu_osprofiler.analysis` rebuild the request's DAG and critical path.

Explicit API::

    branch = profiler.fork()              # in the parent
    pool.submit(branch.run, work, arg)    # or `with branch:` inside the concurrent code
    ...
    with profiler.joining(branch):        # around the wait; or profiler.join(branch) after it
        done.wait()

Automatic integration: :func:`install` patches ``threading.Thread`` (start / join),
``concurrent.futures`` thread pools (submit, map, Future.result / exception, wait, as_completed),
eventlet (spawn, spawn_n, spawn_after, GreenThread.wait, GreenPool spawn / spawn_n / waitall /
imap / starmap; with or without monkey patching) and asyncio (create_task / ensure_future /
gather branches; ``await task``, gather, wait, TaskGroup and run_until_complete joins).
:func:`uninstall` restores them.

Cost model: nothing is done unless a *sampled* span is active where the work is forked (one C
call and a compare otherwise), and a branch only carries the forking span, never the caller's other
context variables, so the application behaves the same whether or not a request is traced.
The tracer never raises into the application and never changes its results or exceptions.
"""
from __future__ import annotations

import functools
import importlib.abc
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from bu_osprofiler import _core
from bu_osprofiler import profiler as _profiler
from bu_osprofiler._log import warn_limited

__all__ = ["Branch", "fork", "join", "joining", "install", "uninstall", "installed"]

T = TypeVar("T")

_active = _core.active_span
_activate = _core.activate
_deactivate = _core.deactivate
_start_span = _core.start_span
_time_ns = time.time_ns          # CLOCK_REALTIME, the clock span start times use
_hmac_var = _profiler._hmac_key  # carried into branches so legacy header helpers keep working

# Threads started by these modules are long-lived workers, not branches of the request that
# happened to start them (their tasks fork on their own, e.g. through ThreadPoolExecutor.submit).
_UNTRACED_THREAD_MODULES = ("concurrent.futures", "multiprocessing", "eventlet.tpool",
                            "bu_osprofiler")

_NEW, _RUNNING, _DONE = 0, 1, 2


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


# ---------------------------------------------------------------- patch bookkeeping

_MISSING = object()
_patches: list[tuple[Any, str, Any]] = []
_lock = threading.RLock()
_installed = False
_hook: Optional["_ImportHook"] = None
_patched_modules: set[str] = set()


def _patch(owner: Any, attr: str, make: Callable[[Any], Any]) -> None:
    """Replace ``owner.attr`` by ``make(original)``, remembering how to undo it."""
    raw = vars(owner).get(attr, _MISSING)
    orig = getattr(owner, attr)
    new = make(orig)
    try:
        functools.update_wrapper(new, orig)
    except (AttributeError, TypeError):
        pass
    new.__bu_original__ = orig
    setattr(owner, attr, new)
    _patches.append((owner, attr, raw))


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
    owner = target if target is not None else type(thread)
    mod = getattr(owner, "__module__", None)
    return isinstance(mod, str) and mod.startswith(_UNTRACED_THREAD_MODULES)


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


def _make_thread_join(orig: Callable[..., Any]) -> Callable[..., Any]:
    return _make_joining_wait(orig, lambda t: not t.is_alive())


def _install_threading() -> None:
    _patch(threading.Thread, "start", _make_thread_start)
    _patch(threading.Thread, "join", _make_thread_join)


# ---------------------------------------------------------------- concurrent.futures

def _make_submit(orig: Callable[..., Any]) -> Callable[..., Any]:
    def submit(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        parent = _active()
        if parent is None or not parent.sampled or _explicit(fn):
            return orig(self, fn, *args, **kwargs)
        branch = Branch(parent, "thread", fn, None, _hmac_var.get())
        fut = orig(self, _BranchCall(branch, fn), *args, **kwargs)
        try:
            fut._bu_branch = branch
        except Exception:
            pass
        return fut

    return submit


def _make_future_wait(orig: Callable[..., Any]) -> Callable[..., Any]:
    # Future.result / Future.exception
    return _make_joining_wait(orig, lambda f: f.done())


def _future_branch(f: Any) -> Any:
    try:
        return f.__dict__.get("_bu_branch")
    except Exception:
        return None


def _make_cf_wait(orig: Callable[..., Any]) -> Callable[..., Any]:
    def wait(fs: Iterable[Any], timeout: Optional[float] = None,
             return_when: str = "ALL_COMPLETED") -> Any:
        waiter = _traced()
        if waiter is None:
            return orig(fs, timeout, return_when)
        fs = list(fs)
        t0 = _time_ns()
        result = orig(fs, timeout, return_when)
        _record_join(waiter, t0, [_future_branch(f) for f in result.done])
        return result

    return wait


def _make_as_completed(orig: Callable[..., Any]) -> Callable[..., Any]:
    def as_completed(fs: Iterable[Any], timeout: Optional[float] = None) -> Iterator[Any]:
        waiter = _traced()
        if waiter is None:
            return orig(fs, timeout)
        return _as_completed_joins(waiter, orig(fs, timeout))

    return as_completed


def _as_completed_joins(waiter: Any, it: Iterator[Any]) -> Iterator[Any]:
    # One join per future handed out, lasting from the request for it to its delivery.
    try:
        while True:
            t0 = _time_ns()
            try:
                f = next(it)
            except StopIteration:
                return
            _record_join(waiter, t0, (_future_branch(f),))
            yield f
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _install_futures() -> None:
    import concurrent.futures as cf
    import concurrent.futures._base as cfb

    _patch(cf.ThreadPoolExecutor, "submit", _make_submit)
    _patch(cfb.Future, "result", _make_future_wait)
    _patch(cfb.Future, "exception", _make_future_wait)
    for mod in (cf, cfb):
        _patch(mod, "wait", _make_cf_wait)
        _patch(mod, "as_completed", _make_as_completed)


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
            lst[:] = [b for b in lst if b._claim][-_POOL_PRUNE * 8:]
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
            if parent is None or not parent.sampled or _is_branch_call(func, args):
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
        if branch is None or not branch._claim:
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
            branches[:] = [b for b in branches if b._claim]

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


def _install_eventlet() -> None:
    import contextvars

    import eventlet
    import eventlet.greenpool as gp
    import eventlet.greenthread as gth

    global _carry_var
    if _carry_var is None:
        _carry_var = contextvars.ContextVar("bu_osprofiler.eventlet_carry", default=None)
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
            if _installed and "eventlet" not in _patched_modules:
                try:
                    _install_eventlet()
                except Exception:
                    warn_limited("eventlet", "could not patch eventlet for fork/join",
                                 exc_info=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _ImportHook(importlib.abc.MetaPathFinder):
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


# ---------------------------------------------------------------- asyncio

_BranchTask: Any = None


def _define_branch_task(asyncio: Any) -> Any:
    task_await = asyncio.Task.__await__

    class BranchTask(asyncio.Task):  # type: ignore[misc]
        """A task forked from a traced span: ``await task`` records the join."""

        __slots__ = ("_bu_branch",)

        def __await__(self) -> Any:
            branch = self._bu_branch
            if branch._claim:
                waiter = _traced()
                if waiter is not None:
                    t0 = _time_ns()
                    try:
                        return (yield from task_await(self))
                    finally:
                        if self.done():
                            _record_join(waiter, t0, (branch,))
            return (yield from task_await(self))

        __iter__ = __await__

    BranchTask.__qualname__ = BranchTask.__name__ = "Task"
    BranchTask.__module__ = "bu_osprofiler.concurrency"
    return BranchTask


async def _task_main(branch: Branch, coro: Any) -> Any:
    with branch:
        return await coro


def _make_create_task(orig: Callable[..., Any], asyncio: Any) -> Callable[..., Any]:
    iscoroutine = asyncio.iscoroutine
    branch_task = _BranchTask

    def create_task(self: Any, coro: Any, *, name: Any = None, context: Any = None,
                    **kwargs: Any) -> Any:
        parent = _active()
        if (parent is None or not parent.sampled or kwargs or self._task_factory is not None
                or not iscoroutine(coro)):
            if kwargs or context is not None:
                return orig(self, coro, name=name, context=context, **kwargs)
            return orig(self, coro, name=name)
        self._check_closed()
        branch = Branch(parent, "task", coro, None, _hmac_var.get())
        main = _task_main(branch, coro)
        try:
            main.__qualname__ = coro.__qualname__
            main.__name__ = coro.__name__
        except Exception:
            pass
        if context is None:
            task = branch_task(main, loop=self, name=name)
        else:
            task = branch_task(main, loop=self, name=name, context=context)
        task._bu_branch = branch
        if task._source_traceback:
            del task._source_traceback[-1]
        return task

    return create_task


def _task_branch(f: Any) -> Any:
    return f._bu_branch if type(f) is _BranchTask else None


def _make_gather(orig: Callable[..., Any]) -> Callable[..., Any]:
    def gather(*aws: Any, **kwargs: Any) -> Any:
        waiter = _traced()
        if waiter is None:
            return orig(*aws, **kwargs)
        t0 = _time_ns()
        outer = orig(*aws, **kwargs)
        try:
            branches = [_task_branch(c) for c in (getattr(outer, "_children", None) or ())]
            branches = [b for b in branches if b is not None]
            if branches:
                outer.add_done_callback(functools.partial(_gather_done, waiter, t0, branches))
        except Exception:
            warn_limited("gather", "could not follow an asyncio.gather", exc_info=True)
        return outer

    return gather


def _gather_done(waiter: Any, t0: int, branches: list, _fut: Any) -> None:
    _record_join(waiter, t0, branches)


def _make_aio_wait(orig: Callable[..., Any], asyncio: Any) -> Callable[..., Any]:
    def wait(fs: Any, *args: Any, **kwargs: Any) -> Any:
        waiter = _traced()
        if waiter is None or asyncio.isfuture(fs) or asyncio.iscoroutine(fs):
            return orig(fs, *args, **kwargs)
        return _traced_aio_wait(orig, waiter, fs, args, kwargs)

    return wait


async def _traced_aio_wait(orig: Any, waiter: Any, fs: Any, args: tuple, kwargs: dict) -> Any:
    fs = set(fs)
    t0 = _time_ns()
    done, pending = await orig(fs, *args, **kwargs)
    _record_join(waiter, t0, [_task_branch(f) for f in done])
    return done, pending


def _make_tg_create_task(orig: Callable[..., Any]) -> Callable[..., Any]:
    def create_task(self: Any, coro: Any, **kwargs: Any) -> Any:
        task = orig(self, coro, **kwargs)
        if type(task) is _BranchTask:
            lst = self.__dict__.get("_bu_branches")
            if lst is None:
                lst = self._bu_branches = []
            lst.append(task._bu_branch)
        return task

    return create_task


def _make_tg_aexit(orig: Callable[..., Any]) -> Callable[..., Any]:
    def __aexit__(self: Any, et: Any, exc: Any, tb: Any) -> Any:
        branches = self.__dict__.get("_bu_branches")
        waiter = _traced() if branches else None
        if waiter is None:
            return orig(self, et, exc, tb)
        return _traced_tg_exit(orig(self, et, exc, tb), waiter, branches)

    return __aexit__


async def _traced_tg_exit(aexit: Any, waiter: Any, branches: list) -> Any:
    t0 = _time_ns()
    try:
        return await aexit
    finally:
        _record_join(waiter, t0, branches)


def _make_run_until_complete(orig: Callable[..., Any]) -> Callable[..., Any]:
    # asyncio.run(main()) from a traced caller: main's task is a branch the caller waits for
    def run_until_complete(self: Any, future: Any) -> Any:
        if type(future) is not _BranchTask or not future._bu_branch._claim:
            return orig(self, future)
        waiter = _traced()
        if waiter is None:
            return orig(self, future)
        t0 = _time_ns()
        try:
            return orig(self, future)
        finally:
            if future.done():
                _record_join(waiter, t0, (future._bu_branch,))

    return run_until_complete


def _install_asyncio() -> None:
    import asyncio
    import asyncio.base_events as be
    import asyncio.tasks as at

    global _BranchTask
    if _BranchTask is None:
        _BranchTask = _define_branch_task(asyncio)
    _patch(be.BaseEventLoop, "create_task", lambda o: _make_create_task(o, asyncio))
    _patch(be.BaseEventLoop, "run_until_complete", _make_run_until_complete)
    for mod in (asyncio, at):
        _patch(mod, "gather", _make_gather)
        _patch(mod, "wait", lambda o: _make_aio_wait(o, asyncio))
    tg = getattr(asyncio, "TaskGroup", None)
    if tg is not None:
        _patch(tg, "create_task", _make_tg_create_task)
        _patch(tg, "__aexit__", _make_tg_aexit)


# ---------------------------------------------------------------- install / uninstall

def install() -> None:
    """Patch threading, concurrent.futures, asyncio and eventlet (now if it is imported, else
    as soon as it is) so that spawning work forks and waiting for it joins. Idempotent."""
    global _installed, _hook
    with _lock:
        if _installed:
            return
        _installed = True
        try:
            _install_threading()
            _install_futures()
            _install_asyncio()
            if "eventlet" in sys.modules:
                _install_eventlet()
            else:
                _hook = _ImportHook()
                sys.meta_path.insert(0, _hook)
        except Exception:
            _uninstall_locked()
            raise


def uninstall() -> None:
    """Undo :func:`install`: every patched function is restored. Idempotent."""
    with _lock:
        _uninstall_locked()


def _uninstall_locked() -> None:
    global _installed, _hook
    while _patches:
        owner, attr, raw = _patches.pop()
        try:
            if raw is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, raw)
        except Exception:
            warn_limited("uninstall", "could not restore %r.%s", owner, attr)
    if _hook is not None:
        try:
            sys.meta_path.remove(_hook)
        except ValueError:
            pass
        _hook = None
    _patched_modules.clear()
    _installed = False


def installed() -> bool:
    """True while the automatic integration is installed."""
    return _installed
