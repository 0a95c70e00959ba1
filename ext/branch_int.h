/* branch_int.h -- what branch.c (the Branch type, fork, join) and branch_task.c (the asyncio
 * branch task: create_task, its coroutine, its await) share. Internal to the two files. */
#ifndef BU_BRANCH_INT_H
#define BU_BRANCH_INT_H

#include "branch.h"

#include "clock.h"
#include "hooks.h"
#include "pyrecord.h"
#include "record.h"
#include "structmember.h"

#define BR_NEW 0
#define BR_RUNNING 1
#define BR_DONE 2

typedef struct bu_branch_state {
    PyTypeObject *BranchType;
    PyTypeObject *AwaitType;
    PyTypeObject *CoroType;
    PyTypeObject *TaskBase; /* asyncio.Task, whose own await BranchTask.__await__ wraps */
    PyTypeObject *CreateTaskType;
    PyObject *kw_loop_name, *kw_loop_name_context; /* kwnames of BranchTask(...) */
    PyObject *null_branch; /* what fork() returns untraced (Python's inert branch) */
    PyObject *hmac_var;    /* ContextVar of the osprofiler HMAC key, carried into branches */
    PyObject *warn;        /* callable(key, msg, exc): rate-limited warning */
    PyObject *qualname;    /* callable(target) -> str: name of a target that is no plain function */
    PyObject *ready;       /* callable(value) -> awaitable of value (__aenter__ / __aexit__) */
    PyObject *branches_of; /* callable(tuple) -> iterable of Branch (join() of threads, futures) */
    PyObject *names;       /* dict: kind -> dict: qualname -> "kind:qualname" (branch names) */
    PyObject *str_fork, *str_join, *str_qualname, *str_asyncio, *str_running_loop;
    PyObject *str_current_task, *str_greenlet, *str_getcurrent, *str_parent, *str_co_qualname;
    PyObject *str_thread, *str_greenthread, *str_task, *str_done, *str_send, *str_throw, *str_close;
    PyObject *str_task_factory, *str_check_closed, *str_bu_branch, *str_source_tb, *str_context;
    PyObject *str_eventloop;
} bu_branch_state;

typedef struct {
    PyObject_HEAD
    bu_state *st;
    PyObject *parent; /* the forking Span */
    PyObject *kind;   /* "thread" / "greenthread" / "task" or NULL (detected where it runs) */
    PyObject *target; /* what runs (for the name), dropped once named; or NULL */
    PyObject *name;   /* str or NULL (derived from kind and target when the branch starts) */
    PyObject *span;   /* the branch span once started */
    PyObject *hmac;   /* HMAC key to set in the branch, or NULL */
    PyObject *token, *htoken; /* ContextVar tokens of the running branch */
    Py_ssize_t extra; /* re-entries of a started branch (they record nothing) */
    int state;        /* BR_NEW / BR_RUNNING / BR_DONE */
    int joined;       /* set by the one join that recorded it */
} BranchObject;

#define _Branch_CAST(op) ((BranchObject *)(op))

static inline int
is_branch(bu_branch_state *bs, PyObject *o)
{
    return bs->BranchType != NULL && PyObject_TypeCheck(o, bs->BranchType);
}

static inline int
is_sampled_span(bu_state *st, PyObject *o)
{
    return o != NULL && Py_IS_TYPE(o, st->SpanType) &&
           (_Span_CAST(o)->flags & BU_FLAG_SAMPLED);
}

/* Start the branch span of `b` and activate it (branch.c). */
int bu_branch_begin(bu_branch_state *bs, BranchObject *b, PyObject *fn);
/* Finish and deactivate the branch span of `b` with `exc` (NULL: no error) (branch.c). */
int bu_branch_end(bu_branch_state *bs, BranchObject *b, PyObject *exc);
/* Record the join span of `waiter` over the branches items[0..n) (branch.c). */
int bu_branch_join_record(bu_state *st, PyObject *waiter, int64_t t0_ns, PyObject *const *items,
                          Py_ssize_t n, int started);

/* branch_task.c */
extern PyType_Spec bu_branch_await_spec, bu_branch_coro_spec, bu_branch_ct_spec;
PyObject *bu_branch_create_task(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
PyObject *bu_branch_task_await(PyObject *m, PyObject *task);
PyObject *bu_branch_coro(PyObject *m, PyObject *const *args, Py_ssize_t nargs);

#endif
