/*
 * test_replog.c — the engine's replication building blocks (replog.c):
 * log reads in seq order across segments, batched applies equal to single
 * ones, SL_ESTALE once compaction took the
 * start of the log, the backlog/protect pair, snapshots loaded into an empty
 * store, and the content digest.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
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

#include "format.h"
#include "io.h"
#include "record.h"
#include "shiplog.h"
#include "testutil.h"

static char g_base[512];

static void mkbase(void)
{
	const char *b = getenv("SL_TEST_TMP");
	if (b == NULL || *b == 0) {
		b = "/tmp";
	}
	mkdir(b, 0755);
	snprintf(g_base, sizeof(g_base), "%s/replog-XXXXXX", b);
	assert_non_null(mkdtemp(g_base));
}

static void rmbase(void)
{
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_base);
	assert_int_equal(system(cmd), 0);
}

/* Opens g_base/name with 16 KiB segments, no sync, no background
 * compaction, through io (NULL: the real calls). */
static sl_db *open_with(const char *name, const struct sl_io *io)
{
	char p[600];
	snprintf(p, sizeof(p), "%s/%s", g_base, name);
	sl_options o;
	sl_options_init(&o);
	o.segment_bytes = 16 * 1024;
	o.sync = SL_SYNC_NO;
	o.compact_background = 0;
	o.quiet = 1;
	o.io = io;
	sl_db *db;
	assert_int_equal(sl_open(p, &o, &db), SL_OK);
	return db;
}

static sl_db *open_at(const char *name)
{
	return open_with(name, NULL);
}

/* A mixed workload: puts over 300 keys, overwrites, deletes, a TTL put. */
static void workload(sl_db *db, int rounds)
{
	char k[32], v[64];
	for (int r = 0; r < rounds; r++) {
		for (int i = 0; i < 300; i++) {
			snprintf(k, sizeof(k), "k%03d", i);
			snprintf(v, sizeof(v), "v%d-%d", i, r);
			assert_int_equal(sl_put(db, k, strlen(k), v, strlen(v), NULL), SL_OK);
		}
		for (int i = r; i < 300; i += 7) {
			snprintf(k, sizeof(k), "k%03d", i);
			int rc = sl_delete(db, k, strlen(k), NULL);
			assert_true(rc == SL_OK || rc == SL_ENOTFOUND);
		}
	}
	assert_int_equal(sl_put_ttl(db, "ttl", 3, "x", 1, 3600 * 1000, NULL), SL_OK);
}

static void digest_of(sl_db *db, char out[33])
{
	assert_int_equal(sl_digest(db, out, NULL), SL_OK);
	assert_int_equal(strlen(out), 32);
}

/* Streams the whole log of src from seq 1 into dst with sl_apply_raw. */
static void ship_log(sl_db *src, sl_db *dst, uint64_t from)
{
	static uint8_t buf[4096];
	uint64_t next = from;
	for (;;) {
		size_t len;
		uint64_t n2;
		assert_int_equal(sl_log_read(src, next, buf, sizeof(buf), &len, &n2), SL_OK);
		if (len == 0) {
			break;
		}
		uint64_t prev = 0;
		for (size_t off = 0; off < len;) {
			uint32_t sz =
			    SL_REC_HDR_SIZE + sl_get16(buf + off + 6) + sl_get32(buf + off + 8);
			uint64_t seq = sl_get64(buf + off + 12);
			assert_true(seq > prev); /* seq order */
			assert_true(seq >= next);
			prev = seq;
			assert_int_equal(sl_apply_raw(dst, buf + off, sz), SL_OK);
			off += sz;
		}
		assert_true(n2 > next);
		next = n2;
	}
	assert_int_equal(next, sl_last_seq(src) + 1);
}

static void test_log_read_replays_exactly(void **state)
{
	(void)state;
	mkbase();
	sl_db *a = open_at("a"), *b = open_at("b");
	workload(a, 6);
	ship_log(a, b, 1);
	char da[33], db_[33];
	digest_of(a, da);
	digest_of(b, db_);
	assert_string_equal(da, db_);
	assert_int_equal(sl_last_seq(a), sl_last_seq(b));
	/* More writes, then ship the tail only: a partial resync. */
	uint64_t from = sl_last_seq(a) + 1;
	workload(a, 2);
	ship_log(a, b, from);
	digest_of(a, da);
	digest_of(b, db_);
	assert_string_equal(da, db_);
	/* Applying an old record again is refused (seq not above last_seq). */
	uint8_t buf[256];
	size_t len;
	uint64_t n2;
	assert_int_equal(sl_log_read(a, 1, buf, sizeof(buf), &len, &n2), SL_OK);
	assert_true(len > 0);
	uint32_t sz = SL_REC_HDR_SIZE + sl_get16(buf + 6) + sl_get32(buf + 8);
	assert_int_equal(sl_apply_raw(b, buf, sz), SL_EINVAL);
	/* A flipped byte is refused before anything is written. */
	buf[SL_REC_HDR_SIZE] ^= 1;
	sl_put64(buf + 12, sl_last_seq(b) + 1);
	assert_int_equal(sl_apply_raw(b, buf, sz), SL_ECORRUPT);
	digest_of(b, db_);
	assert_string_equal(da, db_);
	sl_close(a);
	sl_close(b);
	rmbase();
}

/* The whole log of src from seq 1, into *buf (malloc'd), records in order. */
static size_t read_all(sl_db *src, uint8_t **buf)
{
	size_t cap = 1 << 20, len = 0;
	*buf = malloc(cap);
	assert_non_null(*buf);
	uint64_t next = 1;
	for (;;) {
		size_t n;
		uint64_t n2;
		assert_true(len + 4096 <= cap);
		assert_int_equal(sl_log_read(src, next, *buf + len, 4096, &n, &n2), SL_OK);
		if (n == 0) {
			break;
		}
		len += n;
		next = n2;
	}
	return len;
}

static size_t split_all(uint8_t *buf, size_t len, const void **recs, size_t *lens, size_t cap)
{
	size_t n = 0;
	for (size_t off = 0; off < len; n++) {
		assert_true(n < cap);
		size_t sz = SL_REC_HDR_SIZE + sl_get16(buf + off + 6) + sl_get32(buf + off + 8);
		recs[n] = buf + off;
		lens[n] = sz;
		off += sz;
	}
	return n;
}

/* The workload's log, written into g_base/name: *buf (malloc'd) holds
 * its records, recs/lens (RECS_CAP) point at each; returns how many. */
#define RECS_CAP 8192
static const void *g_recs[RECS_CAP];
static size_t g_lens[RECS_CAP];

static size_t workload_log(const char *name, sl_db **db, uint8_t **buf)
{
	*db = open_at(name);
	workload(*db, 6);
	size_t len = read_all(*db, buf);
	size_t n = split_all(*buf, len, g_recs, g_lens, RECS_CAP);
	assert_int_equal(n, sl_last_seq(*db));
	return n;
}

/* Options for a store of 1 MiB segments (16 log checkpoints' worth
 * each), no sync, no background compaction; its path in p. */
static sl_options mb_opts(const char *name, char *p, size_t cap)
{
	snprintf(p, cap, "%s/%s", g_base, name);
	sl_options o;
	sl_options_init(&o);
	o.segment_bytes = 1u << 20;
	o.sync = SL_SYNC_NO;
	o.compact_background = 0;
	o.quiet = 1;
	return o;
}

/* sl_log_read from any seq returns exactly the records from that seq on,
 * in a cold store (each read walks from the segment's start or from the
 * checkpoints earlier reads left) and after a walk of the whole log (reads
 * start at the checkpoint before the seq); sl_log_bytes_from agrees. */
static void test_log_read_from_any_seq(void **state)
{
	(void)state;
	mkbase();
	char p[600];
	sl_options o = mb_opts("ck", p, sizeof(p));
	sl_db *db;
	assert_int_equal(sl_open(p, &o, &db), SL_OK);
	enum { N = 30000 };
	char k[32], v[200];
	for (int i = 0; i < N; i++) {
		snprintf(k, sizeof(k), "key%06d", i % 5000);
		int vl = 20 + (i * 37) % 150; /* lengths vary: offsets do not follow seqs */
		memset(v, 'a' + i % 26, (size_t)vl);
		assert_int_equal(sl_put(db, k, strlen(k), v, (size_t)vl, NULL), SL_OK);
	}
	assert_int_equal(sl_last_seq(db), N);
	/* the reference: the whole log, and each seq's offset in it */
	size_t cap = 8u << 20, total = 0;
	uint8_t *all = malloc(cap);
	size_t *at = calloc(N + 2, sizeof(*at));
	assert_non_null(all);
	assert_non_null(at);
	uint8_t *buf = malloc(1u << 16);
	assert_non_null(buf);
	for (uint64_t next = 1;;) {
		size_t len;
		uint64_t n2;
		assert_int_equal(sl_log_read(db, next, all + total, cap - total, &len, &n2), SL_OK);
		if (len == 0) {
			break;
		}
		for (size_t off = 0; off < len;) {
			uint64_t seq = sl_get64(all + total + off + 12);
			assert_true(seq >= 1 && seq <= N);
			at[seq] = total + off;
			off += SL_REC_HDR_SIZE + sl_get16(all + total + off + 6) +
			       sl_get32(all + total + off + 8);
		}
		total += len;
		next = n2;
	}
	at[N + 1] = total;
	sl_close(db);
	for (int pass = 0; pass < 2; pass++) {
		/* pass 0: a fresh open, reads in a scattered order; pass 1: after a
		 * walk of the whole log in 4 KiB reads */
		assert_int_equal(sl_open(p, &o, &db), SL_OK);
		if (pass == 1) {
			for (uint64_t next = 1;;) {
				size_t len;
				uint64_t n2;
				assert_int_equal(sl_log_read(db, next, buf, 4096, &len, &n2),
				                 SL_OK);
				if (len == 0) {
					break;
				}
				next = n2;
			}
		}
		for (uint64_t i = 0; i < N; i += 1 + i % 97) {
			uint64_t seq = 1 + (i * 7919) % N;
			size_t len;
			uint64_t n2;
			assert_int_equal(sl_log_read(db, seq, buf, 1u << 16, &len, &n2), SL_OK);
			assert_true(len > 0);
			assert_true(n2 > seq);
			assert_int_equal(len, at[n2] - at[seq]); /* whole records from seq to n2 */
			assert_memory_equal(buf, all + at[seq], len);
			uint64_t bytes;
			assert_int_equal(sl_log_bytes_from(db, seq, &bytes), SL_OK);
			assert_int_equal(bytes, total - at[seq]);
		}
		sl_close(db);
	}
	free(buf);
	free(at);
	free(all);
	rmbase();
}

/* A damaged record header in a sealed segment (its hint loaded, so the
 * open did not scan it) whose length now points at a whole record stored
 * inside its value: no read serves that record, whatever walked the
 * segment before (sl_log_bytes_from walks by headers alone). */
static void test_damaged_length_never_serves_a_record_inside_a_value(void **state)
{
	(void)state;
	mkbase();
	char p[600];
	sl_options o = mb_opts("dmg", p, sizeof(p));
	sl_db *db;
	assert_int_equal(sl_open(p, &o, &db), SL_OK);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(sl_put(db, "before", 6, "v", 1, NULL), SL_OK);
	}
	/* seq 4: a 70 KB value with a whole record (seq 6, key EVIL) inside,
	 * past the first 64 KiB of the segment (where a checkpoint could go) */
	enum { VLEN = 70000, AT = 68000 };
	static uint8_t val[VLEN];
	memset(val, 'x', sizeof(val));
	sl_rec_encode(val + AT, SL_REC_PUT, 6, 0, "EVIL", 4, "e", 1);
	uint64_t seq;
	assert_int_equal(sl_put(db, "carrier", 7, val, sizeof(val), &seq), SL_OK);
	assert_int_equal(seq, 4);
	assert_int_equal(sl_put(db, "after5", 6, "v", 1, NULL), SL_OK);
	assert_int_equal(sl_put(db, "real6", 5, "v", 1, NULL), SL_OK);
	sl_close(db);
	/* the carrier's header: its length now ends right before EVIL */
	char seg[700];
	snprintf(seg, sizeof(seg), "%s/0000000001.seg", p);
	FILE *f = fopen(seg, "r+b");
	assert_non_null(f);
	static uint8_t file[1u << 20];
	size_t flen = fread(file, 1, sizeof(file), f);
	size_t off = 0;
	for (size_t i = 0; i + 7 <= flen; i++) {
		if (memcmp(file + i, "carrier", 7) == 0) {
			off = i - SL_REC_HDR_SIZE;
			break;
		}
	}
	assert_true(off > 0);
	assert_int_equal(sl_get64(file + off + 12), 4);
	uint32_t vlen = AT; /* header + key + AT bytes: the record ends where EVIL starts */
	uint8_t b4[4];
	sl_put32(b4, vlen);
	assert_int_equal(fseek(f, (long)(off + 8), SEEK_SET), 0);
	assert_int_equal(fwrite(b4, 1, 4, f), 4);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(sl_open(p, &o, &db), SL_OK);
	uint64_t bytes;
	sl_log_bytes_from(db, 5, &bytes); /* walks the headers: through the damage */
	static uint8_t buf[1u << 16];
	size_t len = 0;
	uint64_t next = 0;
	int rc = sl_log_read(db, 6, buf, sizeof(buf), &len, &next);
	for (size_t i = 0; rc == SL_OK && i + SL_REC_HDR_SIZE <= len;) {
		uint16_t kl = sl_get16(buf + i + 6);
		assert_false(kl == 4 && memcmp(buf + i + SL_REC_HDR_SIZE, "EVIL", 4) == 0);
		i += SL_REC_HDR_SIZE + kl + sl_get32(buf + i + 8);
	}
	sl_close(db);
	rmbase();
}

/* The index two stores report: keys, tombstones, live/tomb/dead bytes, seq. */
static void assert_same_index(const sl_stats *a, const sl_stats *b)
{
	assert_int_equal(a->keys, b->keys);
	assert_int_equal(a->tombstones, b->tombstones);
	assert_int_equal(a->live_bytes, b->live_bytes);
	assert_int_equal(a->tomb_bytes, b->tomb_bytes);
	assert_int_equal(a->dead_bytes, b->dead_bytes);
	assert_int_equal(a->last_seq, b->last_seq);
}

/* sl_apply_raw_many, in batches of any size (across segment rotations),
 * leaves exactly what sl_apply_raw one record at a time leaves: contents,
 * seqs, live/dead accounting, and the same after a reopen.  A refused
 * record stops a batch with the ones before it applied. */
static void test_apply_many_equals_one_by_one(void **state)
{
	(void)state;
	mkbase();
	sl_db *a, *b = open_at("b"), *c = open_at("c");
	uint8_t *buf;
	size_t n = workload_log("a", &a, &buf);
	const void **recs = g_recs;
	size_t *lens = g_lens;
	ship_log(a, b, 1);
	size_t sizes[] = {1, 7, 500, 2, 1000}, done = 0;
	for (size_t i = 0; done < n; i++) {
		size_t k = i < 5 ? sizes[i] : n - done;
		k = k > n - done ? n - done : k;
		size_t got = 0;
		assert_int_equal(sl_apply_raw_many(c, recs + done, lens + done, k, 0, &got), SL_OK);
		assert_int_equal(got, k);
		done += k;
	}
	char da[33], db_[33], dc[33];
	digest_of(a, da);
	digest_of(b, db_);
	digest_of(c, dc);
	assert_string_equal(db_, dc);
	assert_string_equal(da, dc);
	sl_stats sb, sc;
	assert_int_equal(sl_stats_get(b, &sb), SL_OK);
	assert_int_equal(sl_stats_get(c, &sc), SL_OK);
	assert_same_index(&sb, &sc);
	assert_true(sc.segments > 3); /* the batches crossed rotations */

	/* A batch [new, corrupt, new]: the first is applied, then it stops. */
	free(buf);
	uint64_t last = sl_last_seq(c);
	workload(a, 1);
	size_t len = read_all(a, &buf);
	n = split_all(buf, len, g_recs, g_lens, RECS_CAP);
	size_t first = (size_t)last; /* index of seq last + 1 */
	uint8_t *bad = (uint8_t *)recs[first + 1];
	bad[SL_REC_HDR_SIZE] ^= 1;
	size_t got = 99;
	assert_int_equal(sl_apply_raw_many(c, recs + first, lens + first, 3, SL_NOWAIT, &got),
	                 SL_ECORRUPT);
	assert_int_equal(got, 1);
	assert_int_equal(sl_last_seq(c), last + 1);
	/* An old record (seq not above last_seq) is refused: nothing applied. */
	got = 99;
	assert_int_equal(sl_apply_raw_many(c, recs, lens, 2, 0, &got), SL_EINVAL);
	assert_int_equal(got, 0);
	assert_int_equal(sl_last_seq(c), last + 1);
	/* After a reopen (hint files, log scan) c still equals b plus one. */
	bad[SL_REC_HDR_SIZE] ^= 1;
	assert_int_equal(sl_apply_raw(b, recs[first], lens[first]), SL_OK);
	digest_of(b, db_);
	digest_of(c, dc);
	assert_string_equal(db_, dc);
	sl_close(c);
	c = open_at("c");
	digest_of(c, dc);
	assert_string_equal(db_, dc);
	free(buf);
	sl_close(a);
	sl_close(b);
	sl_close(c);
	rmbase();
}

/* pwrite fails with EIO while g_pwrite_fail is set (the seam of io.h;
 * the flusher writes hints through it too, hence the atomics). */
static _Atomic int g_pwrite_fail;
static _Atomic long g_pwrites;

static ssize_t failing_pwrite(int fd, const void *b, size_t n, off_t off)
{
	atomic_fetch_add(&g_pwrites, 1);
	if (atomic_load(&g_pwrite_fail)) {
		errno = EIO;
		return -1;
	}
	return sl_io_default.pwrite(fd, b, n, off);
}

/* Large batches are written in runs, one pwrite each (db.c write_run):
 * a run stops before a damaged or out-of-order record, which is then
 * refused with everything before it applied and nothing after it; a
 * failed pwrite applies nothing of its run; a reopen finds exactly what
 * was applied (nothing past the end looks like a record). */
static void test_apply_runs_stop_exactly(void **state)
{
	(void)state;
	mkbase();
	sl_db *a;
	uint8_t *buf;
	size_t n = workload_log("a", &a, &buf);
	const void **recs = g_recs;
	size_t *lens = g_lens;
	assert_true(n > 900);
	static struct sl_io io;
	io = sl_io_default;
	io.pwrite = failing_pwrite;
	sl_db *c = open_with("c", &io);
	/* 300 records, the 201st damaged: 200 applied, through pwrites */
	size_t got = 99;
	long w0 = g_pwrites;
	uint8_t *bad = (uint8_t *)recs[200];
	bad[SL_REC_HDR_SIZE] ^= 1;
	assert_int_equal(sl_apply_raw_many(c, recs, lens, 300, 0, &got), SL_ECORRUPT);
	assert_int_equal(got, 200);
	assert_int_equal(sl_last_seq(c), 200);
	assert_true(g_pwrites > w0); /* the runs went through pwrite */
	bad[SL_REC_HDR_SIZE] ^= 1;
	/* a batch whose 51st record goes back in seq: 50 applied */
	const void *r2[100];
	size_t l2[100];
	for (size_t i = 0; i < 100; i++) {
		r2[i] = recs[200 + i];
		l2[i] = lens[200 + i];
	}
	r2[50] = recs[10]; /* not contiguous either: the run ends before it */
	l2[50] = lens[10];
	assert_int_equal(sl_apply_raw_many(c, r2, l2, 100, 0, &got), SL_EINVAL);
	assert_int_equal(got, 50);
	assert_int_equal(sl_last_seq(c), 250);
	/* a failing pwrite: nothing of the batch is applied */
	g_pwrite_fail = 1;
	int rc = sl_apply_raw_many(c, recs + 250, lens + 250, 300, 0, &got);
	g_pwrite_fail = 0;
	assert_int_equal(rc, SL_EIO);
	assert_int_equal(got, 0);
	assert_int_equal(sl_last_seq(c), 250);
	/* and the same batch goes in once the disk works */
	assert_int_equal(sl_apply_raw_many(c, recs + 250, lens + 250, n - 250, 0, &got), SL_OK);
	assert_int_equal(got, n - 250);
	char da[33], dc[33];
	digest_of(a, da);
	digest_of(c, dc);
	assert_string_equal(da, dc);
	sl_close(c);
	/* reopened: the same, and no record past the applied ones */
	c = open_with("c", &io);
	assert_int_equal(sl_last_seq(c), n);
	digest_of(c, dc);
	assert_string_equal(da, dc);
	sl_close(c);
	/* and after a failure at the end of the log, a reopen finds only
	 * what was applied */
	sl_db *d = open_with("d", &io);
	assert_int_equal(sl_apply_raw_many(d, recs, lens, 100, 0, &got), SL_OK);
	g_pwrite_fail = 1;
	assert_int_equal(sl_apply_raw_many(d, recs + 100, lens + 100, 100, 0, &got), SL_EIO);
	g_pwrite_fail = 0;
	sl_close(d);
	d = open_with("d", &io);
	assert_int_equal(sl_last_seq(d), 100);
	sl_close(d);
	free(buf);
	sl_close(a);
	rmbase();
}

/* SL_VERIFIED: the caller has checked the checksums (a follower, on nng's
 * thread), so the store does not compute them again; every other check
 * still holds.  Both paths: runs (a batch of 300) and one record at a
 * time (a batch of 5). */
static void test_apply_verified_skips_only_the_checksum(void **state)
{
	(void)state;
	mkbase();
	sl_db *a;
	uint8_t *buf;
	size_t n = workload_log("a", &a, &buf);
	const void **recs = g_recs;
	size_t *lens = g_lens;
	assert_true(n > 400);
	sl_db *c = open_with("c", NULL);
	size_t got = 99;
	/* A value byte flipped: refused without the flag ... */
	uint8_t *bad = (uint8_t *)recs[100];
	bad[lens[100] - 1] ^= 1;
	assert_int_equal(sl_apply_raw_many(c, recs, lens, 300, 0, &got), SL_ECORRUPT);
	assert_int_equal(got, 100);
	/* ... taken with it: the store trusts the caller's check */
	assert_int_equal(sl_apply_raw_many(c, recs + 100, lens + 100, 200, SL_VERIFIED, &got),
	                 SL_OK);
	assert_int_equal(got, 200);
	assert_int_equal(sl_last_seq(c), 300);
	bad[lens[100] - 1] ^= 1;
	/* A bad header is refused even so, in a run and alone */
	uint8_t *h = (uint8_t *)recs[350];
	h[4] = 9; /* no such record type */
	assert_int_equal(sl_apply_raw_many(c, recs + 300, lens + 300, 100, SL_VERIFIED, &got),
	                 SL_ECORRUPT);
	assert_int_equal(got, 50);
	assert_int_equal(sl_apply_raw_many(c, recs + 350, lens + 350, 5, SL_VERIFIED, &got),
	                 SL_ECORRUPT);
	assert_int_equal(got, 0);
	h[4] = (uint8_t)SL_REC_PUT;
	/* A length that is not the record's is refused too */
	size_t l2[5];
	for (size_t i = 0; i < 5; i++) {
		l2[i] = lens[350 + i];
	}
	l2[0] -= 1;
	assert_int_equal(sl_apply_raw_many(c, recs + 350, l2, 5, SL_VERIFIED, &got), SL_ECORRUPT);
	assert_int_equal(got, 0);
	assert_int_equal(sl_last_seq(c), 350);
	sl_close(c);
	free(buf);
	sl_close(a);
	rmbase();
}

static sl_db *open_big(const char *name)
{
	char p[600];
	snprintf(p, sizeof(p), "%s/%s", g_base, name);
	sl_options o;
	sl_options_init(&o);
	o.segment_bytes = 4 << 20;
	o.sync = SL_SYNC_NO;
	o.compact_background = 0;
	o.quiet = 1;
	sl_db *db;
	assert_int_equal(sl_open(p, &o, &db), SL_OK);
	return db;
}

/* A reopen rebuilds the index in batches (SL_IDX_BATCH_MAX entries at a
 * time, shard by shard), from a hint file and from a scan: a segment with
 * more entries than one batch, overwrites and deletes across segments,
 * gives back exactly the index it had. */
static void test_reopen_rebuilds_big_segments(void **state)
{
	(void)state;
	mkbase();
	sl_db *db = open_big("big");
	char k[32];
	for (int i = 0; i < 70000; i++) { /* ~2.6 MB of small records: one segment */
		snprintf(k, sizeof(k), "k%06d", i);
		assert_int_equal(sl_put(db, k, strlen(k), "v", 1, NULL), SL_OK);
	}
	char *big = calloc(1, 2 << 20); /* rotates: segment 1 is sealed with a hint */
	assert_non_null(big);
	assert_int_equal(sl_put(db, "big", 3, big, 2 << 20, NULL), SL_OK);
	free(big);
	for (int i = 0; i < 70000; i += 7) { /* the newer versions in segment 2 */
		snprintf(k, sizeof(k), "k%06d", i);
		if (i % 2) {
			assert_int_equal(sl_put(db, k, strlen(k), "w", 1, NULL), SL_OK);
		} else {
			assert_int_equal(sl_delete(db, k, strlen(k), NULL), SL_OK);
		}
	}
	sl_stats before, after;
	assert_int_equal(sl_stats_get(db, &before), SL_OK);
	char d0[33], d1[33];
	digest_of(db, d0);
	sl_close(db);

	db = open_big("big");
	assert_int_equal(sl_stats_get(db, &after), SL_OK);
	assert_true(after.hints_loaded >= 1);
	assert_same_index(&before, &after);
	digest_of(db, d1);
	assert_string_equal(d0, d1);
	void *v = NULL;
	size_t vl = 0;
	assert_int_equal(sl_get(db, "k000007", 7, &v, &vl), SL_OK);
	assert_int_equal(vl, 1);
	assert_memory_equal(v, "w", 1);
	free(v);
	assert_int_equal(sl_get(db, "k000014", 7, &v, &vl), SL_ENOTFOUND);
	assert_int_equal(sl_get(db, "k069999", 7, &v, &vl), SL_OK);
	free(v);
	sl_close(db);

	/* Without hint files every segment is scanned. */
	char cmd[700];
	snprintf(cmd, sizeof(cmd), "rm -f '%s'/big/*.hint", g_base);
	assert_int_equal(system(cmd), 0);
	db = open_big("big");
	assert_int_equal(sl_stats_get(db, &after), SL_OK);
	assert_int_equal(after.hints_loaded, 0);
	assert_same_index(&before, &after);
	digest_of(db, d1);
	assert_string_equal(d0, d1);
	sl_close(db);
	rmbase();
}

static void test_stale_after_compaction_and_protect(void **state)
{
	(void)state;
	mkbase();
	sl_db *a = open_at("a");
	workload(a, 10);
	assert_int_equal(sl_log_start(a), 1);
	uint64_t keep = sl_log_backlog_seq(a, 32 * 1024);
	assert_true(keep > 1 && keep <= sl_last_seq(a));
	sl_compact_protect(a, keep);
	assert_int_equal(sl_compact(a), SL_OK);
	/* The backlog survived compaction and still reads in order... */
	uint8_t buf[4096];
	size_t len;
	uint64_t n2;
	assert_int_equal(sl_log_read(a, keep, buf, sizeof(buf), &len, &n2), SL_OK);
	assert_true(len > 0);
	assert_int_equal(sl_get64(buf + 12), keep);
	/* ... while the start of the log is gone: SL_ESTALE. */
	uint64_t start = sl_log_start(a);
	assert_true(start > 1 && start <= keep);
	assert_int_equal(sl_log_read(a, 1, buf, sizeof(buf), &len, &n2), SL_ESTALE);
	/* Asking past the end is not an error: nothing new. */
	assert_int_equal(sl_log_read(a, sl_last_seq(a) + 1, buf, sizeof(buf), &len, &n2), SL_OK);
	assert_int_equal(len, 0);
	sl_close(a);
	rmbase();
}

/* A log segment in the middle compacted away (nothing protected it): a
 * read from before it stops at the hole, and a read at the hole is
 * SL_ESTALE; neither skips to the records after it. */
static void test_hole_in_the_log_is_stale(void **state)
{
	(void)state;
	mkbase();
	sl_db *a = open_at("a");
	char k[32], v[100];
	memset(v, 'v', sizeof(v));
	for (int i = 0; i < 150; i++) { /* live for good: its segment stays */
		snprintf(k, sizeof(k), "live%04d", i);
		assert_int_equal(sl_put(a, k, strlen(k), v, sizeof(v), NULL), SL_OK);
	}
	uint64_t dead_from = sl_last_seq(a) + 1;
	for (int r = 0; r < 2; r++) { /* the first round dies entirely */
		for (int i = 0; i < 300; i++) {
			snprintf(k, sizeof(k), "dead%04d", i);
			assert_int_equal(sl_put(a, k, strlen(k), v, sizeof(v), NULL), SL_OK);
		}
	}
	assert_int_equal(sl_compact(a), SL_OK);
	uint8_t buf[1 << 16];
	size_t len;
	uint64_t next;
	/* From the start: the live segment's records, then a stop. */
	assert_int_equal(sl_log_read(a, 1, buf, sizeof(buf), &len, &next), SL_OK);
	assert_true(len > 0);
	assert_true(next <= dead_from);
	for (size_t off = 0; off < len;) {
		uint64_t seq = sl_get64(buf + off + 12);
		assert_true(seq < next);
		off += SL_REC_HDR_SIZE + sl_get16(buf + off + 6) + sl_get32(buf + off + 8);
	}
	/* At the hole: stale, not the records after it. */
	assert_int_equal(sl_log_read(a, next, buf, sizeof(buf), &len, &next), SL_ESTALE);
	assert_int_equal(sl_log_read(a, dead_from + 10, buf, sizeof(buf), &len, &next), SL_ESTALE);
	sl_close(a);
	rmbase();
}

/* A blank newest segment (a crash during a rotation left it zeroed) read
 * its first_seq as 1; a writable open rewrites its header, a read-only one
 * kept it in the replication log, so every read from seq 1 started in it
 * and found nothing, while last_seq said 150. */
static void test_read_only_blank_newest_segment_left_out_of_the_log(void **state)
{
	(void)state;
	mkbase();
	sl_db *a = open_at("a");
	char k[32], v[100];
	memset(v, 'v', sizeof(v));
	for (int i = 0; i < 150; i++) {
		snprintf(k, sizeof(k), "k%04d", i);
		assert_int_equal(sl_put(a, k, strlen(k), v, sizeof(v), NULL), SL_OK);
	}
	uint64_t last = sl_last_seq(a);
	sl_close(a);
	char dir[600], path[700];
	snprintf(dir, sizeof(dir), "%s/a", g_base);
	uint64_t *ids;
	int n = tu_list_ids(dir, "seg", &ids);
	assert_true(n >= 2);
	tu_seg_path(path, sizeof(path), dir, ids[n - 1] + 1, "seg");
	free(ids);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	static const uint8_t zeros[64 << 10];
	assert_int_equal(fwrite(zeros, 1, sizeof(zeros), f), sizeof(zeros));
	assert_int_equal(fclose(f), 0);

	sl_options o;
	sl_options_init(&o);
	o.read_only = 1;
	o.quiet = 1;
	o.compact_background = 0;
	assert_int_equal(sl_open(dir, &o, &a), SL_OK);
	assert_int_equal(sl_last_seq(a), last);
	static uint8_t buf[1 << 20];
	size_t len = 0;
	uint64_t next = 0;
	assert_int_equal(sl_log_read(a, 1, buf, sizeof(buf), &len, &next), SL_OK);
	assert_true(len > 0);
	assert_int_equal(sl_get64(buf + 12), 1); /* from seq 1 on */
	assert_int_equal(next, last + 1);
	sl_close(a);
	rmbase();
}

/* Ships a's log from `from` into b (a follower catching up after a full
 * resync) and asserts their digests are equal; a's digest into da. */
static void catch_up_equal(sl_db *a, sl_db *b, uint64_t from, char da[33])
{
	char d2[33];
	ship_log(a, b, from);
	digest_of(a, da);
	digest_of(b, d2);
	assert_string_equal(da, d2);
}

/* Reads the whole snapshot sn (closing it) into b, every record's seq at
 * most head; chunks alternate between sl_load_raw one record at a time and
 * sl_load_raw_many (only the latter unless alternate).  Returns the bytes
 * read. */
static size_t load_snapshot(sl_snapshot *sn, sl_db *b, uint64_t head, int alternate)
{
	static uint8_t buf[2048];
	static const void *recs[256];
	static size_t lens[256];
	int done = 0;
	size_t total = 0;
	for (int chunk = 0; !done; chunk++) {
		size_t len, n = 0;
		assert_int_equal(sl_snapshot_read(sn, buf, sizeof(buf), &len, &done), SL_OK);
		for (size_t off = 0; off < len;) {
			uint32_t sz =
			    SL_REC_HDR_SIZE + sl_get16(buf + off + 6) + sl_get32(buf + off + 8);
			assert_true(sl_get64(buf + off + 12) <= head);
			if (alternate && chunk % 2 == 0) {
				assert_int_equal(sl_load_raw(b, buf + off, sz), SL_OK);
			} else {
				assert_true(n < 256);
				recs[n] = buf + off;
				lens[n++] = sz;
			}
			off += sz;
		}
		size_t got = 0;
		assert_int_equal(sl_load_raw_many(b, recs, lens, n, &got), SL_OK);
		assert_int_equal(got, n);
		total += len;
	}
	sl_snapshot_close(sn);
	return total;
}

static void test_snapshot_loads_equal(void **state)
{
	(void)state;
	mkbase();
	sl_db *a = open_at("a"), *b = open_at("b");
	workload(a, 8);
	assert_int_equal(sl_compact(a), SL_OK); /* snapshots read compacted segments too */
	workload(a, 1);
	sl_snapshot *sn;
	uint64_t head;
	assert_int_equal(sl_snapshot_open(a, &sn, &head), SL_OK);
	assert_int_equal(head, sl_last_seq(a));
	/* Writes after the snapshot was taken are not in it... */
	assert_int_equal(sl_put(a, "late", 4, "1", 1, NULL), SL_OK);
	/* ... and compaction leaves the pinned segments alone meanwhile. */
	assert_int_equal(sl_compact(a), SL_OK);
	size_t total = load_snapshot(sn, b, head, 1);
	assert_true(total > 0);
	assert_true(sl_last_seq(b) <= head);
	void *v;
	size_t vl;
	assert_int_equal(sl_get(b, "late", 4, &v, &vl), SL_ENOTFOUND);
	/* Catch up from head+1 like a follower after a full resync. */
	char da[33], db_[33];
	catch_up_equal(a, b, head + 1, da);
	/* and it survives a reopen of the loaded store */
	sl_close(b);
	b = open_at("b");
	digest_of(b, db_);
	assert_string_equal(da, db_);
	sl_close(a);
	sl_close(b);
	rmbase();
}

/* Every segment file of g_base/name holds only seqs >= its header's
 * first_seq (format.h): compaction's drop rule relies on it. */
static void check_first_seq_bound(const char *name)
{
	char dir[600], path[900];
	snprintf(dir, sizeof(dir), "%s/%s", g_base, name);
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *e;
	int segs = 0;
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);
		if (l != 14 || strcmp(e->d_name + 10, ".seg") != 0) {
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		FILE *f = fopen(path, "rb");
		assert_non_null(f);
		fseek(f, 0, SEEK_END);
		size_t len = (size_t)ftell(f);
		fseek(f, 0, SEEK_SET);
		uint8_t *buf = malloc(len + 1);
		assert_int_equal(fread(buf, 1, len, f), len);
		fclose(f);
		assert_true(len >= SL_SEG_HDR_SIZE);
		uint64_t first = sl_get64(buf + 24);
		for (size_t off = SL_SEG_HDR_SIZE; off < len;) {
			sl_rec r;
			size_t size;
			if (sl_rec_decode(buf + off, len - off, SL_MAX_KEY, SL_MAX_VALUE, &r,
			                  &size) != SL_REC_OK) {
				break;
			}
			if (r.seq < first) {
				fail_msg(
				    "%s: a record with seq %llu below the header's first_seq %llu",
				    e->d_name, (unsigned long long)r.seq,
				    (unsigned long long)first);
			}
			off += size;
		}
		free(buf);
		segs++;
	}
	closedir(d);
	assert_true(segs > 0);
}

/* A snapshot is the store as it was at its head, whatever is written after
 * it was taken: every key overwritten or deleted meanwhile (the head's own
 * record's key too) is loaded at its version at the head.  Before, such
 * keys were left out (their version at the head was no longer indexed), and
 * a follower promoted before it fetched past the head lost them. */
static void test_snapshot_is_the_store_at_its_head(void **state)
{
	(void)state;
	mkbase();
	sl_db *a = open_at("a"), *b = open_at("b");
	workload(a, 3);
	assert_int_equal(sl_compact(a), SL_OK);
	workload(a, 1);
	assert_int_equal(sl_put(a, "k001", 4, "at-head", 7, NULL), SL_OK); /* the head record */
	char at_head[33];
	digest_of(a, at_head);
	sl_snapshot *sn;
	uint64_t head;
	assert_int_equal(sl_snapshot_open(a, &sn, &head), SL_OK);
	/* Everything changes after it: every key overwritten, some deleted, a
	 * compaction (which leaves the pinned segments alone). */
	char k[32];
	for (int i = 0; i < 300; i++) {
		snprintf(k, sizeof(k), "k%03d", i);
		assert_int_equal(sl_put(a, k, strlen(k), "after", 5, NULL), SL_OK);
	}
	for (int i = 0; i < 300; i += 3) {
		snprintf(k, sizeof(k), "k%03d", i);
		assert_int_equal(sl_delete(a, k, strlen(k), NULL), SL_OK);
	}
	assert_int_equal(sl_compact(a), SL_OK);
	load_snapshot(sn, b, head, 0);
	assert_int_equal(sl_last_seq(b), head);
	char loaded[33];
	digest_of(b, loaded);
	assert_string_equal(loaded, at_head);
	void *v;
	size_t vl;
	assert_int_equal(sl_get(b, "k001", 4, &v, &vl), SL_OK);
	assert_int_equal(vl, 7);
	assert_memory_equal(v, "at-head", 7);
	free(v);
	/* and the catch-up from head + 1 still ends equal */
	char da[33];
	catch_up_equal(a, b, head + 1, da);
	sl_close(a);
	sl_close(b);
	/* The versions came in no seq order across b's rotations: every
	 * segment's header still bounds the seqs it holds from below (an
	 * older version in a segment stamped with a higher first_seq could
	 * outlive the tombstone hiding it once compaction dropped that). */
	check_first_seq_bound("b");
	rmbase();
}

static void test_digest_layout_independent(void **state)
{
	(void)state;
	mkbase();
	sl_db *a = open_at("a"), *b = open_at("b");
	char da[33], db_[33];
	digest_of(a, da);
	digest_of(b, db_);
	assert_string_equal(da, db_); /* empty == empty */
	/* Same final contents reached by different histories and layouts. */
	workload(a, 5);
	char k[32], v[64];
	for (int i = 299; i >= 0; i--) {
		snprintf(k, sizeof(k), "k%03d", i);
		void *val;
		size_t vl;
		if (sl_get(a, k, strlen(k), &val, &vl) == SL_OK) {
			assert_int_equal(sl_put(b, k, strlen(k), val, vl, NULL), SL_OK);
			free(val);
		}
	}
	assert_int_equal(sl_put_ttl(b, "ttl", 3, "x", 1, 3600 * 1000, NULL), SL_OK);
	digest_of(a, da);
	digest_of(b, db_);
	assert_string_equal(da, db_);
	assert_int_equal(sl_compact(a), SL_OK);
	digest_of(a, da);
	assert_string_equal(da, db_);
	/* One value differs by one byte: digests differ. */
	snprintf(v, sizeof(v), "different");
	assert_int_equal(sl_put(b, "k001", 4, v, strlen(v), NULL), SL_OK);
	digest_of(b, db_);
	assert_string_not_equal(da, db_);
	sl_close(a);
	sl_close(b);
	rmbase();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_log_read_replays_exactly),
	    cmocka_unit_test(test_log_read_from_any_seq),
	    cmocka_unit_test(test_damaged_length_never_serves_a_record_inside_a_value),
	    cmocka_unit_test(test_apply_many_equals_one_by_one),
	    cmocka_unit_test(test_apply_runs_stop_exactly),
	    cmocka_unit_test(test_apply_verified_skips_only_the_checksum),
	    cmocka_unit_test(test_reopen_rebuilds_big_segments),
	    cmocka_unit_test(test_stale_after_compaction_and_protect),
	    cmocka_unit_test(test_hole_in_the_log_is_stale),
	    cmocka_unit_test(test_snapshot_loads_equal),
	    cmocka_unit_test(test_snapshot_is_the_store_at_its_head),
	    cmocka_unit_test(test_digest_layout_independent),
	    cmocka_unit_test(test_read_only_blank_newest_segment_left_out_of_the_log),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
