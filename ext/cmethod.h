/* cmethod.h -- methods whose binding costs no GC allocation.
 *
 * CPython 3.9-3.13 look `__enter__` and `__exit__` up on the type for every `with` and bind
 * each to the instance: with ordinary C methods that is two bound-method objects (GC tracked,
 * ~550 instructions of a ~5400-instruction `with`). A bu_cmethod descriptor binds instead to a
 * small untracked object taken from a freelist, and a plain `obj.method(...)` call binds
 * nothing at all (the descriptor type is a method descriptor: the interpreter passes the
 * instance as the first argument). Class access gives the descriptor, callable with the
 * instance first, as a method is. Used by profiler.Trace (trace.c) and the OpenTracing Scope
 * and Tracer (otscope.c). */
#ifndef BU_CMETHOD_H
#define BU_CMETHOD_H

#include "state.h"

/* The method's body: `self` is an instance of the owner type, `args` the rest (both checked:
 * with `nargs` >= 0 exactly that many positional arguments and no keywords). */
typedef PyObject *(*bu_cmethod_fn)(bu_state *st, PyObject *self, PyObject *const *args,
                                   Py_ssize_t nargs, PyObject *kwnames);

typedef struct {
    const char *owner; /* the owner class's name, for messages and repr */
    const char *name;
    const char *doc;   /* with a "name($self, ...)\n--\n\n" signature line, as C methods have */
    int nargs;         /* positional arguments taken (no keywords), or -1: the body checks */
    bu_cmethod_fn run;
} bu_cmethod_def;

/* Make the descriptor types (once per module). */
int bu_cmethod_init(PyObject *m, bu_state *st);

/* A descriptor for `def` (static storage) whose receivers are instances of `owner`. */
PyObject *bu_cmethod_new(bu_state *st, PyTypeObject *owner, const bu_cmethod_def *def);

/* Put a descriptor for `def` (static storage) into `owner`'s dict. */
int bu_cmethod_install(bu_state *st, PyTypeObject *owner, const bu_cmethod_def *def);

#endif
