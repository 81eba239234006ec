/*
 * test_model.c — the engine against a reference map.
 *
 * DESIGN.md §2 promises: for any sequence of puts, deletes, expiries, clean
 * restarts and torn-tail crashes, every read equals the reference map's
 * answer.  test_model_random drives random operations (many seeds, the count
 * scaled by SL_TEST_SEEDS) through sl_* and through an in-memory model with a
 * journal of every acknowledged write; after every operation and every
 * reopen each key is read back (value and seq), and a full and a prefix scan
 * must equal the model.
 *
 * Time is a fake clock behind the I/O seam (now_ms), advanced by the test in
 * steps of 10 ms while every TTL is 10k+5 ms: an expiry never coincides with
 * a clock value, so "expired" is never a boundary question.
 *
 * Compaction runs as an operation (sl_compact; the background thread is off
 * so a seed replays exactly).
 *
 * A torn-tail crash cannot be produced by killing ourselves, so it is
 * simulated: close cleanly, then damage the last record of the active
 * segment (truncate inside it, or flip a byte in it), remove that segment's
 * hint if close wrote one (a crash would not have), and reopen.  The model
 * drops exactly that write (the record's seq names it) by popping the
 * journal.  test_crash_kill.c does the real thing with SIGKILL.
 *
 * SL_TEST_SEEDS seeds (default 30) from SL_TEST_SEED (default 1), each
 * SL_MODEL_OPS operations (default 400); a failure names its seed and op.
 *
 * The deterministic tests check the smaller promises of shiplog.h one by
 * one: argument errors write nothing, seqs continue across reopen, the
 * directory layout and file formats of format.h, scans, TTLs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format.h"
#include "io.h"
#include "shiplog.h"
#include "testutil.h"

/* ---- the fake clock behind the I/O seam ------------------------------ */

#define CLOCK_START 1700000000000ull /* a multiple of 10 */

static _Atomic uint64_t g_now = CLOCK_START;
static uint64_t fake_now(void)
{
	return atomic_load(&g_now);
}
static struct sl_io g_io;

static const struct sl_io *fake_io(void)
{
	g_io = sl_io_default;
	g_io.now_ms = fake_now;
	return &g_io;
}

/* A hang (a scan callback deadlocking on the engine) becomes a failure. */
static void on_alarm(int sig)
{
	(void)sig;
	static const char m[] = "test_model: timed out (deadlock?)\n";
	ssize_t w = write(2, m, sizeof(m) - 1);
	(void)w;
	_exit(3);
}

static uint64_t last_seq(sl_db *db)
{
	sl_stats st;
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	return st.last_seq;
}

static void open_db(const char *dir, const sl_options *o, sl_db **db)
{
	*db = NULL;
	int rc = sl_open(dir, o, db);
	if (rc != SL_OK) {
		fail_msg("sl_open(%s) = %d (%s)", dir, rc, sl_strerror(rc));
	}
	assert_non_null(*db);
}

static void want_value(sl_db *db, const char *key, const void *val, size_t vlen)
{
	void *v = NULL;
	size_t vl = 0;
	int rc = sl_get(db, key, strlen(key), &v, &vl);
	if (rc != SL_OK) {
		fail_msg("get %s = %d, want OK", key, rc);
	}
	assert_non_null(v);
	assert_int_equal(vl, vlen);
	if (vlen > 0) {
		assert_memory_equal(v, val, vlen);
	}
	free(v);
}

static void want_absent(sl_db *db, const char *key)
{
	void *v = (void *)0x1;
	size_t vl = 0;
	int rc = sl_get(db, key, strlen(key), &v, &vl);
	if (rc != SL_ENOTFOUND) {
		fail_msg("get %s = %d, want SL_ENOTFOUND", key, rc);
	}
}

/* ======================================================================
 * The reference model
 * ====================================================================== */

#define NKEYS     48
#define MAX_KEY   512
#define MAX_VAL   10000
#define SEG_BYTES 4096

typedef struct mval {
	int present; /* a put is the latest write (it may have expired) */
	uint8_t *val;
	size_t vlen;
	uint64_t expire_at;
	uint64_t seq; /* seq of the latest write, 0 when never written */
} mval;

typedef struct jent {
	uint64_t seq;
	uint64_t epoch; /* compactions run before this write */
	int key;
	mval prev; /* the key's state before this write (owns prev.val) */
} jent;

typedef struct model {
	char keys[NKEYS][MAX_KEY + 1];
	size_t klen[NKEYS];
	mval m[NKEYS];
	jent *journal; /* every acknowledged write, oldest first */
	size_t nj, capj;
	uint64_t last_seq; /* what stats.last_seq must say */
	uint64_t max_seq;  /* highest seq ever acknowledged */
	uint64_t epoch;    /* sl_compact runs so far */
	uint64_t seed;
	int op;
} model;

#define MCHECK(M, cond, ...)                                                                       \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			print_error("seed=%llu op=%d: ", (unsigned long long)(M)->seed, (M)->op);  \
			fail_msg(__VA_ARGS__);                                                     \
		}                                                                                  \
	} while (0)

static void model_init(model *M, uint64_t seed)
{
	memset(M, 0, sizeof(*M));
	M->seed = seed;
	static const char *pfx[4] = {"a/", "ab/", "b/", "c"};
	for (int i = 0; i < NKEYS; i++) {
		if (i >= NKEYS - 4) {
			/* long keys near max_key_bytes */
			int n = snprintf(M->keys[i], sizeof(M->keys[i]), "a/long-%d-", i);
			memset(M->keys[i] + n, 'x', (size_t)(MAX_KEY - n));
			M->keys[i][MAX_KEY - (i & 1)] = '\0';
		} else {
			snprintf(M->keys[i], sizeof(M->keys[i]), "%s%d", pfx[i % 4], i);
		}
		M->klen[i] = strlen(M->keys[i]);
	}
}

static void model_free(model *M)
{
	for (int i = 0; i < NKEYS; i++) {
		free(M->m[i].val);
	}
	for (size_t j = 0; j < M->nj; j++) {
		free(M->journal[j].prev.val);
	}
	free(M->journal);
}

static int model_live(const model *M, int k)
{
	const mval *v = &M->m[k];
	return v->present && (v->expire_at == 0 || v->expire_at > atomic_load(&g_now));
}

static int model_find(const model *M, const void *key, size_t klen)
{
	for (int i = 0; i < NKEYS; i++) {
		if (M->klen[i] == klen && memcmp(M->keys[i], key, klen) == 0) {
			return i;
		}
	}
	return -1;
}

/* Records an acknowledged write of key k: journal the old state, set new. */
static void model_write(model *M, int k, uint64_t seq, int present, const void *val, size_t vlen,
                        uint64_t expire_at)
{
	if (M->nj == M->capj) {
		M->capj = M->capj ? 2 * M->capj : 256;
		M->journal = realloc(M->journal, M->capj * sizeof(*M->journal));
		assert_non_null(M->journal);
	}
	jent *j = &M->journal[M->nj++];
	j->seq = seq;
	j->epoch = M->epoch;
	j->key = k;
	j->prev = M->m[k]; /* takes ownership of the old value */
	mval *v = &M->m[k];
	v->present = present;
	v->vlen = present ? vlen : 0;
	v->val = malloc(v->vlen + 1);
	assert_non_null(v->val);
	if (v->vlen > 0) {
		memcpy(v->val, val, vlen);
	}
	v->expire_at = present ? expire_at : 0;
	v->seq = seq;
	M->last_seq = seq;
	if (seq > M->max_seq) {
		M->max_seq = seq;
	}
}

/* Forgets the latest acknowledged write (it was torn away). */
static void model_drop_last(model *M)
{
	assert_true(M->nj > 0);
	jent *j = &M->journal[--M->nj];
	free(M->m[j->key].val);
	M->m[j->key] = j->prev;
}

/* ---- comparing the engine with the model ----------------------------- */

typedef struct scan_ctx {
	model *M;
	const char *prefix;
	size_t plen;
	int seen[NKEYS];
	int count;
} scan_ctx;

static int scan_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	scan_ctx *c = arg;
	model *M = c->M;
	int i = model_find(M, k, kl);
	MCHECK(M, i >= 0, "scan returned a key the model never wrote (klen %zu)", kl);
	MCHECK(M, kl >= c->plen && memcmp(k, c->prefix, c->plen) == 0,
	       "scan(prefix '%s') returned key %s", c->prefix, M->keys[i]);
	MCHECK(M, !c->seen[i], "scan returned key %s twice", M->keys[i]);
	c->seen[i] = 1;
	c->count++;
	MCHECK(M, model_live(M, i), "scan returned key %s which the model says is absent",
	       M->keys[i]);
	MCHECK(M, vl == M->m[i].vlen, "scan: key %s has %zu bytes, model %zu", M->keys[i], vl,
	       M->m[i].vlen);
	MCHECK(M, vl == 0 || memcmp(v, M->m[i].val, vl) == 0, "scan: key %s value differs",
	       M->keys[i]);
	return 0;
}

static void check_scan(sl_db *db, model *M, const char *prefix)
{
	scan_ctx c;
	memset(&c, 0, sizeof(c));
	c.M = M;
	c.prefix = prefix;
	c.plen = strlen(prefix);
	int rc = sl_scan(db, prefix, c.plen, scan_cb, &c);
	MCHECK(M, rc == 0, "sl_scan('%s') = %d", prefix, rc);
	for (int i = 0; i < NKEYS; i++) {
		int match = M->klen[i] >= c.plen && memcmp(M->keys[i], prefix, c.plen) == 0;
		MCHECK(M, !(match && model_live(M, i)) || c.seen[i],
		       "scan('%s') missed live key %s", prefix, M->keys[i]);
	}
}

static void check_all(sl_db *db, model *M, tu_rng *r)
{
	uint64_t live = 0, present = 0;
	for (int i = 0; i < NKEYS; i++) {
		void *v = NULL;
		size_t vl = 0;
		uint64_t seq = 0;
		int rc = sl_get_seq(db, M->keys[i], M->klen[i], &v, &vl, &seq);
		if (model_live(M, i)) {
			live++;
			MCHECK(M, rc == SL_OK, "get %s = %d (%s), model has %zu bytes seq %llu",
			       M->keys[i], rc, sl_strerror(rc), M->m[i].vlen,
			       (unsigned long long)M->m[i].seq);
			MCHECK(M, v != NULL, "get %s: NULL value", M->keys[i]);
			MCHECK(M, vl == M->m[i].vlen, "get %s: %zu bytes, model %zu", M->keys[i],
			       vl, M->m[i].vlen);
			MCHECK(M, vl == 0 || memcmp(v, M->m[i].val, vl) == 0,
			       "get %s: value differs", M->keys[i]);
			MCHECK(M, seq == M->m[i].seq, "get %s: seq %llu, model %llu", M->keys[i],
			       (unsigned long long)seq, (unsigned long long)M->m[i].seq);
			free(v);
		} else {
			MCHECK(M, rc == SL_ENOTFOUND, "get %s = %d, model says absent (seq %llu)",
			       M->keys[i], rc, (unsigned long long)M->m[i].seq);
		}
		present += M->m[i].present;
	}
	check_scan(db, M, "");
	static const char *prefixes[] = {"a", "a/", "ab/", "b/", "c", "a/long-", "zz", "ab/1"};
	check_scan(db, M, prefixes[tu_rng_below(r, sizeof(prefixes) / sizeof(prefixes[0]))]);

	sl_stats st;
	MCHECK(M, sl_stats_get(db, &st) == SL_OK, "sl_stats_get");
	MCHECK(M, st.last_seq == M->last_seq, "stats.last_seq %llu, model %llu",
	       (unsigned long long)st.last_seq, (unsigned long long)M->last_seq);
	/* Expired-but-not-deleted keys may or may not still be counted. */
	MCHECK(M, st.keys >= live && st.keys <= present, "stats.keys %llu not in [%llu, %llu]",
	       (unsigned long long)st.keys, (unsigned long long)live, (unsigned long long)present);
	MCHECK(M, st.failed == 0, "stats.failed = %d", st.failed);
}

/* ---- operations ------------------------------------------------------ */

static size_t random_vlen(tu_rng *r)
{
	uint64_t p = tu_rng_below(r, 100);
	if (p < 20) {
		return 0;
	}
	if (p < 70) {
		return (size_t)tu_rng_range(r, 1, 200);
	}
	if (p < 92) {
		return (size_t)tu_rng_range(r, 201, 1500);
	}
	if (p < 98) {
		return (size_t)tu_rng_range(r, 1501, 4000);
	}
	return (size_t)tu_rng_range(r, SEG_BYTES, MAX_VAL); /* bigger than a segment */
}

static void op_put(sl_db *db, model *M, tu_rng *r, int ttl)
{
	static uint8_t buf[MAX_VAL];
	int k = (int)tu_rng_below(r, NKEYS);
	size_t vl = random_vlen(r);
	tu_rng_fill(r, buf, vl);
	uint64_t seq = 0, expire = 0;
	int rc;
	if (ttl) {
		uint64_t t = 10 * tu_rng_range(r, 1, 30) + 5;
		expire = atomic_load(&g_now) + t;
		rc = sl_put_ttl(db, M->keys[k], M->klen[k], buf, vl, t, &seq);
	} else if (tu_rng_below(r, 4) == 0) {
		rc = sl_put_ttl(db, M->keys[k], M->klen[k], buf, vl, 0, &seq); /* 0 = never */
	} else {
		rc = sl_put(db, M->keys[k], M->klen[k], buf, vl, &seq);
	}
	MCHECK(M, rc == SL_OK, "put %s (%zu bytes) = %d (%s)", M->keys[k], vl, rc, sl_strerror(rc));
	MCHECK(M, seq == M->last_seq + 1, "put seq %llu, expected %llu", (unsigned long long)seq,
	       (unsigned long long)M->last_seq + 1);
	model_write(M, k, seq, 1, buf, vl, expire);
}

static void op_delete(sl_db *db, model *M, tu_rng *r)
{
	int k = (int)tu_rng_below(r, NKEYS);
	uint64_t seq = 0;
	int rc = sl_delete(db, M->keys[k], M->klen[k], &seq);
	if (model_live(M, k)) {
		MCHECK(M, rc == SL_OK, "delete %s = %d (%s)", M->keys[k], rc, sl_strerror(rc));
		MCHECK(M, seq == M->last_seq + 1, "delete seq %llu, expected %llu",
		       (unsigned long long)seq, (unsigned long long)M->last_seq + 1);
		model_write(M, k, seq, 0, NULL, 0, 0);
	} else {
		MCHECK(M, rc == SL_ENOTFOUND, "delete of absent %s = %d", M->keys[k], rc);
		MCHECK(M, last_seq(db) == M->last_seq, "delete of absent key wrote something");
	}
}

/* Argument errors: nothing may be written. */
static void op_invalid(sl_db *db, model *M, tu_rng *r)
{
	static uint8_t big[MAX_VAL + 1];
	char key[MAX_KEY + 2];
	uint64_t seq = 12345;
	int rc;
	switch (tu_rng_below(r, 4)) {
	case 0:
		rc = sl_put(db, "", 0, "v", 1, &seq);
		MCHECK(M, rc == SL_EINVAL, "put with empty key = %d", rc);
		break;
	case 1:
		memset(key, 'k', sizeof(key));
		rc = sl_put(db, key, MAX_KEY + 1, "v", 1, &seq);
		MCHECK(M, rc == SL_ETOOBIG, "put with %d-byte key = %d", MAX_KEY + 1, rc);
		break;
	case 2: {
		int k = (int)tu_rng_below(r, NKEYS);
		rc = sl_put(db, M->keys[k], M->klen[k], big, MAX_VAL + 1, &seq);
		MCHECK(M, rc == SL_ETOOBIG, "put with %d-byte value = %d", MAX_VAL + 1, rc);
		break;
	}
	default:
		rc = sl_delete(db, "no-such-key", 11, &seq);
		MCHECK(M, rc == SL_ENOTFOUND, "delete of never-written key = %d", rc);
		break;
	}
	MCHECK(M, last_seq(db) == M->last_seq, "a refused operation changed last_seq");
}

static void reopen(sl_db **db, const char *dir, const sl_options *o, model *M)
{
	sl_close(*db);
	*db = NULL;
	int rc = sl_open(dir, o, db);
	MCHECK(M, rc == SL_OK, "reopen = %d (%s)", rc, sl_strerror(rc));
}

typedef struct crash_stats {
	int done, skipped_empty, skipped_compacted, compactions;
} crash_stats;

/* A full compaction: afterwards every read must still equal the model. */
static void op_compact(sl_db *db, model *M, crash_stats *cs)
{
	int rc = sl_compact(db);
	MCHECK(M, rc == SL_OK, "sl_compact = %d (%s)", rc, sl_strerror(rc));
	M->epoch++;
	cs->compactions++;
}

/* Close, tear the last record of the active segment, reopen.
 *
 * The active segment is the highest-numbered one not written by compaction
 * (compaction outputs take ids from the same counter).  A write is torn only
 * if no compaction ran after it: a compaction may drop the older records the
 * write superseded, and a real crash cannot tear an acknowledged write that
 * is already in the page cache anyway. */
static void op_crash(sl_db **db, const char *dir, const sl_options *o, model *M, tu_rng *r,
                     crash_stats *cs)
{
	sl_close(*db);
	*db = NULL;

	uint64_t *ids = NULL;
	int n = tu_list_ids(dir, "seg", &ids);
	MCHECK(M, n >= 1, "no segment files after close");
	char path[TU_PATH], hpath[TU_PATH];
	tu_seg s;
	memset(&s, 0, sizeof(s));
	int found = 0;
	for (int i = n - 1; i >= 0 && !found; i--) {
		tu_seg_path(path, sizeof(path), dir, ids[i], "seg");
		tu_seg_path(hpath, sizeof(hpath), dir, ids[i], "hint");
		MCHECK(M, tu_seg_parse(path, &s) == 0, "cannot read %s", path);
		MCHECK(M, s.hdr_ok, "%s: bad segment header after a clean close", path);
		MCHECK(M, s.tail == 0 || s.tail == 1,
		       "%s: garbage after the last record at %zu after a clean close (tail %d)",
		       path, s.end, s.tail);
		if (s.flags & SL_SEG_COMPACTED) {
			tu_seg_free(&s);
		} else {
			found = 1;
		}
	}
	free(ids);
	MCHECK(M, found, "no segment that compaction did not write");
	if (s.nrecs == 0 || M->nj == 0) {
		/* Rotation left an empty active segment: nothing to tear. */
		cs->skipped_empty++;
		tu_seg_free(&s);
		reopen(db, dir, o, M);
		return;
	}
	tu_rec last = s.recs[s.nrecs - 1];
	const jent *top = &M->journal[M->nj - 1];
	MCHECK(M, last.seq == top->seq,
	       "%s: the active segment ends with seq %llu, the last write was seq %llu", path,
	       (unsigned long long)last.seq, (unsigned long long)top->seq);
	if (top->epoch != M->epoch) {
		cs->skipped_compacted++;
		tu_seg_free(&s);
		reopen(db, dir, o, M);
		return;
	}
	uint64_t dropped = last.seq;
	uint64_t off = last.off + tu_rng_below(r, last.size);
	int trunc = (int)tu_rng_below(r, 2);
	tu_seg_free(&s);
	if (trunc) {
		MCHECK(M, tu_truncate(path, (long long)off) == 0, "truncate");
	} else {
		MCHECK(M, tu_flip_byte(path, (long long)off, (uint8_t)tu_rng_range(r, 1, 255)) == 0,
		       "flip");
	}
	unlink(hpath); /* a crash comes before sealing */
	cs->done++;
	model_drop_last(M);
	uint64_t remaining = M->nj ? M->journal[M->nj - 1].seq : 0;

	int rc = sl_open(dir, o, db);
	MCHECK(M, rc == SL_OK, "reopen after %s at %llu = %d (%s)", trunc ? "truncate" : "flip",
	       (unsigned long long)off, rc, sl_strerror(rc));
	uint64_t ls = last_seq(*db);
	/* The torn record is gone; the engine may or may not remember its seq. */
	MCHECK(M, ls >= remaining && ls <= M->max_seq,
	       "after tearing seq %llu: last_seq %llu not in [%llu, %llu]",
	       (unsigned long long)dropped, (unsigned long long)ls, (unsigned long long)remaining,
	       (unsigned long long)M->max_seq);
	M->last_seq = ls;
}

static void run_seed(uint64_t seed, int nops, crash_stats *cs)
{
	char *dir = tu_mkdtemp("model");
	assert_non_null(dir);
	atomic_store(&g_now, CLOCK_START);
	tu_rng r;
	tu_rng_seed(&r, seed);
	model *M = malloc(sizeof(*M));
	assert_non_null(M);
	model_init(M, seed);

	sl_options o;
	sl_options_init(&o);
	o.sync = SL_SYNC_NO;
	o.segment_bytes = SEG_BYTES;
	o.max_key_bytes = MAX_KEY;
	o.max_value_bytes = MAX_VAL;
	o.io = fake_io();
	o.quiet = tu_quiet();
	o.compact_background = 0; /* sl_compact ops instead: runs stay reproducible */
	sl_db *db = NULL;
	int rc = sl_open(dir, &o, &db);
	MCHECK(M, rc == SL_OK, "sl_open = %d", rc);
	check_all(db, M, &r);

	for (M->op = 0; M->op < nops; M->op++) {
		uint64_t p = tu_rng_below(&r, 100);
		if (p < 45) {
			op_put(db, M, &r, 0);
		} else if (p < 57) {
			op_put(db, M, &r, 1);
		} else if (p < 73) {
			op_delete(db, M, &r);
		} else if (p < 85) {
			atomic_fetch_add(&g_now, 10 * tu_rng_range(&r, 1, 20));
		} else if (p < 89) {
			op_invalid(db, M, &r);
		} else if (p < 92) {
			reopen(&db, dir, &o, M);
		} else if (p < 95) {
			op_compact(db, M, cs);
		} else {
			op_crash(&db, dir, &o, M, &r, cs);
		}
		check_all(db, M, &r);
	}
	sl_close(db);
	/* One last cold start must agree too. */
	rc = sl_open(dir, &o, &db);
	MCHECK(M, rc == SL_OK, "final reopen = %d", rc);
	check_all(db, M, &r);
	sl_close(db);

	model_free(M);
	free(M);
	tu_rm_rf(dir);
	free(dir);
}

static void test_model_random(void **state)
{
	(void)state;
	uint64_t seeds = tu_env_u64("SL_TEST_SEEDS", 30);
	uint64_t base = tu_env_u64("SL_TEST_SEED", 1);
	int nops = (int)tu_env_u64("SL_MODEL_OPS", 400);
	crash_stats cs = {0, 0, 0, 0};
	uint64_t t0 = tu_mono_ms();
	for (uint64_t i = 0; i < seeds; i++) {
		run_seed(base + i, nops, &cs);
	}
	print_message("model: %llu seeds x %d ops in %llu ms; %d compactions; torn-tail crashes "
	              "%d (skipped: %d empty active segment, %d compacted since)\n",
	              (unsigned long long)seeds, nops, (unsigned long long)(tu_mono_ms() - t0),
	              cs.compactions, cs.done, cs.skipped_empty, cs.skipped_compacted);
	/* The crash path must actually have been exercised. */
	assert_true(cs.done > 0);
	assert_true(cs.compactions > 0);
}

/* ======================================================================
 * Deterministic contract tests
 * ====================================================================== */

static void small_opts(sl_options *o)
{
	sl_options_init(o);
	o->sync = SL_SYNC_NO;
	o->segment_bytes = SEG_BYTES;
	o->max_key_bytes = MAX_KEY;
	o->max_value_bytes = MAX_VAL;
	o->io = fake_io();
	o->quiet = tu_quiet();
	o->compact_background = 0; /* file layouts below are checked exactly */
}

static void test_options_defaults(void **state)
{
	(void)state;
	sl_options o;
	memset(&o, 0xa5, sizeof(o));
	sl_options_init(&o);
	assert_int_equal(o.sync, SL_SYNC_EVERYSEC);
	assert_int_equal(o.sync_interval_ms, 1000);
	assert_int_equal(o.segment_bytes, 64ull << 20);
	assert_int_equal(o.max_key_bytes, 65535);
	assert_int_equal(o.max_value_bytes, 16u << 20);
	assert_int_equal(o.read_only, 0);
	assert_null(o.io);

	/* Every code has a non-empty name, and distinct codes differ. */
	static const int codes[] = {SL_OK,        SL_ENOTFOUND, SL_EINVAL,    SL_ETOOBIG,
	                            SL_ECORRUPT,  SL_EIO,       SL_ENOSPC,    SL_EBUSY,
	                            SL_EREADONLY, SL_ENOMEM,    SL_EFAILED,   SL_ENOTSUP,
	                            SL_ESTALE,    SL_EBEHIND,   SL_ETIMEDOUT, SL_EPROTO};
	size_t nc = sizeof(codes) / sizeof(codes[0]);
	for (size_t i = 0; i < nc; i++) {
		const char *s = sl_strerror(codes[i]);
		assert_non_null(s);
		assert_true(strlen(s) > 0);
		for (size_t j = 0; j < i; j++) {
			assert_string_not_equal(s, sl_strerror(codes[j]));
		}
	}
	assert_non_null(sl_strerror(-999));
	assert_non_null(sl_strerror(12345));
	sl_close(NULL);
}

static void test_argument_errors(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp("args");
	assert_non_null(dir);
	sl_options o;
	small_opts(&o);
	sl_db *db;
	open_db(dir, &o, &db);

	uint64_t seq = 0;
	assert_int_equal(sl_put(db, "a", 1, "1", 1, &seq), SL_OK);
	assert_int_equal(seq, 1);

	sl_stats before, after;
	assert_int_equal(sl_stats_get(db, &before), SL_OK);
	void *v = NULL;
	size_t vl = 0;
	assert_int_equal(sl_put(db, "", 0, "v", 1, &seq), SL_EINVAL);
	assert_int_equal(sl_put(db, NULL, 0, "v", 1, &seq), SL_EINVAL);
	assert_int_equal(sl_put_ttl(db, "", 0, "v", 1, 100, &seq), SL_EINVAL);
	assert_int_equal(sl_get(db, "", 0, &v, &vl), SL_EINVAL);
	assert_int_equal(sl_delete(db, "", 0, &seq), SL_EINVAL);
	/* flags beyond SL_NOWAIT are the store's own: a put with SL_COPIED's
	 * bit (1 << 9) moved the end over zeros and indexed them */
	for (unsigned bit = 1; bit < 32; bit++) {
		assert_int_equal(sl_put_ex(db, "b", 1, "v", 1, 0, 1u << bit, &seq), SL_EINVAL);
		assert_int_equal(sl_delete_ex(db, "a", 1, 1u << bit, &seq), SL_EINVAL);
	}

	char key[MAX_KEY + 1];
	memset(key, 'k', sizeof(key));
	assert_int_equal(sl_put(db, key, MAX_KEY + 1, "v", 1, &seq), SL_ETOOBIG);
	uint8_t *big = calloc(1, MAX_VAL + 1);
	assert_non_null(big);
	assert_int_equal(sl_put(db, "a", 1, big, MAX_VAL + 1, &seq), SL_ETOOBIG);
	assert_int_equal(sl_put_ttl(db, "a", 1, big, MAX_VAL + 1, 50, &seq), SL_ETOOBIG);

	/* Deleting a key with no live value writes nothing. */
	assert_int_equal(sl_delete(db, "zz", 2, &seq), SL_ENOTFOUND);
	assert_int_equal(sl_get(db, "zz", 2, &v, &vl), SL_ENOTFOUND);

	assert_int_equal(sl_stats_get(db, &after), SL_OK);
	assert_int_equal(after.last_seq, before.last_seq);
	assert_int_equal(after.disk_bytes, before.disk_bytes);
	want_value(db, "a", "1", 1);

	/* The limits themselves are accepted. */
	assert_int_equal(sl_put(db, key, MAX_KEY, big, MAX_VAL, &seq), SL_OK);
	assert_int_equal(seq, 2);
	/* A zero-length value is a value, returned as a non-NULL allocation. */
	assert_int_equal(sl_put(db, "empty", 5, "", 0, &seq), SL_OK);
	assert_int_equal(seq, 3);
	v = NULL;
	vl = 99;
	assert_int_equal(sl_get(db, "empty", 5, &v, &vl), SL_OK);
	assert_non_null(v);
	assert_int_equal(vl, 0);
	free(v);
	/* NULL seq_out is allowed. */
	assert_int_equal(sl_put(db, "n", 1, "x", 1, NULL), SL_OK);
	assert_int_equal(sl_delete(db, "n", 1, NULL), SL_OK);
	assert_int_equal(last_seq(db), 5);
	/* A second delete of the same key finds nothing. */
	assert_int_equal(sl_delete(db, "n", 1, &seq), SL_ENOTFOUND);
	assert_int_equal(last_seq(db), 5);

	sl_close(db);
	open_db(dir, &o, &db);
	v = NULL;
	assert_int_equal(sl_get(db, key, MAX_KEY, &v, &vl), SL_OK);
	assert_int_equal(vl, MAX_VAL);
	assert_memory_equal(v, big, MAX_VAL);
	free(v);
	want_absent(db, "n");
	sl_close(db);
	free(big);
	tu_rm_rf(dir);
	free(dir);
}

static void test_seq_across_reopen(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp("seq");
	assert_non_null(dir);
	sl_options o;
	small_opts(&o);
	sl_db *db;
	uint64_t seq = 0;

	open_db(dir, &o, &db);
	assert_int_equal(last_seq(db), 0);
	assert_int_equal(sl_put(db, "k1", 2, "a", 1, &seq), SL_OK);
	assert_int_equal(seq, 1);
	assert_int_equal(sl_put(db, "k2", 2, "b", 1, &seq), SL_OK);
	assert_int_equal(seq, 2);
	assert_int_equal(sl_put(db, "k1", 2, "c", 1, &seq), SL_OK);
	assert_int_equal(seq, 3);
	assert_int_equal(sl_delete(db, "k2", 2, &seq), SL_OK);
	assert_int_equal(seq, 4);
	sl_close(db);

	/* The last write was a delete: its seq must still count. */
	open_db(dir, &o, &db);
	assert_int_equal(last_seq(db), 4);
	want_value(db, "k1", "c", 1);
	want_absent(db, "k2");
	assert_int_equal(sl_delete(db, "k1", 2, &seq), SL_OK);
	assert_int_equal(seq, 5);
	sl_close(db);

	/* Every key deleted; only tombstones remain. */
	open_db(dir, &o, &db);
	assert_int_equal(last_seq(db), 5);
	want_absent(db, "k1");
	want_absent(db, "k2");
	assert_int_equal(sl_delete(db, "k1", 2, &seq), SL_ENOTFOUND);
	assert_int_equal(sl_put(db, "k3", 2, "d", 1, &seq), SL_OK);
	assert_int_equal(seq, 6);
	sl_close(db);

	/* Reopen with nothing written in between, twice. */
	open_db(dir, &o, &db);
	sl_close(db);
	open_db(dir, &o, &db);
	assert_int_equal(last_seq(db), 6);
	assert_int_equal(sl_put(db, "k3", 2, "e", 1, &seq), SL_OK);
	assert_int_equal(seq, 7);
	uint64_t got = 0;
	void *v = NULL;
	size_t vl = 0;
	assert_int_equal(sl_get_seq(db, "k3", 2, &v, &vl, &got), SL_OK);
	assert_int_equal(got, 7);
	free(v);
	sl_close(db);

	/* Deletes that are the last records of many rotated segments. */
	open_db(dir, &o, &db);
	char val[1000];
	memset(val, 'v', sizeof(val));
	uint64_t want = 7;
	for (int i = 0; i < 30; i++) {
		char k[16];
		snprintf(k, sizeof(k), "r%d", i);
		assert_int_equal(sl_put(db, k, strlen(k), val, sizeof(val), &seq), SL_OK);
		assert_int_equal(seq, ++want);
	}
	for (int i = 0; i < 30; i++) {
		char k[16];
		snprintf(k, sizeof(k), "r%d", i);
		assert_int_equal(sl_delete(db, k, strlen(k), &seq), SL_OK);
		assert_int_equal(seq, ++want);
	}
	sl_close(db);
	open_db(dir, &o, &db);
	assert_int_equal(last_seq(db), want);
	for (int i = 0; i < 30; i++) {
		char k[16];
		snprintf(k, sizeof(k), "r%d", i);
		want_absent(db, k);
	}
	assert_int_equal(sl_put(db, "z", 1, "z", 1, &seq), SL_OK);
	assert_int_equal(seq, want + 1);
	sl_close(db);
	tu_rm_rf(dir);
	free(dir);
}

/* Cross-checks one hint file against its segment, record by record. */
static void check_hint_matches(const char *dir, uint64_t id)
{
	char sp[4096], hp[4096];
	tu_seg_path(sp, sizeof(sp), dir, id, "seg");
	tu_seg_path(hp, sizeof(hp), dir, id, "hint");
	tu_seg s;
	assert_int_equal(tu_seg_parse(sp, &s), 0);
	uint8_t *h = NULL;
	size_t hl = 0;
	assert_int_equal(tu_read_file(hp, &h, &hl), 0);
	long count = tu_hint_check(h, hl, id);
	if (count < 0) {
		fail_msg("%s: malformed hint file (%zu bytes)", hp, hl);
	}
	/* A sealed segment holds nothing but whole, valid records. */
	assert_int_equal(s.end, s.len);
	assert_int_equal(count, (long)s.nrecs);
	size_t off = SL_HINT_HDR_SIZE;
	for (long i = 0; i < count; i++) {
		const uint8_t *e = h + off;
		const tu_rec *rec = NULL;
		uint32_t roff = sl_get32(e + 16);
		for (size_t j = 0; j < s.nrecs; j++) {
			if (s.recs[j].off == roff) {
				rec = &s.recs[j];
			}
		}
		if (rec == NULL) {
			fail_msg("%s entry %ld: offset %u is no record of the segment", hp, i,
			         roff);
		}
		assert_int_equal(sl_get64(e), rec->seq);
		assert_int_equal(sl_get64(e + 8), rec->expire_at);
		assert_int_equal(sl_get32(e + 20), rec->size);
		assert_int_equal(e[24], rec->type);
		assert_int_equal(sl_get16(e + 25), rec->klen);
		assert_memory_equal(e + SL_HINT_ENTRY_FIXED, rec->key, rec->klen);
		off += SL_HINT_ENTRY_FIXED + rec->klen;
	}
	free(h);
	tu_seg_free(&s);
}

static void test_layout_and_formats(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp("layout");
	assert_non_null(dir);
	atomic_store(&g_now, CLOCK_START);
	sl_options o;
	small_opts(&o);
	sl_db *db;
	open_db(dir, &o, &db);
	char lock[4096];
	snprintf(lock, sizeof(lock), "%s/LOCK", dir);
	assert_true(tu_exists(lock));

	/* 120 distinct keys of ~300 bytes: ~9 records per 4 KiB segment. */
	uint8_t val[300];
	uint64_t seq;
	for (int i = 0; i < 120; i++) {
		char k[32];
		snprintf(k, sizeof(k), "key-%03d", i);
		tu_fill_tagged(val, sizeof(val), (uint64_t)i);
		assert_int_equal(
		    sl_put_ttl(db, k, strlen(k), val, sizeof(val), i % 3 ? 0 : 1000000, &seq),
		    SL_OK);
		assert_int_equal(seq, (uint64_t)i + 1);
	}
	assert_int_equal(sl_delete(db, "key-007", 7, &seq), SL_OK);
	sl_stats st;
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_true(st.segments >= 8);
	assert_int_equal(st.keys, 119);
	assert_int_equal(st.puts, 120);
	assert_int_equal(st.deletes, 1);
	sl_close(db);

	uint64_t *segs = NULL, *hints = NULL;
	int ns = tu_list_ids(dir, "seg", &segs);
	int nh = tu_list_ids(dir, "hint", &hints);
	assert_true(ns >= 8);
	/* Every sealed segment (all but the highest) has a hint; no hint is an orphan. */
	assert_true(nh >= ns - 1);
	for (int i = 0; i < ns - 1; i++) {
		int found = 0;
		for (int j = 0; j < nh; j++) {
			found |= hints[j] == segs[i];
		}
		if (!found) {
			fail_msg("sealed segment %010llu has no hint", (unsigned long long)segs[i]);
		}
	}
	for (int j = 0; j < nh; j++) {
		int found = 0;
		for (int i = 0; i < ns; i++) {
			found |= hints[j] == segs[i];
		}
		assert_true(found);
		check_hint_matches(dir, hints[j]);
	}

	/* Segment headers and records follow format.h; every write is on disk
	 * exactly once with the right bytes. */
	int seen[121] = {0};
	for (int i = 0; i < ns; i++) {
		char p[4096];
		tu_seg_path(p, sizeof(p), dir, segs[i], "seg");
		tu_seg s;
		assert_int_equal(tu_seg_parse(p, &s), 0);
		if (!s.hdr_ok) {
			fail_msg("%s: bad header", p);
		}
		assert_int_equal(s.id, segs[i]);
		assert_int_equal(s.flags, 0); /* no compaction ran */
		assert_true(s.tail == 0 || s.tail == 1);
		for (size_t j = 0; j < s.nrecs; j++) {
			const tu_rec *r = &s.recs[j];
			assert_true(r->seq >= s.first_seq);
			assert_true(r->seq >= 1 && r->seq <= 121);
			assert_int_equal(seen[r->seq - 1], 0);
			seen[r->seq - 1] = 1;
			if (j > 0) {
				assert_true(r->seq > s.recs[j - 1].seq);
			}
			if (r->seq == 121) {
				assert_int_equal(r->type, SL_REC_DEL);
				assert_int_equal(r->vlen, 0);
				assert_int_equal(r->expire_at, 0);
				assert_memory_equal(r->key, "key-007", 7);
			} else {
				int k = (int)r->seq - 1;
				char kk[32];
				snprintf(kk, sizeof(kk), "key-%03d", k);
				assert_int_equal(r->type, SL_REC_PUT);
				assert_int_equal(r->klen, strlen(kk));
				assert_memory_equal(r->key, kk, r->klen);
				assert_int_equal(r->vlen, sizeof(val));
				tu_fill_tagged(val, sizeof(val), (uint64_t)k);
				assert_memory_equal(r->val, val, sizeof(val));
				if (k % 3) {
					assert_int_equal(r->expire_at, 0);
				} else {
					assert_int_equal(r->expire_at, CLOCK_START + 1000000);
				}
			}
		}
		tu_seg_free(&s);
	}
	for (int i = 0; i < 121; i++) {
		if (!seen[i]) {
			fail_msg("seq %d is in no segment", i + 1);
		}
	}

	/* Startup loads every hint and scans only the segments without one. */
	open_db(dir, &o, &db);
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_int_equal(st.hints_loaded, (uint64_t)nh);
	assert_int_equal(st.segments_scanned, (uint64_t)(ns - nh));
	assert_int_equal(st.segments, (uint64_t)ns);
	assert_int_equal(st.keys, 119);
	assert_int_equal(st.last_seq, 121);
	assert_int_equal(st.corrupt_records, 0);
	for (int i = 0; i < 120; i++) {
		char k[32];
		snprintf(k, sizeof(k), "key-%03d", i);
		tu_fill_tagged(val, sizeof(val), (uint64_t)i);
		if (i == 7) {
			want_absent(db, k);
		} else {
			want_value(db, k, val, sizeof(val));
		}
	}
	sl_close(db);

	/* The lock file stays, and the directory can be opened again. */
	open_db(dir, &o, &db);
	sl_close(db);
	free(segs);
	free(hints);
	tu_rm_rf(dir);
	free(dir);
}

/* ---- scans ------------------------------------------------------------ */

typedef struct reenter_ctx {
	sl_db *db;
	int calls;
	int stop_after;
	int bad;
} reenter_ctx;

static int stop_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	(void)k;
	(void)kl;
	(void)v;
	(void)vl;
	reenter_ctx *c = arg;
	c->calls++;
	return c->calls == c->stop_after ? 42 : 0;
}

/* Calls back into the engine from inside the scan. */
static int reenter_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	reenter_ctx *c = arg;
	c->calls++;
	void *v2 = NULL;
	size_t vl2 = 0;
	if (sl_get(c->db, k, kl, &v2, &vl2) != SL_OK || vl2 != vl || memcmp(v2, v, vl) != 0) {
		c->bad++;
	}
	free(v2);
	char nk[64];
	snprintf(nk, sizeof(nk), "new-%d", c->calls);
	if (sl_put(c->db, nk, strlen(nk), "n", 1, NULL) != SL_OK) {
		c->bad++;
	}
	sl_stats st;
	if (sl_stats_get(c->db, &st) != SL_OK) {
		c->bad++;
	}
	return 0;
}

static void test_scan_contract(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp("scan");
	assert_non_null(dir);
	sl_options o;
	small_opts(&o);
	sl_db *db;
	open_db(dir, &o, &db);
	for (int i = 0; i < 50; i++) {
		char k[32], v[32];
		snprintf(k, sizeof(k), "%s%02d", i % 2 ? "odd/" : "even/", i);
		snprintf(v, sizeof(v), "v%d", i);
		assert_int_equal(sl_put(db, k, strlen(k), v, strlen(v), NULL), SL_OK);
	}

	/* A non-zero callback result stops the scan and is returned. */
	reenter_ctx c = {db, 0, 5, 0};
	assert_int_equal(sl_scan(db, "", 0, stop_cb, &c), 42);
	assert_int_equal(c.calls, 5);
	c.calls = 0;
	c.stop_after = -1;
	assert_int_equal(sl_scan(db, "odd/", 4, stop_cb, &c), 0);
	assert_int_equal(c.calls, 25);
	c.calls = 0;
	assert_int_equal(sl_scan(db, "nope", 4, stop_cb, &c), 0);
	assert_int_equal(c.calls, 0);
	/* A prefix equal to a whole key matches it. */
	c.calls = 0;
	assert_int_equal(sl_scan(db, "even/10", 7, stop_cb, &c), 0);
	assert_int_equal(c.calls, 1);

	/* The callback may call back into the engine, writes included. */
	signal(SIGALRM, on_alarm);
	alarm(60);
	reenter_ctx rc = {db, 0, 0, 0};
	assert_int_equal(sl_scan(db, "even/", 5, reenter_cb, &rc), 0);
	alarm(0);
	assert_int_equal(rc.bad, 0);
	assert_int_equal(rc.calls, 25);
	assert_int_equal(last_seq(db), 75);
	sl_close(db);
	tu_rm_rf(dir);
	free(dir);
}

/* ---- TTL -------------------------------------------------------------- */

static void test_ttl(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp("ttl");
	assert_non_null(dir);
	atomic_store(&g_now, CLOCK_START);
	sl_options o;
	small_opts(&o);
	sl_db *db;
	open_db(dir, &o, &db);
	uint64_t seq;
	assert_int_equal(sl_put_ttl(db, "short", 5, "s", 1, 105, &seq), SL_OK);
	assert_int_equal(sl_put_ttl(db, "long", 4, "l", 1, 100005, &seq), SL_OK);
	assert_int_equal(sl_put_ttl(db, "never", 5, "n", 1, 0, &seq), SL_OK);
	assert_int_equal(sl_put(db, "plain", 5, "p", 1, &seq), SL_OK);
	atomic_fetch_add(&g_now, 100);
	want_value(db, "short", "s", 1);
	atomic_fetch_add(&g_now, 10);
	want_absent(db, "short");
	reenter_ctx c = {db, 0, -1, 0};
	assert_int_equal(sl_scan(db, "", 0, stop_cb, &c), 0);
	assert_int_equal(c.calls, 3);
	/* An expired key has no live value: delete finds nothing, writes nothing. */
	assert_int_equal(sl_delete(db, "short", 5, &seq), SL_ENOTFOUND);
	assert_int_equal(last_seq(db), 4);
	sl_close(db);

	/* Expiry is absolute: it survives a reopen (hinted and scanned). */
	open_db(dir, &o, &db);
	want_absent(db, "short");
	want_value(db, "long", "l", 1);
	atomic_fetch_add(&g_now, 100000);
	want_absent(db, "long");
	want_value(db, "never", "n", 1);
	want_value(db, "plain", "p", 1);
	/* A put on an expired key starts afresh; a plain put clears a TTL. */
	assert_int_equal(sl_put_ttl(db, "long", 4, "L", 1, 55, &seq), SL_OK);
	assert_int_equal(seq, 5);
	assert_int_equal(sl_put(db, "long", 4, "M", 1, &seq), SL_OK);
	atomic_fetch_add(&g_now, 1000);
	want_value(db, "long", "M", 1);
	/* Overwriting with a TTL makes a never-expiring key expire. */
	assert_int_equal(sl_put_ttl(db, "never", 5, "N", 1, 15, &seq), SL_OK);
	want_value(db, "never", "N", 1);
	atomic_fetch_add(&g_now, 20);
	want_absent(db, "never");
	sl_close(db);
	open_db(dir, &o, &db);
	want_absent(db, "never");
	want_absent(db, "short");
	want_value(db, "long", "M", 1);
	assert_int_equal(last_seq(db), 7);
	sl_close(db);
	tu_rm_rf(dir);
	free(dir);
}

/* ---- read-only handles ------------------------------------------------ */

static void test_read_only(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp("ro");
	assert_non_null(dir);
	atomic_store(&g_now, CLOCK_START);
	sl_options o;
	small_opts(&o);
	sl_db *db;
	open_db(dir, &o, &db);
	uint8_t val[700];
	for (int i = 0; i < 40; i++) {
		char k[16];
		snprintf(k, sizeof(k), "r%02d", i);
		tu_fill_tagged(val, sizeof(val), (uint64_t)i);
		assert_int_equal(sl_put(db, k, strlen(k), val, sizeof(val), NULL), SL_OK);
	}
	assert_int_equal(sl_delete(db, "r03", 3, NULL), SL_OK);
	sl_close(db);
	/* Without its hint a sealed segment must be scanned, not re-sealed. */
	uint64_t *hints = NULL;
	assert_true(tu_list_ids(dir, "hint", &hints) >= 2);
	char hp[TU_PATH];
	tu_seg_path(hp, sizeof(hp), dir, hints[0], "hint");
	assert_int_equal(unlink(hp), 0);
	free(hints);
	tu_snapshot before;
	assert_int_equal(tu_snapshot_take(dir, &before), 0);

	o.read_only = 1;
	open_db(dir, &o, &db);
	uint64_t seq = 0;
	assert_int_equal(sl_put(db, "x", 1, "y", 1, &seq), SL_EREADONLY);
	assert_int_equal(sl_put_ttl(db, "x", 1, "y", 1, 100, &seq), SL_EREADONLY);
	assert_int_equal(sl_delete(db, "r01", 3, &seq), SL_EREADONLY);
	assert_int_equal(last_seq(db), 41);
	for (int i = 0; i < 40; i++) {
		char k[16];
		snprintf(k, sizeof(k), "r%02d", i);
		tu_fill_tagged(val, sizeof(val), (uint64_t)i);
		if (i == 3) {
			want_absent(db, k);
		} else {
			want_value(db, k, val, sizeof(val));
		}
	}
	reenter_ctx c = {db, 0, -1, 0};
	assert_int_equal(sl_scan(db, "r", 1, stop_cb, &c), 0);
	assert_int_equal(c.calls, 39);
	sl_close(db);

	/* A read-only handle changed no segment or hint file. */
	tu_snapshot after;
	assert_int_equal(tu_snapshot_take(dir, &after), 0);
	for (size_t i = 0; i < before.n; i++) {
		const tu_file *b = &before.files[i];
		if (strstr(b->name, ".seg") == NULL && strstr(b->name, ".hint") == NULL) {
			continue;
		}
		const tu_file *a = NULL;
		for (size_t j = 0; j < after.n; j++) {
			if (strcmp(after.files[j].name, b->name) == 0) {
				a = &after.files[j];
			}
		}
		if (a == NULL || a->len != b->len || memcmp(a->data, b->data, b->len) != 0) {
			fail_msg("read-only open changed %s", b->name);
		}
	}
	for (size_t j = 0; j < after.n; j++) {
		int found = 0;
		for (size_t i = 0; i < before.n; i++) {
			found |= strcmp(after.files[j].name, before.files[i].name) == 0;
		}
		if (!found) {
			fail_msg("read-only open created %s", after.files[j].name);
		}
	}
	tu_snapshot_free(&before);
	tu_snapshot_free(&after);
	tu_rm_rf(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_options_defaults),  cmocka_unit_test(test_argument_errors),
	    cmocka_unit_test(test_seq_across_reopen), cmocka_unit_test(test_layout_and_formats),
	    cmocka_unit_test(test_scan_contract),     cmocka_unit_test(test_ttl),
	    cmocka_unit_test(test_read_only),         cmocka_unit_test(test_model_random),
	};
	const char *filter = getenv("SL_TEST_FILTER"); /* e.g. "test_hint*" */
	if (filter != NULL) {
		cmocka_set_test_filter(filter);
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
