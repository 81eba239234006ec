/*
 * test_concurrency.c — many threads on one handle (run under TSan).
 *
 * shiplog.h: every function is safe to call from many threads on one sl_db.
 * Four worker threads put, delete and get, each on its own keys (o<t>/...)
 * and on keys all of them share (s/...), while a scanner thread runs full
 * and prefix scans whose callback calls back into the engine, and now and
 * then sl_compact (the background compactor runs every 5 ms as well).
 * Every value is self-describing — key, writer thread, version and a payload
 * derived from them — so any reader can tell a real value from torn or
 * foreign bytes.
 *
 * Checks, while running:
 *   - own keys: read-your-writes, exactly (value, or absent after a delete);
 *   - any key: a value is well-formed, for this key, and its version was
 *     already started by its writer; a reader never sees a key's seq go back;
 *   - scans: every (key, value) well-formed, prefix respected, each key once.
 * After joining, and again after a reopen (its sealed segments loaded on 4
 * threads): each key holds the write with the highest seq made to it (from
 * the writers' logs), and the counters add up.
 *
 * SL_TEST_SEEDS scales the operations per thread (default 20: 10000 ops per
 * thread under everysec and no, 2000 under always, 200 puts per thread in
 * the group-commit test).
 *
 * test_group_commit: 8 threads put with sync=always through a seam whose
 * fdatasync takes 300 us (a disk, not a page cache): every put returns with
 * synced_seq >= its seq, and concurrent puts share fdatasyncs
 * (stats.fsyncs < puts).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io.h"
#include "shiplog.h"
#include "testutil.h"

#define NT     4
#define OWN    24 /* keys per thread */
#define SHARED 16 /* keys every thread writes */
#define MAXV   400
#define VMAGIC 0x31564c53u /* "SLV1" */

/* ---- self-describing values ------------------------------------------ */

static uint64_t key_hash(const char *k, size_t kl)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < kl; i++) {
		h = (h ^ (uint8_t)k[i]) * 1099511628211ull;
	}
	return h;
}

static uint64_t val_tag(const char *k, size_t kl, uint32_t t, uint64_t ver)
{
	return tu_splitmix64(key_hash(k, kl) ^ ((uint64_t)t << 56) ^ ver);
}

/* magic u32 | thread u32 | version u64 | klen u16 | key | payload */
static size_t make_value(uint8_t *buf, const char *k, size_t kl, uint32_t t, uint64_t ver)
{
	uint64_t tag = val_tag(k, kl, t, ver);
	size_t pay = (size_t)(tag % (MAXV - 64));
	sl_put32(buf, VMAGIC);
	sl_put32(buf + 4, t);
	sl_put64(buf + 8, ver);
	sl_put16(buf + 16, (uint16_t)kl);
	memcpy(buf + 18, k, kl);
	tu_fill_tagged(buf + 18 + kl, pay, tag);
	return 18 + kl + pay;
}

/* 1 when v is a value written for key k; fills thread and version. */
static int parse_value(const void *v, size_t vl, const char *k, size_t kl, uint32_t *t,
                       uint64_t *ver)
{
	const uint8_t *p = v;
	if (vl < 18 || sl_get32(p) != VMAGIC || sl_get16(p + 16) != kl || vl < 18 + kl ||
	    memcmp(p + 18, k, kl) != 0) {
		return 0;
	}
	*t = sl_get32(p + 4);
	*ver = sl_get64(p + 8);
	uint8_t want[MAXV];
	size_t n = make_value(want, k, kl, *t, *ver);
	return n == vl && memcmp(want, v, vl) == 0;
}

/* ---- shared test state ------------------------------------------------ */

typedef struct wlog {
	int key;      /* index into the key table */
	uint64_t seq; /* seq of the write */
	uint64_t ver; /* 0 for a delete */
	uint32_t t;
} wlog;

typedef struct ctx {
	sl_db *db;
	int nthreads;
	int ops;
	int own_keys_per_thread;
	char (*keys)[32]; /* own keys of thread t: [t*OWN, t*OWN+OWN), then SHARED */
	int nkeys;
	_Atomic uint64_t started[16]; /* highest version each thread has begun writing */
	_Atomic int stop;
	_Atomic long errors;
	_Atomic long scans, scanned, compactions;
	int check_synced; /* sync=always: synced_seq >= seq after each put */
} ctx;

typedef struct worker {
	ctx *c;
	uint32_t t;
	uint64_t seed;
	wlog *log;
	size_t nlog, caplog;
	uint64_t puts, deletes;
	uint64_t last_seen_seq[OWN * NT + SHARED];
} worker;

#define ERR(c, ...)                                                                                \
	do {                                                                                       \
		fprintf(stderr, __VA_ARGS__);                                                      \
		fputc('\n', stderr);                                                               \
		atomic_fetch_add(&(c)->errors, 1);                                                 \
	} while (0)

static int shared_key(const ctx *c, int i)
{
	return c->nthreads * OWN + i;
}

static void log_write(worker *w, int key, uint64_t seq, uint64_t ver)
{
	if (w->nlog == w->caplog) {
		w->caplog = w->caplog ? 2 * w->caplog : 1024;
		w->log = realloc(w->log, w->caplog * sizeof(*w->log));
		if (w->log == NULL) {
			abort();
		}
	}
	w->log[w->nlog++] = (wlog){key, seq, ver, w->t};
}

/* Reads key k and checks what any thread may check about it. */
static int check_read(worker *w, int k, uint32_t *t_out, uint64_t *ver_out)
{
	ctx *c = w->c;
	const char *key = c->keys[k];
	size_t kl = strlen(key);
	void *v = NULL;
	size_t vl = 0;
	uint64_t seq = 0;
	sl_prefetch(c->db, key, kl); /* its unlocked peek races the writers' growth */
	sl_prefetch_value(c->db, key, kl);
	int rc = sl_get_seq(c->db, key, kl, &v, &vl, &seq);
	if (rc == SL_ENOTFOUND) {
		return rc;
	}
	if (rc != SL_OK) {
		ERR(c, "thread %u: get %s = %d (%s)", w->t, key, rc, sl_strerror(rc));
		return rc;
	}
	uint32_t t = 0;
	uint64_t ver = 0;
	if (!parse_value(v, vl, key, kl, &t, &ver)) {
		ERR(c, "thread %u: get %s returned %zu bytes that are no value of this key", w->t,
		    key, vl);
	} else if (t >= (uint32_t)c->nthreads || ver > atomic_load(&c->started[t])) {
		ERR(c, "thread %u: get %s returned version %llu of thread %u, not yet written",
		    w->t, key, (unsigned long long)ver, t);
	}
	if (seq < w->last_seen_seq[k]) {
		ERR(c, "thread %u: key %s went back from seq %llu to %llu", w->t, key,
		    (unsigned long long)w->last_seen_seq[k], (unsigned long long)seq);
	}
	w->last_seen_seq[k] = seq;
	free(v);
	*t_out = t;
	*ver_out = ver;
	return SL_OK;
}

static void *worker_main(void *p)
{
	worker *w = p;
	ctx *c = w->c;
	tu_rng r;
	tu_rng_seed(&r, w->seed);
	/* This thread's own keys: last version written, 0 = absent. */
	uint64_t own[OWN];
	memset(own, 0, sizeof(own));
	uint8_t val[MAXV];
	for (int op = 0; op < c->ops && atomic_load(&c->errors) == 0; op++) {
		uint64_t dice = tu_rng_below(&r, 100);
		int oi = (int)tu_rng_below(&r, OWN);
		int ok = (int)(w->t * OWN) + oi;
		int sk = shared_key(c, (int)tu_rng_below(&r, SHARED));
		if (dice < 35) { /* put own or shared */
			int k = dice < 20 ? ok : sk;
			const char *key = c->keys[k];
			uint64_t ver = atomic_load(&c->started[w->t]) + 1;
			atomic_store(&c->started[w->t], ver);
			size_t vl = make_value(val, key, strlen(key), w->t, ver);
			uint64_t seq = 0;
			int rc = sl_put(c->db, key, strlen(key), val, vl, &seq);
			if (rc != SL_OK) {
				ERR(c, "thread %u: put %s = %d (%s)", w->t, key, rc,
				    sl_strerror(rc));
				break;
			}
			w->puts++;
			log_write(w, k, seq, ver);
			if (k == ok) {
				own[oi] = ver;
			}
			if (c->check_synced) {
				sl_stats st;
				sl_stats_get(c->db, &st);
				if (st.synced_seq < seq) {
					ERR(c, "sync=always put returned seq %llu, synced_seq %llu",
					    (unsigned long long)seq,
					    (unsigned long long)st.synced_seq);
				}
			}
		} else if (dice < 42) { /* delete own or shared */
			int k = dice < 39 ? ok : sk;
			const char *key = c->keys[k];
			uint64_t seq = 0;
			int rc = sl_delete(c->db, key, strlen(key), &seq);
			if (k == ok && own[oi] == 0 && rc != SL_ENOTFOUND) {
				ERR(c, "thread %u: delete of absent own key %s = %d", w->t, key,
				    rc);
			} else if (k == ok && own[oi] != 0 && rc != SL_OK) {
				ERR(c, "thread %u: delete of own key %s = %d", w->t, key, rc);
			} else if (rc != SL_OK && rc != SL_ENOTFOUND) {
				ERR(c, "thread %u: delete %s = %d", w->t, key, rc);
			}
			if (rc == SL_OK) {
				w->deletes++;
				log_write(w, k, seq, 0);
				if (k == ok) {
					own[oi] = 0;
				}
			}
		} else if (dice < 70) { /* read own: exactly what this thread wrote */
			uint32_t t;
			uint64_t ver;
			int rc = check_read(w, ok, &t, &ver);
			if (own[oi] == 0 && rc != SL_ENOTFOUND) {
				ERR(c, "thread %u: own key %s deleted, get = %d", w->t, c->keys[ok],
				    rc);
			} else if (own[oi] != 0 && (rc != SL_OK || t != w->t || ver != own[oi])) {
				ERR(c,
				    "thread %u: own key %s: rc %d, version %llu of thread %u, "
				    "want version %llu",
				    w->t, c->keys[ok], rc, (unsigned long long)ver, t,
				    (unsigned long long)own[oi]);
			}
		} else { /* read anything */
			uint32_t t;
			uint64_t ver;
			check_read(w, (int)tu_rng_below(&r, (uint64_t)c->nkeys), &t, &ver);
		}
	}
	return NULL;
}

/* ---- the scanner ------------------------------------------------------ */

typedef struct scan_state {
	ctx *c;
	const char *prefix;
	size_t plen;
	uint8_t seen[OWN * 16 + SHARED];
	long n;
	int reenter;
} scan_state;

static int key_index(const ctx *c, const void *k, size_t kl)
{
	for (int i = 0; i < c->nkeys; i++) {
		if (strlen(c->keys[i]) == kl && memcmp(c->keys[i], k, kl) == 0) {
			return i;
		}
	}
	return -1;
}

static int scan_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	scan_state *s = arg;
	ctx *c = s->c;
	int i = key_index(c, k, kl);
	uint32_t t;
	uint64_t ver;
	if (i < 0) {
		ERR(c, "scan: unknown key of %zu bytes", kl);
		return 0;
	}
	if (kl < s->plen || memcmp(k, s->prefix, s->plen) != 0) {
		ERR(c, "scan '%s': key %s", s->prefix, c->keys[i]);
	}
	if (s->seen[i]++) {
		ERR(c, "scan: key %s seen twice", c->keys[i]);
	}
	if (!parse_value(v, vl, c->keys[i], kl, &t, &ver)) {
		ERR(c, "scan: key %s has %zu bytes that are no value of it", c->keys[i], vl);
	} else if (t >= (uint32_t)c->nthreads || ver > atomic_load(&c->started[t])) {
		ERR(c, "scan: key %s: version %llu of thread %u not yet written", c->keys[i],
		    (unsigned long long)ver, t);
	}
	if (s->reenter) {
		/* fn may call other sl_* functions on db */
		void *v2 = NULL;
		size_t vl2 = 0;
		int rc = sl_get(c->db, k, kl, &v2, &vl2);
		if (rc == SL_OK && !parse_value(v2, vl2, c->keys[i], kl, &t, &ver)) {
			ERR(c, "scan: nested get of %s returned bad bytes", c->keys[i]);
		} else if (rc != SL_OK && rc != SL_ENOTFOUND) {
			ERR(c, "scan: nested get of %s = %d", c->keys[i], rc);
		}
		free(v2);
		sl_stats st;
		sl_stats_get(c->db, &st);
	}
	s->n++;
	return 0;
}

static void *scanner_main(void *p)
{
	ctx *c = p;
	static const char *prefixes[] = {"", "s/", "o0/", "o1/", "o3/k1", "zz"};
	unsigned i = 0;
	while (!atomic_load(&c->stop)) {
		scan_state s;
		memset(&s, 0, sizeof(s));
		s.c = c;
		s.prefix = prefixes[i % 6];
		s.plen = strlen(s.prefix);
		s.reenter = (i % 3) == 0;
		int rc = sl_scan(c->db, s.prefix, s.plen, scan_cb, &s);
		if (rc != 0) {
			ERR(c, "sl_scan('%s') = %d", s.prefix, rc);
		}
		atomic_fetch_add(&c->scans, 1);
		atomic_fetch_add(&c->scanned, s.n);
		if (i % 8 == 7) {
			/* A manual compaction racing the writers (and the background one). */
			rc = sl_compact(c->db);
			if (rc != SL_OK) {
				ERR(c, "sl_compact = %d (%s)", rc, sl_strerror(rc));
			}
			atomic_fetch_add(&c->compactions, 1);
		}
		i++;
	}
	return NULL;
}

/* ---- final state ------------------------------------------------------ */

/* Every key holds its highest-seq write.  Also checks seqs are unique. */
static void check_final(ctx *c, worker *ws, int nw, const char *what)
{
	int nk = c->nkeys;
	wlog *best = calloc((size_t)nk, sizeof(*best));
	assert_non_null(best);
	size_t total = 0;
	for (int w = 0; w < nw; w++) {
		total += ws[w].nlog;
	}
	uint64_t *seqs = malloc((total + 1) * sizeof(*seqs));
	assert_non_null(seqs);
	size_t ns = 0;
	for (int w = 0; w < nw; w++) {
		for (size_t j = 0; j < ws[w].nlog; j++) {
			wlog *l = &ws[w].log[j];
			seqs[ns++] = l->seq;
			if (l->seq > best[l->key].seq) {
				best[l->key] = *l;
			}
		}
	}
	/* Seqs: unique, and exactly 1..total. */
	for (size_t j = 0; j < ns; j++) {
		if (seqs[j] == 0 || seqs[j] > total) {
			fail_msg("%s: seq %llu outside 1..%zu", what, (unsigned long long)seqs[j],
			         total);
		}
	}
	uint8_t *hit = calloc(total + 1, 1);
	assert_non_null(hit);
	for (size_t j = 0; j < ns; j++) {
		if (hit[seqs[j]]++) {
			fail_msg("%s: seq %llu given to two writes", what,
			         (unsigned long long)seqs[j]);
		}
	}
	free(hit);
	free(seqs);

	uint64_t live = 0;
	for (int k = 0; k < nk; k++) {
		const char *key = c->keys[k];
		void *v = NULL;
		size_t vl = 0;
		uint64_t seq = 0;
		int rc = sl_get_seq(c->db, key, strlen(key), &v, &vl, &seq);
		if (best[k].seq == 0 || best[k].ver == 0) {
			if (rc != SL_ENOTFOUND) {
				fail_msg("%s: key %s should be absent, get = %d", what, key, rc);
			}
			continue;
		}
		live++;
		uint32_t t = 0;
		uint64_t ver = 0;
		if (rc != SL_OK || !parse_value(v, vl, key, strlen(key), &t, &ver) ||
		    t != best[k].t || ver != best[k].ver || seq != best[k].seq) {
			fail_msg(
			    "%s: key %s: rc %d, thread %u version %llu seq %llu; want thread %u "
			    "version %llu seq %llu",
			    what, key, rc, t, (unsigned long long)ver, (unsigned long long)seq,
			    best[k].t, (unsigned long long)best[k].ver,
			    (unsigned long long)best[k].seq);
		}
		free(v);
	}
	sl_stats st;
	assert_int_equal(sl_stats_get(c->db, &st), SL_OK);
	assert_int_equal(st.last_seq, total);
	assert_int_equal(st.keys, live);
	assert_int_equal(st.failed, 0);
	free(best);
}

static void run_threads(sl_sync sync, int nthreads, int ops, int with_scanner, const char *name)
{
	char *dir = tu_mkdtemp(name);
	assert_non_null(dir);
	sl_options o;
	sl_options_init(&o);
	o.sync = sync;
	o.sync_interval_ms = 50;
	o.segment_bytes = 16 << 10; /* rotation, sealing and hints while racing */
	o.quiet = tu_quiet();
	o.compact_interval_ms = 5; /* background compaction races too */
	ctx *c = calloc(1, sizeof(*c));
	assert_non_null(c);
	c->nthreads = nthreads;
	c->ops = ops;
	c->nkeys = nthreads * OWN + SHARED;
	c->keys = calloc((size_t)c->nkeys, sizeof(*c->keys));
	assert_non_null(c->keys);
	for (int t = 0; t < nthreads; t++) {
		for (int i = 0; i < OWN; i++) {
			snprintf(c->keys[t * OWN + i], 32, "o%d/k%02d", t, i);
		}
	}
	for (int i = 0; i < SHARED; i++) {
		snprintf(c->keys[nthreads * OWN + i], 32, "s/k%02d", i);
	}
	c->check_synced = sync == SL_SYNC_ALWAYS;
	int rc = sl_open(dir, &o, &c->db);
	assert_int_equal(rc, SL_OK);

	worker *ws = calloc((size_t)nthreads, sizeof(*ws));
	assert_non_null(ws);
	pthread_t th[16], sc;
	uint64_t t0 = tu_mono_ms();
	if (with_scanner) {
		assert_int_equal(pthread_create(&sc, NULL, scanner_main, c), 0);
	}
	for (int t = 0; t < nthreads; t++) {
		ws[t].c = c;
		ws[t].t = (uint32_t)t;
		ws[t].seed = tu_env_u64("SL_TEST_SEED", 1) * 1000 + (uint64_t)t;
		assert_int_equal(pthread_create(&th[t], NULL, worker_main, &ws[t]), 0);
	}
	for (int t = 0; t < nthreads; t++) {
		pthread_join(th[t], NULL);
	}
	atomic_store(&c->stop, 1);
	if (with_scanner) {
		pthread_join(sc, NULL);
	}
	uint64_t puts = 0, dels = 0;
	for (int t = 0; t < nthreads; t++) {
		puts += ws[t].puts;
		dels += ws[t].deletes;
	}
	sl_stats cst;
	assert_int_equal(sl_stats_get(c->db, &cst), SL_OK);
	print_message("%s: %d threads x %d ops: %llu puts, %llu deletes, %ld scans (%ld keys), "
	              "%ld manual compactions, %llu compaction runs in %llu ms\n",
	              name, nthreads, ops, (unsigned long long)puts, (unsigned long long)dels,
	              atomic_load(&c->scans), atomic_load(&c->scanned),
	              atomic_load(&c->compactions), (unsigned long long)cst.compactions,
	              (unsigned long long)(tu_mono_ms() - t0));
	assert_int_equal(atomic_load(&c->errors), 0);
	if (with_scanner) {
		assert_true(atomic_load(&c->scans) > 0);
	}
	sl_stats st;
	assert_int_equal(sl_stats_get(c->db, &st), SL_OK);
	assert_int_equal(st.puts, puts);
	assert_int_equal(st.deletes, dels);
	check_final(c, ws, nthreads, "after join");
	sl_close(c->db);

	o.open_threads = 4; /* the reopen loads the sealed segments on 4 threads */
	assert_int_equal(sl_open(dir, &o, &c->db), SL_OK);
	check_final(c, ws, nthreads, "after reopen");
	sl_close(c->db);

	for (int t = 0; t < nthreads; t++) {
		free(ws[t].log);
	}
	free(ws);
	free(c->keys);
	free(c);
	tu_rm_rf(dir);
	free(dir);
}

static void test_threads_everysec(void **state)
{
	(void)state;
	int ops = (int)tu_env_u64("SL_TEST_SEEDS", 20) * 500;
	run_threads(SL_SYNC_EVERYSEC, NT, ops, 1, "conc-everysec");
}

static void test_threads_always(void **state)
{
	(void)state;
	int ops = (int)tu_env_u64("SL_TEST_SEEDS", 20) * 100;
	run_threads(SL_SYNC_ALWAYS, NT, ops, 1, "conc-always");
}

static void test_threads_no(void **state)
{
	(void)state;
	int ops = (int)tu_env_u64("SL_TEST_SEEDS", 20) * 500;
	run_threads(SL_SYNC_NO, NT, ops, 1, "conc-no");
}

/* ---- group commit ------------------------------------------------------ */

static _Atomic long g_datasyncs;

static int slow_fdatasync(int fd)
{
	atomic_fetch_add(&g_datasyncs, 1);
	usleep(300);
	return sl_io_default.fdatasync(fd);
}

static int slow_fsync(int fd)
{
	atomic_fetch_add(&g_datasyncs, 1);
	usleep(300);
	return sl_io_default.fsync(fd);
}

static struct sl_io g_slow_io;

typedef struct gc_arg {
	sl_db *db;
	int t, n;
	_Atomic long *errors;
} gc_arg;

static void *gc_main(void *p)
{
	gc_arg *a = p;
	uint8_t val[128];
	for (int i = 0; i < a->n; i++) {
		char k[32];
		snprintf(k, sizeof(k), "g%d/%d", a->t, i % 50);
		tu_fill_tagged(val, sizeof(val), (uint64_t)(a->t * 100000 + i));
		uint64_t seq = 0;
		int rc = sl_put(a->db, k, strlen(k), val, sizeof(val), &seq);
		sl_stats st;
		sl_stats_get(a->db, &st);
		if (rc != SL_OK || st.synced_seq < seq) {
			fprintf(stderr, "group commit: put = %d, seq %llu, synced_seq %llu\n", rc,
			        (unsigned long long)seq, (unsigned long long)st.synced_seq);
			atomic_fetch_add(a->errors, 1);
			break;
		}
	}
	return NULL;
}

static void test_group_commit(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp("group");
	assert_non_null(dir);
	g_slow_io = sl_io_default;
	g_slow_io.fdatasync = slow_fdatasync;
	g_slow_io.fsync = slow_fsync;
	sl_options o;
	sl_options_init(&o);
	o.sync = SL_SYNC_ALWAYS;
	o.segment_bytes = 8 << 20;
	o.io = &g_slow_io;
	o.quiet = tu_quiet();
	sl_db *db;
	assert_int_equal(sl_open(dir, &o, &db), SL_OK);
	sl_stats st0;
	assert_int_equal(sl_stats_get(db, &st0), SL_OK);
	long syncs0 = atomic_load(&g_datasyncs);

	enum { NTH = 8 };
	int per = (int)tu_env_u64("SL_TEST_SEEDS", 20) * 10;
	_Atomic long errors = 0;
	gc_arg args[NTH];
	pthread_t th[NTH];
	for (int t = 0; t < NTH; t++) {
		args[t] = (gc_arg){db, t, per, &errors};
		assert_int_equal(pthread_create(&th[t], NULL, gc_main, &args[t]), 0);
	}
	for (int t = 0; t < NTH; t++) {
		pthread_join(th[t], NULL);
	}
	assert_int_equal(atomic_load(&errors), 0);
	sl_stats st;
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	uint64_t puts = (uint64_t)NTH * (uint64_t)per;
	uint64_t fsyncs = st.fsyncs - st0.fsyncs;
	long seam = atomic_load(&g_datasyncs) - syncs0;
	print_message(
	    "group commit: %llu puts, stats.fsyncs %llu, seam fdatasync/fsync calls %ld\n",
	    (unsigned long long)puts, (unsigned long long)fsyncs, seam);
	assert_int_equal(st.last_seq, puts);
	assert_true(st.synced_seq >= puts);
	assert_true(fsyncs > 0);
	assert_true(fsyncs < puts);
	assert_true(seam > 0);
	assert_true((uint64_t)seam < puts);
	sl_close(db);

	/* All of it is there after a reopen. */
	o.io = NULL;
	assert_int_equal(sl_open(dir, &o, &db), SL_OK);
	for (int t = 0; t < NTH; t++) {
		for (int i = per - 50 < 0 ? 0 : per - 50; i < per; i++) {
			char k[32];
			snprintf(k, sizeof(k), "g%d/%d", t, i % 50);
			uint8_t val[128];
			tu_fill_tagged(val, sizeof(val), (uint64_t)(t * 100000 + i));
			void *v = NULL;
			size_t vl = 0;
			assert_int_equal(sl_get(db, k, strlen(k), &v, &vl), SL_OK);
			assert_int_equal(vl, sizeof(val));
			assert_memory_equal(v, val, vl);
			free(v);
		}
	}
	sl_close(db);
	tu_rm_rf(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_threads_everysec),
	    cmocka_unit_test(test_threads_always),
	    cmocka_unit_test(test_threads_no),
	    cmocka_unit_test(test_group_commit),
	};
	const char *filter = getenv("SL_TEST_FILTER"); /* e.g. "test_hint*" */
	if (filter != NULL) {
		cmocka_set_test_filter(filter);
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
