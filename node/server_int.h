/*
 * server_int.h — what server.c (the nng REP front, the committer, the
 * workers, metrics) and server_ep.c (the epoll front) share.  Not a public
 * interface: server.h is.
 *
 * A request, whichever front read it, is an sreq: srv_request runs it
 * (inline, by a worker, through the committer or parked for its --acks,
 * server.c's invariants 1–5) and srv_send hands its reply back to the
 * front that read it, through the front's sreq_ops.
 */
#ifndef SL_NODE_SERVER_INT_H
#define SL_NODE_SERVER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <nng/nng.h>
#include <nng/supplemental/http/http.h>

#include "handler.h"
#include "quiet.h"
#include "repl.h"
#include "server.h"
#include "workq.h"

typedef struct sreq sreq;

typedef struct sreq_ops {
	/* Takes r's encoding to the client (r is freed here or later) and
	 * ends the request's part in the front's own counts.  Called from any
	 * thread: the front's own, a worker, the committer, a replication
	 * thread (an --acks wait ending). */
	void (*send)(sreq *q, sl_reply *r);
	/* Keeps the request bytes (buf, len) passed to srv_request for a
	 * worker: sets q->buf/q->len to a copy or to the front's own message
	 * (0), or fails (-1: out of memory; the request is answered SL_ENOMEM). */
	int (*keep)(sreq *q, const void *buf, size_t len);
	/* The worker is done with what keep kept. */
	void (*release)(sreq *q);
	/* Queues q (sync_seq set) for the committer, from the thread that
	 * read it; NULL: srv_commit_submit at once. */
	void (*commit)(sreq *q);
	/* q's reply, of `bytes`, is about to be parked for its --acks, on the
	 * thread that read q (an inline request): the front counts what its
	 * connection holds that way until send.  NULL: not counted. */
	void (*parking)(sreq *q, size_t bytes);
} sreq_ops;

struct sreq {
	sl_work work; /* first: a worker gets back to the sreq from it */
	struct sl_server *s;
	const sreq_ops *ops;
	uint64_t t0_ns;
	int op, status;
	sl_reply reply;            /* built by srv_request or a worker, sent through ops */
	uint64_t sync_seq;         /* deferred: the seq that must be durable first */
	sreq *dnext;               /* in the committer's list */
	sl_repl_ack_wait ackw;     /* a write parked for its --acks (invariant 5) */
	sl_repl_applied_wait appw; /* a read parked for its --min-seq (invariant 6) */
	const void *buf;           /* kept for a worker (ops->keep) */
	size_t len;
};

typedef struct sl_ep sl_ep;

struct sl_server {
	sl_node *n;
	int engine; /* SL_SERVER_NNG or SL_SERVER_EPOLL */
	/* the nng front (server.c) */
	nng_socket sock;
	int sock_open;
	struct sctx *ctxs;
	int nctx;
	/* the epoll front (server_ep.c) */
	sl_ep *ep;
	sl_workq *wq;
	nng_http_server *http;
	nng_http_handler *http_h; /* owned by http once added */
	atomic_int stopping;
	atomic_int closing;
	atomic_int working;
	sl_quiet quiet; /* going quiet before the close (sl_server_drain) */
	int drain_ms;
	/* The committer (invariant 4): replies waiting for an fdatasync. */
	pthread_mutex_t cmu;
	pthread_cond_t ccv;
	sreq *chead, *ctail;
	int cwaiting, cstop;
	pthread_t cthread;
	/* Replies not yet taken, per nng connection (PIPE_PENDING_MAX). */
	pthread_mutex_t pmu;
	struct {
		uint32_t pipe; /* 0: free */
		uint32_t n;
		uint64_t bytes;
	} pend[4096];
	atomic_uint_fast64_t dropped; /* requests dropped by the limit */
};

/* Runs the request in buf (len bytes) read by a front into q (whose s and
 * ops are set): counts it in `working`, answers SL_ESHUTDOWN while
 * stopping, else runs it inline, through the committer or on a worker.
 * Returns 1 when a worker took the request or it waits for a --min-seq
 * (ops->keep was called: its reply comes later, from another thread), 0
 * when the front may free buf at once, 2 when ops->keep was called but the
 * request was answered before the return (its --min-seq was applied while
 * it was being parked): q may be freed already, and must not be touched.
 * (The epoll front took a 2 for a 1, counted a request away that was
 * answered, and after two of them never read the connection again.) */
int srv_request(sreq *q, const void *buf, size_t len);

/* Queues the list head..tail (linked by dnext; each with sync_seq set and
 * counted in `working`) for the committer: one lock and one wakeup. */
void srv_commit_submit(sl_server *s, sreq *head, sreq *tail);

/* The epoll front (server_ep.c).  ep_start binds and starts its threads
 * (calling o->ready between the two); ep_stop stops and joins them, ep_free
 * frees what is left once no thread may send any more. */
int ep_start(sl_server *s, const sl_server_opts *o, char *err, size_t cap);
void ep_stop(sl_server *s);
void ep_free(sl_server *s);

#endif
