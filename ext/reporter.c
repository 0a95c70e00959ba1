/* reporter.c -- the background flusher: wake-ups, flush generations, the UDP sender thread, the
 * HTTP sender's C half, drop accounting and fork handling. See reporter.h for the two modes. */
#include "reporter.h"

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include "clock.h"
#include "thrift.h"

#define R_OFF 0
#define R_UDP 1
#define R_EXTERNAL 2

#define MAX_UDP_PAYLOAD 65507      /* IPv4: 65535 - IP header - UDP header */
#define STOP_GRACE_MAX_NS 200000000LL /* part of a stop's timeout kept to abort the last sends */
#define SEND_TIMEOUT_US 100000        /* a blocked send gives up after this (SO_SNDTIMEO) */
#define RESOLVE_WAIT_NS 5000000000LL   /* a cycle with no address waits this long for DNS */
#define MAX_ADDRS 8

/* A name resolution running in its own detached thread, so that a resolver that does not
 * answer never holds the flusher (and so flush(), shutdown() and interpreter exit). Shared by
 * the flusher and the resolver thread; the last one to let go frees it. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    int done;
    int rc; /* 0, or a getaddrinfo EAI_* code (< 0) / errno (> 0) */
    int naddrs;
    struct sockaddr_storage addrs[MAX_ADDRS];
    socklen_t lens[MAX_ADDRS];
    char *names; /* comma-separated hosts, each resolved in turn */
    char *port;
} resolve_job;

struct bu_reporter {
    bu_state *st;
    pthread_mutex_t mu;
    pthread_cond_t wake; /* the flusher (or the external waiter) sleeps here */
    pthread_cond_t done; /* flush() and stop() callers sleep here */
    /* --- guarded by mu --- */
    int mode;
    int stop;         /* asked to finish: one last cycle, then exit */
    int thread_alive; /* UDP thread running (cleared by the thread itself as it exits) */
    int joinable;     /* UDP thread created and not joined yet */
    int poked;
    uint64_t flush_req;  /* flush generations requested ... */
    uint64_t flush_seen; /* ... picked up by a cycle ... */
    uint64_t flush_done; /* ... and completed */
    uint64_t cycles;     /* cycles started */
    uint64_t fail_cycle; /* number of the latest cycle that lost spans */
    int in_cycle;        /* a cycle is running (its records are out of the queue) */
    /* --- lock-free --- */
    atomic_int active;       /* mode != OFF and not stopping: pokes are useful */
    atomic_int wake_pending; /* a poke was signalled and no cycle started since */
    atomic_int abort_sends;  /* a stop timed out: drop the rest of the current cycle */
    atomic_int last_error;   /* errno of the latest failed send; < 0: getaddrinfo code */
    atomic_int_fast64_t seq_no;
    atomic_int inside; /* Python threads between releasing and retaking the GIL in here */
    uint64_t epoch;    /* external sessions started: a sender of an older one is refused */
    size_t wake_bytes;
    /* --- owned by the sending side (the UDP thread or the external Python thread) --- */
    pthread_t thread;
    int64_t interval_ns;
    int proto;
    size_t max_packet;
    char *host, *port;
    int fd;
    /* the agent's addresses, tried in order like a datagram client (each family, each
     * address): `cur` is the one `fd` is connected to */
    struct sockaddr_storage addrs[MAX_ADDRS];
    socklen_t lens[MAX_ADDRS];
    int naddrs, cur;
    int64_t resolved_at; /* monotonic: last successful resolution (0: never) */
    int64_t resolve_every_ns; /* agents move: resolve the name again this often */
    int reresolve;       /* a route failed: resolve again at the next cycle */
    resolve_job *job;    /* the resolution in flight, or NULL */
    pid_t pid; /* the process the thread was started in */
    bu_packer pk;
};

/* ================================================================ helpers */

static void
deadline_ts(int64_t mono_deadline_ns, struct timespec *ts)
{
    ts->tv_sec = (time_t)(mono_deadline_ns / 1000000000LL);
    ts->tv_nsec = (long)(mono_deadline_ns % 1000000000LL);
}

/* Wait on `c` until the monotonic deadline; returns 0 once the deadline has passed. */
static int
wait_until(pthread_cond_t *c, pthread_mutex_t *mu, int64_t deadline)
{
    int before = bu_mono_ns() < deadline;
    if (before) {
        struct timespec ts;
        deadline_ts(deadline, &ts);
        pthread_cond_timedwait(c, mu, &ts);
    }
    return before;
}

static int64_t
timeout_to_deadline(double timeout)
{
    if (!(timeout >= 0)) { /* also NaN */
        timeout = 0;
    }
    if (timeout > 1e9) {
        timeout = 1e9;
    }
    return bu_mono_ns() + (int64_t)(timeout * 1e9);
}

/* Release the GIL to wait on the reporter. `inside` is raised first, with the GIL held, so that
 * module teardown (which holds the GIL) knows the struct may still be touched: a daemon thread
 * caught here at interpreter exit never retakes the GIL and keeps it raised. */
static PyThreadState *
release_gil(bu_reporter *r)
{
    atomic_fetch_add(&r->inside, 1);
    return PyEval_SaveThread();
}

static void
retake_gil(bu_reporter *r, PyThreadState *ts)
{
    PyEval_RestoreThread(ts);
    atomic_fetch_sub(&r->inside, 1);
}

static bu_reporter *
reporter_new(bu_state *st)
{
    bu_reporter *r = calloc(1, sizeof(*r));
    pthread_condattr_t ca;
    int ok = 0;
    if (r == NULL) {
        goto error;
    }
    r->st = st;
    r->fd = -1;
    r->interval_ns = 1000000000LL;
    atomic_init(&r->active, 0);
    atomic_init(&r->wake_pending, 0);
    atomic_init(&r->abort_sends, 0);
    atomic_init(&r->last_error, 0);
    atomic_init(&r->seq_no, 0);
    atomic_init(&r->inside, 0);
    if (pthread_condattr_init(&ca) != 0) {
        goto error;
    }
    /* Timed waits on the monotonic clock: wall-clock jumps must not stall or rush the flusher. */
    ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
         pthread_mutex_init(&r->mu, NULL) == 0 && pthread_cond_init(&r->wake, &ca) == 0 &&
         pthread_cond_init(&r->done, &ca) == 0;
    pthread_condattr_destroy(&ca);
error:
    if (r != NULL && !ok) {
        free(r);
        r = NULL;
    }
    return r;
}

static void
free_strings(bu_reporter *r)
{
    free(r->host);
    free(r->port);
    r->host = r->port = NULL;
}

/* Counters of every Batch's ClientStats: cumulative, as Jaeger clients report them. */
static void
snapshot_stats(bu_stats *s, bu_client_stats *cs)
{
    cs->full_queue = (int64_t)atomic_load(&s->dropped_queue_full);
    cs->too_large = (int64_t)atomic_load(&s->dropped_too_large);
    cs->failed = (int64_t)atomic_load(&s->dropped_send_failed);
}

static uint64_t
list_length(const bu_record *r)
{
    uint64_t n = 0;
    for (; r; r = r->next) {
        n++;
    }
    return n;
}

/* Called with mu held at the end of every cycle (UDP thread or external sender). */
static void
end_cycle_locked(bu_reporter *r, uint64_t gen, int ok)
{
    if (gen > r->flush_done) {
        r->flush_done = gen;
    }
    if (!ok) {
        r->fail_cycle = r->cycles;
    }
    r->in_cycle = 0;
    pthread_cond_broadcast(&r->done);
}

/* Sleep (mu held) until poked, asked to flush or stop, or the deadline; then start a cycle:
 * returns the flush generation the cycle serves. */
static uint64_t
begin_cycle_locked(bu_reporter *r, int64_t deadline, int *stopping)
{
    while (!r->stop && !r->poked && r->flush_req == r->flush_seen) {
        if (!wait_until(&r->wake, &r->mu, deadline)) {
            break;
        }
    }
    uint64_t gen = r->flush_req;
    r->flush_seen = gen;
    r->poked = 0;
    r->cycles++;
    r->in_cycle = 1;
    *stopping = r->stop;
    /* From here on, a poke signals again: records pushed after take_all need a new cycle. */
    atomic_store(&r->wake_pending, 0);
    return gen;
}

/* ================================================================ UDP sender */

static void
job_release(resolve_job *j)
{
    pthread_mutex_lock(&j->mu);
    int last = --j->refs == 0;
    pthread_mutex_unlock(&j->mu);
    if (last) {
        pthread_mutex_destroy(&j->mu);
        pthread_cond_destroy(&j->cv);
        free(j->names);
        free(j->port);
        free(j);
    }
}

static void *
resolver_main(void *arg)
{
    resolve_job *j = arg;
    struct sockaddr_storage addrs[MAX_ADDRS];
    socklen_t lens[MAX_ADDRS];
    int n = 0, rc = 0;
    char *save = NULL;
    for (char *name = strtok_r(j->names, ",", &save); name != NULL && n < MAX_ADDRS;
         name = strtok_r(NULL, ",", &save)) {
        struct addrinfo hints, *ai = NULL;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_DGRAM;
        int e = getaddrinfo(name, j->port, &hints, &ai);
        if (e != 0) {
            rc = e == EAI_SYSTEM ? errno : (e < 0 ? e : -e); /* glibc's EAI_* are < 0 */
            continue;
        }
        for (struct addrinfo *p = ai; p != NULL && n < MAX_ADDRS; p = p->ai_next) {
            if (p->ai_addrlen <= sizeof(addrs[0])) {
                memcpy(&addrs[n], p->ai_addr, p->ai_addrlen);
                lens[n++] = (socklen_t)p->ai_addrlen;
            }
        }
        freeaddrinfo(ai);
    }
    pthread_mutex_lock(&j->mu);
    memcpy(j->addrs, addrs, sizeof(addrs));
    memcpy(j->lens, lens, sizeof(lens));
    j->naddrs = n;
    j->rc = n > 0 ? 0 : (rc != 0 ? rc : EADDRNOTAVAIL);
    j->done = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    job_release(j);
    return NULL;
}

/* Start resolving r->host in the background (no-op when one is in flight). */
static void
resolve_start(bu_reporter *r)
{
    if (r->job != NULL) {
        return;
    }
    resolve_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        return;
    }
    j->names = strdup(r->host);
    j->port = strdup(r->port);
    if (j->names == NULL || j->port == NULL || pthread_mutex_init(&j->mu, NULL) != 0) {
        free(j->names);
        free(j->port);
        free(j);
        return;
    }
    pthread_cond_init(&j->cv, NULL);
    j->refs = 2;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int rc = pthread_create(&t, &attr, resolver_main, j);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        j->refs = 1;
        job_release(j);
        atomic_store(&r->last_error, rc);
        return;
    }
    r->job = j;
}

/* Wait for the resolution in flight until `deadline` (0: do not wait), in short slices so that
 * a stop (abort_sends) is noticed; take its result when done. */
static void
resolve_collect(bu_reporter *r, int64_t deadline)
{
    resolve_job *j = r->job;
    if (j == NULL) {
        return;
    }
    pthread_mutex_lock(&j->mu);
    while (!j->done && !atomic_load(&r->abort_sends) && bu_mono_ns() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts); /* the job's condvar is on the default clock */
        ts.tv_nsec += 50000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&j->cv, &j->mu, &ts);
    }
    int done = j->done;
    if (done) {
        if (j->rc != 0) {
            atomic_store(&r->last_error, j->rc);
        }
        else {
            int same = j->naddrs == r->naddrs;
            for (int i = 0; same && i < j->naddrs; i++) {
                same = j->lens[i] == r->lens[i] && memcmp(&j->addrs[i], &r->addrs[i], j->lens[i]) == 0;
            }
            if (!same) { /* the agent moved (or first time): reconnect to its first address */
                memcpy(r->addrs, j->addrs, sizeof(r->addrs));
                memcpy(r->lens, j->lens, sizeof(r->lens));
                r->naddrs = j->naddrs;
                r->cur = 0;
                if (r->fd >= 0) {
                    close(r->fd);
                    r->fd = -1;
                }
            }
            r->resolved_at = bu_mono_ns();
            r->reresolve = 0;
        }
    }
    pthread_mutex_unlock(&j->mu);
    if (done) {
        r->job = NULL;
        job_release(j);
    }
}

/* Connect a socket to address r->cur, moving on to the next address (every family) when the
 * socket cannot be made or connected. 0 connected, -1 no usable address. */
static int
udp_connect(bu_reporter *r)
{
    for (int tried = 0; r->fd < 0 && tried < r->naddrs; tried++) {
        const struct sockaddr_storage *a = &r->addrs[r->cur];
        int fd = socket(a->ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            /* A send must never hold the flusher (and so flush() and shutdown) for long. */
            struct timeval tv = {0, SEND_TIMEOUT_US};
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
            /* Connected: the kernel reports ICMP port-unreachable as ECONNREFUSED, so a route
             * with no agent is noticed and the next address tried. */
            if (connect(fd, (const struct sockaddr *)a, r->lens[r->cur]) == 0) {
                r->fd = fd;
                break;
            }
            close(fd);
        }
        atomic_store(&r->last_error, errno);
        r->cur = (r->cur + 1) % r->naddrs;
    }
    return r->fd >= 0 ? 0 : -1;
}

/* The route failed: close it and use the next address (and resolve again soon). */
static void
udp_next_route(bu_reporter *r)
{
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
    if (r->naddrs > 0) {
        r->cur = (r->cur + 1) % r->naddrs;
    }
    r->reresolve = 1;
}

/* Before sending a cycle's spans: resolve (again) when due, without waiting for DNS unless
 * there is no address at all, then connect. */
static void
udp_route(bu_reporter *r)
{
    int64_t now = bu_mono_ns();
    if (r->naddrs == 0 || r->reresolve || now - r->resolved_at >= r->resolve_every_ns) {
        resolve_start(r);
    }
    resolve_collect(r, r->naddrs == 0 ? now + RESOLVE_WAIT_NS : 0);
    if (r->fd < 0 && r->naddrs > 0) {
        udp_connect(r);
    }
}

typedef struct {
    bu_reporter *r;
    uint64_t failed;
} udp_ctx;

/* One datagram on the current route: 1 delivered as far as we can tell, 0 failed. A datagram
 * counts as sent only when the send succeeded and no error is pending right after it (on the
 * loopback and local networks the ICMP port-unreachable of a route without an agent is queued
 * before send() returns). */
static int
udp_send_once(bu_reporter *r, const unsigned char *msg, size_t len)
{
    ssize_t n;
    do {
        n = send(r->fd, msg, len, 0);
    } while (n < 0 && errno == EINTR);
    int err = n < 0 ? errno : 0;
    if (err == 0) {
        socklen_t el = sizeof(err);
        if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) {
            err = 0;
        }
    }
    if (err != 0 || n != (ssize_t)len) {
        atomic_store(&r->last_error, err ? err : EMSGSIZE);
        return 0;
    }
    return 1;
}

static int
udp_emit(void *ctx, const unsigned char *msg, size_t len, uint32_t nspans)
{
    udp_ctx *c = ctx;
    bu_reporter *r = c->r;
    bu_stats *s = &r->st->stats;
    int sent = 0;
    /* Each address at most once per datagram, the way a datagram client retries. */
    for (int tried = 0; !sent && tried < (r->naddrs ? r->naddrs : 1); tried++) {
        if (atomic_load(&r->abort_sends) || (r->fd < 0 && udp_connect(r) < 0)) {
            break;
        }
        sent = udp_send_once(r, msg, len);
        if (!sent) {
            udp_next_route(r);
        }
    }
    if (sent) {
        atomic_fetch_add(&s->exported, nspans);
        atomic_fetch_add(&s->batches_sent, 1);
        atomic_fetch_add(&s->bytes_sent, len);
    }
    else {
        atomic_fetch_add(&s->send_errors, 1);
        atomic_fetch_add(&s->dropped_send_failed, nspans);
        c->failed += nspans;
    }
    return 0;
}

/* One flush: take everything queued, pack, send. Returns 1 when every span taken was sent. */
static int
udp_cycle(bu_reporter *r)
{
    bu_state *st = r->st;
    bu_record *list = bu_buffer_take_all(&st->buffer);
    uint64_t lost = 0;
    if (list == NULL) {
        resolve_collect(r, 0); /* pick up a finished background resolution */
        bu_pool_trim(&st->buffer.pool); /* idle: the pool gives its memory back */
        goto done;
    }
    udp_route(r);
    udp_ctx c = {r, 0};
    bu_pack_result res = {0, 0, 0};
    bu_pack_opts o = {&bu_thrift_format, r->proto, 1, r->max_packet, {0, 0, 0}, &r->seq_no};
    snapshot_stats(&st->stats, &o.stats);
    uint64_t total = list_length(list);
    int rc = bu_pack_all(&r->pk, &o, st, &list, udp_emit, &c, &res);
    atomic_fetch_add(&st->stats.dropped_too_large, res.too_large);
    lost = c.failed + res.too_large;
    if (rc < 0) { /* out of memory part way: what was not packed is lost, and counted */
        uint64_t unsent = total - res.spans_emitted - res.too_large;
        atomic_fetch_add(&st->stats.dropped_send_failed, unsent);
        lost += unsent;
    }
    bu_buffer_recycle(&st->buffer, list); /* back to the producers (record pool) */
done:
    return lost == 0;
}

static void *
flusher_main(void *arg)
{
    bu_reporter *r = arg;
    int64_t deadline = bu_mono_ns() + r->interval_ns;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        int stopping;
        uint64_t gen = begin_cycle_locked(r, deadline, &stopping);
        int64_t now = bu_mono_ns();
        if (now >= deadline) {
            deadline = now + r->interval_ns;
        }
        pthread_mutex_unlock(&r->mu);
        int ok = udp_cycle(r);
        pthread_mutex_lock(&r->mu);
        end_cycle_locked(r, gen, ok);
        if (stopping) {
            break;
        }
    }
    r->thread_alive = 0;
    pthread_cond_broadcast(&r->done);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* ================================================================ lifecycle */

/* In a forked child the flusher thread does not exist and the mutex may have been held by it:
 * start over with a new reporter. The old one is freed without touching its mutex. */
static void
reset_in_child(bu_state *st)
{
    bu_reporter *old = st->reporter;
    st->reporter = reporter_new(st);
    if (old != NULL) {
        if (old->fd >= 0) {
            close(old->fd); /* the child's copy only: the parent keeps its socket */
        }
        /* old->job: its resolver thread does not exist in the child, and its mutex may have
         * been held at the fork: leaked, like the old reporter's own mutex. */
        bu_packer_free(&old->pk);
        free_strings(old);
        free(old);
    }
}

/* Ask the running reporter to stop and wait for it (GIL released by the caller). Returns 1
 * when it stopped (UDP: the thread exited; external: the request is posted). */
static int
stop_reporter(bu_reporter *r, int64_t deadline)
{
    int stopped = 1;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    atomic_store(&r->active, 0);
    pthread_cond_broadcast(&r->wake);
    if (r->mode == R_UDP) {
        /* The last part of the timeout (at most STOP_GRACE_MAX_NS) is kept for abandoning the
         * remaining sends, so that the whole stop stays within the timeout: nothing in the
         * flusher blocks for longer (DNS runs in its own thread, a send times out quickly). */
        int64_t now = bu_mono_ns(), grace = (deadline - now) / 4;
        grace = grace < 0 ? 0 : grace > STOP_GRACE_MAX_NS ? STOP_GRACE_MAX_NS : grace;
        while (r->thread_alive && wait_until(&r->done, &r->mu, deadline - grace)) {
        }
        if (r->thread_alive) {
            atomic_store(&r->abort_sends, 1);
            pthread_cond_broadcast(&r->wake);
            int64_t end = deadline > bu_mono_ns() ? deadline : bu_mono_ns() + STOP_GRACE_MAX_NS;
            while (r->thread_alive && wait_until(&r->done, &r->mu, end)) {
            }
        }
        stopped = !r->thread_alive;
    }
    int join = stopped && r->joinable;
    if (join) {
        r->joinable = 0;
    }
    pthread_mutex_unlock(&r->mu);
    if (join) {
        pthread_join(r->thread, NULL);
    }
    return stopped;
}

/* Back to R_OFF after a stop, ready for another start. Only when no thread uses the struct. */
static void
reset_off(bu_reporter *r)
{
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
    if (r->job != NULL) { /* a resolver still running frees the job when it is done */
        job_release(r->job);
        r->job = NULL;
    }
    r->naddrs = r->cur = 0;
    r->resolved_at = 0;
    r->reresolve = 0;
    free_strings(r);
    bu_packer_free(&r->pk);
    r->mode = R_OFF;
    r->stop = 0;
    r->poked = 0;
    atomic_store(&r->abort_sends, 0);
    atomic_store(&r->wake_pending, 0);
}

/* The state's reporter, fit for a new start: recreated if we are a forked child that was not
 * told (after_fork_child not called), joined if a previous thread has exited. -1: exception. */
static bu_reporter *
usable_reporter(bu_state *st)
{
    bu_reporter *r = st->reporter;
    if (r != NULL && r->mode != R_OFF && r->pid != getpid()) {
        reset_in_child(st);
        r = st->reporter;
    }
    if (r == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    if (r->mode != R_OFF) {
        pthread_mutex_lock(&r->mu);
        int busy = !r->stop || r->thread_alive;
        int join = !busy && r->joinable;
        r->joinable = r->joinable && !join;
        pthread_mutex_unlock(&r->mu);
        if (busy) {
            PyErr_SetString(PyExc_RuntimeError, "the reporter is running; stop it first");
            r = NULL;
            goto error;
        }
        if (join) {
            pthread_join(r->thread, NULL);
        }
        reset_off(r);
    }
error:
    return r;
}

/* ================================================================ Python API */

/* reporter_start(host, port, protocol="compact", flush_interval=1.0, max_packet=65000,
 *                resolve_interval=30.0); host may list several names / addresses, comma-separated:
 * all their addresses are tried in order. */
static PyObject *
reporter_start(PyObject *m, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"host",       "port", "protocol", "flush_interval", "max_packet",
                             "resolve_interval", NULL};
    const char *host, *proto = "compact";
    int port;
    double interval = 1.0, resolve_interval = 30.0;
    Py_ssize_t max_packet = 65000;
    PyObject *res = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "si|sdnd:reporter_start", kwlist, &host, &port,
                                     &proto, &interval, &max_packet, &resolve_interval)) {
        goto error;
    }
    if (!(resolve_interval > 0 && resolve_interval <= 86400)) {
        PyErr_SetString(PyExc_ValueError, "reporter_start: 0 < resolve_interval <= 86400");
        goto error;
    }
    int p = strcmp(proto, "compact") == 0  ? BU_PROTO_COMPACT
            : strcmp(proto, "binary") == 0 ? BU_PROTO_BINARY
                                           : -1;
    if (p < 0 || port < 1 || port > 65535 || !(interval > 0 && interval <= 86400) ||
        max_packet < 512 || max_packet > MAX_UDP_PAYLOAD || host[0] == '\0') {
        PyErr_SetString(PyExc_ValueError,
                        "reporter_start: protocol compact|binary, port 1-65535, "
                        "0 < flush_interval <= 86400, 512 <= max_packet <= 65507, non-empty host");
        goto error;
    }
    bu_state *st = bu_state_of_module(m);
    bu_reporter *r = usable_reporter(st);
    if (r == NULL) {
        goto error;
    }
    char portbuf[16];
    snprintf(portbuf, sizeof(portbuf), "%d", port);
    r->host = strdup(host);
    r->port = strdup(portbuf);
    if (r->host == NULL || r->port == NULL) {
        free_strings(r);
        PyErr_NoMemory();
        goto error;
    }
    r->proto = p;
    r->interval_ns = (int64_t)(interval * 1e9);
    r->resolve_every_ns = (int64_t)(resolve_interval * 1e9);
    r->max_packet = (size_t)max_packet;
    r->wake_bytes = (size_t)max_packet;
    r->pid = getpid();
    r->mode = R_UDP;
    r->thread_alive = 1;
    r->joinable = 1;
    /* The flusher must not receive the application's signals (they are Python's to handle). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int rc = pthread_create(&r->thread, &attr, flusher_main, r);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        r->thread_alive = 0;
        r->joinable = 0;
        reset_off(r);
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        goto error;
    }
    atomic_store(&r->active, 1);
    res = Py_NewRef(Py_None);
error:
    return res;
}

/* reporter_start_external(wake_bytes): wake-ups and flush generations for a Python sender. */
static PyObject *
reporter_start_external(PyObject *m, PyObject *arg)
{
    Py_ssize_t wake = PyLong_AsSsize_t(arg);
    PyObject *res = NULL;
    if (wake == -1 && PyErr_Occurred()) {
        goto error;
    }
    if (wake < 1) {
        PyErr_SetString(PyExc_ValueError, "wake_bytes must be positive");
        goto error;
    }
    bu_reporter *r = usable_reporter(bu_state_of_module(m));
    if (r == NULL) {
        goto error;
    }
    r->wake_bytes = (size_t)wake;
    r->pid = getpid();
    r->mode = R_EXTERNAL;
    r->epoch++;
    atomic_store(&r->active, 1);
    res = PyLong_FromUnsignedLongLong(r->epoch);
error:
    return res;
}

/* The running external reporter; with `epoch` (the session number reporter_start_external
 * returned; NULL or None: any), only if it is still that session: the sender thread of an
 * exporter that was replaced while it was busy must not serve its successor's spans. */
static bu_reporter *
external_reporter(PyObject *m, PyObject *epoch)
{
    bu_reporter *r = bu_state_of_module(m)->reporter;
    if (r == NULL || r->mode != R_EXTERNAL) {
        PyErr_SetString(PyExc_RuntimeError, "no external reporter is running");
        return NULL;
    }
    if (epoch != NULL && epoch != Py_None) {
        unsigned long long e = PyLong_AsUnsignedLongLong(epoch);
        if (e == (unsigned long long)-1 && PyErr_Occurred()) {
            return NULL;
        }
        if (e != r->epoch) {
            PyErr_SetString(PyExc_RuntimeError, "the external reporter session was replaced");
            return NULL;
        }
    }
    return r;
}

/* reporter_wait(timeout, epoch=None) -> (generation, stopping): the external sender's sleep. */
static PyObject *
reporter_wait(PyObject *m, PyObject *args)
{
    double timeout;
    PyObject *epoch = NULL, *res = NULL;
    if (!PyArg_ParseTuple(args, "d|O:reporter_wait", &timeout, &epoch)) {
        goto error;
    }
    bu_reporter *r = external_reporter(m, epoch);
    if (r == NULL) {
        goto error;
    }
    int stopping;
    uint64_t gen;
    int64_t deadline = timeout_to_deadline(timeout);
    PyThreadState *ts = release_gil(r);
    pthread_mutex_lock(&r->mu);
    gen = begin_cycle_locked(r, deadline, &stopping);
    pthread_mutex_unlock(&r->mu);
    retake_gil(r, ts);
    res = Py_BuildValue("(KO)", (unsigned long long)gen, stopping ? Py_True : Py_False);
error:
    return res;
}

/* reporter_cycle_end(generation, ok): the external sender finished a cycle. */
static PyObject *
reporter_cycle_end(PyObject *m, PyObject *args)
{
    unsigned long long gen;
    int ok;
    PyObject *epoch = NULL, *res = NULL;
    if (!PyArg_ParseTuple(args, "Kp|O:reporter_cycle_end", &gen, &ok, &epoch)) {
        goto error;
    }
    bu_reporter *r = external_reporter(m, epoch);
    if (r == NULL) {
        goto error;
    }
    pthread_mutex_lock(&r->mu);
    end_cycle_locked(r, gen, ok);
    pthread_mutex_unlock(&r->mu);
    res = Py_NewRef(Py_None);
error:
    return res;
}

typedef struct {
    PyObject *list;
} py_ctx;

static int
py_emit(void *ctx, const unsigned char *msg, size_t len, uint32_t nspans)
{
    py_ctx *c = ctx;
    int rc = -1;
    PyObject *item = Py_BuildValue("(y#I)", (const char *)msg, (Py_ssize_t)len, nspans);
    if (item != NULL) {
        rc = PyList_Append(c->list, item);
        Py_DECREF(item);
    }
    return rc;
}

/* take_batches(max_size, format="binary") -> ([(body, nspans), ...], too_large)
 * Takes every queued record as HTTP bodies of at most max_size bytes: bare Binary Batches with
 * seqNo and ClientStats ("binary"), or ExportTraceServiceRequests ("otlp"); counts too-large
 * spans. Sending and its counters are the caller's. Holds the GIL while encoding: the HTTP
 * sender runs once per flush interval or full batch. */
static PyObject *
take_batches(PyObject *m, PyObject *args)
{
    Py_ssize_t max_size;
    const char *format = "binary";
    PyObject *epoch = NULL, *res = NULL;
    py_ctx c = {NULL};
    bu_record *list = NULL;
    if (!PyArg_ParseTuple(args, "n|sO:take_batches", &max_size, &format, &epoch)) {
        goto error;
    }
    const bu_format *fmt = bu_format_named(format);
    if (max_size < 512 || fmt == NULL) {
        PyErr_SetString(PyExc_ValueError,
                        "take_batches: max_size >= 512, format 'binary', 'compact' or 'otlp'");
        goto error;
    }
    bu_state *st = bu_state_of_module(m);
    bu_reporter *r = external_reporter(m, epoch);
    if (r == NULL || (c.list = PyList_New(0)) == NULL) {
        goto error;
    }
    bu_pack_result pr = {0, 0, 0};
    int proto = strcmp(format, "compact") == 0 ? BU_PROTO_COMPACT : BU_PROTO_BINARY;
    bu_pack_opts o = {fmt, proto, 0, (size_t)max_size, {0, 0, 0}, &r->seq_no};
    snapshot_stats(&st->stats, &o.stats);
    list = bu_buffer_take_all(&st->buffer);
    uint64_t total = list_length(list);
    int rc = bu_pack_all(&r->pk, &o, st, &list, py_emit, &c, &pr);
    atomic_fetch_add(&st->stats.dropped_too_large, pr.too_large);
    if (rc < 0) {
        /* Nothing taken may vanish uncounted: everything of this call is lost. */
        atomic_fetch_add(&st->stats.dropped_send_failed, total - pr.too_large);
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        goto error;
    }
    res = Py_BuildValue("(OK)", c.list, (unsigned long long)pr.too_large);
error:
    Py_XDECREF(c.list);
    bu_pool_put_list(&bu_state_of_module(m)->buffer.pool, list); /* record pool (or freed) */
    return res;
}

/* reporter_flush(timeout) -> bool: wake the sender and wait (GIL released) until everything
 * queued before the call was sent; False on timeout or if any of it was dropped. */
static PyObject *
reporter_flush(PyObject *m, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    PyObject *res = NULL;
    if (timeout == -1.0 && PyErr_Occurred()) {
        goto error;
    }
    bu_state *st = bu_state_of_module(m);
    bu_reporter *r = st->reporter;
    if (r == NULL || r->mode == R_OFF || r->pid != getpid()) {
        res = PyBool_FromLong(atomic_load(&st->buffer.count) == 0);
        goto error;
    }
    int ok;
    int64_t deadline = timeout_to_deadline(timeout);
    PyThreadState *ts = release_gil(r);
    pthread_mutex_lock(&r->mu);
    uint64_t my = ++r->flush_req;
    /* Records a running cycle took were still "queued" for the caller: its outcome counts. */
    uint64_t first = r->in_cycle ? r->cycles : r->cycles + 1;
    pthread_cond_broadcast(&r->wake);
    while (r->flush_done < my && (r->mode != R_UDP || r->thread_alive) &&
           wait_until(&r->done, &r->mu, deadline)) {
    }
    ok = r->flush_done >= my && r->fail_cycle < first;
    pthread_mutex_unlock(&r->mu);
    retake_gil(r, ts);
    res = PyBool_FromLong(ok);
error:
    return res;
}

/* reporter_stop(timeout) -> bool: final flush and stop; True when the flusher has exited
 * (UDP) or was told to (external: the Python sender exits after its last cycle; a second call
 * after that returns the reporter to "off"). */
static PyObject *
reporter_stop(PyObject *m, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    PyObject *res = NULL;
    if (timeout == -1.0 && PyErr_Occurred()) {
        goto error;
    }
    bu_state *st = bu_state_of_module(m);
    bu_reporter *r = st->reporter;
    if (r == NULL || r->mode == R_OFF) {
        res = Py_NewRef(Py_True);
        goto error;
    }
    if (r->pid != getpid()) { /* a forked child that was not told: nothing runs here */
        reset_in_child(st);
        res = Py_NewRef(Py_True);
        goto error;
    }
    if (r->mode == R_EXTERNAL && r->stop) {
        /* Second call, once the Python sender has finished: every external-mode call holds the
         * GIL, as we do, so nothing uses the buffers we free. */
        reset_off(r);
        res = Py_NewRef(Py_True);
        goto error;
    }
    int stopped;
    int64_t deadline = timeout_to_deadline(timeout);
    PyThreadState *ts = release_gil(r);
    stopped = stop_reporter(r, deadline);
    retake_gil(r, ts);
    if (stopped && r->mode == R_UDP) {
        reset_off(r);
    }
    res = PyBool_FromLong(stopped);
error:
    return res;
}

/* reporter_info() -> dict: mode, running, last error (for rate-limited logging in Python). */
static PyObject *
reporter_info(PyObject *m, PyObject *Py_UNUSED(arg))
{
    bu_reporter *r = bu_state_of_module(m)->reporter;
    PyObject *res = NULL;
    if (r == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    static const char *modes[] = {"off", "udp", "external"};
    int err = atomic_load(&r->last_error);
    const char *msg = err == 0 ? NULL : err > 0 ? strerror(err) : gai_strerror(err);
    pthread_mutex_lock(&r->mu);
    int mode = r->mode, running = r->mode != R_OFF && !r->stop;
    uint64_t flushed = r->flush_done;
    pthread_mutex_unlock(&r->mu);
    res = Py_BuildValue("{sssOsisssKsK}", "mode", modes[mode], "running",
                        running ? Py_True : Py_False, "last_errno", err, "last_error", msg,
                        "seq_no", (unsigned long long)atomic_load(&r->seq_no), "flush_generation",
                        (unsigned long long)flushed);
error:
    return res;
}

static PyMethodDef reporter_methods[] = {
    {"reporter_start", (PyCFunction)(void (*)(void))reporter_start, METH_VARARGS | METH_KEYWORDS,
     "reporter_start(host, port, protocol='compact', flush_interval=1.0, max_packet=65000, "
     "resolve_interval=30.0): start the native UDP flusher thread (Jaeger agent emitBatch); "
     "host: one or more comma-separated names, every address of which is tried in order."},
    {"reporter_start_external", reporter_start_external, METH_O,
     "reporter_start_external(wake_bytes) -> epoch: wake-ups for a Python sender (HTTP); the "
     "session number, which the sender passes to the calls below."},
    {"reporter_wait", reporter_wait, METH_VARARGS,
     "reporter_wait(timeout, epoch=None) -> (generation, stopping): the external sender's "
     "sleep. RuntimeError once the session `epoch` is over."},
    {"reporter_cycle_end", reporter_cycle_end, METH_VARARGS,
     "reporter_cycle_end(generation, ok, epoch=None): the external sender finished a cycle."},
    {"take_batches", take_batches, METH_VARARGS,
     "take_batches(max_size, format='binary', epoch=None) -> ([(body, nspans)], too_large): "
     "queued spans as HTTP bodies (Jaeger binary Batches or OTLP requests)."},
    {"reporter_flush", reporter_flush, METH_O,
     "reporter_flush(timeout) -> bool: send everything queued now; wait at most timeout s."},
    {"reporter_stop", reporter_stop, METH_O,
     "reporter_stop(timeout) -> bool: flush what is queued, stop the flusher."},
    {"reporter_info", reporter_info, METH_NOARGS, "State of the reporter (mode, last error...)."},
    {NULL, NULL, 0, NULL},
};

/* ================================================================ hooks (hooks.h) */

int
bu_reporter_init(PyObject *m, bu_state *st)
{
    int rc = -1;
    st->reporter = reporter_new(st);
    if (st->reporter == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    rc = PyModule_AddFunctions(m, reporter_methods);
error:
    return rc;
}

void
bu_reporter_poke(bu_state *st)
{
    bu_reporter *r = st->reporter;
    if (r == NULL || !atomic_load_explicit(&r->active, memory_order_relaxed)) {
        goto done;
    }
    size_t bytes = atomic_load_explicit(&st->buffer.bytes, memory_order_relaxed);
    size_t count = atomic_load_explicit(&st->buffer.count, memory_order_relaxed);
    /* Wake the sender once a datagram's worth is queued or the queue is half full (so that a
     * small span limit does not overflow while the flusher sleeps). Only the first poke after
     * a cycle started signals: application threads do not pile up on the mutex. */
    if ((bytes >= r->wake_bytes || count * 2 >= st->buffer.max_spans) &&
        !atomic_exchange(&r->wake_pending, 1)) {
        pthread_mutex_lock(&r->mu);
        r->poked = 1;
        pthread_cond_signal(&r->wake);
        pthread_mutex_unlock(&r->mu);
    }
done:;
}

void
bu_reporter_after_fork_child(bu_state *st)
{
    bu_reporter *r = st->reporter;
    /* Idempotent: a reporter already restarted in this child (its pid) is left alone, so the
     * order of at-fork hooks does not matter. */
    if (r == NULL || r->mode == R_OFF || r->pid != getpid()) {
        reset_in_child(st);
    }
}

void
bu_reporter_free(bu_state *st)
{
    bu_reporter *r = st->reporter;
    if (r == NULL) {
        goto done;
    }
    st->reporter = NULL;
    if (r->mode != R_OFF && r->pid == getpid()) {
        atomic_store(&r->abort_sends, 1);
        stop_reporter(r, bu_mono_ns());
        pthread_mutex_lock(&r->mu);
        int join = r->joinable;
        r->joinable = 0;
        pthread_mutex_unlock(&r->mu);
        if (join) { /* the thread needs no GIL: joining here cannot deadlock */
            pthread_join(r->thread, NULL);
        }
    }
    if (atomic_load(&r->inside) > 0) {
        /* A (daemon) thread still waits in reporter_wait / reporter_flush at interpreter exit:
         * it was told to stop and will wake, so the struct must outlive us. Leaked, once. */
        goto done;
    }
    reset_off(r);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->wake);
    pthread_cond_destroy(&r->done);
    free(r);
done:;
}
