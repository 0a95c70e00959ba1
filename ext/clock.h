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

/* Wall time from a monotonic reading: mono + (wall - mono) as last measured, re-measured once
 * the measurement is BU_WALL_REFRESH_NS old. A span then reads the clock twice (monotonic at
 * start and at finish) instead of three times. The wall start is off by at most what the wall
 * clock drifted against the monotonic one since the last measurement (NTP slews at most
 * 500 ppm: 10 us over 20 ms), and a step of the wall clock shows in spans within 20 ms.
 * `off` / `at` live in the module state; callers hold the GIL, which serialises them. */
#define BU_WALL_REFRESH_NS 20000000LL

typedef struct {
    int64_t off; /* wall - mono, ns */
    int64_t at;  /* monotonic time of that measurement (0: never measured) */
} bu_wall_offset;

static inline int64_t
bu_wall_from_mono(bu_wall_offset *w, int64_t mono)
{
    if (w->at == 0 || mono - w->at >= BU_WALL_REFRESH_NS) {
        int64_t wall = bu_wall_ns();
        w->at = bu_mono_ns();
        w->off = wall - w->at;
    }
    return mono + w->off;
}

#endif
