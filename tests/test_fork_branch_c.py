"""Fork / join through the C Branch (ext/branch.c): the spans, references and tags on the wire
for inline, thread, eventlet and asyncio branches, and hostile use that must never crash.

The exported DAG is the fork/join model of doc/fork-join.md: a branch span CHILD_OF the forking
span with tag fork=True, named <kind>:<qualname>; a ``join`` span CHILD_OF the waiter whose
references are exactly [child_of waiter, follows_from branch...]; each branch joined once.
"""
import asyncio
import contextvars
import gc
import logging
import sys
import threading
import warnings

import pytest

import bu_osprofiler
from bu_osprofiler import _core, concurrency, profiler
from bu_osprofiler.concurrency import Branch


@pytest.fixture
def installed():
    concurrency.install()
    try:
        yield
    finally:
        concurrency.uninstall()


def request(body, name="request"):
    root = bu_osprofiler.start_span(name)
    token = bu_osprofiler.activate(root)
    try:
        result = body()
    finally:
        bu_osprofiler.deactivate(token)
        root.finish()
    return root, result


def wire():
    """What is exported, reduced to the DAG: name -> (parent id, tags, [(kind, span id)])."""
    out = {}
    for s in bu_osprofiler.finished_spans():
        refs = [(k, c.span_id) for k, c in s.references]
        out.setdefault(s.operation_name, []).append((s, refs))
    return out


def check_branch_and_join(root, name, waiter=None):
    """One branch `name` of `root` and one join span of `waiter` (default root) waiting for it."""
    waiter = waiter or root
    spans = wire()
    [(branch, brefs)] = spans[name]
    [(join, jrefs)] = spans["join"]
    assert branch.parent_id == root.span_id and branch.trace_id == root.trace_id
    assert dict(branch.tags) == {"fork": True} and brefs == []
    assert join.parent_id == waiter.span_id and dict(join.tags) == {}
    assert jrefs == [("child_of", waiter.span_id), ("follows_from", branch.span_id)]
    assert join.end_ns >= join.start_ns >= root.start_ns
    return branch, join


def named_fn():
    return 42


# ---------------------------------------------------------------- the same DAG as before


def test_branch_is_the_c_type():
    assert Branch is _core.Branch
    assert profiler.fork is _core.fork and profiler.join is _core.join


def test_inline_fork_run_join():
    def body():
        b = profiler.fork()
        assert b.run(named_fn) == 42
        assert b.finished and not b.joined
        profiler.join(b)
        assert b.joined
        profiler.join(b)  # joined once
        return b

    root, b = request(body)
    branch, _ = check_branch_and_join(root, "thread:named_fn")
    assert b.span.span_id == branch.span_id


def test_inline_with_branch_named_after_the_enclosing_code():
    def body():
        b = profiler.fork()
        with b:
            assert bu_osprofiler.active_span() is b.span
        assert bu_osprofiler.active_span().operation_name == "request"
        with profiler.joining(b):
            pass

    root, _ = request(body)
    if sys.version_info >= (3, 11):  # code objects have co_qualname
        name = "thread:test_inline_with_branch_named_after_the_enclosing_code.<locals>.body"
    else:
        name = "thread:body"
    check_branch_and_join(root, name)


def test_explicit_name_kwargs_and_hmac_key():
    seen = {}

    def work(a, b=0):
        seen["hmac"] = profiler._hmac_key.get()
        seen["active"] = bu_osprofiler.active_span()
        return a + b

    def body():
        profiler._hmac_key.set("secret")
        b = profiler.fork(name="custom")
        assert b.run(work, 1, b=2) == 3
        profiler.join(b)
        return b

    root, b = request(body)
    check_branch_and_join(root, "custom")
    assert seen == {"hmac": "secret", "active": b.span}


def test_named_after_a_callable_object_by_the_python_policy():
    class Job:
        def __call__(self):
            return "done"

    def body():
        b = profiler.fork()
        assert b.run(Job()) == "done"
        profiler.join([b])  # lists go through the Python unpacking

    root, _ = request(body)
    check_branch_and_join(root, "thread:test_named_after_a_callable_object_by_the_python_policy"
                          ".<locals>.Job")


def test_thread_branch(installed):
    def body():
        t = threading.Thread(target=named_fn)
        t.start()
        t.join()

    root, _ = request(body)
    check_branch_and_join(root, "thread:named_fn")


def test_eventlet_branch(installed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eventlet = pytest.importorskip("eventlet")

    def body():
        return eventlet.spawn(named_fn).wait()

    root, result = request(body)
    assert result == 42
    check_branch_and_join(root, "greenthread:named_fn")


async def acoro(value):
    await asyncio.sleep(0)
    return value


def test_asyncio_branch_and_its_result(installed):
    async def main():
        root = bu_osprofiler.start_span("request")
        tok = bu_osprofiler.activate(root)
        task = asyncio.get_running_loop().create_task(acoro((1, 2)))
        assert task.get_coro().__qualname__ == "acoro"
        assert asyncio.iscoroutine(task.get_coro())
        assert "acoro" in repr(task)
        result = await task
        assert await task == (1, 2)  # awaited twice: one join
        bu_osprofiler.deactivate(tok)
        root.finish()
        return root, result

    root, result = asyncio.run(main())
    assert result == (1, 2)  # a tuple result stays one value
    check_branch_and_join(root, "task:acoro")


def test_asyncio_exception_and_cancel(installed):
    async def fails():
        await asyncio.sleep(0)
        raise KeyError("k")

    async def main():
        root = bu_osprofiler.start_span("request")
        tok = bu_osprofiler.activate(root)
        t1 = asyncio.create_task(fails())
        with pytest.raises(KeyError):
            await t1
        t2 = asyncio.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        t2.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t2
        t3 = asyncio.create_task(acoro(1))
        t3.cancel()  # before it ever ran: no branch span
        with pytest.raises(asyncio.CancelledError):
            await t3
        assert bu_osprofiler.active_span() is root
        bu_osprofiler.deactivate(tok)
        root.finish()
        return root

    root = asyncio.run(main())
    spans = wire()
    [(failed, _)] = spans["task:test_asyncio_exception_and_cancel.<locals>.fails"]
    assert failed.tags["error"] is True and failed.tags["fork"] is True
    assert [log["event"] for _, log in failed.logs] == ["error"]
    [(cancelled, _)] = spans["task:sleep"]
    assert cancelled.tags["error"] is True
    assert "task:acoro" not in spans
    joined = sorted(r[1] for _, refs in spans["join"] for r in refs if r[0] == "follows_from")
    assert joined == sorted([failed.span_id, cancelled.span_id])


def test_asyncio_gather_and_pending_task_destroyed(installed):
    async def main():
        root = bu_osprofiler.start_span("request")
        tok = bu_osprofiler.activate(root)
        assert await asyncio.gather(acoro(1), acoro(2)) == [1, 2]
        bu_osprofiler.deactivate(tok)
        root.finish()
        return root

    root = asyncio.run(main())
    spans = wire()
    assert len(spans["task:acoro"]) == 2
    [(join, jrefs)] = spans["join"]
    assert jrefs[0] == ("child_of", root.span_id)
    assert sorted(r[1] for r in jrefs[1:]) == sorted(s.span_id for s, _ in spans["task:acoro"])


def test_create_task_arguments_and_policy(installed):
    async def main():
        loop = asyncio.get_running_loop()
        root = bu_osprofiler.start_span("request")
        tok = bu_osprofiler.activate(root)
        named = loop.create_task(acoro(1), name="mine")
        assert named.get_name() == "mine" and await named == 1
        if sys.version_info >= (3, 11):  # create_task(context=...)
            ctx_task = loop.create_task(acoro(2), context=contextvars.copy_context())
        else:
            ctx_task = loop.create_task(acoro(2))
        assert await ctx_task == 2
        fut = loop.create_future()
        fut.set_result(3)
        assert await asyncio.ensure_future(fut) == 3  # a future: not a branch
        loop.set_task_factory(lambda lp, coro, **kw: asyncio.Task(coro, loop=lp, **kw))
        plain = loop.create_task(acoro(4))  # a custom factory: no branch
        loop.set_task_factory(None)
        assert await plain == 4
        assert getattr(type(loop).create_task, "__bu_original__", None) is not None
        assert loop.create_task.__name__ == "create_task"
        bu_osprofiler.deactivate(tok)
        root.finish()
        return root

    root = asyncio.run(main())
    assert len(wire()["task:acoro"]) == 2
    closed = asyncio.new_event_loop()
    closed.close()
    root = bu_osprofiler.start_span("request")
    tok = bu_osprofiler.activate(root)
    coro = acoro(5)
    with pytest.raises(RuntimeError, match="closed"):  # as untraced
        closed.create_task(coro)
    coro.close()
    bu_osprofiler.deactivate(tok)
    root.finish()


# ---------------------------------------------------------------- hostile use


def test_callable_that_raises_keeps_its_exception_and_context():
    err = ValueError("boom")

    def bad():
        raise err

    def body():
        b = profiler.fork()
        with pytest.raises(ValueError) as info:
            b.run(bad)
        assert info.value is err
        assert bu_osprofiler.active_span().operation_name == "request"
        profiler.join(b)

    root, _ = request(body)
    branch, _ = check_branch_and_join_error(root, "thread:test_callable_that_raises_keeps_its"
                                            "_exception_and_context.<locals>.bad")
    assert branch.tags["error"] is True


def check_branch_and_join_error(root, name):
    spans = wire()
    [(branch, _)] = spans[name]
    [(join, jrefs)] = spans["join"]
    assert jrefs == [("child_of", root.span_id), ("follows_from", branch.span_id)]
    return branch, join


def test_keyboard_interrupt_propagates_and_the_branch_ends():
    def interrupted():
        raise KeyboardInterrupt

    def body():
        b = profiler.fork("ki")
        with pytest.raises(KeyboardInterrupt):
            b.run(interrupted)
        assert b.finished
        assert bu_osprofiler.active_span().operation_name == "request"

    request(body)
    [(ki, _)] = wire()["ki"]
    assert ki.tags["error"] is True


def test_exception_whose_str_raises_keyboard_interrupt():
    class Nasty(Exception):
        def __str__(self):
            raise KeyboardInterrupt

    def bad():
        raise Nasty()

    def body():
        b = profiler.fork("nasty")
        with pytest.raises(KeyboardInterrupt):
            b.run(bad)
        assert b.finished
        assert bu_osprofiler.active_span().operation_name == "request"

    request(body)
    assert "nasty" in wire()


def test_naming_policy_that_raises_runs_the_code_untraced(caplog):
    class Weird:
        def __getattribute__(self, name):
            if name in ("__qualname__", "__name__"):
                raise RuntimeError("no name")
            return object.__getattribute__(self, name)

        def __call__(self):
            return bu_osprofiler.active_span()

    def body():
        b = profiler.fork()
        with caplog.at_level(logging.WARNING):
            active = b.run(Weird())
        assert active.operation_name == "request"  # ran, with no branch span
        assert b.finished and b.span is None
        profiler.join(b)

    request(body)
    assert set(wire()) == {"request"}
    assert "could not start a branch span" in caplog.text


def test_reentrant_and_repeated_joins():
    def body():
        b = profiler.fork("re")
        with b:
            profiler.join(b)      # a join of the running branch from inside it
            with b:               # re-entered: no second span
                profiler.join(b, b, [b], None, 7, "x")
        b.run(named_fn)           # a finished branch runs the code again, unrecorded
        profiler.join(b)
        _core._branch_record_join(bu_osprofiler.active_span(), 0, [b, None, object()], True)
        _core._branch_record_join(bu_osprofiler.active_span(), "bad", 5)  # not iterable
        _core._branch_record_join(None, 0, [b])

    request(body)
    spans = wire()
    [(re_span, _)] = spans["re"]
    joins = spans["join"]
    assert len(joins) == 1  # the first join claimed it; the others record nothing
    (join, jrefs), = joins
    assert join.parent_id == re_span.span_id  # waited from inside the branch
    assert jrefs == [("child_of", re_span.span_id), ("follows_from", re_span.span_id)]


def test_join_from_another_thread_and_another_trace():
    results = {}

    def body():
        b = profiler.fork("x")
        b.run(named_fn)
        root = bu_osprofiler.active_span()

        def other_thread():
            profiler.join(b)  # no active span there: nothing
            results["untraced"] = b.joined
            other = bu_osprofiler.start_span("other")  # another trace
            tok = bu_osprofiler.activate(other)
            profiler.join(b)
            results["other"] = b.joined
            bu_osprofiler.deactivate(tok)
            other.finish()
            tok = bu_osprofiler.activate(root)  # the same trace, from another thread
            with profiler.joining(b):
                pass
            bu_osprofiler.deactivate(tok)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()

    root, _ = request(body)
    assert results == {"untraced": False, "other": False}
    check_branch_and_join(root, "x")


def test_concurrent_joins_claim_once():
    def body():
        branches = [profiler.fork("b%d" % i) for i in range(50)]
        for b in branches:
            b.run(named_fn)
        root = bu_osprofiler.active_span()
        barrier = threading.Barrier(4)

        def joiner():
            tok = bu_osprofiler.activate(root)
            barrier.wait()
            for b in branches:
                profiler.join(b)
            bu_osprofiler.deactivate(tok)

        threads = [threading.Thread(target=joiner) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    request(body)
    refs = [r for _, jrefs in wire()["join"] for r in jrefs if r[0] == "follows_from"]
    assert len(refs) == 50 and len(set(refs)) == 50


def test_context_left_elsewhere_is_survived(caplog):
    def body():
        b = profiler.fork("split")
        contextvars.copy_context().run(b.__enter__)  # entered in another context
        with caplog.at_level(logging.WARNING):
            assert b.__exit__(None, None, None) is False
        assert bu_osprofiler.active_span().operation_name == "request"

    request(body)
    assert "split" in wire()
    assert "another context" in caplog.text


def test_bad_arguments_raise_type_errors_not_crashes():
    root = bu_osprofiler.start_span("request")
    with pytest.raises(TypeError):
        Branch(object())
    with pytest.raises(TypeError):
        Branch(root, 5)
    with pytest.raises(TypeError):
        profiler.fork("a", name="b")
    b = Branch(root, None, None, 123)  # a non-str name becomes its str
    assert b.name == "123"
    with pytest.raises(TypeError):
        b.run()
    with pytest.raises(TypeError):
        type("Sub", (_core.BranchCoroutine,), {})  # not a base type
    with pytest.raises(TypeError):
        _core.BranchCoroutine()
    with pytest.raises(TypeError):
        _core._branch_coro(1, 2)
    with pytest.raises(TypeError):
        _core._branch_task_await(int)
    root.finish()


def test_branch_coroutine_protocol_edges():
    async def inner():
        await asyncio.sleep(0)
        return "v"

    root = bu_osprofiler.start_span("request")
    b = Branch(root, "task", None, "edge")
    c = _core._branch_coro(b, inner())
    assert c.send(None) is None  # asyncio.sleep(0) yields None
    with pytest.raises(StopIteration) as info:
        c.send(None)
    assert info.value.value == "v"
    with pytest.raises(RuntimeError):
        c.send(None)
    with pytest.raises(ValueError):
        c.throw(ValueError("after the end"))
    assert c.close() is None
    b2 = Branch(root, "task", None, "closed")
    c2 = _core._branch_coro(b2, inner())
    c2.send(None)
    c2.close()  # closed while suspended: the branch ends (error: GeneratorExit)
    assert b2.finished
    b3 = Branch(root, "task", None, "dropped")
    c3 = _core._branch_coro(b3, inner())
    c3.send(None)
    del c3  # destroyed while suspended: finalized like close()
    gc.collect()
    assert b3.finished
    root.finish()
    spans = wire()
    assert spans["edge"][0][0].tags == {"fork": True}
    assert spans["closed"][0][0].tags["error"] is True
    assert spans["dropped"][0][0].tags["error"] is True


def test_branches_in_cycles_are_collected():
    import weakref

    def body():
        class Holder:
            pass

        h = Holder()
        b = profiler.fork()
        b2 = Branch(bu_osprofiler.active_span(), "thread", h)  # target -> h -> branch
        h.branch = b2
        h.me = h
        ref = weakref.ref(h)
        del h, b2
        b.run(named_fn)
        return ref

    _, ref = request(body)
    gc.collect()
    assert ref() is None


def test_branch_names_stay_right_past_the_name_cache():
    """Branch names ("kind:qualname") come from a cache of 4096 names per kind that is emptied
    when full: names past it (and a qualname of a str subclass, not cached) are still right."""
    class Q(str):
        pass

    fns = []
    for i in range(4200):
        def f():
            return None
        f.__qualname__ = "fn%d" % i
        fns.append(f)
    odd = lambda: None  # noqa: E731
    odd.__qualname__ = Q("odd")

    def body():
        for f in fns + fns[:3] + [odd, odd]:
            profiler.fork().run(f)

    request(body)
    names = [s.operation_name for s in bu_osprofiler.finished_spans()
             if s.operation_name.startswith(("thread:fn", "thread:odd"))]
    assert names == ["thread:fn%d" % i for i in range(4200)] + [
        "thread:fn0", "thread:fn1", "thread:fn2", "thread:odd", "thread:odd"]
