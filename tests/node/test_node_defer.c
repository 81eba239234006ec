/*
 * test_node_defer.c — the deferred-sync request path of node/handler.c
 * under --sync always: sl_handle_defer appends a write without waiting for
 * its fdatasync and reports the seq the caller must make durable (0 for
 * requests that write nothing), sl_handle still answers only once durable,
 * sl_reply_sync_failed turns the writes of a reply (and only those) into
 * errors, and a failing fdatasync shows up in sl_sync_wait; sl_handle_inline
 * (the nng callback's path) runs only what cannot wait.  An in-process
 * sl_node over a real store, without replication.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "handler.h"
#include "io.h"
#include "shiplog.h"
#include "testutil.h"

/* ---- a store whose fdatasync can be made to fail ----------------------- */

static atomic_int g_sync_fail; /* fdatasync fails with EIO while set */
static atomic_long g_sync_calls;

static int f_fdatasync(int fd)
{
	atomic_fetch_add(&g_sync_calls, 1);
	if (atomic_load(&g_sync_fail)) {
		errno = EIO;
		return -1;
	}
	return sl_io_default.fdatasync(fd);
}

/* fallocate fails with ENOSPC for requests of at least this many bytes
 * while it is not 0 (a disk too full for a whole segment); counted */
static atomic_long g_falloc_fail_from;
static atomic_long g_falloc_calls;

static int f_fallocate(int fd, off_t off, off_t len)
{
	atomic_fetch_add(&g_falloc_calls, 1);
	long from = atomic_load(&g_falloc_fail_from);
	if (from != 0 && len >= from) {
		errno = ENOSPC;
		return -1;
	}
	return sl_io_default.fallocate(fd, off, len);
}

static struct sl_io g_fio;

static char *dir;
static sl_node node;

static uint64_t g_segment_bytes = 4 << 20; /* no rotation (whose seal would sync) */

static int setup(void **state)
{
	(void)state;
	dir = tu_mkdtemp("node-defer");
	if (dir == NULL) {
		return -1;
	}
	g_fio = sl_io_default;
	g_fio.fdatasync = f_fdatasync;
	g_fio.fallocate = f_fallocate;
	atomic_store(&g_falloc_fail_from, 0);
	atomic_store(&g_sync_fail, 0);
	atomic_store(&g_sync_calls, 0);
	sl_options o;
	sl_options_init(&o);
	o.sync = SL_SYNC_ALWAYS;
	o.segment_bytes = g_segment_bytes;
	o.max_key_bytes = 1024;
	o.max_value_bytes = 64 << 10;
	o.compact_background = 0;
	o.quiet = tu_quiet();
	o.io = &g_fio;
	memset(&node, 0, sizeof(node));
	if (sl_open(dir, &o, &node.db) != SL_OK) {
		return -1;
	}
	pthread_rwlock_init(&node.db_lock, NULL);
	node.repl = NULL;
	node.max_key_bytes = o.max_key_bytes;
	node.max_value_bytes = o.max_value_bytes;
	node.max_msg_bytes = o.max_value_bytes + SL_MSG_SLACK;
	node.scan_default = 100;
	node.scan_max = 1000;
	node.sync_name = "always";
	node.role = "primary";
	node.start_ms = sl_node_mono_ms();
	atomic_init(&node.compactions, 0);
	node.metrics = NULL;
	return 0;
}

/* setup with 24 MiB segments: big enough (16 times the room a write run
 * inline leaves) for a worker's write to rotate early (sl_rotate_early) */
static int setup_big(void **state)
{
	g_segment_bytes = 24 << 20;
	int rc = setup(state);
	g_segment_bytes = 4 << 20;
	return rc;
}

static int teardown(void **state)
{
	(void)state;
	atomic_store(&g_sync_fail, 0);
	sl_close(node.db);
	node.db = NULL;
	pthread_rwlock_destroy(&node.db_lock);
	tu_rm_rf(dir);
	free(dir);
	dir = NULL;
	return 0;
}

/* ---- requests -------------------------------------------------------- */

typedef struct enc {
	uint8_t *buf;
	size_t len;
} enc;

static enc pack(const Shiplog__Request *q)
{
	enc e;
	e.len = shiplog__request__get_packed_size(q);
	e.buf = malloc(e.len ? e.len : 1);
	assert_non_null(e.buf);
	assert_int_equal(shiplog__request__pack(q, e.buf), e.len);
	return e;
}

static ProtobufCBinaryData bin(const char *s)
{
	ProtobufCBinaryData b = {strlen(s), (uint8_t *)s};
	return b;
}

static enc req_put(const char *k, const char *v)
{
	Shiplog__Put p = SHIPLOG__PUT__INIT;
	p.has_key = 1;
	p.key = bin(k);
	p.has_value = 1;
	p.value = bin(v);
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	q.has_id = 1;
	q.id = 7;
	q.op_case = SHIPLOG__REQUEST__OP_PUT;
	q.put = &p;
	return pack(&q);
}

static enc req_get(const char *k)
{
	Shiplog__Get g = SHIPLOG__GET__INIT;
	g.has_key = 1;
	g.key = bin(k);
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_GET;
	q.get = &g;
	return pack(&q);
}

static enc req_del(const char *k)
{
	Shiplog__Del d = SHIPLOG__DEL__INIT;
	d.has_key = 1;
	d.key = bin(k);
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_DEL;
	q.del = &d;
	return pack(&q);
}

static enc req_stats(void)
{
	Shiplog__Stats s = SHIPLOG__STATS__INIT;
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_STATS;
	q.stats = &s;
	return pack(&q);
}

static enc req_ping(void)
{
	Shiplog__Ping p = SHIPLOG__PING__INIT;
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_PING;
	q.ping = &p;
	return pack(&q);
}

/* [put put_key=put_val, get get_key, del del_key] */
static enc req_batch(const char *put_key, const char *put_val, const char *get_key,
                     const char *del_key)
{
	Shiplog__Put p = SHIPLOG__PUT__INIT;
	p.has_key = 1;
	p.key = bin(put_key);
	p.has_value = 1;
	p.value = bin(put_val);
	Shiplog__Get g = SHIPLOG__GET__INIT;
	g.has_key = 1;
	g.key = bin(get_key);
	Shiplog__Del d = SHIPLOG__DEL__INIT;
	d.has_key = 1;
	d.key = bin(del_key);
	Shiplog__Op ops[3] = {SHIPLOG__OP__INIT, SHIPLOG__OP__INIT, SHIPLOG__OP__INIT};
	ops[0].op_case = SHIPLOG__OP__OP_PUT;
	ops[0].put = &p;
	ops[1].op_case = SHIPLOG__OP__OP_GET;
	ops[1].get = &g;
	ops[2].op_case = SHIPLOG__OP__OP_DEL;
	ops[2].del = &d;
	Shiplog__Op *ptrs[3] = {&ops[0], &ops[1], &ops[2]};
	Shiplog__Batch b = SHIPLOG__BATCH__INIT;
	b.n_ops = 3;
	b.ops = ptrs;
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_BATCH;
	q.batch = &b;
	return pack(&q);
}

/* sl_handle_defer on e (freed); *sync_seq starts as garbage so a handler
 * that forgets to set it is caught. */
static int defer(enc e, sl_reply *r, uint64_t *sync_seq)
{
	*sync_seq = 0xdeadbeef;
	int op = sl_handle_defer(&node, e.buf, e.len, r, sync_seq);
	free(e.buf);
	return op;
}

static uint64_t synced_seq(void)
{
	sl_stats s;
	assert_int_equal(sl_stats_get(node.db, &s), SL_OK);
	return s.synced_seq;
}

static void assert_value(const ProtobufCBinaryData *v, const char *want)
{
	assert_int_equal(v->len, strlen(want));
	assert_memory_equal(v->data, want, v->len);
}

/* A synced plain put of k=v (setup for reads and deletes). */
static uint64_t put_synced(const char *k, const char *v)
{
	sl_reply r;
	enc e = req_put(k, v);
	assert_int_equal(sl_handle(&node, e.buf, e.len, &r), SL_OP_PUT);
	free(e.buf);
	assert_int_equal(r.resp.status, SL_OK);
	assert_true(r.resp.has_seq);
	uint64_t seq = r.resp.seq;
	sl_reply_free(&r);
	return seq;
}

/* Packs r and decodes it again (the caller frees the result). */
static Shiplog__Response *roundtrip(const sl_reply *r)
{
	size_t n = sl_reply_size(r);
	uint8_t *out = malloc(n ? n : 1);
	assert_non_null(out);
	sl_reply_pack(r, out);
	Shiplog__Response *x = shiplog__response__unpack(NULL, n, out);
	free(out);
	assert_non_null(x);
	return x;
}

/* ---- tests ------------------------------------------------------------- */

/* A deferred put (and delete) is appended but not yet durable; the seq to
 * wait for is the write's; sl_sync_wait makes it durable. */
static void test_deferred_put_waits_for_caller(void **state)
{
	(void)state;
	sl_reply r;
	uint64_t ss;
	assert_int_equal(defer(req_put("k1", "v1"), &r, &ss), SL_OP_PUT);
	assert_int_equal(r.resp.status, SL_OK);
	assert_true(r.resp.has_seq);
	assert_true(r.resp.has_id);
	assert_int_equal(r.resp.id, 7);
	uint64_t seq = r.resp.seq;
	assert_true(seq > 0);
	assert_int_equal(ss, seq);
	/* Under sync always only sl_sync_wait (or a seal at rotation, which
	 * cannot happen in a 4 MiB segment) advances synced_seq. */
	assert_true(synced_seq() < seq);
	long calls = atomic_load(&g_sync_calls);
	assert_int_equal(sl_sync_wait(node.db, ss), SL_OK);
	assert_true(synced_seq() >= seq);
	assert_true(atomic_load(&g_sync_calls) > calls);
	sl_reply_free(&r);

	/* The value is there. */
	assert_int_equal(defer(req_get("k1"), &r, &ss), SL_OP_GET);
	assert_int_equal(r.resp.status, SL_OK);
	assert_true(r.resp.has_value);
	assert_value(&r.resp.value, "v1");
	assert_int_equal(ss, 0);
	sl_reply_free(&r);

	/* A deferred delete likewise. */
	assert_int_equal(defer(req_del("k1"), &r, &ss), SL_OP_DEL);
	assert_int_equal(r.resp.status, SL_OK);
	assert_true(r.resp.has_seq);
	assert_true(r.resp.seq > seq);
	assert_int_equal(ss, r.resp.seq);
	assert_true(synced_seq() < ss);
	assert_int_equal(sl_sync_wait(node.db, ss), SL_OK);
	assert_true(synced_seq() >= ss);
	sl_reply_free(&r);

	/* A delete of a missing key writes nothing: nothing to wait for. */
	assert_int_equal(defer(req_del("k1"), &r, &ss), SL_OP_DEL);
	assert_int_equal(r.resp.status, SL_ENOTFOUND);
	assert_int_equal(ss, 0);
	sl_reply_free(&r);
}

/* Without defer the handler waits for the fdatasync itself. */
static void test_plain_put_is_durable(void **state)
{
	(void)state;
	for (int i = 0; i < 3; i++) {
		long calls = atomic_load(&g_sync_calls);
		uint64_t seq = put_synced("k", "v");
		assert_true(seq > 0);
		assert_true(synced_seq() >= seq);
		assert_true(atomic_load(&g_sync_calls) > calls);
	}
}

/* Requests that write nothing need no sync, even with an unsynced write
 * pending in the store. */
static void test_reads_need_no_sync(void **state)
{
	(void)state;
	put_synced("a", "apple");
	sl_reply r;
	uint64_t ss;
	assert_int_equal(defer(req_put("pending", "x"), &r, &ss), SL_OP_PUT);
	assert_true(ss > 0);
	assert_true(synced_seq() < ss);
	sl_reply_free(&r);

	assert_int_equal(defer(req_get("a"), &r, &ss), SL_OP_GET);
	assert_int_equal(r.resp.status, SL_OK);
	assert_value(&r.resp.value, "apple");
	assert_int_equal(ss, 0);
	sl_reply_free(&r);

	assert_int_equal(defer(req_get("missing"), &r, &ss), SL_OP_GET);
	assert_int_equal(r.resp.status, SL_ENOTFOUND);
	assert_int_equal(ss, 0);
	sl_reply_free(&r);

	assert_int_equal(defer(req_stats(), &r, &ss), SL_OP_STATS);
	assert_int_equal(r.resp.status, SL_OK);
	assert_true(r.resp.n_stats > 0);
	int saw_sync = 0;
	for (size_t i = 0; i < r.resp.n_stats; i++) {
		const Shiplog__Stat *s = r.resp.stats[i];
		if (strcmp(s->name, "sync") == 0) {
			assert_non_null(s->text);
			assert_string_equal(s->text, "always");
			saw_sync = 1;
		}
	}
	assert_true(saw_sync);
	assert_int_equal(ss, 0);
	sl_reply_free(&r);

	assert_int_equal(defer(req_ping(), &r, &ss), SL_OP_PING);
	assert_int_equal(r.resp.status, SL_OK);
	assert_int_equal(ss, 0);
	sl_reply_free(&r);
}

/* A batch [put, get, del] waits for its highest write seq (the del's). */
static void test_batch_sync_seq_is_highest_write(void **state)
{
	(void)state;
	uint64_t gseq = put_synced("g", "gval");
	put_synced("d", "dval");
	sl_reply r;
	uint64_t ss;
	assert_int_equal(defer(req_batch("p", "pval", "g", "d"), &r, &ss), SL_OP_BATCH);
	assert_int_equal(r.resp.status, SL_OK);
	assert_int_equal(r.resp.n_results, 3);
	Shiplog__Result **x = r.resp.results;
	assert_int_equal(x[0]->status, SL_OK);
	assert_true(x[0]->has_seq);
	assert_int_equal(x[1]->status, SL_OK);
	assert_true(x[1]->has_value);
	assert_value(&x[1]->value, "gval");
	assert_true(x[1]->has_seq);
	assert_int_equal(x[1]->seq, gseq); /* the record's seq, not a write */
	assert_int_equal(x[2]->status, SL_OK);
	assert_true(x[2]->has_seq);
	assert_true(x[2]->seq > x[0]->seq);
	assert_true(x[0]->seq > gseq);
	assert_int_equal(ss, x[2]->seq);
	assert_true(synced_seq() < ss);
	assert_int_equal(sl_sync_wait(node.db, ss), SL_OK);
	assert_true(synced_seq() >= ss);
	sl_reply_free(&r);
}

/* sl_reply_sync_failed on a single put: the reply becomes the error. */
static void test_sync_failed_single_put(void **state)
{
	(void)state;
	sl_reply r;
	uint64_t ss;
	assert_int_equal(defer(req_put("k", "v"), &r, &ss), SL_OP_PUT);
	assert_int_equal(r.resp.status, SL_OK);
	assert_true(ss > 0);
	sl_reply_sync_failed(&r, SL_EFAILED);
	assert_int_equal(r.resp.status, SL_EFAILED);
	assert_non_null(r.resp.error);
	assert_non_null(strstr(r.resp.error, "sync"));

	Shiplog__Response *x = roundtrip(&r);
	assert_true(x->has_status);
	assert_int_equal(x->status, SL_EFAILED);
	assert_non_null(x->error);
	assert_non_null(strstr(x->error, "sync"));
	assert_true(x->has_id);
	assert_int_equal(x->id, 7);
	shiplog__response__free_unpacked(x, NULL);
	sl_reply_free(&r);
}

/* ... on a batch: the writes fail, the get keeps its value. */
static void test_sync_failed_batch(void **state)
{
	(void)state;
	put_synced("g", "gval");
	put_synced("d", "dval");
	sl_reply r;
	uint64_t ss;
	assert_int_equal(defer(req_batch("p", "pval", "g", "d"), &r, &ss), SL_OP_BATCH);
	assert_true(ss > 0);
	assert_int_equal(r.resp.n_results, 3);
	sl_reply_sync_failed(&r, SL_EFAILED);
	assert_int_equal(r.resp.status, SL_OK); /* per-op statuses carry it */
	Shiplog__Result **res = r.resp.results;
	assert_int_equal(res[0]->status, SL_EFAILED);
	assert_non_null(res[0]->error);
	assert_non_null(strstr(res[0]->error, "sync"));
	assert_int_equal(res[1]->status, SL_OK);
	assert_null(res[1]->error);
	assert_true(res[1]->has_value);
	assert_value(&res[1]->value, "gval");
	assert_int_equal(res[2]->status, SL_EFAILED);
	assert_non_null(res[2]->error);
	assert_non_null(strstr(res[2]->error, "sync"));

	Shiplog__Response *x = roundtrip(&r);
	assert_int_equal(x->n_results, 3);
	assert_int_equal(x->results[0]->status, SL_EFAILED);
	assert_non_null(x->results[0]->error);
	assert_non_null(strstr(x->results[0]->error, "sync"));
	assert_int_equal(x->results[1]->status, SL_OK);
	assert_true(x->results[1]->has_value);
	assert_value(&x->results[1]->value, "gval");
	assert_int_equal(x->results[2]->status, SL_EFAILED);
	assert_non_null(strstr(x->results[2]->error, "sync"));
	shiplog__response__free_unpacked(x, NULL);
	sl_reply_free(&r);
}

/* A batch of many puts whose sync failed: each result's "sync: ..." text
 * counts against the reply's budget, as do_batch's own texts do (65,536
 * puts got 66 bytes each, a reply 4 MB over the message limit). */
static void test_sync_failed_big_batch_within_limit(void **state)
{
	(void)state;
	enum { N = 40000 };
	Shiplog__Put *p = calloc(N, sizeof(*p));
	Shiplog__Op *ops = calloc(N, sizeof(*ops));
	Shiplog__Op **ptrs = calloc(N, sizeof(*ptrs));
	assert_non_null(p);
	assert_non_null(ops);
	assert_non_null(ptrs);
	for (int i = 0; i < N; i++) {
		shiplog__put__init(&p[i]);
		p[i].has_key = 1;
		p[i].key = bin("k");
		p[i].has_value = 1;
		p[i].value = bin("v");
		shiplog__op__init(&ops[i]);
		ops[i].op_case = SHIPLOG__OP__OP_PUT;
		ops[i].put = &p[i];
		ptrs[i] = &ops[i];
	}
	Shiplog__Batch b = SHIPLOG__BATCH__INIT;
	b.n_ops = N;
	b.ops = ptrs;
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_BATCH;
	q.batch = &b;
	enc e = pack(&q);
	assert_true(e.len < node.max_msg_bytes);
	sl_reply r;
	uint64_t ss;
	assert_int_equal(defer(e, &r, &ss), SL_OP_BATCH);
	assert_int_equal(r.resp.n_results, N);
	sl_reply_sync_failed(&r, SL_EFAILED);
	for (int i = 0; i < N; i++) {
		assert_int_equal(r.resp.results[i]->status, SL_EFAILED);
	}
	assert_non_null(r.resp.results[0]->error); /* the first ones carry the text */
	if (sl_reply_size(&r) > node.max_msg_bytes) {
		fail_msg("reply %zu bytes, limit %zu", sl_reply_size(&r),
		         (size_t)node.max_msg_bytes);
	}
	sl_reply_free(&r);
	free(p);
	free(ops);
	free(ptrs);
}

/* A deferred put whose fdatasync fails: sl_sync_wait reports it, and the
 * store refuses further writes. */
static void test_failed_fdatasync(void **state)
{
	(void)state;
	sl_reply r;
	uint64_t ss;
	assert_int_equal(defer(req_put("k", "v"), &r, &ss), SL_OP_PUT);
	assert_int_equal(r.resp.status, SL_OK);
	assert_true(ss > 0);
	assert_true(synced_seq() < ss);
	atomic_store(&g_sync_fail, 1);
	long calls = atomic_load(&g_sync_calls);
	int rc = sl_sync_wait(node.db, ss);
	assert_int_not_equal(rc, SL_OK);
	assert_true(rc < 0);
	assert_true(atomic_load(&g_sync_calls) > calls); /* it did try */
	assert_true(synced_seq() < ss);
	sl_reply_sync_failed(&r, rc);
	assert_int_equal(r.resp.status, rc);
	assert_non_null(strstr(r.resp.error, "sync"));
	sl_reply_free(&r);

	/* Sticky: a later deferred put is refused, and asks for no sync. */
	atomic_store(&g_sync_fail, 0);
	assert_int_equal(defer(req_put("k2", "v2"), &r, &ss), SL_OP_PUT);
	assert_true(r.resp.status < 0);
	assert_int_equal(ss, 0);
	sl_reply_free(&r);
}

/* ---- sl_handle_inline: what an nng callback thread may run ------------ */

/* sl_handle_inline on e (freed): -1 or the op. */
static int run_inline(enc e, sl_reply *r, uint64_t *sync_seq)
{
	*sync_seq = 0xdeadbeef;
	int op = sl_handle_inline(&node, e.buf, e.len, r, sync_seq);
	free(e.buf);
	return op;
}

/* A put carrying --acks or --min-seq (0: unset). */
static enc req_put_opts(const char *k, const char *v, uint32_t acks, uint64_t min_seq)
{
	Shiplog__Put p = SHIPLOG__PUT__INIT;
	p.has_key = 1;
	p.key = bin(k);
	p.has_value = 1;
	p.value = bin(v);
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_PUT;
	q.put = &p;
	q.has_acks = acks > 0;
	q.acks = acks;
	q.has_min_seq = min_seq > 0;
	q.min_seq = min_seq;
	return pack(&q);
}

static enc req_get_min_seq(const char *k, uint64_t min_seq)
{
	Shiplog__Get g = SHIPLOG__GET__INIT;
	g.has_key = 1;
	g.key = bin(k);
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	q.op_case = SHIPLOG__REQUEST__OP_GET;
	q.get = &g;
	q.has_min_seq = 1;
	q.min_seq = min_seq;
	return pack(&q);
}

/* Gets, puts, deletes, batches and pings run inline; under --sync always
 * a write is appended and its seq handed back for the committer, exactly
 * as sl_handle_defer does. */
static void test_inline_runs_what_cannot_wait(void **state)
{
	(void)state;
	sl_reply r;
	uint64_t ss;
	uint64_t last = sl_last_seq(node.db);
	assert_int_equal(run_inline(req_put("ik", "iv"), &r, &ss), SL_OP_PUT);
	assert_int_equal(r.resp.status, SL_OK);
	assert_true(r.resp.has_id);
	assert_int_equal(r.resp.id, 7);
	assert_int_equal(r.resp.seq, last + 1);
	assert_int_equal(ss, r.resp.seq);
	assert_true(synced_seq() < ss); /* not durable until the committer syncs */
	sl_reply_free(&r);
	assert_int_equal(sl_sync_wait(node.db, ss), SL_OK);

	assert_int_equal(run_inline(req_get("ik"), &r, &ss), SL_OP_GET);
	assert_int_equal(r.resp.status, SL_OK);
	assert_value(&r.resp.value, "iv");
	assert_int_equal(ss, 0);
	sl_reply_free(&r);

	assert_int_equal(run_inline(req_batch("ib", "bv", "ik", "ik"), &r, &ss), SL_OP_BATCH);
	assert_int_equal(r.resp.n_results, 3);
	assert_value(&r.resp.results[1]->value, "iv");
	assert_int_equal(r.resp.results[2]->status, SL_OK);
	assert_int_equal(ss, r.resp.results[2]->seq);
	sl_reply_free(&r);
	assert_int_equal(sl_sync_wait(node.db, ss), SL_OK);

	assert_int_equal(run_inline(req_get("ik"), &r, &ss), SL_OP_GET);
	assert_int_equal(r.resp.status, SL_ENOTFOUND); /* the batch deleted it */
	sl_reply_free(&r);

	assert_int_equal(run_inline(req_ping(), &r, &ss), SL_OP_PING);
	assert_int_equal(r.resp.status, SL_OK);
	assert_int_equal(ss, 0);
	sl_reply_free(&r);

	/* A --min-seq this node already has needs no wait; one it cannot reach
	 * without replication is answered behind at once, not waited for. */
	assert_int_equal(run_inline(req_get_min_seq("ib", sl_last_seq(node.db)), &r, &ss),
	                 SL_OP_GET);
	assert_int_equal(r.resp.status, SL_OK);
	assert_value(&r.resp.value, "bv");
	sl_reply_free(&r);
	assert_int_equal(run_inline(req_get_min_seq("ib", sl_last_seq(node.db) + 5), &r, &ss),
	                 SL_OP_GET);
	assert_int_equal(r.resp.status, SL_EBEHIND);
	sl_reply_free(&r);

	/* Garbage is answered inline with an error, never handed on. */
	uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
	ss = 0xdeadbeef;
	int op = sl_handle_inline(&node, junk, sizeof(junk), &r, &ss);
	assert_int_equal(op, SL_OP_INVALID);
	assert_int_equal(r.resp.status, SL_EPROTO);
	assert_int_equal(ss, 0);
	sl_reply_free(&r);
}

/* What can wait goes to a worker (-1), and nothing is written first. */
static void test_inline_refuses_what_can_wait(void **state)
{
	(void)state;
	sl_reply r;
	uint64_t ss;
	uint64_t last = sl_last_seq(node.db);
	assert_int_equal(run_inline(req_stats(), &r, &ss), -1);
	assert_int_equal(run_inline(req_put_opts("a", "1", 1, 0), &r, &ss), -1); /* --acks */
	assert_int_equal(sl_last_seq(node.db), last);

	/* A request over 64 KiB. */
	size_t big = (64u << 10) + 1;
	char *v = malloc(big + 1);
	assert_non_null(v);
	memset(v, 'x', big);
	v[big] = '\0';
	assert_int_equal(run_inline(req_put("big", v), &r, &ss), -1);
	free(v);
	assert_int_equal(sl_last_seq(node.db), last);

	/* While a resync swaps the store (db_lock held for writing). */
	pthread_rwlock_wrlock(&node.db_lock);
	assert_int_equal(run_inline(req_get("a"), &r, &ss), -1);
	assert_int_equal(run_inline(req_put("a", "1"), &r, &ss), -1);
	pthread_rwlock_unlock(&node.db_lock);
	assert_int_equal(sl_last_seq(node.db), last);
}

/* Fills the active segment with 1 KiB values under keys PREFIX0.. until
 * its room is at most `room`; the number of puts. */
static int fill_to_room(const char *prefix, uint64_t room)
{
	char v[1024];
	memset(v, 'e', sizeof(v));
	uint64_t seq = 0;
	int n = 0;
	for (; sl_append_room(node.db) > room; n++) {
		char k[32];
		snprintf(k, sizeof(k), "%s%d", prefix, n);
		assert_int_equal(sl_put_ex(node.db, k, strlen(k), v, sizeof(v), 0, SL_NOWAIT, &seq),
		                 SL_OK);
	}
	return n;
}

/* A write that could start a new segment (a file created and fsynced) is
 * left to a worker; sl_append_room tells how close that is. */
static void test_inline_leaves_rotation_to_workers(void **state)
{
	(void)state;
	uint64_t room = sl_append_room(node.db);
	assert_true(room > (2u << 20)); /* a fresh 4 MiB segment */
	char v[1024];
	memset(v, 'r', sizeof(v));
	uint64_t seq = 0;
	assert_int_equal(sl_put(node.db, "r0", 2, v, sizeof(v), &seq), SL_OK);
	uint64_t room2 = sl_append_room(node.db);
	assert_true(room2 < room && room - room2 > sizeof(v)); /* record + header */
	sl_reply r;
	uint64_t ss;
	assert_int_equal(run_inline(req_put("r1", "x"), &r, &ss), SL_OP_PUT);
	assert_int_equal(r.resp.status, SL_OK);
	sl_reply_free(&r);
	/* Fill the segment to within 1 MiB of its end. */
	fill_to_room("f", 1u << 20);
	uint64_t last = sl_last_seq(node.db);
	assert_int_equal(run_inline(req_put("r2", "x"), &r, &ss), -1);
	assert_int_equal(sl_last_seq(node.db), last);
	/* Reads still run inline. */
	assert_int_equal(run_inline(req_get("r1"), &r, &ss), SL_OP_GET);
	assert_int_equal(r.resp.status, SL_OK);
	sl_reply_free(&r);
	/* The worker's path writes it. */
	assert_int_equal(defer(req_put("r2", "x"), &r, &ss), SL_OP_PUT);
	assert_int_equal(r.resp.status, SL_OK);
	sl_reply_free(&r);
	assert_int_equal(sl_sync_wait(node.db, ss), SL_OK);
}

static uint64_t segment_count(void)
{
	sl_stats st;
	assert_int_equal(sl_stats_get(node.db, &st), SL_OK);
	return st.segments;
}

/* With segments of 16 times that room or more, the write a worker gets
 * for want of room starts the next segment first (sl_rotate_early), so
 * the writes after it run inline again, instead of every write of the
 * segment's last MiB going to a worker; everything written before and
 * after reads back, also after a reopen. */
static void test_worker_write_rotates_early(void **state)
{
	(void)state;
	char v[1024]; /* fill_to_room's values */
	memset(v, 'e', sizeof(v));
	int nfill = fill_to_room("f", 1u << 20);
	uint64_t segs = segment_count();
	uint64_t last = sl_last_seq(node.db);
	sl_reply r;
	uint64_t ss;
	assert_int_equal(run_inline(req_put("r2", "x2"), &r, &ss), -1);
	assert_int_equal(sl_last_seq(node.db), last);
	/* the worker's path: a new segment, then the write */
	assert_int_equal(defer(req_put("r2", "x2"), &r, &ss), SL_OP_PUT);
	assert_int_equal(r.resp.status, SL_OK);
	sl_reply_free(&r);
	assert_int_equal(sl_sync_wait(node.db, ss), SL_OK);
	assert_int_equal(segment_count(), segs + 1);
	assert_true(sl_append_room(node.db) > (20u << 20));
	/* inline again */
	assert_int_equal(run_inline(req_put("r3", "x3"), &r, &ss), SL_OP_PUT);
	assert_int_equal(r.resp.status, SL_OK);
	sl_reply_free(&r);
	assert_int_equal(sl_sync_wait(node.db, ss), SL_OK);
	/* nothing due: room left, or an empty active segment */
	assert_int_equal(sl_rotate_early(node.db, 1u << 20), SL_OK);
	assert_int_equal(segment_count(), segs + 1);
	/* segments under 16 times `below` keep their exact size */
	assert_int_equal(sl_rotate_early(node.db, 32u << 20), SL_OK);
	assert_int_equal(segment_count(), segs + 1);
	for (int reopen = 0; reopen <= 1; reopen++) {
		if (reopen) {
			sl_close(node.db);
			node.db = NULL;
			sl_options o;
			sl_options_init(&o);
			o.segment_bytes = 24 << 20;
			o.compact_background = 0;
			o.quiet = tu_quiet();
			assert_int_equal(sl_open(dir, &o, &node.db), SL_OK);
		}
		const char *want[][2] = {{"f0", NULL}, {"r2", "x2"}, {"r3", "x3"}};
		char lastk[16];
		snprintf(lastk, sizeof(lastk), "f%d", nfill - 1);
		want[0][0] = lastk;
		for (size_t i = 0; i < 3; i++) {
			void *val = NULL;
			size_t vlen = 0;
			assert_int_equal(
			    sl_get(node.db, want[i][0], strlen(want[i][0]), &val, &vlen), SL_OK);
			if (want[i][1] == NULL) {
				assert_int_equal(vlen, sizeof(v));
				assert_memory_equal(val, v, sizeof(v));
			} else {
				assert_int_equal(vlen, strlen(want[i][1]));
				assert_memory_equal(val, want[i][1], vlen);
			}
			free(val);
		}
	}
}

/* On a disk too full for a whole segment the early rotation fails
 * quietly: the write goes into the room left, later worker writes do not
 * try again (no fallocate), and once the segment fills and rotates the
 * usual way (into the smaller segment that still fits) the early rotation
 * is tried again, and works when there is room. */
static void test_early_rotation_fails_quietly_on_a_full_disk(void **state)
{
	(void)state;
	fill_to_room("a", 1u << 20);
	uint64_t segs = segment_count();
	atomic_store(&g_falloc_fail_from, (long)(16u << 20)); /* room for 8 MiB, not 24 */
	long calls = atomic_load(&g_falloc_calls);
	sl_reply r;
	uint64_t ss;
	assert_int_equal(defer(req_put("w1", "v1"), &r, &ss), SL_OP_PUT);
	assert_int_equal(r.resp.status, SL_OK);
	sl_reply_free(&r);
	assert_int_equal(segment_count(), segs);
	assert_true(atomic_load(&g_falloc_calls) > calls); /* it tried */
	calls = atomic_load(&g_falloc_calls);
	assert_int_equal(defer(req_put("w2", "v2"), &r, &ss), SL_OP_PUT);
	assert_int_equal(r.resp.status, SL_OK);
	sl_reply_free(&r);
	assert_int_equal(atomic_load(&g_falloc_calls), calls); /* and not again */
	assert_int_equal(segment_count(), segs);
	/* the segment fills: the usual rotation fits a smaller segment */
	char v[1024];
	memset(v, 'e', sizeof(v));
	uint64_t seq = 0;
	for (int i = 0; segment_count() == segs; i++) {
		assert_true(i < 2048); /* 1 MiB of room at most */
		char k[16];
		snprintf(k, sizeof(k), "b%d", i);
		assert_int_equal(sl_put_ex(node.db, k, strlen(k), v, sizeof(v), 0, SL_NOWAIT, &seq),
		                 SL_OK);
	}
	assert_int_equal(segment_count(), segs + 1);
	assert_true(sl_append_room(node.db) < (16u << 20));
	/* the disk has room again: the next early rotation works */
	atomic_store(&g_falloc_fail_from, 0);
	fill_to_room("c", 1u << 20);
	assert_int_equal(defer(req_put("w3", "v3"), &r, &ss), SL_OP_PUT);
	assert_int_equal(r.resp.status, SL_OK);
	sl_reply_free(&r);
	assert_int_equal(segment_count(), segs + 2);
	assert_true(sl_append_room(node.db) > (20u << 20));
	for (int i = 1; i <= 3; i++) {
		char k[8], want[8];
		snprintf(k, sizeof(k), "w%d", i);
		snprintf(want, sizeof(want), "v%d", i);
		void *val = NULL;
		size_t vlen = 0;
		assert_int_equal(sl_get(node.db, k, 2, &val, &vlen), SL_OK);
		assert_int_equal(vlen, 2);
		assert_memory_equal(val, want, 2);
		free(val);
	}
}

/* sl_request_key finds a get's, put's or delete's key in the encoded
 * request without decoding it (the epoll front's prefetch), after other
 * fields and unknown ones, and nothing for other requests or bad bytes. */
static void test_request_key_found_without_decoding(void **state)
{
	(void)state;
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Put put = SHIPLOG__PUT__INIT;
	q.has_id = 1;
	q.id = 300;
	q.has_acks = 1;
	q.acks = 2;
	put.has_value = 1;
	put.value.data = (uint8_t *)"value";
	put.value.len = 5;
	put.has_key = 1;
	put.key.data = (uint8_t *)"the-key";
	put.key.len = 7;
	q.op_case = SHIPLOG__REQUEST__OP_PUT;
	q.put = &put;
	uint8_t buf[256];
	size_t n = shiplog__request__pack(&q, buf);
	int op = 0;
	const uint8_t *key = NULL;
	size_t klen = 0;
	assert_int_equal(sl_request_key(buf, n, &op, &key, &klen), 1);
	assert_int_equal(op, SHIPLOG__REQUEST__OP_PUT);
	assert_int_equal(klen, 7);
	assert_memory_equal(key, "the-key", 7);
	/* a ping has no key; truncations are malformed, never a wrong key */
	Shiplog__Request pq = SHIPLOG__REQUEST__INIT;
	Shiplog__Ping ping = SHIPLOG__PING__INIT;
	pq.op_case = SHIPLOG__REQUEST__OP_PING;
	pq.ping = &ping;
	uint8_t pbuf[32];
	size_t pn = shiplog__request__pack(&pq, pbuf);
	assert_int_equal(sl_request_key(pbuf, pn, &op, &key, &klen), 0);
	for (size_t cut = 0; cut < n; cut++) {
		if (sl_request_key(buf, cut, &op, &key, &klen)) {
			assert_true(key + klen <= buf + cut);
			assert_memory_equal(key, "the-key", klen);
		}
	}
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_deferred_put_waits_for_caller),
	    cmocka_unit_test(test_request_key_found_without_decoding),
	    T(test_plain_put_is_durable),
	    T(test_reads_need_no_sync),
	    T(test_batch_sync_seq_is_highest_write),
	    T(test_sync_failed_single_put),
	    T(test_sync_failed_batch),
	    T(test_sync_failed_big_batch_within_limit),
	    T(test_failed_fdatasync),
	    T(test_inline_runs_what_cannot_wait),
	    T(test_inline_refuses_what_can_wait),
	    T(test_inline_leaves_rotation_to_workers),
	    cmocka_unit_test_setup_teardown(test_worker_write_rotates_early, setup_big, teardown),
	    cmocka_unit_test_setup_teardown(test_early_rotation_fails_quietly_on_a_full_disk,
	                                    setup_big, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
