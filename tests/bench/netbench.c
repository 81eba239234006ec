/*
 * netbench.c — `shiplog-bench --url URL`: a shiplogd server benchmark in the
 * manner of redis-benchmark.
 *
 * It exists to put a number on the whole request path (client library, nng,
 * protobuf, the server's workers, the engine) and to compare it with
 * redis-benchmark against redis-server on the same machine in the same run,
 * so its shape follows redis-benchmark's:
 *
 *   shiplog-bench --url URL [-t put,get,ping] [-c CLIENTS] [-n REQUESTS]
 *                 [-d VALUE_SIZE] [-r KEYSPACE] [-P PIPELINE] [--sequential]
 *                 [--timeout MS] [--acks N] [--engine epoll|async|threads]
 *                 [--json]
 *
 * -c connections (clients), each with one request in flight; -n operations per test in total,
 * shared by all clients; -P N operations per Batch message (like the client library's pipeline,
 * sl_pipeline_*); -P 1 sends one plain request per operation.
 *
 * Three engines drive the clients; all send the same messages:
 *
 *   --engine epoll (the default): redis-benchmark's design, one thread and
 *     one epoll set over plain non-blocking TCP sockets speaking nng's SP
 *     framing itself (see "the epoll engine" below; tcp:// URLs only).
 *     Per round trip one write and one or two reads, no thread hand-off:
 *     on a 2-core machine it takes about as much CPU per message as
 *     redis-benchmark (-c 50 -P 16 get: 0.75 us per operation against
 *     redis-benchmark's 0.77 and the async engine's 1.37), and whatever CPU
 *     the load generator burns on a small machine is taken from the server
 *     measured.
 *   --engine async: no thread per client.  Each client is an nng_aio on its
 *     own REQ socket whose completion callback (run on nng's own worker
 *     threads) decodes the response and sends the next request, encoding
 *     into the message it just received (no allocation per request on our
 *     side).  nng's poller and task threads wake for every message: about
 *     twice the epoll engine's CPU.  Takes any URL nng dials.
 *   --engine threads: the original engine, one thread and one synchronous
 *     sl_client (sl_client_ping/put/get, sl_pipeline_exec) per client.  Each
 *     round trip costs the application thread's wakeups on top of nng's: on
 *     a 2-core machine, -c 50 -P 1, the benchmark itself used ~40-45 % of
 *     the CPU (~2 context switches and ~18 us of CPU per request; the async
 *     engine ~0.3 and ~6 us, ~22 % of the CPU).  Kept to measure the client
 *     library's synchronous path.
 *
 * A transport failure (timeout, lost connection) counts every operation of
 * its message as failed, like a failed call of the client library; the
 * threads engine goes on with the next operation, an async or epoll
 * engine's client stops for the rest of that test (the others carry on; an
 * epoll client reconnects for the next test).
 *
 * Keys are "key:%012llu" (16 bytes, like redis-benchmark's
 * key:__rand_int__) with the number uniform in [0, r) — without -r every
 * operation uses key:000000000000, as redis-benchmark does — or, with
 * --sequential, the operation's index mod r (so -n N -r N --sequential
 * writes exactly N distinct keys).  Values are incompressible
 * random bytes.
 *
 * Latency of an operation = the round trip of the message that carried it
 * (with -P N all N operations of a batch get the batch's round trip, as in
 * redis-benchmark's pipeline mode), kept in a per-client log-linear
 * histogram (relative error under 1.6 %) merged for p50/p99/p99.9.  ops/s =
 * operations / wall time from the moment every client is connected to the
 * moment the last finishes.
 *
 * Exit status: 0; 1 when any operation failed (the first error is printed)
 * or a get returned a value of the wrong size; 2 on bad arguments or when
 * a client cannot connect.
 */
#define _GNU_SOURCE
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "shiplog.pb-c.h"
#include "spclient.h"

int sl_netbench_main(int argc, char **argv);

enum { T_PING, T_PUT, T_GET };
static const char *const test_names[] = {"ping", "put", "get"};

static const char *opt_url;
static int opt_tests[16], opt_ntests;
static int opt_clients = 50;
static uint64_t opt_requests = 100000;
static size_t opt_value_size = 3; /* redis-benchmark's default */
static uint64_t opt_keyspace;     /* 0: one key */
static uint32_t opt_acks;         /* --acks: followers per write (0: none) */
static int opt_pipeline = 1;
static int opt_sequential;
static int opt_timeout_ms = 10000;
static int opt_json;
enum { ENG_ASYNC, ENG_THREADS, ENG_EPOLL };
static int opt_engine = ENG_EPOLL;
#define opt_threads (opt_engine == ENG_THREADS)

/* ---- histogram ---------------------------------------------------------- */

/* Values (ns) below 128 have their own bucket; above, each power of two is
 * split into 64 buckets. */
#define HBUCKETS (128 + 57 * 64)

typedef struct hist {
	uint64_t b[HBUCKETS];
	uint64_t count;
} hist;

static int hist_index(uint64_t v)
{
	if (v < 128) {
		return (int)v;
	}
	int e = 63 - __builtin_clzll(v);
	return 128 + (e - 7) * 64 + (int)((v >> (e - 6)) & 63);
}

/* The middle of bucket i. */
static double hist_value(int i)
{
	if (i < 128) {
		return i;
	}
	int e = (i - 128) / 64 + 7, sub = (i - 128) % 64;
	double lo = (double)(1ull << e) + (double)sub * (double)(1ull << (e - 6));
	return lo + (double)(1ull << (e - 6)) / 2;
}

static void hist_add(hist *h, uint64_t ns, uint64_t n)
{
	h->b[hist_index(ns)] += n;
	h->count += n;
}

static double hist_pct(const hist *h, double q)
{
	if (!h->count) {
		return 0;
	}
	uint64_t want = (uint64_t)(q * (double)h->count), seen = 0;
	if (want >= h->count) {
		want = h->count - 1;
	}
	for (int i = 0; i < HBUCKETS; i++) {
		seen += h->b[i];
		if (seen > want) {
			return hist_value(i);
		}
	}
	return 0;
}

/* ---- the clients ------------------------------------------------------ */

/* One operation's protobuf body (async engine). */
typedef union op_body {
	Shiplog__Get get;
	Shiplog__Put put;
	Shiplog__Ping ping;
} op_body;

/* Where the async engine unpacks a Response: a bump allocator reset after
 * every response, falling back to malloc when full. */
#define ARENA_BYTES (64u << 10)

typedef struct worker {
	int id;
	uint64_t rng;
	char *vbuf; /* value bytes: opt_value_size + 256, values start at random offsets */
	/* threads engine */
	pthread_t th;
	sl_client *c;
	sl_pipeline *p;
	/* async engine */
	nng_socket sock;
	nng_aio *aio;
	nng_msg *msg;  /* kept between requests: the last response, reused */
	int receiving; /* the aio's operation: 0 send, 1 receive */
	uint64_t req_id;
	uint64_t nops, t0; /* the message in flight: its operations, send time */
	Shiplog__Op *bops; /* -P > 1: the Batch's opt_pipeline ops, their bodies, keys */
	Shiplog__Op **bopp;
	op_body *bodies;
	char (*keys)[17];
	ProtobufCAllocator alloc;
	char *arena;
	size_t arena_used;
	/* epoll engine */
	int fd;        /* -1: not connected */
	int live;      /* still running the current test */
	int want_out;  /* EPOLLOUT asked for: the request did not fit the socket */
	uint8_t *obuf; /* the request in flight, framed */
	size_t ocap, olen, ooff;
	uint8_t *ibuf; /* its response so far, framed */
	size_t icap, ilen;
	char errmsg[200]; /* this round trip's error detail (as sl_client_errmsg) */
	/* results of the current test */
	hist h;
	uint64_t ops, hits, misses, errors, badsize;
	int first_err;
	char first_msg[256];
} worker;

static int cur_test;
static _Atomic uint64_t next_op;
static pthread_barrier_t start_bar, end_bar;
static _Atomic int quit;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void make_key(worker *w, uint64_t op, char key[17])
{
	uint64_t k = 0;
	if (opt_sequential) {
		k = op % (opt_keyspace ? opt_keyspace : opt_requests);
	} else if (opt_keyspace) {
		k = rng_next(&w->rng) % opt_keyspace;
	}
	/* "key:%012llu" by hand: snprintf was a tenth of the load client's
	 * own (user-space) time per put */
	k %= 1000000000000ull;
	memcpy(key, "key:", 4);
	for (int i = 15; i >= 4; i--, k /= 10) {
		key[i] = (char)('0' + k % 10);
	}
	key[16] = '\0';
}

static const char *value_for(worker *w)
{
	return w->vbuf + rng_next(&w->rng) % 256;
}

static void note_error(worker *w, int rc)
{
	w->errors++;
	if (!w->first_err) {
		/* threads: the client library's message; async: the engine's own */
		const char *msg = w->c ? sl_client_errmsg(w->c) : w->errmsg;
		w->first_err = rc;
		snprintf(w->first_msg, sizeof w->first_msg, "%s%s%s", sl_client_strerror(rc),
		         *msg ? ": " : "", msg);
	}
}

static void note_get(worker *w, int status, size_t vlen)
{
	if (status == SL_OK) {
		w->hits++;
		if (vlen != opt_value_size) {
			w->badsize++;
		}
	} else if (status == SL_ENOTFOUND) {
		w->misses++;
	} else {
		note_error(w, status);
	}
}

/* One operation as one request. */
static void run_single(worker *w, uint64_t op)
{
	char key[17];
	void *val = NULL;
	size_t vlen = 0;
	int rc = SL_OK;
	uint64_t t0 = now_ns();
	switch (cur_test) {
	case T_PING:
		rc = sl_client_ping(w->c);
		break;
	case T_PUT:
		make_key(w, op, key);
		rc = sl_client_put(w->c, key, 16, value_for(w), opt_value_size, NULL);
		break;
	case T_GET:
		make_key(w, op, key);
		rc = sl_client_get(w->c, key, 16, &val, &vlen, NULL);
		break;
	}
	hist_add(&w->h, now_ns() - t0, 1);
	w->ops++;
	if (cur_test == T_GET) {
		note_get(w, rc, vlen);
		free(val);
	} else if (rc != SL_OK) {
		note_error(w, rc);
	}
}

/* ops operations as one Batch message. */
static void run_batch(worker *w, uint64_t op, uint64_t ops)
{
	char key[17];
	for (uint64_t i = 0; i < ops; i++) {
		int rc = SL_OK;
		switch (cur_test) {
		case T_PING:
			rc = sl_pipeline_ping(w->p);
			break;
		case T_PUT:
			make_key(w, op + i, key);
			rc = sl_pipeline_put(w->p, key, 16, value_for(w), opt_value_size, 0);
			break;
		case T_GET:
			make_key(w, op + i, key);
			rc = sl_pipeline_get(w->p, key, 16);
			break;
		}
		if (rc != SL_OK) {
			note_error(w, rc);
			sl_pipeline_reset(w->p);
			return;
		}
	}
	const sl_client_item *items;
	size_t n;
	uint64_t t0 = now_ns();
	int rc = sl_pipeline_exec(w->p, &items, &n);
	hist_add(&w->h, now_ns() - t0, ops);
	w->ops += ops;
	if (rc != SL_OK) {
		w->errors += ops - 1;
		note_error(w, rc);
		sl_pipeline_reset(w->p);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		if (cur_test == T_GET) {
			note_get(w, items[i].status, items[i].vlen);
		} else if (items[i].status != SL_OK) {
			note_error(w, items[i].status);
		}
	}
}

static void *worker_main(void *arg)
{
	worker *w = arg;
	for (;;) {
		pthread_barrier_wait(&start_bar);
		if (atomic_load(&quit)) {
			return NULL;
		}
		for (;;) {
			uint64_t op = atomic_fetch_add(&next_op, (uint64_t)opt_pipeline);
			if (op >= opt_requests) {
				break;
			}
			uint64_t ops = opt_requests - op < (uint64_t)opt_pipeline
			                   ? opt_requests - op
			                   : (uint64_t)opt_pipeline;
			if (opt_pipeline == 1) {
				run_single(w, op);
			} else {
				run_batch(w, op, ops);
			}
		}
		pthread_barrier_wait(&end_bar);
	}
}

/* ---- the async engine ----------------------------------------------------
 *
 * A client's state is touched only by its own chain: the main thread starts
 * it (async_next), then each completion of its aio runs async_cb on one of
 * nng's threads, which starts the next operation on the same aio.  Exactly
 * one operation is outstanding per aio, so the callbacks of one client never
 * overlap.  The main thread waits on async_cv until every client has found
 * the shared counter exhausted (or stopped on a transport error). */

static pthread_mutex_t async_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t async_cv = PTHREAD_COND_INITIALIZER;
static int async_running;

/* Arena allocator for protobuf-c: the Response's pieces; free is a no-op
 * for arena memory. */
static void *arena_alloc(void *data, size_t size)
{
	worker *w = data;
	size = (size + 15) & ~(size_t)15;
	if (size <= ARENA_BYTES - w->arena_used) {
		void *p = w->arena + w->arena_used;
		w->arena_used += size;
		return p;
	}
	return malloc(size);
}

static void arena_free(void *data, void *p)
{
	worker *w = data;
	if ((char *)p < w->arena || (char *)p >= w->arena + ARENA_BYTES) {
		free(p);
	}
}

static void async_stop(void)
{
	pthread_mutex_lock(&async_mu);
	if (--async_running == 0) {
		pthread_cond_signal(&async_cv);
	}
	pthread_mutex_unlock(&async_mu);
}

/* The message in flight failed as a whole (rc, detail in w->errmsg): all
 * its operations count as failed, as in run_single/run_batch; the client
 * stops for this test. */
static void async_fail(worker *w, int rc)
{
	hist_add(&w->h, now_ns() - w->t0, w->nops);
	w->ops += w->nops;
	w->errors += w->nops - 1;
	note_error(w, rc);
	async_stop();
}

/* Fills in the protobuf body (and key) of operation op of the current test,
 * consuming w->rng exactly as run_single/run_batch do. */
static void fill_body(worker *w, uint64_t op, op_body *b, char key[17])
{
	switch (cur_test) {
	case T_PING:
		shiplog__ping__init(&b->ping);
		break;
	case T_PUT:
		make_key(w, op, key);
		shiplog__put__init(&b->put);
		b->put.has_key = 1;
		b->put.key.data = (uint8_t *)key;
		b->put.key.len = 16;
		b->put.has_value = 1;
		b->put.value.data = (uint8_t *)value_for(w);
		b->put.value.len = opt_value_size;
		break;
	case T_GET:
		make_key(w, op, key);
		shiplog__get__init(&b->get);
		b->get.has_key = 1;
		b->get.key.data = (uint8_t *)key;
		b->get.key.len = 16;
		break;
	}
}

/* Takes the next operations from the shared counter and builds their
 * message in *q (pointing into *b, *one and w's buffers): 1, or 0 when
 * there are none left.  Shared by the async and epoll engines. */
static int take_request(worker *w, Shiplog__Request *q, Shiplog__Batch *b, op_body *one)
{
	uint64_t op = atomic_fetch_add(&next_op, (uint64_t)opt_pipeline);
	if (op >= opt_requests) {
		return 0;
	}
	w->nops =
	    opt_requests - op < (uint64_t)opt_pipeline ? opt_requests - op : (uint64_t)opt_pipeline;
	w->t0 = now_ns();
	w->errmsg[0] = '\0';

	shiplog__request__init(q);
	shiplog__batch__init(b);
	q->has_id = 1;
	q->id = ++w->req_id;
	if (opt_acks > 0) { /* as sl_client_set_acks(c, opt_acks, opt_timeout_ms) */
		q->has_acks = 1;
		q->acks = opt_acks;
		q->has_acks_timeout_ms = 1;
		q->acks_timeout_ms = (uint32_t)opt_timeout_ms;
	}
	if (opt_pipeline == 1) {
		fill_body(w, op, one, w->keys[0]);
		switch (cur_test) {
		case T_PING:
			q->op_case = SHIPLOG__REQUEST__OP_PING;
			q->ping = &one->ping;
			break;
		case T_PUT:
			q->op_case = SHIPLOG__REQUEST__OP_PUT;
			q->put = &one->put;
			break;
		case T_GET:
			q->op_case = SHIPLOG__REQUEST__OP_GET;
			q->get = &one->get;
			break;
		}
	} else {
		for (uint64_t i = 0; i < w->nops; i++) {
			Shiplog__Op *o = &w->bops[i];
			op_body *ob = &w->bodies[i];
			shiplog__op__init(o);
			fill_body(w, op + i, ob, w->keys[i]);
			switch (cur_test) {
			case T_PING:
				o->op_case = SHIPLOG__OP__OP_PING;
				o->ping = &ob->ping;
				break;
			case T_PUT:
				o->op_case = SHIPLOG__OP__OP_PUT;
				o->put = &ob->put;
				break;
			case T_GET:
				o->op_case = SHIPLOG__OP__OP_GET;
				o->get = &ob->get;
				break;
			}
		}
		b->n_ops = (size_t)w->nops;
		b->ops = w->bopp;
		q->op_case = SHIPLOG__REQUEST__OP_BATCH;
		q->batch = b;
	}

	return 1;
}

/* Sends the next operations as one message; or, when there are none left,
 * finishes the client. */
static void async_next(worker *w)
{
	Shiplog__Request q;
	Shiplog__Batch b;
	op_body one;
	if (!take_request(w, &q, &b, &one)) {
		async_stop();
		return;
	}

	/* Encode into the last response's message (its buffer is big enough
	 * after the first few requests): no allocation on our side. */
	size_t sz = shiplog__request__get_packed_size(&q);
	int rv;
	if (w->msg == NULL) {
		rv = nng_msg_alloc(&w->msg, sz);
	} else {
		nng_msg_header_clear(w->msg);
		rv = nng_msg_realloc(w->msg, sz);
	}
	if (rv != 0) {
		snprintf(w->errmsg, sizeof w->errmsg, "out of memory for a %zu-byte request", sz);
		async_fail(w, SL_ENOMEM);
		return;
	}
	shiplog__request__pack(&q, nng_msg_body(w->msg));
	nng_aio_set_msg(w->aio, w->msg);
	w->msg = NULL;
	w->receiving = 0;
	nng_send_aio(w->sock, w->aio);
}

/* Checks the response r to the message in flight as run_single/run_batch
 * check the client library's results. */
static void async_check(worker *w, const Shiplog__Response *r)
{
	int rc;
	if (r->has_id && r->id != w->req_id) {
		snprintf(w->errmsg, sizeof w->errmsg, "response id does not match the request");
		rc = SL_EPROTO;
	} else {
		if (r->status < 0 && r->error != NULL) {
			snprintf(w->errmsg, sizeof w->errmsg, "%s", r->error);
		}
		rc = r->has_status ? r->status : SL_EPROTO;
	}
	if (opt_pipeline == 1) {
		if (cur_test == T_GET) {
			note_get(w, rc, rc == SL_OK && r->has_value ? r->value.len : 0);
		} else if (rc != SL_OK) {
			note_error(w, rc);
		}
		return;
	}
	if (rc == SL_OK && r->n_results != w->nops) {
		snprintf(w->errmsg, sizeof w->errmsg, "batch: %zu results for %zu operations",
		         r->n_results, (size_t)w->nops);
		rc = SL_EPROTO;
	}
	if (rc != SL_OK) {
		w->errors += w->nops - 1;
		note_error(w, rc == SL_ENOTFOUND ? SL_EPROTO : rc);
		return;
	}
	for (size_t i = 0; i < r->n_results; i++) {
		const Shiplog__Result *x = r->results[i];
		int st = x->has_status ? x->status : SL_OK;
		if (cur_test == T_GET) {
			note_get(w, st, x->has_value ? x->value.len : 0);
		} else if (st != SL_OK) {
			note_error(w, st);
		}
	}
}

/* The response body to the message in flight arrived: checks it and counts
 * the message's operations and round trip. */
static void finish_response(worker *w, const uint8_t *body, size_t len)
{
	Shiplog__Response *r = shiplog__response__unpack(&w->alloc, len, body);
	if (r == NULL) {
		snprintf(w->errmsg, sizeof w->errmsg, "malformed response from server");
		w->errors += w->nops - 1;
		note_error(w, SL_EPROTO);
	} else {
		async_check(w, r);
		shiplog__response__free_unpacked(r, &w->alloc);
	}
	w->arena_used = 0;
	hist_add(&w->h, now_ns() - w->t0, w->nops);
	w->ops += w->nops;
}

static void async_cb(void *arg)
{
	worker *w = arg;
	int rv = nng_aio_result(w->aio);
	if (!w->receiving) {
		if (rv != 0) {
			w->msg = nng_aio_get_msg(w->aio); /* still ours */
			nng_aio_set_msg(w->aio, NULL);
			snprintf(w->errmsg, sizeof w->errmsg, "send: %s", nng_strerror(rv));
			async_fail(w, sl_client_map_nng(rv));
			return;
		}
		w->receiving = 1;
		nng_recv_aio(w->sock, w->aio);
		return;
	}
	if (rv != 0) {
		if (rv == NNG_ETIMEDOUT) {
			snprintf(w->errmsg, sizeof w->errmsg, "no response within %d ms",
			         opt_timeout_ms);
		} else {
			snprintf(w->errmsg, sizeof w->errmsg, "receive: %s", nng_strerror(rv));
		}
		async_fail(w, sl_client_map_nng(rv));
		return;
	}
	w->msg = nng_aio_get_msg(w->aio);
	nng_aio_set_msg(w->aio, NULL);
	finish_response(w, nng_msg_body(w->msg), nng_msg_len(w->msg));
	async_next(w);
}

/* Opens client w's socket and aio.  SL_OK or an SL_E* code. */
static int client_bufs(worker *w)
{
	size_t n = (size_t)opt_pipeline;
	w->keys = calloc(n, sizeof *w->keys);
	w->arena = malloc(ARENA_BYTES);
	if (opt_pipeline > 1) {
		w->bops = calloc(n, sizeof *w->bops);
		w->bopp = calloc(n, sizeof *w->bopp);
		w->bodies = calloc(n, sizeof *w->bodies);
		if (!w->bops || !w->bopp || !w->bodies) {
			return SL_ENOMEM;
		}
		for (size_t i = 0; i < n; i++) {
			w->bopp[i] = &w->bops[i];
		}
	}
	if (!w->keys || !w->arena) {
		return SL_ENOMEM;
	}
	w->alloc.alloc = arena_alloc;
	w->alloc.free = arena_free;
	w->alloc.allocator_data = w;
	return SL_OK;
}

static int async_open(worker *w)
{
	int rv = client_bufs(w);
	if (rv != SL_OK) {
		return rv;
	}
	rv = nng_req0_open(&w->sock);
	if (rv != 0) {
		return sl_client_map_nng(rv);
	}
	/* As sl_client_open: writes are not idempotent, never resend; accept
	 * responses up to the client library's limit. */
	if ((rv = nng_socket_set_ms(w->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE)) != 0 ||
	    (rv = nng_socket_set_size(w->sock, NNG_OPT_RECVMAXSZ,
	                              (size_t)(1u << 30) + (4u << 20))) != 0) {
		return sl_client_map_nng(rv);
	}
	nng_socket_set_ms(w->sock, NNG_OPT_RECONNMINT, 50);
	nng_socket_set_ms(w->sock, NNG_OPT_RECONNMAXT, 1000);
	if ((rv = nng_dial(w->sock, opt_url, NULL, 0)) != 0 ||
	    (rv = nng_aio_alloc(&w->aio, async_cb, w)) != 0) {
		return sl_client_map_nng(rv);
	}
	/* A write with acks may be held by the server for acks_timeout_ms:
	 * wait that much longer for its answer (as the client library does). */
	nng_aio_set_timeout(w->aio, opt_timeout_ms + (opt_acks > 0 ? opt_timeout_ms : 0));
	return SL_OK;
}

static void client_bufs_free(worker *w)
{
	free(w->keys);
	free(w->bops);
	free(w->bopp);
	free(w->bodies);
	free(w->arena);
}

static void async_close(worker *w)
{
	if (w->aio) {
		nng_aio_stop(w->aio);
		nng_aio_free(w->aio);
	}
	if (nng_socket_id(w->sock) > 0) {
		nng_close(w->sock);
	}
	nng_msg_free(w->msg);
	client_bufs_free(w);
}

static void async_run(worker *ws)
{
	async_running = opt_clients;
	for (int i = 0; i < opt_clients; i++) {
		async_next(&ws[i]);
	}
	pthread_mutex_lock(&async_mu);
	while (async_running > 0) {
		pthread_cond_wait(&async_cv, &async_mu);
	}
	pthread_mutex_unlock(&async_mu);
}

/* ---- the epoll engine -----------------------------------------------------
 *
 * redis-benchmark's design: one thread, one epoll set, every connection a
 * plain non-blocking TCP socket with one message in flight.  It speaks
 * nng's SP-over-TCP framing itself, as nng 1.5.2's tcp transport writes it
 * (src/sp/transport/tcp/tcp.c), so the server it measures is the real
 * shiplogd behind a real nng REP socket:
 *
 *   - on connecting, each side sends 8 bytes {0, 'S', 'P', 0, its protocol
 *     as 16 bits big-endian, 0, 0} (REQ 0x30, REP 0x31) and checks the
 *     peer's;
 *   - every message is then a 64-bit big-endian length and that many bytes:
 *     the SP header, then the body.  A request's header is its 32-bit
 *     request id with the top bit set; the REP socket answers with the same
 *     4 bytes before the response body.
 *
 * Per round trip it makes one write and one or two reads, no thread
 * hand-off: on a 2-vCPU machine the load generator then takes about as much
 * CPU per message as redis-benchmark does, where the async engine (nng's
 * poller and task threads wake for each message) takes about twice as much.
 * A transport failure (timeout, closed connection, a malformed frame)
 * closes the connection and stops that client for the test, as in the
 * async engine; the next test reconnects it. */

static int ep_fd = -1;
static int ep_running;
static char ep_host[256], ep_port[16];

static uint32_t sp_id(const worker *w)
{
	return (uint32_t)w->req_id | 0x80000000u;
}

static int ep_parse_url(const char *url)
{
	return sp_parse_url(url, ep_host, sizeof ep_host, ep_port, sizeof ep_port);
}

/* Connects w (blocking, then the SP handshake) and adds it to the epoll
 * set.  SL_OK, or an SL_E* code with the detail in w->errmsg. */
static int ep_connect(worker *w)
{
	int rc;
	int fd = sp_dial(ep_host, ep_port, opt_timeout_ms, w->errmsg, sizeof w->errmsg, &rc);
	if (fd < 0) {
		return rc;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = w};
	if (fcntl(fd, F_SETFL, O_NONBLOCK) != 0 || epoll_ctl(ep_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
		snprintf(w->errmsg, sizeof w->errmsg, "epoll: %s", strerror(errno));
		close(fd);
		return SL_ENOMEM;
	}
	w->fd = fd;
	w->ilen = 0;
	w->want_out = 0;
	return SL_OK;
}

static int ep_open(worker *w)
{
	w->fd = -1;
	int rc = client_bufs(w);
	if (rc == SL_OK) {
		w->icap = 64u << 10;
		w->ibuf = malloc(w->icap);
		rc = w->ibuf ? ep_connect(w) : SL_ENOMEM;
	}
	return rc;
}

static void ep_disconnect(worker *w)
{
	if (w->fd >= 0) {
		epoll_ctl(ep_fd, EPOLL_CTL_DEL, w->fd, NULL);
		close(w->fd);
		w->fd = -1;
	}
}

static void ep_close(worker *w)
{
	ep_disconnect(w);
	free(w->ibuf);
	free(w->obuf);
	client_bufs_free(w);
}

/* The message in flight failed as a whole (rc, detail in w->errmsg): as
 * async_fail; the connection is closed (a late response must not be taken
 * for the next request's). */
static void ep_fail(worker *w, int rc)
{
	ep_disconnect(w);
	hist_add(&w->h, now_ns() - w->t0, w->nops);
	w->ops += w->nops;
	w->errors += w->nops - 1;
	note_error(w, rc);
	w->live = 0;
	ep_running--;
}

static void ep_set_out(worker *w, int on)
{
	struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = w};
	epoll_ctl(ep_fd, EPOLL_CTL_MOD, w->fd, &ev);
	w->want_out = on;
}

/* w found the shared counter exhausted: done for this test.  Its idle
 * connection leaves the epoll set's interest (a server closing it must not
 * wake the loop again and again); ep_prepare checks it before the next. */
static void ep_finish(worker *w)
{
	if (w->fd >= 0) {
		struct epoll_event ev = {.events = 0, .data.ptr = w};
		epoll_ctl(ep_fd, EPOLL_CTL_MOD, w->fd, &ev);
		w->want_out = 0;
	}
	w->live = 0;
	ep_running--;
}

/* Writes what is left of the request; waits for EPOLLOUT when the socket
 * buffer is full. */
static void ep_flush(worker *w)
{
	while (w->ooff < w->olen) {
		/* MSG_NOSIGNAL: a server that closes the connection (a request
		 * over its size limit) is an EPIPE here, not a SIGPIPE. */
		ssize_t k = send(w->fd, w->obuf + w->ooff, w->olen - w->ooff, MSG_NOSIGNAL);
		if (k > 0) {
			w->ooff += (size_t)k;
		} else if (k < 0 && errno == EINTR) {
			continue;
		} else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (!w->want_out) {
				ep_set_out(w, 1);
			}
			return;
		} else {
			snprintf(w->errmsg, sizeof w->errmsg, "send: %s", strerror(errno));
			ep_fail(w, SL_ECONN);
			return;
		}
	}
	if (w->want_out) {
		ep_set_out(w, 0);
	}
}

/* Makes *buf hold at least `want` bytes; 0 (and the message failed) when
 * memory runs out. */
static int ep_grow(worker *w, uint8_t **buf, size_t *cap, size_t want, const char *what)
{
	if (want <= *cap) {
		return 1;
	}
	uint8_t *nb = realloc(*buf, want);
	if (nb == NULL) {
		snprintf(w->errmsg, sizeof w->errmsg, "out of memory for a %zu-byte %s", want,
		         what);
		ep_fail(w, SL_ENOMEM);
		return 0;
	}
	*buf = nb;
	*cap = want;
	return 1;
}

/* Sends the next operations as one message, or finishes the client. */
static void ep_next(worker *w)
{
	Shiplog__Request q;
	Shiplog__Batch b;
	op_body one;
	if (!take_request(w, &q, &b, &one)) {
		ep_finish(w);
		return;
	}
	size_t sz = shiplog__request__get_packed_size(&q);
	if (!ep_grow(w, &w->obuf, &w->ocap, SP_PREFIX + sz, "request")) {
		return;
	}
	sl_sp_put_be64(w->obuf, 4 + (uint64_t)sz);
	uint32_t id = sp_id(w);
	w->obuf[8] = (uint8_t)(id >> 24);
	w->obuf[9] = (uint8_t)(id >> 16);
	w->obuf[10] = (uint8_t)(id >> 8);
	w->obuf[11] = (uint8_t)id;
	shiplog__request__pack(&q, w->obuf + SP_PREFIX);
	w->olen = SP_PREFIX + sz;
	w->ooff = 0;
	ep_flush(w);
}

/* Reads what the socket has; a whole response ends the round trip. */
static void ep_read(worker *w)
{
	for (;;) {
		size_t want = w->icap;
		if (w->ilen >= 8) {
			uint64_t len = sl_sp_get_be64(w->ibuf);
			if (len < 4 || len > SP_MAX_MSG) {
				snprintf(w->errmsg, sizeof w->errmsg, "bad SP frame length %llu",
				         (unsigned long long)len);
				ep_fail(w, SL_EPROTO);
				return;
			}
			if (w->ilen >= 8 + len) {
				if (w->ilen > 8 + len) {
					snprintf(
					    w->errmsg, sizeof w->errmsg,
					    "bytes after the response (one request was in flight)");
					ep_fail(w, SL_EPROTO);
					return;
				}
				const uint8_t *h = w->ibuf + 8;
				uint32_t id = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 |
				              (uint32_t)h[2] << 8 | h[3];
				if (id != sp_id(w)) {
					snprintf(w->errmsg, sizeof w->errmsg,
					         "SP request id 0x%08x answered, 0x%08x asked", id,
					         sp_id(w));
					ep_fail(w, SL_EPROTO);
					return;
				}
				w->ilen = 0;
				finish_response(w, w->ibuf + SP_PREFIX, (size_t)len - 4);
				ep_next(w);
				return;
			}
			want = (size_t)(8 + len);
		}
		if (!ep_grow(w, &w->ibuf, &w->icap, want, "response")) {
			return;
		}
		ssize_t k = read(w->fd, w->ibuf + w->ilen, w->icap - w->ilen);
		if (k > 0) {
			w->ilen += (size_t)k;
		} else if (k == 0) {
			snprintf(w->errmsg, sizeof w->errmsg, "connection closed by the server");
			ep_fail(w, SL_ECONN);
			return;
		} else if (errno == EINTR) {
			continue;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			return;
		} else {
			snprintf(w->errmsg, sizeof w->errmsg, "receive: %s", strerror(errno));
			ep_fail(w, SL_ECONN);
			return;
		}
	}
}

/* Before a test, outside its timing: every client's connection is checked
 * (a server may have closed an idle one, or a late response may be
 * waiting on it) and a lost one is opened again, one after another, each
 * within --timeout.  One that cannot be is left closed, its reason in
 * w->errmsg, for ep_run. */
static void ep_prepare(worker *ws)
{
	for (int i = 0; i < opt_clients; i++) {
		worker *w = &ws[i];
		if (w->fd >= 0) {
			char c;
			ssize_t k = recv(w->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
			if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
				ep_set_out(w, 0); /* back in the epoll set's interest */
			} else {
				ep_disconnect(
				    w); /* closed by the server, or bytes nobody asked for */
			}
		}
		if (w->fd < 0) {
			ep_connect(w);
		}
	}
}

static void ep_run(worker *ws)
{
	/* As the async engine's aio timeout: a write with acks may be held by
	 * the server for acks_timeout_ms, wait that much longer. */
	uint64_t limit_ns =
	    (uint64_t)(opt_timeout_ms + (opt_acks > 0 ? opt_timeout_ms : 0)) * 1000000ull;
	ep_running = 0;
	for (int i = 0; i < opt_clients; i++) {
		worker *w = &ws[i];
		w->live = 1;
		ep_running++;
		if (w->fd < 0) {
			/* lost and not back (ep_prepare): its first message fails
			 * with why */
			Shiplog__Request q;
			Shiplog__Batch b;
			op_body one;
			char why[sizeof w->errmsg];
			snprintf(why, sizeof why, "%s", w->errmsg);
			if (take_request(w, &q, &b, &one)) {
				snprintf(w->errmsg, sizeof w->errmsg, "reconnect: %.180s", why);
				ep_fail(w, SL_ECONN);
			} else {
				ep_finish(w);
			}
			continue;
		}
		ep_next(w);
	}
	struct epoll_event evs[64];
	uint64_t last_check = now_ns();
	while (ep_running > 0) {
		int n = epoll_wait(ep_fd, evs, 64, 50);
		for (int i = 0; i < n; i++) {
			worker *w = evs[i].data.ptr;
			if (!w->live || w->fd < 0) {
				continue;
			}
			if ((evs[i].events & EPOLLOUT) && w->ooff < w->olen) {
				ep_flush(w);
			}
			if (w->live && w->fd >= 0 &&
			    (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
				ep_read(w);
			}
		}
		uint64_t now = now_ns();
		if (now - last_check >= 50000000ull) {
			last_check = now;
			for (int i = 0; i < opt_clients; i++) {
				worker *w = &ws[i];
				if (w->live && now - w->t0 > limit_ns) {
					snprintf(w->errmsg, sizeof w->errmsg,
					         "no response within %d ms", opt_timeout_ms);
					ep_fail(w, SL_ETIMEDOUT);
				}
			}
		}
	}
}

/* ---- running a test and printing it ------------------------------------- */

static int run_test(worker *ws, int test)
{
	for (int i = 0; i < opt_clients; i++) {
		worker *w = &ws[i];
		memset(&w->h, 0, sizeof w->h);
		w->ops = w->hits = w->misses = w->errors = w->badsize = 0;
		w->first_err = 0;
	}
	cur_test = test;
	atomic_store(&next_op, 0);
	if (opt_engine == ENG_EPOLL) {
		ep_prepare(ws);
	}
	uint64_t t0 = now_ns();
	if (opt_threads) {
		pthread_barrier_wait(&start_bar);
		pthread_barrier_wait(&end_bar);
	} else if (opt_engine == ENG_EPOLL) {
		ep_run(ws);
	} else {
		async_run(ws);
	}
	double secs = (double)(now_ns() - t0) / 1e9;

	static hist h;
	memset(&h, 0, sizeof h);
	uint64_t ops = 0, hits = 0, misses = 0, errors = 0, badsize = 0;
	const worker *errw = NULL;
	for (int i = 0; i < opt_clients; i++) {
		const worker *w = &ws[i];
		for (int b = 0; b < HBUCKETS; b++) {
			h.b[b] += w->h.b[b];
		}
		h.count += w->h.count;
		ops += w->ops;
		hits += w->hits;
		misses += w->misses;
		errors += w->errors;
		badsize += w->badsize;
		if (w->first_err && !errw) {
			errw = w;
		}
	}
	double opss = secs > 0 ? (double)ops / secs : 0;
	double p50 = hist_pct(&h, 0.50) / 1000, p99 = hist_pct(&h, 0.99) / 1000,
	       p999 = hist_pct(&h, 0.999) / 1000;
	if (opt_json) {
		printf("{\"engine\":\"shiplog\",\"benchmark\":\"%s\",\"ops_per_sec\":%.0f,"
		       "\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"requests\":%llu,"
		       "\"clients\":%d,\"pipeline\":%d,\"value_size\":%zu,\"keyspace\":%llu,"
		       "\"secs\":%.3f,\"errors\":%llu",
		       test_names[test], opss, p50, p99, p999, (unsigned long long)ops, opt_clients,
		       opt_pipeline, opt_value_size, (unsigned long long)opt_keyspace, secs,
		       (unsigned long long)errors);
		if (test == T_GET) {
			printf(",\"hits\":%llu,\"misses\":%llu", (unsigned long long)hits,
			       (unsigned long long)misses);
		}
		printf("}\n");
	} else {
		printf("%-5s %10.0f ops/s   p50 %8.1f us   p99 %8.1f us   p99.9 %8.1f us   "
		       "(%llu ops in %.2f s",
		       test_names[test], opss, p50, p99, p999, (unsigned long long)ops, secs);
		if (test == T_GET) {
			printf(", %.1f%% hits", ops ? 100.0 * (double)hits / (double)ops : 0.0);
		}
		if (errors) {
			printf(", %llu ERRORS", (unsigned long long)errors);
		}
		printf(")\n");
	}
	fflush(stdout);
	if (errw) {
		fprintf(stderr, "shiplog-bench: %s: %llu operations failed; first: %s\n",
		        test_names[test], (unsigned long long)errors, errw->first_msg);
	}
	if (badsize) {
		fprintf(stderr, "shiplog-bench: get: %llu values of the wrong size\n",
		        (unsigned long long)badsize);
	}
	return errors || badsize ? 1 : 0;
}

/* ---- options ------------------------------------------------------------ */

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: shiplog-bench --url URL [options]   (the network benchmark; without\n"
	        "       --url shiplog-bench runs the embedded engine's workloads, see --help)\n"
	        "  --url URL          the shiplogd to load (e.g. " SL_CLIENT_DEFAULT_URL ")\n"
	        "  -t, --tests LIST   comma list of put,get,ping, run in order (default "
	        "ping,put,get)\n"
	        "  -c, --clients N    connections, one request in flight each (default 50)\n"
	        "  -n, --requests N   operations per test, all clients together (default 100000)\n"
	        "  -d, --data-size B  value bytes (default 3)\n"
	        "  -r, --keyspace N   keys key:%%012d with the number uniform in [0, N)\n"
	        "                     (default: one key, key:000000000000)\n"
	        "  --sequential       key number = operation index mod N instead (mod -n without "
	        "-r)\n"
	        "  -P, --pipeline N   operations per Batch message (default 1: one request each)\n"
	        "  --timeout MS       per-request timeout (default 10000)\n"
	        "  --acks N           writes wait until N followers hold them durably (the\n"
	        "                     primary's --acks; a write short of N acks fails)\n"
	        "  --engine E         how the clients are driven (default epoll):\n"
	        "                     epoll    one thread, one epoll set, plain TCP sockets\n"
	        "                              speaking nng's SP framing (redis-benchmark's\n"
	        "                              design; tcp:// URLs only): the least CPU taken\n"
	        "                              from the server it measures\n"
	        "                     async    one nng REQ socket and aio per connection, run\n"
	        "                              by nng's own threads (any URL; about twice the\n"
	        "                              epoll engine's CPU per message)\n"
	        "                     threads  one thread and one synchronous sl_client per\n"
	        "                              connection (the client library's path; costly:\n"
	        "                              several thread wakeups per request)\n"
	        "  --json             one JSON object per test: benchmark, ops_per_sec, p50_us,\n"
	        "                     p99_us, p999_us, requests, clients, pipeline, ...\n"
	        "  -h, --help         this text\n"
	        "Exit status: 0; 1 when an operation failed; 2 on bad arguments or no "
	        "connection.\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-') {
		return -1;
	}
	*out = v;
	return 0;
}

static int bad(const char *opt, const char *val)
{
	fprintf(stderr, "shiplog-bench: bad value for %s: '%s'\n", opt, val);
	return 2;
}

static int parse_tests(const char *s)
{
	char b[256], *save = NULL;
	snprintf(b, sizeof b, "%s", s);
	opt_ntests = 0;
	for (char *t = strtok_r(b, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int found = -1;
		for (int i = 0; i < 3; i++) {
			if (!strcmp(t, test_names[i])) {
				found = i;
			}
		}
		if (found < 0 || opt_ntests == 16) {
			return -1;
		}
		opt_tests[opt_ntests++] = found;
	}
	return opt_ntests ? 0 : -1;
}

/* Closes workers [0, n) (their threads, if any, joined) and frees ws. */
static void workers_free(worker *ws, int n)
{
	for (int i = 0; i < n; i++) {
		if (opt_threads) {
			sl_pipeline_free(ws[i].p);
			sl_client_close(ws[i].c);
		} else if (opt_engine == ENG_EPOLL) {
			ep_close(&ws[i]);
		} else {
			async_close(&ws[i]);
		}
		free(ws[i].vbuf);
	}
	free(ws);
}

int sl_netbench_main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"url", required_argument, NULL, 'u'},
	    {"tests", required_argument, NULL, 't'},
	    {"clients", required_argument, NULL, 'c'},
	    {"requests", required_argument, NULL, 'n'},
	    {"data-size", required_argument, NULL, 'd'},
	    {"keyspace", required_argument, NULL, 'r'},
	    {"pipeline", required_argument, NULL, 'P'},
	    {"sequential", no_argument, NULL, 'S'},
	    {"timeout", required_argument, NULL, 'T'},
	    {"acks", required_argument, NULL, 'A'},
	    {"engine", required_argument, NULL, 'E'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	parse_tests("ping,put,get");
	uint64_t v;
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "t:c:n:d:r:P:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'u':
			opt_url = optarg;
			break;
		case 't':
			if (parse_tests(optarg)) {
				return bad("-t", optarg);
			}
			break;
		case 'c':
			if (parse_u64(optarg, &v) || v < 1 || v > 10000) {
				return bad("-c", optarg);
			}
			opt_clients = (int)v;
			break;
		case 'n':
			if (parse_u64(optarg, &v) || v < 1) {
				return bad("-n", optarg);
			}
			opt_requests = v;
			break;
		case 'd':
			if (parse_u64(optarg, &v) || v > (64u << 20)) {
				return bad("-d", optarg);
			}
			opt_value_size = (size_t)v;
			break;
		case 'r':
			if (parse_u64(optarg, &v) || v > 1000000000000ull) {
				return bad("-r", optarg);
			}
			opt_keyspace = v;
			break;
		case 'P':
			if (parse_u64(optarg, &v) || v < 1 || v > 100000) {
				return bad("-P", optarg);
			}
			opt_pipeline = (int)v;
			break;
		case 'S':
			opt_sequential = 1;
			break;
		case 'T':
			if (parse_u64(optarg, &v) || v < 1 || v > 86400000) {
				return bad("--timeout", optarg);
			}
			opt_timeout_ms = (int)v;
			break;
		case 'A':
			if (parse_u64(optarg, &v) || v > 64) {
				return bad("--acks", optarg);
			}
			opt_acks = (uint32_t)v;
			break;
		case 'E':
			if (!strcmp(optarg, "async")) {
				opt_engine = ENG_ASYNC;
			} else if (!strcmp(optarg, "threads")) {
				opt_engine = ENG_THREADS;
			} else if (!strcmp(optarg, "epoll")) {
				opt_engine = ENG_EPOLL;
			} else {
				return bad("--engine", optarg);
			}
			break;
		case 'j':
			opt_json = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "shiplog-bench: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (!opt_url || !*opt_url) {
		fprintf(stderr, "shiplog-bench: --url needs a URL\n");
		return 2;
	}

	if (opt_engine == ENG_EPOLL) {
		if (ep_parse_url(opt_url) != 0) {
			fprintf(
			    stderr,
			    "shiplog-bench: --engine epoll needs a tcp://HOST:PORT URL, not '%s' "
			    "(--engine async takes any URL nng dials)\n",
			    opt_url);
			return 2;
		}
		if ((ep_fd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
			fprintf(stderr, "shiplog-bench: epoll_create1: %s\n", strerror(errno));
			return 2;
		}
	}
	worker *ws = calloc((size_t)opt_clients, sizeof *ws);
	if (!ws) {
		fprintf(stderr, "shiplog-bench: out of memory\n");
		return 2;
	}
	for (int i = 0; i < opt_clients; i++) {
		worker *w = &ws[i];
		w->id = i;
		w->rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
		w->vbuf = malloc(opt_value_size + 256);
		w->fd = -1;
		int rc = !w->vbuf                  ? SL_ENOMEM
		         : opt_threads             ? sl_client_open(opt_url, opt_timeout_ms, &w->c)
		         : opt_engine == ENG_EPOLL ? ep_open(w)
		                                   : async_open(w);
		if (rc == SL_OK && opt_threads && opt_acks > 0) {
			sl_client_set_acks(w->c, opt_acks, (uint32_t)opt_timeout_ms);
		}
		if (rc == SL_OK && opt_threads && opt_pipeline > 1) {
			rc = sl_pipeline_new(w->c, &w->p);
		}
		if (rc != SL_OK) {
			fprintf(stderr, "shiplog-bench: client %d: cannot connect to %s: %s%s%s\n",
			        i, opt_url, sl_client_strerror(rc), w->errmsg[0] ? ": " : "",
			        w->errmsg);
			workers_free(ws, i + 1);
			return 2;
		}
		for (size_t b = 0; b < opt_value_size + 256; b++) {
			w->vbuf[b] = (char)rng_next(&w->rng);
		}
	}
	if (opt_threads) {
		pthread_barrier_init(&start_bar, NULL, (unsigned)opt_clients + 1);
		pthread_barrier_init(&end_bar, NULL, (unsigned)opt_clients + 1);
		for (int i = 0; i < opt_clients; i++) {
			if (pthread_create(&ws[i].th, NULL, worker_main, &ws[i])) {
				fprintf(stderr, "shiplog-bench: cannot start thread %d\n", i);
				return 2;
			}
		}
	}
	if (!opt_json) {
		printf("shiplog-bench: %s, %d clients, %llu requests per test, %zu B values, "
		       "keyspace %llu%s, pipeline %d\n",
		       opt_url, opt_clients, (unsigned long long)opt_requests, opt_value_size,
		       (unsigned long long)opt_keyspace, opt_sequential ? " (sequential)" : "",
		       opt_pipeline);
	}
	int status = 0;
	for (int t = 0; t < opt_ntests; t++) {
		status |= run_test(ws, opt_tests[t]);
	}
	if (opt_threads) {
		atomic_store(&quit, 1);
		pthread_barrier_wait(&start_bar);
	}
	if (opt_threads) {
		for (int i = 0; i < opt_clients; i++) {
			pthread_join(ws[i].th, NULL);
		}
	}
	workers_free(ws, opt_clients);
	return status;
}
