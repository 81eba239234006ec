/*
 * test_compact.c — compaction (storage/compact.c): space reclaimed, nothing
 * resurrected, the protect hook, TTL drop, disk full, and real crashes at
 * every I/O step inside a run.  Numbers in comments cite the visibility
 * order at the top of compact.c.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "db.h"
#include "format.h"
#include "io.h"
#include "record.h"
#include "shiplog.h"

/* ---- helpers ------------------------------------------------------------- */

static char g_dir[512];

static void make_dir(const char *tag)
{
	const char *base = getenv("SL_TEST_TMP");
	if (base == NULL || *base == 0) {
		base = "/tmp";
	}
	mkdir(base, 0755);
	snprintf(g_dir, sizeof(g_dir), "%s/compact-%s-XXXXXX", base, tag);
	assert_non_null(mkdtemp(g_dir));
}

static void remove_dir(void)
{
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
	assert_int_equal(system(cmd), 0);
}

static void key_of(int i, char *k)
{
	snprintf(k, 17, "key-%012d", i);
}

/* Value of key i at version r: 100 bytes, first bytes name both. */
static void val_of(int i, int r, char *v)
{
	memset(v, 'a' + (r % 26), 100);
	snprintf(v, 100, "%d/%d", i, r);
	v[strlen(v)] = '.';
}

static sl_options opts(void)
{
	sl_options o;
	sl_options_init(&o);
	o.segment_bytes = 64 * 1024;
	o.sync = SL_SYNC_NO;
	o.compact_background = 0;
	o.quiet = 1;
	return o;
}

static void check_value(sl_db *db, int i, int r)
{
	char k[32], v[128];
	void *got;
	size_t gl;
	key_of(i, k);
	val_of(i, r, v);
	int rc = sl_get(db, k, 16, &got, &gl);
	if (rc != SL_OK) {
		fail_msg("key %d: %s, wanted version %d", i, sl_strerror(rc), r);
	}
	assert_int_equal(gl, 100);
	assert_memory_equal(got, v, 100);
	free(got);
}

static void check_absent(sl_db *db, int i)
{
	char k[32];
	void *got;
	size_t gl;
	key_of(i, k);
	int rc = sl_get(db, k, 16, &got, &gl);
	if (rc != SL_ENOTFOUND) {
		fail_msg("key %d: expected absent, got %s", i, sl_strerror(rc));
	}
}

static void put(sl_db *db, int i, int r)
{
	char k[32], v[128];
	key_of(i, k);
	val_of(i, r, v);
	assert_int_equal(sl_put(db, k, 16, v, 100, NULL), SL_OK);
}

static void del(sl_db *db, int i)
{
	char k[32];
	key_of(i, k);
	assert_int_equal(sl_delete(db, k, 16, NULL), SL_OK);
}

static int count_files(const char *suffix)
{
	DIR *d = opendir(g_dir);
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name), sl = strlen(suffix);
		n += l >= sl && strcmp(e->d_name + l - sl, suffix) == 0;
	}
	closedir(d);
	return n;
}

static int file_exists(uint32_t id, const char *suffix)
{
	char p[600];
	snprintf(p, sizeof(p), "%s/%010u%s", g_dir, id, suffix);
	return access(p, F_OK) == 0;
}

/* ---- space: 10 overwrites of the same keys, then a full compaction ------- */

static void test_space_after_overwrites(void **state)
{
	(void)state;
	make_dir("space");
	sl_options o = opts();
	o.segment_bytes = 1 << 20;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	const int n = 100000;
	for (int r = 0; r < 10; r++) {
		for (int i = 0; i < n; i++) {
			put(db, i, r);
		}
	}
	sl_stats before, after;
	assert_int_equal(sl_stats_get(db, &before), SL_OK);
	assert_int_equal(sl_compact(db), SL_OK);
	assert_int_equal(sl_stats_get(db, &after), SL_OK);
	/* Space test: bytes on disk within 1.5x of the live bytes. */
	assert_true(after.disk_bytes <= after.live_bytes + after.live_bytes / 2);
	assert_true(after.compactions >= 1);
	assert_true(after.compact_bytes_reclaimed > before.disk_bytes / 2);
	assert_true(after.compact_bytes_written > 0);
	assert_true(after.last_compaction_ms > 0);
	assert_int_equal(after.keys, n);
	for (int i = 0; i < n; i += 7) {
		check_value(db, i, 9);
	}
	sl_close(db);
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int i = 0; i < n; i += 7) {
		check_value(db, i, 9);
	}
	sl_stats re;
	assert_int_equal(sl_stats_get(db, &re), SL_OK);
	assert_int_equal(re.keys, n);
	assert_int_equal(re.corrupt_records, 0);
	assert_int_equal(count_files(".tmp"), 0);
	sl_close(db);
	remove_dir();
}

/* ---- small segments are merged together ---------------------------------- */

static int count_small_segments(uint64_t below)
{
	DIR *d = opendir(g_dir);
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);
		if (l == 14 && strcmp(e->d_name + 10, ".seg") == 0) {
			char p[600];
			struct stat st;
			snprintf(p, sizeof(p), "%s/%s", g_dir, e->d_name);
			n += stat(p, &st) == 0 && (uint64_t)st.st_size < below;
		}
	}
	closedir(d);
	return n;
}

static void test_small_segments_merged(void **state)
{
	(void)state;
	make_dir("merge");
	sl_options o = opts();
	o.compact_background = 1;
	o.compact_interval_ms = 10;
	o.compact_dead_ratio = 1.0; /* only merging small segments triggers a run */
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	/* Each round: a few small records, then a value that fills a segment on
	 * its own, so the small records' segment is sealed small. */
	static char big[65400];
	memset(big, 'B', sizeof(big));
	char k[32];
	for (int r = 0; r < 10; r++) {
		for (int i = 0; i < 5; i++) {
			put(db, r * 5 + i, r);
		}
		snprintf(k, sizeof(k), "big-%02d", r);
		assert_int_equal(sl_put(db, k, strlen(k), big, sizeof(big), NULL), SL_OK);
	}
	sl_stats st;
	int small = 0;
	for (int t = 0; t < 300; t++) { /* the background thread merges them */
		usleep(10000);
		small = count_small_segments(16 * 1024);
		if (small <= 1) { /* one merged output (the active one holds a big value) */
			break;
		}
	}
	if (small > 1) {
		fail_msg("%d small segments left unmerged", small);
	}
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_true(st.compactions >= 1);
	for (int r = 0; r < 10; r++) {
		for (int i = 0; i < 5; i++) {
			check_value(db, r * 5 + i, r);
		}
	}
	sl_close(db);
	/* And it stays merged: no run rewrites an output that cannot shrink. */
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	uint64_t runs = st.compactions;
	usleep(200000);
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_int_equal(st.compactions, runs);
	sl_close(db);
	remove_dir();
}

/* ---- resurrection: delete, compact part of the log, reopen ---------------- */

static void test_no_resurrection_partial_compaction(void **state)
{
	(void)state;
	make_dir("resurrect");
	sl_options o = opts();
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	/* key 0's old values spread over many early segments */
	for (int r = 0; r < 50; r++) {
		put(db, 0, r);
		for (int i = 1; i < 40; i++) {
			put(db, i, r);
		}
	}
	uint64_t del_seq;
	char k[32];
	key_of(0, k);
	assert_int_equal(sl_delete(db, k, 16, &del_seq), SL_OK);
	for (int r = 50; r < 60; r++) { /* more segments after the tombstone */
		for (int i = 1; i < 40; i++) {
			put(db, i, r);
		}
	}
	/* Compact only the segments before the tombstone's: protect the rest. */
	sl_compact_protect(db, del_seq);
	assert_int_equal(sl_compact(db), SL_OK);
	sl_stats st;
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_true(st.compactions >= 1);
	check_absent(db, 0);
	sl_close(db);
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	check_absent(db, 0);
	for (int i = 1; i < 40; i++) {
		check_value(db, i, 59);
	}
	/* Now everything, tombstone included (it may be dropped). */
	sl_compact_protect(db, 0);
	assert_int_equal(sl_compact(db), SL_OK);
	check_absent(db, 0);
	sl_close(db);
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	check_absent(db, 0);
	for (int i = 1; i < 40; i++) {
		check_value(db, i, 59);
	}
	sl_close(db);
	remove_dir();
}

/* ---- the protect hook: segments holding seq >= X are not touched -------- */

static void test_protect_hook(void **state)
{
	(void)state;
	make_dir("protect");
	sl_options o = opts();
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int r = 0; r < 50; r++) {
		for (int i = 0; i < 100; i++) {
			put(db, i, r);
		}
	}
	sl_stats st;
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	uint64_t x = st.last_seq / 2;
	sl_compact_protect(db, x);
	/* The highest seq in each segment file, read off the disk (format.h). */
	static uint64_t maxseq[1000];
	uint32_t maxid = 0;
	for (uint32_t id = 1; id < 1000; id++) {
		char p[600];
		snprintf(p, sizeof(p), "%s/%010u.seg", g_dir, id);
		FILE *f = fopen(p, "rb");
		if (f == NULL) {
			continue;
		}
		maxid = id;
		static uint8_t buf[1 << 20];
		size_t len = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		for (size_t off = SL_SEG_HDR_SIZE; off + SL_REC_HDR_SIZE <= len;) {
			if (buf[off + 4] == 0) {
				break;
			}
			uint64_t seq = sl_get64(buf + off + 12);
			maxseq[id] = seq > maxseq[id] ? seq : maxseq[id];
			off += SL_REC_HDR_SIZE + sl_get16(buf + off + 6) + sl_get32(buf + off + 8);
		}
	}
	assert_true(maxid > 10);
	assert_int_equal(sl_compact(db), SL_OK);
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_true(st.compactions >= 1);
	int gone = 0;
	for (uint32_t id = 1; id <= maxid; id++) {
		if (maxseq[id] >= x && !file_exists(id, ".seg")) {
			fail_msg("segment %u (holding seq %llu >= %llu) was compacted", id,
			         (unsigned long long)maxseq[id], (unsigned long long)x);
		}
		gone += maxseq[id] != 0 && maxseq[id] < x && !file_exists(id, ".seg");
	}
	assert_true(gone > 0);
	for (int i = 0; i < 100; i++) {
		check_value(db, i, 49);
	}
	sl_close(db);
	remove_dir();
}

/* ---- TTL: expired records are dropped by compaction --------------------- */

static uint64_t fake_now = 1700000000000ull;
static uint64_t fake_clock(void)
{
	return fake_now;
}

static void test_ttl_dropped(void **state)
{
	(void)state;
	make_dir("ttl");
	struct sl_io io = sl_io_default;
	io.now_ms = fake_clock;
	sl_options o = opts();
	o.io = &io;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	char k[32], v[128];
	for (int i = 0; i < 2000; i++) {
		key_of(i, k);
		val_of(i, 0, v);
		assert_int_equal(sl_put_ttl(db, k, 16, v, 100, i % 2 ? 1000 : 0, NULL), SL_OK);
	}
	/* a TTL beyond the clock's range never expires (it wrapped: the key
	 * was expired when written, or got no TTL at all) */
	key_of(200000, k);
	val_of(200000, 0, v);
	assert_int_equal(sl_put_ttl(db, k, 16, v, 100, UINT64_MAX - 2, NULL), SL_OK);
	check_value(db, 200000, 0);
	for (int i = 0; i < 1000; i++) { /* push them out of the active segment */
		put(db, 100000 + i, 0);
	}
	fake_now += 5000;
	check_value(db, 200000, 0);
	for (int i = 1; i < 2000; i += 2) {
		check_absent(db, i);
	}
	sl_stats before, after;
	assert_int_equal(sl_stats_get(db, &before), SL_OK);
	assert_int_equal(sl_compact(db), SL_OK);
	assert_int_equal(sl_stats_get(db, &after), SL_OK);
	/* expired keys left the keydir: they were dropped, not copied */
	assert_int_equal(before.keys - after.keys, 1000);
	check_value(db, 200000, 0);
	for (int i = 0; i < 2000; i++) {
		if (i % 2) {
			check_absent(db, i);
		} else {
			check_value(db, i, 0);
		}
	}
	sl_close(db);
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int i = 0; i < 2000; i++) {
		if (i % 2) {
			check_absent(db, i);
		} else {
			check_value(db, i, 0);
		}
	}
	sl_close(db);
	remove_dir();
}

/* ---- TTL: background compaction reclaims expired records ---------------- */

static _Atomic uint64_t bg_now = 1700000000000ull; /* the compactor thread reads it */
static uint64_t bg_clock(void)
{
	return atomic_load(&bg_now);
}

static void wait_compactions(sl_db *db, uint64_t at_least, sl_stats *st)
{
	for (int waited = 0; waited < 10000; waited += 20) {
		assert_int_equal(sl_stats_get(db, st), SL_OK);
		if (st->compactions >= at_least) {
			return;
		}
		usleep(20 * 1000);
	}
	fail_msg("no background compaction within 10 s (%llu runs)",
	         (unsigned long long)st->compactions);
}

/* Keys written with a TTL and never touched again: once they have expired,
 * the background compactor (no `compact` asked) reclaims their bytes.  Until
 * the fifteenth session it picked segments by dead bytes alone, and an
 * expired record counts as live until compaction drops it: a segment of
 * expired keys never reached the dead ratio, and a TTL workload's disk grew
 * for good.  The oldest segment (permanent keys, and older values of
 * some of the TTL keys) stays, so the expired records may not be dropped
 * (an older value would come back): they become tombstones, which keep
 * those values hidden across a reopen and do not make the segment worth
 * compacting again. */
/* Tombstones that hide nothing any more are reclaimed in the background.
 * Churned keys are put and deleted while an older segment of long-lived
 * keys stays: their tombstones must be kept, and end up in segments of
 * tombstones only.  Once the long-lived keys are deleted and their
 * segment is gone, those tombstones hide nothing; a segment of them has no
 * dead bytes by the count (the keydir points at every tombstone), so the
 * background compactor never took one again, and a delete-heavy store
 * kept every tombstone it ever wrote (only a manual compact dropped them). */
static void test_tombstones_reclaimed_in_background(void **state)
{
	(void)state;
	make_dir("tombbg");
	sl_options o = opts();
	o.compact_background = 1;
	o.compact_interval_ms = 20;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int i = 0; i < 500; i++) { /* long-lived */
		put(db, i, 0);
	}
	for (int i = 0; i < 3000; i++) { /* churned */
		put(db, 1000 + i, 0);
	}
	for (int i = 0; i < 3000; i++) {
		del(db, 1000 + i);
	}
	for (int i = 0; i < 600; i++) { /* the tombstones out of the active segment */
		put(db, 200000 + i, 0);
	}
	sl_stats st;
	wait_compactions(db, 1, &st);
	usleep(300 * 1000);
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_true(st.tombstones >= 3000); /* kept: the long-lived segment stays */
	for (int i = 0; i < 500; i++) {
		del(db, i);
	}
	for (int i = 0; i < 600; i++) {
		put(db, 300000 + i, 0);
	}
	uint64_t t0 = sl_mono_ns();
	do {
		usleep(50 * 1000);
		assert_int_equal(sl_stats_get(db, &st), SL_OK);
	} while (st.tombstones > 600 && sl_mono_ns() - t0 < 10000000000ull);
	if (st.tombstones > 600) {
		fail_msg("%llu tombstones still on disk 10 s after they stopped hiding anything",
		         (unsigned long long)st.tombstones);
	}
	for (int i = 0; i < 3000; i += 97) {
		check_absent(db, 1000 + i);
	}
	for (int i = 0; i < 600; i += 7) {
		check_value(db, 200000 + i, 0);
	}
	/* no churn once they are gone */
	usleep(300 * 1000);
	uint64_t runs = (sl_stats_get(db, &st), st.compactions);
	usleep(300 * 1000);
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_int_equal(st.compactions, runs);
	sl_close(db);
	/* and the deleted keys stay deleted after a reopen */
	o.compact_background = 0;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int i = 0; i < 3000; i += 13) {
		check_absent(db, 1000 + i);
	}
	for (int i = 0; i < 500; i += 13) {
		check_absent(db, i);
	}
	sl_close(db);
	remove_dir();
}

/* A full compaction whose first run finds a bad record (damage after
 * the open, in a live record of the oldest segment: its hint was loaded,
 * nothing read it) goes on with the other segments. */
static void test_full_compaction_goes_on_past_a_bad_record(void **state)
{
	(void)state;
	make_dir("badrec");
	sl_options o = opts();
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int i = 0; i < 400; i++) { /* segment 1: key 0 first */
		put(db, i, 0);
	}
	for (int r = 1; r <= 6; r++) { /* dead bytes in every segment */
		for (int i = 100; i < 400; i++) {
			put(db, i, r);
		}
	}
	sl_close(db);
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	sl_stats before, st;
	assert_int_equal(sl_stats_get(db, &before), SL_OK);
	assert_true(before.segments >= 4);
	/* a value byte of key 0's record, the first in segment 1 */
	char path[600];
	snprintf(path, sizeof(path), "%s/0000000001.seg", g_dir);
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, "#", 1, SL_SEG_HDR_SIZE + SL_REC_HDR_SIZE + 16 + 50), 1);
	close(fd);
	assert_int_equal(sl_compact(db), SL_OK);
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	if (st.compactions == 0 || st.disk_bytes >= before.disk_bytes) {
		fail_msg("compactions %llu, disk %llu -> %llu bytes: stopped at the bad record",
		         (unsigned long long)st.compactions, (unsigned long long)before.disk_bytes,
		         (unsigned long long)st.disk_bytes);
	}
	for (int i = 100; i < 400; i += 11) {
		check_value(db, i, 6);
	}
	sl_close(db);
	remove_dir();
}

static void test_ttl_reclaimed_in_background(void **state)
{
	(void)state;
	make_dir("ttlbg");
	struct sl_io io = sl_io_default;
	io.now_ms = bg_clock;
	sl_options o = opts();
	o.io = &io;
	o.compact_background = 1;
	o.compact_interval_ms = 20;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	/* the oldest segment: 500 permanent keys, and keys 0..99 of the
	 * TTL range with a value of their own */
	for (int i = 0; i < 500; i++) {
		put(db, 100000 + i, 0);
	}
	for (int i = 0; i < 100; i++) {
		put(db, i, 7);
	}
	/* then 3000 keys (about 7 segments) that expire in 1 s */
	char k[32], v[128];
	for (int i = 0; i < 3000; i++) {
		key_of(i, k);
		val_of(i, 1, v);
		assert_int_equal(sl_put_ttl(db, k, 16, v, 100, 1000, NULL), SL_OK);
	}
	for (int i = 0; i < 600; i++) { /* out of the active segment */
		put(db, 200000 + i, 0);
	}
	sl_stats before, st;
	usleep(200 * 1000); /* nothing has expired: nothing is worth compacting */
	assert_int_equal(sl_stats_get(db, &before), SL_OK);
	assert_int_equal(before.compactions, 0);
	check_value(db, 5, 1);

	atomic_fetch_add(&bg_now, 2000);
	wait_compactions(db, 1, &st);
	usleep(200 * 1000); /* let it finish what it found */
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	for (int i = 0; i < 3000; i++) {
		check_absent(db, i);
	}
	for (int i = 0; i < 500; i += 7) {
		check_value(db, 100000 + i, 0);
	}
	/* the 3000 expired values' bytes are gone (tombstones of 16-byte keys
	 * remain at most) */
	assert_true(st.compact_bytes_reclaimed > 3000u * 100u * 3 / 4);
	assert_true(st.disk_bytes + 3000u * 100u * 3 / 4 < before.disk_bytes);
	/* no churn: its own output (tombstones) is not compacted again */
	uint64_t runs = st.compactions;
	usleep(300 * 1000);
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_int_equal(st.compactions, runs);
	sl_close(db);

	/* the older values of keys 0..99 stay hidden after a reopen */
	o.compact_background = 0;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int i = 0; i < 3000; i++) {
		check_absent(db, i);
	}
	for (int i = 0; i < 500; i += 7) {
		check_value(db, 100000 + i, 0);
	}
	sl_close(db);
	remove_dir();
}

/* A full compaction leaves alone a segment whose TTL records have not
 * expired yet (and nothing else to drop): it rewrote every segment that ever
 * held one, at every `compact`, until the fifteenth session. */
static void test_full_compaction_skips_unexpired_ttl(void **state)
{
	(void)state;
	make_dir("ttlkeep");
	struct sl_io io = sl_io_default;
	io.now_ms = bg_clock;
	sl_options o = opts();
	o.io = &io;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	char k[32], v[128];
	for (int i = 0; i < 2000; i++) {
		key_of(i, k);
		val_of(i, 0, v);
		assert_int_equal(sl_put_ttl(db, k, 16, v, 100, 3600000, NULL), SL_OK);
	}
	sl_stats st;
	assert_int_equal(sl_compact(db), SL_OK);
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_int_equal(st.compact_bytes_written, 0);
	/* an hour later they have: now it takes them (and drops them) */
	atomic_fetch_add(&bg_now, 3600000);
	assert_int_equal(sl_compact(db), SL_OK);
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_true(st.compact_bytes_reclaimed > 1000u * 100u);
	for (int i = 0; i < 2000; i += 13) {
		check_absent(db, i);
	}
	sl_close(db);
	remove_dir();
}

/* ---- disk full during compaction ---------------------------------------- */

static _Atomic int g_full; /* 1: fallocate and pwrite fail with ENOSPC (atomic: the
                            * flusher thread writes through these hooks too) */
static int full_fallocate(int fd, off_t off, off_t len)
{
	if (g_full) {
		errno = ENOSPC;
		return -1;
	}
	return sl_io_default.fallocate(fd, off, len);
}
static ssize_t full_pwrite(int fd, const void *b, size_t n, off_t off)
{
	if (g_full) {
		errno = ENOSPC;
		return -1;
	}
	return sl_io_default.pwrite(fd, b, n, off);
}

static _Atomic int g_abandon_lines;
static void count_abandon(void *arg, const char *level, const char *msg)
{
	(void)arg;
	(void)level;
	if (strstr(msg, "compaction abandoned") != NULL) {
		atomic_fetch_add(&g_abandon_lines, 1);
	}
}

static _Atomic int g_read_bad_lines;
static void count_read_bad(void *arg, const char *level, const char *msg)
{
	(void)arg;
	if (strcmp(level, "error") == 0 && strstr(msg, "found by a read") != NULL) {
		atomic_fetch_add(&g_read_bad_lines, 1);
	}
}

/* A bad record found by a get is logged (once for its segment, however
 * often it is read), counted, not served, and its segment is kept. */
static void test_bad_record_read_is_logged(void **state)
{
	(void)state;
	make_dir("readbad");
	sl_options o = opts();
	o.log_fn = count_read_bad;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	const char *val = "VALUE-TO-DAMAGE-0123456789";
	assert_int_equal(sl_put(db, "k", 1, val, strlen(val), NULL), SL_OK);
	assert_int_equal(sl_put(db, "other", 5, "fine", 4, NULL), SL_OK);
	/* the value's bytes in the segment file, one of them flipped */
	char segp[600];
	snprintf(segp, sizeof(segp), "%s/%010u.seg", g_dir, 1u);
	FILE *f = fopen(segp, "rb");
	assert_non_null(f);
	static uint8_t buf[64 * 1024];
	size_t n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	const uint8_t *at = memmem(buf, n, val, strlen(val));
	assert_non_null(at);
	int fd = open(segp, O_RDWR);
	assert_true(fd >= 0);
	uint8_t b = (uint8_t)(at[3] ^ 0x01);
	assert_int_equal(pwrite(fd, &b, 1, (off_t)(at - buf) + 3), 1);
	close(fd);
	atomic_store(&g_read_bad_lines, 0);
	void *v = NULL;
	size_t vl = 0;
	for (int i = 0; i < 3; i++) {
		assert_int_equal(sl_get(db, "k", 1, &v, &vl), SL_ECORRUPT);
	}
	assert_int_equal(atomic_load(&g_read_bad_lines), 1);
	assert_int_equal(sl_get(db, "other", 5, &v, &vl), SL_OK);
	assert_memory_equal(v, "fine", 4);
	free(v);
	sl_stats st;
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_int_equal(st.corrupt_records, 3);
	sl_close(db);
	remove_dir();
}

static _Atomic int g_cut_lines;
static void count_cut(void *arg, const char *level, const char *msg)
{
	(void)arg;
	if (strcmp(level, "warn") == 0 && strstr(msg, "records past the end are lost") != NULL) {
		atomic_fetch_add(&g_cut_lines, 1);
	}
}

/* The offset of the first record boundary at or past `past` in the
 * segment file at path, within its first 128 KiB (past 0: half of what
 * was read). */
static size_t record_boundary_past(const char *path, size_t past)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	static uint8_t buf[128 * 1024];
	size_t n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	if (past == 0) {
		past = n / 2;
	}
	assert_true(past < n);
	size_t off = SL_SEG_HDR_SIZE;
	while (off < past) {
		sl_rec r;
		size_t size = 0;
		assert_int_equal(
		    sl_rec_decode(buf + off, n - off, SL_MAX_KEY, SL_MAX_VALUE, &r, &size),
		    SL_REC_OK);
		off += size;
	}
	return off;
}

/* A sealed segment cut at a record boundary scans clean: only its hint
 * says records are gone.  The open counts it (corrupt_records: what a
 * follower resyncs on) and says so, instead of the "damaged hint file"
 * it took for a bad hint. */
/* Segment 1 (sealed, hinted) cut `into` bytes past a record boundary
 * half way through: counted as one damage, logged once, its lost keys not
 * hidden. */
static void cut_short_of_its_hint(size_t into)
{
	make_dir("cutshort");
	sl_options o = opts();
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int i = 0; i < 2000; i++) {
		put(db, i, 0); /* ~280 KiB: segment 1 is sealed and hinted */
	}
	sl_close(db);
	char segp[600], hintp[600];
	snprintf(segp, sizeof(segp), "%s/%010u.seg", g_dir, 1u);
	snprintf(hintp, sizeof(hintp), "%s/%010u.hint", g_dir, 1u);
	struct stat hs;
	assert_int_equal(stat(hintp, &hs), 0);
	size_t off = record_boundary_past(segp, 0);
	assert_int_equal(truncate(segp, (off_t)(off + into)), 0);
	o.log_fn = count_cut;
	atomic_store(&g_cut_lines, 0);
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	sl_stats st;
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	/* one cut, one count (a cut inside a record was counted twice: by
	 * the hint's extent and by the scan's bad tail) */
	assert_int_equal(st.corrupt_records, 1);
	assert_int_equal(atomic_load(&g_cut_lines), 1);
	assert_true(st.keys < 2000); /* what was cut is gone: it is not hidden */
	sl_close(db);
	remove_dir();
}

static void test_segment_cut_short_of_its_hint_is_counted(void **state)
{
	(void)state;
	cut_short_of_its_hint(0);  /* at a record boundary */
	cut_short_of_its_hint(10); /* inside a record */
}

static _Atomic int g_damaged_hint_lines;
static void count_damaged_hint(void *arg, const char *level, const char *msg)
{
	(void)arg;
	if (strcmp(level, "warn") == 0 && strstr(msg, "damaged hint file, scanning") != NULL) {
		atomic_fetch_add(&g_damaged_hint_lines, 1);
	}
}

/* A file of gigabytes named like a sealed segment's hint (a real hint
 * extended to 3 GiB, sparse: it takes no disk) is never read into memory:
 * the check for a segment shorter than its hint (sl_hint_extent) read any
 * hint up to 8 GiB whole.  The load refuses it by its size, the check
 * streams it and stops at the first byte past its last entry.  The
 * segment is scanned instead; nothing is lost. */
static void test_huge_hint_file_is_not_read_into_memory(void **state)
{
	(void)state;
	make_dir("hugehint");
	sl_options o = opts();
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int i = 0; i < 2000; i++) {
		put(db, i, 0); /* ~280 KiB: segments 1 .. 4 sealed and hinted */
	}
	sl_close(db);
	char hintp[600];
	snprintf(hintp, sizeof(hintp), "%s/%010u.hint", g_dir, 1u);
	assert_int_equal(truncate(hintp, (off_t)3 << 30), 0);
	struct rusage before, after;
	assert_int_equal(getrusage(RUSAGE_SELF, &before), 0);
	o.log_fn = count_damaged_hint;
	atomic_store(&g_damaged_hint_lines, 0);
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	assert_int_equal(getrusage(RUSAGE_SELF, &after), 0);
	long grew_kb = after.ru_maxrss - before.ru_maxrss;
	if (grew_kb > 512 * 1024) {
		fail_msg("opening with a 3 GiB hint file raised the peak RSS by %ld MiB",
		         grew_kb / 1024);
	}
	assert_int_equal(atomic_load(&g_damaged_hint_lines), 1);
	for (int i = 0; i < 2000; i++) {
		check_value(db, i, 0);
	}
	sl_close(db);
	remove_dir();
}

/* A segment written under a larger segment_bytes (8 MiB here; a
 * follower's full resync writes SL_LOAD_SEGMENT_BYTES, and the flag may
 * change between runs), then cut short: its hint, larger than a segment of
 * this open's segment_bytes could make and larger than the 1 MiB piece
 * sl_hint_extent streams at a time, is still read, and the cut counted.
 *  - CUT_DAMAGED: a byte of an entry's seq past the first MiB flipped too
 *    (caught by the checksum alone, across the pieces): the hint is taken
 *    for damaged, the segment scanned, and a cut at a record boundary,
 *    which scans clean, is not counted;
 *  - CUT_INFLATED: the hint's entries repeated until it is over 2 x
 *    SL_LOAD_SEGMENT_BYTES, as the hint of a segment written under
 *    --segment-bytes 1g with small records is (a 1 GiB segment of 60-byte
 *    records has a 730 MB hint).  The bound on the hint's size was the
 *    larger of this open's segment_bytes, SL_LOAD_SEGMENT_BYTES and the
 *    cut file's size, so such a hint was refused as damaged and the cut
 *    not counted. */
enum { CUT_PLAIN, CUT_DAMAGED, CUT_INFLATED };

/* Rewrites the hint at path with its entries repeated until the file is
 * over `over` bytes, the count and checksum made to match. */
static void inflate_hint(const char *path, size_t over)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	long n = ftell(f);
	assert_true(n > (long)(SL_HINT_HDR_SIZE + 4));
	uint8_t *h = malloc((size_t)n);
	assert_non_null(h);
	rewind(f);
	assert_int_equal(fread(h, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	size_t body = (size_t)n - SL_HINT_HDR_SIZE - 4;
	size_t times = over / body + 1;
	uint64_t count = (uint64_t)sl_get32(h + 12) * times;
	assert_true(count <= UINT32_MAX);
	sl_put32(h + 12, (uint32_t)count);
	f = fopen(path, "wb");
	assert_non_null(f);
	uint32_t crc = sl_crc32c(h, SL_HINT_HDR_SIZE);
	assert_int_equal(fwrite(h, 1, SL_HINT_HDR_SIZE, f), SL_HINT_HDR_SIZE);
	for (size_t i = 0; i < times; i++) {
		assert_int_equal(fwrite(h + SL_HINT_HDR_SIZE, 1, body, f), body);
		crc = sl_crc32c_extend(crc, h + SL_HINT_HDR_SIZE, body);
	}
	uint8_t c[4];
	sl_put32(c, crc);
	assert_int_equal(fwrite(c, 1, 4, f), 4);
	assert_int_equal(fclose(f), 0);
	free(h);
}

static void count_cut_or_damaged_hint(void *arg, const char *level, const char *msg)
{
	count_cut(arg, level, msg);
	count_damaged_hint(arg, level, msg);
}

static void cut_big_segment(int mode)
{
	int damage_hint = mode == CUT_DAMAGED;
	make_dir(mode == CUT_DAMAGED ? "cutbigdmg" : mode == CUT_INFLATED ? "cutbiginf" : "cutbig");
	sl_options o = opts();
	o.segment_bytes = 8 << 20;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int i = 0; i < 60000; i++) {
		put(db, i, 0); /* 8.6 MB: segment 1 sealed, a hint of about 2.5 MB */
	}
	sl_close(db);
	char segp[600], hintp[600];
	snprintf(segp, sizeof(segp), "%s/%010u.seg", g_dir, 1u);
	snprintf(hintp, sizeof(hintp), "%s/%010u.hint", g_dir, 1u);
	struct stat hs;
	assert_int_equal(stat(hintp, &hs), 0);
	assert_true(hs.st_size > (2 << 20));
	size_t off = record_boundary_past(segp, 64 * 1024);
	/* the hint is more than a 64 KiB segment (or one this short) makes */
	assert_true((uint64_t)hs.st_size > 2 * off + 4096);
	assert_int_equal(truncate(segp, (off_t)off), 0);
	if (damage_hint) {
		/* entry n starts at 24 + 43 n (16-byte keys): the low byte of
		 * the seq of the first entry past 1.5 MiB */
		long at = 24 + 43 * ((3 << 19) / 43 + 1);
		FILE *f = fopen(hintp, "r+b");
		assert_non_null(f);
		assert_int_equal(fseek(f, at, SEEK_SET), 0);
		int c = fgetc(f);
		assert_int_not_equal(c, EOF);
		assert_int_equal(fseek(f, at, SEEK_SET), 0);
		assert_int_equal(fputc(c ^ 1, f), c ^ 1);
		assert_int_equal(fclose(f), 0);
	}
	if (mode == CUT_INFLATED) {
		inflate_hint(hintp, 2 * SL_LOAD_SEGMENT_BYTES + 4096);
	}
	o = opts(); /* reopened with 64 KiB segments */
	o.log_fn = count_cut_or_damaged_hint;
	atomic_store(&g_cut_lines, 0);
	atomic_store(&g_damaged_hint_lines, 0);
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	sl_stats st;
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_int_equal(st.corrupt_records, damage_hint ? 0 : 1);
	assert_int_equal(atomic_load(&g_cut_lines), damage_hint ? 0 : 1);
	assert_int_equal(atomic_load(&g_damaged_hint_lines), damage_hint ? 1 : 0);
	check_value(db, 0, 0); /* the segment's first records are served */
	sl_close(db);
	remove_dir();
}

static void test_cut_segment_from_a_larger_segment_size_is_counted(void **state)
{
	(void)state;
	cut_big_segment(CUT_PLAIN);
}

static void test_cut_segment_with_a_damaged_big_hint_is_scanned(void **state)
{
	(void)state;
	cut_big_segment(CUT_DAMAGED);
}

static void test_cut_segment_with_a_hint_over_any_current_bound_is_counted(void **state)
{
	(void)state;
	cut_big_segment(CUT_INFLATED);
}

/* A hint that failed is tried again later (sl_db_seal_pending); a
 * compaction skips a segment whose hint is due, so that no hint is read
 * from a segment the run frees.  But the retry could come due after the
 * pick: it set hint_due on a segment the run had taken and wrote its hint
 * from the mapping the run was about to unmap and free (a use after free,
 * most likely when the disk is full: hints fail, and compaction runs to
 * make room).  Here the first hints fail, the disk "recovers", and a full
 * compaction waits 2.5 s in its first output's creation, past the 1 s
 * retry: no hint may be begun for a segment the run has taken. */
static sl_db *g_hdb;
static _Atomic int g_hint_fail;     /* 1: a hint's .tmp cannot be created (ENOSPC) */
static _Atomic int g_block_output;  /* 1: the next compaction output waits 2.5 s */
static _Atomic int g_hint_on_input; /* hints begun for a segment a run had taken */
static _Atomic int g_hint_fail_lines;

static int hint_race_open(const char *path, int flags, mode_t mode)
{
	size_t l = strlen(path);
	if (l >= 19 && strcmp(path + l - 9, ".hint.tmp") == 0) {
		if (atomic_load(&g_hint_fail)) {
			errno = ENOSPC;
			return -1;
		}
		sl_db *db = g_hdb;
		if (db != NULL) {
			uint32_t id = (uint32_t)strtoul(path + l - 19, NULL, 10);
			pthread_mutex_lock(&db->seg_mu);
			sl_seg *sg = sl_db_seg(db, id);
			if (sg != NULL && atomic_load(&sg->compacting)) {
				atomic_fetch_add(&g_hint_on_input, 1);
			}
			pthread_mutex_unlock(&db->seg_mu);
		}
	}
	if (l >= 8 && strcmp(path + l - 8, ".seg.tmp") == 0 &&
	    atomic_exchange(&g_block_output, 0)) {
		usleep(2500 * 1000);
	}
	return sl_io_default.open(path, flags, mode);
}

static void count_hint_fail(void *arg, const char *level, const char *msg)
{
	(void)arg;
	if (strcmp(level, "warn") == 0 && strstr(msg, "not written") != NULL) {
		atomic_fetch_add(&g_hint_fail_lines, 1);
	}
}

static void test_hint_retry_leaves_a_compacting_segment_alone(void **state)
{
	(void)state;
	make_dir("hintrace");
	struct sl_io io = sl_io_default;
	io.open = hint_race_open;
	sl_options o = opts();
	o.io = &io;
	o.sync = SL_SYNC_EVERYSEC;
	o.sync_interval_ms = 20; /* the flusher, which retries hints, every 20 ms */
	o.log_fn = count_hint_fail;
	atomic_store(&g_hint_fail, 1);
	atomic_store(&g_hint_fail_lines, 0);
	atomic_store(&g_hint_on_input, 0);
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	g_hdb = db;
	for (int r = 0; r < 3; r++) {
		for (int i = 0; i < 600; i++) {
			put(db, i, r); /* 260 KB: 3 sealed segments, each with dead records */
		}
	}
	for (int waited = 0; waited < 5000 && atomic_load(&g_hint_fail_lines) < 3; waited += 10) {
		usleep(10 * 1000); /* the flusher seals them; their hints fail */
	}
	assert_true(atomic_load(&g_hint_fail_lines) >= 3);
	atomic_store(&g_hint_fail, 0);
	atomic_store(&g_block_output, 1);
	assert_int_equal(sl_compact(db), SL_OK);
	assert_int_equal(atomic_load(&g_block_output), 0); /* it did wait */
	sl_stats st;
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_true(st.compactions >= 1);
	if (atomic_load(&g_hint_on_input) != 0) {
		fail_msg("%d hint(s) begun for segments a compaction had taken",
		         atomic_load(&g_hint_on_input));
	}
	for (int i = 0; i < 600; i++) {
		check_value(db, i, 2);
	}
	sl_close(db);
	g_hdb = NULL;
	o = opts();
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int i = 0; i < 600; i++) {
		check_value(db, i, 2);
	}
	sl_close(db);
	remove_dir();
}

static void test_disk_full_abandons(void **state)
{
	(void)state;
	make_dir("enospc");
	struct sl_io io = sl_io_default;
	io.fallocate = full_fallocate;
	io.pwrite = full_pwrite;
	sl_options o = opts();
	o.io = &io;
	o.log_fn = count_abandon;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int r = 0; r < 10; r++) {
		for (int i = 0; i < 300; i++) {
			put(db, i, r);
		}
	}
	sl_stats before, st;
	assert_int_equal(sl_stats_get(db, &before), SL_OK);
	g_full = 1;
	atomic_store(&g_abandon_lines, 0);
	assert_int_equal(sl_compact(db), SL_ENOSPC);
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_int_equal(st.compact_errors, 1);
	assert_int_equal(st.compact_last_error, SL_ENOSPC);
	/* a full disk fails every run: one log line per 10 s, every run
	 * counted (the background compactor logged each, once a second) */
	for (int k = 0; k < 3; k++) {
		assert_int_equal(sl_compact(db), SL_ENOSPC);
	}
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_int_equal(st.compact_errors, 4);
	assert_int_equal(atomic_load(&g_abandon_lines), 1);
	assert_int_equal(st.compactions, 0);
	assert_int_equal(st.segments, before.segments);
	assert_int_equal(count_files(".tmp"), 0);
	for (int i = 0; i < 300; i++) {
		check_value(db, i, 9); /* still serving */
	}
	g_full = 0;
	assert_int_equal(sl_compact(db), SL_OK); /* and recovers */
	put(db, 5, 10);
	check_value(db, 5, 10);
	sl_close(db);
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int i = 0; i < 300; i++) {
		check_value(db, i, i == 5 ? 10 : 9);
	}
	sl_close(db);
	remove_dir();
}

/* ---- crash at every I/O step inside a compaction -------------------------- */

/* Atomic: the flusher thread's I/O goes through the same hooks. */
static _Atomic long g_calls, g_crash_at = -1;
static void maybe_crash(void)
{
	if (g_crash_at >= 0 && ++g_calls >= g_crash_at) {
		_exit(77); /* the process dies here: nothing after this reaches disk */
	}
}
static int c_open(const char *p, int f, mode_t m)
{
	maybe_crash();
	return sl_io_default.open(p, f, m);
}
static ssize_t c_pwrite(int fd, const void *b, size_t n, off_t off)
{
	maybe_crash();
	return sl_io_default.pwrite(fd, b, n, off);
}
static int c_fdatasync(int fd)
{
	maybe_crash();
	return sl_io_default.fdatasync(fd);
}
static int c_fsync(int fd)
{
	maybe_crash();
	return sl_io_default.fsync(fd);
}
static int c_ftruncate(int fd, off_t l)
{
	maybe_crash();
	return sl_io_default.ftruncate(fd, l);
}
static int c_fallocate(int fd, off_t o, off_t l)
{
	maybe_crash();
	return sl_io_default.fallocate(fd, o, l);
}
static int c_rename(const char *a, const char *b)
{
	maybe_crash();
	return sl_io_default.rename(a, b);
}
static int c_unlink(const char *p)
{
	maybe_crash();
	return sl_io_default.unlink(p);
}

/* The workload: keys 0..199 at version r, every 5th deleted at the end. */
static void crash_workload(sl_db *db)
{
	for (int r = 0; r < 8; r++) {
		for (int i = 0; i < 200; i++) {
			put(db, i, r);
		}
	}
	for (int i = 0; i < 200; i += 5) {
		del(db, i);
	}
	for (int i = 0; i < 200; i++) { /* push the tombstones into sealed segments */
		if (i % 5) {
			put(db, i, 8);
		}
	}
}

static void check_crash_contents(sl_db *db)
{
	for (int i = 0; i < 200; i++) {
		if (i % 5 == 0) {
			check_absent(db, i);
		} else {
			check_value(db, i, 8);
		}
	}
}

/* ---- a hint that fails is written later ---------------------------------- */

static atomic_int g_hint_fail; /* a hint's temporary file cannot be created (ENOSPC) */

static int h_open(const char *p, int f, mode_t m)
{
	size_t l = strlen(p);
	if (atomic_load(&g_hint_fail) && l > 9 && strcmp(p + l - 9, ".hint.tmp") == 0) {
		errno = ENOSPC;
		return -1;
	}
	return sl_io_default.open(p, f, m);
}

/* A sealed segment whose hint could not be written (a full disk) gets it
 * from the flusher once writing works again, without a reopen; until
 * then it has none (an open would scan it). */
static void test_failed_hint_written_later(void **state)
{
	(void)state;
	make_dir("hintretry");
	struct sl_io io = sl_io_default;
	io.open = h_open;
	sl_options o = opts();
	o.segment_bytes = 16 * 1024;
	o.sync = SL_SYNC_EVERYSEC;
	o.io = &io;
	atomic_store(&g_hint_fail, 1);
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	char k[32], v[200];
	memset(v, 'h', sizeof(v));
	for (int i = 0; i < 400; i++) { /* about 90 KiB: five segments or more */
		snprintf(k, sizeof(k), "key%04d", i);
		assert_int_equal(sl_put(db, k, strlen(k), v, sizeof(v), NULL), SL_OK);
	}
	int segs = count_files(".seg");
	assert_true(segs >= 5);
	usleep(1500 * 1000); /* the flusher has sealed them, and failed */
	assert_int_equal(count_files(".hint"), 0);
	atomic_store(&g_hint_fail, 0);
	int hints = 0;
	for (int t = 0; t < 100 && hints < segs - 1; t++) {
		usleep(100 * 1000);
		hints = count_files(".hint");
	}
	assert_int_equal(hints, segs - 1); /* every sealed one */
	assert_int_equal(count_files(".hint.tmp"), 0);
	sl_close(db);
	/* and they load: every key is there */
	sl_options plain = opts();
	assert_int_equal(sl_open(g_dir, &plain, &db), SL_OK);
	for (int i = 0; i < 400; i += 37) {
		void *got;
		size_t n;
		snprintf(k, sizeof(k), "key%04d", i);
		assert_int_equal(sl_get(db, k, strlen(k), &got, &n), SL_OK);
		assert_int_equal(n, sizeof(v));
		free(got);
	}
	sl_close(db);
	remove_dir();
}

/* The crash harness: for n = 1, 2, ... a forked child opens g_dir (made
 * fresh, with prepare's contents when prepare is given) with segment_bytes
 * (0: opts()'s) through I/O hooks that _exit(77) at the n-th call counted
 * from the start of the full compaction it runs after work(db); the parent
 * reopens, checks, compacts again, checks, reopens and checks once more
 * (compact.c 1-7), until a child's compaction completes.  No temporary and
 * no DROPPING mark survives an open. */
static void crash_every_step(const char *tag, size_t segment_bytes, void (*prepare)(void),
                             void (*work)(sl_db *db), void (*check)(sl_db *db))
{
	struct sl_io io = sl_io_default;
	io.open = c_open;
	io.pwrite = c_pwrite;
	io.fdatasync = c_fdatasync;
	io.fsync = c_fsync;
	io.ftruncate = c_ftruncate;
	io.fallocate = c_fallocate;
	io.rename = c_rename;
	io.unlink = c_unlink;
	sl_options o = opts();
	if (segment_bytes != 0) {
		o.segment_bytes = segment_bytes;
	}
	int crashed = 0, completed = 0;
	for (long n = 1; n < 400 && completed == 0; n++) {
		make_dir(tag);
		if (prepare != NULL) {
			prepare();
		}
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			sl_options co = o;
			co.io = &io;
			sl_db *db;
			if (sl_open(g_dir, &co, &db) != SL_OK) {
				_exit(3);
			}
			work(db);
			g_calls = 0; /* I/O calls counted from the compaction's start */
			g_crash_at = n;
			int rc = sl_compact(db);
			g_crash_at = -1;
			_exit(rc == SL_OK ? 0 : 4);
		}
		int status;
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFEXITED(status));
		int code = WEXITSTATUS(status);
		if (code != 77 && code != 0) {
			fail_msg("%s: child at n=%ld exited %d", tag, n, code);
		}
		crashed += code == 77;
		completed += code == 0;
		sl_db *db;
		assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
		check(db);
		assert_int_equal(count_files(".tmp"), 0);
		assert_int_equal(count_files("DROPPING"), 0);
		assert_int_equal(sl_compact(db), SL_OK);
		check(db);
		sl_close(db);
		assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
		check(db);
		sl_close(db);
		remove_dir();
	}
	/* The loop walked through every I/O step of the run and then past it. */
	assert_true(crashed > 10);
	assert_int_equal(completed, 1);
}

static void test_crash_inside_compaction(void **state)
{
	(void)state;
	crash_every_step("crash", 0, NULL, crash_workload, check_crash_contents);
}

/* A crash at every I/O step of a compaction whose inputs include an earlier
 * run's output.  That output Y holds an old live record (key J, seq 1) beside
 * a newer tombstone (key K), so its first_seq (1) is below that of a log
 * segment S2 holding K's older put, which the tombstone hides.  A full
 * compaction of Y and S2 may not drop the tombstone: inputs are unlinked
 * oldest first (Y, then S2), and a crash between the two would leave K's
 * put without it — K deleted long ago would read again.  (Failed before the
 * drop rule looked at the other inputs' first_seqs: compact.c, "Dropping".) */
#define TJ 1000
#define TK 2000

static void output_workload(void)
{
	sl_options o = opts();
	o.segment_bytes = 4096; /* 28 records of 144 bytes a segment */
	o.compact_background = 1;
	o.compact_interval_ms = 5;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	put(db, TJ, 0); /* S1: J and 27 fillers, later overwritten */
	for (int i = 0; i < 27; i++) {
		put(db, i, 0);
	}
	put(db, TK, 0); /* S2: K and 27 keys that stay live for now */
	for (int i = 100; i < 127; i++) {
		put(db, i, 0);
	}
	del(db, TK); /* S3: K's tombstone and 27 fillers, later overwritten */
	for (int i = 200; i < 227; i++) {
		put(db, i, 0);
	}
	for (int i = 0; i < 27; i++) {
		put(db, i, 1);
		put(db, 200 + i, 1);
	}
	/* The background run takes S1 and S3 (mostly dead), not S2 (one dead
	 * record): its output holds J@1 and K's tombstone, which stays (S2
	 * holds older seqs). */
	for (int t = 0; t < 2000 && (file_exists(1, ".seg") || file_exists(3, ".seg")); t++) {
		usleep(5000);
	}
	assert_false(file_exists(1, ".seg"));
	assert_false(file_exists(3, ".seg"));
	assert_true(file_exists(2, ".seg"));
	sl_close(db);
}

static void check_output_contents(sl_db *db, int b_version)
{
	check_value(db, TJ, 0);
	check_absent(db, TK);
	for (int i = 0; i < 27; i++) {
		check_value(db, i, 1);
		check_value(db, 200 + i, 1);
		check_value(db, 100 + i, b_version);
	}
}

static void output_child(sl_db *db)
{
	for (int i = 100; i < 127; i++) { /* S2 all dead now */
		put(db, i, 1);
	}
}

static void check_output_after(sl_db *db)
{
	check_output_contents(db, 1);
}

static void test_crash_compacting_an_output(void **state)
{
	(void)state;
	crash_every_step("outcrash", 4096, output_workload, output_child, check_output_after);
}

/* The inputs of one run go all together, or not at all, across a crash
 * (compact.c 7, DROPPING).  A store loaded from a snapshot (SL_LOAD, records
 * in any seq order) holds K's tombstone (seq 102) in its first segment and
 * K's older put (seq 1) in a later one; every segment is an input of the
 * full compaction, so the tombstone is dropped.  Unlinked one by one, the
 * first segment (with the tombstone) went before the later one (with the
 * put): a crash between the two brought K back. */
#define LK 5000

static uint8_t *g_recs;               /* the source's raw records, seq 1.. */
static size_t g_off[128], g_len[128]; /* by seq */

static void load_source(void)
{
	make_dir("src");
	sl_options o = opts();
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	put(db, LK, 0); /* seq 1 */
	for (int i = 0; i < 100; i++) {
		put(db, i, 0); /* seqs 2..101 */
	}
	del(db, LK); /* seq 102 */
	g_recs = malloc(1 << 20);
	size_t len;
	uint64_t next;
	assert_int_equal(sl_log_read(db, 1, g_recs, 1 << 20, &len, &next), SL_OK);
	assert_int_equal(next, 103);
	for (size_t off = 0, seq = 1; off < len; seq++) {
		sl_rec r;
		size_t size;
		assert_int_equal(
		    sl_rec_decode(g_recs + off, len - off, SL_MAX_KEY, SL_MAX_VALUE, &r, &size),
		    SL_REC_OK);
		assert_int_equal(r.seq, seq);
		g_off[seq] = off;
		g_len[seq] = size;
		off += size;
	}
	sl_close(db);
	remove_dir();
}

static void check_loaded_contents(sl_db *db)
{
	check_absent(db, LK);
	for (int i = 0; i < 100; i++) {
		check_value(db, i, 1);
	}
}

/* In the child: the tombstone first, the put it hides 60 records later,
 * then every loaded segment given dead bytes. */
static void loaded_child(sl_db *db)
{
	static const uint8_t *recs[103];
	static size_t lens[103];
	size_t k = 0;
	recs[k] = g_recs + g_off[102], lens[k++] = g_len[102];
	for (int seq = 2; seq <= 61; seq++) {
		recs[k] = g_recs + g_off[seq], lens[k++] = g_len[seq];
	}
	recs[k] = g_recs + g_off[1], lens[k++] = g_len[1];
	for (int seq = 62; seq <= 101; seq++) {
		recs[k] = g_recs + g_off[seq], lens[k++] = g_len[seq];
	}
	for (size_t i = 0; i < k; i++) {
		if (sl_load_raw(db, recs[i], lens[i]) != SL_OK) {
			_exit(5);
		}
	}
	for (int i = 0; i < 100; i++) {
		put(db, i, 1);
	}
}

static void test_crash_dropping_loaded_inputs(void **state)
{
	(void)state;
	load_source();
	crash_every_step("loadcrash", 4096, NULL, loaded_child, check_loaded_contents);
	free(g_recs);
}

/* An input that cannot be removed keeps DROPPING, and the next open
 * finishes the removal (the mark used to go whatever the unlinks did: the
 * input left behind could hold a put whose tombstone went with another).
 * A later run in the same process finishes it first: it used to write its
 * own mark over the kept one, remove it, and leave the first run's input
 * on disk unlisted, its puts back at the next open. */
static _Atomic int g_fail_unlinks;

static int fail_unlink(const char *p)
{
	size_t n = strlen(p);
	if (n > 4 && strcmp(p + n - 4, ".seg") == 0 && atomic_load(&g_fail_unlinks) > 0) {
		atomic_fetch_sub(&g_fail_unlinks, 1);
		errno = EIO;
		return -1;
	}
	return unlink(p);
}

/* crash_workload's contents and the "moreNNNNN" keys below n. */
static void check_ids_contents(sl_db *db, int n)
{
	check_crash_contents(db);
	for (int j = 0; j < n; j++) {
		char k[32];
		void *got;
		size_t gl;
		snprintf(k, sizeof k, "more%05d", j);
		assert_int_equal(sl_get(db, k, strlen(k), &got, &gl), SL_OK);
		free(got);
	}
}

/* Segment ids go on past 2^24 (the segment table held only that many: a
 * compaction output above it was moved into the index, then not found, its
 * inputs deleted), and when the 32-bit ids are used up writes and
 * compaction fail with SL_ENOSPC and lose nothing.  The long history is
 * stood in for by moving the id counter (db.h). */
static void test_segment_ids_run_long(void **state)
{
	(void)state;
	make_dir("ids");
	sl_options o = opts();
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	atomic_store(&db->next_id, (1u << 24) - 2);
	crash_workload(db); /* rotations and their ids cross 2^24 */
	assert_int_equal(sl_compact(db), SL_OK);
	check_crash_contents(db);
	assert_true(atomic_load(&db->next_id) > (1u << 24));
	sl_close(db);
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	check_crash_contents(db);
	/* the last id: the next rotation takes it, the one after fails */
	atomic_store(&db->next_id, SL_SEG_ID_MAX - 1);
	int rc = SL_OK, i = 0;
	char k[32], v[1000];
	memset(v, 'x', sizeof v);
	for (; i < 1000 && rc == SL_OK; i++) {
		snprintf(k, sizeof k, "more%05d", i);
		rc = sl_put(db, k, strlen(k), v, sizeof v, NULL);
	}
	assert_int_equal(rc, SL_ENOSPC);
	assert_true(i > 64); /* the last id's segment took writes */
	int acked = i - 1;
	assert_int_equal(sl_compact(db), SL_ENOSPC); /* no id for an output */
	check_ids_contents(db, acked);
	sl_close(db);
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	check_ids_contents(db, acked);
	sl_close(db);
	remove_dir();
}

/* A run abandoned after its outputs were renamed (here: the DROPPING mark
 * cannot be renamed into place) whose output then cannot be removed: that
 * file is a segment the next open loads.  A later run used to drop the
 * tombstone of a key deleted meanwhile, and the open brought the key back;
 * now the store fails (writes and compaction wait for a reopen). */
static _Atomic int lo_arm; /* the flusher thread renames hints through the hooks too */
static int lo_rename(const char *a, const char *b)
{
	size_t n = strlen(b);
	if (lo_arm == 1 && n >= 8 && strcmp(b + n - 8, "DROPPING") == 0) {
		lo_arm = 2;
		errno = EIO;
		return -1;
	}
	return sl_io_default.rename(a, b);
}
static int lo_unlink(const char *p)
{
	size_t n = strlen(p);
	if (lo_arm == 2 && n > 4 && strcmp(p + n - 4, ".seg") == 0) {
		lo_arm = 0;
		errno = EIO;
		return -1;
	}
	return sl_io_default.unlink(p);
}

static int lo_get(sl_db *db, const char *k)
{
	void *v;
	size_t vl;
	int rc = sl_get(db, k, strlen(k), &v, &vl);
	if (rc == SL_OK) {
		free(v);
	}
	return rc;
}

static void lo_fill(sl_db *db, char prefix)
{
	char v[300], k[16];
	memset(v, 'v', sizeof v);
	for (int i = 0; i < 30; i++) { /* overwritten: dead bytes, rotations */
		snprintf(k, sizeof k, "%c%d", prefix, i % 5);
		assert_int_equal(sl_put(db, k, strlen(k), v, sizeof v, NULL), SL_OK);
	}
}

static void test_leftover_output_fails_store(void **state)
{
	(void)state;
	make_dir("leftover");
	struct sl_io io = sl_io_default;
	io.rename = lo_rename;
	io.unlink = lo_unlink;
	sl_options o = opts();
	o.segment_bytes = 4096;
	o.io = &io;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	assert_int_equal(sl_put(db, "victim", 6, "old", 3, NULL), SL_OK);
	lo_fill(db, 'f');
	lo_arm = 1;
	assert_int_equal(sl_compact(db), SL_EIO);
	assert_int_equal(lo_arm, 0); /* both faults happened */
	/* the store refuses what could go wrong from here */
	assert_int_equal(sl_delete(db, "victim", 6, NULL), SL_EFAILED);
	assert_int_equal(sl_compact(db), SL_EFAILED);
	assert_int_equal(lo_get(db, "victim"), SL_OK);
	sl_close(db);
	/* reopened (it loads the left output too): delete, compact, reopen */
	sl_options d = opts();
	d.segment_bytes = 4096;
	assert_int_equal(sl_open(g_dir, &d, &db), SL_OK);
	assert_int_equal(lo_get(db, "victim"), SL_OK);
	assert_int_equal(sl_delete(db, "victim", 6, NULL), SL_OK);
	lo_fill(db, 'g');
	assert_int_equal(sl_compact(db), SL_OK);
	assert_int_equal(lo_get(db, "victim"), SL_ENOTFOUND);
	sl_close(db);
	assert_int_equal(sl_open(g_dir, &d, &db), SL_OK);
	assert_int_equal(lo_get(db, "victim"), SL_ENOTFOUND);
	sl_close(db);
	remove_dir();
}

static void test_failed_unlink_keeps_mark(void **state)
{
	(void)state;
	make_dir("unlinkfail");
	struct sl_io io = sl_io_default;
	io.unlink = fail_unlink;
	sl_options o = opts();
	o.io = &io;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	crash_workload(db);
	atomic_store(&g_fail_unlinks, 1000); /* every unlink of a segment fails */
	/* the run's inputs stay; the next run (sl_compact goes on while runs
	 * find work) cannot finish their removal and stops there */
	assert_int_equal(sl_compact(db), SL_EIO);
	assert_true(atomic_load(&g_fail_unlinks) < 1000);
	atomic_store(&g_fail_unlinks, 0);
	assert_int_equal(count_files("DROPPING"), 1);
	check_crash_contents(db);
	sl_close(db);
	sl_options d = opts();
	assert_int_equal(sl_open(g_dir, &d, &db), SL_OK);
	assert_int_equal(count_files("DROPPING"), 0);
	check_crash_contents(db);
	sl_close(db);

	remove_dir();

	/* the same with segment ids past 2^24: the kept mark lists them, and
	 * the open finishes it (it refused the mark as damaged: "DROPPING is
	 * damaged; not opening", and every later compaction failed too) */
	make_dir("unlinkfail_ids");
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	atomic_store(&db->next_id, (1u << 24) + 5);
	crash_workload(db);
	atomic_store(&g_fail_unlinks, 1000);
	assert_int_equal(sl_compact(db), SL_EIO);
	atomic_store(&g_fail_unlinks, 0);
	assert_int_equal(count_files("DROPPING"), 1);
	sl_close(db);
	assert_int_equal(sl_open(g_dir, &d, &db), SL_OK);
	assert_int_equal(count_files("DROPPING"), 0);
	check_crash_contents(db);
	assert_int_equal(sl_compact(db), SL_OK);
	check_crash_contents(db);
	sl_close(db);
	remove_dir();

	/* one unlink fails; the next run finishes the removal before its own */
	make_dir("unlinkfail2");
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	crash_workload(db);
	atomic_store(&g_fail_unlinks, 1);
	assert_int_equal(sl_compact(db), SL_OK);
	assert_int_equal(atomic_load(&g_fail_unlinks), 0);
	assert_int_equal(count_files("DROPPING"), 0); /* finished by the run after */
	for (int r = 9; r < 12; r++) {
		for (int i = 0; i < 200; i++) {
			if (i % 5) {
				put(db, i, r);
			}
		}
	}
	for (int i = 0; i < 200; i++) {
		if (i % 5) {
			put(db, i, 8);
		}
	}
	assert_int_equal(sl_compact(db), SL_OK);
	assert_int_equal(count_files("DROPPING"), 0);
	check_crash_contents(db);
	sl_close(db);
	assert_int_equal(sl_open(g_dir, &d, &db), SL_OK);
	check_crash_contents(db);
	sl_close(db);
	remove_dir();
}

/* ---- background compaction while readers and a writer run --------------- */

static void test_background_compaction_runs(void **state)
{
	(void)state;
	make_dir("bg");
	sl_options o = opts();
	o.compact_background = 1;
	o.compact_interval_ms = 20;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int r = 0; r < 30; r++) {
		for (int i = 0; i < 300; i++) {
			put(db, i, r);
		}
		for (int i = 0; i < 300; i += 13) {
			check_value(db, i, r);
		}
	}
	sl_stats st = {0};
	for (int t = 0; t < 200 && st.compactions == 0; t++) {
		usleep(20000);
		assert_int_equal(sl_stats_get(db, &st), SL_OK);
	}
	assert_true(st.compactions >= 1);
	for (int i = 0; i < 300; i++) {
		check_value(db, i, 29);
	}
	sl_close(db);
	remove_dir();
}

/* sl_compact_defer holds background runs off while it is renewed, and
 * they start again once it is not. */
static void test_compact_defer(void **state)
{
	(void)state;
	make_dir("defer");
	sl_options o = opts();
	o.compact_background = 1;
	o.compact_interval_ms = 10;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	sl_compact_defer(db, 300);
	for (int r = 0; r < 30; r++) {
		sl_compact_defer(db, 300); /* the writes may take long on a slow disk */
		for (int i = 0; i < 300; i++) {
			put(db, i, r);
		}
	}
	sl_stats st = {0};
	for (int t = 0; t < 40; t++) { /* 0.8 s, 40 renewals: no run */
		sl_compact_defer(db, 300);
		usleep(20000);
		assert_int_equal(sl_stats_get(db, &st), SL_OK);
		assert_int_equal(st.compactions, 0);
	}
	for (int t = 0; t < 200 && st.compactions == 0; t++) { /* then they run */
		usleep(20000);
		assert_int_equal(sl_stats_get(db, &st), SL_OK);
	}
	assert_true(st.compactions >= 1);
	for (int i = 0; i < 300; i++) {
		check_value(db, i, 29);
	}
	sl_close(db);
	remove_dir();
}

/* Segments sealed inside sl_compact_defer's window get no hint file while
 * it is renewed, and are not compacted; once it lapses the flusher writes
 * every hint, compaction runs again, and the next open loads the hints.
 * A close inside the window writes them too. */
static void test_defer_delays_hints(void **state)
{
	(void)state;
	make_dir("deferhint");
	sl_options o = opts();
	o.compact_background = 1;
	o.compact_interval_ms = 10;
	o.sync_interval_ms = 20;
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int r = 0; r < 30; r++) {
		sl_compact_defer(db, 400);
		for (int i = 0; i < 300; i++) {
			put(db, i, r);
		}
	}
	sl_stats st = {0};
	for (int t = 0; t < 25; t++) { /* 0.5 s of flusher passes, renewed */
		sl_compact_defer(db, 400);
		usleep(20000);
		assert_int_equal(count_files(".hint"), 0);
		assert_int_equal(sl_stats_get(db, &st), SL_OK);
		assert_int_equal(st.compactions, 0);
	}
	int segs = count_files(".seg");
	assert_true(segs >= 10); /* 30 x 300 x ~150 B over 64 KiB segments */
	/* Lapsed: the flusher writes them (then compaction may merge some,
	 * each output with its hint). */
	for (int t = 0; t < 250 && count_files(".hint") < count_files(".seg") - 1; t++) {
		usleep(20000);
	}
	assert_true(count_files(".hint") >= count_files(".seg") - 1);
	for (int t = 0; t < 250 && st.compactions == 0; t++) {
		usleep(20000);
		assert_int_equal(sl_stats_get(db, &st), SL_OK);
	}
	assert_true(st.compactions >= 1);
	sl_close(db);

	/* Inside the window, then closed: every sealed segment has its hint. */
	o.compact_background = 0;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	sl_compact_defer(db, 60000);
	/* Segments of the first part that no compaction took before the close
	 * keep their hints (how many depends on timing). */
	int hints0 = count_files(".hint");
	int segs0 = count_files(".seg");
	for (int r = 30; r < 40; r++) {
		for (int i = 0; i < 300; i++) {
			put(db, i, r);
		}
	}
	usleep(100000); /* the flusher seals the rotated segments, no hints */
	assert_true(count_files(".seg") > segs0);
	assert_int_equal(count_files(".hint"), hints0);
	/* An explicit compaction inside the window writes the due hints first
	 * (so it can take those segments) and leaves every one with its hint. */
	assert_int_equal(sl_compact(db), SL_OK);
	assert_int_equal(count_files(".hint"), count_files(".seg") - 1);
	for (int r = 40; r < 50; r++) {
		for (int i = 0; i < 300; i++) {
			put(db, i, r);
		}
	}
	usleep(100000);
	sl_close(db);
	assert_int_equal(count_files(".hint"), count_files(".seg") - 1); /* all but the active */
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	assert_int_equal(st.hints_loaded, (uint64_t)count_files(".seg") - 1);
	for (int i = 0; i < 300; i++) {
		check_value(db, i, 49);
	}
	sl_close(db);
	remove_dir();
}

/* What sl_open rebuilds does not depend on how many threads load the
 * sealed segments or in what order they finish: the same keys, values,
 * live / tombstone / dead bytes and last seq with 1 thread as with 4 (four
 * opens, so the threads interleave differently).  The store has
 * overwrites and deletes spread over many segments, compaction outputs
 * between log segments, keys with a TTL, and segments without a hint (so
 * some are scanned, and sealed again, by the threads). */
static void test_parallel_open_matches_serial(void **state)
{
	(void)state;
	make_dir("paropen");
	sl_options o = opts();
	sl_db *db;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	for (int r = 0; r < 30; r++) {
		for (int i = 0; i < 400; i++) {
			int k = (i * 7 + r * 13) % 500;
			if ((i + r) % 9 == 0) {
				char key[32];
				key_of(k, key);
				sl_delete(db, key, 16, NULL); /* SL_ENOTFOUND is fine */
			} else if ((i + r) % 11 == 0) {
				char key[32], v[128];
				key_of(k, key);
				val_of(k, r, v);
				assert_int_equal(sl_put_ttl(db, key, 16, v, 100, 3600000, NULL),
				                 SL_OK);
			} else {
				put(db, k, r);
			}
		}
		if (r == 10) {
			assert_int_equal(sl_compact(db), SL_OK); /* outputs between log ids */
		}
	}
	sl_close(db);
	/* Drop a few hints: those segments are scanned (and sealed again). */
	int dropped = 0;
	for (uint32_t id = 2; id < 200 && dropped < 3; id += 5) {
		char p[600];
		snprintf(p, sizeof(p), "%s/%010u.hint", g_dir, id);
		dropped += unlink(p) == 0;
	}
	assert_true(dropped >= 1);
	assert_true(count_files(".seg") >= 8);

	sl_stats want = {0}, got = {0};
	char dwant[33], dgot[33];
	uint64_t kwant = 0, kgot = 0;
	o.open_threads = 1;
	assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
	assert_int_equal(sl_stats_get(db, &want), SL_OK);
	assert_int_equal(sl_digest(db, dwant, &kwant), SL_OK);
	sl_close(db);
	assert_true(want.keys > 100 && want.dead_bytes > 0 && want.tombstones > 0);
	for (int t = 0; t < 4; t++) {
		o.open_threads = 4;
		assert_int_equal(sl_open(g_dir, &o, &db), SL_OK);
		assert_int_equal(sl_stats_get(db, &got), SL_OK);
		assert_int_equal(sl_digest(db, dgot, &kgot), SL_OK);
		sl_close(db);
		assert_string_equal(dgot, dwant);
		assert_int_equal(kgot, kwant);
		assert_int_equal(got.keys, want.keys);
		assert_int_equal(got.tombstones, want.tombstones);
		assert_int_equal(got.live_bytes, want.live_bytes);
		assert_int_equal(got.tomb_bytes, want.tomb_bytes);
		assert_int_equal(got.dead_bytes, want.dead_bytes);
		assert_int_equal(got.last_seq, want.last_seq);
		assert_int_equal(got.segments, want.segments);
	}
	remove_dir();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_space_after_overwrites),
	    cmocka_unit_test(test_small_segments_merged),
	    cmocka_unit_test(test_no_resurrection_partial_compaction),
	    cmocka_unit_test(test_protect_hook),
	    cmocka_unit_test(test_ttl_dropped),
	    cmocka_unit_test(test_ttl_reclaimed_in_background),
	    cmocka_unit_test(test_full_compaction_goes_on_past_a_bad_record),
	    cmocka_unit_test(test_tombstones_reclaimed_in_background),
	    cmocka_unit_test(test_full_compaction_skips_unexpired_ttl),
	    cmocka_unit_test(test_disk_full_abandons),
	    cmocka_unit_test(test_crash_inside_compaction),
	    cmocka_unit_test(test_crash_compacting_an_output),
	    cmocka_unit_test(test_crash_dropping_loaded_inputs),
	    cmocka_unit_test(test_failed_unlink_keeps_mark),
	    cmocka_unit_test(test_segment_ids_run_long),
	    cmocka_unit_test(test_leftover_output_fails_store),
	    cmocka_unit_test(test_background_compaction_runs),
	    cmocka_unit_test(test_compact_defer),
	    cmocka_unit_test(test_defer_delays_hints),
	    cmocka_unit_test(test_parallel_open_matches_serial),
	    cmocka_unit_test(test_failed_hint_written_later),
	    cmocka_unit_test(test_bad_record_read_is_logged),
	    cmocka_unit_test(test_segment_cut_short_of_its_hint_is_counted),
	    cmocka_unit_test(test_huge_hint_file_is_not_read_into_memory),
	    cmocka_unit_test(test_cut_segment_from_a_larger_segment_size_is_counted),
	    cmocka_unit_test(test_cut_segment_with_a_damaged_big_hint_is_scanned),
	    cmocka_unit_test(test_cut_segment_with_a_hint_over_any_current_bound_is_counted),
	    cmocka_unit_test(test_hint_retry_leaves_a_compacting_segment_alone),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
