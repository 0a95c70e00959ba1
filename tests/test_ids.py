"""Ids from the per-thread generator: 128-bit trace ids, distinct across threads and forks."""
import os
import threading

from bu_osprofiler import _core, start_span


def test_rand128_is_a_128_bit_id_and_never_repeats():
    ids = [_core.rand128() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert all(0 < i < 1 << 128 for i in ids)
    # both halves are random: the high half is used (not a 64-bit id widened)
    assert sum(1 for i in ids if i >> 64) > 19000
    assert sum(1 for i in ids if i & ((1 << 64) - 1) < 1 << 63) in range(9000, 11000)


def test_root_spans_get_128_bit_trace_ids_and_distinct_span_ids():
    spans = [start_span("r") for _ in range(2000)]
    ctxs = [s.context for s in spans]
    assert len({c.trace_id for c in ctxs}) == len(ctxs)
    assert len({c.span_id for c in ctxs}) == len(ctxs)
    assert sum(1 for c in ctxs if c.trace_id >> 64) > 1900
    assert all(c.span_id != 0 and c.trace_id_low != 0 for c in ctxs)
    # a span's id is not one of the halves of its own trace id
    assert all(c.span_id not in (c.trace_id_high, c.trace_id_low) for c in ctxs)


def test_threads_draw_from_their_own_generators():
    out = {}

    def work(k):
        out[k] = [_core.rand128() for _ in range(2000)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for v in out.values() for i in v]
    assert len(everything) == 8000 and len(set(everything)) == 8000


def test_a_forked_child_does_not_repeat_the_parents_ids():
    _core.rand128()  # the parent's generator is seeded before the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the fork hook re-seeds its generator
        try:
            os.write(w, "".join("%x\n" % _core.rand128() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    child = [int(x, 16) for x in data.split()]
    parent = [_core.rand128() for _ in range(100)]
    assert len(child) == 100
    assert not set(child) & set(parent)
