/*
 * test_repl_failover.c — kill the primary (SIGKILL) under --acks 1 writes,
 * promote the most advanced follower, re-point the other (partial: it is
 * not ahead of the promotion seq) and the old primary, which holds an
 * unreplicated tail (full resync).  No acknowledged write is lost and all
 * three digests end equal.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include "replutil.h"

static char *root;
static ru_node P, F1, F2;
static ru_node A, C; /* test_lag_ms_and_counters_across_a_resync's own */
static ru_node D, E; /* test_promotion_answers_parked_reads's own */
static ru_node G, H; /* test_demotion_answers_writes_waiting_for_acks's own */

#define NKEYS 400

static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp("repl-failover");
	if (root == NULL) {
		return -1;
	}
	char dir[TU_PATH];
	const char *ex[] = {"--segment-bytes", "64k", NULL};
	snprintf(dir, sizeof(dir), "%s/p", root);
	if (ru_start(&P, dir, NULL, ex) != 0) {
		return -1;
	}
	snprintf(dir, sizeof(dir), "%s/f1", root);
	if (ru_start(&F1, dir, P.rurl, ex) != 0) {
		return -1;
	}
	snprintf(dir, sizeof(dir), "%s/f2", root);
	if (ru_start(&F2, dir, P.rurl, ex) != 0) {
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	ru_node *all[] = {&H, &G, &E, &D, &C, &A, &F2, &F1, &P};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		if (all[i]->d.pid > 0) {
			kill(all[i]->d.pid, SIGCONT);
		}
		nu_stop(&all[i]->d, SIGTERM);
	}
	ru_rm_root(root);
	return 0;
}

/* `follow` refuses a URL nng can never dial (an unknown scheme, port
 * 99999) and the node's own replication URL: each used to answer OK and
 * demote the primary, which then retried for ever (its own URL: every write
 * was refused, sent to itself). */
static void test_follow_refuses_unusable_urls(void **state)
{
	(void)state;
	sl_client *c = ru_client(&P);
	assert_non_null(c);
	/* its own replication URL also by another name for the address (it
	 * answered OK, and counted itself as its own connected follower), and
	 * its own client URL */
	char self_alias[80];
	snprintf(self_alias, sizeof(self_alias), "tcp://localhost:%d", P.rport);
	const char *bad[] = {"foo://bar", "tcp://127.0.0.1:99999", P.rurl, self_alias, P.d.url};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char hid[33];
		int rc = sl_client_follow(c, bad[i], hid);
		if (rc != SL_EINVAL) {
			fail_msg("follow %s: %s (%s)", bad[i], sl_client_strerror(rc),
			         sl_client_errmsg(c));
		}
	}
	char role[32];
	ru_stat(&P, "role", role, sizeof role);
	assert_string_equal(role, "primary");
	assert_int_equal(sl_client_put(c, "still", 5, "primary", 7, NULL), SL_OK);
	sl_client_close(c);
}

/* A primary sent back to a lower seq by a full resync, then promoted again.
 * lag_ms came from the write times of its earlier stint (its new writes,
 * at seqs it had used before, were not noted): 37 s of lag for a write
 * 0.5 s old.  And the engine's counters (puts, fsyncs) restarted from the
 * new store's, going back while the process lived. */
static void test_lag_ms_and_counters_across_a_resync(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&A, root, "a", NULL, NULL), 0);
	assert_int_equal(ru_start_in(&C, root, "c", A.rurl, NULL), 0);
	ru_load(&A, "one", 10, 0);
	ru_node *fc[] = {&C};
	ru_assert_converged(&A, fc, 1);
	assert_int_equal(nu_stop(&C.d, SIGTERM), 0);
	ru_load(&A, "two", 300, 0); /* A notes write times up to seq 310 */
	uint64_t puts0 = ru_stat(&A, "puts", NULL, 0);
	assert_true(puts0 >= 250 && puts0 != UINT64_MAX);
	/* C back, its primary unreachable, promoted: a history at seq 10 */
	assert_int_equal(ru_start(&C, NULL, "tcp://127.0.0.1:1", NULL), 0);
	char hid[33];
	sl_client *cc = ru_client(&C), *ca = ru_client(&A);
	assert_non_null(cc);
	assert_non_null(ca);
	assert_int_equal(sl_client_promote(cc, hid), SL_OK);
	/* A follows it: ahead, so a full resync down to seq 10 */
	assert_int_equal(sl_client_follow(ca, C.rurl, hid), SL_OK);
	assert_true(ru_wait_stat_positive(&A, "resyncs_full", 20000) >= 1);
	assert_int_equal(ru_wait_applied(&A, ru_last_seq(&C), 20000), 0);
	uint64_t puts1 = ru_stat(&A, "puts", NULL, 0);
	if (puts1 < puts0) {
		fail_msg("puts went from %llu to %llu across the resync", (unsigned long long)puts0,
		         (unsigned long long)puts1);
	}
	/* A primary again, C its follower */
	assert_int_equal(sl_client_promote(ca, hid), SL_OK);
	assert_int_equal(sl_client_follow(cc, A.rurl, hid), SL_OK);
	usleep(1500 * 1000);
	assert_int_equal(sl_client_put(ca, "after1", 6, "v", 1, NULL), SL_OK);
	ru_assert_converged(&A, fc, 1);
	assert_int_equal(nu_sigstop(C.d.pid), 0);
	assert_int_equal(sl_client_put(ca, "after2", 6, "v", 1, NULL), SL_OK);
	uint64_t lag = ru_stat(&A, "follower.0.lag_ms", NULL, 0);
	uint64_t recs = ru_stat(&A, "follower.0.lag_records", NULL, 0);
	kill(C.d.pid, SIGCONT);
	sl_client_close(ca);
	sl_client_close(cc);
	assert_int_equal(recs, 1);
	if (lag > 500) {
		fail_msg("lag_ms %llu for a write just made", (unsigned long long)lag);
	}
}

typedef struct parked_get {
	ru_node *n;
	uint64_t min_seq;
	int rc;
	uint64_t done_ms; /* tu_mono_ms() when answered */
} parked_get;

static void *parked_get_main(void *arg)
{
	parked_get *g = arg;
	sl_client *c = ru_client(g->n);
	g->rc = SL_ECONN;
	if (c != NULL) {
		sl_client_set_min_seq(c, g->min_seq);
		void *v = NULL;
		size_t vl = 0;
		g->rc = sl_client_get(c, "k", 1, &v, &vl, NULL);
		free(v);
		sl_client_close(c);
	}
	g->done_ms = tu_mono_ms();
	return NULL;
}

/* A read parked on a follower for a --min-seq it has not applied is
 * answered when the follower is promoted (a primary has everything it
 * will have: behind), not at the end of its wait. */
static void test_promotion_answers_parked_reads(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&D, root, "d", NULL, NULL), 0);
	const char *ex[] = {"--min-seq-wait-ms", "20000", NULL};
	assert_int_equal(ru_start_in(&E, root, "e", D.rurl, ex), 0);
	ru_load(&D, "p", 10, 0);
	ru_node *fe[] = {&E};
	ru_assert_converged(&D, fe, 1);
	parked_get g = {&E, ru_last_seq(&D) + 1000, 1, 0};
	uint64_t waits0 = ru_stat(&E, "repl_min_seq_waits", NULL, 0);
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, parked_get_main, &g), 0);
	for (int t = 0; t < 250 && ru_stat(&E, "repl_min_seq_waits", NULL, 0) == waits0; t++) {
		nu_sleep_ms(20);
	}
	assert_true(ru_stat(&E, "repl_min_seq_waits", NULL, 0) > waits0);
	sl_client *ce = ru_client(&E);
	assert_non_null(ce);
	char hid[33];
	assert_int_equal(sl_client_promote(ce, hid), SL_OK);
	uint64_t promoted_ms = tu_mono_ms();
	sl_client_close(ce);
	pthread_join(th, NULL);
	assert_int_equal(g.rc, SL_EBEHIND);
	if (g.done_ms > promoted_ms + 800) {
		fail_msg("the parked read was answered %llu ms after the promotion",
		         (unsigned long long)(g.done_ms - promoted_ms));
	}
}

typedef struct acked_put {
	ru_node *n;
	int rc;
	int acks;
	uint64_t done_ms; /* tu_mono_ms() when answered */
} acked_put;

static void *acked_put_main(void *arg)
{
	acked_put *a = arg;
	sl_client *c = ru_client(a->n);
	a->rc = SL_ECONN;
	if (c != NULL) {
		sl_client_set_timeout(c, 60000);
		sl_client_set_acks(c, 1, 30000);
		a->rc = sl_client_put(c, "k", 1, "from-g", 6, NULL);
		a->acks = sl_client_last_acks(c);
		sl_client_close(c);
	}
	a->done_ms = tu_mono_ms();
	return NULL;
}

/* A write waiting for --acks on a primary is answered when the node is
 * re-pointed (with the acks it had), not later: its seq means nothing
 * once the node follows another history.  G's write (seq s) waited with
 * no follower left (H promoted at s - 1); H took its own seq s; G followed
 * H (resyncing fully: the write is gone), was promoted again and H
 * re-pointed at it: H's first fetch reported seq s, and G answered the
 * lost write "acknowledged by 1" (a review in the twenty-seventh
 * session). */
static void test_demotion_answers_writes_waiting_for_acks(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&G, root, "g", NULL, NULL), 0);
	assert_int_equal(ru_start_in(&H, root, "h", G.rurl, NULL), 0);
	uint64_t base = ru_load(&G, "p", 10, 0);
	ru_node *fh[] = {&H}, *fg[] = {&G};
	ru_assert_converged(&G, fh, 1);
	ru_promote(&H); /* G's write below gets no follower's ack */
	acked_put a = {&G, 1, -1, 0};
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, acked_put_main, &a), 0);
	for (int t = 0; t < 250 && ru_last_seq(&G) <= base; t++) {
		nu_sleep_ms(20);
	}
	if (ru_last_seq(&G) != base + 1) { /* written, waiting for its ack */
		fail_msg("G's last seq %llu; the write: %s (answered: %d)",
		         (unsigned long long)ru_last_seq(&G), sl_client_strerror(a.rc),
		         a.done_ms != 0);
	}
	sl_client *c = ru_client(&H);
	assert_non_null(c);
	assert_int_equal(sl_client_put(c, "k", 1, "from-h", 6, NULL), SL_OK);
	sl_client_close(c);
	nu_sleep_ms(200);
	assert_int_equal(a.done_ms, 0); /* still waiting */
	uint64_t follow_ms = tu_mono_ms();
	ru_follow(&G, &H);
	/* G resyncs fully (H's seq s replaces G's): its applied seq equals
	 * H's before that, so wait for the resync itself */
	assert_true(ru_wait_stat_positive(&G, "resyncs_full", 30000) > 0);
	ru_assert_converged(&H, fg, 1);
	ru_promote(&G);
	ru_follow(&H, &G);
	ru_assert_converged(&G, fh, 1); /* H reported seq s to G */
	pthread_join(th, NULL);
	if (a.rc == SL_OK) {
		fail_msg("the write G lost was answered OK with %d ack(s)", a.acks);
	}
	assert_int_equal(a.rc, SL_ETIMEDOUT);
	assert_int_equal(a.acks, 0);
	if (a.done_ms > follow_ms + 5000) {
		fail_msg("the write was answered %llu ms after its node was re-pointed",
		         (unsigned long long)(a.done_ms - follow_ms));
	}
	void *v = NULL;
	size_t vl = 0;
	c = ru_client(&G);
	assert_non_null(c);
	assert_int_equal(sl_client_get(c, "k", 1, &v, &vl, NULL), SL_OK);
	assert_int_equal(vl, 6);
	assert_memory_equal(v, "from-h", 6);
	free(v);
	sl_client_close(c);
}

static void test_failover(void **state)
{
	(void)state;
	/* acknowledged[i]: the last value of key i whose write got acks >= 1 */
	static int acked[NKEYS];
	memset(acked, -1, sizeof(acked));
	sl_client *c = ru_client(&P);
	assert_non_null(c);
	sl_client_set_acks(c, 1, 5000);
	char k[32], v[32];
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < NKEYS; i++) {
			snprintf(k, sizeof(k), "fo%04d", i);
			snprintf(v, sizeof(v), "r%d-%d", round, i);
			int rc = sl_client_put(c, k, strlen(k), v, strlen(v), NULL);
			if (rc == SL_OK && sl_client_last_acks(c) >= 1) {
				acked[i] = round;
			}
		}
	}
	int nacked = 0;
	for (int i = 0; i < NKEYS; i++) {
		nacked += acked[i] >= 0;
	}
	assert_true(nacked > 0); /* else "no acknowledged write lost" checks nothing */
	/* An unreplicated tail on the primary: followers paused, writes
	 * without acks, then the primary dies. */
	assert_int_equal(nu_sigstop(F1.d.pid), 0);
	assert_int_equal(nu_sigstop(F2.d.pid), 0);
	sl_client_set_acks(c, 0, 0);
	/* The followers' parked fetches are answered by this first write
	 * (its reply waits in their sockets); nothing asks for the rest. */
	nu_sleep_ms(100);
	assert_int_equal(sl_client_put(c, "bait", 4, "b", 1, NULL), SL_OK);
	nu_sleep_ms(300);
	for (int i = 0; i < 50; i++) {
		snprintf(k, sizeof(k), "tail%04d", i);
		assert_int_equal(sl_client_put(c, k, strlen(k), "lost", 4, NULL), SL_OK);
	}
	sl_client_close(c);
	kill(P.d.pid, SIGKILL);
	nu_wait_exit(P.d.pid, 5000);
	P.d.pid = -1;
	kill(F1.d.pid, SIGCONT);
	kill(F2.d.pid, SIGCONT);

	/* promote the follower that applied the most */
	uint64_t a1 = ru_stat(&F1, "applied_seq", NULL, 0);
	uint64_t a2 = ru_stat(&F2, "applied_seq", NULL, 0);
	ru_node *np = a1 >= a2 ? &F1 : &F2, *other = a1 >= a2 ? &F2 : &F1;
	c = ru_client(np);
	assert_non_null(c);
	char hid[33];
	assert_int_equal(sl_client_promote(c, hid), SL_OK);
	assert_int_equal(strlen(hid), 32);
	sl_client_close(c);
	char role[32];
	ru_stat(np, "role", role, sizeof(role));
	assert_string_equal(role, "primary");

	/* re-point the other follower: it continues without a full resync */
	c = ru_client(other);
	assert_non_null(c);
	assert_int_equal(sl_client_follow(c, np->rurl, NULL), SL_OK);
	sl_client_close(c);
	/* new writes on the new primary */
	ru_load(np, "new", 500, 0);
	/* the old primary comes back as a follower of the new one */
	snprintf(P.follow, sizeof(P.follow), "%s", np->rurl);
	assert_int_equal(ru_start(&P, NULL, NULL, NULL), 0);
	ru_node *fs[] = {other, &P};
	ru_assert_converged(np, fs, 2);
	assert_int_equal(ru_stat(other, "resyncs_full", NULL, 0), 0);
	assert_true(ru_stat(&P, "resyncs_full", NULL, 0) >= 1);

	/* no acknowledged write lost; the unreplicated tail is gone */
	c = ru_client(np);
	assert_non_null(c);
	for (int i = 0; i < NKEYS; i++) {
		if (acked[i] < 0) {
			continue;
		}
		snprintf(k, sizeof(k), "fo%04d", i);
		void *got = NULL;
		size_t gl = 0;
		assert_int_equal(sl_client_get(c, k, strlen(k), &got, &gl, NULL), SL_OK);
		int round = -1, idx = -1;
		char buf[32];
		snprintf(buf, sizeof(buf), "%.*s", (int)gl, (char *)got);
		assert_int_equal(sscanf(buf, "r%d-%d", &round, &idx), 2);
		assert_true(round >= acked[i]);
		free(got);
	}
	sl_client_close(c);
	c = ru_client(&P);
	assert_non_null(c);
	void *got = NULL;
	size_t gl = 0;
	assert_int_equal(sl_client_get(c, "tail0000", 8, &got, &gl, NULL), SL_ENOTFOUND);
	/* the old primary is read-only now and names the new one */
	assert_int_equal(sl_client_put(c, "x", 1, "y", 1, NULL), SL_EREADONLY);
	if (strcmp(sl_client_primary(c), np->d.url) != 0) {
		fail_msg("primary named %s (%s); new primary: client %s repl %s",
		         sl_client_primary(c), sl_client_errmsg(c), np->d.url, np->rurl);
	}
	sl_client_close(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_follow_refuses_unusable_urls),
	    cmocka_unit_test(test_lag_ms_and_counters_across_a_resync),
	    cmocka_unit_test(test_promotion_answers_parked_reads),
	    cmocka_unit_test(test_demotion_answers_writes_waiting_for_acks),
	    cmocka_unit_test(test_failover),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
