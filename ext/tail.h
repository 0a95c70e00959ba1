/* tail.h -- tail keep: spans of unsampled traces are recorded and held per trace until their
 * local root ends; the trace is then exported when it had an error or was slow, freed otherwise.
 * All entry points are called with the GIL held. */
#ifndef BU_TAIL_H
#define BU_TAIL_H

#include "span.h"

/* A local root of an unsampled trace starts: 1 when the trace is held (the span gets
 * BU_FLAG_TAIL), 0 when tail keep is off or the store is full. */
int bu_tail_open(bu_state *st, SpanObject *s);
/* A finished span of a held trace: takes `r` (a record of `s`, duration `dur_ns`; NULL when
 * the span made none: a local root then only ends its trace). */
void bu_tail_finish(bu_state *st, SpanObject *s, bu_record *r, int64_t dur_ns);
/* In a forked child: the parent's held traces are the parent's. */
void bu_tail_after_fork(bu_state *st);

#endif
