/*
 * test_repl_resync.c — full resyncs: a follower that falls off the backlog
 * (tiny --repl-backlog-bytes and --segment-bytes, then compaction on the
 * primary) resyncs fully and ends equal; a half-done resync directory left
 * by a crash is discarded at start; a follower killed during a resync
 * restarts it cleanly; a primary that lost the tail of its log (a power
 * cut before its fdatasync) and took new writes under the same seqs does
 * not leave a follower that applied the lost records diverged; a node
 * restarted as primary and re-pointed before any write continues without a
 * full resync, and with one of its own resyncs fully; a promoted node that
 * lost the tail it was promoted at does not let the old primary continue
 * on the old history past what it kept.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/stat.h>

#include "replutil.h"

static char *root;
static ru_node P, F;
static ru_node P2, F2; /* test_primary_lost_its_tail's own */
static ru_node A, B;   /* test_restarted_primary_repointed's own */
static ru_node C, D;   /* test_promoted_then_lost_its_tail's own */
static ru_node P3, F3; /* test_primary_lost_everything's own */

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
	/* F's fetch and reader threads run SCHED_BATCH: every test here
	 * holds for it too */
	const char *fex[] = {"--segment-bytes", "4k", "--repl-sched", "batch", NULL};
	snprintf(dir, sizeof(dir), "%s/f", root);
	if (ru_start(&F, dir, P.rurl, fex) != 0) {
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (F2.d.pid > 0) {
		kill(F2.d.pid, SIGCONT);
	}
	if (F3.d.pid > 0) {
		kill(F3.d.pid, SIGCONT);
	}
	nu_stop(&F2.d, SIGTERM);
	nu_stop(&P2.d, SIGTERM);
	nu_stop(&F3.d, SIGTERM);
	nu_stop(&P3.d, SIGTERM);
	nu_stop(&P2.d, SIGTERM);
	nu_stop(&A.d, SIGTERM);
	nu_stop(&B.d, SIGTERM);
	nu_stop(&C.d, SIGTERM);
	nu_stop(&D.d, SIGTERM);
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
	/* The store the resync opened (from the fetch thread) did not take
	 * the fetch thread's short scheduler slice for its own threads (its
	 * flusher and compactor had it): the loop, the fetch thread and its
	 * reader thread have it, nothing else (-1: a kernel without se.slice). */
	int sliced = nu_threads_with_slice(F.d.pid, 100000);
	assert_true(sliced <= 3);
	/* nor its policy (--repl-sched batch), which a new thread would
	 * inherit: the fetch thread and its reader thread only */
	int batch = nu_threads_with_policy(F.d.pid, SCHED_BATCH);
	for (int i = 0; i < 20 && (batch < 1 || batch > 2); i++) {
		nu_sleep_ms(100); /* a thread on its way out (once seen in CI: 3) */
		batch = nu_threads_with_policy(F.d.pid, SCHED_BATCH);
	}
	if (batch < 1 || batch > 2) {
		fail_msg(
		    "%d threads with SCHED_BATCH for 2 s, want the fetch thread and its reader",
		    batch);
	}
	/* its segments are its own --segment-bytes (4k) again: the resync
	 * loads into 64 MiB ones, and the active one stayed that size (a
	 * 64 MiB file, unsealed, out of compaction) until it filled */
	ru_load(&P, "after2", 300, 0);
	ru_assert_converged(&P, f, 1);
	DIR *d = opendir(F.dir);
	assert_non_null(d);
	struct dirent *e;
	off_t biggest = 0;
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);
		char path[TU_PATH];
		struct stat sb;
		if (l > 4 && strcmp(e->d_name + l - 4, ".seg") == 0 &&
		    snprintf(path, sizeof(path), "%s/%s", F.dir, e->d_name) < (int)sizeof(path) &&
		    stat(path, &sb) == 0 && sb.st_size > biggest) {
			biggest = sb.st_size;
		}
	}
	closedir(d);
	if (biggest > (1 << 20)) {
		fail_msg("a segment of %lld bytes on a follower with --segment-bytes 4k",
		         (long long)biggest);
	}
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
	/* the old store goes once the new one serves: thousands of 4k
	 * segments take a while */
	char tmp[TU_PATH + 16];
	snprintf(tmp, sizeof(tmp), "%s.resync", F.dir);
	for (int waited = 0; waited < 20000 && tu_exists(tmp); waited += 50) {
		nu_sleep_ms(50);
	}
	assert_false(tu_exists(tmp));
}

static void put_one(sl_client *c, int i, const char *v)
{
	char k[32];
	snprintf(k, sizeof(k), "lt%03d", i);
	assert_int_equal(sl_client_put(c, k, strlen(k), v, strlen(v), NULL), SL_OK);
}

/* Cuts the newest segment of the store in dir (its node stopped) before
 * the record with seq `from`, as a power cut before the fdatasync would. */
static void cut_log(const char *dir, uint64_t from)
{
	uint64_t *ids;
	int n = tu_list_ids(dir, "seg", &ids);
	assert_true(n >= 1);
	char seg[TU_PATH + 32];
	snprintf(seg, sizeof(seg), "%s/%010llu.seg", dir, (unsigned long long)ids[n - 1]);
	free(ids);
	tu_seg sg;
	assert_int_equal(tu_seg_parse(seg, &sg), 0);
	size_t cut = 0;
	for (size_t r = 0; r < sg.nrecs; r++) {
		if (sg.recs[r].seq == from) {
			cut = sg.recs[r].off;
		}
	}
	tu_seg_free(&sg);
	assert_true(cut > 0);
	assert_int_equal(truncate(seg, (off_t)cut), 0);
}

/* The follower applied seqs 1..100; the primary p is killed and its log
 * cut back to seq cut_at - 1, as a power cut before its fdatasync would
 * leave it; it restarts and takes new writes up to seq 110 before the
 * follower fetches again.  The restarted primary began a new history at
 * cut_at - 1, so the follower (at 100, past that link) resyncs fully and
 * ends equal; under the old history it went on from 101 and kept the lost
 * records for good. */
static void lost_tail(ru_node *p, ru_node *f, const char *pname, const char *fname, uint64_t cut_at)
{
	assert_int_equal(ru_start_in(p, root, pname, NULL, NULL), 0);
	assert_int_equal(ru_start_in(f, root, fname, p->rurl, NULL), 0);
	sl_client *c = ru_client(p);
	assert_non_null(c);
	for (int i = 0; i < 100; i++) {
		put_one(c, i, "before");
	}
	sl_client_close(c);
	ru_node *fl[] = {f};
	ru_assert_converged(p, fl, 1);
	assert_int_equal(ru_last_seq(p), 100);

	assert_int_equal(nu_sigstop(f->d.pid), 0);
	kill(p->d.pid, SIGKILL);
	nu_wait_exit(p->d.pid, 5000);
	p->d.pid = -1;
	cut_log(p->dir, cut_at);

	assert_int_equal(ru_start(p, NULL, NULL, NULL), 0);
	assert_int_equal(ru_last_seq(p), cut_at - 1);
	c = ru_client(p);
	assert_non_null(c);
	for (int i = (int)cut_at - 1; i < 110; i++) {
		put_one(c, i, "after");
	}
	sl_client_close(c);
	assert_int_equal(ru_last_seq(p), 110);
	kill(f->d.pid, SIGCONT);
	ru_assert_converged(p, fl, 1);
	assert_true(ru_stat(f, "resyncs_full", NULL, 0) >= 1);
}

static void test_primary_lost_its_tail(void **state)
{
	(void)state;
	lost_tail(&P2, &F2, "p2", "f2", 91);
}

/* The same with every record lost (the log cut at seq 1): a primary that
 * started again with an empty store kept its history (only a non-empty one
 * began a new one), so the follower went on from 101 under it, holding
 * the lost 1..100 beside the new 1..110 (a review in the twenty-seventh
 * session). */
static void test_primary_lost_everything(void **state)
{
	(void)state;
	lost_tail(&P3, &F3, "p3", "f3", 1);
}

static void put_some(const ru_node *n, int from, int count, const char *v)
{
	sl_client *c = ru_client(n);
	assert_non_null(c);
	for (int i = from; i < from + count; i++) {
		put_one(c, i, v);
	}
	sl_client_close(c);
}

/* Every start of a primary begins a new history, linked at its last seq.
 * A stops (seq 50), B is promoted, A starts again (as primary: a history
 * of its own with nothing in it) and is re-pointed at B: it presents the
 * history its records came from and continues partially.  Then B stops,
 * A is promoted and writes; B starts again as primary, takes a write of
 * its own (seq 61, which A never had) and is re-pointed at A: that one
 * must resync fully and lose its write. */
static void test_restarted_primary_repointed(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&A, root, "a", NULL, NULL), 0);
	assert_int_equal(ru_start_in(&B, root, "b", A.rurl, NULL), 0);
	put_some(&A, 0, 50, "one");
	ru_node *fb[] = {&B}, *fa[] = {&A};
	ru_assert_converged(&A, fb, 1);

	assert_int_equal(nu_stop(&A.d, SIGTERM), 0);
	ru_promote(&B);
	assert_int_equal(ru_start(&A, NULL, NULL, NULL), 0); /* a primary again */
	char role[32];
	ru_stat(&A, "role", role, sizeof(role));
	assert_string_equal(role, "primary");
	ru_follow(&A, &B);
	put_some(&B, 50, 10, "two");
	ru_assert_converged(&B, fa, 1);
	assert_int_equal(ru_last_seq(&A), 60);
	assert_int_equal(ru_stat(&A, "resyncs_full", NULL, 0), 0);
	assert_true(ru_stat(&A, "resyncs_partial", NULL, 0) >= 1);

	assert_int_equal(nu_stop(&B.d, SIGTERM), 0);
	ru_promote(&A);
	B.follow[0] = '\0';
	assert_int_equal(ru_start(&B, NULL, NULL, NULL), 0); /* primary, by its REPL */
	ru_stat(&B, "role", role, sizeof(role));
	assert_string_equal(role, "primary");
	put_some(&B, 100, 1, "B's own");
	put_some(&A, 60, 5, "three");
	ru_follow(&B, &A);
	ru_assert_converged(&A, fb, 1);
	assert_int_equal(ru_last_seq(&B), 65);
	assert_true(ru_stat(&B, "resyncs_full", NULL, 0) >= 1);
}

/* D follows C to seq 50; C stops; D is promoted at 50 (a link to C's
 * history at 50), then loses its tail back to 40 (SIGKILL and a cut: a
 * power cut before its fdatasync) and starts again, as primary, taking 20
 * writes (seqs 41..60).  C, re-pointed at D, holds the old history's 41..50,
 * which D no longer has: it must resync fully.  The link D kept at 50 let C
 * continue from 51 and keep them (digests never equal). */
static void test_promoted_then_lost_its_tail(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&C, root, "c", NULL, NULL), 0);
	assert_int_equal(ru_start_in(&D, root, "d", C.rurl, NULL), 0);
	put_some(&C, 0, 50, "old");
	ru_node *fd[] = {&D}, *fc[] = {&C};
	ru_assert_converged(&C, fd, 1);
	assert_int_equal(nu_stop(&C.d, SIGTERM), 0);
	ru_promote(&D);
	kill(D.d.pid, SIGKILL);
	nu_wait_exit(D.d.pid, 5000);
	D.d.pid = -1;
	cut_log(D.dir, 41);
	D.follow[0] = '\0';
	assert_int_equal(ru_start(&D, NULL, NULL, NULL), 0);
	assert_int_equal(ru_last_seq(&D), 40);
	put_some(&D, 200, 20, "new");
	assert_int_equal(ru_last_seq(&D), 60);
	snprintf(C.follow, sizeof(C.follow), "%s", D.rurl);
	assert_int_equal(ru_start(&C, NULL, NULL, NULL), 0);
	ru_assert_converged(&D, fc, 1);
	assert_true(ru_stat(&C, "resyncs_full", NULL, 0) >= 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fall_off_backlog),
	    cmocka_unit_test(test_stale_resync_dir_discarded),
	    cmocka_unit_test(test_kill_during_resync),
	    cmocka_unit_test(test_primary_lost_its_tail),
	    cmocka_unit_test(test_primary_lost_everything),
	    cmocka_unit_test(test_restarted_primary_repointed),
	    cmocka_unit_test(test_promoted_then_lost_its_tail),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
