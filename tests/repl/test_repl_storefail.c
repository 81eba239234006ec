/*
 * test_repl_storefail.c — a follower whose store fails (one fdatasync
 * returns EIO, injected with shiplogd's SHIPLOGD_TEST_FSYNC_EIO_AFTER hook)
 * replaces it with a full resync from the primary by itself, and ends
 * equal to the primary with a store that works.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include "replutil.h"

static char *root;
static ru_node P, F;

static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp("repl-storefail");
	if (root == NULL) {
		return -1;
	}
	char dir[TU_PATH];
	snprintf(dir, sizeof(dir), "%s/p", root);
	if (ru_start(&P, dir, NULL, NULL) != 0) {
		return -1;
	}
	snprintf(dir, sizeof(dir), "%s/f", root);
	/* the follower's 4th fdatasync fails */
	setenv("SHIPLOGD_TEST_FSYNC_EIO_AFTER", "3", 1);
	int rc = ru_start(&F, dir, P.rurl, NULL);
	unsetenv("SHIPLOGD_TEST_FSYNC_EIO_AFTER");
	return rc;
}

static int teardown(void **state)
{
	(void)state;
	nu_stop(&F.d, SIGTERM);
	nu_stop(&P.d, SIGTERM);
	ru_rm_root(root);
	return 0;
}

static void test_failed_store_is_replaced(void **state)
{
	(void)state;
	ru_node *f[] = {&F};
	/* writes spread over several of the follower's once-a-second syncs */
	for (int round = 0; round < 8; round++) {
		uint64_t rs = ru_stat(&F, "resyncs_full", NULL, 0);
		assert_true(rs != UINT64_MAX);
		if (rs > 0) {
			break;
		}
		ru_load(&P, "k", 500, round);
		nu_sleep_ms(1100);
	}
	ru_load(&P, "k", 500, 99);
	ru_assert_converged(&P, f, 1);
	if (ru_stat(&F, "resyncs_full", NULL, 0) < 1) {
		nu_dump_log(&F.d);
		fail_msg("the follower did not replace its failed store");
	}
	assert_int_equal(ru_stat(&F, "failed", NULL, 0), 0);
	char st[32];
	ru_stat(&F, "repl_state", st, sizeof(st));
	assert_string_equal(st, "streaming");
	/* and it keeps following */
	ru_load(&P, "after", 300, 0);
	ru_assert_converged(&P, f, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_failed_store_is_replaced),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
