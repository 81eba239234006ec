/*
 * test_swapdir.c — sl_swap_dir (storage/open.c): an open handle trades
 * directories with another one (renameat2 RENAME_EXCHANGE) and adopts new
 * sync, segment and compaction settings without a reopen.
 *
 *  - basic swap: old data readable through the handle, new segments land
 *    at the new path, both directories hold the right store after reopen
 *  - background compaction starts after the swap and works at the new path
 *  - failures (missing target, bad options, NULL) change nothing
 *  - SL_SYNC_ALWAYS adopted: a put is durable when it returns
 *  - new intervals apply at once; compaction stops when the new options
 *    turn it off
 *  - sl_move_in (storage/movein.c, for a data directory that is a mount
 *    point): DIR/.resync's store replaces DIR's; a move interrupted after
 *    its mark (while removing the old files, or while moving the new ones
 *    in) is finished by sl_open; before the mark, DIR is untouched; a
 *    directory in use is refused
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "io.h"
#include "shiplog.h"
#include "testutil.h"

#define VLEN 100

/* ---- helpers ------------------------------------------------------------- */

/* Key of store `s` ('a', 'b', ...) number i: "s-NNNNNN", 8 bytes. */
static void key_of(char s, int i, char *k)
{
	snprintf(k, 16, "%c-%06d", s, i);
}

/* Value of key (s, i) at version r: VLEN bytes derived from all three. */
static void val_of(char s, int i, int r, uint8_t *v)
{
	tu_fill_tagged(v, VLEN,
	               ((uint64_t)(unsigned char)s << 48) ^ ((uint64_t)i << 16) ^ (uint64_t)r);
}

static void put_v(sl_db *db, char s, int i, int r)
{
	char k[16];
	uint8_t v[VLEN];
	key_of(s, i, k);
	val_of(s, i, r, v);
	int rc = sl_put(db, k, 8, v, VLEN, NULL);
	if (rc != SL_OK) {
		fail_msg("put %s: %s", k, sl_strerror(rc));
	}
}

static void check_v(sl_db *db, char s, int i, int r)
{
	char k[16];
	uint8_t v[VLEN];
	key_of(s, i, k);
	val_of(s, i, r, v);
	void *got = NULL;
	size_t gl = 0;
	int rc = sl_get(db, k, 8, &got, &gl);
	if (rc != SL_OK) {
		fail_msg("get %s: %s, wanted version %d", k, sl_strerror(rc), r);
	}
	if (gl != VLEN || memcmp(got, v, VLEN) != 0) {
		free(got);
		fail_msg("get %s: wrong value (len %zu), wanted version %d", k, gl, r);
	}
	free(got);
}

static void check_absent(sl_db *db, char s, int i)
{
	char k[16];
	key_of(s, i, k);
	void *got = NULL;
	size_t gl = 0;
	int rc = sl_get(db, k, 8, &got, &gl);
	if (rc == SL_OK) {
		free(got);
	}
	if (rc != SL_ENOTFOUND) {
		fail_msg("get %s: expected absent, got %s", k, sl_strerror(rc));
	}
}

static sl_options base_opts(void)
{
	sl_options o;
	sl_options_init(&o);
	o.segment_bytes = 64 * 1024;
	o.sync = SL_SYNC_NO;
	o.compact_background = 0;
	o.quiet = tu_quiet();
	return o;
}

static sl_db *open_dir(const char *dir, const sl_options *o)
{
	sl_db *db = NULL;
	int rc = sl_open(dir, o, &db);
	if (rc != SL_OK) {
		fail_msg("sl_open %s: %s", dir, sl_strerror(rc));
	}
	return db;
}

static sl_stats stats(sl_db *db)
{
	sl_stats st;
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	return st;
}

/* Highest NNNNNNNNNN.seg id in dir (0: none). */
static uint64_t max_seg_id(const char *dir)
{
	uint64_t *ids;
	int n = tu_list_ids(dir, "seg", &ids);
	assert_true(n >= 0);
	uint64_t m = n > 0 ? ids[n - 1] : 0;
	free(ids);
	return m;
}

static int has_seg_id(const char *dir, uint64_t id)
{
	char p[TU_PATH];
	tu_seg_path(p, sizeof(p), dir, id, "seg");
	return tu_exists(p);
}

/* Number of entries in dir other than "." and "..". */
static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
	}
	closedir(d);
	return n;
}

/* Total size of the NNNNNNNNNN.seg files in dir. */
static long long seg_bytes_on_disk(const char *dir)
{
	uint64_t *ids;
	int n = tu_list_ids(dir, "seg", &ids);
	assert_true(n >= 0);
	long long total = 0;
	for (int i = 0; i < n; i++) {
		char p[TU_PATH];
		tu_seg_path(p, sizeof(p), dir, ids[i], "seg");
		long long sz = tu_file_size(p);
		total += sz > 0 ? sz : 0;
	}
	free(ids);
	return total;
}

/* The directory holds exactly the snapshot's files, byte for byte. */
static void assert_dir_equals(const char *dir, const tu_snapshot *want)
{
	tu_snapshot now;
	assert_int_equal(tu_snapshot_take(dir, &now), 0);
	if (now.n != want->n) {
		for (size_t i = 0; i < now.n; i++) {
			print_message("  %s has %s (%zu bytes)\n", dir, now.files[i].name,
			              now.files[i].len);
		}
		fail_msg("%s: %zu files, wanted %zu", dir, now.n, want->n);
	}
	for (size_t i = 0; i < want->n; i++) {
		size_t j = 0;
		while (j < now.n && strcmp(now.files[j].name, want->files[i].name) != 0) {
			j++;
		}
		if (j == now.n) {
			fail_msg("%s: %s is gone", dir, want->files[i].name);
		}
		if (now.files[j].len != want->files[i].len ||
		    memcmp(now.files[j].data, want->files[i].data, want->files[i].len) != 0) {
			fail_msg("%s: %s changed", dir, want->files[i].name);
		}
	}
	/* Every name matched and the counts agree: the sets are equal. */
	tu_snapshot_free(&now);
}

/* Waits up to ms for the handle's synced_seq to reach seq. */
static int wait_synced(sl_db *db, uint64_t seq, uint64_t ms)
{
	uint64_t t0 = tu_mono_ms();
	for (;;) {
		if (stats(db).synced_seq >= seq) {
			return 1;
		}
		if (tu_mono_ms() - t0 > ms) {
			return 0;
		}
		usleep(10000);
	}
}

/* ---- 1. basic swap ------------------------------------------------------- */

static void test_swap_basic(void **state)
{
	(void)state;
	char *dir_a = tu_mkdtemp("swap-basic-a");
	char *dir_b = tu_mkdtemp("swap-basic-b");
	assert_non_null(dir_a);
	assert_non_null(dir_b);
	const int n = 2000, nb = 10;

	sl_options oa = base_opts();
	sl_db *a = open_dir(dir_a, &oa);
	for (int i = 0; i < n; i++) {
		put_v(a, 'a', i, 1);
	}
	/* B: a small store of its own, with keys A never has. */
	sl_options ob = base_opts();
	sl_db *b = open_dir(dir_b, &ob);
	for (int i = 0; i < nb; i++) {
		put_v(b, 'b', i, 7);
	}
	sl_close(b);
	tu_snapshot b_files;
	assert_int_equal(tu_snapshot_take(dir_b, &b_files), 0);
	assert_true(b_files.n > 0);

	/* A rotated several times and nothing of it is synced (sync NO). */
	uint64_t *a_ids;
	int na = tu_list_ids(dir_a, "seg", &a_ids);
	assert_true(na >= 3);
	uint64_t pre_max = a_ids[na - 1];
	sl_stats pre = stats(a);
	assert_true(pre.synced_seq < pre.last_seq);

	sl_options o2;
	sl_options_init(&o2);
	o2.segment_bytes = 128 * 1024;
	o2.sync = SL_SYNC_EVERYSEC;
	o2.quiet = tu_quiet();
	assert_int_equal(sl_swap_dir(a, dir_b, &o2), SL_OK);
	assert_int_equal(sl_sync_policy(a), SL_SYNC_EVERYSEC);

	/* The directories traded places: A's segments are at dir_b, B's files
	 * at dir_a, untouched. */
	for (int i = 0; i < na; i++) {
		if (!has_seg_id(dir_b, a_ids[i])) {
			fail_msg("segment %llu of A not in %s after the swap",
			         (unsigned long long)a_ids[i], dir_b);
		}
	}
	char lock[TU_PATH];
	snprintf(lock, sizeof(lock), "%s/LOCK", dir_b);
	assert_true(tu_exists(lock));
	assert_dir_equals(dir_a, &b_files);

	/* Everything A had is still served by the handle. */
	for (int i = 0; i < n; i++) {
		check_v(a, 'a', i, 1);
	}
	for (int i = 0; i < nb; i++) {
		check_absent(a, 'b', i);
	}

	/* More writes: rotations create segments at the new path only. */
	for (int i = n; i < 2 * n; i++) {
		put_v(a, 'a', i, 2);
	}
	for (int i = 0; i < 2 * n; i++) {
		check_v(a, 'a', i, i < n ? 1 : 2);
	}
	uint64_t post_max = max_seg_id(dir_b);
	if (post_max <= pre_max) {
		fail_msg("no new segment in %s (max id %llu, before the swap %llu)", dir_b,
		         (unsigned long long)post_max, (unsigned long long)pre_max);
	}
	/* Two rotations at least: 2000 records of ~130 bytes, 128 KiB segments. */
	assert_true(post_max >= pre_max + 2);
	assert_dir_equals(dir_a, &b_files);

	/* EVERYSEC adopted: the flusher syncs everything within a few seconds
	 * (under SYNC_NO nothing advanced synced_seq). */
	sl_stats mid = stats(a);
	if (!wait_synced(a, mid.last_seq, 5000)) {
		fail_msg("synced_seq %llu never reached %llu under SL_SYNC_EVERYSEC",
		         (unsigned long long)stats(a).synced_seq, (unsigned long long)mid.last_seq);
	}
	sl_close(a);
	assert_dir_equals(dir_a, &b_files);
	assert_true(max_seg_id(dir_b) >= post_max);
	/* The new segment size was taken: segments started after the swap
	 * are at most 128 KiB, and at least one sealed one is past 64 KiB. */
	uint64_t *b_ids;
	int nb_ids = tu_list_ids(dir_b, "seg", &b_ids);
	assert_true(nb_ids > 0);
	long long biggest = 0;
	for (int i = 0; i < nb_ids; i++) {
		if (b_ids[i] <= pre_max) {
			continue;
		}
		char p[TU_PATH];
		tu_seg_path(p, sizeof(p), dir_b, b_ids[i], "seg");
		long long sz = tu_file_size(p);
		if (sz > 128 * 1024) {
			fail_msg("%s: %lld bytes, over the new segment size", p, sz);
		}
		biggest = sz > biggest ? sz : biggest;
	}
	free(b_ids);
	if (biggest <= 64 * 1024) {
		fail_msg("no segment after the swap is over 64 KiB (biggest %lld): "
		         "segment_bytes 128 KiB not taken",
		         biggest);
	}

	/* Reopened: dir_b holds A's 4000 keys and nothing of B. */
	sl_options ro = base_opts();
	a = open_dir(dir_b, &ro);
	sl_stats st = stats(a);
	assert_int_equal(st.keys, 2 * n);
	assert_int_equal(st.corrupt_records, 0);
	for (int i = 0; i < 2 * n; i++) {
		check_v(a, 'a', i, i < n ? 1 : 2);
	}
	for (int i = 0; i < nb; i++) {
		check_absent(a, 'b', i);
	}
	sl_close(a);

	/* dir_a holds exactly B's store. */
	b = open_dir(dir_a, &ro);
	st = stats(b);
	assert_int_equal(st.keys, nb);
	for (int i = 0; i < nb; i++) {
		check_v(b, 'b', i, 7);
	}
	for (int i = 0; i < 2 * n; i += 97) {
		check_absent(b, 'a', i);
	}
	sl_close(b);

	free(a_ids);
	tu_snapshot_free(&b_files);
	assert_int_equal(tu_rm_rf(dir_a), 0);
	assert_int_equal(tu_rm_rf(dir_b), 0);
	free(dir_a);
	free(dir_b);
}

/* ---- 2. background compaction starts after the swap ---------------------- */

static void test_swap_starts_compaction(void **state)
{
	(void)state;
	char *dir_a = tu_mkdtemp("swap-compact-a");
	char *dir_b = tu_mkdtemp("swap-compact-b");
	assert_non_null(dir_a);
	assert_non_null(dir_b);
	const int n = 300, rounds = 30, ncold = 20;

	sl_options oa = base_opts();
	sl_db *a = open_dir(dir_a, &oa);
	/* Hot keys 'a' overwritten every round, cold keys 'c' written once in
	 * between: the sealed segments are mostly dead but keep some live
	 * records, so compaction has outputs to write, not only files to drop. */
	for (int r = 0; r < rounds; r++) {
		for (int i = 0; i < n; i++) {
			put_v(a, 'a', i, r);
		}
		for (int i = 0; i < ncold; i++) {
			put_v(a, 'c', r * ncold + i, 0);
		}
	}
	sl_stats pre = stats(a);
	assert_true(pre.segments >= 10);
	assert_true(pre.dead_bytes > pre.live_bytes * 2);
	long long pre_disk = seg_bytes_on_disk(dir_a);
	/* No compactor before the swap: nothing happens on its own. */
	usleep(200000);
	assert_int_equal(stats(a).compactions, 0);

	sl_options o2;
	sl_options_init(&o2);
	o2.segment_bytes = 64 * 1024;
	o2.sync = SL_SYNC_NO;
	o2.compact_background = 1;
	o2.compact_interval_ms = 50;
	o2.compact_dead_ratio = 0.5;
	o2.quiet = tu_quiet();
	assert_int_equal(sl_swap_dir(a, dir_b, &o2), SL_OK);

	/* Wait for the compactor to have run and to have taken the handle's
	 * footprint under half of what it was. */
	sl_stats st = stats(a);
	uint64_t t0 = tu_mono_ms();
	while ((st.compactions == 0 || st.disk_bytes * 2 > pre.disk_bytes) &&
	       tu_mono_ms() - t0 < 10000) {
		usleep(20000);
		st = stats(a);
	}
	if (st.compactions == 0) {
		fail_msg("no background compaction within 10 s after the swap "
		         "(%llu segments, %llu dead bytes)",
		         (unsigned long long)st.segments, (unsigned long long)st.dead_bytes);
	}
	if (st.disk_bytes * 2 > pre.disk_bytes) {
		fail_msg("after %llu compactions the store still has %llu bytes (%llu before)",
		         (unsigned long long)st.compactions, (unsigned long long)st.disk_bytes,
		         (unsigned long long)pre.disk_bytes);
	}
	assert_int_equal(st.compact_errors, 0);
	assert_true(st.compact_bytes_reclaimed > 0);
	for (int i = 0; i < n; i++) {
		check_v(a, 'a', i, rounds - 1);
	}
	for (int i = 0; i < rounds * ncold; i++) {
		check_v(a, 'c', i, 0);
	}
	/* Compaction works at the new path: the old one (B's empty directory
	 * now) gets no files. */
	assert_int_equal(count_entries(dir_a), 0);
	/* Still writable after compacting. */
	for (int i = 0; i < n; i += 3) {
		put_v(a, 'a', i, rounds);
	}
	sl_close(a);
	assert_int_equal(count_entries(dir_a), 0);
	/* The compacted segments were removed from the new path. */
	long long post_disk = seg_bytes_on_disk(dir_b);
	if (post_disk * 2 > pre_disk) {
		fail_msg("%s holds %lld segment bytes after compaction, %lld before", dir_b,
		         post_disk, pre_disk);
	}

	sl_options ro = base_opts();
	a = open_dir(dir_b, &ro);
	st = stats(a);
	assert_int_equal(st.keys, n + rounds * ncold);
	assert_int_equal(st.corrupt_records, 0);
	for (int i = 0; i < n; i++) {
		check_v(a, 'a', i, i % 3 == 0 ? rounds : rounds - 1);
	}
	for (int i = 0; i < rounds * ncold; i++) {
		check_v(a, 'c', i, 0);
	}
	sl_close(a);

	assert_int_equal(tu_rm_rf(dir_a), 0);
	assert_int_equal(tu_rm_rf(dir_b), 0);
	free(dir_a);
	free(dir_b);
}

/* ---- 3. failures change nothing ------------------------------------------ */

static void test_swap_errors_change_nothing(void **state)
{
	(void)state;
	char *dir_a = tu_mkdtemp("swap-err-a");
	char *dir_b = tu_mkdtemp("swap-err-b");
	char *missing = tu_mkdtemp("swap-err-missing");
	assert_non_null(dir_a);
	assert_non_null(dir_b);
	assert_non_null(missing);
	assert_int_equal(rmdir(missing), 0); /* a path in the same parent, absent */
	const int n = 200;

	sl_options oa = base_opts();
	sl_db *a = open_dir(dir_a, &oa);
	for (int i = 0; i < n; i++) {
		put_v(a, 'a', i, 1);
	}
	sl_options ob = base_opts();
	sl_db *b = open_dir(dir_b, &ob);
	put_v(b, 'b', 0, 3);
	sl_close(b);
	tu_snapshot b_files;
	assert_int_equal(tu_snapshot_take(dir_b, &b_files), 0);

	sl_options o2;
	sl_options_init(&o2);
	o2.segment_bytes = 128 * 1024;
	o2.sync = SL_SYNC_ALWAYS;
	o2.quiet = tu_quiet();

	/* The target does not exist. */
	int rc = sl_swap_dir(a, missing, &o2);
	if (rc != SL_ENOTFOUND) {
		fail_msg("swap to a missing directory: %s (%d), wanted SL_ENOTFOUND",
		         sl_strerror(rc), rc);
	}
	assert_false(tu_exists(missing));
	assert_true(max_seg_id(dir_a) >= 1);
	assert_int_equal(sl_sync_policy(a), SL_SYNC_NO); /* options not taken */
	put_v(a, 'a', n, 1);
	check_v(a, 'a', n, 1);
	check_v(a, 'a', 0, 1);

	/* Bad options: SL_EINVAL, nothing renamed, nothing adopted. */
	for (int bad = 0; bad < 6; bad++) {
		sl_options ox = o2;
		switch (bad) {
		case 0:
			ox.sync_interval_ms = 0;
			break;
		case 1:
			ox.segment_bytes = 100;
			break;
		case 2:
			ox.sync = (sl_sync)7;
			break;
		case 3:
			ox.compact_dead_ratio = 0.0;
			break;
		case 4:
			ox.compact_dead_ratio = 1.5;
			break;
		case 5:
			ox.compact_background = 1;
			ox.compact_interval_ms = 0;
			break;
		}
		rc = sl_swap_dir(a, dir_b, &ox);
		if (rc != SL_EINVAL) {
			fail_msg("bad options #%d: %s (%d), wanted SL_EINVAL", bad, sl_strerror(rc),
			         rc);
		}
		assert_dir_equals(dir_b, &b_files);
		assert_int_equal(sl_sync_policy(a), SL_SYNC_NO);
	}

	/* NULL arguments. */
	assert_int_equal(sl_swap_dir(NULL, dir_b, &o2), SL_EINVAL);
	assert_int_equal(sl_swap_dir(a, NULL, &o2), SL_EINVAL);
	assert_int_equal(sl_swap_dir(a, dir_b, NULL), SL_EINVAL);
	assert_dir_equals(dir_b, &b_files);
	assert_int_equal(sl_sync_policy(a), SL_SYNC_NO);

	/* The handle goes on at its old path: rotations land in dir_a. */
	uint64_t before = max_seg_id(dir_a);
	for (int i = n + 1; i < 2 * n + 400; i++) {
		put_v(a, 'a', i, 2);
	}
	assert_true(max_seg_id(dir_a) > before);
	sl_close(a);
	assert_dir_equals(dir_b, &b_files);
	assert_false(tu_exists(missing));

	sl_options ro = base_opts();
	a = open_dir(dir_a, &ro);
	assert_int_equal(stats(a).keys, 2 * n + 400);
	for (int i = 0; i < 2 * n + 400; i++) {
		check_v(a, 'a', i, i <= n ? 1 : 2);
	}
	check_absent(a, 'b', 0);
	sl_close(a);
	b = open_dir(dir_b, &ro);
	assert_int_equal(stats(b).keys, 1);
	check_v(b, 'b', 0, 3);
	sl_close(b);

	tu_snapshot_free(&b_files);
	assert_int_equal(tu_rm_rf(dir_a), 0);
	assert_int_equal(tu_rm_rf(dir_b), 0);
	free(dir_a);
	free(dir_b);
	free(missing);
}

/* A parent directory's fsync that fails after the exchange: not known
 * durable, so the directories are traded back and the swap fails (it was
 * reported done: a follower counted the new store durable, and a power
 * loss could bring the old one back under its name). */
static _Atomic int g_dirsync_fail;

static int dirsync_fsync(int fd)
{
	struct stat st;
	if (atomic_load(&g_dirsync_fail) && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		errno = EIO;
		return -1;
	}
	return fsync(fd);
}

static void test_swap_parent_fsync_failure_trades_back(void **state)
{
	(void)state;
	char *dir_a = tu_mkdtemp("swap-pfs-a");
	char *dir_b = tu_mkdtemp("swap-pfs-b");
	assert_non_null(dir_a);
	assert_non_null(dir_b);
	struct sl_io io = sl_io_default;
	io.fsync = dirsync_fsync;
	sl_options oa = base_opts();
	oa.io = &io;
	sl_db *a = open_dir(dir_a, &oa);
	for (int i = 0; i < 50; i++) {
		put_v(a, 'a', i, 1);
	}
	sl_options ob = base_opts();
	sl_db *b = open_dir(dir_b, &ob);
	put_v(b, 'b', 0, 3);
	sl_close(b);
	tu_snapshot b_files;
	assert_int_equal(tu_snapshot_take(dir_b, &b_files), 0);
	sl_options o2 = base_opts();
	o2.sync = SL_SYNC_ALWAYS;
	atomic_store(&g_dirsync_fail, 1);
	int rc = sl_swap_dir(a, dir_b, &o2);
	atomic_store(&g_dirsync_fail, 0);
	if (rc != SL_EIO) {
		fail_msg("swap with a failing parent fsync: %s (%d), wanted SL_EIO",
		         sl_strerror(rc), rc);
	}
	assert_dir_equals(dir_b, &b_files); /* b's store is back under its name */
	assert_int_equal(sl_sync_policy(a), SL_SYNC_NO);
	put_v(a, 'a', 50, 1); /* the handle still writes at its own path */
	check_v(a, 'a', 0, 1);
	sl_close(a);
	a = open_dir(dir_a, &oa);
	check_v(a, 'a', 0, 1);
	check_v(a, 'a', 50, 1);
	check_absent(a, 'b', 0);
	sl_close(a);
	tu_snapshot_free(&b_files);
	tu_rm_rf(dir_a);
	tu_rm_rf(dir_b);
	free(dir_a);
	free(dir_b);
}

/* ---- 4. SL_SYNC_ALWAYS after the swap ------------------------------------ */

static void test_swap_sync_always(void **state)
{
	(void)state;
	char *dir_a = tu_mkdtemp("swap-always-a");
	char *dir_b = tu_mkdtemp("swap-always-b");
	assert_non_null(dir_a);
	assert_non_null(dir_b);

	sl_options oa = base_opts();
	sl_db *a = open_dir(dir_a, &oa);
	char k[16];
	uint8_t v[VLEN];
	uint64_t seq = 0;
	for (int i = 0; i < 50; i++) {
		key_of('a', i, k);
		val_of('a', i, 1, v);
		assert_int_equal(sl_put_ex(a, k, 8, v, VLEN, 0, 0, &seq), SL_OK);
	}
	/* Under SL_SYNC_NO a put is not durable on return. */
	sl_stats pre = stats(a);
	assert_true(pre.synced_seq < seq);

	sl_options o2;
	sl_options_init(&o2);
	o2.segment_bytes = 64 * 1024;
	o2.sync = SL_SYNC_ALWAYS;
	o2.compact_background = 0;
	o2.quiet = tu_quiet();
	assert_int_equal(sl_swap_dir(a, dir_b, &o2), SL_OK);
	assert_int_equal(sl_sync_policy(a), SL_SYNC_ALWAYS);

	uint64_t fsyncs = stats(a).fsyncs;
	for (int i = 50; i < 100; i++) {
		key_of('a', i, k);
		val_of('a', i, 2, v);
		uint64_t s = 0;
		assert_int_equal(sl_put_ex(a, k, 8, v, VLEN, 0, 0, &s), SL_OK);
		assert_true(s > seq);
		seq = s;
		sl_stats st = stats(a);
		if (st.synced_seq < s) {
			fail_msg("put seq %llu returned under SL_SYNC_ALWAYS with synced_seq %llu",
			         (unsigned long long)s, (unsigned long long)st.synced_seq);
		}
	}
	/* A delete is durable on return too. */
	key_of('a', 0, k);
	uint64_t ds = 0;
	assert_int_equal(sl_delete_ex(a, k, 8, 0, &ds), SL_OK);
	assert_true(stats(a).synced_seq >= ds);
	assert_true(stats(a).fsyncs > fsyncs);
	sl_close(a);

	sl_options ro = base_opts();
	a = open_dir(dir_b, &ro);
	assert_int_equal(stats(a).keys, 99);
	check_absent(a, 'a', 0);
	for (int i = 1; i < 100; i++) {
		check_v(a, 'a', i, i < 50 ? 1 : 2);
	}
	sl_close(a);
	assert_int_equal(count_entries(dir_a), 0);

	assert_int_equal(tu_rm_rf(dir_a), 0);
	assert_int_equal(tu_rm_rf(dir_b), 0);
	free(dir_a);
	free(dir_b);
}

/* ---- 5. new intervals apply at once; compaction can be turned off -------- */

static void test_swap_new_intervals(void **state)
{
	(void)state;
	char *dir_a = tu_mkdtemp("swap-intv-a");
	char *dir_b = tu_mkdtemp("swap-intv-b");
	assert_non_null(dir_a);
	assert_non_null(dir_b);
	sl_options o = base_opts();
	o.sync = SL_SYNC_EVERYSEC;
	o.sync_interval_ms = 60000; /* the flusher sleeps a minute */
	o.compact_background = 1;
	o.compact_interval_ms = 60000;
	/* segments that do not fill: a sealed segment wakes the flusher, which
	 * then syncs */
	o.segment_bytes = 64u << 20;
	sl_db *db = open_dir(dir_a, &o);
	/* The first put asks the flusher to populate the segment ahead, and
	 * after populating it syncs: let that pass end first (wait for its
	 * fsync), so that the rounds below, which stay within what it
	 * populated, wake it for nothing.  Under ThreadSanitizer the populate
	 * ran on after the puts and its sync came between two checks. */
	put_v(db, 'w', 0, 0);
	for (int waited = 0; stats(db).fsyncs == 0 && waited < 10000; waited += 10) {
		usleep(10 * 1000);
	}
	int unsynced = 0;
	for (int round = 0; round < 5 && !unsynced; round++) {
		for (int i = 0; i < 200; i++) {
			put_v(db, 'i', i, 0);
		}
		unsynced = stats(db).synced_seq < sl_last_seq(db);
		if (!unsynced) {
			usleep(300 * 1000);
		}
	}
	assert_true(unsynced);
	sl_options o2 = base_opts();
	o2.sync = SL_SYNC_EVERYSEC;
	o2.sync_interval_ms = 50;
	o2.compact_background = 0;
	assert_int_equal(sl_swap_dir(db, dir_b, &o2), SL_OK);
	/* Within a second, not after the old minute. */
	int waited = 0;
	while (stats(db).synced_seq < sl_last_seq(db) && waited < 1000) {
		usleep(10 * 1000);
		waited += 10;
	}
	assert_true(stats(db).synced_seq >= sl_last_seq(db));
	/* Compaction is off now: much dead data, no background compaction. */
	for (int r = 1; r <= 20; r++) {
		for (int i = 0; i < 200; i++) {
			put_v(db, 'i', i, r);
		}
	}
	usleep(300 * 1000);
	assert_int_equal(stats(db).compactions, 0);
	for (int i = 0; i < 200; i++) {
		check_v(db, 'i', i, 20);
	}
	sl_close(db);
	db = open_dir(dir_b, &o2);
	for (int i = 0; i < 200; i++) {
		check_v(db, 'i', i, 20);
	}
	sl_close(db);
	assert_int_equal(tu_rm_rf(dir_a), 0);
	assert_int_equal(tu_rm_rf(dir_b), 0);
	free(dir_a);
	free(dir_b);
}

/* ---- sl_move_in ---------------------------------------------------------- */

/* Keys in store 'a' (the old one: more keys, so more segments, than the
 * new one, whose files cannot all overwrite the old ones) and 'b'. */
static int nkeys(char s)
{
	return s == 'a' ? 3000 : 1500;
}

/* DIR with store 'a' (several segments, REPL "old", and an operator's
 * file NOTES) and DIR/.resync with store 'b' (REPL "new"), both closed. */
static char *build_pair(void)
{
	char *dir = tu_mkdtemp("movein");
	assert_non_null(dir);
	sl_options o = base_opts();
	char sub[512], p[TU_PATH];
	snprintf(sub, sizeof(sub), "%s/.resync", dir);
	const char *dirs[2] = {dir, sub};
	const char *repl[2] = {"old", "new"};
	for (int d = 0; d < 2; d++) {
		sl_db *db = open_dir(dirs[d], &o);
		for (int i = 0; i < nkeys((char)('a' + d)); i++) {
			put_v(db, (char)('a' + d), i, d);
		}
		sl_close(db);
		snprintf(p, sizeof(p), "%s/REPL", dirs[d]);
		assert_int_equal(tu_write_file(p, repl[d], 3), 0);
	}
	snprintf(p, sizeof(p), "%s/NOTES", dir);
	assert_int_equal(tu_write_file(p, "mine", 4), 0);
	assert_true(max_seg_id(dir) > max_seg_id(sub)); /* old files the new do not replace */
	assert_true(max_seg_id(sub) >= 3);
	return dir;
}

/* dir holds store s ('a' or 'b') alone, REPL included, and NOTES. */
static void check_store(const char *dir, char s)
{
	sl_options o = base_opts();
	sl_db *db = open_dir(dir, &o);
	char other = s == 'a' ? 'b' : 'a';
	for (int i = 0; i < nkeys(s); i++) {
		check_v(db, s, i, s - 'a');
	}
	for (int i = 0; i < nkeys(other); i++) {
		check_absent(db, other, i);
	}
	assert_int_equal(stats(db).keys, (uint64_t)nkeys(s));
	sl_close(db);
	char p[TU_PATH];
	snprintf(p, sizeof(p), "%s/REPL", dir);
	uint8_t *buf = NULL;
	size_t len = 0;
	assert_int_equal(tu_read_file(p, &buf, &len), 0);
	assert_int_equal(len, 3);
	assert_memory_equal(buf, s == 'a' ? "old" : "new", 3);
	free(buf);
	snprintf(p, sizeof(p), "%s/NOTES", dir);
	assert_int_equal(tu_read_file(p, &buf, &len), 0);
	assert_int_equal(len, 4);
	free(buf);
}

static int has_staging(const char *dir)
{
	char p[TU_PATH];
	snprintf(p, sizeof(p), "%s/.resync", dir);
	return tu_exists(p);
}

static void touch(const char *dir, const char *name)
{
	char p[TU_PATH];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	assert_int_equal(tu_write_file(p, "", 0), 0);
}

static void test_move_in(void **state)
{
	(void)state;
	char *dir = build_pair();
	char st[TU_PATH];
	int nested = -1;
	assert_int_equal(sl_staging_dir(dir, st, sizeof(st), &nested), SL_OK);
	assert_int_equal(nested, 0); /* same filesystem as its parent */
	char want[TU_PATH];
	snprintf(want, sizeof(want), "%s.resync", dir);
	assert_string_equal(st, want);

	/* In use (the store, or the loaded one): refused, nothing moved. */
	sl_options o = base_opts();
	sl_db *db = open_dir(dir, &o);
	assert_int_equal(sl_move_in(dir), SL_EBUSY);
	sl_close(db);
	char sub[512];
	snprintf(sub, sizeof(sub), "%s/.resync", dir);
	db = open_dir(sub, &o);
	assert_int_equal(sl_move_in(dir), SL_EBUSY);
	sl_close(db);
	assert_true(has_staging(dir));
	/* No mark: sl_open leaves both alone. */
	check_store(dir, 'a');
	assert_true(has_staging(dir));

	assert_int_equal(sl_move_in(dir), SL_OK);
	assert_false(has_staging(dir));
	check_store(dir, 'b');
	assert_int_equal(sl_move_in(dir), SL_ENOTFOUND);
	tu_rm_rf(dir);
	free(dir);
}

/* Crash right after the mark, and halfway through removing the old files. */
static void test_move_in_interrupted_removing(void **state)
{
	(void)state;
	for (int half = 0; half <= 1; half++) {
		char *dir = build_pair();
		char sub[512];
		snprintf(sub, sizeof(sub), "%s/.resync", dir);
		touch(sub, "SWAP");
		if (half) {
			uint64_t *ids;
			int n = tu_list_ids(dir, "seg", &ids);
			assert_true(n >= 3);
			for (int i = 0; i < n / 2; i++) {
				char p[TU_PATH];
				tu_seg_path(p, sizeof(p), dir, ids[i], "seg");
				assert_int_equal(unlink(p), 0);
			}
			free(ids);
		}
		check_store(dir, 'b');
		assert_false(has_staging(dir));
		tu_rm_rf(dir);
		free(dir);
	}
}

/* Crash halfway through moving the new files in: the old ones are gone,
 * some new ones are in DIR, the rest still in .resync. */
static void test_move_in_interrupted_moving(void **state)
{
	(void)state;
	char *dir = build_pair();
	char sub[512], from[TU_PATH], to[TU_PATH];
	snprintf(sub, sizeof(sub), "%s/.resync", dir);
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] != '.' && strcmp(e->d_name, "LOCK") != 0 &&
		    strcmp(e->d_name, "NOTES") != 0) {
			snprintf(from, sizeof(from), "%s/%s", dir, e->d_name);
			assert_int_equal(unlink(from), 0);
		}
	}
	closedir(d);
	touch(sub, "MOVING");
	uint64_t *ids;
	int n = tu_list_ids(sub, "seg", &ids);
	assert_true(n >= 3);
	for (int i = 0; i < n / 2; i++) {
		tu_seg_path(from, sizeof(from), sub, ids[i], "seg");
		tu_seg_path(to, sizeof(to), dir, ids[i], "seg");
		assert_int_equal(rename(from, to), 0);
	}
	free(ids);
	check_store(dir, 'b');
	assert_false(has_staging(dir));
	tu_rm_rf(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_swap_basic),
	    cmocka_unit_test(test_swap_starts_compaction),
	    cmocka_unit_test(test_swap_errors_change_nothing),
	    cmocka_unit_test(test_swap_parent_fsync_failure_trades_back),
	    cmocka_unit_test(test_swap_sync_always),
	    cmocka_unit_test(test_swap_new_intervals),
	    cmocka_unit_test(test_move_in),
	    cmocka_unit_test(test_move_in_interrupted_removing),
	    cmocka_unit_test(test_move_in_interrupted_moving),
	};
	const char *filter = getenv("SL_TEST_FILTER"); /* e.g. "test_swap_basic" */
	if (filter != NULL && *filter != '\0') {
		cmocka_set_test_filter(filter);
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
