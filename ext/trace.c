/* trace.c -- (to be written) */
#include "hooks.h"

int
bu_trace_init(PyObject *m, bu_state *st)
{
    (void)m;
    (void)st;
    return 0;
}
