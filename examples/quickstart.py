"""Trace a small program into memory and print its spans as a tree."""
import bu_osprofiler
from bu_osprofiler import profiler

bu_osprofiler.configure("quickstart", "memory://")


@profiler.trace("db", info={"db.type": "sqlite"})
def query(sql):
    return len(sql)


@profiler.trace_cls("api")
class Api:
    def get(self, key):
        with profiler.Trace("cache", info={"key": key}):
            pass
        return query("SELECT * FROM t WHERE k = %s" % key)


profiler.init("SECRET_KEY")
Api().get("42")
print("trace id (osprofiler form):", profiler.get().get_base_id())
spans = bu_osprofiler.finished_spans()
children = {}
for s in spans:
    children.setdefault(s.parent_id, []).append(s)


def show(parent, depth):
    for s in sorted(children.get(parent, []), key=lambda x: x.start_ns):
        print("%s%s  %.1f us  %s" % ("  " * depth, s.operation_name, s.duration_ns / 1e3,
                                      dict(s.tags)))
        show(s.span_id, depth + 1)


show(0, 0)
