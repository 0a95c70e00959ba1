/* state.h -- the module state (PEP 489): everything mutable lives here, reached from the module. */
#ifndef BU_STATE_H
#define BU_STATE_H

#include "compat.h"
#include <stdint.h>
#include "buffer.h"
#include "clock.h"
#include "freelist.h"
#include "record.h"

#define BU_MAX_PROCESSES 256

/* A reporting process (service): name and process-level tags, immutable once registered. */
typedef struct {
    char *service;
    size_t service_len;
    bu_buf tags; /* tag entries in record format */
    uint16_t ntags;
} bu_process;

/* Sampler for new root spans (kept in C so the decision costs nothing noticeable). */
#define BU_SAMPLER_CONST 0
#define BU_SAMPLER_PROBABILISTIC 1
#define BU_SAMPLER_RATELIMITING 2
typedef struct {
    int type;
    double param;      /* const: 0/1, probabilistic: rate, ratelimiting: traces per second */
    uint64_t boundary; /* probabilistic: sample when low 64 bits of trace id < boundary */
    double balance, max_balance, credits_per_ns;
    int64_t last_tick_ns;
    const char *type_name; /* "const" | "probabilistic" | "ratelimiting" (or set from Python) */
} bu_sampler;

#define BU_TP_CACHE 64 /* slots of the by-name trace point cache (a power of two) */

#define BU_MODE_DISCARD 0  /* count and free finished spans (no exporter configured) */
#define BU_MODE_MEMORY 1   /* keep them for finished_spans() */
#define BU_MODE_REPORTER 2 /* hand them to the reporter (flusher thread) */

typedef struct bu_reporter bu_reporter; /* reporter.c */

typedef struct {
    PyTypeObject *SpanContextType;
    PyTypeObject *SpanType;
    PyTypeObject *TracedType;
    PyTypeObject *TracePointType;  /* profiler.Trace (trace.c) */
    PyTypeObject *CMethodType;     /* method descriptors binding without GC (cmethod.c) */
    PyTypeObject *CBoundType;      /* what they bind to (a freelisted bound method) */
    bu_freelist free_tracepoints;  /* freed profiler.Trace blocks (exact type only) */
    bu_freelist free_bounds;       /* freed CBoundType blocks */
    bu_freelist free_spans;        /* freed Span blocks */
    PyObject *active;        /* ContextVar holding the active Span (or unset) */
    uint32_t var_slots;      /* HAMT top-level slots taken by our ContextVars (context_var) */
    PyObject *str_name;      /* interned strings used on hot paths */
    PyObject *str_args;
    PyObject *str_kwargs;
    PyObject *str_result;
    PyObject *empty_tuple;
    PyObject *format_exc;    /* callable(exc) -> stack text, set from Python */
    PyObject *trace_slow;    /* profiler.Trace slow path (trace.c), set from Python */
    int legacy_notifier;     /* a legacy notifier is installed (bu_osprofiler.notifier.set) */
    /* The exception last recorded and its stack text (span.c error_stack), kept only while it
     * propagates through traced calls: bu_error_cache_clear() drops them. */
    PyObject *err_exc, *err_stack;
    bu_stats stats;
    bu_buffer buffer;
    bu_sampler sampler;
    int mode;
    int trace_id_128;
    bu_wall_offset wall; /* span start times: wall = monotonic + offset (clock.h) */
    uint16_t cur_process;
    uint16_t nprocesses;
    bu_process processes[BU_MAX_PROCESSES];
    uint64_t fork_gen; /* bumped in a forked child: per-thread id generators re-seed */
    bu_reporter *reporter;
    /* adaptive instrumentation (tracepoint.c, tail.c) */
    PyTypeObject *TracepointType;
    PyObject *tp_named; /* dict: name -> Tracepoint of the named Trace / start() points */
    /* The last points found by name, by the name object's address (strong references: an
     * address is not reused while cached); a hit skips the dict lookup of every `with`. */
    struct {
        PyObject *name, *tp;
    } tp_cache[BU_TP_CACHE];
    PyObject *tp_hook;  /* callable(tracepoint) applying the control rules to a new point */
    PyObject *str_rtype;
    struct bu_tail *tail;
    struct bu_branch_state *branch; /* fork / join (branch.c) */
    PyTypeObject *OTScopeType;      /* OpenTracing scope base (otscope.c) */
    struct bu_ot *ot;               /* its Python classes and strings (otscope.c) */
} bu_state;

extern PyModuleDef bu_module_def;

static inline bu_state *
bu_state_of_module(PyObject *m)
{
    return (bu_state *)PyModule_GetState(m);
}

/* State of the module that defined type `tp` (heap types made with PyType_FromModuleAndSpec). */
bu_state *bu_state_of_type(PyTypeObject *tp);

#endif
