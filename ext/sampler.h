/* sampler.h -- root sampling decisions (const, probabilistic, ratelimiting; remote is Python-driven
 * and reconfigures these). */
#ifndef BU_SAMPLER_H
#define BU_SAMPLER_H

#include "state.h"

/* 0 ok, -1 with ValueError set. */
int bu_sampler_set(bu_sampler *s, const char *type, double param);
/* 1 sample, 0 drop. Called with the GIL held. */
int bu_sampler_decide(bu_sampler *s, uint64_t trace_lo);

#endif
