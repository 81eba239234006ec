/*
 * test_repl_table.c — the primary's follower table: a follower that stops
 * fetching counts as disconnected after --repl-timeout-ms and is dropped
 * from the table (and the stats) after 10 times that; one that comes back
 * is listed again.  A node whose role changes starts with an empty table:
 * positions followers reported to it in an earlier stint as primary never
 * count as acks for its new writes.  --min-replicas refuses writes while
 * too few followers are connected.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include "replutil.h"

static char *root;
static ru_node P, F;
static ru_node A, B, G; /* test_role_change_clears_the_table's own */
static ru_node M, MF;   /* test_min_replicas's own */
static ru_node G2;      /* test_a_follower_keeps_no_table's own */

static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp("repl-table");
	if (root == NULL) {
		return -1;
	}
	char dir[TU_PATH];
	const char *pex[] = {"--repl-timeout-ms", "200", NULL};
	snprintf(dir, sizeof(dir), "%s/p", root);
	if (ru_start(&P, dir, NULL, pex) != 0) {
		return -1;
	}
	snprintf(dir, sizeof(dir), "%s/f", root);
	if (ru_start(&F, dir, P.rurl, NULL) != 0) {
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	ru_node *all[] = {&G2, &MF, &M, &B, &G, &A, &F, &P};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		if (all[i]->d.pid > 0) {
			kill(all[i]->d.pid, SIGCONT);
		}
		nu_stop(&all[i]->d, SIGTERM);
	}
	ru_rm_root(root);
	return 0;
}

/* Polls P's stat name until it equals want (up to ms).  The last value. */
static uint64_t wait_stat(const char *name, uint64_t want, int ms)
{
	uint64_t v = UINT64_MAX;
	for (int waited = 0; waited <= ms; waited += 50) {
		if ((v = ru_stat(&P, name, NULL, 0)) == want) {
			break;
		}
		usleep(50 * 1000);
	}
	return v;
}

static void test_gone_follower_is_dropped(void **state)
{
	(void)state;
	ru_node *f[] = {&F};
	ru_load(&P, "t", 100, 1);
	ru_assert_converged(&P, f, 1);
	assert_int_equal(wait_stat("followers", 1, 5000), 1);
	assert_int_equal(wait_stat("followers_connected", 1, 5000), 1);
	nu_stop(&F.d, SIGTERM);
	/* Disconnected first (0.2 s), still listed ... */
	assert_int_equal(wait_stat("followers_connected", 0, 5000), 0);
	assert_int_equal(ru_stat(&P, "followers", NULL, 0), 1);
	/* ... then forgotten (2 s, checked by the primary once a second). */
	assert_int_equal(wait_stat("followers", 0, 10000), 0);
	/* Back: listed again, and it catches up. */
	ru_load(&P, "u", 100, 1);
	assert_int_equal(ru_start(&F, NULL, NULL, NULL), 0);
	ru_assert_converged(&P, f, 1);
	assert_int_equal(wait_stat("followers", 1, 5000), 1);
	assert_int_equal(wait_stat("followers_connected", 1, 5000), 1);
}

/* A node pointed at a follower: the follower refuses its fetches, and
 * counts it nowhere (it showed as the follower's connected follower, with
 * a lag, in stats and metrics). */
static void test_a_follower_keeps_no_table(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&G2, root, "g2", F.rurl, NULL), 0);
	usleep(1500 * 1000);
	char st[32];
	ru_stat(&G2, "repl_state", st, sizeof(st));
	assert_string_equal(st, "connecting");
	assert_int_equal(ru_stat(&F, "followers", NULL, 0), 0);
	assert_int_equal(ru_stat(&F, "followers_connected", NULL, 0), 0);
	assert_int_equal(nu_stop(&G2.d, SIGTERM), 0);
}

/* --min-replicas 1: writes refused with no follower, accepted while one is
 * connected — also when it idles in long polls longer than a short
 * --repl-timeout-ms (a parked poll refreshed "last seen" only at the 1 s
 * tick: 12 of 40 puts were refused with a healthy follower) — and refused
 * again once it has stopped. */
static void test_min_replicas(void **state)
{
	(void)state;
	char dir[TU_PATH];
	const char *mex[] = {"--min-replicas", "1", "--repl-timeout-ms", "200", NULL};
	snprintf(dir, sizeof(dir), "%s/m", root);
	assert_int_equal(ru_start(&M, dir, NULL, mex), 0);
	sl_client *c = ru_client(&M);
	assert_non_null(c);
	assert_int_equal(sl_client_put(c, "k", 1, "v", 1, NULL), SL_EREADONLY);
	assert_non_null(strstr(sl_client_errmsg(c), "not enough followers"));
	snprintf(dir, sizeof(dir), "%s/mf", root);
	assert_int_equal(ru_start(&MF, dir, M.rurl, NULL), 0);
	int ok = 0;
	for (int i = 0; i < 100 && !ok; i++) {
		ok = sl_client_put(c, "k", 1, "v", 1, NULL) == SL_OK;
		usleep(50 * 1000);
	}
	assert_true(ok);
	usleep(1500 * 1000); /* idle: the follower's polls park for 1 s each */
	for (int i = 0; i < 20; i++) {
		char k[16];
		snprintf(k, sizeof k, "idle%d", i);
		int rc = sl_client_put(c, k, strlen(k), "v", 1, NULL);
		if (rc != SL_OK) {
			fail_msg("put %d refused with the follower connected: %s", i,
			         sl_client_errmsg(c));
		}
		usleep(130 * 1000);
	}
	assert_int_equal(nu_stop(&MF.d, SIGTERM), 0);
	int refused = 0;
	for (int i = 0; i < 60 && !refused; i++) {
		refused = sl_client_put(c, "k", 1, "v", 1, NULL) == SL_EREADONLY;
		usleep(100 * 1000);
	}
	assert_true(refused);
	sl_client_close(c);
	assert_int_equal(nu_stop(&M.d, SIGTERM), 0);
}

/* A is primary with followers B and G (both acknowledged everything up to
 * h1); G is pointed away at h1, B acknowledges 50 more writes and is then
 * paused.  G is promoted, A follows it (it is ahead: a full resync to h1)
 * and is promoted again, all within the 50 s a silent follower stays in a
 * table.  A's first write gets seq h1 + 1, below what B reported to A
 * before: with the old table kept, B counted as an ack for a write no
 * follower holds. */
static void test_role_change_clears_the_table(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&A, root, "a", NULL, NULL), 0);
	assert_int_equal(ru_start_in(&B, root, "b", A.rurl, NULL), 0);
	assert_int_equal(ru_start_in(&G, root, "g", A.rurl, NULL), 0);
	sl_client *ca = ru_client(&A);
	assert_non_null(ca);
	ru_load(&A, "r", 100, 1);
	sl_client_set_acks(ca, 2, 10000);
	uint64_t h1 = 0;
	assert_int_equal(sl_client_put(ca, "sync", 4, "1", 1, &h1), SL_OK);
	assert_int_equal(sl_client_last_acks(ca), 2);

	sl_client *cg = ru_client(&G);
	assert_non_null(cg);
	assert_int_equal(sl_client_follow(cg, "tcp://127.0.0.1:1", NULL), SL_OK); /* away */
	assert_int_equal(ru_stat(&G, "applied_seq", NULL, 0), h1);
	sl_client_set_acks(ca, 1, 10000);
	uint64_t h2 = 0;
	char k[32];
	for (int i = 0; i < 50; i++) {
		snprintf(k, sizeof(k), "late%02d", i);
		assert_int_equal(sl_client_put(ca, k, strlen(k), "v", 1, &h2), SL_OK);
		assert_int_equal(sl_client_last_acks(ca), 1); /* B's */
	}
	assert_true(h2 > h1 + 1);
	assert_int_equal(nu_sigstop(B.d.pid), 0);

	char hid[33];
	assert_int_equal(sl_client_promote(cg, hid), SL_OK);
	assert_int_equal(sl_client_follow(ca, G.rurl, NULL), SL_OK);
	uint64_t full = 0;
	for (int waited = 0; waited <= 30000; waited += 50) {
		full = ru_stat(&A, "resyncs_full", NULL, 0);
		if (full != UINT64_MAX && full >= 1 && ru_stat(&A, "applied_seq", NULL, 0) == h1) {
			break;
		}
		nu_sleep_ms(50);
	}
	assert_true(full != UINT64_MAX && full >= 1); /* it was ahead */
	assert_int_equal(ru_stat(&A, "applied_seq", NULL, 0), h1);
	assert_int_equal(sl_client_promote(ca, hid), SL_OK);
	sl_client_set_acks(ca, 1, 300);
	uint64_t seq = 0;
	int rc = sl_client_put(ca, "after", 5, "v", 1, &seq);
	assert_int_equal(seq, h1 + 1);
	if (rc != SL_ETIMEDOUT) {
		fail_msg("a write no follower holds was answered %s with %d acks", sl_strerror(rc),
		         sl_client_last_acks(ca));
	}
	assert_int_equal(sl_client_last_acks(ca), 0);
	assert_int_equal(ru_stat(&A, "followers", NULL, 0), 0); /* G fetches from nobody */
	sl_client_close(cg);
	sl_client_close(ca);
	kill(B.d.pid, SIGCONT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_gone_follower_is_dropped),
	    cmocka_unit_test(test_a_follower_keeps_no_table),
	    cmocka_unit_test(test_role_change_clears_the_table),
	    cmocka_unit_test(test_min_replicas),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
