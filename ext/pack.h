/* pack.h -- splitting a list of span records into size-bounded export messages.
 *
 * A message is  head | span | span | ... | tail . The format (Jaeger Thrift, OTLP protobuf) says
 * how to write each part; the packer decides which spans go into which message so that no
 * message exceeds max_size, skips (and counts) spans that cannot fit any message, and groups
 * spans by process (service) since every message describes one process.
 *
 * Plain C over plain C data: runs on the flusher thread without the GIL.
 */
#ifndef BU_PACK_H
#define BU_PACK_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "record.h"
#include "state.h"

/* Cumulative client-side drop counters reported in every Jaeger Batch (ClientStats). */
typedef struct {
    int64_t full_queue, too_large, failed;
} bu_client_stats;

/* Scratch buffers, reused from one flush to the next (one owner at a time). */
typedef struct {
    bu_buf msg;   /* the message being assembled: [room for the head] spans [tail] */
    bu_buf spare; /* the span that did not fit, parked while the full message is sent */
    bu_buf group; /* per-process material of the current group (e.g. the encoded Process) */
    bu_buf head;  /* the head of the message being finished */
} bu_packer;

typedef struct bu_format bu_format;

typedef struct {
    const bu_format *fmt;
    int proto;       /* format variant (thrift: BU_PROTO_COMPACT | BU_PROTO_BINARY) */
    int envelope;    /* thrift: 1 = an Agent.emitBatch message (UDP), 0 = a bare Batch */
    size_t max_size; /* no message is larger than this */
    bu_client_stats stats;
    atomic_int_fast64_t *seq_no; /* sequence number of the next message, incremented per message */
} bu_pack_opts;

struct bu_format {
    /* Per-process material into `out` (emptied by the caller). 0 ok, -1 out of memory. */
    int (*put_group)(bu_buf *out, const bu_pack_opts *o, const bu_process *p);
    /* Upper bound of put_span's output for `r`. */
    size_t (*span_bound)(const bu_record *r);
    /* Encode one span at `p` (room: span_bound); returns the end. */
    unsigned char *(*put_span)(unsigned char *p, const bu_pack_opts *o, const bu_record *r);
    /* The head of a message of `nspans` spans taking `spans_len` bytes, into `out` (room:
     * head_max + group->len); returns its length. */
    size_t (*head)(unsigned char *out, const bu_pack_opts *o, const bu_buf *group, uint32_t nspans,
                   size_t spans_len, int64_t seq);
    /* The tail, into `out` (room: tail_max); returns its length. */
    size_t (*tail)(unsigned char *out, const bu_pack_opts *o, int64_t seq);
    size_t head_max, tail_max;
};

/* Called once per finished message; `msg` is valid only during the call. Return 0 to go on,
 * -1 to abort packing (the caller then owns the accounting of the spans not yet emitted). */
typedef int (*bu_emit_fn)(void *ctx, const unsigned char *msg, size_t len, uint32_t nspans);

typedef struct {
    uint64_t spans_emitted;
    uint64_t too_large; /* spans that could not fit in any message and were skipped */
    uint64_t messages;
} bu_pack_result;

/* Pack `list` (linked by ->next, all reported as `process`) into messages, calling `emit` for
 * each. Returns 0, or -1 when out of memory or when `emit` aborted; `res` counts what happened
 * either way. Does not free the records. */
int bu_pack(bu_packer *pk, const bu_pack_opts *o, const bu_process *process, const bu_record *list,
            bu_emit_fn emit, void *ctx, bu_pack_result *res);

/* Pack every record of `*list`, one group per process (service index), groups in order of first
 * appearance; unknown process indexes are reported as process 0. Same return convention as
 * bu_pack; `res` sums over groups. Reorders `*list` (which still holds every record after). */
int bu_pack_all(bu_packer *pk, const bu_pack_opts *o, const bu_state *st, bu_record **list,
                bu_emit_fn emit, void *ctx, bu_pack_result *res);

void bu_packer_free(bu_packer *pk);

#endif
