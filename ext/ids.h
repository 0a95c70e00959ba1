/* ids.h -- span / trace ids from a per-thread PRNG (xoshiro256**), seeded once per thread from the
 * OS and re-seeded when the module's fork generation changes (in a forked child). */
#ifndef BU_IDS_H
#define BU_IDS_H

#include <stdint.h>

/* A non-zero random 64-bit value. `fork_gen` is the module's fork generation. */
uint64_t bu_rand64(uint64_t fork_gen);

#endif
