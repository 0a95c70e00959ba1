/* tracepoint.h -- runtime on/off switches of trace points (adaptive instrumentation).
 *
 * Every trace point (decorated function, named Trace/start point, WSGI / RPC / DB hook) owns one
 * Tracepoint object. The Python layer keeps the registry and computes each point's mode from the
 * control rules; the hot paths here only read `mode` (one load and a branch) and bump counters. */
#ifndef BU_TRACEPOINT_H
#define BU_TRACEPOINT_H

#include "span.h"

#define BU_TP_OFF 0   /* no span: the call runs as if untraced; children attach to the ancestor */
#define BU_TP_ON 1
#define BU_TP_TYPES 2 /* on iff (trace's request type in `types`) XOR `base_off` */

/* At most this many named Trace / start() points are registered (names built per call would
 * grow the registry without bound); later names behave as on. */
#define BU_TP_MAX_NAMED 4096

/* Drop the by-name cache of bu_tp_named (module teardown). */
void bu_tp_cache_clear(bu_state *st);

/* Baggage key carrying a trace's request type (decided at its root). */
#define BU_RTYPE_KEY "bu-request-type"

typedef struct {
    PyObject_HEAD
    uint8_t mode;
    uint8_t base_off;      /* BU_TP_TYPES: the state for types not in `types` is off */
    uint64_t hits;         /* calls / entries, traced or not */
    uint64_t sampled_hits; /* entries that produced a span */
    PyObject *id;          /* str, stable id */
    PyObject *types;       /* frozenset of str, or NULL */
    PyObject *rtype_key;   /* interned BU_RTYPE_KEY (shared) */
} TracepointObject;

#define _Tracepoint_CAST(op) ((TracepointObject *)(op))

/* Slow part of bu_tp_take for BU_TP_TYPES: is the point on for the trace of span `cur`? */
int bu_tp_types_on(TracepointObject *tp, PyObject *cur);

/* Entry of a trace point with `cur` the active sampled (or tail-recording) span: 1 when a span
 * is to be made (counted as a sampled hit), 0 when the point is off for this trace. */
static inline int
bu_tp_take(TracepointObject *tp, PyObject *cur)
{
    if (tp->mode == BU_TP_TYPES && !bu_tp_types_on(tp, cur)) {
        return 0;
    }
    tp->sampled_hits++;
    return 1;
}

/* Entry of a named point (counted as a hit): 1 when a span is to be made. */
static inline int
bu_tp_enter(TracepointObject *tp, PyObject *cur)
{
    tp->hits++;
    return tp->mode != BU_TP_OFF && bu_tp_take(tp, cur);
}

/* The Tracepoint of a named Trace / start() point (created and registered on first use), or
 * NULL when none could be made (then the point behaves as on). New reference. */
TracepointObject *bu_tp_named(bu_state *st, PyObject *name);

/* A switched-off named point (start() / Trace) makes no span and sets no context variable: its
 * children attach to the active span `cur` (the nearest enabled ancestor), and it counts a "skip"
 * on `cur` (bits 8-15 of its state) that the matching stop() consumes instead of popping. The
 * count lives on the span, not in the context: contexts that share `cur` (threads, greenthreads
 * or tasks started without a branch span) share it; balanced pairs commute, so only a stop()
 * meant for `cur` itself, made while another context is inside an off point, takes that
 * context's skip. A Trace's exit pops its own span by identity, never a skip. 0 when the count
 * is full (255): then the caller pushes a placeholder (bu_tp_passthrough), as a point did before
 * skips existed. */
static inline int
bu_tp_skip(SpanObject *cur)
{
    if ((cur->state & BU_SPAN_SKIPS) == BU_SPAN_SKIPS) {
        return 0;
    }
    cur->state = (uint16_t)(cur->state + BU_SPAN_SKIP_ONE);
    return 1;
}

/* stop(): consume a skip of the active span `cur`; 1 when there was one (nothing to pop). */
static inline int
bu_tp_unskip(bu_state *st, PyObject *cur)
{
    if (!Py_IS_TYPE(cur, st->SpanType) || !(_Span_CAST(cur)->state & BU_SPAN_SKIPS)) {
        return 0;
    }
    _Span_CAST(cur)->state = (uint16_t)(_Span_CAST(cur)->state - BU_SPAN_SKIP_ONE);
    return 1;
}

/* osprofiler start() of a point that is off when `cur` holds 255 skips already: a pass-through
 * placeholder with `cur`'s ids, so that stop() pops it and children attach to `cur`. */
SpanObject *bu_tp_passthrough(bu_state *st, PyObject *cur, PyObject *name);

#endif
