/*
 * test_repl_limits.c — nodes whose --max-key-bytes / --max-value-bytes
 * differ.  Those limits bound what clients write; replication carries
 * whatever the primary stored.  Each test failed before the fifteenth
 * session:
 *  - a follower with the default limits never caught up with a primary
 *    whose larger limit made its replies larger than the follower would
 *    receive (it stayed at seq 0, "connecting", the primary resending);
 *  - a follower with smaller limits refused records over them as "data
 *    corrupted", twenty times a second, for ever; a replicated key over its
 *    key limit could be neither read nor deleted, even once promoted;
 *  - a primary restarted with a smaller value limit than a record it held
 *    could not serve it (an empty reply, then a busy loop), and its
 *    follower stopped there for good.
 * And one about the largest records (twenty-seventh session): a follower's
 * read buffer, grown to 32 MiB by a reply of a 16 MiB record, stayed that
 * large for as long as its primary was unreachable.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include "replutil.h"

static char *root;
static ru_node P, F;   /* test_follower_with_smaller_limits */
static ru_node P2, F2; /* test_primary_restarted_with_smaller_limits */
static ru_node P3, F3; /* test_read_buffer_goes_back_when_the_link_is_lost */

static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp("repl-limits");
	return root != NULL ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	ru_node *all[] = {&F, &P, &F2, &P2, &F3, &P3};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		nu_stop(&all[i]->d, SIGTERM);
	}
	ru_rm_root(root);
	return 0;
}

static void put_value(const ru_node *n, const char *key, size_t klen, size_t vlen, int fill)
{
	sl_client *c = ru_client(n);
	assert_non_null(c);
	sl_client_set_timeout(c, 30000);
	char *v = malloc(vlen);
	assert_non_null(v);
	memset(v, fill, vlen);
	int rc = sl_client_put(c, key, klen, v, vlen, NULL);
	if (rc != SL_OK) {
		fail_msg("put of %zu bytes: %s (%s)", vlen, sl_client_strerror(rc),
		         sl_client_errmsg(c));
	}
	free(v);
	sl_client_close(c);
}

static void test_follower_with_smaller_limits(void **state)
{
	(void)state;
	const char *pex[] = {"--max-value-bytes", "32m", NULL};
	assert_int_equal(ru_start_in(&P, root, "p", NULL, pex), 0);
	/* written before the follower starts: it catches up in replies as
	 * large as the primary's limit allows (a record of 32 MiB must fit) */
	char key[300];
	for (int i = 0; i < 1000; i++) {
		int kl = snprintf(key, sizeof(key), "v%04d", i);
		put_value(&P, key, (size_t)kl, 20000, 'a' + i % 26);
	}
	put_value(&P, "big", 3, 3u << 20, 'b'); /* over the follower's value limit */
	memset(key, 'K', 200);                  /* over its key limit */
	put_value(&P, key, 200, 10, 'k');
	const char *fex[] = {"--max-value-bytes", "1k", "--max-key-bytes", "100", NULL};
	assert_int_equal(ru_start_in(&F, root, "f", P.rurl, fex), 0);
	ru_node *f[] = {&F};
	ru_assert_converged(&P, f, 1);
	assert_int_equal(ru_stat(&F, "repl_refused_batches", NULL, 0), 0);

	/* the long key is readable and deletable there, once promoted too */
	sl_client *c = ru_client(&F);
	assert_non_null(c);
	void *v = NULL;
	size_t vl = 0;
	assert_int_equal(sl_client_get(c, key, 200, &v, &vl, NULL), SL_OK);
	assert_int_equal(vl, 10);
	free(v);
	char hid[33];
	assert_int_equal(sl_client_promote(c, hid), SL_OK);
	assert_int_equal(sl_client_del(c, key, 200, NULL), SL_OK);
	assert_int_equal(sl_client_get(c, key, 200, &v, &vl, NULL), SL_ENOTFOUND);
	/* its own limits still hold for writes */
	assert_int_equal(sl_client_put(c, key, 200, "x", 1, NULL), SL_ETOOBIG);
	sl_client_close(c);
	nu_stop(&F.d, SIGTERM);
	nu_stop(&P.d, SIGTERM);
}

static void test_primary_restarted_with_smaller_limits(void **state)
{
	(void)state;
	const char *pex[] = {"--max-value-bytes", "32m", NULL};
	assert_int_equal(ru_start_in(&P2, root, "p2", NULL, pex), 0);
	put_value(&P2, "a", 1, 100, 'a');
	put_value(&P2, "big", 3, 20u << 20, 'b');
	put_value(&P2, "c", 1, 100, 'c');
	nu_stop(&P2.d, SIGTERM);
	/* restarted with the default 16 MiB: the 20 MiB record stays */
	P2.extra[0] = NULL;
	assert_int_equal(ru_start(&P2, NULL, NULL, NULL), 0);
	put_value(&P2, "d", 1, 100, 'd');
	assert_int_equal(ru_start_in(&F2, root, "f2", P2.rurl, NULL), 0);
	ru_node *f[] = {&F2};
	ru_assert_converged(&P2, f, 1);
	nu_stop(&F2.d, SIGTERM);
	nu_stop(&P2.d, SIGTERM);
}

/* A reply over 16 MiB (one record of a value at the 16 MiB limit) grows
 * the follower's read buffer to 32 MiB.  The buffer goes back once a small
 * reply comes (caught up), and, since fe7bfcb kept it through a catch-up,
 * only then: with the primary gone it stayed until the node was re-pointed
 * or stopped.  Now losing the connection gives it back too. */
static void test_read_buffer_goes_back_when_the_link_is_lost(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&P3, root, "p3", NULL, NULL), 0);
	assert_int_equal(ru_start_in(&F3, root, "f3", P3.rurl, NULL), 0);
	uint64_t buf = 0;
	/* The primary is stopped as soon as the follower has the record:
	 * the follower's next fetch is then held, so no small reply gives
	 * the buffer back first.  A machine slow enough that the fetch's 1 s
	 * long poll ended before the stop tries again. */
	for (int tries = 0; tries < 5 && (buf == UINT64_MAX || buf <= (16u << 20)); tries++) {
		if (tries > 0) {
			kill(P3.d.pid, SIGCONT);
		}
		put_value(&P3, "big", 3, 16u << 20, 'b' + tries); /* the limit */
		uint64_t head = ru_last_seq(&P3);
		assert_int_equal(ru_wait_applied(&F3, head, 60000), 0);
		assert_int_equal(nu_sigstop(P3.d.pid), 0);
		buf = ru_stat(&F3, "repl_read_buffer_bytes", NULL, 0);
	}
	if (buf == UINT64_MAX || buf <= (16u << 20)) {
		fail_msg("the follower's read buffer never showed over 16 MiB (last: %llu)",
		         (unsigned long long)buf);
	}
	nu_stop(&P3.d, SIGKILL); /* the connection is lost; nothing answers a reconnect */
	for (int waited = 0; waited < 10000 && buf != 0; waited += 50) {
		nu_sleep_ms(50);
		buf = ru_stat(&F3, "repl_read_buffer_bytes", NULL, 0);
	}
	if (buf != 0) {
		fail_msg("the follower kept a %llu-byte read buffer with its primary gone",
		         (unsigned long long)buf);
	}
	/* still serving what it applied */
	sl_client *c = ru_client(&F3);
	assert_non_null(c);
	void *v = NULL;
	size_t vl = 0;
	assert_int_equal(sl_client_get(c, "big", 3, &v, &vl, NULL), SL_OK);
	assert_int_equal(vl, 16u << 20);
	free(v);
	sl_client_close(c);
	nu_stop(&F3.d, SIGTERM);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_follower_with_smaller_limits),
	    cmocka_unit_test(test_primary_restarted_with_smaller_limits),
	    cmocka_unit_test(test_read_buffer_goes_back_when_the_link_is_lost),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
