/* sampler.c -- Jaeger-compatible root samplers. */
#include "sampler.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include "clock.h"

int
bu_sampler_set(bu_sampler *s, const char *type, double param)
{
    if (isnan(param) || param < 0) {
        PyErr_SetString(PyExc_ValueError, "sampler param must be a number >= 0");
        return -1;
    }
    if (strcmp(type, "const") == 0) {
        s->type = BU_SAMPLER_CONST;
        s->param = param != 0 ? 1.0 : 0.0;
        s->type_name = "const";
    }
    else if (strcmp(type, "probabilistic") == 0) {
        if (param > 1.0) {
            char buf[64];
            snprintf(buf, sizeof(buf), "%.17g", param);
            PyErr_Format(PyExc_ValueError, "probabilistic sampler rate must be within [0, 1], got %s",
                         buf);
            return -1;
        }
        s->type = BU_SAMPLER_PROBABILISTIC;
        s->param = param;
        /* rate * 2^64, saturating at the top. */
        long double b = (long double)param * 18446744073709551616.0L;
        s->boundary = b >= 18446744073709551615.0L ? UINT64_MAX : (uint64_t)b;
        s->type_name = "probabilistic";
    }
    else if (strcmp(type, "ratelimiting") == 0 || strcmp(type, "rate_limiting") == 0) {
        s->type = BU_SAMPLER_RATELIMITING;
        s->param = param;
        s->max_balance = param > 1.0 ? param : 1.0;
        s->balance = s->max_balance;
        s->credits_per_ns = param / 1e9;
        s->last_tick_ns = bu_mono_ns();
        s->type_name = "ratelimiting";
    }
    else {
        PyErr_Format(PyExc_ValueError,
                     "unknown sampler type %s (expected const, probabilistic, ratelimiting "
                     "or remote)",
                     type);
        return -1;
    }
    return 0;
}

int
bu_sampler_decide(bu_sampler *s, uint64_t trace_lo)
{
    switch (s->type) {
    case BU_SAMPLER_CONST:
        return s->param != 0;
    case BU_SAMPLER_PROBABILISTIC:
        return s->boundary == UINT64_MAX || trace_lo < s->boundary;
    case BU_SAMPLER_RATELIMITING: {
        /* Leaky bucket: credits accrue at `param` per second up to max_balance; a trace costs 1. */
        int64_t now = bu_mono_ns();
        s->balance += (double)(now - s->last_tick_ns) * s->credits_per_ns;
        s->last_tick_ns = now;
        if (s->balance > s->max_balance) {
            s->balance = s->max_balance;
        }
        if (s->balance >= 1.0) {
            s->balance -= 1.0;
            return 1;
        }
        return 0;
    }
    default:
        return 0;
    }
}
