/* span.h -- the Span and SpanContext types and the active-span ContextVar helpers. */
#ifndef BU_SPAN_H
#define BU_SPAN_H

#include "state.h"

/* Span state bits */
#define BU_SPAN_RECORDING 0x01 /* sampled: tags/logs are kept and a record is produced on finish */
#define BU_SPAN_FINISHED 0x02
#define BU_SPAN_STACKED 0x04   /* pushed by profiler.start(): profiler.stop() pops it */
#define BU_SPAN_BASE 0x08      /* a trace's base placeholder (profiler.init): children are roots */
#define BU_SPAN_PLACEHOLDER 0x10 /* not a span of ours: a context to continue (never finished) */
#define BU_SPAN_LOCALROOT 0x20 /* first span of a tail-held trace in this process (tail.c) */
/* Bits 8-15: how many switched-off named points (start() / Trace) are open with this span active;
 * each stop() consumes one instead of popping (tracepoint.h, bu_tp_skip). */
#define BU_SPAN_SKIP_ONE 0x0100
#define BU_SPAN_SKIPS 0xFF00

#define BU_SPAN_INLINE_TAGS 128

/* W3C trace-flags bits kept besides "sampled" (which lives in the Jaeger flags): Level 2's
 * "random trace id". Every other bit is sent as zero. */
#define BU_W3C_RANDOM 0x02

typedef struct {
    PyObject_HEAD
    uint64_t trace_hi, trace_lo, span_id, parent_id;
    uint32_t flags;
    uint32_t is_base;
    PyObject *baggage; /* dict str -> str, or NULL; never mutated once shared */
    PyObject *tracestate; /* W3C tracestate (normalised str) or NULL; immutable */
    uint32_t w3c_flags;   /* BU_W3C_RANDOM or 0 */
} SpanContextObject;

typedef struct {
    PyObject_HEAD
    bu_state *st;
    uint64_t trace_hi, trace_lo, span_id, parent_id;
    uint32_t flags;
    uint16_t state;
    uint16_t service;
    uint16_t ntags, nlogs, nrefs;
    PyObject *name;    /* str */
    PyObject *baggage; /* dict or NULL, copy-on-write (shared with parent / children) */
    PyObject *tracestate; /* W3C tracestate str or NULL, inherited by children (immutable) */
    uint32_t w3c_flags;   /* BU_W3C_RANDOM or 0, inherited by children */
    PyObject *prev;    /* STACKED spans: the span that was active before profiler.start() */
    int64_t start_ns, start_mono;
    bu_buf tags, logs, refs;
    /* Where `tags` starts (bu_span_start): enough for a decorated function's static tags or a
     * root's sampler tags, so that a typical span never mallocs a tag buffer. */
    unsigned char tags_inline[BU_SPAN_INLINE_TAGS];
} SpanObject;

#define _Span_CAST(op) ((SpanObject *)(op))
#define _SpanContext_CAST(op) ((SpanContextObject *)(op))

/* A new child span of `parent` (a Span, a SpanContext, or NULL for a new root), not activated.
 * `name` is borrowed (incref'd). Returns a new reference or NULL with an exception. */
SpanObject *bu_span_start(bu_state *st, PyObject *parent, PyObject *name, int64_t start_ns);
/* A new Span object (fields uninitialised), from the state's freelist when it has one. */
SpanObject *bu_span_alloc(bu_state *st);
/* Finish: record it if sampled. `end_ns` < 0 means now. Never raises (drops on out of memory). */
void bu_span_finish(SpanObject *s, int64_t end_ns);
/* Add error tag and error log for the exception `exc` (a BaseException instance), whole or not
 * at all. Python run while formatting that raises an Exception is ignored (the exception in
 * flight, if any, is kept); one that raises another BaseException (KeyboardInterrupt,
 * SystemExit) returns -1 with that exception set: it replaces the one in flight. */
int bu_span_set_error(SpanObject *s, PyObject *exc, int osprofiler_tags);

/* Drop the stack text cached for the exception last recorded (see error_stack in span.c). */
void bu_error_cache_clear(bu_state *st);

/* Writes from C that may run Python (span.c explains the rule): format into a scratch buffer,
 * then bu_span_append() it. bu_span_append copies the `n` tags (logs != 0: `n` logs) of `src`
 * to the span in one step that runs no Python; a span finished, unsampled or full by now drops
 * them. 0 ok (appended or dropped), -1 MemoryError. */
void bu_scratch_init(bu_buf *b, unsigned char *mem, size_t cap);
int bu_span_append(SpanObject *s, int logs, const bu_buf *src, Py_ssize_t n);
/* set_tag(): one typed tag (str() of other values). 0 ok, -1 with an exception. */
int bu_span_put_tag(SpanObject *s, PyObject *key, PyObject *value);

/* The active span (new reference) or NULL when none; an OpenTracing scope as the variable's
 * value stands for its span. Never fails. */
PyObject *bu_active_get(bu_state *st);
/* The variable's value as it is (a Span, an OpenTracing scope) or NULL when none. */
PyObject *bu_active_get_raw(bu_state *st);
/* start_span with its arguments parsed (borrowed; Py_None for an absent one; NULL name: ""). */
PyObject *bu_start_span_args(bu_state *st, PyObject *name, PyObject *child_of, PyObject *refs,
                             PyObject *tags, PyObject *start_time, int ignore);
/* ContextVar set guarded (doc/architecture.md, Context): on CPython <= 3.11 a context snapshot
 * is held across the set.
 * Returns the Token (new reference) or NULL with an exception. */
PyObject *bu_active_set(bu_state *st, PyObject *value);
int bu_active_reset(bu_state *st, PyObject *token);

/* osprofiler start(): a child of the active sampled span becomes active (remembering the previous
 * one); `info` (dict: flattened osprofiler info; other: tags) may be NULL. Returns the span, or
 * None without an active sampled trace (new references), or NULL with an exception. With `token`
 * non-NULL and a span pushed, *token receives the ContextVar token of the push (new reference). */
PyObject *bu_push_span(bu_state *st, PyObject *name, PyObject *info, PyObject **token);
/* osprofiler stop(): finish the span bu_push_span made active (adding `info` and, for an exception
 * instance `exc`, the error tag and log; both may be NULL) and re-activate the previous one.
 * `pushed` and `token` (may be NULL) are a span and its bu_push_span token: when that span is the
 * one popped, resetting the token restores the previous span (cheaper than a new set).
 * Returns the finished span or None (new references), or NULL with an exception. */
PyObject *bu_pop_span(bu_state *st, PyObject *info, PyObject *exc, PyObject *pushed,
                      PyObject *token);

static inline int
bu_span_is_recording(bu_state *st, PyObject *o)
{
    return o != NULL && Py_IS_TYPE(o, st->SpanType) && (_Span_CAST(o)->state & BU_SPAN_RECORDING);
}

#endif
