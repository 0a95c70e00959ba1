/* pack.c -- the size-bounded packer shared by the Jaeger Thrift and OTLP encoders. */
#include "pack.h"

#include <string.h>

/* Worst case of everything but the spans: the largest varints for counts, lengths and seq. */
static size_t
overhead_bound(bu_packer *pk, const bu_pack_opts *o)
{
    unsigned char tail[256];
    size_t n = o->fmt->head(pk->head.data, o, &pk->group, UINT32_MAX, o->max_size, INT64_MIN);
    return n + o->fmt->tail(tail, o, INT64_MIN);
}

/* Finish the message in pk->msg (spans from `start` to its end) and hand it to emit. The head is
 * written right-aligned into the room reserved before the spans, so spans are never copied. */
static int
finish_message(bu_packer *pk, const bu_pack_opts *o, size_t start, uint32_t nspans, bu_emit_fn emit,
               void *ctx, bu_pack_result *res)
{
    int64_t seq = atomic_fetch_add(o->seq_no, 1);
    size_t spans_len = pk->msg.len - start;
    size_t nhead = o->fmt->head(pk->head.data, o, &pk->group, nspans, spans_len, seq);
    unsigned char *h = pk->msg.data + start - nhead;
    memcpy(h, pk->head.data, nhead);
    /* The tail's room was reserved together with the span that is now last. */
    size_t ntail = o->fmt->tail(pk->msg.data + pk->msg.len, o, seq);
    res->messages++;
    res->spans_emitted += nspans;
    return emit(ctx, h, nhead + spans_len + ntail, nspans);
}

int
bu_pack(bu_packer *pk, const bu_pack_opts *o, const bu_process *process, const bu_record *list,
        bu_emit_fn emit, void *ctx, bu_pack_result *res)
{
    int rc = -1;
    const bu_format *f = o->fmt;
    pk->group.len = 0;
    if (f->put_group(&pk->group, o, process) < 0) {
        goto error;
    }
    pk->head.len = 0;
    if (bu_buf_reserve(&pk->head, f->head_max + pk->group.len) < 0) {
        goto error;
    }
    size_t overhead = overhead_bound(pk, o);
    size_t budget = o->max_size > overhead ? o->max_size - overhead : 0;
    size_t start = overhead; /* the head (<= overhead) goes right before `start` */
    uint32_t n = 0;
    pk->msg.len = 0;
    if (bu_buf_reserve(&pk->msg, start + f->tail_max) < 0) {
        goto error;
    }
    pk->msg.len = start;
    for (const bu_record *r = list; r; r = r->next) {
        size_t mark = pk->msg.len;
        if (bu_buf_reserve(&pk->msg, f->span_bound(r) + f->tail_max) < 0) {
            goto error;
        }
        unsigned char *end = f->put_span(pk->msg.data + mark, o, r);
        size_t slen = (size_t)(end - (pk->msg.data + mark));
        if (slen > budget) {
            res->too_large++; /* cannot fit even alone: skip it */
            continue;
        }
        if (mark - start + slen <= budget && n < INT32_MAX) {
            pk->msg.len = mark + slen;
            n++;
            continue;
        }
        /* Full: park the new span, send what we have, start over with the parked span. */
        pk->spare.len = 0;
        if (bu_buf_reserve(&pk->spare, slen) < 0) {
            goto error;
        }
        memcpy(pk->spare.data, pk->msg.data + mark, slen);
        pk->msg.len = mark;
        if (finish_message(pk, o, start, n, emit, ctx, res) < 0) {
            goto error;
        }
        memcpy(pk->msg.data + start, pk->spare.data, slen);
        pk->msg.len = start + slen;
        n = 1;
    }
    if (n > 0 && finish_message(pk, o, start, n, emit, ctx, res) < 0) {
        goto error;
    }
    rc = 0;
error:
    return rc;
}

int
bu_pack_all(bu_packer *pk, const bu_pack_opts *o, const bu_state *st, bu_record **list,
            bu_emit_fn emit, void *ctx, bu_pack_result *res)
{
    /* The process table only grows and its entries are immutable once counted. */
    uint16_t nproc = __atomic_load_n(&st->nprocesses, __ATOMIC_ACQUIRE);
    bu_record *rest = *list, *done = NULL, **done_tail = &done;
    int rc = 0;
    while (rest && rc == 0) {
        uint16_t svc = rest->service < nproc ? rest->service : 0;
        /* Stable split of `rest` into this group and the others. */
        bu_record *group = NULL, **gt = &group, *others = NULL, **ot = &others;
        for (bu_record *r = rest; r;) {
            bu_record *next = r->next;
            uint16_t s = r->service < nproc ? r->service : 0;
            if (s == svc) {
                *gt = r;
                gt = &r->next;
            } else {
                *ot = r;
                ot = &r->next;
            }
            r = next;
        }
        *gt = NULL;
        *ot = NULL;
        rc = bu_pack(pk, o, &st->processes[svc], group, emit, ctx, res);
        *done_tail = group;
        done_tail = gt;
        rest = others;
    }
    *done_tail = rest;
    *list = done;
    return rc;
}

void
bu_packer_free(bu_packer *pk)
{
    bu_buf_free(&pk->msg);
    bu_buf_free(&pk->spare);
    bu_buf_free(&pk->group);
    bu_buf_free(&pk->head);
}
