/*
 * handler.c — one Request in, one Response out (see handler.h).
 *
 * Invariants kept here (docs/protocol.md cites them):
 *  1. Nothing is allocated from a message's contents before its sizes are
 *     bounded: nng's receive limit bounds the message, sl_request_precheck
 *     bounds the per-element allocations of protobuf-c, and the handler
 *     checks key and value lengths before calling the engine.
 *  2. A request that fails validation touches no stored data: every check
 *     runs before the first engine write of that operation.
 *  3. A response never exceeds the node's max_msg_bytes: values are counted
 *     into r->bytes as they are added; an operation that would go over
 *     answers SL_ETOOBIG instead.
 *  4. The decoded Request is freed before sl_handle returns; the Response
 *     owns (r->owned) every buffer it points at.
 */
#include "handler.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "repl.h"
#include "scan.h"
#include "status.h"
#include "workq.h"

/* TTLs beyond a century are almost certainly unit mistakes, and would
 * overflow expire_at arithmetic near UINT64_MAX. */
#define SL_MAX_TTL_MS (100ull * 365 * 24 * 3600 * 1000)

/* ---- reply helpers --------------------------------------------------- */

static void reply_init(sl_reply *r)
{
	memset(r, 0, sizeof(*r));
	shiplog__response__init(&r->resp);
	r->resp.has_status = 1;
	r->resp.status = SL_OK;
}

/* Takes ownership of p (freed with the reply).  On allocation failure p is
 * freed at once and -1 returned. */
static int own(sl_reply *r, void *p)
{
	if (p == NULL) {
		return -1;
	}
	if (r->nowned == r->capowned) {
		size_t cap = r->capowned ? r->capowned * 2 : 8;
		void **o = realloc(r->owned, cap * sizeof(*o));
		if (o == NULL) {
			free(p);
			return -1;
		}
		r->owned = o;
		r->capowned = cap;
	}
	r->owned[r->nowned++] = p;
	return 0;
}

static void *own_alloc(sl_reply *r, size_t n)
{
	void *p = calloc(1, n ? n : 1);
	return own(r, p) == 0 ? p : NULL;
}

static void fail(sl_reply *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(sl_reply *r, int status, const char *fmt, ...)
{
	r->resp.status = status;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->errbuf, sizeof(r->errbuf), fmt, ap);
	va_end(ap);
	r->resp.error = r->errbuf;
}

/* An engine result that is neither OK nor NOTFOUND, with context. */
static void fail_engine(sl_reply *r, int rc, const char *what)
{
	static sl_log_limit lim;
	fail(r, rc, "%s: %s", what, sl_status_str(rc));
	if (rc == SL_EFAILED || rc == SL_EIO || rc == SL_ENOSPC || rc == SL_ECORRUPT) {
		sl_log_limited(&lim, SL_LOG_ERROR, "%s: %s", what, sl_status_str(rc));
	}
}

/* A malloc'd "what: detail" for a batch result; NULL on ENOMEM. */
static char *own_printf(sl_reply *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static char *own_printf(sl_reply *r, const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	char *s = strdup(buf);
	return own(r, s) == 0 ? s : NULL;
}

/* ---- argument checks (invariant 2) ---------------------------------- */

/* 0 when key is acceptable; else the status, with a message in msg.
 * limit: --max-key-bytes for a put; for a get or a delete the engine's own
 * bound (SL_MAX_KEY_BYTES), since the store may hold longer keys than this node lets
 * clients write now (replicated from a primary with a larger limit, or
 * written before a restart with a smaller one): they stay readable and
 * deletable. */
static int check_key(const ProtobufCBinaryData *k, int has, uint32_t limit, char *msg, size_t cap)
{
	if (!has || k->len == 0) {
		snprintf(msg, cap, "empty key");
		return SL_EINVAL;
	}
	if (k->len > limit) {
		snprintf(msg, cap, "key is %zu bytes, limit %u", k->len, limit);
		return SL_ETOOBIG;
	}
	return SL_OK;
}

static int check_put(const sl_node *n, const Shiplog__Put *p, char *msg, size_t cap)
{
	int rc = check_key(&p->key, p->has_key, n->max_key_bytes, msg, cap);
	if (rc != SL_OK) {
		return rc;
	}
	if (p->has_value && p->value.len > n->max_value_bytes) {
		snprintf(msg, cap, "value is %zu bytes, limit %u", p->value.len,
		         n->max_value_bytes);
		return SL_ETOOBIG;
	}
	if (p->has_ttl_ms && p->ttl_ms > SL_MAX_TTL_MS) {
		snprintf(msg, cap, "ttl_ms %llu is over 100 years", (unsigned long long)p->ttl_ms);
		return SL_EINVAL;
	}
	return SL_OK;
}

/* The value bytes of a Put; an absent value is the empty value. */
static const void *put_value(const Shiplog__Put *p, size_t *len)
{
	static const uint8_t empty = 0;
	if (!p->has_value || p->value.data == NULL) {
		*len = 0;
		return &empty;
	}
	*len = p->value.len;
	return p->value.data;
}

/* ---- single-key operations (shared by plain requests and batches) --- */

typedef struct op_result {
	int status;
	uint64_t seq;
	void *val; /* owned by the reply once set */
	size_t vlen;
	char msg[200];
} op_result;

/* What a response may hold in values, keys, texts and the 16 bytes
 * reserved per batch result or mget entry: the message limit less room for
 * the response's own fields.  (It was the limit less 512 KiB, and with a
 * small --max-value-bytes a batch of 33,000 pings and a 1-byte get, or an
 * mget of 40,000 keys, was refused though its response was a tenth of the
 * limit.) */
static size_t resp_budget(const sl_node *n)
{
	return n->max_msg_bytes - 4096;
}

/* A get whose value (vl bytes) does not fit the response. */
static void too_big(const sl_node *n, op_result *o, size_t vl)
{
	o->status = SL_ETOOBIG;
	snprintf(o->msg, sizeof(o->msg),
	         "this value (%zu bytes) would take the response past the %zu-byte message limit",
	         vl, n->max_msg_bytes);
}

static void do_get(sl_node *n, sl_reply *r, const Shiplog__Get *g, op_result *o)
{
	o->status = check_key(&g->key, g->has_key, SL_MAX_KEY_BYTES, o->msg, sizeof(o->msg));
	if (o->status != SL_OK) {
		return;
	}
	void *v = NULL;
	size_t vl = 0;
	/* The budget first: a value that does not fit is neither read nor
	 * kept (a batch or mget of many gets of one big value read and
	 * copied it once a get, and could hold a copy a get). */
	size_t budget = resp_budget(n);
	size_t room = budget > r->bytes + g->key.len ? budget - r->bytes - g->key.len : 0;
	int rc = sl_get_max(n->db, g->key.data, g->key.len, room, &v, &vl, &o->seq);
	if (rc == SL_ETOOBIG) {
		too_big(n, o, vl);
		return;
	}
	if (rc != SL_OK) {
		o->status = rc;
		if (rc != SL_ENOTFOUND) {
			snprintf(o->msg, sizeof(o->msg), "get: %s", sl_status_str(rc));
		}
		return;
	}
	if (r->bytes + vl + g->key.len > budget) { /* an empty value with no room */
		free(v);
		too_big(n, o, vl);
		return;
	}
	if (own(r, v) != 0) {
		o->status = SL_ENOMEM;
		snprintf(o->msg, sizeof(o->msg), "get: out of memory");
		return;
	}
	r->bytes += vl + g->key.len;
	o->val = v;
	o->vlen = vl;
}

static void do_put(sl_node *n, const Shiplog__Put *p, unsigned flags, op_result *o)
{
	o->status = check_put(n, p, o->msg, sizeof(o->msg));
	if (o->status != SL_OK) {
		return;
	}
	size_t vl;
	const void *v = put_value(p, &vl);
	uint64_t ttl = p->has_ttl_ms ? p->ttl_ms : 0;
	int rc = sl_put_ex(n->db, p->key.data, p->key.len, v, vl, ttl, flags, &o->seq);
	o->status = rc;
	if (rc != SL_OK) {
		snprintf(o->msg, sizeof(o->msg), "put: %s", sl_status_str(rc));
		if (rc == SL_EFAILED || rc == SL_EIO || rc == SL_ENOSPC) {
			static sl_log_limit lim;
			sl_log_limited(&lim, SL_LOG_ERROR, "put: %s", sl_status_str(rc));
		}
	}
}

static void do_del(sl_node *n, const Shiplog__Del *d, unsigned flags, op_result *o)
{
	o->status = check_key(&d->key, d->has_key, SL_MAX_KEY_BYTES, o->msg, sizeof(o->msg));
	if (o->status != SL_OK) {
		return;
	}
	int rc = sl_delete_ex(n->db, d->key.data, d->key.len, flags, &o->seq);
	o->status = rc;
	if (rc != SL_OK && rc != SL_ENOTFOUND) {
		snprintf(o->msg, sizeof(o->msg), "del: %s", sl_status_str(rc));
		if (rc == SL_EFAILED || rc == SL_EIO || rc == SL_ENOSPC) {
			static sl_log_limit lim;
			sl_log_limited(&lim, SL_LOG_ERROR, "del: %s", sl_status_str(rc));
		}
	}
}

/* Copies a single-key result into the top-level Response. */
static void set_top(sl_reply *r, const op_result *o)
{
	r->resp.status = o->status;
	if (o->status == SL_OK || o->status == SL_ENOTFOUND) {
		if (o->seq != 0) {
			r->resp.has_seq = 1;
			r->resp.seq = o->seq;
		}
		if (o->val != NULL) {
			r->resp.has_value = 1;
			r->resp.value.data = o->val;
			r->resp.value.len = o->vlen;
		}
		return;
	}
	snprintf(r->errbuf, sizeof(r->errbuf), "%s", o->msg[0] ? o->msg : sl_status_str(o->status));
	r->resp.error = r->errbuf;
}

/* ---- multi-key operations ------------------------------------------- */

static void do_mget(sl_node *n, sl_reply *r, const Shiplog__MGet *m)
{
	size_t k = m->n_keys;
	if (k == 0) {
		return;
	}
	r->bytes += k * 16; /* each entry's framing, status and seq (see do_batch) */
	Shiplog__Entry *ents = own_alloc(r, k * sizeof(*ents));
	Shiplog__Entry **ptrs = own_alloc(r, k * sizeof(*ptrs));
	if (ents == NULL || ptrs == NULL) {
		fail(r, SL_ENOMEM, "mget: out of memory");
		return;
	}
	for (size_t i = 0; i < k; i++) {
		sl_prefetch(n->db, m->keys[i].data, m->keys[i].len); /* as do_batch */
	}
	for (size_t i = 0; i < k; i++) {
		sl_prefetch_entry(n->db, m->keys[i].data, m->keys[i].len);
	}
	for (size_t i = 0; i < k; i++) {
		sl_prefetch_value(n->db, m->keys[i].data, m->keys[i].len);
	}
	for (size_t i = 0; i < k; i++) {
		Shiplog__Get g = SHIPLOG__GET__INIT;
		g.has_key = 1;
		g.key = m->keys[i];
		op_result o = {0};
		do_get(n, r, &g, &o);
		/* a value past the response's budget: that entry comes with
		 * SL_ETOOBIG and no value, as a batch get's result does, and the
		 * keys after it are still read (one big value failed the whole
		 * mget: the CLI printed nothing, not even the small values) */
		if (o.status == SL_ENOMEM) {
			fail(r, o.status, "mget: %s", o.msg[0] ? o.msg : sl_status_str(o.status));
			r->resp.n_entries = 0;
			return;
		}
		shiplog__entry__init(&ents[i]);
		ents[i].has_status = 1;
		ents[i].status = o.status;
		if (o.status == SL_OK) {
			ents[i].has_value = 1;
			ents[i].value.data = o.val;
			ents[i].value.len = o.vlen;
			ents[i].has_seq = 1;
			ents[i].seq = o.seq;
		}
		ptrs[i] = &ents[i];
		r->resp.entries = ptrs;
		r->resp.n_entries = i + 1;
	}
}

static void do_scan(sl_node *n, sl_reply *r, const Shiplog__Scan *s)
{
	sl_scan_page pg;
	size_t plen = s->has_prefix ? s->prefix.len : 0;
	size_t clen = s->has_cursor ? s->cursor.len : 0;
	/* The cursor is a stored key, which may be longer than a
	 * --max-key-bytes lowered since (a page ending on one handed out a
	 * cursor the next page refused, and the keys after it could not be
	 * reached): it and the prefix are bounded by the largest key any
	 * store holds. */
	if (plen > SL_MAX_KEY_BYTES || clen > SL_MAX_KEY_BYTES) {
		fail(r, SL_ETOOBIG, "scan: %s longer than %u bytes",
		     plen > SL_MAX_KEY_BYTES ? "prefix" : "cursor", SL_MAX_KEY_BYTES);
		return;
	}
	uint32_t limit = s->has_limit && s->limit ? s->limit : n->scan_default;
	if (limit > n->scan_max) {
		limit = n->scan_max;
	}
	/* the cursor is a second copy of the page's last key: room for the
	 * longest (a page of 65,520-byte keys went 61 KB past the limit) */
	size_t budget = resp_budget(n);
	budget = budget > SL_MAX_KEY_BYTES + 16 ? budget - (SL_MAX_KEY_BYTES + 16) : 0;
	int rc = sl_scan_page_run(n->db, plen ? s->prefix.data : NULL, plen,
	                          clen ? s->cursor.data : NULL, clen, limit, budget,
	                          s->has_keys_only && s->keys_only, &pg);
	if (rc != SL_OK) {
		fail(r, rc, "scan: %s", sl_status_str(rc));
		return;
	}
	/* The page's buffers move into the reply. */
	Shiplog__Entry *ents = own_alloc(r, (pg.n ? pg.n : 1) * sizeof(*ents));
	Shiplog__Entry **ptrs = own_alloc(r, (pg.n ? pg.n : 1) * sizeof(*ptrs));
	if (ents == NULL || ptrs == NULL) {
		sl_scan_page_free(&pg);
		fail(r, SL_ENOMEM, "scan: out of memory");
		return;
	}
	int oom = 0;
	for (size_t i = 0; i < pg.n; i++) {
		sl_scan_entry *e = &pg.e[i];
		shiplog__entry__init(&ents[i]);
		ents[i].has_key = 1;
		ents[i].key.data = e->k;
		ents[i].key.len = e->kl;
		if (own(r, e->k) != 0) {
			oom = 1;
		}
		e->k = NULL;
		if (e->toobig) {
			/* its value alone would take the response over the limit */
			ents[i].has_status = 1;
			ents[i].status = SL_ETOOBIG;
		}
		if (e->v != NULL) {
			ents[i].has_value = 1;
			ents[i].value.data = e->v;
			ents[i].value.len = e->vl;
			if (own(r, e->v) != 0) {
				oom = 1;
			}
			e->v = NULL;
		}
		ptrs[i] = &ents[i];
	}
	size_t count = pg.n;
	if (pg.more && count > 0) {
		r->resp.has_cursor = 1;
		r->resp.cursor = ents[count - 1].key;
	}
	sl_scan_page_free(&pg);
	if (oom) {
		fail(r, SL_ENOMEM, "scan: out of memory");
		r->resp.has_cursor = 0;
		return;
	}
	r->resp.entries = ptrs;
	r->resp.n_entries = count;
}

/* ---- stats ------------------------------------------------------------ */

#define MAX_STATS (48 + 16 + 10 * 64)

static void add_stat(sl_reply *r, Shiplog__Stat *st, Shiplog__Stat **ptrs, const char *name,
                     uint64_t v, const char *text)
{
	size_t i = r->resp.n_stats;
	if (i >= MAX_STATS) {
		return;
	}
	shiplog__stat__init(&st[i]);
	st[i].name = (char *)name;
	if (text != NULL) {
		st[i].text = (char *)text;
	} else {
		st[i].has_value = 1;
		st[i].value = v;
	}
	ptrs[i] = &st[i];
	r->resp.n_stats = i + 1;
}

/* What a full compaction did, as stats (the CLI's "OK: reclaimed ..."):
 * a run that left dead bytes behind (in the active segment, or in
 * segments held for the replication backlog) says so instead of a bare
 * OK.  Concurrent writes and background runs blur the figures a little. */
static void compact_result(sl_reply *r, const sl_stats *before, sl_db *db, sl_stats *after)
{
	if (sl_stats_get(db, after) != SL_OK) {
		return;
	}
	enum { N = 4 };
	Shiplog__Stat *st = own_alloc(r, N * sizeof(*st));
	Shiplog__Stat **ptrs = own_alloc(r, N * sizeof(*ptrs));
	if (st == NULL || ptrs == NULL) {
		return; /* the compaction happened: a bare OK */
	}
	r->resp.stats = ptrs;
	uint64_t rec = after->compact_bytes_reclaimed - before->compact_bytes_reclaimed;
	add_stat(r, st, ptrs, "reclaimed_bytes", rec, NULL);
	add_stat(r, st, ptrs, "segments_before", before->segments, NULL);
	add_stat(r, st, ptrs, "segments_after", after->segments, NULL);
	add_stat(r, st, ptrs, "dead_bytes_left", after->dead_bytes, NULL);
}

/* Replication: role details, positions, resyncs, and one group of
 * "follower.N.*" stats per follower the primary knows. */
static void add_repl_stats(sl_node *n, sl_reply *r, Shiplog__Stat *st, Shiplog__Stat **ptrs)
{
	sl_repl_stats rs;
	sl_repl_stats_get(n->repl, &rs);
	add_stat(r, st, ptrs, "history_id", 0, own_printf(r, "%s", rs.history_id));
	const char *lu = sl_repl_listen_url(n->repl);
	add_stat(r, st, ptrs, "repl_listen", 0, own_printf(r, "%s", lu != NULL ? lu : "none"));
	add_stat(r, st, ptrs, "node_id", 0, own_printf(r, "%s", rs.node_id));
	if (rs.primary[0]) {
		add_stat(r, st, ptrs, "primary", 0, own_printf(r, "%s", rs.primary));
		add_stat(r, st, ptrs, "repl_state", 0, rs.state);
		add_stat(r, st, ptrs, "repl_link_down_ms", rs.link_down_ms, NULL);
		if (rs.last_error[0]) {
			add_stat(r, st, ptrs, "repl_last_error", 0,
			         own_printf(r, "%s", rs.last_error));
			add_stat(r, st, ptrs, "repl_last_error_ago_ms", rs.last_error_ago_ms, NULL);
		}
	}
	add_stat(r, st, ptrs, "applied_seq", rs.applied_seq, NULL);
	add_stat(r, st, ptrs, "log_floor", rs.log_floor, NULL);
	add_stat(r, st, ptrs, "resyncs_full", rs.resyncs_full, NULL);
	add_stat(r, st, ptrs, "resyncs_partial", rs.resyncs_partial, NULL);
	add_stat(r, st, ptrs, "repl_bytes_fetched", rs.bytes_fetched, NULL);
	add_stat(r, st, ptrs, "repl_records_fetched", rs.records_fetched, NULL);
	add_stat(r, st, ptrs, "repl_fetches", rs.fetches, NULL);
	add_stat(r, st, ptrs, "repl_refused_batches", rs.refused_batches, NULL);
	add_stat(r, st, ptrs, "repl_apply_errors", rs.apply_errors, NULL);
	add_stat(r, st, ptrs, "repl_min_seq_waits", rs.min_seq_waits, NULL);
	add_stat(r, st, ptrs, "repl_read_buffer_bytes", rs.read_buffer_bytes, NULL);
	add_stat(r, st, ptrs, "writes_paused_ms", rs.writes_paused_ms, NULL);
	add_stat(r, st, ptrs, "repl_bytes_served", rs.bytes_served, NULL);
	add_stat(r, st, ptrs, "repl_records_served", rs.records_served, NULL);
	add_stat(r, st, ptrs, "repl_backlog_bytes", rs.backlog_bytes, NULL);
	add_stat(r, st, ptrs, "repl_protect_seq", rs.protect_seq, NULL);
	size_t connected = 0;
	for (size_t i = 0; i < rs.n_followers; i++) {
		connected += rs.followers[i].connected != 0;
	}
	add_stat(r, st, ptrs, "followers", rs.n_followers, NULL);
	add_stat(r, st, ptrs, "followers_connected", connected, NULL);
	for (size_t i = 0; i < rs.n_followers && i < 64; i++) {
		const sl_repl_follower_stat *f = &rs.followers[i];
		char *nm[10];
		static const char *const what[10] = {
		    "id",     "address",   "applied_seq",  "durable_seq", "lag_records",
		    "lag_ms", "connected", "last_seen_ms", "lag_bytes",   "stalled"};
		for (int k = 0; k < 10; k++) {
			nm[k] = own_printf(r, "follower.%zu.%s", i, what[k]);
		}
		add_stat(r, st, ptrs, nm[0], 0, own_printf(r, "%s", f->node_id));
		add_stat(r, st, ptrs, nm[1], 0, own_printf(r, "%s", f->address));
		add_stat(r, st, ptrs, nm[2], f->applied_seq, NULL);
		add_stat(r, st, ptrs, nm[3], f->durable_seq, NULL);
		add_stat(r, st, ptrs, nm[4], f->lag_records, NULL);
		add_stat(r, st, ptrs, nm[5], f->lag_ms, NULL);
		add_stat(r, st, ptrs, nm[6], (uint64_t)f->connected, NULL);
		add_stat(r, st, ptrs, nm[7], f->last_seen_ms_ago, NULL);
		add_stat(r, st, ptrs, nm[8], f->lag_bytes, NULL);
		add_stat(r, st, ptrs, nm[9], (uint64_t)f->stalled, NULL);
	}
	sl_repl_stats_free(&rs);
}

static void do_stats(sl_node *n, sl_reply *r)
{
	sl_stats s;
	int rc = sl_stats_get(n->db, &s);
	if (rc != SL_OK) {
		fail(r, rc, "stats: %s", sl_status_str(rc));
		return;
	}
	sl_repl_add_carried(n->repl, &s);
	Shiplog__Stat *st = own_alloc(r, MAX_STATS * sizeof(*st));
	Shiplog__Stat **ptrs = own_alloc(r, MAX_STATS * sizeof(*ptrs));
	if (st == NULL || ptrs == NULL) {
		fail(r, SL_ENOMEM, "stats: out of memory");
		return;
	}
	r->resp.stats = ptrs;
	uint64_t uptime = (sl_node_mono_ms() - n->start_ms) / 1000;
	add_stat(r, st, ptrs, "role", 0, n->repl ? sl_repl_role(n->repl) : n->role);
	add_stat(r, st, ptrs, "version", 0, SL_NODE_VERSION);
	add_stat(r, st, ptrs, "uptime_s", uptime, NULL);
	add_stat(r, st, ptrs, "keys", s.keys, NULL);
	add_stat(r, st, ptrs, "tombstones", s.tombstones, NULL);
	add_stat(r, st, ptrs, "live_bytes", s.live_bytes, NULL);
	add_stat(r, st, ptrs, "dead_bytes", s.dead_bytes, NULL);
	add_stat(r, st, ptrs, "disk_bytes", s.disk_bytes, NULL);
	add_stat(r, st, ptrs, "segments", s.segments, NULL);
	add_stat(r, st, ptrs, "last_seq", s.last_seq, NULL);
	add_stat(r, st, ptrs, "synced_seq", s.synced_seq, NULL);
	add_stat(r, st, ptrs, "keydir_bytes", s.keydir_bytes, NULL);
	add_stat(r, st, ptrs, "recovery_ms", s.recovery_ms, NULL);
	add_stat(r, st, ptrs, "corrupt_records", s.corrupt_records, NULL);
	add_stat(r, st, ptrs, "hints_loaded", s.hints_loaded, NULL);
	add_stat(r, st, ptrs, "segments_scanned", s.segments_scanned, NULL);
	add_stat(r, st, ptrs, "fsyncs", s.fsyncs, NULL);
	add_stat(r, st, ptrs, "puts", s.puts, NULL);
	add_stat(r, st, ptrs, "gets", s.gets, NULL);
	add_stat(r, st, ptrs, "deletes", s.deletes, NULL);
	add_stat(r, st, ptrs, "compactions", atomic_load(&n->compactions), NULL);
	add_stat(r, st, ptrs, "compaction_runs", s.compactions, NULL);
	add_stat(r, st, ptrs, "compact_bytes_reclaimed", s.compact_bytes_reclaimed, NULL);
	add_stat(r, st, ptrs, "compact_errors", s.compact_errors, NULL);
	if (s.compact_last_error != 0) {
		add_stat(r, st, ptrs, "compact_last_error", 0, sl_strerror(s.compact_last_error));
	}
	/* 0 or 1, as shiplog_store_failed (the engine's negative code read as
	 * 18446744073709551612 in a uint64); the error itself as text */
	add_stat(r, st, ptrs, "failed", s.failed != 0, NULL);
	if (s.failed != 0) {
		add_stat(r, st, ptrs, "failed_error", 0, sl_strerror(s.failed));
	}
	add_stat(r, st, ptrs, "sync", 0, n->sync_name);
	add_stat(r, st, ptrs, "max_key_bytes", n->max_key_bytes, NULL);
	add_stat(r, st, ptrs, "max_value_bytes", n->max_value_bytes, NULL);
	add_stat(r, st, ptrs, "max_message_bytes", n->max_msg_bytes, NULL);
	if (n->repl != NULL) {
		add_repl_stats(n, r, st, ptrs);
	}
}

/* ---- batch ------------------------------------------------------------ */

/* The key of a batch's get, put or delete (NULL: none, or another op). */
static const ProtobufCBinaryData *op_key(const Shiplog__Op *op)
{
	switch (op->op_case) {
	case SHIPLOG__OP__OP_GET:
		return op->get->has_key ? &op->get->key : NULL;
	case SHIPLOG__OP__OP_PUT:
		return op->put->has_key ? &op->put->key : NULL;
	case SHIPLOG__OP__OP_DEL:
		return op->del->has_key ? &op->del->key : NULL;
	default:
		return NULL;
	}
}

static void do_batch(sl_node *n, sl_reply *r, const Shiplog__Batch *b)
{
	size_t k = b->n_ops;
	if (k == 0) {
		return;
	}
	size_t budget = resp_budget(n); /* as do_get's */
	r->budget = budget;
	/* Every result's framing, status and seq (at most 16 bytes; 65,536 of
	 * them fit in the 1 MiB of slack) is reserved first, so values and
	 * texts fill only what is left: a batch's response stays within the
	 * message limit whatever the order of its operations. */
	r->bytes += k * 16;
	Shiplog__Result *res = own_alloc(r, k * sizeof(*res));
	Shiplog__Result **ptrs = own_alloc(r, k * sizeof(*ptrs));
	if (res == NULL || ptrs == NULL) {
		fail(r, SL_ENOMEM, "batch: out of memory");
		return;
	}
	/* Every key's index slot starts loading before the first lookup, then
	 * every index entry, then every record before the first read: their
	 * cache misses overlap instead of coming one after another. */
	for (size_t i = 0; i < k; i++) {
		const ProtobufCBinaryData *key = op_key(b->ops[i]);
		if (key != NULL) {
			sl_prefetch(n->db, key->data, key->len);
		}
	}
	for (size_t i = 0; i < k; i++) {
		const ProtobufCBinaryData *key = op_key(b->ops[i]);
		if (key != NULL) {
			sl_prefetch_entry(n->db, key->data, key->len);
		}
	}
	for (size_t i = 0; i < k; i++) {
		const ProtobufCBinaryData *key = op_key(b->ops[i]);
		if (key != NULL && b->ops[i]->op_case == SHIPLOG__OP__OP_GET) {
			sl_prefetch_value(n->db, key->data, key->len);
		}
	}
	for (size_t i = 0; i < k; i++) {
		const Shiplog__Op *op = b->ops[i];
		op_result o = {0};
		switch (op->op_case) {
		case SHIPLOG__OP__OP_GET:
			do_get(n, r, op->get, &o);
			break;
		case SHIPLOG__OP__OP_PUT:
			/* Writes of a batch share one group commit (below). */
			do_put(n, op->put, SL_NOWAIT, &o);
			break;
		case SHIPLOG__OP__OP_DEL:
			do_del(n, op->del, SL_NOWAIT, &o);
			break;
		case SHIPLOG__OP__OP_PING:
			o.status = SL_OK;
			break;
		default:
			o.status = SL_EBADOP;
			snprintf(o.msg, sizeof(o.msg), "batch op %zu: unknown operation", i);
			break;
		}
		shiplog__result__init(&res[i]);
		res[i].has_status = 1;
		res[i].status = o.status;
		if (o.seq != 0) {
			res[i].has_seq = 1;
			res[i].seq = o.seq;
		}
		if (o.val != NULL) {
			res[i].has_value = 1;
			res[i].value.data = o.val;
			res[i].value.len = o.vlen;
		}
		/* An error text counts against the response's budget too, and
		 * is left out once the budget is spent: the status says what
		 * happened. */
		if (o.status < 0) {
			const char *m = o.msg[0] ? o.msg : sl_status_str(o.status);
			if (r->bytes + strlen(m) <= budget) {
				res[i].error = own_printf(r, "%s", m);
				r->bytes += strlen(m);
			}
		}
		ptrs[i] = &res[i];
	}
	/* Under --sync always the batch's writes were appended with SL_NOWAIT
	 * and share one sl_sync_wait in run() (or the caller's committer). */
	r->resp.results = ptrs;
	r->resp.n_results = k;
}

/* ---- dispatch --------------------------------------------------------- */

static int is_read(int op)
{
	return op == SL_OP_GET || op == SL_OP_MGET || op == SL_OP_SCAN || op == SL_OP_BATCH ||
	       op == SL_OP_DIGEST;
}

static int is_write(int op)
{
	return op == SL_OP_PUT || op == SL_OP_DEL || op == SL_OP_BATCH;
}

static int op_of(const Shiplog__Request *q)
{
	switch (q->op_case) {
	case SHIPLOG__REQUEST__OP_GET:
		return SL_OP_GET;
	case SHIPLOG__REQUEST__OP_PUT:
		return SL_OP_PUT;
	case SHIPLOG__REQUEST__OP_DEL:
		return SL_OP_DEL;
	case SHIPLOG__REQUEST__OP_MGET:
		return SL_OP_MGET;
	case SHIPLOG__REQUEST__OP_SCAN:
		return SL_OP_SCAN;
	case SHIPLOG__REQUEST__OP_STATS:
		return SL_OP_STATS;
	case SHIPLOG__REQUEST__OP_COMPACT:
		return SL_OP_COMPACT;
	case SHIPLOG__REQUEST__OP_PING:
		return SL_OP_PING;
	case SHIPLOG__REQUEST__OP_BATCH:
		return SL_OP_BATCH;
	case SHIPLOG__REQUEST__OP_PROMOTE:
		return SL_OP_PROMOTE;
	case SHIPLOG__REQUEST__OP_FOLLOW:
		return SL_OP_FOLLOW;
	case SHIPLOG__REQUEST__OP_WAIT:
		return SL_OP_WAIT;
	case SHIPLOG__REQUEST__OP_DIGEST:
		return SL_OP_DIGEST;
	case SHIPLOG__REQUEST__OP_PAUSE_WRITES:
		return SL_OP_PAUSE_WRITES;
	default:
		return SL_OP_INVALID;
	}
}

/* ---- request decoding: a per-thread arena ---------------------------- */

/* protobuf-c allocates every sub-message and every bytes field of a
 * decoded request separately: some fifty malloc/free pairs for a batch of
 * 16 gets.  A request lives only while its thread runs it (invariant 4), so
 * it is decoded into this thread's arena instead, which is reset when the
 * request is freed.  What does not fit (a big value) is malloc'd. */
#define REQ_ARENA_BYTES (64u << 10)

typedef struct req_arena {
	uint8_t *buf;
	size_t used;
	int live; /* requests decoded and not yet freed */
} req_arena;

static __thread req_arena tl_req;
static pthread_key_t req_key;
static pthread_once_t req_once = PTHREAD_ONCE_INIT;

static void req_key_make(void)
{
	/* the arena goes with its thread */
	if (pthread_key_create(&req_key, free) != 0) {
		req_key = (pthread_key_t)-1;
	}
}

static void *req_alloc(void *unused, size_t n)
{
	(void)unused;
	req_arena *a = &tl_req;
	if (a->buf == NULL) {
		pthread_once(&req_once, req_key_make);
		if (req_key != (pthread_key_t)-1 && (a->buf = malloc(REQ_ARENA_BYTES)) != NULL &&
		    pthread_setspecific(req_key, a->buf) != 0) {
			free(a->buf);
			a->buf = NULL;
		}
	}
	n = (n + 15) & ~(size_t)15;
	if (a->buf != NULL && n <= REQ_ARENA_BYTES - a->used) {
		void *p = a->buf + a->used;
		a->used += n;
		return p;
	}
	return malloc(n);
}

static void req_free_mem(void *unused, void *p)
{
	(void)unused;
	const req_arena *a = &tl_req;
	if (a->buf == NULL || (uint8_t *)p < a->buf || (uint8_t *)p >= a->buf + REQ_ARENA_BYTES) {
		free(p);
	}
}

#if defined(__SANITIZE_ADDRESS__)
#define SL_REQ_ARENA 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SL_REQ_ARENA 0
#endif
#endif
#ifndef SL_REQ_ARENA
#define SL_REQ_ARENA 1
#endif

/* Under AddressSanitizer each piece is malloc'd, so that an overrun of a
 * decoded field is still caught (the fuzz target, the ASan tests). */
static ProtobufCAllocator req_allocator = {req_alloc, req_free_mem, NULL};
#define REQ_ALLOCATOR (SL_REQ_ARENA ? &req_allocator : NULL)

static Shiplog__Request *req_unpack(const void *buf, size_t len)
{
	Shiplog__Request *q = shiplog__request__unpack(REQ_ALLOCATOR, len, buf);
	if (q != NULL) {
		tl_req.live++;
	} else if (tl_req.live == 0) {
		tl_req.used = 0; /* what the failed decode took */
	}
	return q;
}

static void req_release(Shiplog__Request *q)
{
	shiplog__request__free_unpacked(q, REQ_ALLOCATOR);
	if (--tl_req.live == 0) {
		tl_req.used = 0;
	}
}

/* Decodes buf after bounding it (invariant 1).  NULL with r failed. */
static Shiplog__Request *decode(const void *buf, size_t len, sl_reply *r)
{
	sl_request_shape sh;
	int rc = sl_request_precheck(buf, len, &sh);
	if (sh.has_id) {
		/* a refusal, here or by the decode below, carries the id: the
		 * client can still match it (a field of the wrong wire type
		 * passed the walk and failed the decode, and its refusal came
		 * without the id the walk had read) */
		r->resp.has_id = 1;
		r->resp.id = sh.id;
	}
	if (rc == SL_ETOOBIG) {
		fail(r, SL_ETOOBIG, "request has %zu batch ops / %zu mget keys; limit %u each",
		     sh.batch_ops, sh.mget_keys, SL_MAX_BATCH_OPS);
		return NULL;
	}
	if (rc != SL_OK) {
		fail(r, SL_EPROTO,
		     "malformed request: not a valid protobuf Request (or too many fields: more "
		     "than 64 in one message besides batch ops and mget keys, or more unknown "
		     "fields than 64 plus 2 per batch op and mget key)");
		return NULL;
	}
	Shiplog__Request *q = req_unpack(buf, len);
	if (q == NULL) {
		fail(r, SL_EPROTO, "malformed request: protobuf decode failed");
	}
	return q;
}

static int batch_writes(const Shiplog__Batch *b)
{
	for (size_t i = 0; b != NULL && i < b->n_ops; i++) {
		if (b->ops[i]->op_case == SHIPLOG__OP__OP_PUT ||
		    b->ops[i]->op_case == SHIPLOG__OP__OP_DEL) {
			return 1;
		}
	}
	return 0;
}

/* The highest seq written by the request just run (0: none). */
static uint64_t written_seq(const sl_reply *r, const Shiplog__Request *q, int op)
{
	if (op != SL_OP_BATCH) {
		return r->resp.status == SL_OK && r->resp.has_seq ? r->resp.seq : 0;
	}
	uint64_t max = 0;
	for (size_t i = 0; i < r->resp.n_results && i < q->batch->n_ops; i++) {
		const Shiplog__Result *x = r->resp.results[i];
		int oc = q->batch->ops[i]->op_case;
		if ((oc == SHIPLOG__OP__OP_PUT || oc == SHIPLOG__OP__OP_DEL) &&
		    x->status == SL_OK && x->has_seq && x->seq > max) {
			max = x->seq;
		}
	}
	return max;
}

/* promote, follow, wait, digest: replication's own operations.  They take
 * no store lock themselves except digest (promote/follow stop the fetch
 * loop, which may be waiting for the write lock). */
static void run_repl_op(sl_node *n, sl_reply *r, const Shiplog__Request *q, int op, int can_park)
{
	char msg[256], hid[33];
	if (op == SL_OP_DIGEST) {
		char d[33];
		uint64_t keys = 0;
		pthread_rwlock_rdlock(&n->db_lock);
		int rc = sl_digest(n->db, d, &keys);
		pthread_rwlock_unlock(&n->db_lock);
		if (rc != SL_OK) {
			fail_engine(r, rc, "digest");
			return;
		}
		r->resp.digest = own_printf(r, "%s", d);
		r->resp.has_digest_keys = 1;
		r->resp.digest_keys = keys;
		return;
	}
	if (n->repl == NULL) {
		fail(r, SL_ENOTIMPL, "%s: replication is not available on this server",
		     sl_op_names[op]);
		return;
	}
	if (op == SL_OP_PROMOTE) {
		int rc = sl_repl_promote(n->repl, hid, msg, sizeof(msg));
		if (rc != SL_OK) {
			fail(r, rc, "promote: %s", msg);
			return;
		}
		r->resp.history_id = own_printf(r, "%s", hid);
		return;
	}
	if (op == SL_OP_PAUSE_WRITES) {
		uint32_t ms =
		    q->pause_writes != NULL && q->pause_writes->has_ms ? q->pause_writes->ms : 0;
		uint64_t last = 0;
		int rc = sl_repl_pause_writes(n->repl, ms, &last, msg, sizeof(msg));
		if (rc != SL_OK) {
			fail(r, rc, "pause-writes: %s", msg);
			return;
		}
		r->resp.has_seq = 1;
		r->resp.seq = last;
		return;
	}
	if (op == SL_OP_FOLLOW) {
		int rc = sl_repl_follow(n->repl, q->follow->url, msg, sizeof(msg));
		if (rc != SL_OK) {
			fail(r, rc, "follow: %s", msg);
			return;
		}
		sl_repl_history_id(n->repl, hid);
		r->resp.history_id = own_printf(r, "%s", hid);
		return;
	}
	/* wait: like Redis WAIT, always answers how many followers have it;
	 * and like it refused on a follower (none follow it), naming the
	 * primary as a write refused there does */
	if (strcmp(sl_repl_role(n->repl), "follower") == 0) {
		char msg[512], primary[256];
		if (sl_repl_write_check(n->repl, msg, sizeof(msg), primary, sizeof(primary)) ==
		    SL_EREADONLY) {
			fail(r, SL_EREADONLY, "wait: no follower follows this node: %s", msg);
			if (primary[0]) {
				r->resp.primary = own_printf(r, "%s", primary);
			}
			return;
		}
	}
	const Shiplog__Wait *w = q->wait;
	uint64_t seq = w->has_seq ? w->seq : 0;
	if (seq == 0) {
		pthread_rwlock_rdlock(&n->db_lock);
		seq = sl_last_seq(n->db);
		pthread_rwlock_unlock(&n->db_lock);
	}
	uint32_t want = w->has_replicas ? w->replicas : 0;
	uint32_t tmo = w->has_timeout_ms ? w->timeout_ms : 0;
	uint32_t got = 0;
	sl_repl_ack_begin(n->repl);
	r->resp.has_seq = 1;
	r->resp.seq = seq;
	if (can_park && want > 0) {
		/* Parked by the caller (sl_repl_ack_park), no worker held: 64
		 * WAITs with a long timeout held every worker, and the writes
		 * that need one (a new segment) waited for them, even after
		 * their client had gone.  Completed by sl_reply_acked. */
		r->ack_seq = seq;
		r->ack_want = want;
		r->ack_timeout_ms = tmo;
		r->ack_is_wait = 1;
		return;
	}
	sl_workq_blocking(1);
	sl_repl_wait_acks(n->repl, seq, want, tmo, &got);
	sl_workq_blocking(0);
	sl_repl_ack_end(n->repl);
	r->resp.has_acks = 1;
	r->resp.acks = got;
}

void sl_reply_acked(sl_node *n, sl_reply *r, uint32_t acked)
{
	if (r->ack_want == 0) {
		return;
	}
	/* made, not acknowledged in time (a WAIT: how many have it, whatever
	 * the count) */
	if (!r->ack_is_wait && r->ack_seq > 0 && acked < r->ack_want) {
		fail(r, SL_ETIMEDOUT,
		     "written as seq %llu, but only %u of %u followers have it durably after %u ms",
		     (unsigned long long)r->ack_seq, acked, r->ack_want, r->ack_timeout_ms);
	}
	sl_repl_ack_end(n->repl);
	if (r->resp.status >= 0 || r->resp.status == SL_ETIMEDOUT) {
		r->resp.has_acks = 1;
		r->resp.acks = acked;
	}
	r->ack_want = 0;
	r->ack_is_wait = 0;
}

/* defer_seq != NULL: under --sync always, a write that needs no follower
 * acknowledgement is appended without waiting for its fdatasync; *defer_seq
 * gets the seq the caller must sl_sync_wait for (then sl_reply_sync_failed on
 * failure, then sl_repl_notify_write) before sending the reply. */
/* Largest request run in an nng callback thread, and the room a write
 * run there leaves in the active segment (sl_append_room): a write that
 * could start a new segment (a file created and fsynced) goes to a worker. */
#define INLINE_MAX_BYTES   (64u << 10)
#define INLINE_ROOM_MARGIN (1u << 20)

/* Whether q may run in an nng callback thread (sl_handle_inline): it must
 * not wait for the disk, a follower or another request.  Gets, puts,
 * deletes, multi-gets and batches of them qualify, when small, without
 * --acks (a --min-seq not yet applied is found and handed back by run()). */
static int runs_inline(const sl_node *n, const Shiplog__Request *q, int op)
{
	switch (op) {
	case SL_OP_GET:
	case SL_OP_PUT:
	case SL_OP_DEL:
	case SL_OP_MGET:
	case SL_OP_BATCH:
	case SL_OP_PING:
		break;
	default:
		return 0;
	}
	if (q->has_acks && q->acks > 0 && strcmp(n->sync_name, "always") == 0) {
		return 0; /* it would wait for the fdatasync before its acks */
	}
	/* A write with --acks is made here and parked for its acks (the
	 * caller's sl_repl_ack_park); a --min-seq not yet applied: run()
	 * hands it back. */
	return 1;
}

/* Takes the store read lock; inline (try_inline), only if it is free at
 * once (a resync swaps the store under the write lock): -1 if not. */
static int db_rdlock(sl_node *n, int try_inline)
{
	if (!try_inline) {
		return pthread_rwlock_rdlock(&n->db_lock) == 0 ? 0 : -1;
	}
	return pthread_rwlock_tryrdlock(&n->db_lock) == 0 ? 0 : -1;
}

static void fail_behind(sl_reply *r, uint64_t applied, uint64_t min_seq)
{
	fail(r, SL_EBEHIND, "node has applied seq %llu, request needs %llu",
	     (unsigned long long)applied, (unsigned long long)min_seq);
	r->resp.has_applied_seq = 1;
	r->resp.applied_seq = applied;
}

/* Runs q.  With try_inline set (an nng callback thread), returns -1 having
 * changed nothing when running it could wait: the store is being swapped
 * (db_lock held for writing) or a write could have to start a segment. */
static int run(sl_node *n, sl_reply *r, const Shiplog__Request *q, int op, uint64_t *defer_seq,
               int try_inline)
{
	int writes =
	    op == SL_OP_PUT || op == SL_OP_DEL || (op == SL_OP_BATCH && batch_writes(q->batch));
	if (is_read(op) && q->has_min_seq && q->min_seq > 0) {
		uint64_t applied = 0;
		int behind;
		if (n->repl != NULL && try_inline) {
			/* Never wait here: a node that has not applied min_seq
			 * yet returns it with r->wait_applied set, and the
			 * caller parks it (server.c invariant 6). */
			if (sl_repl_wait_applied(n->repl, q->min_seq, 0, &applied) != SL_OK) {
				r->wait_applied = q->min_seq;
				return -1;
			}
			behind = 0;
		} else if (n->repl != NULL) {
			sl_workq_blocking(1);
			behind = sl_repl_wait_applied(n->repl, q->min_seq, n->min_seq_wait_ms,
			                              &applied) != SL_OK;
			sl_workq_blocking(0);
		} else {
			if (db_rdlock(n, try_inline) != 0) {
				return -1;
			}
			applied = sl_last_seq(n->db);
			pthread_rwlock_unlock(&n->db_lock);
			behind = applied < q->min_seq;
		}
		if (behind) {
			fail_behind(r, applied, q->min_seq);
			return 0;
		}
	}
	if (op == SL_OP_PROMOTE || op == SL_OP_FOLLOW || op == SL_OP_WAIT || op == SL_OP_DIGEST ||
	    op == SL_OP_PAUSE_WRITES) {
		run_repl_op(n, r, q, op, defer_seq != NULL);
		return 0;
	}
	int want_acks = writes && q->has_acks && q->acks > 0 && n->repl != NULL;
	/* Under --sync always a write is appended first and made durable
	 * after (sl_sync_wait below, or the caller's committer when deferred),
	 * so the worker can mark the wait for the disk as a wait. */
	int sync_after = writes && strcmp(n->sync_name, "always") == 0;
	int defer = defer_seq != NULL && sync_after && !want_acks;
	unsigned wflags = sync_after ? SL_NOWAIT : 0;
	if (op == SL_OP_COMPACT) {
		sl_repl_protect_update(n->repl); /* the backlog as of now */
	}
	op_result o = {0};
	if (db_rdlock(n, try_inline) != 0) {
		return -1;
	}
	/* Checked under the store lock: sl_repl_follow takes it for writing
	 * to turn this node into a follower, so a write either lands before
	 * that (and counts in the applied seq it starts from) or is refused. */
	if (writes && n->repl != NULL) {
		char msg[512], primary[256];
		int rc = sl_repl_write_check(n->repl, msg, sizeof(msg), primary, sizeof(primary));
		if (rc != SL_OK) {
			pthread_rwlock_unlock(&n->db_lock);
			fail(r, rc, "%s", msg);
			if (primary[0]) {
				r->resp.primary = own_printf(r, "%s", primary);
			}
			return 0;
		}
	}
	/* A single put's keydir slot starts loading now and arrives while
	 * the record is written (sl_prefetch: the keydir probe was the put's
	 * largest cost over a ping). */
	if (op == SL_OP_PUT && q->put != NULL) {
		sl_prefetch(n->db, q->put->key.data, q->put->key.len);
	}
	if (try_inline && writes && sl_append_room(n->db) < INLINE_MAX_BYTES + INLINE_ROOM_MARGIN) {
		pthread_rwlock_unlock(&n->db_lock);
		return -1;
	}
	if (!try_inline && writes) {
		/* Handed over for want of room, most likely: the rotation now,
		 * so the writes after this one run inline again.  Else every
		 * write of the segment's last MiB came here, each a worker's
		 * wakeup and a reply through the loop (7,500 puts of 100 bytes
		 * per 64 MiB segment).  A failure leaves the segment as it is,
		 * with the room it has: the write below reports its own. */
		(void)sl_rotate_early(n->db, INLINE_MAX_BYTES + INLINE_ROOM_MARGIN);
	}
	if (want_acks) {
		sl_repl_ack_begin(n->repl); /* before the write: its fetch replies say so */
	}
	switch (op) {
	case SL_OP_GET:
		do_get(n, r, q->get, &o);
		set_top(r, &o);
		break;
	case SL_OP_PUT:
		do_put(n, q->put, wflags, &o);
		set_top(r, &o);
		break;
	case SL_OP_DEL:
		do_del(n, q->del, wflags, &o);
		set_top(r, &o);
		break;
	case SL_OP_MGET:
		do_mget(n, r, q->mget);
		break;
	case SL_OP_SCAN:
		do_scan(n, r, q->scan);
		break;
	case SL_OP_STATS:
		do_stats(n, r);
		break;
	case SL_OP_COMPACT: {
		sl_stats before = {0}, after = {0};
		sl_stats_get(n->db, &before);
		sl_workq_blocking(1);
		int rc = sl_compact(n->db);
		sl_workq_blocking(0);
		if (rc == SL_OK) {
			atomic_fetch_add(&n->compactions, 1);
			compact_result(r, &before, n->db, &after);
		} else {
			fail_engine(r, rc, "compact");
		}
		break;
	}
	case SL_OP_PING:
		break;
	case SL_OP_BATCH:
		do_batch(n, r, q->batch);
		break;
	default:
		fail(r, SL_EBADOP, "unknown or missing operation");
		break;
	}
	uint64_t seq = writes ? written_seq(r, q, op) : 0;
	if (defer) {
		pthread_rwlock_unlock(&n->db_lock);
		*defer_seq = seq; /* durable (and then notified) by the caller */
		return 0;
	}
	if (sync_after && seq > 0) {
		sl_workq_blocking(1);
		int src = sl_sync_wait(n->db, seq);
		sl_workq_blocking(0);
		if (src != SL_OK) {
			sl_reply_sync_failed(r, src);
			seq = 0; /* not durable: not notified, not acknowledged */
		}
	}
	pthread_rwlock_unlock(&n->db_lock);
	if (seq > 0 && !want_acks) {
		sl_repl_advance_head(n->repl, seq);
		r->wake_repl = 1; /* after the reply is sent: the client need not wait */
	} else if (seq > 0) {
		sl_repl_notify_write(n->repl, seq); /* the followers must fetch it now */
	}
	if (want_acks) {
		r->ack_seq = seq;
		r->ack_want = q->acks;
		r->ack_timeout_ms = q->has_acks_timeout_ms ? q->acks_timeout_ms : 0;
		if (seq > 0 && defer_seq != NULL) {
			return 0; /* the caller parks it and ends it with sl_reply_acked */
		}
		uint32_t got = 0;
		if (seq > 0) {
			sl_workq_blocking(1);
			sl_repl_wait_acks(n->repl, seq, q->acks, r->ack_timeout_ms, &got);
			sl_workq_blocking(0);
		}
		sl_reply_acked(n, r, got);
		return 0;
	}
	/* Without replication no follower can acknowledge: say so with 0. */
	if (is_write(op) && q->has_acks && q->acks > 0 && r->resp.status >= 0) {
		r->resp.has_acks = 1;
		r->resp.acks = 0;
	}
	return 0;
}

int sl_handle(sl_node *n, const void *buf, size_t len, sl_reply *r)
{
	int op = sl_handle_defer(n, buf, len, r, NULL);
	if (r->wake_repl) {
		sl_repl_wake_fetches(n->repl);
	}
	return op;
}

/* Starts r (not initialised) as the reply to the request at buf: the
 * decoded request with its id echoed, or NULL (r says why). */
static Shiplog__Request *reply_begin(sl_reply *r, const void *buf, size_t len)
{
	reply_init(r);
	Shiplog__Request *q = decode(buf, len, r);
	if (q != NULL && q->has_id) {
		r->resp.has_id = 1;
		r->resp.id = q->id;
	}
	return q;
}

int sl_handle_defer(sl_node *n, const void *buf, size_t len, sl_reply *r, uint64_t *sync_seq)
{
	if (sync_seq != NULL) {
		*sync_seq = 0;
	}
	Shiplog__Request *q = reply_begin(r, buf, len);
	if (q == NULL) {
		return SL_OP_INVALID;
	}
	int op = op_of(q);
	run(n, r, q, op, sync_seq, 0);
	/* Values sent back never point into the request (invariant 4), so the
	 * request can go now. */
	req_release(q);
	return op;
}

int sl_handle_inline(sl_node *n, const void *buf, size_t len, sl_reply *r, uint64_t *sync_seq)
{
	*sync_seq = 0;
	r->wait_applied = 0; /* set by run() only; the early returns leave it 0 */
	if (len > INLINE_MAX_BYTES) {
		return -1;
	}
	reply_init(r);
	Shiplog__Request *q = decode(buf, len, r);
	if (q == NULL) {
		return SL_OP_INVALID; /* the error reply costs nothing to send */
	}
	int op = op_of(q);
	if (!runs_inline(n, q, op)) {
		req_release(q);
		sl_reply_free(r);
		return -1;
	}
	if (q->has_id) {
		r->resp.has_id = 1;
		r->resp.id = q->id;
	}
	int rc = run(n, r, q, op, sync_seq, 1);
	req_release(q);
	if (rc < 0) {
		sl_reply_free(r);
		return -1;
	}
	return op;
}

void sl_handle_prefetch(sl_node *n, const void *buf, size_t len, int stage)
{
	int op;
	const uint8_t *key;
	size_t klen;
	if (!sl_request_key(buf, len, &op, &key, &klen)) {
		return;
	}
	if (stage == 0) {
		sl_prefetch(n->db, key, klen);
	} else if (stage == 1) {
		sl_prefetch_entry(n->db, key, klen);
	} else if (op == SHIPLOG__REQUEST__OP_GET) {
		sl_prefetch_value(n->db, key, klen);
	}
}

void sl_handle_reject(const void *buf, size_t len, int status, const char *msg, sl_reply *r)
{
	reply_init(r);
	fail(r, status, "%s", msg);
	sl_request_shape sh;
	sl_request_precheck(buf, len, &sh); /* the id, without decoding the rest */
	if (sh.has_id) {
		r->resp.has_id = 1;
		r->resp.id = sh.id;
	}
}

int sl_handle_behind(sl_node *n, const void *buf, size_t len, uint64_t min_seq, sl_reply *r)
{
	Shiplog__Request *q = reply_begin(r, buf, len);
	if (q == NULL) {
		return SL_OP_INVALID;
	}
	int op = op_of(q);
	req_release(q);
	fail_behind(r, sl_repl_applied_seq(n->repl), min_seq);
	return op;
}

size_t sl_reply_size(const sl_reply *r)
{
	return shiplog__response__get_packed_size(&r->resp);
}

void sl_reply_pack(const sl_reply *r, void *out)
{
	shiplog__response__pack(&r->resp, out);
}

void sl_reply_sync_failed(sl_reply *r, int rc)
{
	if (r->resp.n_results > 0) {
		for (size_t i = 0; i < r->resp.n_results; i++) {
			Shiplog__Result *x = r->resp.results[i];
			/* A get's result carries a value (never NULL when found). */
			if (x->status == SL_OK && x->has_seq && !x->has_value) {
				x->status = rc;
				/* within the batch's budget, as do_batch's texts: a
				 * batch of 65,536 puts got 66 bytes each, 4 MB over
				 * the message limit; the status says it all */
				char *e = own_printf(r, "sync: %s", sl_status_str(rc));
				if (e != NULL && r->bytes + strlen(e) <= r->budget) {
					x->error = e;
					r->bytes += strlen(e);
				}
			}
		}
		return;
	}
	if (r->resp.status == SL_OK && r->resp.has_seq) {
		fail(r, rc, "sync: %s", sl_status_str(rc));
	}
}

void sl_reply_free(sl_reply *r)
{
	if (r == NULL) {
		return;
	}
	for (size_t i = 0; i < r->nowned; i++) {
		free(r->owned[i]);
	}
	free(r->owned);
	r->owned = NULL;
	r->nowned = r->capowned = 0;
}
