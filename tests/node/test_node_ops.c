/*
 * test_node_ops.c — every client operation against a real shiplogd on
 * 127.0.0.1: put/get/del, binary and empty values, TTL expiry, mget, scan
 * pages, stats, compact, ping, batches in order, limits, min_seq, and a
 * restart that keeps the data.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "nodeutil.h"

static char *root;
static nu_daemon d;
static sl_client *c;

static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp("node-ops");
	if (root == NULL) {
		return -1;
	}
	char dir[TU_PATH];
	snprintf(dir, sizeof(dir), "%s/data", root);
	const char *extra[] = {"--max-value-bytes",
	                       "1m",
	                       "--max-key-bytes",
	                       "1024",
	                       "--segment-bytes",
	                       "64k",
	                       "--repl-backlog-bytes",
	                       "0",
	                       NULL};
	if (nu_start(&d, dir, extra) != 0) {
		fprintf(stderr, "shiplogd did not start\n");
		return -1;
	}
	c = nu_client(&d);
	return c == NULL ? -1 : 0;
}

/* cmocka 1.1 prints a failed group teardown and still exits 0: its
 * checks (the server alive, a clean stop) reach the exit status here */
static int g_teardown_ok;

static int teardown(void **state)
{
	(void)state;
	sl_client_close(c);
	int st = nu_stop(&d, SIGTERM);
	if (st != 0) {
		nu_dump_log(&d);
	}
	tu_rm_rf(root);
	free(root);
	g_teardown_ok = st == 0;
	return g_teardown_ok ? 0 : -1;
}

static void test_ping(void **state)
{
	(void)state;
	assert_int_equal(sl_client_ping(c), SL_OK);
}

static void test_put_get_del(void **state)
{
	(void)state;
	uint64_t s1 = 0, s2 = 0, s3 = 0, gs = 0;
	assert_int_equal(sl_client_put(c, "alpha", 5, "one", 3, &s1), SL_OK);
	assert_true(s1 > 0);
	assert_int_equal(sl_client_put(c, "alpha", 5, "two", 3, &s2), SL_OK);
	assert_true(s2 > s1);
	void *v = NULL;
	size_t vl = 0;
	assert_int_equal(sl_client_get(c, "alpha", 5, &v, &vl, &gs), SL_OK);
	assert_int_equal(vl, 3);
	assert_memory_equal(v, "two", 3);
	assert_int_equal(gs, s2);
	free(v);
	assert_int_equal(sl_client_del(c, "alpha", 5, &s3), SL_OK);
	assert_true(s3 > s2);
	assert_int_equal(sl_client_get(c, "alpha", 5, &v, &vl, NULL), SL_ENOTFOUND);
	assert_int_equal(sl_client_del(c, "alpha", 5, NULL), SL_ENOTFOUND);
	assert_int_equal(sl_client_get(c, "never", 5, &v, &vl, NULL), SL_ENOTFOUND);
}

static void test_binary_and_empty(void **state)
{
	(void)state;
	uint8_t key[300], val[70000];
	tu_fill_tagged(key, sizeof(key), 1);
	tu_fill_tagged(val, sizeof(val), 2);
	key[0] = 0;
	val[0] = 0;
	val[100] = 0;
	assert_int_equal(sl_client_put(c, key, sizeof(key), val, sizeof(val), NULL), SL_OK);
	void *v = NULL;
	size_t vl = 0;
	assert_int_equal(sl_client_get(c, key, sizeof(key), &v, &vl, NULL), SL_OK);
	assert_int_equal(vl, sizeof(val));
	assert_memory_equal(v, val, sizeof(val));
	free(v);
	/* every byte value, and the empty value */
	uint8_t all[256];
	for (int i = 0; i < 256; i++) {
		all[i] = (uint8_t)i;
	}
	assert_int_equal(sl_client_put(c, all, sizeof(all), all, sizeof(all), NULL), SL_OK);
	assert_int_equal(sl_client_get(c, all, sizeof(all), &v, &vl, NULL), SL_OK);
	assert_int_equal(vl, 256);
	assert_memory_equal(v, all, 256);
	free(v);
	assert_int_equal(sl_client_put(c, "empty", 5, "", 0, NULL), SL_OK);
	v = NULL;
	assert_int_equal(sl_client_get(c, "empty", 5, &v, &vl, NULL), SL_OK);
	assert_non_null(v);
	assert_int_equal(vl, 0);
	free(v);
}

static void test_limits(void **state)
{
	(void)state;
	static uint8_t big[(1 << 20) + 1];
	void *v;
	size_t vl;
	assert_int_equal(sl_client_put(c, "", 0, "x", 1, NULL), SL_EINVAL);
	assert_string_equal(sl_client_errmsg(c), "empty key");
	assert_int_equal(sl_client_get(c, "", 0, &v, &vl, NULL), SL_EINVAL);
	assert_int_equal(sl_client_put(c, big, 1025, "x", 1, NULL), SL_ETOOBIG);
	assert_non_null(strstr(sl_client_errmsg(c), "limit 1024"));
	assert_int_equal(sl_client_put(c, "k", 1, big, sizeof(big), NULL), SL_ETOOBIG);
	assert_non_null(strstr(sl_client_errmsg(c), "value is"));
	/* exactly at the limits is fine */
	assert_int_equal(sl_client_put(c, big, 1024, big, sizeof(big) - 1, NULL), SL_OK);
	assert_int_equal(sl_client_get(c, big, 1024, &v, &vl, NULL), SL_OK);
	assert_int_equal(vl, sizeof(big) - 1);
	free(v);
	assert_int_equal(sl_client_del(c, big, 1024, NULL), SL_OK);
	/* nothing stored was touched by the refused requests */
	assert_int_equal(sl_client_get(c, "k", 1, &v, &vl, NULL), SL_ENOTFOUND);
	assert_int_equal(sl_client_ping(c), SL_OK);
}

static void test_ttl(void **state)
{
	(void)state;
	/* 2 s: readable at once even on a loaded machine (300 ms was not) */
	assert_int_equal(sl_client_put_ttl(c, "ttl", 3, "soon", 4, 2000, NULL), SL_OK);
	assert_int_equal(sl_client_put_ttl(c, "ttl-long", 8, "later", 5, 600000, NULL), SL_OK);
	void *v;
	size_t vl;
	assert_int_equal(sl_client_get(c, "ttl", 3, &v, &vl, NULL), SL_OK);
	free(v);
	nu_sleep_ms(2300);
	assert_int_equal(sl_client_get(c, "ttl", 3, &v, &vl, NULL), SL_ENOTFOUND);
	assert_int_equal(sl_client_get(c, "ttl-long", 8, &v, &vl, NULL), SL_OK);
	free(v);
}

static void test_mget(void **state)
{
	(void)state;
	assert_int_equal(sl_client_put(c, "m1", 2, "v1", 2, NULL), SL_OK);
	assert_int_equal(sl_client_put(c, "m3", 2, "v3", 2, NULL), SL_OK);
	const void *keys[] = {"m1", "m2", "m3", ""};
	size_t kl[] = {2, 2, 2, 0};
	sl_client_item *it = NULL;
	assert_int_equal(sl_client_mget(c, 4, keys, kl, &it), SL_OK);
	assert_int_equal(it[0].status, SL_OK);
	assert_int_equal(it[0].vlen, 2);
	assert_memory_equal(it[0].val, "v1", 2);
	assert_int_equal(it[1].status, SL_ENOTFOUND);
	assert_null(it[1].val);
	assert_int_equal(it[2].status, SL_OK);
	assert_memory_equal(it[2].val, "v3", 2);
	assert_int_equal(it[3].status, SL_EINVAL);
	sl_client_items_free(it, 4);
	assert_int_equal(sl_client_mget(c, 0, NULL, NULL, &it), SL_OK);
	sl_client_items_free(it, 0);
}

static void test_scan_pages(void **state)
{
	(void)state;
	char k[32], v[32];
	const int N = 537;
	for (int i = 0; i < N; i++) {
		snprintf(k, sizeof(k), "scan:%05d", i);
		snprintf(v, sizeof(v), "val%d", i);
		assert_int_equal(sl_client_put(c, k, strlen(k), v, strlen(v), NULL), SL_OK);
	}
	assert_int_equal(sl_client_put(c, "scan;", 5, "x", 1, NULL), SL_OK);
	assert_int_equal(sl_client_put(c, "scam", 4, "x", 1, NULL), SL_OK);
	/* a key deleted is not returned */
	assert_int_equal(sl_client_del(c, "scan:00007", 10, NULL), SL_OK);
	void *cur = NULL;
	size_t curlen = 0;
	int seen = 0, pages = 0, expect = 0;
	char last[32] = "";
	do {
		sl_client_item *it = NULL;
		size_t n = 0;
		void *next = NULL;
		size_t nextlen = 0;
		assert_int_equal(
		    sl_client_scan(c, "scan:", 5, 100, cur, curlen, 0, &it, &n, &next, &nextlen),
		    SL_OK);
		assert_true(n <= 100);
		for (size_t i = 0; i < n; i++) {
			if (expect == 7) {
				expect++;
			}
			snprintf(k, sizeof(k), "scan:%05d", expect);
			snprintf(v, sizeof(v), "val%d", expect);
			assert_int_equal(it[i].klen, strlen(k));
			assert_memory_equal(it[i].key, k, strlen(k));
			assert_int_equal(it[i].vlen, strlen(v));
			assert_memory_equal(it[i].val, v, strlen(v));
			assert_true(strcmp(k, last) > 0);
			snprintf(last, sizeof(last), "%s", k);
			expect++;
			seen++;
		}
		sl_client_items_free(it, n);
		free(cur);
		cur = next;
		curlen = nextlen;
		pages++;
		assert_true(pages < 20);
	} while (cur != NULL);
	assert_int_equal(seen, N - 1);
	assert_int_equal(pages, 6);

	/* keys_only, default limit */
	sl_client_item *it = NULL;
	size_t n = 0;
	assert_int_equal(sl_client_scan(c, "scan", 4, 0, NULL, 0, 1, &it, &n, &cur, &curlen),
	                 SL_OK);
	assert_int_equal(n, N - 1 + 1); /* scan:… and scan; */
	assert_null(cur);
	for (size_t i = 0; i < n; i++) {
		assert_null(it[i].val);
	}
	sl_client_items_free(it, n);
	/* no match */
	assert_int_equal(sl_client_scan(c, "zzz", 3, 10, NULL, 0, 0, &it, &n, &cur, &curlen),
	                 SL_OK);
	assert_int_equal(n, 0);
	assert_null(cur);
	sl_client_items_free(it, n);
}

static void test_stats_compact(void **state)
{
	(void)state;
	char k[16];
	/* overwrite to create dead bytes across 64 KiB segments */
	static uint8_t val[2000];
	for (int r = 0; r < 5; r++) {
		for (int i = 0; i < 100; i++) {
			snprintf(k, sizeof(k), "cmp%03d", i);
			assert_int_equal(sl_client_put(c, k, strlen(k), val, sizeof(val), NULL),
			                 SL_OK);
		}
	}
	sl_client_stats *st = NULL;
	assert_int_equal(sl_client_stats_get(c, &st), SL_OK);
	const sl_client_stat *role = sl_client_stats_find(st, "role");
	assert_non_null(role);
	assert_string_equal(role->text, "primary");
	const sl_client_stat *keys = sl_client_stats_find(st, "keys");
	assert_non_null(keys);
	assert_null(keys->text);
	assert_true(keys->value >= 100);
	uint64_t dead = sl_client_stats_find(st, "dead_bytes")->value;
	assert_true(dead > 0);
	assert_non_null(sl_client_stats_find(st, "last_seq"));
	assert_non_null(sl_client_stats_find(st, "uptime_s"));
	assert_null(sl_client_stats_find(st, "no-such-stat"));
	sl_client_stats_free(st);

	sl_client_set_timeout(c, 60000);
	sl_client_stats *res = NULL;
	assert_int_equal(sl_client_compact_stats(c, &res), SL_OK);
	/* what the run did: the CLI's "OK: reclaimed N bytes, segments A -> B" */
	const sl_client_stat *sb = sl_client_stats_find(res, "segments_before");
	const sl_client_stat *sa = sl_client_stats_find(res, "segments_after");
	const sl_client_stat *dl = sl_client_stats_find(res, "dead_bytes_left");
	assert_non_null(sl_client_stats_find(res, "reclaimed_bytes"));
	assert_non_null(sb);
	assert_non_null(sa);
	assert_non_null(dl);
	assert_true(sb->value >= 1 && sa->value >= 1);
	assert_true(dl->value < dead);
	sl_client_stats_free(res);
	assert_int_equal(sl_client_compact(c), SL_OK); /* the plain call, too */
	sl_client_set_timeout(c, 10000);
	assert_int_equal(sl_client_stats_get(c, &st), SL_OK);
	assert_true(sl_client_stats_find(st, "compactions")->value >= 2);
	assert_true(sl_client_stats_find(st, "dead_bytes")->value < dead);
	sl_client_stats_free(st);
	void *v;
	size_t vl;
	for (int i = 0; i < 100; i++) {
		snprintf(k, sizeof(k), "cmp%03d", i);
		assert_int_equal(sl_client_get(c, k, strlen(k), &v, &vl, NULL), SL_OK);
		assert_int_equal(vl, sizeof(val));
		free(v);
	}
}

static void test_batch_in_order(void **state)
{
	(void)state;
	sl_pipeline *p = NULL;
	assert_int_equal(sl_pipeline_new(c, &p), SL_OK);
	const sl_client_item *it = NULL;
	size_t n = 99;
	assert_int_equal(sl_pipeline_exec(p, &it, &n), SL_OK);
	assert_int_equal(n, 0);

	assert_int_equal(sl_pipeline_get(p, NULL, 0), SL_EINVAL);
	assert_int_equal(sl_pipeline_del(p, NULL, 0), SL_EINVAL);
	assert_int_equal(sl_pipeline_len(p), 0);
	assert_int_equal(sl_pipeline_put(p, "b1", 2, "x1", 2, 0), SL_OK);
	assert_int_equal(sl_pipeline_get(p, "b1", 2), SL_OK);
	assert_int_equal(sl_pipeline_put(p, "b1", 2, "x2", 2, 0), SL_OK);
	assert_int_equal(sl_pipeline_get(p, "b1", 2), SL_OK);
	assert_int_equal(sl_pipeline_put(p, "", 0, "bad", 3, 0), SL_OK); /* fails alone */
	assert_int_equal(sl_pipeline_ping(p), SL_OK);
	assert_int_equal(sl_pipeline_del(p, "b1", 2), SL_OK);
	assert_int_equal(sl_pipeline_get(p, "b1", 2), SL_OK);
	assert_int_equal(sl_pipeline_del(p, "b1", 2), SL_OK);
	assert_int_equal(sl_pipeline_put(p, "b2", 2, "", 0, 0), SL_OK);
	assert_int_equal(sl_pipeline_get(p, "b2", 2), SL_OK);
	assert_int_equal(sl_pipeline_len(p), 11);
	assert_int_equal(sl_pipeline_exec(p, &it, &n), SL_OK);
	assert_int_equal(n, 11);
	assert_int_equal(sl_pipeline_len(p), 0);
	assert_int_equal(it[0].status, SL_OK);
	assert_true(it[0].seq > 0);
	assert_int_equal(it[1].status, SL_OK);
	assert_memory_equal(it[1].val, "x1", 2);
	assert_int_equal(it[1].seq, it[0].seq);
	assert_int_equal(it[2].status, SL_OK);
	assert_true(it[2].seq > it[0].seq);
	assert_memory_equal(it[3].val, "x2", 2);
	assert_int_equal(it[4].status, SL_EINVAL);
	assert_int_equal(it[5].status, SL_OK);
	assert_int_equal(it[6].status, SL_OK);
	assert_true(it[6].seq > it[2].seq);
	assert_int_equal(it[7].status, SL_ENOTFOUND);
	assert_int_equal(it[8].status, SL_ENOTFOUND);
	assert_int_equal(it[9].status, SL_OK);
	assert_int_equal(it[10].status, SL_OK);
	assert_non_null(it[10].val);
	assert_int_equal(it[10].vlen, 0);

	/* a big pipeline */
	char k[32];
	for (int i = 0; i < 2000; i++) {
		snprintf(k, sizeof(k), "bp%d", i);
		assert_int_equal(sl_pipeline_put(p, k, strlen(k), k, strlen(k), 0), SL_OK);
	}
	assert_int_equal(sl_pipeline_exec(p, &it, &n), SL_OK);
	assert_int_equal(n, 2000);
	for (int i = 0; i < 2000; i++) {
		assert_int_equal(it[i].status, SL_OK);
		if (i > 0) {
			assert_true(it[i].seq > it[i - 1].seq);
		}
	}
	for (int i = 0; i < 2000; i++) {
		snprintf(k, sizeof(k), "bp%d", i);
		assert_int_equal(sl_pipeline_get(p, k, strlen(k)), SL_OK);
	}
	assert_int_equal(sl_pipeline_exec(p, &it, &n), SL_OK);
	for (int i = 0; i < 2000; i++) {
		snprintf(k, sizeof(k), "bp%d", i);
		assert_int_equal(it[i].status, SL_OK);
		assert_int_equal(it[i].vlen, strlen(k));
		assert_memory_equal(it[i].val, k, strlen(k));
	}
	sl_pipeline_free(p);
}

/* A batch of 1000 gets of one 1 MB value: the first fits the response,
 * the others get SL_ETOOBIG, and the server does not keep a copy of the
 * value per get meanwhile (it held all 1000, about 1 GB, before). */
static void test_batch_of_big_gets(void **state)
{
	(void)state;
	size_t big = 1000000;
	char *v = malloc(big);
	assert_non_null(v);
	memset(v, 'g', big);
	assert_int_equal(sl_client_put(c, "bigget", 6, v, big, NULL), SL_OK);
	free(v);
	long before = nu_hwm_kb(d.pid, 1);
	assert_true(before > 0);
	sl_pipeline *p = NULL;
	assert_int_equal(sl_pipeline_new(c, &p), SL_OK);
	for (int i = 0; i < 1000; i++) {
		assert_int_equal(sl_pipeline_get(p, "bigget", 6), SL_OK);
	}
	const sl_client_item *it = NULL;
	size_t n = 0;
	assert_int_equal(sl_pipeline_exec(p, &it, &n), SL_OK);
	assert_int_equal(n, 1000);
	/* as many whole values as fit the message limit (the server's
	 * --max-value-bytes + 1 MiB: two here), then SL_ETOOBIG for the rest */
	size_t fit = 0;
	while (fit < n && it[fit].status == SL_OK) {
		assert_int_equal(it[fit].vlen, big);
		fit++;
	}
	assert_true(fit >= 1 && fit <= 2);
	for (size_t i = fit; i < n; i++) {
		assert_int_equal(it[i].status, SL_ETOOBIG);
	}
	sl_pipeline_free(p);
	long after = nu_hwm_kb(d.pid, 0);
	if (after - before > 256 * 1024) {
		fail_msg("the server's peak RSS grew by %ld kB for one batch", after - before);
	}
}

/* A call's timeout holds after an earlier call with a long acks timeout
 * failed to send: the client used to raise its receive timeout by the acks
 * timeout before the send and restore it only after a receive, so once a
 * send failed every later call waited timeout + acks timeout (5.3 s here
 * instead of 0.3) for a server that did not answer. */
static void test_timeout_after_failed_send(void **state)
{
	(void)state;
	nu_daemon d2;
	char dir[TU_PATH];
	snprintf(dir, sizeof(dir), "%s/stopped", root);
	assert_int_equal(nu_start(&d2, dir, NULL), 0);
	sl_client *c2 = NULL;
	assert_int_equal(sl_client_open(d2.url, 300, &c2), SL_OK);
	assert_int_equal(sl_client_ping(c2), SL_OK);
	kill(d2.pid, SIGKILL); /* the connection goes: a send has nowhere to go */
	assert_true(nu_wait_exit(d2.pid, 5000) >= 0);
	sl_client_set_acks(c2, 1, 5000);
	int rc = sl_client_put(c2, "k", 1, "v", 1, NULL);
	assert_true(rc == SL_ETIMEDOUT || rc == SL_ECONN);
	sl_client_set_acks(c2, 0, 0);
	/* the server back on the same address: the client redials by itself */
	const char *args[] = {"--dir", d2.dir, "--listen", d2.url, NULL};
	d2.pid = nu_spawn_args(args, d2.log);
	assert_true(d2.pid > 0);
	rc = SL_ETIMEDOUT;
	/* while it starts, a call fails at once (refused: nothing listens),
	 * not after its timeout */
	for (int i = 0; i < 200 && rc != SL_OK; i++) {
		rc = sl_client_ping(c2);
		if (rc != SL_OK) {
			struct timespec nap = {0, 50 * 1000 * 1000};
			nanosleep(&nap, NULL);
		}
	}
	assert_int_equal(rc, SL_OK);
	assert_int_equal(nu_sigstop(d2.pid), 0); /* connected, answers nothing */
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	void *v = NULL;
	size_t vl = 0;
	rc = sl_client_get(c2, "k", 1, &v, &vl, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	kill(d2.pid, SIGCONT);
	assert_int_equal(rc, SL_ETIMEDOUT);
	long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	if (ms > 2000) {
		fail_msg("a call with a 300 ms timeout took %ld ms", ms);
	}
	/* The server first: nng 1.5.2's nng_close of a REQ socket whose last
	 * request timed out against a stopped-then-continued server hung for
	 * ever about once in 45 runs here (its reaper waits on the pipe; the
	 * main thread in nng_close; like upstream nng#1813).  With the connection
	 * gone first, 70 runs did not hang. */
	assert_int_equal(nu_stop(&d2, SIGTERM), 0);
	sl_client_close(c2);
}

static void test_min_seq(void **state)
{
	(void)state;
	uint64_t seq = 0;
	assert_int_equal(sl_client_put(c, "ms", 2, "v", 1, &seq), SL_OK);
	void *v;
	size_t vl;
	sl_client_set_min_seq(c, seq);
	assert_int_equal(sl_client_get(c, "ms", 2, &v, &vl, NULL), SL_OK);
	free(v);
	sl_client_set_min_seq(c, seq + 1000000);
	assert_int_equal(sl_client_get(c, "ms", 2, &v, &vl, NULL), SL_EBEHIND);
	sl_client_set_min_seq(c, 0);
	/* No follower: the write is made but not acknowledged in time. */
	sl_client_set_acks(c, 1, 100);
	seq = 0;
	assert_int_equal(sl_client_put(c, "ms", 2, "w", 1, &seq), SL_ETIMEDOUT);
	sl_client_set_acks(c, 0, 0);
	assert_true(seq > 0);
	assert_int_equal(sl_client_last_acks(c), 0);
	assert_int_equal(sl_client_get(c, "ms", 2, &v, &vl, NULL), SL_OK);
	assert_memory_equal(v, "w", 1);
	free(v);
}

static void test_restart_keeps_data(void **state)
{
	(void)state;
	uint64_t seq = 0;
	assert_int_equal(sl_client_put(c, "persist", 7, "yes", 3, &seq), SL_OK);
	sl_client_close(c);
	c = NULL;
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
	char dir[TU_PATH];
	snprintf(dir, sizeof(dir), "%s", d.dir);
	const char *extra[] = {"--max-value-bytes", "1m", "--max-key-bytes", "1024", NULL};
	assert_int_equal(nu_start(&d, dir, extra), 0);
	c = nu_client(&d);
	assert_non_null(c);
	void *v;
	size_t vl;
	uint64_t gs = 0;
	assert_int_equal(sl_client_get(c, "persist", 7, &v, &vl, &gs), SL_OK);
	assert_memory_equal(v, "yes", 3);
	assert_int_equal(gs, seq);
	free(v);
	assert_int_equal(sl_client_get(c, "bp1999", 6, &v, &vl, NULL), SL_OK);
	free(v);
	assert_int_equal(sl_client_get(c, "b1", 2, &v, &vl, NULL), SL_ENOTFOUND);
}

static void test_connection_refused(void **state)
{
	(void)state;
	int port = nu_free_port();
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	sl_client *x = NULL;
	assert_int_equal(sl_client_open(url, 500, &x), SL_ECONN);
	assert_null(x);
	assert_int_equal(sl_client_open("nonsense://x", 500, &x), SL_EINVAL);
	sl_client_close(NULL);
}

/* A batch short of its --acks (no follower here): SL_ETIMEDOUT with every
 * result, the queue emptied.  The results were dropped and the queue kept,
 * and executing it again made every write twice. */
static void test_batch_short_of_acks(void **state)
{
	(void)state;
	sl_client *ca = nu_client(&d);
	assert_non_null(ca);
	sl_client_set_acks(ca, 1, 300);
	sl_pipeline *p = NULL;
	assert_int_equal(sl_pipeline_new(ca, &p), SL_OK);
	assert_int_equal(sl_pipeline_put(p, "sa1", 3, "v1", 2, 0), SL_OK);
	assert_int_equal(sl_pipeline_put(p, "sa2", 3, "v2", 2, 0), SL_OK);
	const sl_client_item *it = NULL;
	size_t n = 0;
	assert_int_equal(sl_pipeline_exec(p, &it, &n), SL_ETIMEDOUT);
	assert_int_equal(n, 2);
	assert_int_equal(sl_pipeline_len(p), 0);
	assert_int_equal(it[0].status, SL_OK);
	assert_true(it[0].seq > 0);
	assert_int_equal(it[1].seq, it[0].seq + 1);
	assert_int_equal(sl_client_last_acks(ca), 0);
	uint64_t seq2 = it[1].seq;
	assert_int_equal(sl_pipeline_exec(p, &it, &n), SL_OK); /* nothing left to send */
	assert_int_equal(n, 0);
	void *v = NULL;
	size_t vl = 0;
	uint64_t gs = 0;
	assert_int_equal(sl_client_get(c, "sa2", 3, &v, &vl, &gs), SL_OK);
	free(v);
	assert_int_equal(gs, seq2); /* written once */

	/* short of acks again (n 2), then a round trip that fails (the
	 * server stopped past the timeout): n 0 and no items, the queue
	 * kept.  n and it were left from the exec before, it pointing at
	 * items that exec had freed. */
	assert_int_equal(sl_pipeline_put(p, "sa3", 3, "v3", 2, 0), SL_OK);
	assert_int_equal(sl_pipeline_put(p, "sa4", 3, "v4", 2, 0), SL_OK);
	assert_int_equal(sl_pipeline_exec(p, &it, &n), SL_ETIMEDOUT);
	assert_int_equal(n, 2);
	assert_int_equal(sl_pipeline_put(p, "sa5", 3, "v5", 2, 0), SL_OK);
	sl_client_set_timeout(ca, 300);
	assert_int_equal(nu_sigstop(d.pid), 0);
	int rc = sl_pipeline_exec(p, &it, &n);
	assert_int_equal(kill(d.pid, SIGCONT), 0);
	assert_int_equal(rc, SL_ETIMEDOUT);
	assert_int_equal(n, 0);
	assert_null(it);
	assert_int_equal(sl_pipeline_len(p), 1);
	sl_pipeline_free(p);
	sl_client_close(ca);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ping),
	    cmocka_unit_test(test_put_get_del),
	    cmocka_unit_test(test_binary_and_empty),
	    cmocka_unit_test(test_limits),
	    cmocka_unit_test(test_ttl),
	    cmocka_unit_test(test_mget),
	    cmocka_unit_test(test_scan_pages),
	    cmocka_unit_test(test_stats_compact),
	    cmocka_unit_test(test_batch_in_order),
	    cmocka_unit_test(test_batch_short_of_acks),
	    cmocka_unit_test(test_batch_of_big_gets),
	    cmocka_unit_test(test_timeout_after_failed_send),
	    cmocka_unit_test(test_min_seq),
	    cmocka_unit_test(test_restart_keeps_data),
	    cmocka_unit_test(test_connection_refused),
	};
	int failed = cmocka_run_group_tests(tests, setup, teardown);
	return failed != 0 || !g_teardown_ok ? 1 : 0;
}
