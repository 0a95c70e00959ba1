"""Request types across the RPC boundary (oslo.messaging's fake:// driver, real client/server)."""
import pytest

pytest.importorskip("oslo_messaging")

import bu_osprofiler  # noqa: E402
from bu_osprofiler import _core  # noqa: E402
from bu_osprofiler.adaptive import State, apply_state, parse_state  # noqa: E402
from test_messaging import installed, one, rpc_factory  # noqa: E402,F401 (fixtures)

PING = "rpc@test_messaging:Manager.ping"


@pytest.fixture(autouse=True)
def memory():
    bu_osprofiler.configure("adaptive-rpc", "memory://")
    bu_osprofiler.clear_finished_spans()
    yield
    apply_state(State())


def call(rpc, request_type=None):
    bu_osprofiler.clear_finished_spans()
    root = _core.start_span("request")
    if request_type:
        _core.set_request_type(root, request_type)
    tok = _core.activate(root)
    try:
        assert rpc.client(server="host1").call({}, "ping", x=1) == 2
    finally:
        _core.deactivate(tok)
        root.finish()
    rpc.stop()
    return [s.operation_name for s in bu_osprofiler.finished_spans()]


def test_caller_request_type_rules_apply_in_the_rpc_server(rpc_factory, installed):  # noqa: F811
    rpc = rpc_factory()
    rpc.server()
    apply_state(parse_state({"rules": [{"enabled": False, "id": PING,
                                        "request_type": "GET /servers/{id}"}]}))
    names = call(rpc, "GET /servers/{id}")
    assert "rpc.call:ping" in names and "rpc" not in names
    assert "rpc" in call(rpc, "GET /flavors")
    # no type from the caller: the server decides "rpc ping" and tags its span with it
    call(rpc)
    assert one("rpc.call:ping", "server").tags["request.type"] == "rpc ping"


def test_rpc_client_switch(rpc_factory, installed):  # noqa: F811
    rpc = rpc_factory()
    rpc.server()
    apply_state(parse_state({"rules": [{"enabled": False, "id": "rpc.client@rpc"}]}))
    call(rpc)
    spans = bu_osprofiler.finished_spans()
    server = one("rpc.call:ping", "server")
    root = [s for s in spans if s.operation_name == "request"][0]
    # the client span is off: the server's span continues the caller's span directly
    assert server.parent_id == root.span_id
    assert [s.tags.get("span.kind") for s in spans if s.operation_name == "rpc.call:ping"] == [
        "server"]


def test_rpc_server_switch_continues_the_callers_span(rpc_factory, installed):  # noqa: F811
    rpc = rpc_factory()
    rpc.server()
    apply_state(parse_state({"rules": [{"enabled": False, "id": "rpc.server@rpc",
                                        "request_type": "GET /a"}]}))
    call(rpc, "GET /a")
    client = one("rpc.call:ping", "client")
    handler = one("rpc")
    assert handler.parent_id == client.span_id and handler.trace_id == client.trace_id
    assert [s.tags.get("span.kind") for s in bu_osprofiler.finished_spans()
            if s.operation_name == "rpc.call:ping"] == ["client"]
    call(rpc, "GET /b")  # other request types keep the server span
    assert one("rpc", None).parent_id == one("rpc.call:ping", "server").span_id
