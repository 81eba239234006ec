/*
 * server.c — the request path both fronts share (srv_request: inline, the
 * workers, the committer, parking for --acks), the nng front (the REP
 * socket and its contexts), the metrics endpoint and the graceful stop
 * (see server.h).  The epoll front is server_ep.c; the invariants below
 * hold for it too, with "an nng callback" read as "an nng callback or an
 * event loop".
 *
 * A context's life, driven by its one aio:
 *
 *     RECV --msg--> [ping: reply in place] ----------------> SEND
 *       \          [stopping: SL_ESHUTDOWN in place] ------> SEND
 *        \--------> WORK (queued; a worker runs sl_handle) -> SEND
 *     SEND --done--> RECV (unless the socket is closing)
 *
 * Invariants:
 *  1. An nng callback never waits: no fsync, no follower, no condition.
 *     It runs what cannot wait itself (sl_handle_inline: gets, puts,
 *     deletes and small batches of them, which touch memory and mapped
 *     segments only) and hands everything else to the workers: --acks,
 *     scans, stats, compaction, promotion, big requests, and a write that
 *     could start a new segment.  A read whose --min-seq is not applied
 *     yet is parked (invariant 6).
 *  2. `working` counts requests being run (inline, by a worker, or waiting
 *     for the committer) whose response has not been handed back to nng;
 *     stop waits for it to reach 0 before closing.
 *  3. Once `stopping` is set no request reaches the engine: callbacks
 *     answer SL_ESHUTDOWN and the pipe hook refuses new connections.
 *  4. Under --sync always a worker never waits for the disk on a plain
 *     write: it appends (sl_handle_defer) and hands the reply to the
 *     committer thread, which takes every reply queued so far, makes the
 *     highest of their seqs durable with one sl_sync_wait and sends them
 *     all.  While it syncs, workers append the next group — Redis's
 *     "write the AOF, fsync once, then reply to every client" loop, with
 *     two or three threads instead of one blocked thread per connection.
 *     A reply leaves only after its write is durable, so an acknowledged
 *     write survives a crash exactly as before.
 *  5. Nor does any thread wait for a write's --acks: the write is made
 *     (inline, or by a worker under --sync always) and its context parked
 *     with sl_repl_ack_park; the reply leaves from whichever thread serves
 *     the fetch that brings the last ack, or from the replication waker at
 *     the timeout.  A parked context still counts in `working`, and the
 *     drain answers whatever is parked, and every WAIT, with the acks so
 *     far (sl_repl_ack_flush) after ACK_GRACE_MS, before the socket
 *     closes.
 *  6. Nor does a thread wait for a read's --min-seq: a follower that has
 *     not applied it parks the request (sl_repl_applied_park, the bytes
 *     kept as for a worker), and the thread that applies the record runs
 *     it (sl_handle_inline) and sends the reply; at the deadline the
 *     waker answers SL_EBEHIND.  A worker blocked in the wait, woken by
 *     the apply, was one thread wakeup more between the record's arrival
 *     and the reply.  Parked, it counts in `working`; sl_repl_ack_flush
 *     answers it in the drain.
 */
#include "server.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/supplemental/http/http.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handler.h"
#include "log.h"
#include "metrics.h"
#include "quiet.h"
#include "repl.h"
#include "server_int.h"
#include "status.h"
#include "workq.h"

/* How long a stopping server lets followers bring the acks that parked
 * writes and WAITs still wait for, before answering them with the count
 * so far (invariant 5). */
#define ACK_GRACE_MS 1000

enum { ST_RECV, ST_WORK, ST_SEND };

/* A reply its client has not taken within this long is dropped (the
 * context serves others again; the client's own timeout is shorter). */
#define SEND_TIMEOUT_MS 10000
/* Replies at most waiting on one connection (and at most the message
 * limit's bytes of them): a request beyond is dropped unanswered.  A
 * client that sent and never read held one context per request, all of
 * them within a second, every other client waited, and 1.6 KB of gets of
 * a 4 MB value held 336 MB (docs/protocol.md, "Limits"). */
#define PIPE_PENDING_MAX 64
#define PIPE_SLOTS       4096 /* open addressing; full: no limit enforced */

/* An nng context and the request it serves. */
typedef struct sctx {
	sreq q; /* first */
	nng_ctx ctx;
	nng_aio *aio;
	int state;
	nng_msg *req;   /* kept for a worker */
	uint32_t pipe;  /* the connection the request came on (nng pipe id) */
	size_t pending; /* its reply's bytes, counted in that connection's pending
	                 * replies (0: not counted) */
} sctx;

typedef struct http_work {
	sl_work work; /* first */
	struct sl_server *s;
	nng_aio *aio;
} http_work;

_Static_assert(sizeof(((sl_server *)0)->pend) / sizeof(((sl_server *)0)->pend[0]) == PIPE_SLOTS,
               "pend[] has PIPE_SLOTS slots");

/* ---- the request path, whichever front read it --------------------- */

/* Counts q's reply in the metrics and hands it to q's front.  Counted
 * before the send so that a client that has its response also finds it
 * counted (tests scrape right after). */
static void srv_send(sreq *q, sl_reply *r)
{
	q->status = r->resp.status;
	sl_metrics_observe(q->s->n->metrics, q->op, q->status, sl_node_mono_ns() - q->t0_ns);
	q->ops->send(q, r);
}

/* ---- the committer (invariant 4) ------------------------------------ */

void srv_commit_submit(sl_server *s, sreq *head, sreq *tail)
{
	tail->dnext = NULL;
	pthread_mutex_lock(&s->cmu);
	if (s->ctail != NULL) {
		s->ctail->dnext = head;
	} else {
		s->chead = head;
	}
	s->ctail = tail;
	if (s->cwaiting) {
		pthread_cond_signal(&s->ccv);
	}
	pthread_mutex_unlock(&s->cmu);
}

static void *committer(void *arg)
{
	sl_server *s = arg;
	sl_node *n = s->n;
	pthread_mutex_lock(&s->cmu);
	for (;;) {
		while (s->chead == NULL && !s->cstop) {
			s->cwaiting = 1;
			pthread_cond_wait(&s->ccv, &s->cmu);
			s->cwaiting = 0;
		}
		sreq *list = s->chead;
		if (list == NULL) {
			break; /* stopping and drained */
		}
		s->chead = s->ctail = NULL;
		pthread_mutex_unlock(&s->cmu);
		uint64_t max = 0;
		for (sreq *q = list; q != NULL; q = q->dnext) {
			max = q->sync_seq > max ? q->sync_seq : max;
		}
		pthread_rwlock_rdlock(&n->db_lock);
		int rc = sl_sync_wait(n->db, max);
		pthread_rwlock_unlock(&n->db_lock);
		if (rc == SL_OK) {
			sl_repl_advance_head(n->repl, max); /* before the replies go */
		}
		for (sreq *q = list, *next; q != NULL; q = next) {
			next = q->dnext;
			if (rc != SL_OK) {
				sl_reply_sync_failed(&q->reply, rc);
			}
			srv_send(q, &q->reply);
			atomic_fetch_sub(&s->working, 1);
		}
		if (rc == SL_OK) {
			sl_repl_wake_fetches(n->repl); /* after: the clients do not wait */
		}
		pthread_mutex_lock(&s->cmu);
	}
	pthread_mutex_unlock(&s->cmu);
	return NULL;
}

/* Sends q's reply, ends its count in `working` (invariant 2), then wakes
 * the followers' fetches its write released: the client does not wait
 * for them. */
static void reply_and_wake(sreq *q)
{
	sl_server *s = q->s;
	sl_repl *repl = s->n->repl; /* s may be gone once working drops */
	int wake = q->reply.wake_repl;
	srv_send(q, &q->reply);
	atomic_fetch_sub(&s->working, 1);
	if (wake) {
		sl_repl_wake_fetches(repl);
	}
}

/* Invariant 5: the acks of q's write arrived, or its wait ended. */
static void ack_done(sl_repl_ack_wait *w, uint32_t acked)
{
	sreq *q = (sreq *)((char *)w - offsetof(sreq, ackw));
	sl_reply_acked(q->s->n, &q->reply, acked);
	reply_and_wake(q);
}

/* Sends q's reply, or parks it until its write has its acks.  on_front:
 * on the thread that read q (inline), which may count what it parks. */
static void reply_or_park(sreq *q, int on_front)
{
	if (q->reply.ack_want > 0) {
		if (on_front && q->ops->parking != NULL) {
			q->ops->parking(q, sl_reply_size(&q->reply));
		}
		sl_repl_ack_park(q->s->n->repl, &q->ackw, q->reply.ack_seq, q->reply.ack_want,
		                 q->reply.ack_timeout_ms, ack_done);
		return;
	}
	reply_and_wake(q);
}

static void work_run(sl_work *w);

/* Invariant 6: q's --min-seq was applied, or its wait ended. */
static void applied_done(sl_repl_applied_wait *w, int ok)
{
	sreq *q = (sreq *)((char *)w - offsetof(sreq, appw));
	sl_server *s = q->s;
	/* into q, as work_run's: the committer syncs up to each request's
	 * own sync_seq (a local copy, never stored, answered a --sync always
	 * write re-run after its --min-seq wait before its fdatasync) */
	int op = sl_handle_inline(s->n, q->buf, q->len, &q->reply, &q->sync_seq);
	if (op < 0 && !ok && q->reply.wait_applied > 0) {
		op = sl_handle_behind(s->n, q->buf, q->len, w->seq, &q->reply);
	}
	if (op < 0) {
		/* it needs a worker after all (the store being swapped, say) */
		q->work.fn = work_run;
		sl_workq_submit(s->wq, &q->work);
		return;
	}
	q->op = op;
	q->ops->release(q);
	q->buf = NULL;
	if (q->sync_seq > 0) {
		srv_commit_submit(s, q, q);
		return;
	}
	reply_or_park(q, 0);
}

static void work_run(sl_work *w)
{
	sreq *q = (sreq *)w;
	q->op = sl_handle_defer(q->s->n, q->buf, q->len, &q->reply, &q->sync_seq);
	q->ops->release(q);
	q->buf = NULL;
	if (q->sync_seq > 0) {
		srv_commit_submit(q->s, q, q);
		return;
	}
	reply_or_park(q, 0);
}

int srv_request(sreq *q, const void *buf, size_t len)
{
	sl_server *s = q->s;
	q->t0_ns = sl_node_mono_ns();
	q->op = SL_OP_INVALID;
	q->sync_seq = 0;
	sl_metrics_inflight_add(s->n->metrics, 1);
	/* Invariant 2: counted before `stopping` is read, so a stop that set
	 * it either sees this request in `working` or is seen here. */
	atomic_fetch_add(&s->working, 1);
	if (atomic_load(&s->stopping)) {
		sl_handle_reject(buf, len, SL_ESHUTDOWN,
		                 "server is shutting down; request not executed", &q->reply);
		srv_send(q, &q->reply);
		atomic_fetch_sub(&s->working, 1);
		return 0;
	}
	/* Invariant 1: what cannot wait runs here, one thread hop fewer. */
	uint64_t sync_seq = 0;
	int op = sl_handle_inline(s->n, buf, len, &q->reply, &sync_seq);
	if (op >= 0) {
		q->op = op;
		if (sync_seq > 0) {
			q->sync_seq = sync_seq;
			if (q->ops->commit != NULL) {
				q->ops->commit(q);
			} else {
				srv_commit_submit(s, q, q);
			}
			return 0;
		}
		reply_or_park(q, 1);
		return 0;
	}
	if (q->ops->keep(q, buf, len) != 0) {
		sl_handle_reject(buf, len, SL_ENOMEM, "out of memory", &q->reply);
		srv_send(q, &q->reply);
		atomic_fetch_sub(&s->working, 1);
		return 0;
	}
	/* still counted in working: the worker's now, or the wait's */
	if (q->reply.wait_applied > 0 && s->n->repl != NULL) {
		/* 2: its record was applied meanwhile and the read ran right
		 * here, answered (or handed on) before the return: q may be gone */
		return sl_repl_applied_park(s->n->repl, &q->appw, q->reply.wait_applied,
		                            s->n->min_seq_wait_ms, applied_done)
		           ? 1
		           : 2;
	}
	q->work.fn = work_run;
	sl_workq_submit(s->wq, &q->work);
	return 1;
}

/* ---- the nng front ---------------------------------------------------- */

/* The receive: no timeout (a context waits for the next request). */
static void ctx_recv(sctx *c)
{
	nng_aio_set_timeout(c->aio, NNG_DURATION_INFINITE);
	nng_ctx_recv(c->ctx, c->aio);
}

/* Adds d replies of db bytes in all to those pending on connection
 * `pipe` (d = 0, db = 0: only reads); *n and *bytes (may be NULL) get the
 * counts after.  A full table counts nothing (returns 0, counts 0). */
static int pipe_pending(sl_server *s, uint32_t pipe, int d, int64_t db, uint32_t *n,
                        uint64_t *bytes)
{
	int counted = 0;
	uint32_t n0 = 0;
	uint64_t b0 = 0;
	if (pipe != 0) {
		pthread_mutex_lock(&s->pmu);
		uint32_t i = (pipe * 2654435761u) % PIPE_SLOTS, at = PIPE_SLOTS;
		for (uint32_t k = 0; k < PIPE_SLOTS; k++, i = (i + 1) % PIPE_SLOTS) {
			if (s->pend[i].pipe == pipe || s->pend[i].pipe == 0) {
				at = i;
				break;
			}
		}
		if (at < PIPE_SLOTS && s->pend[at].pipe == 0 && d > 0) {
			s->pend[at].pipe = pipe;
			s->pend[at].n = 0;
			s->pend[at].bytes = 0;
		}
		if (at < PIPE_SLOTS && s->pend[at].pipe == pipe) {
			counted = 1;
			s->pend[at].n = (uint32_t)((int64_t)s->pend[at].n + d);
			s->pend[at].bytes = (uint64_t)((int64_t)s->pend[at].bytes + db);
			n0 = s->pend[at].n;
			b0 = s->pend[at].bytes;
			if (n0 == 0) {
				/* delete, moving back what a probe would then miss */
				uint32_t hole = at, j = (at + 1) % PIPE_SLOTS;
				s->pend[hole].pipe = 0;
				while (s->pend[j].pipe != 0) {
					uint32_t home =
					    (s->pend[j].pipe * 2654435761u) % PIPE_SLOTS;
					if ((j > hole && (home <= hole || home > j)) ||
					    (j < hole && home <= hole && home > j)) {
						s->pend[hole] = s->pend[j];
						s->pend[j].pipe = 0;
						hole = j;
					}
					j = (j + 1) % PIPE_SLOTS;
				}
			}
		}
		pthread_mutex_unlock(&s->pmu);
	}
	if (n != NULL) {
		*n = n0;
	}
	if (bytes != NULL) {
		*bytes = b0;
	}
	return counted;
}

/* Hands r's encoding to nng as c's response (and frees r).  If the
 * response cannot even be allocated, the request is dropped: the client
 * times out, which it must handle anyway. */
static void nng_front_send(sreq *q, sl_reply *r)
{
	sctx *c = (sctx *)q;
	sl_server *s = q->s;
	size_t sz = sl_reply_size(r);
	nng_msg *m = NULL;
	if (nng_msg_alloc(&m, sz) != 0) {
		sl_reply_free(r);
		sl_log_error("out of memory for a %zu-byte response; request dropped", sz);
		sl_metrics_inflight_add(s->n->metrics, -1);
		c->state = ST_RECV;
		ctx_recv(c);
		return;
	}
	sl_reply_pack(r, nng_msg_body(m));
	sl_reply_free(r);
	c->state = ST_SEND;
	sl_quiet_send_begin(&s->quiet); /* ended by ctx_cb */
	c->pending = pipe_pending(s, c->pipe, 1, (int64_t)sz, NULL, NULL) ? sz : 0;
	nng_aio_set_msg(c->aio, m);
	nng_aio_set_timeout(c->aio, SEND_TIMEOUT_MS);
	nng_ctx_send(c->ctx, c->aio);
}

static int nng_front_keep(sreq *q, const void *buf, size_t len)
{
	(void)buf;
	(void)len;
	sctx *c = (sctx *)q;
	q->buf = nng_msg_body(c->req);
	q->len = nng_msg_len(c->req);
	return 0;
}

static void nng_front_release(sreq *q)
{
	sctx *c = (sctx *)q;
	nng_msg_free(c->req);
	c->req = NULL;
}

static const sreq_ops nng_front_ops = {nng_front_send, nng_front_keep, nng_front_release, NULL,
                                       NULL};

/* ---- the context callback (nng's threads: invariant 1) -------------- */

static void on_request(sctx *c, nng_msg *m)
{
	c->state = ST_WORK;
	c->req = m; /* for nng_front_keep; not read once srv_request has sent */
	if (srv_request(&c->q, nng_msg_body(m), nng_msg_len(m)) == 0) {
		nng_msg_free(m);
	}
}

static void ctx_cb_run(sctx *c)
{
	sl_server *s = c->q.s;
	int rv = nng_aio_result(c->aio);
	if (c->state == ST_SEND) {
		sl_quiet_send_end(&s->quiet); /* begun by send_reply */
		if (c->pending) {
			pipe_pending(s, c->pipe, -1, -(int64_t)c->pending, NULL, NULL);
			c->pending = 0;
		}
		if (rv != 0) {
			nng_msg_free(nng_aio_get_msg(c->aio));
			nng_aio_set_msg(c->aio, NULL);
		}
		sl_metrics_inflight_add(s->n->metrics, -1);
		c->state = ST_RECV;
		if (atomic_load(&s->closing) || sl_quiet_on(&s->quiet) || rv == NNG_ECLOSED) {
			return;
		}
		ctx_recv(c);
		return;
	}
	if (rv != 0) {
		if (rv == NNG_ECLOSED || atomic_load(&s->closing) || sl_quiet_on(&s->quiet)) {
			return;
		}
		/* Anything else (NNG_ENOMEM, a cancelled receive) is transient. */
		sl_log_warn("receive failed: %s", nng_strerror(rv));
		ctx_recv(c);
		return;
	}
	nng_msg *m = nng_aio_get_msg(c->aio);
	nng_aio_set_msg(c->aio, NULL);
	if (sl_quiet_on(&s->quiet)) {
		nng_msg_free(m); /* no reply: its client sends no more (sl_server_drain) */
		return;
	}
	c->pipe =
	    nng_pipe_id(nng_msg_get_pipe(m)) > 0 ? (uint32_t)nng_pipe_id(nng_msg_get_pipe(m)) : 0;
	uint32_t pn;
	uint64_t pb;
	pipe_pending(s, c->pipe, 0, 0, &pn, &pb);
	if (pn >= PIPE_PENDING_MAX || pb >= s->n->max_msg_bytes) {
		/* its client does not take its replies: this one is dropped
		 * (the context's next receive abandons it) */
		if (atomic_fetch_add(&s->dropped, 1) % 1000 == 0) {
			sl_log_warn("a connection does not read its replies (%u waiting, %llu "
			            "bytes); dropping its requests (%llu so far)",
			            pn, (unsigned long long)pb,
			            (unsigned long long)atomic_load(&s->dropped));
		}
		nng_msg_free(m);
		ctx_recv(c);
		return;
	}
	on_request(c, m);
}

static void ctx_cb(void *arg)
{
	sctx *c = arg;
	sl_server *s = c->q.s;
	sl_quiet_cb_begin(&s->quiet);
	ctx_cb_run(c);
	sl_quiet_cb_end(&s->quiet);
}

/* Refuses connections once stopping (invariant 3). */
static void pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	sl_server *s = arg;
	if (ev == NNG_PIPE_EV_ADD_PRE && atomic_load(&s->stopping)) {
		nng_pipe_close(p);
	}
}

/* ---- metrics over HTTP --------------------------------------------- */

static void http_run(sl_work *w)
{
	http_work *hw = (http_work *)w;
	nng_aio *aio = hw->aio;
	char *text = NULL;
	size_t len = 0;
	nng_http_res *res = NULL;
	int rv = NNG_ENOMEM;
	pthread_rwlock_rdlock(&hw->s->n->db_lock);
	int mrc = sl_metrics_render(hw->s->n->metrics, hw->s->n, &text, &len);
	pthread_rwlock_unlock(&hw->s->n->db_lock);
	if (mrc == SL_OK && nng_http_res_alloc(&res) == 0) {
		rv = nng_http_res_set_header(res, "Content-Type",
		                             "text/plain; version=0.0.4; charset=utf-8");
		if (rv == 0) {
			rv = nng_http_res_copy_data(res, text, len);
		}
	}
	free(text);
	free(hw);
	if (rv != 0) {
		nng_http_res_free(res);
		nng_aio_finish(aio, rv);
		return;
	}
	nng_aio_set_output(aio, 0, res);
	nng_aio_finish(aio, 0);
}

/* nng's HTTP thread: hand the render (sl_stats_get) to a worker. */
static void http_metrics(nng_aio *aio)
{
	nng_http_handler *h = nng_aio_get_input(aio, 1);
	sl_server *s = nng_http_handler_get_data(h);
	http_work *hw = calloc(1, sizeof(*hw));
	if (hw == NULL) {
		nng_aio_finish(aio, NNG_ENOMEM);
		return;
	}
	hw->s = s;
	hw->aio = aio;
	hw->work.fn = http_run;
	sl_workq_submit(s->wq, &hw->work);
}

static int http_start(sl_server *s, const char *url, char *err, size_t cap)
{
	nng_url *u = NULL;
	int rv = nng_url_parse(&u, url);
	if (rv != 0 || strcmp(u->u_scheme, "http") != 0) {
		snprintf(err, cap, "bad --metrics-listen URL '%s' (want http://HOST:PORT)", url);
		nng_url_free(u);
		return SL_EINVAL;
	}
	/* the URL's path, if it has one, is where the metrics are served
	 * (a path given and not served was a 404 for a scraper told it) */
	char path[256];
	const char *up =
	    u->u_path != NULL && strcmp(u->u_path, "") != 0 && strcmp(u->u_path, "/") != 0
	        ? u->u_path
	        : "/metrics";
	if (snprintf(path, sizeof(path), "%s", up) >= (int)sizeof(path) || u->u_query != NULL ||
	    u->u_fragment != NULL) {
		snprintf(err, cap,
		         "bad --metrics-listen URL '%s' (a path under 256 bytes, no query)", url);
		nng_url_free(u);
		return SL_EINVAL;
	}
	rv = nng_http_server_hold(&s->http, u);
	nng_url_free(u);
	if (rv != 0) {
		snprintf(err, cap, "metrics server %s: %s", url, nng_strerror(rv));
		return SL_EIO;
	}
	if ((rv = nng_http_handler_alloc(&s->http_h, path, http_metrics)) != 0 ||
	    (rv = nng_http_handler_set_method(s->http_h, "GET")) != 0 ||
	    (rv = nng_http_handler_set_data(s->http_h, s, NULL)) != 0 ||
	    (rv = nng_http_server_add_handler(s->http, s->http_h)) != 0) {
		snprintf(err, cap, "metrics handler: %s", nng_strerror(rv));
		return SL_EIO;
	}
	s->http_h = NULL; /* the server owns it now */
	if ((rv = nng_http_server_start(s->http)) != 0) {
		snprintf(err, cap, "cannot listen for metrics on %s: %s", url, nng_strerror(rv));
		return rv == NNG_EADDRINUSE ? SL_EBUSY : SL_EIO;
	}
	return SL_OK;
}

/* ---- start and stop ------------------------------------------------ */

static int rep_start(sl_server *s, const sl_server_opts *o, char *err, size_t cap)
{
	int rv = nng_rep0_open(&s->sock);
	if (rv != 0) {
		snprintf(err, cap, "cannot open socket: %s", nng_strerror(rv));
		return SL_EIO;
	}
	s->sock_open = 1;
	/* Over-long messages are dropped by nng before they are buffered
	 * whole (docs/protocol.md: the connection is closed). */
	nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, s->n->max_msg_bytes);
	nng_pipe_notify(s->sock, NNG_PIPE_EV_ADD_PRE, pipe_cb, s);
	s->nctx = o->contexts > 0 ? o->contexts : 64;
	s->ctxs = calloc((size_t)s->nctx, sizeof(*s->ctxs));
	if (s->ctxs == NULL) {
		s->nctx = 0;
		snprintf(err, cap, "out of memory");
		return SL_ENOMEM;
	}
	for (int i = 0; i < s->nctx; i++) {
		sctx *c = &s->ctxs[i];
		c->q.s = s;
		c->q.ops = &nng_front_ops;
		if ((rv = nng_aio_alloc(&c->aio, ctx_cb, c)) != 0 ||
		    (rv = nng_ctx_open(&c->ctx, s->sock)) != 0) {
			snprintf(err, cap, "cannot open context: %s", nng_strerror(rv));
			return SL_ENOMEM;
		}
	}
	rv = nng_listen(s->sock, o->listen_url, NULL, 0);
	if (rv != 0) {
		snprintf(err, cap, "cannot listen on %s: %s", o->listen_url, nng_strerror(rv));
		return rv == NNG_EADDRINUSE                                            ? SL_EBUSY
		       : rv == NNG_EADDRINVAL || rv == NNG_EINVAL || rv == NNG_ENOTSUP ? SL_EINVAL
		                                                                       : SL_EIO;
	}
	if (o->ready != NULL && o->ready(o->ready_arg, err, cap) != 0) {
		return SL_EIO;
	}
	for (int i = 0; i < s->nctx; i++) {
		s->ctxs[i].state = ST_RECV;
		ctx_recv(&s->ctxs[i]);
	}
	return SL_OK;
}

int sl_server_start(sl_node *n, const sl_server_opts *o, sl_server **out, char *err, size_t cap)
{
	err[0] = '\0';
	sl_server *s = calloc(1, sizeof(*s));
	if (s == NULL) {
		snprintf(err, cap, "out of memory");
		return SL_ENOMEM;
	}
	s->n = n;
	s->drain_ms = o->drain_ms > 0 ? o->drain_ms : 30000;
	pthread_mutex_init(&s->cmu, NULL);
	pthread_mutex_init(&s->pmu, NULL);
	pthread_cond_init(&s->ccv, NULL);
	if (pthread_create(&s->cthread, NULL, committer, s) != 0) {
		snprintf(err, cap, "cannot start the committer thread");
		free(s);
		return SL_EIO;
	}
	int rc = sl_workq_start(o->workers > 0 ? o->workers : 8, o->running, &s->wq);
	if (rc != SL_OK) {
		snprintf(err, cap, "cannot start worker threads");
		sl_server_stop(s);
		return rc;
	}
	if (o->metrics_url != NULL && o->metrics_url[0] != '\0') {
		rc = http_start(s, o->metrics_url, err, cap);
	}
	s->engine = sl_server_engine_for(o->engine, o->listen_url);
	if (rc == SL_OK) {
		rc = s->engine == SL_SERVER_EPOLL ? ep_start(s, o, err, cap)
		                                  : rep_start(s, o, err, cap);
	}
	if (rc != SL_OK) {
		sl_server_stop(s);
		return rc;
	}
	*out = s;
	return SL_OK;
}

int sl_server_engine_for(int engine, const char *u)
{
	if (engine != SL_SERVER_AUTO) {
		return engine;
	}
	return strncmp(u, "tcp://", 6) == 0 || strncmp(u, "tcp4://", 7) == 0 ||
	               strncmp(u, "tcp6://", 7) == 0
	           ? SL_SERVER_EPOLL
	           : SL_SERVER_NNG;
}

const char *sl_server_transport(const sl_server *s)
{
	return s->engine == SL_SERVER_EPOLL ? "epoll" : "nng";
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

void sl_server_drain(sl_server *s)
{
	if (s == NULL || atomic_exchange(&s->stopping, 1)) {
		return;
	}
	if (s->http != NULL) {
		nng_http_server_stop(s->http);
		nng_http_server_release(s->http);
		s->http = NULL;
	}
	if (s->http_h != NULL) {
		nng_http_handler_free(s->http_h);
	}
	/* Invariant 2: finish what workers hold, then give nng a moment to
	 * write those responses out before the socket's pipes are closed. */
	int waited = 0;
	while (atomic_load(&s->working) > 0 && waited < s->drain_ms) {
		if (waited == ACK_GRACE_MS) {
			/* Waits for acks (writes parked for them, WAIT) are
			 * answered with the count so far (invariant 5): a WAIT
			 * of a minute held every stop for the whole drain_ms
			 * before; followers had this long to ack. */
			sl_repl_ack_flush(s->n->repl);
		}
		sleep_ms(5);
		waited += 5;
	}
	sl_repl_ack_flush(s->n->repl);
	if (atomic_load(&s->working) > 0) {
		sl_log_warn("%d requests still running after %d ms; closing anyway",
		            atomic_load(&s->working), s->drain_ms);
	}
	if (s->sock_open) {
		sleep_ms(100);
		/* Before the close, the socket goes quiet (quiet.h): requests
		 * get no reply any more (one dropped here was not run; its
		 * client gets a reset connection at the close), so the clients
		 * stop sending, and the close waits until nothing has moved
		 * for 50 ms (1 s at most).  Without it nng_close hung in about
		 * half of the stops under a client load. */
		sl_quiet_wait(&s->quiet, 50, 1000);
	}
}

void sl_server_stop(sl_server *s)
{
	if (s == NULL) {
		return;
	}
	sl_server_drain(s);
	atomic_store(&s->closing, 1);
	if (s->sock_open) {
		nng_close(s->sock);
	}
	ep_stop(s); /* its loops exit; later replies are freed unsent */
	for (int i = 0; i < s->nctx; i++) {
		if (s->ctxs[i].aio != NULL) {
			nng_aio_stop(s->ctxs[i].aio);
		}
	}
	/* Workers may still hold requests if the drain timed out: stopping
	 * the queue runs them (their sends fail on the closed socket). */
	sl_workq_stop(s->wq);
	sl_repl_ack_flush(s->n->repl); /* parked by those: before the contexts go */
	pthread_mutex_lock(&s->cmu);
	s->cstop = 1;
	pthread_cond_signal(&s->ccv);
	pthread_mutex_unlock(&s->cmu);
	pthread_join(s->cthread, NULL);
	pthread_mutex_destroy(&s->cmu);
	pthread_mutex_destroy(&s->pmu);
	pthread_cond_destroy(&s->ccv);
	for (int i = 0; i < s->nctx; i++) {
		nng_aio_free(s->ctxs[i].aio);
	}
	free(s->ctxs);
	/* The replication's requests read by the loops end before the loops'
	 * memory goes (their senders point into it).  If some never do (a
	 * worker stuck in the disk), the loops are left allocated. */
	if (s->ep == NULL || sl_repl_front_stop(s->n->repl, 10000)) {
		ep_free(s);
	} else {
		sl_log_warn("replication requests still running at exit; their buffers are left");
	}
	free(s);
}
