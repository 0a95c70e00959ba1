"""The embedded collector: Jaeger agent / collector endpoints into SQLite, query API, web view."""
from bu_osprofiler.collector.store import Store, default_db_path, normalize_trace_id  # noqa: F401

__all__ = ["Collector", "Store", "default_db_path", "normalize_trace_id"]


def __getattr__(name: str):
    if name == "Collector":  # the server module pulls in http.server: load it when used
        from bu_osprofiler.collector.server import Collector
        return Collector
    raise AttributeError(name)
