/*
 * test_repl_table.c — the primary's follower table: a follower that stops
 * fetching counts as disconnected after --repl-timeout-ms and is dropped
 * from the table (and the stats) after 10 times that; one that comes back
 * is listed again.
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
	nu_stop(&F.d, SIGTERM);
	nu_stop(&P.d, SIGTERM);
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

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_gone_follower_is_dropped),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
