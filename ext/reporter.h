/* reporter.h -- the native background flusher (Jaeger agent over UDP) and the wake-up / flush
 * machinery shared with the Python HTTP sender.
 *
 * Two ways to run:
 *   UDP       reporter_start(): a pthread takes queued records (no GIL: they are plain C), packs
 *             them into emitBatch datagrams <= max_packet and sends them on a connected socket.
 *   external  reporter_start_external(): no thread; a Python thread (the HTTP sender) waits in
 *             reporter_wait(), takes encoded batches with take_batches() and reports each cycle
 *             with reporter_cycle_end(), so reporter_flush() works the same for both.
 *
 * Application threads only ever touch the queue and, past a threshold, signal a condition
 * variable (bu_reporter_poke): they never wait for the flusher or for I/O.
 */
#ifndef BU_REPORTER_H
#define BU_REPORTER_H

#include "hooks.h"

/* Python-visible names live in reporter.c; the hooks core.c calls are declared in hooks.h. */

#endif
