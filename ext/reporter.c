/* reporter.c -- (to be written) */
#include "hooks.h"

int
bu_reporter_init(PyObject *m, bu_state *st)
{
    (void)m;
    (void)st;
    return 0;
}

void
bu_reporter_poke(bu_state *st)
{
    (void)st;
}

void
bu_reporter_after_fork_child(bu_state *st)
{
    (void)st;
}

void
bu_reporter_free(bu_state *st)
{
    (void)st;
}
