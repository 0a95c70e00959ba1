/* otscope.h -- the OpenTracing Scope in C (the base of bu_osprofiler.opentracing's Scope).
 *
 * An activated OpenTracing scope is itself the value of the core's active-span ContextVar: one
 * ContextVar set per `with tracer.start_active_span()` instead of two (the span, then the
 * scope), and `scope_manager.active` is that value. The core's readers see through it to the
 * scope's core span (bu_active_get). */
#ifndef BU_OTSCOPE_H
#define BU_OTSCOPE_H

#include "state.h"

typedef struct {
    PyObject_HEAD
    PyObject *manager; /* the ScopeManager */
    PyObject *tracer;
    PyObject *span;    /* the OpenTracing Span wrapper; NULL / None until first used */
    PyObject *core;    /* the core Span (NULL / None for a foreign span) */
    PyObject *token;   /* the active-span ContextVar token (NULL / None: an implicit scope) */
    char finish_on_close;
} OTScopeObject;

int bu_otscope_init(PyObject *m, bu_state *st);
int bu_otscope_traverse(bu_state *st, visitproc visit, void *arg);
void bu_otscope_clear(bu_state *st);

static inline int
bu_is_otscope(bu_state *st, PyObject *v)
{
    return st->OTScopeType != NULL && PyObject_TypeCheck(v, st->OTScopeType);
}

PyObject *bu_ot_unwrap_scope(bu_state *st, PyObject *v);

/* `v` (a reference the caller gives up; may be NULL) seen through: an OTScope becomes its core
 * Span (new reference) or NULL when it has none; any other value is returned as it is. A Span,
 * the common value, costs one compare. */
static inline PyObject *
bu_ot_unwrap(bu_state *st, PyObject *v)
{
    return (v == NULL || Py_IS_TYPE(v, st->SpanType)) ? v : bu_ot_unwrap_scope(st, v);
}

#endif
