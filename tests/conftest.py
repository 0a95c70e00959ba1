"""Shared fixtures: every test starts with an in-memory exporter, no active trace, sample-all."""
import pytest

import bu_osprofiler
from bu_osprofiler import _core, profiler


@pytest.fixture(autouse=True)
def memory_tracer():
    bu_osprofiler.configure("test-service", "memory://", sampler="const", sampler_param=1,
                            trace_id_128bit=True)
    bu_osprofiler.clear_finished_spans()
    profiler.clean()
    yield
    profiler.clean()
    bu_osprofiler.clear_finished_spans()


@pytest.fixture
def spans():
    """Return a callable giving the finished spans so far."""
    return bu_osprofiler.finished_spans


def by_name(spans, name):
    found = [s for s in spans if s.operation_name == name]
    assert found, "no span named %r in %r" % (name, [s.operation_name for s in spans])
    return found[0]


__all__ = ["by_name", "_core"]

# The official W3C Trace Context harness (copied unmodified) is run by test_w3c_conformance.py
# as a program against a service; its own files are not tests of this project.
collect_ignore = ["w3c_trace_context", "w3c_service.py"]
