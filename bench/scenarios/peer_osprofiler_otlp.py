"""Peer: upstream osprofiler (latest) with its OTLP driver exporting to the local HTTP sink."""
from __future__ import annotations

from importlib import metadata

import peer_osprofiler
from common import SINK_HTTP
from harness import Unavailable


class Peer(peer_osprofiler.Peer):
    name = "osprofiler-otlp"

    def __init__(self) -> None:
        super().__init__()
        if not SINK_HTTP:
            raise Unavailable("no local HTTP sink (BENCH_SINK_HTTP)")
        self.connection = f"otlp://127.0.0.1:{SINK_HTTP}"

    def versions(self):
        v = super().versions()
        v["opentelemetry-sdk"] = metadata.version("opentelemetry-sdk")
        return v
