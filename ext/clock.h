/* clock.h -- wall and monotonic clocks in nanoseconds. */
#ifndef BU_CLOCK_H
#define BU_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t
bu_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int64_t
bu_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#endif
