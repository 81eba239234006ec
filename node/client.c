/*
 * client.c — the client library (API and contracts in client.h).
 *
 * One nng REQ socket per handle, used synchronously under the handle's
 * mutex.  The one thing this file must never do is resend a write behind
 * the caller's back: nng's REQ protocol resends an unanswered request every
 * NNG_OPT_REQ_RESENDTIME (default 60 s) and again on a new connection when
 * the old one drops.  In nng 1.5.2 (src/sp/protocol/reqrep0/req.c) a resend
 * time <= 0 disables both: no resend timer is armed, and when the pipe
 * closes under an outstanding request the receive fails with
 * NNG_ECONNRESET, which we report as SL_ECONN ("outcome unknown").  We set
 * NNG_DURATION_INFINITE (-1).
 */
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "probe.h"
#include "shiplog.pb-c.h"
#include "sp.h"

/* The largest response we accept: a 1 GiB value (the server's upper bound)
 * plus framing.  nng's default (1 MiB) would drop large values. */
#define CLIENT_MAX_RESPONSE ((size_t)(1u << 30) + (4u << 20))

struct sl_client {
	nng_socket sock;
	pthread_mutex_t mu;
	char *url;
	_Atomic int pipes; /* connections up (pipe_event) */
	int timeout_ms;
	uint64_t next_id;
	uint64_t min_seq;
	int min_seq_wait_ms; /* SL_EBEHIND sent again until this has passed */
	uint32_t acks, acks_timeout_ms;
	int last_acks;     /* acks reported by the last write; -1 none */
	char primary[256]; /* the primary named by the last SL_EREADONLY */
	char errmsg[512];
};

/* ---- errors ---------------------------------------------------------- */

const char *sl_client_strerror(int rc)
{
	return sl_status_str(rc);
}

const char *sl_client_errmsg(const sl_client *c)
{
	return c != NULL ? c->errmsg : "";
}

static void set_err(sl_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_err(sl_client *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->errmsg, sizeof(c->errmsg), fmt, ap);
	va_end(ap);
}

int sl_client_map_nng(int rv)
{
	switch (rv) {
	case 0:
		return SL_OK;
	case NNG_ETIMEDOUT:
		return SL_ETIMEDOUT;
	case NNG_ENOMEM:
		return SL_ENOMEM;
	case NNG_EMSGSIZE:
		return SL_ETOOBIG;
	case NNG_EINVAL:
	case NNG_EADDRINVAL:
	case NNG_ENOTSUP:
		return SL_EINVAL;
	default: /* ECONNREFUSED, ECONNRESET, ECONNSHUT, ECLOSED, EUNREACHABLE … */
		return SL_ECONN;
	}
}

/* ---- lifecycle ------------------------------------------------------- */

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void apply_timeout(sl_client *c)
{
	nng_socket_set_ms(c->sock, NNG_OPT_SENDTIMEO, c->timeout_ms);
	nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, c->timeout_ms);
}

int sl_client_open(const char *url, int timeout_ms, sl_client **out)
{
	char why[8];
	return sl_client_open_why(url, timeout_ms, out, why, sizeof(why));
}

/* Counts the connections up: a request sent with none waits in nng's
 * queue for the dialer to reconnect, for the whole timeout if the server
 * is gone (roundtrip probes first). */
static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	(void)p;
	sl_client *c = arg;
	atomic_fetch_add(&c->pipes, ev == NNG_PIPE_EV_ADD_PRE ? 1 : -1);
}

int sl_client_open_why(const char *url, int timeout_ms, sl_client **out, char *why, size_t cap)
{
	if (why != NULL && cap > 0) {
		why[0] = '\0';
	}
	if (url == NULL || out == NULL || why == NULL || cap == 0) {
		return SL_EINVAL;
	}
	sl_client *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		return SL_ENOMEM;
	}
	int rv = nng_req0_open(&c->sock);
	if (rv != 0) {
		free(c);
		return sl_client_map_nng(rv);
	}
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : SL_CLIENT_DEFAULT_TIMEOUT_MS;
	apply_timeout(c);
	/* Writes are not idempotent: never resend (see the top of the file). */
	if ((rv = nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE)) != 0 ||
	    (rv = nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, CLIENT_MAX_RESPONSE)) != 0) {
		nng_close(c->sock);
		free(c);
		return sl_client_map_nng(rv);
	}
	nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, 50);
	nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, 1000);
	/* The handshake first, within the timeout: nng's blocking dial waits
	 * 10 s for it (a server that accepts and hangs). */
	int prc = sl_probe_sp(url, c->timeout_ms, SL_SP_REQ, SL_SP_REP, why, cap);
	c->url = strdup(url);
	if (prc == SL_OK && c->url == NULL) {
		prc = SL_ENOMEM;
	}
	if (prc == SL_OK) {
		/* ADD_PRE, not ADD_POST: nng 1.5.2 runs REM_POST for every
		 * pipe that ran ADD_PRE (src/core/pipe.c), started or not */
		nng_pipe_notify(c->sock, NNG_PIPE_EV_ADD_PRE, pipe_event, c);
		nng_pipe_notify(c->sock, NNG_PIPE_EV_REM_POST, pipe_event, c);
	}
	if (prc != SL_OK) {
		nng_close(c->sock);
		free(c->url);
		free(c);
		return prc;
	}
	rv = nng_dial(c->sock, url, NULL, 0);
	if (rv != 0) {
		/* nng's reason ("Connection refused" for an ipc:// path nobody
		 * listens on: the probe speaks only tcp://), not the status's */
		if (why[0] == '\0') {
			snprintf(why, cap, "%s", nng_strerror(rv));
		}
		nng_close(c->sock);
		free(c->url);
		free(c);
		return sl_client_map_nng(rv);
	}
	pthread_mutex_init(&c->mu, NULL);
	*out = c;
	return SL_OK;
}

void sl_client_close(sl_client *c)
{
	if (c == NULL) {
		return;
	}
	nng_close(c->sock);
	pthread_mutex_destroy(&c->mu);
	free(c->url);
	free(c);
}

void sl_client_set_timeout(sl_client *c, int timeout_ms)
{
	pthread_mutex_lock(&c->mu);
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : SL_CLIENT_DEFAULT_TIMEOUT_MS;
	apply_timeout(c);
	pthread_mutex_unlock(&c->mu);
}

void sl_client_set_min_seq(sl_client *c, uint64_t min_seq)
{
	pthread_mutex_lock(&c->mu);
	c->min_seq = min_seq;
	pthread_mutex_unlock(&c->mu);
}

void sl_client_set_min_seq_wait(sl_client *c, int wait_ms)
{
	pthread_mutex_lock(&c->mu);
	c->min_seq_wait_ms = wait_ms > 0 ? wait_ms : 0;
	pthread_mutex_unlock(&c->mu);
}

void sl_client_set_acks(sl_client *c, uint32_t acks, uint32_t acks_timeout_ms)
{
	pthread_mutex_lock(&c->mu);
	c->acks = acks;
	c->acks_timeout_ms = acks_timeout_ms;
	pthread_mutex_unlock(&c->mu);
}

/* ---- the round trip ---------------------------------------------------- */

/* Sends q and waits for its Response.  Call with c->mu held.  SL_OK with
 * *out set (free with shiplog__response__free_unpacked) — the operation's
 * own status is in (*out)->status — or a transport error. */
static int roundtrip(sl_client *c, Shiplog__Request *q, Shiplog__Response **out)
{
	c->errmsg[0] = '\0';
	q->has_id = 1;
	q->id = ++c->next_id;
	if (c->min_seq > 0) {
		q->has_min_seq = 1;
		q->min_seq = c->min_seq;
	}
	/* acks are a write's: a read carrying them waited acks_timeout_ms
	 * longer for a server that did not answer */
	if (c->acks > 0 &&
	    (q->op_case == SHIPLOG__REQUEST__OP_PUT || q->op_case == SHIPLOG__REQUEST__OP_DEL ||
	     q->op_case == SHIPLOG__REQUEST__OP_BATCH)) {
		q->has_acks = 1;
		q->acks = c->acks;
		q->has_acks_timeout_ms = 1;
		q->acks_timeout_ms = c->acks_timeout_ms;
	}
	size_t sz = shiplog__request__get_packed_size(q);
	nng_msg *m = NULL;
	int rv = nng_msg_alloc(&m, sz);
	if (rv != 0) {
		set_err(c, "out of memory for a %zu-byte request", sz);
		return SL_ENOMEM;
	}
	shiplog__request__pack(q, nng_msg_body(m));
	c->last_acks = -1;
	/* A write with acks may be held by the server for acks_timeout_ms:
	 * wait that much longer for its answer. */
	int64_t extra = q->has_acks && q->acks > 0 ? (int64_t)c->acks_timeout_ms : 0;
	if (q->op_case == SHIPLOG__REQUEST__OP_WAIT && q->wait->has_timeout_ms) {
		extra = (int64_t)q->wait->timeout_ms;
	}
	/* Not connected (the server went away, or is coming back): a send
	 * would wait for the dialer the whole timeout, so first see whether
	 * anything answers there at all. */
	if (atomic_load(&c->pipes) <= 0) {
		char why[256] = "";
		int prc =
		    sl_probe_sp(c->url, c->timeout_ms, SL_SP_REQ, SL_SP_REP, why, sizeof(why));
		if (prc != SL_OK) {
			nng_msg_free(m);
			set_err(c, "%s", why);
			return prc;
		}
	}
	/* One deadline for the send and the receive together: the receive
	 * gets what the send (which waits for a connection) left of it. */
	uint64_t t0 = mono_ms();
	rv = nng_sendmsg(c->sock, m, 0);
	if (rv != 0) {
		nng_msg_free(m);
		set_err(c, "send: %s", nng_strerror(rv));
		return sl_client_map_nng(rv);
	}
	uint64_t spent = mono_ms() - t0;
	int adjust = extra > 0 || spent > 0;
	if (adjust) {
		/* in 64 bits: a timeout of 2^31 ms or more (24.8 days) went
		 * negative as an int, nng refused it, and the receive kept the
		 * handle's own short timeout */
		int64_t left = (int64_t)c->timeout_ms + extra - (int64_t)spent;
		left = left < 1 ? 1 : left > INT32_MAX ? INT32_MAX : left;
		nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, (nng_duration)left);
	}
	rv = nng_recvmsg(c->sock, &m, 0);
	if (adjust) {
		apply_timeout(c);
	}
	if (rv != 0) {
		if (rv == NNG_ETIMEDOUT) {
			set_err(c, "no response within %d ms", c->timeout_ms);
		} else {
			set_err(c, "receive: %s", nng_strerror(rv));
		}
		return sl_client_map_nng(rv);
	}
	Shiplog__Response *r = shiplog__response__unpack(NULL, nng_msg_len(m), nng_msg_body(m));
	nng_msg_free(m);
	if (r == NULL) {
		set_err(c, "malformed response from server");
		return SL_EPROTO;
	}
	if (r->has_id && r->id != q->id) {
		shiplog__response__free_unpacked(r, NULL);
		set_err(c, "response id does not match the request");
		return SL_EPROTO;
	}
	if (r->status < 0 && r->error != NULL) {
		set_err(c, "%s", r->error);
	}
	if (r->has_acks) {
		c->last_acks = (int)r->acks;
	}
	c->primary[0] = '\0';
	if (r->primary != NULL) {
		snprintf(c->primary, sizeof(c->primary), "%s", r->primary);
	}
	*out = r;
	return SL_OK;
}

/* Round trip for single-result calls: returns the operation's status. */
static int call(sl_client *c, Shiplog__Request *q, Shiplog__Response **out)
{
	if (c == NULL) {
		return SL_EINVAL;
	}
	pthread_mutex_lock(&c->mu);
	Shiplog__Response *r = NULL;
	uint64_t t0 = mono_ms();
	int rc;
	for (;;) {
		uint64_t t1 = mono_ms();
		if ((rc = roundtrip(c, q, &r)) != SL_OK) {
			break;
		}
		rc = r->has_status ? r->status : SL_EPROTO;
		/* A node behind min_seq waits its own --min-seq-wait-ms, then
		 * answers SL_EBEHIND (a primary at once): asked again while
		 * min_seq_wait_ms lasts, pausing when the answer came at once. */
		uint64_t now = mono_ms();
		/* not sent again when another answer as slow as this one (the
		 * node's own wait) would end past the wait */
		if (rc != SL_EBEHIND || c->min_seq == 0 ||
		    (now - t0) + (now - t1) >= (uint64_t)c->min_seq_wait_ms) {
			break;
		}
		shiplog__response__free_unpacked(r, NULL);
		r = NULL;
		if (now - t1 < 20) {
			uint64_t left = (uint64_t)c->min_seq_wait_ms - (now - t0);
			nng_msleep(left < 20 ? (nng_duration)left : 20);
		}
	}
	pthread_mutex_unlock(&c->mu);
	if (r == NULL) {
		return rc;
	}
	*out = r;
	return rc;
}

static void *dup_bytes(const void *p, size_t n)
{
	void *d = malloc(n ? n : 1);
	if (d != NULL && n > 0) {
		memcpy(d, p, n);
	}
	return d;
}

static ProtobufCBinaryData bin(const void *p, size_t n)
{
	ProtobufCBinaryData b = {.len = n, .data = (uint8_t *)p};
	return b;
}

/* ---- single operations ---------------------------------------------- */

int sl_client_ping(sl_client *c)
{
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Ping p = SHIPLOG__PING__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_PING;
	q.ping = &p;
	Shiplog__Response *r = NULL;
	int rc = call(c, &q, &r);
	shiplog__response__free_unpacked(r, NULL);
	return rc;
}

int sl_client_get(sl_client *c, const void *key, size_t klen, void **val_out, size_t *vlen_out,
                  uint64_t *seq_out)
{
	if (key == NULL && klen > 0) {
		return SL_EINVAL;
	}
	if (val_out == NULL || vlen_out == NULL) {
		return SL_EINVAL;
	}
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Get g = SHIPLOG__GET__INIT;
	g.has_key = 1;
	g.key = bin(key, klen);
	q.op_case = SHIPLOG__REQUEST__OP_GET;
	q.get = &g;
	Shiplog__Response *r = NULL;
	int rc = call(c, &q, &r);
	if (rc == SL_OK) {
		size_t n = r->has_value ? r->value.len : 0;
		void *v = dup_bytes(r->value.data, n);
		if (v == NULL) {
			rc = SL_ENOMEM;
		} else {
			*val_out = v;
			*vlen_out = n;
			if (seq_out != NULL) {
				*seq_out = r->seq;
			}
		}
	}
	shiplog__response__free_unpacked(r, NULL);
	return rc;
}

int sl_client_put_ttl(sl_client *c, const void *key, size_t klen, const void *val, size_t vlen,
                      uint64_t ttl_ms, uint64_t *seq_out)
{
	if ((key == NULL && klen > 0) || (val == NULL && vlen > 0)) {
		return SL_EINVAL;
	}
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Put p = SHIPLOG__PUT__INIT;
	p.has_key = 1;
	p.key = bin(key, klen);
	p.has_value = 1;
	p.value = bin(val, vlen);
	if (ttl_ms > 0) {
		p.has_ttl_ms = 1;
		p.ttl_ms = ttl_ms;
	}
	q.op_case = SHIPLOG__REQUEST__OP_PUT;
	q.put = &p;
	Shiplog__Response *r = NULL;
	int rc = call(c, &q, &r);
	if ((rc == SL_OK || (rc == SL_ETIMEDOUT && r != NULL && r->has_seq)) && seq_out != NULL) {
		*seq_out = r->seq;
	}
	shiplog__response__free_unpacked(r, NULL);
	return rc;
}

int sl_client_put(sl_client *c, const void *key, size_t klen, const void *val, size_t vlen,
                  uint64_t *seq_out)
{
	return sl_client_put_ttl(c, key, klen, val, vlen, 0, seq_out);
}

int sl_client_del(sl_client *c, const void *key, size_t klen, uint64_t *seq_out)
{
	if (key == NULL && klen > 0) {
		return SL_EINVAL;
	}
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Del d = SHIPLOG__DEL__INIT;
	d.has_key = 1;
	d.key = bin(key, klen);
	q.op_case = SHIPLOG__REQUEST__OP_DEL;
	q.del = &d;
	Shiplog__Response *r = NULL;
	int rc = call(c, &q, &r);
	if ((rc == SL_OK || (rc == SL_ETIMEDOUT && r != NULL && r->has_seq)) && seq_out != NULL) {
		*seq_out = r->seq;
	}
	shiplog__response__free_unpacked(r, NULL);
	return rc;
}

/* ---- multi-key ------------------------------------------------------- */

void sl_client_items_free(sl_client_item *items, size_t n)
{
	if (items == NULL) {
		return;
	}
	for (size_t i = 0; i < n; i++) {
		free(items[i].key);
		free(items[i].val);
	}
	free(items);
}

/* Copies response entries into a malloc'd item array.  SL_OK/SL_ENOMEM. */
static int copy_entries(const Shiplog__Response *r, sl_client_item **out)
{
	size_t n = r->n_entries;
	sl_client_item *it = calloc(n ? n : 1, sizeof(*it));
	if (it == NULL) {
		return SL_ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		const Shiplog__Entry *e = r->entries[i];
		it[i].status = e->has_status ? e->status : SL_OK;
		it[i].seq = e->seq;
		if (e->has_key) {
			it[i].key = dup_bytes(e->key.data, e->key.len);
			it[i].klen = e->key.len;
			if (it[i].key == NULL) {
				sl_client_items_free(it, n);
				return SL_ENOMEM;
			}
		}
		if (e->has_value) {
			it[i].val = dup_bytes(e->value.data, e->value.len);
			it[i].vlen = e->value.len;
			if (it[i].val == NULL) {
				sl_client_items_free(it, n);
				return SL_ENOMEM;
			}
		}
	}
	*out = it;
	return SL_OK;
}

int sl_client_mget(sl_client *c, size_t n, const void *const *keys, const size_t *klens,
                   sl_client_item **items_out)
{
	if (items_out == NULL || (n > 0 && (keys == NULL || klens == NULL))) {
		return SL_EINVAL;
	}
	ProtobufCBinaryData *kb = calloc(n ? n : 1, sizeof(*kb));
	if (kb == NULL) {
		return SL_ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		kb[i] = bin(keys[i], klens[i]);
	}
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__MGet m = SHIPLOG__MGET__INIT;
	m.n_keys = n;
	m.keys = kb;
	q.op_case = SHIPLOG__REQUEST__OP_MGET;
	q.mget = &m;
	Shiplog__Response *r = NULL;
	int rc = call(c, &q, &r);
	free(kb);
	if (rc == SL_OK) {
		if (r->n_entries != n) {
			set_err(c, "mget: %zu results for %zu keys", r->n_entries, n);
			rc = SL_EPROTO;
		} else {
			rc = copy_entries(r, items_out);
		}
	}
	shiplog__response__free_unpacked(r, NULL);
	return rc;
}

int sl_client_scan(sl_client *c, const void *prefix, size_t plen, uint32_t limit,
                   const void *cursor, size_t curlen, int keys_only, sl_client_item **items_out,
                   size_t *n_out, void **cursor_out, size_t *curlen_out)
{
	if (items_out == NULL || n_out == NULL || cursor_out == NULL || curlen_out == NULL ||
	    (prefix == NULL && plen > 0) || (cursor == NULL && curlen > 0)) {
		return SL_EINVAL;
	}
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Scan s = SHIPLOG__SCAN__INIT;
	if (plen > 0) {
		s.has_prefix = 1;
		s.prefix = bin(prefix, plen);
	}
	if (limit > 0) {
		s.has_limit = 1;
		s.limit = limit;
	}
	if (curlen > 0) {
		s.has_cursor = 1;
		s.cursor = bin(cursor, curlen);
	}
	if (keys_only) {
		s.has_keys_only = 1;
		s.keys_only = 1;
	}
	q.op_case = SHIPLOG__REQUEST__OP_SCAN;
	q.scan = &s;
	Shiplog__Response *r = NULL;
	int rc = call(c, &q, &r);
	if (rc == SL_OK) {
		sl_client_item *it = NULL;
		void *cur = NULL;
		rc = copy_entries(r, &it);
		if (rc == SL_OK && r->has_cursor && r->cursor.len == 0) {
			/* sent back, an empty cursor means "from the start": the
			 * caller's loop would never end */
			sl_client_items_free(it, r->n_entries);
			set_err(c, "scan: the server sent an empty cursor");
			rc = SL_EPROTO;
		}
		if (rc == SL_OK && r->has_cursor) {
			cur = dup_bytes(r->cursor.data, r->cursor.len);
			if (cur == NULL) {
				sl_client_items_free(it, r->n_entries);
				rc = SL_ENOMEM;
			}
		}
		if (rc == SL_OK) {
			*items_out = it;
			*n_out = r->n_entries;
			*cursor_out = cur;
			*curlen_out = cur ? r->cursor.len : 0;
		}
	}
	shiplog__response__free_unpacked(r, NULL);
	return rc;
}

/* ---- stats and admin ------------------------------------------------- */

void sl_client_stats_free(sl_client_stats *st)
{
	if (st == NULL) {
		return;
	}
	for (size_t i = 0; i < st->n; i++) {
		free(st->items[i].name);
		free(st->items[i].text);
	}
	free(st->items);
	free(st);
}

/* Sends q and turns the stats of its response into *out. */
static int stats_call(sl_client *c, Shiplog__Request *q, sl_client_stats **out)
{
	Shiplog__Response *r = NULL;
	int rc = call(c, q, &r);
	if (rc == SL_OK) {
		sl_client_stats *st = calloc(1, sizeof(*st));
		if (st != NULL) {
			st->items = calloc(r->n_stats ? r->n_stats : 1, sizeof(*st->items));
		}
		if (st == NULL || st->items == NULL) {
			free(st);
			rc = SL_ENOMEM;
		} else {
			for (size_t i = 0; i < r->n_stats && rc == SL_OK; i++) {
				const Shiplog__Stat *x = r->stats[i];
				sl_client_stat *y = &st->items[st->n++];
				y->name = strdup(x->name ? x->name : "");
				y->value = x->value;
				y->text = x->text ? strdup(x->text) : NULL;
				if (y->name == NULL || (x->text && y->text == NULL)) {
					rc = SL_ENOMEM;
				}
			}
			if (rc == SL_OK) {
				*out = st;
			} else {
				sl_client_stats_free(st);
			}
		}
	}
	shiplog__response__free_unpacked(r, NULL);
	return rc;
}

int sl_client_stats_get(sl_client *c, sl_client_stats **out)
{
	if (out == NULL) {
		return SL_EINVAL;
	}
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Stats s = SHIPLOG__STATS__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_STATS;
	q.stats = &s;
	return stats_call(c, &q, out);
}

const sl_client_stat *sl_client_stats_find(const sl_client_stats *st, const char *name)
{
	if (st == NULL || name == NULL) {
		return NULL;
	}
	for (size_t i = 0; i < st->n; i++) {
		if (strcmp(st->items[i].name, name) == 0) {
			return &st->items[i];
		}
	}
	return NULL;
}

int sl_client_compact_stats(sl_client *c, sl_client_stats **out)
{
	if (out == NULL) {
		return SL_EINVAL;
	}
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Compact k = SHIPLOG__COMPACT__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_COMPACT;
	q.compact = &k;
	return stats_call(c, &q, out);
}

int sl_client_compact(sl_client *c)
{
	sl_client_stats *st = NULL;
	int rc = sl_client_compact_stats(c, &st);
	sl_client_stats_free(st);
	return rc;
}

/* ---- replication ------------------------------------------------------ */

int sl_client_last_acks(const sl_client *c)
{
	return c != NULL ? c->last_acks : -1;
}

const char *sl_client_primary(const sl_client *c)
{
	return c != NULL ? c->primary : "";
}

int sl_client_digest(sl_client *c, char out[33], uint64_t *keys_out)
{
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Digest d = SHIPLOG__DIGEST__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_DIGEST;
	q.digest = &d;
	Shiplog__Response *r = NULL;
	int rc = call(c, &q, &r);
	if (rc == SL_OK) {
		if (r->digest == NULL || strlen(r->digest) != 32) {
			rc = SL_EPROTO;
		} else {
			memcpy(out, r->digest, 33);
			if (keys_out != NULL) {
				*keys_out = r->digest_keys;
			}
		}
	}
	shiplog__response__free_unpacked(r, NULL);
	return rc;
}

static void copy_hid(const Shiplog__Response *r, char hid[33])
{
	if (hid == NULL) {
		return;
	}
	hid[0] = '\0';
	if (r != NULL && r->history_id != NULL) {
		snprintf(hid, 33, "%s", r->history_id);
	}
}

int sl_client_promote(sl_client *c, char hid[33])
{
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Promote p = SHIPLOG__PROMOTE__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_PROMOTE;
	q.promote = &p;
	Shiplog__Response *r = NULL;
	int rc = call(c, &q, &r);
	copy_hid(rc == SL_OK ? r : NULL, hid);
	shiplog__response__free_unpacked(r, NULL);
	return rc;
}

int sl_client_pause_writes(sl_client *c, uint32_t ms, uint64_t *last_seq)
{
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__PauseWrites p = SHIPLOG__PAUSE_WRITES__INIT;
	p.has_ms = 1;
	p.ms = ms;
	q.op_case = SHIPLOG__REQUEST__OP_PAUSE_WRITES;
	q.pause_writes = &p;
	Shiplog__Response *r = NULL;
	int rc = call(c, &q, &r);
	if (last_seq != NULL) {
		*last_seq = rc == SL_OK && r != NULL && r->has_seq ? r->seq : 0;
	}
	shiplog__response__free_unpacked(r, NULL);
	return rc;
}

int sl_client_follow(sl_client *c, const char *url, char hid[33])
{
	if (url == NULL) {
		return SL_EINVAL;
	}
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Follow f = SHIPLOG__FOLLOW__INIT;
	f.url = (char *)url;
	q.op_case = SHIPLOG__REQUEST__OP_FOLLOW;
	q.follow = &f;
	Shiplog__Response *r = NULL;
	int rc = call(c, &q, &r);
	copy_hid(rc == SL_OK ? r : NULL, hid);
	shiplog__response__free_unpacked(r, NULL);
	return rc;
}

int sl_client_wait(sl_client *c, uint32_t replicas, uint64_t seq, uint32_t timeout_ms,
                   uint32_t *acks_out)
{
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Wait w = SHIPLOG__WAIT__INIT;
	w.has_replicas = 1;
	w.replicas = replicas;
	w.has_seq = seq > 0;
	w.seq = seq;
	w.has_timeout_ms = 1;
	w.timeout_ms = timeout_ms;
	q.op_case = SHIPLOG__REQUEST__OP_WAIT;
	q.wait = &w;
	Shiplog__Response *r = NULL;
	int rc = call(c, &q, &r);
	if (rc == SL_OK && acks_out != NULL) {
		*acks_out = r->acks;
	}
	shiplog__response__free_unpacked(r, NULL);
	return rc;
}

/* ---- pipeline -------------------------------------------------------- */

enum { P_GET, P_PUT, P_DEL, P_PING };

typedef struct pop {
	int kind;
	uint8_t *key; /* malloc'd copies */
	size_t klen;
	uint8_t *val;
	size_t vlen;
	uint64_t ttl_ms;
} pop;

struct sl_pipeline {
	sl_client *c;
	pop *ops;
	size_t n, cap;
	sl_client_item *items; /* results of the last exec, borrowing from last */
	size_t nitems;
	Shiplog__Response *last;
};

int sl_pipeline_new(sl_client *c, sl_pipeline **out)
{
	if (c == NULL || out == NULL) {
		return SL_EINVAL;
	}
	sl_pipeline *p = calloc(1, sizeof(*p));
	if (p == NULL) {
		return SL_ENOMEM;
	}
	p->c = c;
	*out = p;
	return SL_OK;
}

static void clear_results(sl_pipeline *p)
{
	free(p->items);
	p->items = NULL;
	p->nitems = 0;
	shiplog__response__free_unpacked(p->last, NULL);
	p->last = NULL;
}

static void clear_ops(sl_pipeline *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->ops[i].key);
		free(p->ops[i].val);
	}
	p->n = 0;
}

void sl_pipeline_reset(sl_pipeline *p)
{
	if (p != NULL) {
		clear_ops(p);
		clear_results(p);
	}
}

void sl_pipeline_free(sl_pipeline *p)
{
	if (p == NULL) {
		return;
	}
	sl_pipeline_reset(p);
	free(p->ops);
	free(p);
}

size_t sl_pipeline_len(const sl_pipeline *p)
{
	return p ? p->n : 0;
}

static int queue(sl_pipeline *p, int kind, const void *key, size_t klen, const void *val,
                 size_t vlen, uint64_t ttl_ms)
{
	if (p == NULL || (key == NULL && kind != P_PING) || (val == NULL && vlen > 0)) {
		return SL_EINVAL; /* a NULL key, as client.h says (an empty one goes to the server)
		                   */
	}
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 16;
		pop *o = realloc(p->ops, cap * sizeof(*o));
		if (o == NULL) {
			return SL_ENOMEM;
		}
		p->ops = o;
		p->cap = cap;
	}
	pop o = {.kind = kind, .klen = klen, .vlen = vlen, .ttl_ms = ttl_ms};
	if (kind != P_PING) {
		o.key = dup_bytes(key, klen);
		if (o.key == NULL) {
			return SL_ENOMEM;
		}
	}
	if (kind == P_PUT) {
		o.val = dup_bytes(val, vlen);
		if (o.val == NULL) {
			free(o.key);
			return SL_ENOMEM;
		}
	}
	p->ops[p->n++] = o;
	return SL_OK;
}

int sl_pipeline_get(sl_pipeline *p, const void *key, size_t klen)
{
	return queue(p, P_GET, key, klen, NULL, 0, 0);
}

int sl_pipeline_put(sl_pipeline *p, const void *key, size_t klen, const void *val, size_t vlen,
                    uint64_t ttl_ms)
{
	return queue(p, P_PUT, key, klen, val, vlen, ttl_ms);
}

int sl_pipeline_del(sl_pipeline *p, const void *key, size_t klen)
{
	return queue(p, P_DEL, key, klen, NULL, 0, 0);
}

int sl_pipeline_ping(sl_pipeline *p)
{
	return queue(p, P_PING, NULL, 0, NULL, 0, 0);
}

/* The protobuf view of the queued ops, pointing at p's copies. */
typedef struct batch_view {
	Shiplog__Op *ops;
	Shiplog__Op **ptrs;
	union {
		Shiplog__Get get;
		Shiplog__Put put;
		Shiplog__Del del;
		Shiplog__Ping ping;
	} * body;
} batch_view;

static int build_view(const sl_pipeline *p, batch_view *v)
{
	size_t n = p->n ? p->n : 1;
	v->ops = calloc(n, sizeof(*v->ops));
	v->ptrs = calloc(n, sizeof(*v->ptrs));
	v->body = calloc(n, sizeof(*v->body));
	if (v->ops == NULL || v->ptrs == NULL || v->body == NULL) {
		return SL_ENOMEM;
	}
	for (size_t i = 0; i < p->n; i++) {
		const pop *o = &p->ops[i];
		Shiplog__Op *op = &v->ops[i];
		shiplog__op__init(op);
		switch (o->kind) {
		case P_GET:
			shiplog__get__init(&v->body[i].get);
			v->body[i].get.has_key = 1;
			v->body[i].get.key = bin(o->key, o->klen);
			op->op_case = SHIPLOG__OP__OP_GET;
			op->get = &v->body[i].get;
			break;
		case P_PUT:
			shiplog__put__init(&v->body[i].put);
			v->body[i].put.has_key = 1;
			v->body[i].put.key = bin(o->key, o->klen);
			v->body[i].put.has_value = 1;
			v->body[i].put.value = bin(o->val, o->vlen);
			if (o->ttl_ms > 0) {
				v->body[i].put.has_ttl_ms = 1;
				v->body[i].put.ttl_ms = o->ttl_ms;
			}
			op->op_case = SHIPLOG__OP__OP_PUT;
			op->put = &v->body[i].put;
			break;
		case P_DEL:
			shiplog__del__init(&v->body[i].del);
			v->body[i].del.has_key = 1;
			v->body[i].del.key = bin(o->key, o->klen);
			op->op_case = SHIPLOG__OP__OP_DEL;
			op->del = &v->body[i].del;
			break;
		default:
			shiplog__ping__init(&v->body[i].ping);
			op->op_case = SHIPLOG__OP__OP_PING;
			op->ping = &v->body[i].ping;
			break;
		}
		v->ptrs[i] = op;
	}
	return SL_OK;
}

static void free_view(batch_view *v)
{
	free(v->ops);
	free(v->ptrs);
	free(v->body);
}

int sl_pipeline_exec(sl_pipeline *p, const sl_client_item **items_out, size_t *n_out)
{
	if (p == NULL || items_out == NULL || n_out == NULL) {
		return SL_EINVAL;
	}
	/* "n 0" on any failure (client.h): the last exec's items, freed
	 * here, were left to a caller telling a short-of-acks batch (n > 0)
	 * from a failed round trip */
	*items_out = NULL;
	*n_out = 0;
	clear_results(p);
	if (p->n == 0) {
		return SL_OK;
	}
	batch_view v = {0};
	int rc = build_view(p, &v);
	sl_client_item *items = calloc(p->n, sizeof(*items));
	if (rc != SL_OK || items == NULL) {
		free_view(&v);
		free(items);
		return SL_ENOMEM;
	}
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Batch b = SHIPLOG__BATCH__INIT;
	b.n_ops = p->n;
	b.ops = v.ptrs;
	q.op_case = SHIPLOG__REQUEST__OP_BATCH;
	q.batch = &b;
	Shiplog__Response *r = NULL;
	rc = call(p->c, &q, &r);
	free_view(&v);
	/* Short of its acks, a batch with writes comes back SL_ETIMEDOUT with
	 * every result: the writes were made (their seqs are here), and a retry
	 * of the kept queue made them all twice. */
	int applied = rc == SL_OK || (rc == SL_ETIMEDOUT && r != NULL && r->n_results == p->n);
	if (rc == SL_OK && r->n_results != p->n) {
		set_err(p->c, "batch: %zu results for %zu operations", r->n_results, p->n);
		rc = SL_EPROTO;
		applied = 0;
	}
	if (!applied) {
		shiplog__response__free_unpacked(r, NULL);
		free(items);
		return rc == SL_ENOTFOUND ? SL_EPROTO : rc;
	}
	for (size_t i = 0; i < p->n; i++) {
		const Shiplog__Result *x = r->results[i];
		items[i].status = x->has_status ? x->status : SL_OK;
		items[i].seq = x->seq;
		if (x->has_value) {
			/* A zero-length value still gets a non-NULL pointer. */
			items[i].val = x->value.data ? (void *)x->value.data : (void *)"";
			items[i].vlen = x->value.len;
		}
	}
	p->last = r;
	p->items = items;
	p->nitems = p->n;
	clear_ops(p);
	*items_out = items;
	*n_out = p->nitems;
	return rc;
}
