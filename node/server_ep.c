/*
 * server_ep.c — the epoll front (`shiplogd --transport epoll`): clients'
 * TCP connections owned by a few event-loop threads, Redis's design, with
 * nng's REQ/REP wire format spoken here so that every nng client (the
 * client library, the CLI, shiplog-bench) talks to it unchanged.
 *
 * On the wire (nng's TCP transport, docs/protocol.md "On the wire"): each
 * side sends 8 bytes {0, 'S', 'P', 0, proto >> 8, proto & 0xff, 0, 0}
 * (REQ 0x30, REP 0x31), then messages, each a 64-bit big-endian length
 * and that many bytes: the backtrace (4-byte words, the last one, the
 * request id, with its top bit set) and the body.  A reply carries the
 * request's backtrace back before its own body.  A frame over the
 * message limit, a bad handshake or a malformed backtrace closes the
 * connection, as nng does.
 *
 * Why: with nng's REP contexts every reply sent from a thread that is not
 * nng's own (the committer after an fdatasync, a worker) costs three
 * task-queue hand-offs, each a sleep and a wakeup (docs/performance.md).
 * Here a loop reads every ready connection, runs what runs inline
 * (srv_request), queues the writes waiting for an fdatasync as one group
 * for the committer, and writes all replies at the end of the pass; a
 * reply from another thread comes back through the loop's queue and one
 * eventfd wakeup for all of those queued meanwhile.
 *
 * Threads and ownership:
 *  1. A connection belongs to one loop; only that loop reads, writes or
 *     closes it.  Other threads reach it only through the loop's done
 *     queue (lq, under L->mu), by way of an ereq that holds a count on it
 *     (c->inflight): a closed connection is freed when that count is 0.
 *  2. Every loop listens on the one listening socket (EPOLLEXCLUSIVE);
 *     whichever accepts a connection owns it.
 *  3. A connection with PIPE_PENDING_MAX requests unanswered, AWAY_MAX
 *     of them away from the loop (a worker's, a parked wait's, the
 *     replication's: each reply up to a message limit, a fetch's up to 64
 *     MiB, made before the loop sees it), a reply backlog over the
 *     message limit, or inline replies parked for their --acks holding
 *     that much (c->parked), is not read until it drains: a client that
 *     sends and never reads holds its own buffers only, at most the
 *     backlog, the parked replies and AWAY_MAX replies.  (64 pipelined
 *     fetches that were never read made 64 replies of up to 64 MiB: 4 GB
 *     a connection; 64 batches reading a 16 MiB value with --acks that
 *     no follower gave, 1 GiB.)
 *  4. Once a loop is dead (ep_stop) a reply queued to it is freed where it
 *     is sent, under L->mu, which also counts the connection down.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nng/nng.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "handler.h"
#include "log.h"
#include "metrics.h"
#include "probe.h"
#include "repl.h"
#include "server_int.h"
#include "slice.h"
#include "sp.h"
#include "status.h"

#define SP_MAX_HOPS      8  /* nng's default NNG_OPT_MAXTTL */
#define PIPE_PENDING_MAX 64 /* as the nng front's per-connection limit */
#define AWAY_MAX         2  /* requests away from the loop, a connection (invariant 3) */
#define READ_CHUNK       (64 * 1024)
#define ARENA_BYTES      (1024 * 1024) /* a pass's reads, run together */
#define OUT_KEEP         (16 * 1024)   /* output buffer kept by a drained connection */
#define HANDSHAKE_MS     10000         /* as nng's: a peer silent this long is dropped */
#define MAX_EVENTS       256
#define MAX_LOOPS        64
#define ACCEPT_PAUSE_MS  100 /* after accept failed for want of descriptors */

typedef struct eloop eloop;
typedef struct econn econn;

/* Bytes read from a connection in this pass, not yet run. */
typedef struct rdpend {
	econn *c;
	const uint8_t *buf; /* in the loop's arena; NULL: c->in */
	size_t len;
} rdpend;

static void loop_run_reads(eloop *L);

struct econn {
	eloop *L;
	int fd;           /* -1 once closed */
	int shaken;       /* the peer's handshake was read */
	uint64_t born_ms; /* accepted at (for HANDSHAKE_MS) */
	uint64_t rx;      /* bytes received, ever */
	uint64_t rx_seen; /* rx at the last sweep that saw it move */
	uint64_t idle_ms; /* since then, or since a message was whole (loop_sweep) */
	int paused;       /* not read (invariant 3) */
	int eof;          /* the peer shut its side: closed once answered and written */
	int repl;         /* a follower's, accepted on the replication socket */
	uint32_t events;  /* registered with epoll */
	uint8_t *in;
	size_t inlen, incap;
	uint8_t *out;
	size_t outoff, outlen, outcap;
	uint32_t inflight; /* requests read and not yet answered (invariant 1) */
	uint32_t away;     /* of those, handed to another thread (invariant 3) */
	size_t parked;     /* bytes of replies parked for their --acks (invariant 3) */
	int queued;        /* in L->dirty */
	struct econn *dnext;
	struct econn *prev, *next; /* L->conns */
};

typedef struct ereq {
	sreq q; /* first */
	econn *c;
	uint8_t bt[4 * SP_MAX_HOPS];
	size_t btlen;
	void *copy;     /* the request bytes, kept for a worker */
	uint8_t *frame; /* a reply packed away from the loop: a whole SP frame */
	size_t framelen;
	sl_repl_sender snd; /* a replication request's (repl_room, repl_end) */
	int away;           /* counted in c->away (set by the loop only) */
	size_t parked;      /* counted in c->parked (ep_parking; the loop only) */
	struct ereq *next;  /* in L's done queue */
} ereq;

struct eloop {
	sl_server *s;
	int epfd, efd;
	pthread_t th;
	int started;
	pthread_mutex_t mu; /* the done queue, `signalled`, `dead` */
	ereq *dhead, *dtail;
	int signalled, dead;
	atomic_int quit;
	econn *conns;
	econn *dirty;              /* to write or to look at again at the end of the pass */
	sreq *chead, *ctail;       /* writes for the committer, handed over per pass */
	uint64_t accept_resume_ms; /* the listening socket is out of the set until then */
	uint64_t sweep_ms;         /* next look for peers that never shook hands */
	uint64_t accept_log_ms;    /* next time an accept failure is logged */
	uint8_t *arena;            /* this pass's reads of connections holding no partial frame */
	size_t arena_used;
	rdpend reads[MAX_EVENTS]; /* read this pass, not yet run (loop_run_reads) */
	int nreads;
};

struct sl_ep {
	uint32_t frame_timeout_ms; /* sl_server_opts', 0: none (loop_sweep) */
	int lfd;
	int rfd; /* the replication listener (sl_repl_listen_fd; the repl owns it), or -1 */
	int nloops;
	eloop *loops;
};

static _Thread_local eloop *tl_loop; /* the loop this thread runs, if any */

/* Connections open over every loop, and the most this process takes: its
 * descriptor limit less a reserve for the store's segments, hints and
 * compactions (FD_RESERVE, or half a small limit).  Clients that took
 * every descriptor made the store's next segment fail with "I/O error"
 * (EMFILE), and writes with it. */
#define FD_RESERVE 1024
static atomic_int ep_conns;
static int ep_conns_max = 1 << 30;

/* ---- buffers ------------------------------------------------------- */

static int reserve(uint8_t **b, size_t *cap, size_t len, size_t want)
{
	if (*cap - len >= want) {
		return 0;
	}
	size_t ncap = *cap ? *cap : 4096;
	while (ncap - len < want) {
		ncap *= 2;
	}
	uint8_t *nb = realloc(*b, ncap);
	if (nb == NULL) {
		return -1;
	}
	*b = nb;
	*cap = ncap;
	return 0;
}

/* ---- connections (their loop's thread only) ------------------------ */

static void conn_dirty(econn *c)
{
	if (!c->queued) {
		c->queued = 1;
		c->dnext = c->L->dirty;
		c->L->dirty = c;
	}
}

static void conn_free(econn *c)
{
	free(c->in);
	free(c->out);
	free(c);
}

static void conn_close(econn *c)
{
	if (c->fd < 0) {
		return;
	}
	eloop *L = c->L;
	epoll_ctl(L->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	atomic_fetch_sub(&ep_conns, 1);
	c->inlen = 0;
	if (c->prev != NULL) {
		c->prev->next = c->next;
	} else {
		L->conns = c->next;
	}
	if (c->next != NULL) {
		c->next->prev = c->prev;
	}
	c->prev = c->next = NULL;
	/* freed at the end of the pass, or by the last reply coming back
	 * (invariant 1): never under a caller still holding c */
	conn_dirty(c);
}

/* Appends an SP frame around a reply of sz bytes: returns where the
 * body goes, or NULL (out of memory: the connection is closed). */
/* n more bytes queued on c's output: where they go, or NULL (out of
 * memory: the connection is closed). */
static uint8_t *conn_room(econn *c, size_t n)
{
	if (c->outoff > 0 && c->outcap - c->outlen < n) {
		/* what was written goes before the buffer grows: a client that
		 * keeps replies in flight never lets it drain to empty */
		memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
		c->outlen -= c->outoff;
		c->outoff = 0;
	}
	if (reserve(&c->out, &c->outcap, c->outlen, n) != 0) {
		sl_log_error("out of memory for a %zu-byte response; closing its connection", n);
		conn_close(c);
		return NULL;
	}
	uint8_t *p = c->out + c->outlen;
	c->outlen += n;
	conn_dirty(c);
	return p;
}

static uint8_t *conn_frame(econn *c, const uint8_t *bt, size_t btlen, size_t sz)
{
	uint8_t *p = conn_room(c, 8 + btlen + sz);
	if (p == NULL) {
		return NULL;
	}
	sl_sp_put_be64(p, btlen + sz);
	memcpy(p + 8, bt, btlen);
	return p + 8 + btlen;
}

/* Writes what is queued; 0, or -1 when the connection is gone. */
static int conn_write(econn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t w = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
		if (w > 0) {
			c->outoff += (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR) {
			continue;
		}
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return 0;
		}
		conn_close(c);
		return -1;
	}
	c->outoff = c->outlen = 0;
	if (c->outcap > OUT_KEEP) { /* a big reply went: give its room back */
		free(c->out);
		c->out = NULL;
		c->outcap = 0;
	}
	return 0;
}

static int conn_full(const econn *c)
{
	return c->inflight >= PIPE_PENDING_MAX || c->away >= AWAY_MAX ||
	       c->outlen - c->outoff >= c->L->s->n->max_msg_bytes ||
	       c->parked >= c->L->s->n->max_msg_bytes;
}

/* Registers what c waits for: input unless paused, output while some is
 * left to write. */
static void conn_arm(econn *c)
{
	uint32_t ev = (c->paused || c->eof ? 0 : EPOLLIN) | (c->outoff < c->outlen ? EPOLLOUT : 0);
	if (ev != c->events) {
		struct epoll_event e = {.events = ev, .data.ptr = c};
		if (epoll_ctl(c->L->epfd, EPOLL_CTL_MOD, c->fd, &e) == 0) {
			c->events = ev;
		}
	}
}

/* ---- requests ------------------------------------------------------ */

static void ep_send(sreq *q, sl_reply *r);
static void ereq_queue(ereq *e);
static int ep_keep(sreq *q, const void *buf, size_t len);
static void ep_release(sreq *q);
static void ep_commit(sreq *q);
static void ep_parking(sreq *q, size_t bytes);
static const sreq_ops ep_ops = {ep_send, ep_keep, ep_release, ep_commit, ep_parking};

/* e's reply is back on c's loop: c counts one request less. */
static void reply_done(econn *c, const ereq *e)
{
	c->inflight--;
	if (e->away) {
		c->away--;
	}
	c->parked -= e->parked;
	if (c->fd < 0) {
		if (c->inflight == 0 && !c->queued) {
			conn_free(c);
		}
		return;
	}
	conn_dirty(c); /* maybe no longer full (invariant 3) */
}

/* A whole SP frame for a reply of sz bytes made away from the loop (its
 * header and backtrace written): where the body goes, or NULL. */
static uint8_t *ereq_frame(ereq *e, size_t sz)
{
	e->framelen = 8 + e->btlen + sz;
	e->frame = malloc(e->framelen);
	if (e->frame == NULL) {
		e->framelen = 0;
		return NULL;
	}
	sl_sp_put_be64(e->frame, e->btlen + sz);
	memcpy(e->frame + 8, e->bt, e->btlen);
	return e->frame + 8 + e->btlen;
}

static void ep_send(sreq *q, sl_reply *r)
{
	ereq *e = (ereq *)q;
	econn *c = e->c;
	eloop *L = c->L;
	size_t sz = sl_reply_size(r);
	sl_metrics_inflight_add(q->s->n->metrics, -1);
	if (tl_loop == L) {
		/* on c's own loop (an inline request): straight into its buffer */
		if (c->fd >= 0) {
			uint8_t *body = conn_frame(c, e->bt, e->btlen, sz);
			if (body != NULL) {
				sl_reply_pack(r, body);
			}
		}
		sl_reply_free(r);
		reply_done(c, e);
		free(e);
		return;
	}
	uint8_t *body = ereq_frame(e, sz);
	if (body != NULL) {
		sl_reply_pack(r, body);
	} else {
		sl_log_error("out of memory for a %zu-byte response; request dropped", sz);
	}
	sl_reply_free(r);
	ereq_queue(e);
}

/* Hands e (its reply in e->frame, or none) to its connection's loop from
 * another thread. */
static void ereq_queue(ereq *e)
{
	econn *c = e->c;
	eloop *L = c->L;
	e->next = NULL;
	pthread_mutex_lock(&L->mu);
	if (L->dead) { /* invariant 4 */
		c->inflight--;
		if (c->inflight == 0 && c->fd < 0) {
			conn_free(c);
		}
		pthread_mutex_unlock(&L->mu);
		free(e->frame);
		free(e);
		return;
	}
	if (L->dtail != NULL) {
		L->dtail->next = e;
	} else {
		L->dhead = e;
	}
	L->dtail = e;
	int wake = !L->signalled;
	L->signalled = 1;
	pthread_mutex_unlock(&L->mu);
	if (wake) {
		uint64_t one = 1;
		ssize_t w = write(L->efd, &one, sizeof(one));
		(void)w; /* an eventfd write fails only on overflow: then it is set */
	}
}

static int ep_keep(sreq *q, const void *buf, size_t len)
{
	ereq *e = (ereq *)q;
	e->copy = malloc(len > 0 ? len : 1);
	if (e->copy == NULL) {
		return -1;
	}
	memcpy(e->copy, buf, len);
	q->buf = e->copy;
	q->len = len;
	return 0;
}

static void ep_release(sreq *q)
{
	ereq *e = (ereq *)q;
	free(e->copy);
	e->copy = NULL;
}

/* A write read by this pass waits for its fdatasync: the pass hands all
 * of them to the committer at its end (loop_flush). */
static void ep_commit(sreq *q)
{
	eloop *L = ((ereq *)q)->c->L;
	q->dnext = NULL;
	if (L->ctail != NULL) {
		L->ctail->dnext = q;
	} else {
		L->chead = q;
	}
	L->ctail = q;
}

/* An inline request's reply parked for its --acks (on the loop): its
 * bytes count against c until it is sent.  A batch's reply may carry
 * values of megabytes, and only PIPE_PENDING_MAX requests bounded what a
 * connection's parked replies held (64 x 16 MiB, for as long as the
 * client's acks timeout, a review in the twenty-seventh session). */
static void ep_parking(sreq *q, size_t bytes)
{
	ereq *e = (ereq *)q;
	e->parked = bytes;
	e->c->parked += bytes;
}

/* Queues e's frame on c: as c's output buffer itself when that is empty
 * (a catch-up's fetch reply of megabytes is not copied again), else
 * after what is there. */
static void conn_put_frame(econn *c, ereq *e)
{
	if (c->outoff == c->outlen && e->framelen > OUT_KEEP) {
		free(c->out);
		c->out = e->frame;
		c->outcap = c->outlen = e->framelen;
		c->outoff = 0;
		e->frame = NULL;
		conn_dirty(c);
		return;
	}
	uint8_t *p = conn_room(c, e->framelen);
	if (p != NULL) {
		memcpy(p, e->frame, e->framelen);
	}
}

/* Takes the replies other threads queued for L. */
static void loop_done_queue(eloop *L)
{
	uint64_t v;
	ssize_t r = read(L->efd, &v, sizeof(v));
	(void)r;
	pthread_mutex_lock(&L->mu);
	ereq *e = L->dhead;
	L->dhead = L->dtail = NULL;
	L->signalled = 0;
	pthread_mutex_unlock(&L->mu);
	while (e != NULL) {
		ereq *next = e->next;
		econn *c = e->c;
		if (c->fd >= 0 && e->frame != NULL) {
			conn_put_frame(c, e);
		}
		reply_done(c, e);
		free(e->frame);
		free(e);
		e = next;
	}
}

/* ---- replication requests (a follower's connection) ---------------- */

static uint8_t *repl_room(sl_repl_sender *snd, size_t sz)
{
	ereq *e = (ereq *)((char *)snd - offsetof(ereq, snd));
	econn *c = e->c;
	if (tl_loop == c->L) {
		/* on c's own loop (served inline, or released by a write it
		 * ran): packed straight into the connection's buffer */
		return c->fd >= 0 ? conn_frame(c, e->bt, e->btlen, sz) : NULL; /* closed: dropped */
	}
	uint8_t *body = ereq_frame(e, sz);
	if (body == NULL) {
		sl_log_error("out of memory for a %zu-byte fetch reply; not sent", sz);
	}
	return body;
}

static void repl_end(sl_repl_sender *snd)
{
	ereq *e = (ereq *)((char *)snd - offsetof(ereq, snd));
	if (tl_loop == e->c->L) {
		reply_done(e->c, e);
		free(e);
		return;
	}
	ereq_queue(e);
}

/* Hands a follower's request to the replication (sl_repl_serve). */
static int conn_repl_request(econn *c, const uint8_t *bt, size_t btlen, const uint8_t *body,
                             size_t len)
{
	ereq *e = calloc(1, sizeof(*e));
	if (e == NULL) {
		sl_log_error("out of memory for a replication request; closing its connection");
		return -1;
	}
	e->c = c;
	memcpy(e->bt, bt, btlen);
	e->btlen = btlen;
	e->snd.room = repl_room;
	e->snd.end = repl_end;
	uint32_t n = ++c->inflight;
	sl_repl_serve(c->L->s->n->repl, body, len, &e->snd);
	/* Not answered yet (answered inline, e is freed and the count is
	 * back): parked, or with a replication worker.  e stays until this
	 * loop takes its reply. */
	if (c->inflight == n) {
		e->away = 1;
		c->away++;
	}
	return 0;
}

/* Runs one request (body of len bytes, backtrace bt) read on c. */
static int conn_request(econn *c, const uint8_t *bt, size_t btlen, const uint8_t *body, size_t len)
{
	eloop *L = c->L;
	if (c->repl) {
		return conn_repl_request(c, bt, btlen, body, len);
	}
	ereq *e = malloc(sizeof(*e));
	if (e == NULL) {
		sl_log_error("out of memory for a request; closing its connection");
		return -1;
	}
	e->q.s = L->s;
	e->q.ops = &ep_ops;
	e->q.buf = NULL;
	e->c = c;
	memcpy(e->bt, bt, btlen);
	e->btlen = btlen;
	e->copy = NULL;
	e->frame = NULL;
	e->away = 0;
	e->parked = 0;
	c->inflight++;
	/* A write under --sync always is queued for the committer by the
	 * pass, not one by one: srv_request submits it at once otherwise.
	 * So the request runs with the loop's own committer list. */
	if (srv_request(&e->q, body, len) == 1) {
		/* with a worker, or parked for --min-seq: e stays until this
		 * loop takes its reply */
		e->away = 1;
		c->away++;
	}
	return 0;
}

/* Parses len bytes at buf read on c: the handshake, then whole frames,
 * each run as it comes.  Returns the bytes used; the rest is the start of
 * a frame, or frames left while c is full (invariant 3).  c may be closed
 * on return (bad input), never freed. */
static size_t conn_parse(econn *c, const uint8_t *buf, size_t len)
{
	eloop *L = c->L;
	size_t pos = 0;
	size_t maxmsg =
	    c->repl ? SL_REPL_REQ_LIMIT : L->s->n->max_msg_bytes; /* as nng's RECVMAXSZ */
	if (!c->shaken) {
		if (len < 8) {
			return 0;
		}
		if (!sl_sp_hello_is(buf, SL_SP_REQ)) {
			sl_log_debug("a connection's handshake is not an SP REQ peer's; closed");
			conn_close(c);
			return 0;
		}
		c->shaken = 1;
		pos = 8;
	}
	while (c->fd >= 0) {
		if (conn_full(c)) {
			c->paused = 1;
			conn_dirty(c); /* conn_arm takes EPOLLIN off at the end of the pass */
			break;
		}
		c->paused = 0;
		if (len - pos < 8) {
			break;
		}
		uint64_t flen = sl_sp_get_be64(buf + pos);
		if (flen > maxmsg || flen < 4) {
			sl_log_debug("a %llu-byte message (limit %zu); connection closed",
			             (unsigned long long)flen, maxmsg);
			conn_close(c);
			break;
		}
		if (len - pos - 8 < flen) {
			break;
		}
		const uint8_t *m = buf + pos + 8;
		size_t btlen = 0;
		int hops = 0;
		for (;;) {
			if (hops == SP_MAX_HOPS) {
				hops++; /* too many: dropped below */
				break;
			}
			if (btlen + 4 > flen) {
				btlen = 0; /* garbage: nng's rep0 closes the pipe too */
				break;
			}
			btlen += 4;
			hops++;
			if (m[btlen - 4] & 0x80) {
				break;
			}
		}
		if (btlen == 0) {
			sl_log_debug("a request without a request id; connection closed");
			conn_close(c);
			break;
		}
		if (hops > SP_MAX_HOPS) {
			/* through too many devices: dropped unanswered, the
			 * connection kept, as nng's rep0 does */
			sl_log_debug("a request through %d hops (at most %d); dropped", hops,
			             SP_MAX_HOPS);
			pos += 8 + flen;
			continue;
		}
		if (conn_request(c, m, btlen, m + btlen, flen - btlen) != 0) {
			conn_close(c);
			break;
		}
		pos += 8 + flen;
	}
	return pos;
}

/* Runs what buf (c->in, or the loop's arena) holds and keeps
 * the rest in c->in. */
static void conn_take(econn *c, const uint8_t *buf, size_t len)
{
	size_t used = conn_parse(c, buf, len);
	if (c->fd < 0) {
		return;
	}
	size_t left = len - used;
	if (buf == c->in) {
		if (left > 0) {
			memmove(c->in, c->in + used, left);
		}
	} else if (left > 0) {
		if (reserve(&c->in, &c->incap, 0, left) != 0) {
			sl_log_error("out of memory reading a request; connection closed");
			conn_close(c);
			return;
		}
		memcpy(c->in, buf + used, left);
	}
	c->inlen = left;
	if (left == 0) { /* c->in holds partial frames only: none is left */
		free(c->in);
		c->in = NULL;
		c->incap = 0;
	}
}

/* Reads what c has: into the loop's arena when c holds no part of a
 * frame (an idle connection keeps no input buffer), else after that part
 * in c->in.  What was read waits in L->reads for loop_run_reads. */
static void conn_read(econn *c)
{
	eloop *L = c->L;
	if (c->inlen == 0 && ARENA_BYTES - L->arena_used < READ_CHUNK) {
		loop_run_reads(L); /* the arena is full: run what it holds */
	}
	uint8_t *dst = L->arena + L->arena_used;
	size_t room = READ_CHUNK;
	if (c->inlen > 0) {
		if (reserve(&c->in, &c->incap, c->inlen, READ_CHUNK) != 0) {
			sl_log_error("out of memory reading a request; connection closed");
			conn_close(c);
			return;
		}
		dst = c->in + c->inlen;
		room = c->incap - c->inlen;
	}
	ssize_t r = recv(c->fd, dst, room, 0);
	if (r == 0 && !c->eof) {
		/* A half-close (shutdown(SHUT_WR) after the requests): what was
		 * asked is still answered and written, then the connection
		 * closes (loop_write).  It was closed at once, and replies not
		 * yet written (a worker's, a big one to a slow reader) were
		 * lost.  Again (a hangup reported once more): closed. */
		c->eof = 1;
		conn_dirty(c);
		return;
	}
	if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
		conn_close(c);
		return;
	}
	if (r <= 0) {
		return;
	}
	c->rx += (size_t)r;
	rdpend *pr = &L->reads[L->nreads++];
	pr->c = c;
	if (c->inlen > 0) {
		c->inlen += (size_t)r;
		pr->buf = NULL; /* c->in, as long as it is then */
		pr->len = 0;
	} else {
		pr->buf = dst;
		pr->len = (size_t)r;
		L->arena_used += (size_t)r;
	}
	if (L->nreads == MAX_EVENTS) {
		loop_run_reads(L);
	}
}

/* Runs prefetch stage `stage` (sl_handle_prefetch) on the requests in buf
 * (whole frames only, at most 64). */
static void prefetch_frames(eloop *L, const uint8_t *buf, size_t len, int stage)
{
	size_t pos = 0;
	for (int k = 0; k < 64 && len - pos >= 8; k++) {
		uint64_t flen = sl_sp_get_be64(buf + pos);
		if (flen < 4 || flen > len - pos - 8) {
			return;
		}
		const uint8_t *m = buf + pos + 8;
		size_t bt = 0;
		while (bt + 4 <= flen && bt < 4 * SP_MAX_HOPS && !(m[bt] & 0x80)) {
			bt += 4;
		}
		if (bt + 4 <= flen && bt < 4 * SP_MAX_HOPS) {
			sl_handle_prefetch(L->s->n, m + bt + 4, (size_t)flen - bt - 4, stage);
		}
		pos += 8 + (size_t)flen;
	}
}

/* Runs what this pass has read so far: first every request's keydir slot
 * is asked for (sl_handle_prefetch), then the requests run, so that the
 * cache misses of one connection's request overlap with the others'
 * instead of each stalling its own put or get.  (perf: the keydir probe
 * was a put's largest cost over a ping.) */
static void loop_run_reads(eloop *L)
{
	int n = L->nreads;
	/* The store lock only if free at once, as the inline path takes it:
	 * a swap waiting for it (a full resync, `follow`) makes a blocking
	 * read lock wait behind whoever holds it (a compaction, a scan), and
	 * the loop with it.  The prefetch is only a hint. */
	if (n > 1 && pthread_rwlock_tryrdlock(&L->s->n->db_lock) == 0) {
		sl_node *node = L->s->n;
		for (int stage = 0; stage < 3; stage++) {
			for (int i = 0; i < n; i++) {
				econn *c = L->reads[i].c;
				if (c->fd >= 0 && c->shaken && !c->repl) {
					const rdpend *pr = &L->reads[i];
					prefetch_frames(L, pr->buf ? pr->buf : c->in,
					                pr->buf ? pr->len : c->inlen, stage);
				}
			}
		}
		pthread_rwlock_unlock(&node->db_lock);
	}
	/* Followers' fetches last: a fetch served now answers with every
	 * record the clients' writes of this pass appended, and its reply
	 * goes out with theirs (loop_flush); served first, it would leave
	 * them to the next round trip. */
	for (int repl = 0; repl < 2; repl++) {
		for (int i = 0; i < n; i++) {
			econn *c = L->reads[i].c;
			if (c->fd >= 0 && c->repl == repl) {
				const rdpend *pr = &L->reads[i];
				if (pr->buf != NULL) {
					conn_take(c, pr->buf, pr->len);
				} else {
					conn_take(c, c->in, c->inlen);
				}
			}
		}
	}
	L->nreads = 0;
	L->arena_used = 0;
}

static void loop_accept(eloop *L, int lfd, int repl)
{
	for (int i = 0; i < 64; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				/* Out of descriptors (EMFILE, ENFILE) or memory: the
				 * listening socket stays readable, and a level-
				 * triggered loop would spin on it.  It leaves the
				 * epoll set for ACCEPT_PAUSE_MS (loop_main). */
				uint64_t now = sl_node_mono_ns() / 1000000u;
				if (now >= L->accept_log_ms) {
					sl_log_warn("cannot accept a connection: %s; not accepting "
					            "for %d ms",
					            strerror(errno), ACCEPT_PAUSE_MS);
					L->accept_log_ms = now + 10000;
				}
				epoll_ctl(L->epfd, EPOLL_CTL_DEL, lfd, NULL);
				L->accept_resume_ms = now + ACCEPT_PAUSE_MS;
				return;
			}
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				return;
			}
			continue; /* that connection's own error (ECONNABORTED, EPROTO, ...) */
		}
		if (!repl && atomic_load(&L->s->stopping)) {
			/* server.c invariant 3; followers are still served until
			 * the loops stop: the drain waits for writes their acks
			 * finish, as the nng socket serves them until then */
			close(fd);
			continue;
		}
		if (atomic_load(&ep_conns) >= ep_conns_max) {
			close(fd); /* the descriptors left are the store's */
			uint64_t now = sl_node_mono_ns() / 1000000u;
			if (now >= L->accept_log_ms) {
				sl_log_warn("refusing connections: %d are open, the most the "
				            "descriptor limit leaves beside the %d kept for the "
				            "store (raise it with ulimit -n)",
				            atomic_load(&ep_conns), FD_RESERVE);
				L->accept_log_ms = now + 10000;
			}
			continue;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		econn *c = calloc(1, sizeof(*c));
		if (c == NULL || reserve(&c->out, &c->outcap, 0, 8) != 0) {
			free(c);
			close(fd);
			continue;
		}
		c->L = L;
		c->fd = fd;
		c->repl = repl;
		c->born_ms = sl_node_mono_ns() / 1000000u;
		sl_sp_hello(c->out, SL_SP_REP);
		c->outlen = 8;
		c->events = EPOLLIN;
		struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
		if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, fd, &e) != 0) {
			conn_free(c);
			close(fd);
			continue;
		}
		atomic_fetch_add(&ep_conns, 1);
		c->next = L->conns;
		if (L->conns != NULL) {
			L->conns->prev = c;
		}
		L->conns = c;
		conn_dirty(c);
	}
}

/* The end of a pass: the writes for the committer go as one group, then
 * every connection touched is written and re-armed. */
static void loop_commit(eloop *L)
{
	if (L->chead != NULL) {
		srv_commit_submit(L->s, L->chead, L->ctail);
		L->chead = L->ctail = NULL;
	}
}

static void loop_write(eloop *L);

static void loop_flush(eloop *L)
{
	loop_commit(L); /* first: the fdatasync starts while replies are written */
	loop_write(L);
	/* then the followers' fetches that this pass's writes released
	 * (sl_repl_defer_wakes): their replies are written at once */
	sl_repl_wake_deferred();
	if (L->dirty != NULL) {
		loop_write(L);
	}
	loop_commit(L); /* those read after a pause */
}

/* Writes every connection touched and re-arms it. */
static void loop_write(eloop *L)
{
	while (L->dirty != NULL) {
		econn *c = L->dirty;
		L->dirty = c->dnext;
		c->queued = 0;
		if (c->fd < 0) {
			if (c->inflight == 0) {
				conn_free(c);
			}
			continue;
		}
		if (conn_write(c) != 0) {
			continue;
		}
		if (c->paused && !conn_full(c)) {
			conn_take(c, c->in, c->inlen); /* read before the pause */
			if (c->fd < 0) {
				continue;
			}
			if (c->queued) { /* new replies: written next time round */
				continue;
			}
		}
		if (c->eof && c->inflight == 0 && c->outoff == c->outlen && !c->paused) {
			conn_close(c); /* answered and written: queued again, to be freed */
			continue;
		}
		conn_arm(c);
	}
}

/* Once a second: a connection whose peer has not sent its handshake
 * within HANDSHAKE_MS is closed, as nng does (it held a descriptor for
 * good); so is one holding part of a message that has sent nothing more
 * for --frame-timeout-ms (nng has no such limit: 40 connections that each
 * sent all but the last byte of a 17 MiB message held 678 MB for good).
 * Progress is seen here, not at each read (no clock there): a stall is
 * timed to within a sweep.  A paused connection's input waits on us, not
 * on its peer, and is not timed. */
static void loop_sweep(eloop *L)
{
	uint64_t now = sl_node_mono_ns() / 1000000u;
	if (now < L->sweep_ms) {
		return;
	}
	/* A loop that was itself held up (a pass blocked on the store being
	 * swapped, say) has not read what came meanwhile: no peer is timed
	 * over that stretch (more than 2 s since the last sweep). */
	int stalled = L->sweep_ms != 0 && now > L->sweep_ms + 1000;
	L->sweep_ms = now + 1000;
	uint32_t limit = L->s->ep->frame_timeout_ms;
	for (econn *c = L->conns, *next; c != NULL; c = next) {
		next = c->next;
		if (!c->shaken && now - c->born_ms >= HANDSHAKE_MS) {
			sl_log_debug("a peer sent no handshake within %d ms; closed", HANDSHAKE_MS);
			conn_close(c);
			continue;
		}
		/* eof: the rest of that message never comes, and the
		 * connection closes once what it asked is answered */
		if (c->rx != c->rx_seen || c->inlen == 0 || c->paused || c->eof || stalled) {
			c->rx_seen = c->rx;
			c->idle_ms = now;
		} else if (limit != 0 && now - c->idle_ms >= limit) {
			sl_log_warn("a %s connection sent %zu bytes of a message and nothing more "
			            "for %u ms; closed (--frame-timeout-ms)",
			            c->repl ? "follower's" : "client's", c->inlen, limit);
			conn_close(c);
		}
	}
}

static void *loop_main(void *arg)
{
	eloop *L = arg;
	sl_slice_apply(); /* --io-slice-us (slice.h) */
	tl_loop = L;
	sl_repl_defer_wakes();
	struct epoll_event evs[MAX_EVENTS];
	while (!atomic_load(&L->quit)) {
		int timeout = -1;
		if (L->accept_resume_ms != 0) {
			uint64_t now = sl_node_mono_ns() / 1000000u;
			if (now >= L->accept_resume_ms) {
				/* both listeners: the one paused is added back (the
				 * other is in the set already: EEXIST) */
				sl_ep *ep = L->s->ep;
				struct epoll_event e = {.events = EPOLLIN | EPOLLEXCLUSIVE,
				                        .data.ptr = &ep->lfd};
				epoll_ctl(L->epfd, EPOLL_CTL_ADD, ep->lfd, &e);
				if (ep->rfd >= 0) {
					e.data.ptr = &ep->rfd;
					epoll_ctl(L->epfd, EPOLL_CTL_ADD, ep->rfd, &e);
				}
				L->accept_resume_ms = 0;
			} else {
				timeout = (int)(L->accept_resume_ms - now);
			}
		}
		if (L->conns != NULL && (timeout < 0 || timeout > 1000)) {
			timeout = 1000; /* loop_sweep */
		}
		int n = epoll_wait(L->epfd, evs, MAX_EVENTS, timeout);
		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			sl_log_error("epoll_wait: %s", strerror(errno));
			break;
		}
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &L->efd) {
				loop_done_queue(L);
			} else if (p == &L->s->ep->lfd) {
				loop_accept(L, L->s->ep->lfd, 0);
			} else if (p == &L->s->ep->rfd) {
				loop_accept(L, L->s->ep->rfd, 1);
			} else {
				econn *c = p;
				if (c->fd < 0) {
					continue;
				}
				if (evs[i].events & EPOLLOUT) {
					conn_dirty(c);
				}
				if ((evs[i].events & (EPOLLERR | EPOLLHUP)) ||
				    ((evs[i].events & EPOLLIN) && !c->paused)) {
					conn_read(c);
				}
			}
		}
		loop_run_reads(L);
		loop_sweep(L);
		loop_flush(L);
		sl_repl_defer_wakes(); /* for the next pass (loop_flush) */
	}
	/* Stopping: what was answered is written out (a second at most), then
	 * every connection closes. */
	loop_done_queue(L);
	loop_flush(L);
	for (int waited = 0; waited < 1000; waited += 10) {
		int left = 0;
		for (econn *c = L->conns, *next; c != NULL; c = next) {
			next = c->next; /* conn_write may close c */
			if (c->outoff < c->outlen) {
				left = 1;
				conn_write(c);
			}
		}
		if (!left) {
			break;
		}
		poll(NULL, 0, 10);
	}
	pthread_mutex_lock(&L->mu);
	L->dead = 1; /* invariant 4: from now on senders free their replies */
	ereq *e = L->dhead;
	L->dhead = L->dtail = NULL;
	while (L->conns != NULL) {
		conn_close(L->conns);
	}
	while (L->dirty != NULL) {
		econn *c = L->dirty;
		L->dirty = c->dnext;
		c->queued = 0;
		if (c->inflight == 0) {
			conn_free(c);
		}
	}
	while (e != NULL) {
		ereq *next = e->next;
		if (--e->c->inflight == 0 && e->c->fd < 0) {
			conn_free(e->c);
		}
		free(e->frame);
		free(e);
		e = next;
	}
	pthread_mutex_unlock(&L->mu);
	return NULL;
}

/* ---- start and stop -------------------------------------------------- */

static int ep_listen(const char *url, int *out, char *err, size_t cap)
{
	char host[256], port[32];
	int family;
	if (sl_tcp_split(url, &family, host, sizeof(host), port, sizeof(port)) == -1) {
		*out = -1;
		snprintf(err, cap, "--transport epoll serves tcp://HOST:PORT only, not '%s'", url);
		return SL_EINVAL;
	}
	return sl_tcp_listen(url, out, err, cap);
}

int ep_start(sl_server *s, const sl_server_opts *o, char *err, size_t cap)
{
	sl_ep *ep = calloc(1, sizeof(*ep));
	if (ep == NULL) {
		snprintf(err, cap, "out of memory");
		return SL_ENOMEM;
	}
	s->ep = ep;
	ep->lfd = -1;
	ep->frame_timeout_ms = o->frame_timeout_ms;
	ep->rfd = sl_repl_listen_fd(s->n->repl);
	/* As Redis does: the soft descriptor limit up to the hard one, then
	 * room for connections beside the store's reserve. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		if (rl.rlim_cur < rl.rlim_max) {
			struct rlimit up = {rl.rlim_max, rl.rlim_max};
			if (setrlimit(RLIMIT_NOFILE, &up) == 0) {
				rl = up;
			}
		}
		if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)(1 << 30)) {
			int lim = (int)rl.rlim_cur;
			ep_conns_max = lim > 2 * FD_RESERVE ? lim - FD_RESERVE : lim / 2;
		}
	}
	int rc = ep_listen(o->listen_url, &ep->lfd, err, cap);
	if (rc != SL_OK) {
		return rc;
	}
	int nloops = o->io_threads > 0 ? o->io_threads : 1;
	nloops = nloops > MAX_LOOPS ? MAX_LOOPS : nloops;
	ep->loops = calloc((size_t)nloops, sizeof(*ep->loops));
	if (ep->loops == NULL) {
		snprintf(err, cap, "out of memory");
		return SL_ENOMEM;
	}
	ep->nloops = nloops;
	for (int i = 0; i < ep->nloops; i++) {
		eloop *L = &ep->loops[i];
		L->s = s;
		L->arena = malloc(ARENA_BYTES);
		L->epfd = epoll_create1(EPOLL_CLOEXEC);
		L->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		pthread_mutex_init(&L->mu, NULL);
		struct epoll_event e1 = {.events = EPOLLIN, .data.ptr = &L->efd};
		struct epoll_event e2 = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = &ep->lfd};
		if (L->arena == NULL || L->epfd < 0 || L->efd < 0 ||
		    epoll_ctl(L->epfd, EPOLL_CTL_ADD, L->efd, &e1) != 0 ||
		    epoll_ctl(L->epfd, EPOLL_CTL_ADD, ep->lfd, &e2) != 0 ||
		    (ep->rfd >= 0 && (e2.data.ptr = &ep->rfd,
		                      epoll_ctl(L->epfd, EPOLL_CTL_ADD, ep->rfd, &e2) != 0))) {
			snprintf(err, cap, "cannot set up an event loop: %s", strerror(errno));
			return SL_EIO;
		}
	}
	if (o->ready != NULL && o->ready(o->ready_arg, err, cap) != 0) {
		return SL_EIO;
	}
	for (int i = 0; i < ep->nloops; i++) {
		if (pthread_create(&ep->loops[i].th, NULL, loop_main, &ep->loops[i]) != 0) {
			snprintf(err, cap, "cannot start an event loop thread");
			return SL_EIO;
		}
		ep->loops[i].started = 1;
	}
	return SL_OK;
}

void ep_stop(sl_server *s)
{
	sl_ep *ep = s->ep;
	if (ep == NULL) {
		return;
	}
	/* every loop told first: each may take a second to write its
	 * replies out, and they do it at the same time */
	for (int i = 0; i < ep->nloops; i++) {
		eloop *L = &ep->loops[i];
		if (!L->started) {
			L->dead = 1;
			continue;
		}
		atomic_store(&L->quit, 1);
		uint64_t one = 1;
		ssize_t w = write(L->efd, &one, sizeof(one));
		(void)w;
	}
	for (int i = 0; i < ep->nloops; i++) {
		eloop *L = &ep->loops[i];
		if (L->started) {
			pthread_join(L->th, NULL);
			L->started = 0;
		}
	}
	if (ep->lfd >= 0) {
		close(ep->lfd);
		ep->lfd = -1;
	}
}

void ep_free(sl_server *s)
{
	sl_ep *ep = s->ep;
	if (ep == NULL) {
		return;
	}
	for (int i = 0; i < ep->nloops; i++) {
		eloop *L = &ep->loops[i];
		if (L->epfd > 0) {
			close(L->epfd);
		}
		if (L->efd > 0) {
			close(L->efd);
		}
		pthread_mutex_destroy(&L->mu);
		free(L->arena);
	}
	free(ep->loops);
	free(ep);
	s->ep = NULL;
}
