/* branch.h -- fork / join of concurrent work in C (branch.c): the Branch type, fork(), join()
 * and the join-span recorder the Python integrations (bu_osprofiler/concurrency/) call.
 *
 * C holds the mechanism (start / activate / finish the branch span, claim a branch once, record
 * the join span); the policy (when to fork, how a non-function target is named, the warnings)
 * is Python's, handed over once with _core._branch_setup(). */
#ifndef BU_BRANCH_H
#define BU_BRANCH_H

#include "span.h"

/* span.c (end of file): add one reference (`kind`: BU_REF_CHILD_OF / BU_REF_FOLLOWS_FROM) to the
 * span `to` onto the recording span `s`; a span not recording or full drops it. 0 ok, -1
 * MemoryError. Runs no Python. */
int bu_span_put_ref(SpanObject *s, int kind, SpanObject *to);

#endif
