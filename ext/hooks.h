/* hooks.h -- entry points each topic file offers to core.c (module exec / free / fork). */
#ifndef BU_HOOKS_H
#define BU_HOOKS_H

#include "state.h"

/* Each *_init adds its functions / constants to the module; 0 ok, -1 with an exception set. */
int bu_span_init(PyObject *m, bu_state *st);        /* span.c: Span, SpanContext, span functions */
int bu_trace_init(PyObject *m, bu_state *st);       /* trace.c: the decorator type */
void bu_trace_free(bu_state *st);                   /* trace.c: its freelists */
int bu_propagation_init(PyObject *m, bu_state *st); /* propagation.c: header codecs */
int bu_thrift_init(PyObject *m, bu_state *st);      /* thrift.c: Jaeger Thrift encoders */
int bu_thriftdec_init(PyObject *m, bu_state *st);   /* thriftdec.c: decoder for the collector */
int bu_otlp_init(PyObject *m, bu_state *st);        /* otlp.c: OTLP protobuf encoder */
int bu_reporter_init(PyObject *m, bu_state *st);    /* reporter.c: flusher thread, UDP sender */
int bu_tracepoint_init(PyObject *m, bu_state *st);  /* tracepoint.c: runtime on/off switches */
int bu_tail_init(PyObject *m, bu_state *st);        /* tail.c: tail keep of error / slow traces */
int bu_adaptive_traverse(bu_state *st, visitproc visit, void *arg); /* tracepoint.c */
void bu_adaptive_clear(bu_state *st);               /* tracepoint.c + tail.c: teardown */
int bu_branch_init(PyObject *m, bu_state *st);      /* branch.c: Branch type, fork / join */
int bu_branch_traverse(bu_state *st, visitproc visit, void *arg); /* branch.c */
void bu_branch_clear(bu_state *st);                 /* branch.c: teardown */

/* reporter.c: called when the buffer grew past the wake threshold (may be a no-op). */
void bu_reporter_poke(bu_state *st);
/* reporter.c: in a forked child (the parent's thread does not exist there). */
void bu_reporter_after_fork_child(bu_state *st);
/* reporter.c: module teardown: stop the thread, free everything. */
void bu_reporter_free(bu_state *st);

#endif
