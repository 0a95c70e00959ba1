/* thrift.h -- Jaeger Thrift (Compact and Binary) encoding of span records, and the packer that
 * splits a list of records into size-bounded Batch messages.
 *
 * Everything here is plain C over plain C data: it runs on the flusher thread without the GIL.
 * Field ids and types follow jaeger-idl's jaeger.thrift / agent.thrift (see specs/jaeger-thrift.md).
 */
#ifndef BU_THRIFT_H
#define BU_THRIFT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "record.h"
#include "state.h"

#define BU_PROTO_COMPACT 0
#define BU_PROTO_BINARY 1

/* Cumulative client-side drop counters reported in every Batch (jaeger ClientStats). */
typedef struct {
    int64_t full_queue, too_large, failed;
} bu_client_stats;

/* Scratch buffers of the packer, reused from one flush to the next (one owner at a time). */
typedef struct {
    bu_buf msg;   /* the message being assembled: [room for the head] spans [tail] */
    bu_buf spare; /* the span that did not fit, parked while the full message is sent */
    bu_buf proc;  /* the encoded Process struct of the current group */
} bu_packer;

/* Called once per finished message; `msg` is valid only during the call. Return 0 to go on,
 * -1 to abort packing (the caller then owns the accounting of the spans not yet emitted). */
typedef int (*bu_emit_fn)(void *ctx, const unsigned char *msg, size_t len, uint32_t nspans);

typedef struct {
    int proto;       /* BU_PROTO_COMPACT | BU_PROTO_BINARY */
    int envelope;    /* 1: an Agent.emitBatch ONEWAY message (UDP); 0: a bare Batch (HTTP body) */
    size_t max_size; /* no message is larger than this, envelope included */
    bu_client_stats stats;
    atomic_int_fast64_t *seq_no; /* Batch.seqNo of the next message; incremented per message */
} bu_pack_opts;

typedef struct {
    uint64_t spans_emitted;
    uint64_t too_large; /* spans that could not fit in any message and were skipped */
    uint64_t messages;
} bu_pack_result;

/* Append the encoding of one Span struct to `b`. 0 ok, -1 out of memory. */
int bu_thrift_put_span(bu_buf *b, int proto, const bu_record *r);

/* Pack `list` (linked by ->next, all reported as `process`) into messages of at most
 * o->max_size bytes, calling `emit` for each. Returns 0, or -1 when out of memory or when
 * `emit` aborted; `res` counts what happened either way. Does not free the records. */
int bu_thrift_pack(bu_packer *pk, const bu_pack_opts *o, const bu_process *process,
                   const bu_record *list, bu_emit_fn emit, void *ctx, bu_pack_result *res);

/* Pack every record of `list`, group by group of records that share a service (process index),
 * in order of first appearance. Unknown process indexes are reported as process 0.
 * Same return convention as bu_thrift_pack; `res` sums over groups. Reorders the list. */
int bu_thrift_pack_all(bu_packer *pk, const bu_pack_opts *o, const bu_state *st,
                       bu_record **list, bu_emit_fn emit, void *ctx, bu_pack_result *res);

void bu_packer_free(bu_packer *pk);

#endif
