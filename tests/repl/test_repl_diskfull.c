/*
 * test_repl_diskfull.c — a follower whose own disk fills up (its data
 * directory on a small tmpfs, in a mount namespace private to this test)
 * while the primary keeps writing: it keeps answering reads and stats,
 * counts the failures as its own (repl_apply_errors, not refused
 * batches), loses nothing it had applied, and once the disk has room
 * again catches up by itself and ends equal to the primary.  A follower
 * that needs a full resync onto a disk too small for the snapshot retries
 * it (backing off) and completes it once there is room.  A primary
 * stopped on a disk filled to the last block starts again (it records its
 * new history in the spare REPL kept for this), serves reads, refuses
 * writes with "no space left on device", and takes them once there is
 * room.
 *
 * Needs CAP_SYS_ADMIN (unshare + mount): skipped without it.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/mount.h>

#include "replutil.h"

static char *root;
static char mnt[TU_PATH], mnt2[TU_PATH], mnt3[TU_PATH], mnt4[TU_PATH], mnt5[TU_PATH];
static int mounted, mounted2, mounted3, mounted4, mounted5;
static ru_node P, F, P2, F2, P3, P4, F4, P5, F5;

/* Mounts a tmpfs of `size` (mount's "size=..." option) at root/name, the
 * path into mnt (TU_PATH bytes): a disk that fills.  0, or -1. */
static int mount_tmpfs(char *mnt, int *mounted, const char *name, const char *size)
{
	snprintf(mnt, TU_PATH, "%s/%s", root, name);
	if (tu_mkdir_p(mnt) != 0 || mount("tmpfs", mnt, "tmpfs", 0, size) != 0) {
		return -1;
	}
	*mounted = 1;
	return 0;
}

static int setup(void **state)
{
	(void)state;
	/* A private mount namespace: the tmpfs is seen by this process and
	 * the daemons it starts, and goes away with them. */
	if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
		fprintf(stderr, "test_repl_diskfull: no mount namespace (%s): skipped\n",
		        strerror(errno));
		return 0;
	}
	root = tu_mkdtemp("repl-diskfull");
	if (root == NULL) {
		return -1;
	}
	/* the follower's directory itself (its log, f.log, stays outside) */
	if (mount_tmpfs(mnt, &mounted, "f", "size=6m") != 0) {
		return -1;
	}
	P2.d.pid = F2.d.pid = P3.d.pid = P4.d.pid = F4.d.pid = P5.d.pid = F5.d.pid = -1;
	char dir[TU_PATH];
	const char *ex[] = {"--segment-bytes", "1m", NULL};
	snprintf(dir, sizeof(dir), "%s/p", root);
	if (ru_start(&P, dir, NULL, ex) != 0) {
		return -1;
	}
	return ru_start(&F, mnt, P.rurl, ex);
}

static int teardown(void **state)
{
	(void)state;
	nu_stop(&F.d, SIGTERM);
	nu_stop(&P.d, SIGTERM);
	nu_stop(&F2.d, SIGTERM);
	nu_stop(&P2.d, SIGTERM);
	nu_stop(&P3.d, SIGTERM);
	nu_stop(&F4.d, SIGTERM);
	nu_stop(&P4.d, SIGTERM);
	nu_stop(&F5.d, SIGTERM);
	nu_stop(&P5.d, SIGTERM);
	if (mounted5) {
		umount2(mnt5, MNT_DETACH);
	}
	if (mounted4) {
		umount2(mnt4, MNT_DETACH);
	}
	if (mounted) {
		umount2(mnt, MNT_DETACH);
	}
	if (mounted2) {
		umount2(mnt2, MNT_DETACH);
	}
	if (mounted3) {
		umount2(mnt3, MNT_DETACH);
	}
	if (root != NULL) {
		if (getenv("SL_TEST_KEEP") == NULL) {
			tu_rm_rf(root);
		}
		free(root);
	}
	return 0;
}

/* Writes n keys "big%05d" (key number i % keys) with 2 KiB values to
 * node p through a pipeline. */
static void load_big_to(ru_node *node, int from, int n, int keys)
{
	sl_client *c = ru_client(node);
	assert_non_null(c);
	sl_pipeline *p = NULL;
	assert_int_equal(sl_pipeline_new(c, &p), SL_OK);
	char k[32], v[2048];
	for (int i = from; i < from + n; i++) {
		snprintf(k, sizeof(k), "big%05d", i % keys);
		memset(v, 'a' + i % 26, sizeof(v));
		sl_pipeline_put(p, k, strlen(k), v, sizeof(v), 0);
		if (sl_pipeline_len(p) == 100 || i == from + n - 1) {
			const sl_client_item *it = NULL;
			size_t nit = 0;
			assert_int_equal(sl_pipeline_exec(p, &it, &nit), SL_OK);
			for (size_t j = 0; j < nit; j++) {
				assert_int_equal(it[j].status, SL_OK);
			}
		}
	}
	sl_pipeline_free(p);
	sl_client_close(c);
}

static void load_big(int from, int n)
{
	load_big_to(&P, from, n, 1 << 30);
}

static void test_follower_disk_full_then_room(void **state)
{
	(void)state;
	if (!mounted) {
		skip();
	}
	/* 12 MiB of values for a 6 MiB disk */
	load_big(0, 6000);
	uint64_t head = ru_last_seq(&P);
	uint64_t errs = ru_wait_stat_positive(&F, "repl_apply_errors", 20000);
	if (errs == 0) {
		nu_dump_log(&F.d);
		fail_msg("the follower never reported its disk full");
	}
	/* It answers (stats, reads) while its disk is full, and blames
	 * itself, not the primary. */
	uint64_t applied = ru_stat(&F, "applied_seq", NULL, 0);
	assert_true(applied > 0 && applied < head);
	assert_int_equal(ru_stat(&F, "repl_refused_batches", NULL, 0), 0);
	/* The primary's table does not count as applied what the follower
	 * asked for next while it stored the previous reply (a fetch sent
	 * ahead): what it shows, the follower had applied. */
	int fi = ru_follower_index(&P, &F);
	assert_true(fi >= 0);
	char name[64];
	snprintf(name, sizeof(name), "follower.%d.applied_seq", fi);
	for (int t = 0; t < 20; t++) {
		uint64_t shown = ru_stat(&P, name, NULL, 0);
		uint64_t had = ru_stat(&F, "applied_seq", NULL, 0);
		if (shown > had) {
			fail_msg("the primary shows the follower at %llu, it has applied %llu",
			         (unsigned long long)shown, (unsigned long long)had);
		}
		nu_sleep_ms(50);
	}
	sl_client *c = ru_client(&F);
	assert_non_null(c);
	void *v = NULL;
	size_t vl = 0;
	assert_int_equal(sl_client_get(c, "big00000", 8, &v, &vl, NULL), SL_OK);
	assert_int_equal(vl, 2048);
	assert_int_equal(((uint8_t *)v)[0], 'a');
	free(v);
	sl_client_close(c);
	/* Writes go on meanwhile; then the disk gets room. */
	load_big(6000, 500);
	assert_int_equal(mount(NULL, mnt, NULL, MS_REMOUNT, "size=64m"), 0);
	ru_node *f[] = {&F};
	ru_assert_converged(&P, f, 1);
	assert_int_equal(ru_stat(&F, "repl_refused_batches", NULL, 0), 0);
	assert_int_equal(ru_stat(&F, "resyncs_full", NULL, 0), 0);
	assert_true(ru_stat(&F, "repl_apply_errors", NULL, 0) >= errs);
	/* and it survives a restart with the same contents */
	assert_int_equal(nu_stop(&F.d, SIGTERM), 0);
	assert_int_equal(ru_start(&F, NULL, NULL, NULL), 0);
	ru_assert_converged(&P, f, 1);
}

/* A full resync onto a disk with room for half the snapshot. */
static void test_full_resync_onto_small_disk(void **state)
{
	(void)state;
	if (!mounted) {
		skip();
	}
	char dir[TU_PATH];
	const char *pex[] = {"--segment-bytes",
	                     "64k",
	                     "--repl-backlog-bytes",
	                     "64k",
	                     "--compact-dead-ratio",
	                     "0.1",
	                     "--repl-timeout-ms",
	                     "500",
	                     NULL};
	snprintf(dir, sizeof(dir), "%s/p2", root);
	assert_int_equal(ru_start(&P2, dir, NULL, pex), 0);
	/* 4000 writes over 1000 keys: ~2 MB live, the head compacted away */
	load_big_to(&P2, 0, 4000, 1000);
	nu_sleep_ms(1200); /* a backlog tick */
	ru_compact(&P2);
	assert_int_equal(mount_tmpfs(mnt2, &mounted2, "f2", "size=1m"), 0);
	const char *fex[] = {"--segment-bytes", "64k", NULL};
	assert_int_equal(ru_start(&F2, mnt2, P2.rurl, fex), 0);
	if (ru_wait_stat_positive(&F2, "repl_apply_errors", 20000) == 0) {
		nu_dump_log(&F2.d);
		fail_msg("the follower's resync never hit its full disk");
	}
	assert_int_equal(ru_stat(&F2, "resyncs_full", NULL, 0), 0);
	assert_int_equal(ru_stat(&F2, "applied_seq", NULL, 0), 0);
	assert_int_equal(ru_stat(&F2, "repl_refused_batches", NULL, 0), 0);
	assert_int_equal(mount(NULL, mnt2, NULL, MS_REMOUNT, "size=64m"), 0);
	ru_node *f[] = {&F2};
	ru_assert_converged(&P2, f, 1);
	assert_int_equal(ru_stat(&F2, "resyncs_full", NULL, 0), 1);
	assert_int_equal(ru_stat(&F2, "repl_refused_batches", NULL, 0), 0);
}

/* Where a full resync stages its store: beside a plain directory, inside
 * a mount point (a tmpfs, or a bind mount of the same filesystem, which
 * cannot be renamed either). */
static void test_staging_dir_of_mount_points(void **state)
{
	(void)state;
	if (!mounted) {
		skip();
	}
	char plain[TU_PATH], bind[TU_PATH], out[TU_PATH + 16], want[TU_PATH + 16];
	int nested = -1;
	snprintf(plain, sizeof(plain), "%s/plain", root);
	snprintf(bind, sizeof(bind), "%s/bind", root);
	assert_int_equal(tu_mkdir_p(plain), 0);
	assert_int_equal(tu_mkdir_p(bind), 0);
	assert_int_equal(sl_staging_dir(plain, out, sizeof(out), &nested), SL_OK);
	assert_int_equal(nested, 0);
	snprintf(want, sizeof(want), "%s.resync", plain);
	assert_string_equal(out, want);
	assert_int_equal(sl_staging_dir(mnt, out, sizeof(out), &nested), SL_OK);
	assert_int_equal(nested, 1);
	snprintf(want, sizeof(want), "%s/.resync", mnt);
	assert_string_equal(out, want);
	assert_int_equal(mount(plain, bind, NULL, MS_BIND, NULL), 0);
	assert_int_equal(sl_staging_dir(bind, out, sizeof(out), &nested), SL_OK);
	umount2(bind, MNT_DETACH);
	assert_int_equal(nested, 1);
}

/* Puts "full%05d" (2 KiB of 'a' + i % 26), i from `from`, until the
 * disk is full: returns how many were acknowledged. */
static int fill_with_puts(ru_node *node, int from)
{
	sl_client *c = ru_client(node);
	assert_non_null(c);
	char k[32], v[2048];
	int i = from, rc = SL_OK;
	for (; i < 100000; i++) {
		snprintf(k, sizeof(k), "full%05d", i);
		memset(v, 'a' + i % 26, sizeof(v));
		if ((rc = sl_client_put(c, k, strlen(k), v, sizeof(v), NULL)) != SL_OK) {
			break;
		}
	}
	sl_client_close(c);
	assert_int_equal(rc, SL_ENOSPC);
	return i - from;
}

static void assert_full_key(ru_node *node, int i)
{
	sl_client *c = ru_client(node);
	assert_non_null(c);
	char k[32];
	snprintf(k, sizeof(k), "full%05d", i);
	void *v = NULL;
	size_t vl = 0;
	assert_int_equal(sl_client_get(c, k, strlen(k), &v, &vl, NULL), SL_OK);
	assert_int_equal(vl, 2048);
	assert_int_equal(((uint8_t *)v)[0], 'a' + i % 26);
	assert_int_equal(((uint8_t *)v)[2047], 'a' + i % 26);
	free(v);
	sl_client_close(c);
}

/* A primary restarted on a disk with not one free block. */
static void test_primary_restarts_on_a_full_disk(void **state)
{
	(void)state;
	if (!mounted) {
		skip();
	}
	assert_int_equal(mount_tmpfs(mnt3, &mounted3, "p3", "size=3m"), 0);
	/* the data directory is the mount point: its log (p3.log) is not */
	char filler[TU_PATH + 16];
	snprintf(filler, sizeof(filler), "%s/filler", mnt3);
	const char *ex[] = {"--segment-bytes", "256k", NULL};
	assert_int_equal(ru_start(&P3, mnt3, NULL, ex), 0);
	int acked = fill_with_puts(&P3, 0);
	assert_true(acked > 100);
	/* the blocks the store left: a file takes them all */
	int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	static const char blk[4096];
	while (write(fd, blk, sizeof(blk)) > 0) {
	}
	assert_int_equal(errno, ENOSPC);
	close(fd);
	char hid0[64] = "", hid1[64] = "";
	ru_stat(&P3, "history_id", hid0, sizeof(hid0));
	assert_int_equal(nu_stop(&P3.d, SIGTERM), 0);
	/* It starts (it used to refuse: "cannot write replication state
	 * ...: no space left on device") and serves what it had. */
	if (ru_start(&P3, NULL, NULL, NULL) != 0) {
		nu_dump_log(&P3.d);
		fail_msg("the primary did not start again on its full disk");
	}
	/* with the new history its restart began (DIR/REPL was written) */
	ru_stat(&P3, "history_id", hid1, sizeof(hid1));
	assert_true(hid0[0] != '\0' && hid1[0] != '\0');
	assert_string_not_equal(hid0, hid1);
	assert_full_key(&P3, 0);
	assert_full_key(&P3, acked - 1);
	assert_int_equal(ru_stat(&P3, "keys", NULL, 0), (uint64_t)acked);
	/* Writes: what its active segment has preallocated, then "no space
	 * left on device". */
	int more = fill_with_puts(&P3, acked);
	assert_true(more < 64);
	acked += more;
	sl_client *c = ru_client(&P3);
	assert_non_null(c);
	/* room again: writes are taken */
	assert_int_equal(unlink(filler), 0);
	int rc = SL_ENOSPC;
	for (int t = 0; t < 100 && rc != SL_OK; t++) {
		if ((rc = sl_client_put(c, "late", 4, "v", 1, NULL)) != SL_OK) {
			nu_sleep_ms(50);
		}
	}
	assert_int_equal(rc, SL_OK);
	sl_client_close(c);
	/* and keeps all of it over another restart */
	assert_int_equal(nu_stop(&P3.d, SIGTERM), 0);
	assert_int_equal(ru_start(&P3, NULL, NULL, NULL), 0);
	assert_full_key(&P3, acked - 1);
	assert_int_equal(ru_stat(&P3, "keys", NULL, 0), (uint64_t)acked + 1);
}

/* A follower that stays connected but stores nothing (its disk is full)
 * holds the primary's log from compaction for 10x --repl-timeout-ms, then
 * no longer: its disk grew without bound before (20 -> 279 MB with a 2 MB
 * backlog).  Once it has room it catches up, by a full resync if its next
 * record was compacted away. */
static void test_stalled_follower_does_not_pin_the_log(void **state)
{
	(void)state;
	if (!mounted) {
		skip();
	}
	char dir[TU_PATH];
	/* The stuck follower fetches every 2 s: a 2.5 s timeout keeps it
	 * connected, and it stalls after 25 s. */
	const char *pex[] = {"--segment-bytes",
	                     "64k",
	                     "--repl-backlog-bytes",
	                     "64k",
	                     "--compact-dead-ratio",
	                     "0.1",
	                     "--repl-timeout-ms",
	                     "2500",
	                     NULL};
	snprintf(dir, sizeof(dir), "%s/p4", root);
	assert_int_equal(ru_start(&P4, dir, NULL, pex), 0);
	assert_int_equal(mount_tmpfs(mnt4, &mounted4, "f4", "size=1m"), 0);
	const char *fex[] = {"--segment-bytes", "64k", NULL};
	assert_int_equal(ru_start(&F4, mnt4, P4.rurl, fex), 0);
	/* 2 MB over 50 keys (100 KB live) for a 1 MB disk */
	load_big_to(&P4, 0, 1000, 50);
	if (ru_wait_stat_positive(&F4, "repl_apply_errors", 20000) == 0) {
		nu_dump_log(&F4.d);
		fail_msg("the follower never reported its disk full");
	}
	uint64_t stuck = ru_stat(&F4, "applied_seq", NULL, 0);
	assert_true(stuck > 0 && stuck < ru_last_seq(&P4));
	int fi = ru_follower_index(&P4, &F4);
	assert_true(fi >= 0);
	char stalled[64], connected[64];
	snprintf(stalled, sizeof(stalled), "follower.%d.stalled", fi);
	snprintf(connected, sizeof(connected), "follower.%d.connected", fi);
	/* While it is not yet stalled it holds the log (it may come back):
	 * within a tick, and while its retries keep it connected */
	uint64_t held = 0;
	for (int t = 0; t < 50 && held != stuck + 1; t++) {
		nu_sleep_ms(100);
		held = ru_stat(&P4, "repl_protect_seq", NULL, 0);
	}
	assert_int_equal(held, stuck + 1);
	assert_int_equal(ru_stat(&P4, stalled, NULL, 0), 0);
	/* Overwrites go on; within 25 s (and a tick) it is stalled while
	 * still connected, and the log past it is compacted. */
	int next = 1000, was_stalled = 0;
	uint64_t protect = 0;
	for (int t = 0; t < 80 && !(was_stalled && protect > stuck + 1); t++) {
		load_big_to(&P4, next, 100, 50);
		next += 100;
		nu_sleep_ms(500);
		if (ru_stat(&P4, stalled, NULL, 0) == 1 && ru_stat(&P4, connected, NULL, 0) == 1) {
			was_stalled = 1;
		}
		protect = ru_stat(&P4, "repl_protect_seq", NULL, 0);
	}
	if (!was_stalled || protect <= stuck + 1) {
		nu_dump_log(&P4.d);
		fail_msg("the stuck follower (at %llu) still holds the log: protect %llu, stalled "
		         "%d",
		         (unsigned long long)stuck, (unsigned long long)protect, was_stalled);
	}
	assert_int_equal(ru_stat(&F4, "applied_seq", NULL, 0), stuck);
	ru_compact(&P4);
	/* ~100 KB live, a 64 KB backlog: what is left is far below the 2 MB+
	 * of log written since the follower stopped storing */
	uint64_t disk = ru_stat(&P4, "disk_bytes", NULL, 0);
	if (disk > 1024 * 1024) {
		fail_msg("the primary keeps %llu bytes on disk after a compaction",
		         (unsigned long long)disk);
	}
	/* room again: it catches up (by a full resync: its next record is gone) */
	assert_int_equal(mount(NULL, mnt4, NULL, MS_REMOUNT, "size=64m"), 0);
	ru_node *f[] = {&F4};
	ru_assert_converged(&P4, f, 1);
	assert_true(ru_stat(&F4, "resyncs_full", NULL, 0) >= 1);
	assert_int_equal(ru_stat(&P4, stalled, NULL, 0), 0);
}

/* A follower whose store is damaged replaces it with a full resync; on
 * a disk without room for a second copy that resync fails, and the
 * follower streams on meanwhile (it stopped applying anything, for good),
 * then replaces it once there is room. */
static void test_damaged_follower_streams_while_it_cannot_resync(void **state)
{
	(void)state;
	if (!mounted) {
		skip();
	}
	char dir[TU_PATH];
	const char *ex[] = {"--segment-bytes", "64k", NULL};
	snprintf(dir, sizeof(dir), "%s/p5", root);
	assert_int_equal(ru_start(&P5, dir, NULL, ex), 0);
	assert_int_equal(mount_tmpfs(mnt5, &mounted5, "f5", "size=3m"), 0);
	assert_int_equal(ru_start(&F5, mnt5, P5.rurl, ex), 0);
	load_big_to(&P5, 0, 900, 900); /* ~1.9 MB live: no room for two */
	ru_node *f[] = {&F5};
	ru_assert_converged(&P5, f, 1);
	assert_int_equal(nu_stop(&F5.d, SIGTERM), 0);
	/* one changed byte in its first segment (kept: all of it live) */
	char seg[TU_PATH + 32];
	snprintf(seg, sizeof(seg), "%s/%010u.seg", mnt5, 1u);
	int fd = open(seg, O_RDWR);
	assert_true(fd >= 0);
	uint8_t b = 0;
	assert_int_equal(pread(fd, &b, 1, 20000), 1);
	b ^= 0x5a;
	assert_int_equal(pwrite(fd, &b, 1, 20000), 1);
	close(fd);
	assert_int_equal(ru_start(&F5, NULL, NULL, NULL), 0);
	char d[33];
	uint64_t keys = 0;
	ru_digest(&F5, d, &keys); /* reads every record: finds it */
	if (ru_wait_stat_positive(&F5, "repl_apply_errors", 20000) == 0) {
		nu_dump_log(&F5.d);
		fail_msg("the damaged follower's resync never hit its full disk");
	}
	/* it streams on: new writes reach it, though its resync cannot fit */
	load_big_to(&P5, 100000, 20, 20);
	uint64_t head = ru_last_seq(&P5);
	if (ru_wait_applied(&F5, head, 20000) != 0) {
		nu_dump_log(&F5.d);
		fail_msg("the damaged follower stopped applying while its resync failed");
	}
	assert_int_equal(ru_stat(&F5, "resyncs_full", NULL, 0), 0);
	/* room: it replaces its store and ends equal */
	assert_int_equal(mount(NULL, mnt5, NULL, MS_REMOUNT, "size=64m"), 0);
	for (int t = 0; t < 200 && ru_stat(&F5, "resyncs_full", NULL, 0) < 1; t++) {
		nu_sleep_ms(100);
	}
	assert_true(ru_stat(&F5, "resyncs_full", NULL, 0) >= 1);
	ru_assert_converged(&P5, f, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_follower_disk_full_then_room),
	    cmocka_unit_test(test_full_resync_onto_small_disk),
	    cmocka_unit_test(test_staging_dir_of_mount_points),
	    cmocka_unit_test(test_primary_restarts_on_a_full_disk),
	    cmocka_unit_test(test_stalled_follower_does_not_pin_the_log),
	    cmocka_unit_test(test_damaged_follower_streams_while_it_cannot_resync),
	};
	int failed = cmocka_run_group_tests(tests, setup, teardown);
	/* without a mount namespace every test skipped: say so to ctest
	 * (SKIP_RETURN_CODE 77), not "passed" */
	return failed != 0 ? 1 : mounted ? 0 : 77;
}
