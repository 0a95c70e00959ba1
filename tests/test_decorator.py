"""@trace, trace_cls and TracedMeta: osprofiler semantics over the C fast path."""
import abc
import asyncio
import functools
import inspect
import threading

import pytest

import bu_osprofiler
from bu_osprofiler import profiler

from conftest import by_name


@profiler.trace("plain", info={"component": "test"}, hide_args=False, hide_result=False)
def add(a, b=1, *, c=0):
    """Add things."""
    return a + b + c


def test_untraced_call_passes_through():
    assert add(1, 2, c=3) == 6
    assert bu_osprofiler.finished_spans() == []


def test_traced_call_records_osprofiler_info():
    profiler.init("k")
    assert add(1, b=2) == 3
    (rec,) = bu_osprofiler.finished_spans()
    assert rec.operation_name == "plain"
    assert rec.tags["name"] == __name__ + ".add"
    assert rec.tags["args"] == "(1,)" and rec.tags["kwargs"] == "{'b': 2}"
    assert rec.tags["result"] == "3" and rec.tags["component"] == "test"
    assert rec.parent_id == 0


def test_wraps_metadata_and_signature():
    assert add.__name__ == "add" and add.__qualname__ == "add"
    assert add.__doc__ == "Add things." and add.__module__ == __name__
    assert add.__wrapped__.__name__ == "add"
    assert str(inspect.signature(add)) == "(a, b=1, *, c=0)"
    assert add.__traced__ == 1


def test_allow_multiple_trace():
    twice = profiler.trace("again")(add)
    assert twice.__traced__ == 2
    with pytest.raises(ValueError, match="already been traced"):
        profiler.trace("x", allow_multiple_trace=False)(add)


def test_exceptions_propagate_unchanged_and_are_recorded():
    class Custom(Exception):
        pass

    err = Custom("bad", 2)

    @profiler.trace("fail")
    def fail():
        raise err

    profiler.init("k")
    with pytest.raises(Custom) as info:
        fail()
    assert info.value is err and info.value.args == ("bad", 2)
    (rec,) = bu_osprofiler.finished_spans()
    assert rec.tags["error"] is True
    assert rec.tags["etype"] == __name__ + ".test_exceptions_propagate_unchanged_and_are_recorded.<locals>.Custom"
    assert rec.tags["message"] == str(err)
    assert rec.logs[0][1]["error.kind"] == rec.tags["etype"]
    assert "raise err" in rec.logs[0][1]["stack"]
    assert profiler.get().span.is_base  # the active span was restored


def test_nesting_and_hide_flags():
    @profiler.trace("inner", hide_args=True)
    def inner(secret):
        return secret * 2

    @profiler.trace("outer")
    def outer(x):
        return inner(x)

    profiler.init("k")
    assert outer(21) == 42
    spans = bu_osprofiler.finished_spans()
    i, o = by_name(spans, "inner"), by_name(spans, "outer")
    assert i.parent_id == o.span_id
    assert "args" not in i.tags and "result" not in i.tags
    assert o.tags["args"] == "(21,)"
    assert o.start_ns <= i.start_ns <= i.end_ns <= o.end_ns


def test_method_binding_and_descriptor():
    class C:
        def __init__(self):
            self.v = 5

        @profiler.trace("meth", hide_args=True)
        def get(self, d=0):
            return self.v + d

    profiler.init("k")
    c = C()
    assert c.get(1) == 6 and C.get(c, 2) == 7
    assert c.get.__self__ is c
    getter = c.get
    assert getter() == 5
    assert len(bu_osprofiler.finished_spans()) == 3


def test_info_dict_not_shared_between_concurrent_calls():
    info = {"static": "v"}

    @profiler.trace("conc", info=info, hide_args=False)
    def work(i):
        return i

    info["static"] = "changed later"  # the decorator copied it at decoration time
    results = []

    def run(i):
        profiler.init("k")
        results.append(work(i))

    ts = [threading.Thread(target=run, args=(i,)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    spans = bu_osprofiler.finished_spans()
    assert sorted(s.tags["args"] for s in spans) == sorted("(%d,)" % i for i in range(20))
    assert {s.tags["static"] for s in spans} == {"v"}


def test_async_function_traced_over_awaited_execution():
    @profiler.trace("coro", hide_result=False)
    async def fetch(x):
        await asyncio.sleep(0.01)
        return x + 1

    assert inspect.iscoroutinefunction(fetch)

    async def main():
        profiler.init("k")
        return await fetch(1)

    assert asyncio.run(main()) == 2
    (rec,) = bu_osprofiler.finished_spans()
    assert rec.duration_ns >= 10_000_000 and rec.tags["result"] == "2"


def test_async_exception_recorded():
    @profiler.trace("coro-err")
    async def bad():
        raise ValueError("nope")

    async def main():
        profiler.init("k")
        with pytest.raises(ValueError):
            await bad()
        return profiler.get().span.is_base

    assert asyncio.run(main())
    (rec,) = bu_osprofiler.finished_spans()
    assert rec.tags["error"] is True and rec.tags["etype"] == "ValueError"


class Base:
    def inherited(self):
        return "base"


@profiler.trace_cls("rpc", info={"cls": 1}, hide_args=True)
class Service(Base):
    def public(self, x):
        return x

    def _private(self):
        return "p"

    def __repr__(self):
        return "Service()"

    @staticmethod
    def static():
        return "s"

    @classmethod
    def klass(cls):
        return cls.__name__


def test_trace_cls_public_and_inherited_only():
    profiler.init("k")
    s = Service()
    assert s.public(3) == 3 and s.inherited() == "base" and s._private() == "p"
    assert repr(s) == "Service()" and Service.static() == "s" and Service.klass() == "Service"
    names = sorted(r.tags["name"] for r in bu_osprofiler.finished_spans())
    assert names == [__name__ + ".Base.inherited", __name__ + ".Service.public"]
    assert Base().inherited() == "base"  # the base class itself is not modified


def test_trace_cls_private_static_and_class_methods():
    @profiler.trace_cls("all", trace_private=True, trace_class_methods=True,
                        trace_static_methods=True)
    class All:
        def _p(self):
            return 1

        @staticmethod
        def s():
            return 2

        @classmethod
        def c(cls):
            return cls

    profiler.init("k")
    assert All()._p() == 1 and All.s() == 2 and All.c() is All and All().c() is All
    assert len(bu_osprofiler.finished_spans()) == 4


def test_traced_meta_requires_name():
    with pytest.raises(TypeError, match="name"):
        class Bad(metaclass=profiler.TracedMeta):
            __trace_args__ = {"info": {}}


def test_traced_meta_with_another_metaclass():
    class Meta(profiler.TracedMeta, abc.ABCMeta):
        pass

    class Manager(metaclass=Meta):
        __trace_args__ = {"name": "rpc", "hide_args": True}

        def build(self, n):
            return n * 2

        def _helper(self):
            return 0

        @abc.abstractmethod
        def must(self):
            ...

    class Concrete(Manager):
        def must(self):
            return "ok"

        def extra(self):
            return self.build(1)

    with pytest.raises(TypeError):
        Manager()  # ABCMeta still works
    profiler.init("k")
    c = Concrete()
    assert c.must() == "ok" and c.extra() == 2 and c._helper() == 0
    names = [r.tags["name"] for r in bu_osprofiler.finished_spans()]
    assert sorted(names) == sorted([
        __name__ + ".test_traced_meta_with_another_metaclass.<locals>.Concrete.must",
        __name__ + ".test_traced_meta_with_another_metaclass.<locals>.Manager.build",
        __name__ + ".test_traced_meta_with_another_metaclass.<locals>.Concrete.extra",
    ])
    extra = by_name(bu_osprofiler.finished_spans(), "rpc")
    assert extra is not None


def test_decorating_callables_and_partials():
    p = functools.partial(lambda a, b: a * b, 3)
    traced = profiler.trace("partial", hide_args=True)(p)
    profiler.init("k")
    assert traced(4) == 12
    assert len(bu_osprofiler.finished_spans()) == 1


def test_bad_repr_in_args_does_not_break_the_call():
    class Evil:
        def __repr__(self):
            raise RuntimeError("no repr")

    @profiler.trace("evil", hide_result=False)
    def f(x):
        return x

    profiler.init("k")
    e = Evil()
    assert f(e) is e
    (rec,) = bu_osprofiler.finished_spans()
    assert "args" not in rec.tags and "result" not in rec.tags
