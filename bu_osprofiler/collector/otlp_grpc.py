"""OTLP/gRPC receiver (port 4317), an optional extra: ``pip install bu_osprofiler[otlp-grpc]``.

It needs only ``grpcio`` (Google's gRPC runtime, the one every Python gRPC user has): the
``TraceService/Export`` method is served by a generic handler that hands the request bytes to
the same protobuf decoder as OTLP/HTTP, so neither generated stubs nor ``protobuf`` are needed.

Bounds: a request is at most the collector's body limit (gRPC refuses bigger messages), at most
``max_workers`` requests are decoded at once and ``max_connections`` are in flight; the body and
the decoded spans are charged to the collector's memory budget like any other intake. Busy is
UNAVAILABLE (OpenTelemetry's exporters retry it), a malformed request INVALID_ARGUMENT.
"""
from __future__ import annotations

from concurrent import futures
from typing import TYPE_CHECKING, Any, Tuple

from bu_osprofiler.collector import intake

if TYPE_CHECKING:  # pragma: no cover
    from bu_osprofiler.collector.server import Collector

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def available() -> bool:
    try:
        import grpc  # noqa: F401 -- only whether it imports
    except ImportError:
        return False
    return True


def start(collector: "Collector", host: str, port: int, max_workers: int = 4) -> Tuple[Any, int]:
    """Start the receiver; returns (grpc server, bound port). ImportError without grpcio."""
    try:
        import grpc
    except ImportError:
        raise ImportError("OTLP/gRPC needs grpcio: pip install 'bu_osprofiler[otlp-grpc]'"
                          ) from None

    def export(body: bytes, context: Any) -> bytes:
        collector.count("otlp_grpc_requests")
        reserved = 0
        try:
            collector.reserve(len(body))
            reserved = len(body)
            collector.submit_otlp(body, False, "otlp-grpc")
        except intake.Busy as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except intake.TooLarge as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except intake.BadRequest as e:
            collector.count("malformed_otlp")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        finally:
            collector.release(reserved)
        return b""  # an empty ExportTraceServiceResponse: everything accepted

    raw = lambda b: b  # noqa: E731 -- bytes in, bytes out: the decoder is ours
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Export": grpc.unary_unary_rpc_method_handler(
            export, request_deserializer=raw, response_serializer=raw)})
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="bu-otlp-grpc"),
        handlers=(handler,), maximum_concurrent_rpcs=collector.max_connections,
        options=[("grpc.max_receive_message_length", collector.max_body),
                 ("grpc.max_send_message_length", 1024 * 1024)])
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(addr)
    except RuntimeError:  # grpcio >= 1.50 raises where older ones returned 0
        bound = 0
    if not bound:
        raise OSError(f"cannot listen on {addr} (OTLP/gRPC)")
    server.start()
    return server, bound
