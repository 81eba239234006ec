/*
 * test_repl_resync.c — full resyncs: a follower that falls off the backlog
 * (tiny --repl-backlog-bytes and --segment-bytes, then compaction on the
 * primary) resyncs fully and ends equal; a half-done resync directory left
 * by a crash is discarded at start; a follower killed during a resync
 * restarts it cleanly.
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
	root = tu_mkdtemp("repl-resync");
	if (root == NULL) {
		return -1;
	}
	char dir[TU_PATH];
	const char *pex[] = {"--segment-bytes",
	                     "4k",
	                     "--repl-backlog-bytes",
	                     "8k",
	                     "--repl-timeout-ms",
	                     "1000",
	                     "--compact-dead-ratio",
	                     "0.1",
	                     NULL};
	snprintf(dir, sizeof(dir), "%s/p", root);
	if (ru_start(&P, dir, NULL, pex) != 0) {
		return -1;
	}
	const char *fex[] = {"--segment-bytes", "4k", NULL};
	snprintf(dir, sizeof(dir), "%s/f", root);
	if (ru_start(&F, dir, P.rurl, fex) != 0) {
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

static void test_fall_off_backlog(void **state)
{
	(void)state;
	ru_node *f[] = {&F};
	ru_load(&P, "a", 500, 0);
	ru_assert_converged(&P, f, 1);
	kill(F.d.pid, SIGKILL);
	nu_wait_exit(F.d.pid, 5000);
	F.d.pid = -1;
	nu_sleep_ms(1500); /* the follower no longer counts as connected */
	for (int round = 1; round < 6; round++) {
		ru_load(&P, "a", 500, round);
	}
	nu_sleep_ms(1200); /* a backlog tick */
	ru_compact(&P);
	assert_int_equal(ru_start(&F, NULL, NULL, NULL), 0);
	ru_assert_converged(&P, f, 1);
	assert_true(ru_stat(&F, "resyncs_full", NULL, 0) >= 1);
	/* and streaming goes on after it */
	ru_load(&P, "after", 300, 0);
	ru_assert_converged(&P, f, 1);
	/* the stats say so (they said "resyncing" forever after a full resync) */
	char st[32];
	ru_stat(&F, "repl_state", st, sizeof(st));
	assert_string_equal(st, "streaming");
}

static void test_stale_resync_dir_discarded(void **state)
{
	(void)state;
	ru_node *f[] = {&F};
	assert_int_equal(nu_stop(&F.d, SIGTERM), 0);
	/* what a crash in the middle of a load leaves behind */
	char tmp[TU_PATH + 16], junk[TU_PATH + 48];
	snprintf(tmp, sizeof(tmp), "%s.resync", F.dir);
	assert_int_equal(tu_mkdir_p(tmp), 0);
	snprintf(junk, sizeof(junk), "%s/0000000001.seg", tmp);
	assert_int_equal(tu_write_file(junk, "garbage", 7), 0);
	ru_load(&P, "b", 300, 0);
	assert_int_equal(ru_start(&F, NULL, NULL, NULL), 0);
	ru_assert_converged(&P, f, 1);
	assert_false(tu_exists(junk));
}

static void test_kill_during_resync(void **state)
{
	(void)state;
	ru_node *f[] = {&F};
	kill(F.d.pid, SIGKILL);
	nu_wait_exit(F.d.pid, 5000);
	F.d.pid = -1;
	nu_sleep_ms(1500);
	/* enough data that the snapshot takes several chunks */
	char big[2048];
	memset(big, 'x', sizeof(big));
	sl_client *c = ru_client(&P);
	assert_non_null(c);
	sl_pipeline *p = NULL;
	assert_int_equal(sl_pipeline_new(c, &p), SL_OK);
	for (int i = 0; i < 6000; i++) {
		char k[32];
		snprintf(k, sizeof(k), "big%05d", i);
		sl_pipeline_put(p, k, strlen(k), big, sizeof(big), 0);
		if (sl_pipeline_len(p) == 100) {
			const sl_client_item *it;
			size_t n;
			assert_int_equal(sl_pipeline_exec(p, &it, &n), SL_OK);
		}
	}
	sl_pipeline_free(p);
	sl_client_close(c);
	ru_load(&P, "a", 500, 9);
	nu_sleep_ms(1200);
	ru_compact(&P);
	/* start it, kill it as soon as it is resyncing, start it again */
	assert_int_equal(ru_start(&F, NULL, NULL, NULL), 0);
	char st[32] = "";
	for (int i = 0; i < 400 && strcmp(st, "resyncing") != 0; i++) {
		ru_stat(&F, "repl_state", st, sizeof(st));
		nu_sleep_ms(5);
	}
	kill(F.d.pid, SIGKILL);
	nu_wait_exit(F.d.pid, 5000);
	F.d.pid = -1;
	assert_int_equal(ru_start(&F, NULL, NULL, NULL), 0);
	ru_assert_converged(&P, f, 1);
	char tmp[TU_PATH + 16];
	snprintf(tmp, sizeof(tmp), "%s.resync", F.dir);
	assert_false(tu_exists(tmp));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fall_off_backlog),
	    cmocka_unit_test(test_stale_resync_dir_discarded),
	    cmocka_unit_test(test_kill_during_resync),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
