/*
 * test_repl_stop.c — SIGTERM of a primary while clients write to it and two
 * followers stream from it: it exits 0, its sockets close by themselves
 * (the 3 s watchdog against nng 1.5.2's close hang, nanomsg/nng#1543, does
 * not fire: before the sockets went quiet before closing, it fired in about
 * half of such stops), every acknowledged write is there after the
 * restart, and the followers, which see the connection close, converge
 * again.  Five stops.  A follower's own clean stop logs no warning (it
 * used to warn that its interrupted long poll had failed).  And a follower
 * stopped again and again while it streams exits each time without the
 * watchdog: closing its fetch socket at exit could hang nng's one reaper
 * thread and with it every later close (3 of 30 such stops before).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>

#include "replutil.h"

#define STOPS   5
#define WRITERS 4

static char *root;
static ru_node P, F1, F2, F3, W;

typedef struct writer {
	pthread_t t;
	int id;
	char url[64];
	atomic_int stop;
	uint64_t acked; /* puts answered OK: keys w<id>-0 .. w<id>-(acked-1) */
} writer;

/* Puts w<id>-<i> = i for i = 0, 1, ... until told to stop or the server
 * stops answering; records how many were acknowledged. */
static void *writer_main(void *arg)
{
	writer *w = arg;
	sl_client *c = NULL;
	if (sl_client_open(w->url, 2000, &c) != SL_OK) {
		return NULL;
	}
	while (!atomic_load(&w->stop)) {
		char k[32], v[32];
		int kl = snprintf(k, sizeof(k), "w%d-%llu", w->id, (unsigned long long)w->acked);
		int vl = snprintf(v, sizeof(v), "%llu", (unsigned long long)w->acked);
		if (sl_client_put(c, k, (size_t)kl, v, (size_t)vl, NULL) != SL_OK) {
			break; /* stopping: ESHUTDOWN, a reset connection, a timeout */
		}
		w->acked++;
	}
	sl_client_close(c);
	return NULL;
}

static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp("repl-stop");
	if (root == NULL) {
		return -1;
	}
	char dir[TU_PATH];
	/* small segments: rotations and compactions while nodes stop */
	static const char *const small[] = {"--segment-bytes", "64k", NULL};
	snprintf(dir, sizeof(dir), "%s/p", root);
	if (ru_start(&P, dir, NULL, small) != 0) {
		return -1;
	}
	snprintf(dir, sizeof(dir), "%s/f1", root);
	if (ru_start(&F1, dir, P.rurl, NULL) != 0) {
		return -1;
	}
	snprintf(dir, sizeof(dir), "%s/f2", root);
	return ru_start(&F2, dir, P.rurl, NULL);
}

static int teardown(void **state)
{
	(void)state;
	nu_stop(&F1.d, SIGTERM);
	nu_stop(&F2.d, SIGTERM);
	nu_stop(&P.d, SIGTERM);
	nu_stop(&W.d, SIGTERM);
	ru_rm_root(root);
	return 0;
}

/* Occurrences of s in the file at path. */
static int count_in_file(const char *path, const char *s)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	if (tu_read_file(path, &buf, &len) != 0) {
		return -1;
	}
	int n = 0;
	size_t sl = strlen(s);
	for (size_t i = 0; i + sl <= len; i++) {
		if (memcmp(buf + i, s, sl) == 0) {
			n++;
		}
	}
	free(buf);
	return n;
}

static void test_sigterm_under_load(void **state)
{
	(void)state;
	ru_node *f[] = {&F1, &F2};
	writer w[WRITERS];
	uint64_t total[WRITERS] = {0};
	for (int round = 0; round < STOPS; round++) {
		for (int i = 0; i < WRITERS; i++) {
			memset(&w[i], 0, sizeof(w[i]));
			w[i].id = i;
			w[i].acked = total[i];
			snprintf(w[i].url, sizeof(w[i].url), "%s", P.d.url);
			assert_int_equal(pthread_create(&w[i].t, NULL, writer_main, &w[i]), 0);
		}
		/* the followers stream while the writers write */
		assert_true(ru_wait_stat_positive(&F1, "repl_fetches", 5000) > 0);
		nu_sleep_ms(300);
		int st = nu_stop(&P.d, SIGTERM);
		for (int i = 0; i < WRITERS; i++) {
			atomic_store(&w[i].stop, 1);
			pthread_join(w[i].t, NULL);
			total[i] = w[i].acked;
		}
		if (st != 0) {
			nu_dump_log(&P.d);
		}
		assert_int_equal(st, 0);
		assert_int_equal(ru_start(&P, NULL, NULL, NULL), 0);
	}
	/* One log for all the primary's runs (appended). */
	int hangs = count_in_file(P.d.log, "did not close its sockets");
	int clean = count_in_file(P.d.log, "stopped cleanly");
	if (hangs != 0 || clean != STOPS) {
		nu_dump_log(&P.d);
	}
	assert_int_equal(hangs, 0);
	assert_int_equal(clean, STOPS);
	/* Every acknowledged write survived the stops ... */
	sl_client *c = ru_client(&P);
	assert_non_null(c);
	uint64_t writes = 0;
	for (int i = 0; i < WRITERS; i++) {
		writes += total[i];
		for (uint64_t j = 0; j < total[i]; j++) {
			char k[32], want[32];
			int kl = snprintf(k, sizeof(k), "w%d-%llu", i, (unsigned long long)j);
			snprintf(want, sizeof(want), "%llu", (unsigned long long)j);
			void *v = NULL;
			size_t vl = 0;
			assert_int_equal(sl_client_get(c, k, (size_t)kl, &v, &vl, NULL), SL_OK);
			assert_int_equal(vl, strlen(want));
			assert_memory_equal(v, want, vl);
			free(v);
		}
	}
	sl_client_close(c);
	assert_true(writes > 0);
	/* ... and the followers, which saw the primary go five times, converge. */
	ru_assert_converged(&P, f, 2);
}

static void test_follower_stop_is_quiet(void **state)
{
	(void)state;
	char dir[TU_PATH];
	snprintf(dir, sizeof(dir), "%s/f3", root);
	assert_int_equal(ru_start(&F3, dir, P.rurl, NULL), 0);
	ru_node *f[] = {&F3};
	ru_load(&P, "q", 50, 1);
	ru_assert_converged(&P, f, 1);
	/* its long poll is parked on the primary now */
	nu_sleep_ms(200);
	assert_int_equal(nu_stop(&F3.d, SIGTERM), 0);
	int warns = count_in_file(F3.d.log, " warn ");
	int errors = count_in_file(F3.d.log, " error ");
	if (warns != 0 || errors != 0) {
		nu_dump_log(&F3.d);
	}
	assert_int_equal(warns, 0);
	assert_int_equal(errors, 0);
	assert_int_equal(count_in_file(F3.d.log, "stopped cleanly"), 1);
}

static void test_follower_stops_while_streaming(void **state)
{
	(void)state;
	writer w[2];
	for (int i = 0; i < 2; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].id = 100 + i;
		snprintf(w[i].url, sizeof(w[i].url), "%s", P.d.url);
		assert_int_equal(pthread_create(&w[i].t, NULL, writer_main, &w[i]), 0);
	}
	char dir[TU_PATH];
	snprintf(dir, sizeof(dir), "%s/f4", root);
	ru_node F4;
	memset(&F4, 0, sizeof(F4));
	int stops = 12;
	for (int i = 0; i < stops; i++) {
		static const char *const small[] = {"--segment-bytes", "64k", NULL};
		assert_int_equal(ru_start(&F4, i == 0 ? dir : NULL, i == 0 ? P.rurl : NULL, small),
		                 0);
		assert_true(ru_wait_stat_positive(&F4, "repl_fetches", 5000) > 0);
		nu_sleep_ms(300 + 100 * (i % 7));
		assert_int_equal(nu_stop(&F4.d, SIGTERM), 0);
	}
	for (int i = 0; i < 2; i++) {
		atomic_store(&w[i].stop, 1);
		pthread_join(w[i].t, NULL);
	}
	int hangs = count_in_file(F4.d.log, "did not close its sockets");
	int clean = count_in_file(F4.d.log, "stopped cleanly");
	if (hangs != 0 || clean != stops) {
		nu_dump_log(&F4.d);
	}
	assert_int_equal(hangs, 0);
	assert_int_equal(clean, stops);
}

/* WAIT and --acks writes for a follower that never comes, then SIGTERM:
 * the stop answers them with the count so far after a short grace and
 * exits at once.  A WAIT blocks a worker thread, which nothing woke: the
 * stop took the whole 30 s drain, then the watchdog's forced exit. */
typedef struct waiter {
	pthread_t t;
	char url[64];
	int acks_write; /* 1: a put with --acks 1; 0: WAIT 1; 2: WAIT 1 for 3e9 ms
	                 * on a handle of 300 ms (the wait's own time counts) */
	int rc;
	uint32_t acks;
	uint64_t ms;
} waiter;

static void *waiter_main(void *arg)
{
	waiter *w = arg;
	sl_client *c = NULL;
	w->rc = sl_client_open(w->url, w->acks_write == 2 ? 300 : 90000, &c);
	if (w->rc != SL_OK) {
		return NULL;
	}
	uint64_t t0 = tu_mono_ms();
	if (w->acks_write == 1) {
		sl_client_set_acks(c, 1, 60000);
		w->rc = sl_client_put(c, "wk", 2, "v", 1, NULL);
	} else {
		/* 3e9 ms is past INT_MAX: it went negative, and the handle's
		 * 300 ms cut the wait short */
		w->rc = sl_client_wait(c, 1, 0, w->acks_write == 2 ? 3000000000u : 60000, &w->acks);
	}
	w->ms = tu_mono_ms() - t0;
	sl_client_close(c);
	return NULL;
}

static void test_sigterm_during_wait(void **state)
{
	(void)state;
	char dir[TU_PATH];
	snprintf(dir, sizeof(dir), "%s/w", root);
	assert_int_equal(ru_start(&W, dir, NULL, NULL), 0);
	waiter w[3];
	for (int i = 0; i < 3; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		snprintf(w[i].url, sizeof(w[i].url), "%s", W.d.url);
		w[i].acks_write = i;
		assert_int_equal(pthread_create(&w[i].t, NULL, waiter_main, &w[i]), 0);
	}
	nu_sleep_ms(500); /* both are waiting on the server now */
	uint64_t t0 = tu_mono_ms();
	assert_int_equal(nu_stop(&W.d, SIGTERM), 0);
	uint64_t stop_ms = tu_mono_ms() - t0;
	for (int i = 0; i < 3; i++) {
		pthread_join(w[i].t, NULL);
	}
	if (stop_ms > 10000) {
		nu_dump_log(&W.d);
		fail_msg("the stop took %llu ms", (unsigned long long)stop_ms);
	}
	assert_int_equal(count_in_file(W.d.log, "did not close its sockets"), 0);
	assert_int_equal(count_in_file(W.d.log, "still running"), 0);
	/* WAIT answers (success, 0 acks); the write is made, its acks short */
	assert_int_equal(w[0].rc, SL_OK);
	assert_int_equal(w[0].acks, 0);
	assert_int_equal(w[1].rc, SL_ETIMEDOUT);
	assert_true(w[0].ms < 10000 && w[1].ms < 10000);
	if (w[2].rc != SL_OK) {
		fail_msg("WAIT for 3e9 ms: %s after %llu ms", sl_client_strerror(w[2].rc),
		         (unsigned long long)w[2].ms);
	}
	assert_int_equal(w[2].acks, 0);
	assert_true(w[2].ms >= 500);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sigterm_under_load),
	    cmocka_unit_test(test_follower_stop_is_quiet),
	    cmocka_unit_test(test_follower_stops_while_streaming),
	    cmocka_unit_test(test_sigterm_during_wait),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
