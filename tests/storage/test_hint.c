/*
 * test_hint.c — hint files (storage/hint.c) against format.h.
 *
 * Why: a hint replaces the scan of a sealed segment at startup, so a hint
 * that is accepted must say exactly what the segment says, and a damaged one
 * must be refused as a whole before a single entry reaches the keydir (a
 * half-applied hint is worse than none).  Adversarial cases: a byte flip at
 * every offset, truncation at every length, trailing garbage, and hints with
 * a correct checksum but impossible content (so only the bounds checks can
 * catch them): entries past the segment, zero or oversized keys, bad types,
 * wrong counts, a wrong segment id.  Failure paths of the writer go through
 * the I/O seam (io.h): no temporary file may survive a failed write.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"
#include "hint.h"
#include "io.h"
#include "record.h"
#include "segment.h"
#include "shiplog.h"
#include "testutil.h"

/* ---- helpers: files --------------------------------------------------- */

static char *make_tmpdir(void)
{
	const char *root = getenv("SL_TEST_TMP");
	if (root == NULL || *root == '\0') {
		root = "/tmp";
	}
	mkdir(root, 0755);
	char *p = malloc(strlen(root) + 32);
	assert_non_null(p);
	sprintf(p, "%s/test_hint-XXXXXX", root);
	assert_non_null(mkdtemp(p));
	return p;
}

static uint8_t *read_all(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	uint8_t *p = malloc((size_t)st.st_size + 1);
	assert_non_null(p);
	assert_int_equal(pread(fd, p, (size_t)st.st_size, 0), st.st_size);
	close(fd);
	*len = (size_t)st.st_size;
	return p;
}

static void write_all_file(const char *path, const uint8_t *p, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	if (len > 0) {
		assert_int_equal(pwrite(fd, p, len, 0), (ssize_t)len);
	}
	assert_int_equal(close(fd), 0);
}

/* ---- helpers: an I/O seam with faults --------------------------------- */

static struct sl_io fio;
static int pwrite_errno; /* non-zero: pwrite fails with it */
static int fsync_fail;   /* fsync of a file (not the directory) fails */
static int rename_fail;  /* rename fails with EIO */
static size_t write_max; /* non-zero: pwrite writes at most this much */
static size_t read_max;  /* non-zero: pread reads at most this much */
static int dirfd_global; /* the test directory's fd, so fsync can tell */

static ssize_t f_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	if (pwrite_errno) {
		errno = pwrite_errno;
		return -1;
	}
	if (write_max && n > write_max) {
		n = write_max;
	}
	return pwrite(fd, buf, n, off);
}

static ssize_t f_pread(int fd, void *buf, size_t n, off_t off)
{
	if (read_max && n > read_max) {
		n = read_max;
	}
	return pread(fd, buf, n, off);
}

static int f_fsync(int fd)
{
	if (fsync_fail && fd != dirfd_global) {
		errno = EIO;
		return -1;
	}
	return fsync(fd);
}

static int f_rename(const char *a, const char *b)
{
	if (rename_fail) {
		errno = EIO;
		return -1;
	}
	return rename(a, b);
}

static void faults_reset(void)
{
	fio = sl_io_default;
	fio.pwrite = f_pwrite;
	fio.pread = f_pread;
	fio.fsync = f_fsync;
	fio.rename = f_rename;
	pwrite_errno = 0;
	fsync_fail = 0;
	rename_fail = 0;
	write_max = 0;
	read_max = 0;
}

/* ---- fixture: a segment with known records ---------------------------- */

#define SEG_ID  7u
#define SEG_CAP (1u << 20)
#define MAXN    128

typedef struct want {
	uint64_t seq, exp;
	uint32_t off, size;
	uint8_t type;
	uint16_t klen;
	uint8_t key[300];
} want;

typedef struct fx {
	char *dir;
	int dirfd;
	sl_seg *seg;
	want w[MAXN];
	size_t n;
	char hint[512];
	char tmp[512];
} fx;

static uint64_t rng_state = 0x13198a2e03707344ull;

static uint64_t rng(void)
{
	uint64_t x = rng_state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* Copies one record into the mapped segment at end (segment.h: the caller
 * encodes at map + end and advances end). */
static uint32_t append(sl_seg *s, uint8_t type, uint64_t seq, uint64_t exp, const void *key,
                       size_t klen, const void *val, size_t vlen)
{
	uint64_t off = atomic_load(&s->end);
	size_t size = sl_rec_size(klen, vlen);
	assert_true(off + size <= s->cap);
	sl_rec_encode(s->map + off, type, seq, exp, key, klen, val, vlen);
	atomic_store(&s->end, off + size);
	s->last_seq = seq;
	return (uint32_t)off;
}

/* Appends and remembers what the hint should say about it. */
static void append_known(fx *f, uint8_t type, uint64_t seq, uint64_t exp, size_t klen, size_t vlen)
{
	assert_true(f->n < MAXN);
	want *w = &f->w[f->n++];
	uint8_t val[2048];
	assert_true(klen <= sizeof(w->key) && vlen <= sizeof(val));
	for (size_t i = 0; i < klen; i++) {
		w->key[i] = (uint8_t)rng();
	}
	for (size_t i = 0; i < vlen; i++) {
		val[i] = (uint8_t)rng();
	}
	w->seq = seq;
	w->exp = exp;
	w->type = type;
	w->klen = (uint16_t)klen;
	w->size = (uint32_t)sl_rec_size(klen, vlen);
	w->off = append(f->seg, type, seq, exp, w->key, klen, val, vlen);
}

static void fx_open(fx *f)
{
	memset(f, 0, sizeof(*f));
	faults_reset();
	f->dir = make_tmpdir();
	f->dirfd = open(f->dir, O_RDONLY | O_DIRECTORY);
	assert_true(f->dirfd >= 0);
	dirfd_global = f->dirfd;
	assert_int_equal(
	    sl_seg_create(&sl_io_default, f->dir, f->dirfd, SEG_ID, 100, SEG_CAP, &f->seg), SL_OK);
	snprintf(f->hint, sizeof(f->hint), "%s/%010u.hint", f->dir, SEG_ID);
	snprintf(f->tmp, sizeof(f->tmp), "%s/%010u.hint.tmp", f->dir, SEG_ID);
}

/* A mix: puts and tombstones, keys 1..300 bytes, TTLs, empty values. */
static void fx_fill(fx *f, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t type = i % 5 == 3 ? SL_REC_DEL : SL_REC_PUT;
		size_t klen = 1 + (size_t)(rng() % (i % 7 == 0 ? 300 : 24));
		size_t vlen = type == SL_REC_DEL ? 0 : (size_t)(rng() % (i % 4 == 0 ? 2000 : 40));
		uint64_t exp = i % 3 == 0 ? 1700000000000ull + i : 0;
		append_known(f, type, 100 + i, exp, klen, vlen);
	}
}

static void fx_close(fx *f)
{
	sl_seg_close(&sl_io_default, f->seg);
	close(f->dirfd);
	tu_rm_rf(f->dir);
	free(f->dir);
}

/* cmocka runs teardown even when an assertion fails, so no scratch
 * directory outlives its test. */
static int fx_setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	if (f == NULL) {
		return -1;
	}
	fx_open(f);
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	fx *f = *state;
	fx_close(f);
	free(f);
	return 0;
}

static int write_hint(fx *f)
{
	return sl_hint_write(&fio, f->dir, f->dirfd, f->seg, SL_MAX_KEY, SL_MAX_VALUE);
}

/* ---- helpers: loading ------------------------------------------------- */

typedef struct got {
	size_t n;
	want w[MAXN];
	int stop_at; /* return 99 from the stop_at-th call (1-based); 0 never */
} got;

static int collect(void *arg, const sl_hint_entry *e)
{
	got *g = arg;
	if (g->n < MAXN) {
		want *w = &g->w[g->n];
		w->seq = e->seq;
		w->exp = e->expire_at;
		w->off = e->off;
		w->size = e->size;
		w->type = e->type;
		w->klen = e->klen;
		memcpy(w->key, e->key, e->klen < sizeof(w->key) ? e->klen : sizeof(w->key));
	}
	g->n++;
	return g->stop_at != 0 && (int)g->n == g->stop_at ? 99 : 0;
}

static int load(fx *f, uint64_t seg_size, got *g)
{
	memset(g, 0, sizeof(*g));
	return sl_hint_load(&fio, f->dir, SEG_ID, seg_size, SL_MAX_KEY, collect, g);
}

static void expect_entries(const got *g, const want *w, size_t n)
{
	if (g->n != n) {
		fail_msg("hint gave %zu entries, want %zu", g->n, n);
	}
	for (size_t i = 0; i < n; i++) {
		const want *a = &g->w[i], *b = &w[i];
		if (a->seq != b->seq || a->exp != b->exp || a->off != b->off ||
		    a->size != b->size || a->type != b->type || a->klen != b->klen ||
		    memcmp(a->key, b->key, b->klen) != 0) {
			fail_msg(
			    "entry %zu: seq %llu/%llu off %u/%u size %u/%u type %u/%u klen %u/%u",
			    i, (unsigned long long)a->seq, (unsigned long long)b->seq, a->off,
			    b->off, a->size, b->size, a->type, b->type, a->klen, b->klen);
		}
	}
}

static uint64_t seg_end(const fx *f)
{
	return atomic_load(&f->seg->end);
}

/* ---- round trips ------------------------------------------------------ */

static void write_then_load_gives_entries_in_order(void **state)
{
	fx *f = *state;
	fx_fill(f, 60);
	assert_int_equal(write_hint(f), SL_OK);
	assert_true(tu_exists(f->hint));
	assert_false(tu_exists(f->tmp));
	got g;
	assert_int_equal(load(f, seg_end(f), &g), SL_OK);
	expect_entries(&g, f->w, f->n);
	/* Loading against the preallocated file size works too. */
	assert_int_equal(load(f, SEG_CAP, &g), SL_OK);
	expect_entries(&g, f->w, f->n);
}

/* The file's bytes, parsed independently per format.h. */
static void written_file_matches_format_h(void **state)
{
	fx *f = *state;
	fx_fill(f, 20);
	assert_int_equal(write_hint(f), SL_OK);
	size_t len;
	uint8_t *b = read_all(f->hint, &len);
	assert_true(len >= SL_HINT_HDR_SIZE + 4);
	assert_memory_equal(b, "SHIPLHNT", 8);
	assert_int_equal(sl_get32(b + 8), 1);
	assert_int_equal(sl_get32(b + 12), f->n);
	assert_int_equal(sl_get64(b + 16), SEG_ID);
	assert_int_equal(sl_get32(b + len - 4), tu_crc32c(b, len - 4));
	size_t off = SL_HINT_HDR_SIZE;
	for (size_t i = 0; i < f->n; i++) {
		const uint8_t *e = b + off;
		assert_int_equal(sl_get64(e), f->w[i].seq);
		assert_int_equal(sl_get64(e + 8), f->w[i].exp);
		assert_int_equal(sl_get32(e + 16), f->w[i].off);
		assert_int_equal(sl_get32(e + 20), f->w[i].size);
		assert_int_equal(e[24], f->w[i].type);
		assert_int_equal(sl_get16(e + 25), f->w[i].klen);
		assert_memory_equal(e + 27, f->w[i].key, f->w[i].klen);
		off += 27 + f->w[i].klen;
	}
	assert_int_equal(off, len - 4);
	free(b);
}

static void empty_segment_gives_empty_hint(void **state)
{
	fx *f = *state;
	assert_int_equal(write_hint(f), SL_OK);
	size_t len;
	uint8_t *b = read_all(f->hint, &len);
	assert_int_equal(len, SL_HINT_HDR_SIZE + 4);
	assert_int_equal(sl_get32(b + 12), 0);
	free(b);
	got g;
	assert_int_equal(load(f, seg_end(f), &g), SL_OK);
	assert_int_equal(g.n, 0);
}

/* A hint larger than the writer's 1 MiB buffer (written in pieces, its
 * checksum computed over the file read back in pieces): every entry loads
 * back, in order, and the file's checksum is that of its bytes. */
typedef struct big_got {
	uint32_t n;
	uint64_t next_off;
	int bad;
} big_got;

static void big_key(uint32_t i, uint8_t *k)
{
	for (int j = 0; j < 60; j++) {
		k[j] = (uint8_t)(i * 31u + (uint32_t)j * 7u);
	}
}

static int big_check(void *arg, const sl_hint_entry *e)
{
	big_got *g = arg;
	uint8_t k[60];
	big_key(g->n, k);
	if (e->seq != 1000u + g->n || e->off != g->next_off || e->klen != 60 ||
	    memcmp(e->key, k, 60) != 0 || e->size != sl_rec_size(60, 1)) {
		g->bad++;
	}
	g->next_off = e->off + e->size;
	g->n++;
	return 0;
}

static void hint_bigger_than_its_buffer_round_trips(void **state)
{
	fx *f = *state;
	sl_seg *s;
	uint32_t id = SEG_ID + 1;
	assert_int_equal(sl_seg_create(&sl_io_default, f->dir, f->dirfd, id, 1000, 8u << 20, &s),
	                 SL_OK);
	enum { N = 40000 }; /* 40000 entries of 87 bytes: a 3.5 MB hint */
	uint8_t k[60];
	for (uint32_t i = 0; i < N; i++) {
		big_key(i, k);
		append(s, SL_REC_PUT, 1000u + i, 0, k, sizeof(k), "v", 1);
	}
	assert_int_equal(sl_hint_write(&fio, f->dir, f->dirfd, s, SL_MAX_KEY, SL_MAX_VALUE), SL_OK);
	char path[600];
	snprintf(path, sizeof(path), "%s/%010u.hint", f->dir, id);
	size_t len;
	uint8_t *b = read_all(path, &len);
	assert_int_equal(len, SL_HINT_HDR_SIZE + (size_t)N * (SL_HINT_ENTRY_FIXED + 60) + 4);
	assert_true(len > (3u << 20));
	assert_int_equal(sl_get32(b + 12), N);
	assert_int_equal(sl_get32(b + len - 4), tu_crc32c(b, len - 4));
	free(b);
	big_got g = {.next_off = SL_SEG_HDR_SIZE};
	assert_int_equal(
	    sl_hint_load(&fio, f->dir, id, atomic_load(&s->end), SL_MAX_KEY, big_check, &g), SL_OK);
	assert_int_equal(g.n, N);
	assert_int_equal(g.bad, 0);
	sl_seg_close(&sl_io_default, s);
}

static const uint8_t *long_key;

static int count_long_key(void *arg, const sl_hint_entry *e)
{
	if (e->klen == SL_MAX_KEY && memcmp(e->key, long_key, SL_MAX_KEY) == 0) {
		(*(int *)arg)++;
	}
	return 0;
}

static void max_length_key_round_trips(void **state)
{
	fx *f = *state;
	static uint8_t key[SL_MAX_KEY];
	memset(key, 'K', sizeof(key));
	key[0] = 0;
	append(f->seg, SL_REC_PUT, 100, 0, key, sizeof(key), "v", 1);
	append(f->seg, SL_REC_DEL, 101, 0, "k", 1, NULL, 0);
	assert_int_equal(write_hint(f), SL_OK);
	got g;
	assert_int_equal(load(f, seg_end(f), &g), SL_OK);
	assert_int_equal(g.n, 2);
	assert_int_equal(g.w[0].klen, SL_MAX_KEY);
	assert_int_equal(g.w[0].size, sl_rec_size(SL_MAX_KEY, 1));
	assert_memory_equal(g.w[0].key, key, sizeof(g.w[0].key)); /* first 300 bytes */
	assert_int_equal(g.w[1].type, SL_REC_DEL);
	assert_int_equal(g.w[1].off, SL_SEG_HDR_SIZE + sl_rec_size(SL_MAX_KEY, 1));
	/* All 65535 key bytes, not just the first ones. */
	long_key = key;
	int whole = 0;
	assert_int_equal(
	    sl_hint_load(&fio, f->dir, SEG_ID, seg_end(f), SL_MAX_KEY, count_long_key, &whole),
	    SL_OK);
	assert_int_equal(whole, 1);
	/* A max_key below the entry's klen refuses the whole hint. */
	assert_int_equal(
	    sl_hint_load(&fio, f->dir, SEG_ID, seg_end(f), SL_MAX_KEY - 1, count_long_key, &whole),
	    SL_ECORRUPT);
	assert_int_equal(whole, 1);
}

static void rewrite_replaces_previous_hint(void **state)
{
	fx *f = *state;
	fx_fill(f, 5);
	assert_int_equal(write_hint(f), SL_OK);
	fx_fill(f, 5);
	assert_int_equal(write_hint(f), SL_OK);
	got g;
	assert_int_equal(load(f, seg_end(f), &g), SL_OK);
	expect_entries(&g, f->w, f->n);
}

static void callback_nonzero_stops_and_is_returned(void **state)
{
	fx *f = *state;
	fx_fill(f, 10);
	assert_int_equal(write_hint(f), SL_OK);
	got g;
	memset(&g, 0, sizeof(g));
	g.stop_at = 3;
	assert_int_equal(sl_hint_load(&fio, f->dir, SEG_ID, seg_end(f), SL_MAX_KEY, collect, &g),
	                 99);
	assert_int_equal(g.n, 3);
}

static void short_writes_and_reads_still_round_trip(void **state)
{
	fx *f = *state;
	fx_fill(f, 30);
	write_max = 7;
	assert_int_equal(write_hint(f), SL_OK);
	write_max = 0;
	read_max = 5;
	got g;
	assert_int_equal(load(f, seg_end(f), &g), SL_OK);
	expect_entries(&g, f->w, f->n);
}

/* ---- adversarial: damaged files --------------------------------------- */

static void missing_hint_is_not_found(void **state)
{
	fx *f = *state;
	got g;
	assert_int_equal(load(f, seg_end(f), &g), SL_ENOTFOUND);
	assert_int_equal(g.n, 0);
}

static void byte_flip_at_every_offset_is_corrupt(void **state)
{
	fx *f = *state;
	fx_fill(f, 16);
	assert_int_equal(write_hint(f), SL_OK);
	size_t len;
	uint8_t *orig = read_all(f->hint, &len);
	uint8_t *b = malloc(len);
	assert_non_null(b);
	static const uint8_t masks[] = {0x01, 0x10, 0x80, 0xff};
	for (size_t off = 0; off < len; off++) {
		for (size_t m = 0; m < sizeof(masks); m++) {
			memcpy(b, orig, len);
			b[off] ^= masks[m];
			write_all_file(f->hint, b, len);
			got g;
			int rc = load(f, seg_end(f), &g);
			if (rc != SL_ECORRUPT || g.n != 0) {
				fail_msg("flip 0x%02x at %zu/%zu: rc %d, %zu entries applied",
				         masks[m], off, len, rc, g.n);
			}
		}
	}
	/* The original still loads: the damage, not the harness, failed it. */
	write_all_file(f->hint, orig, len);
	got g;
	assert_int_equal(load(f, seg_end(f), &g), SL_OK);
	assert_int_equal(g.n, f->n);
	free(b);
	free(orig);
}

static void truncation_at_every_length_is_corrupt(void **state)
{
	fx *f = *state;
	fx_fill(f, 16);
	assert_int_equal(write_hint(f), SL_OK);
	size_t len;
	uint8_t *orig = read_all(f->hint, &len);
	for (size_t n = 0; n < len; n++) {
		write_all_file(f->hint, orig, n);
		got g;
		int rc = load(f, seg_end(f), &g);
		if (rc != SL_ECORRUPT || g.n != 0) {
			fail_msg("truncated to %zu/%zu: rc %d, %zu entries applied", n, len, rc,
			         g.n);
		}
	}
	free(orig);
}

static void trailing_garbage_is_corrupt(void **state)
{
	fx *f = *state;
	fx_fill(f, 8);
	assert_int_equal(write_hint(f), SL_OK);
	size_t len;
	uint8_t *orig = read_all(f->hint, &len);
	uint8_t *b = malloc(len + 64);
	assert_non_null(b);
	memcpy(b, orig, len);
	for (size_t extra = 1; extra <= 64; extra++) {
		memset(b + len, (int)extra, extra);
		write_all_file(f->hint, b, len + extra);
		got g;
		assert_int_equal(load(f, seg_end(f), &g), SL_ECORRUPT);
		assert_int_equal(g.n, 0);
	}
	free(b);
	free(orig);
}

static void entry_past_segment_size_is_corrupt(void **state)
{
	fx *f = *state;
	fx_fill(f, 12);
	assert_int_equal(write_hint(f), SL_OK);
	uint64_t end = seg_end(f);
	got g;
	assert_int_equal(load(f, end, &g), SL_OK); /* the last record ends exactly at end */
	assert_int_equal(load(f, end - 1, &g), SL_ECORRUPT);
	assert_int_equal(g.n, 0);
	assert_int_equal(load(f, SL_SEG_HDR_SIZE, &g), SL_ECORRUPT);
	assert_int_equal(g.n, 0);
	assert_int_equal(load(f, 0, &g), SL_ECORRUPT);
	assert_int_equal(g.n, 0);
}

static void wrong_segment_id_is_corrupt(void **state)
{
	fx *f = *state;
	fx_fill(f, 4);
	assert_int_equal(write_hint(f), SL_OK);
	/* Segment 7's hint under segment 8's name. */
	char other[512];
	snprintf(other, sizeof(other), "%s/%010u.hint", f->dir, SEG_ID + 1);
	assert_int_equal(rename(f->hint, other), 0);
	got g;
	memset(&g, 0, sizeof(g));
	assert_int_equal(
	    sl_hint_load(&fio, f->dir, SEG_ID + 1, seg_end(f), SL_MAX_KEY, collect, &g),
	    SL_ECORRUPT);
	assert_int_equal(g.n, 0);
	assert_int_equal(load(f, seg_end(f), &g), SL_ENOTFOUND);
}

/* ---- adversarial: well-checksummed but impossible hints ------------------- */

typedef struct hent {
	uint64_t seq, exp;
	uint32_t off, size;
	uint8_t type;
	uint16_t klen;    /* written in the entry */
	uint16_t key_len; /* key bytes actually present (normally == klen) */
} hent;

/* Builds a hint file by hand with a correct trailing crc. */
static size_t build_hint(uint8_t *b, const char *magic, uint32_t version, uint32_t count,
                         uint64_t id, const hent *e, size_t n)
{
	memcpy(b, magic, 8);
	sl_put32(b + 8, version);
	sl_put32(b + 12, count);
	sl_put64(b + 16, id);
	size_t off = SL_HINT_HDR_SIZE;
	for (size_t i = 0; i < n; i++) {
		uint8_t *p = b + off;
		sl_put64(p, e[i].seq);
		sl_put64(p + 8, e[i].exp);
		sl_put32(p + 16, e[i].off);
		sl_put32(p + 20, e[i].size);
		p[24] = e[i].type;
		sl_put16(p + 25, e[i].klen);
		memset(p + 27, 'k', e[i].key_len);
		off += 27 + e[i].key_len;
	}
	sl_put32(b + off, tu_crc32c(b, off));
	return off + 4;
}

static hent good_entry(uint32_t off)
{
	hent e = {.seq = 5,
	          .exp = 0,
	          .off = off,
	          .size = 28 + 3 + 10,
	          .type = SL_REC_PUT,
	          .klen = 3,
	          .key_len = 3};
	return e;
}

static int load_crafted(fx *f, const uint8_t *b, size_t len, uint64_t seg_size, uint32_t max_key,
                        got *g)
{
	write_all_file(f->hint, b, len);
	memset(g, 0, sizeof(*g));
	return sl_hint_load(&fio, f->dir, SEG_ID, seg_size, max_key, collect, g);
}

#define EXPECT_CRAFTED(want_rc, seg_size, max_key, ...)                                            \
	do {                                                                                       \
		hent es_[] = {__VA_ARGS__};                                                        \
		size_t n_ =                                                                        \
		    build_hint(buf, SL_HINT_MAGIC, 1, (uint32_t)(sizeof(es_) / sizeof(es_[0])),    \
		               SEG_ID, es_, sizeof(es_) / sizeof(es_[0]));                         \
		got g_;                                                                            \
		int rc_ = load_crafted(f, buf, n_, (seg_size), (max_key), &g_);                    \
		if (rc_ != (want_rc) || ((want_rc) != SL_OK && g_.n != 0)) {                       \
			fail_msg("line %d: rc %d (want %d), %zu entries applied", __LINE__, rc_,   \
			         (int)(want_rc), g_.n);                                            \
		}                                                                                  \
	} while (0)

static void crafted_hint_baseline_loads(void **state)
{
	fx *f = *state;
	static uint8_t buf[4096];
	EXPECT_CRAFTED(SL_OK, 1000, SL_MAX_KEY, good_entry(32), good_entry(73));
}

static void crafted_entry_bounds_are_checked(void **state)
{
	fx *f = *state;
	static uint8_t buf[4096];
	hent e;

	e = good_entry(32);
	e.klen = e.key_len = 0; /* klen 0 */
	e.size = 28;
	EXPECT_CRAFTED(SL_ECORRUPT, 1000, SL_MAX_KEY, good_entry(32), e);

	e = good_entry(32);
	e.klen = e.key_len = 9; /* klen over max_key */
	e.size = 28 + 9;
	EXPECT_CRAFTED(SL_OK, 1000, 9, e);
	EXPECT_CRAFTED(SL_ECORRUPT, 1000, 8, good_entry(32), e);

	static const uint8_t bad_types[] = {0, 3, 255};
	for (size_t i = 0; i < sizeof(bad_types); i++) {
		e = good_entry(32);
		e.type = bad_types[i];
		EXPECT_CRAFTED(SL_ECORRUPT, 1000, SL_MAX_KEY, good_entry(32), e);
	}

	e = good_entry(31); /* inside the segment header */
	EXPECT_CRAFTED(SL_ECORRUPT, 1000, SL_MAX_KEY, e);
	e = good_entry(0);
	EXPECT_CRAFTED(SL_ECORRUPT, 1000, SL_MAX_KEY, e);

	e = good_entry(32);
	e.size = 28 + 3 - 1; /* smaller than header + key */
	EXPECT_CRAFTED(SL_ECORRUPT, 1000, SL_MAX_KEY, e);
	e.size = 0;
	EXPECT_CRAFTED(SL_ECORRUPT, 1000, SL_MAX_KEY, e);

	e = good_entry(1000 - 41); /* ends exactly at seg_size: fine */
	EXPECT_CRAFTED(SL_OK, 1000, SL_MAX_KEY, e);
	e = good_entry(1000 - 40); /* one past */
	EXPECT_CRAFTED(SL_ECORRUPT, 1000, SL_MAX_KEY, good_entry(32), e);
	e = good_entry(UINT32_MAX); /* offset near 2^32 */
	EXPECT_CRAFTED(SL_ECORRUPT, 1000, SL_MAX_KEY, e);
	e = good_entry(32);
	e.size = UINT32_MAX; /* size near 2^32 */
	EXPECT_CRAFTED(SL_ECORRUPT, 1000, SL_MAX_KEY, e);
	e = good_entry(UINT32_MAX - 10);
	e.size = 50; /* off + size wraps 32 bits */
	EXPECT_CRAFTED(SL_ECORRUPT, 1000, SL_MAX_KEY, e);

	/* A klen that runs past the file's end. */
	e = good_entry(32);
	e.klen = 200;
	e.size = 28 + 200;
	EXPECT_CRAFTED(SL_ECORRUPT, 1000, SL_MAX_KEY, e);
}

static void crafted_header_fields_are_checked(void **state)
{
	fx *f = *state;
	static uint8_t buf[1u << 16];
	hent es[2] = {good_entry(32), good_entry(73)};
	got g;
	size_t n;

	n = build_hint(buf, "SHIPLHNX", 1, 2, SEG_ID, es, 2);
	assert_int_equal(load_crafted(f, buf, n, 1000, SL_MAX_KEY, &g), SL_ECORRUPT);
	n = build_hint(buf, "SHIPLSEG", 1, 2, SEG_ID, es, 2); /* a segment's magic */
	assert_int_equal(load_crafted(f, buf, n, 1000, SL_MAX_KEY, &g), SL_ECORRUPT);
	n = build_hint(buf, SL_HINT_MAGIC, 2, 2, SEG_ID, es, 2);
	assert_int_equal(load_crafted(f, buf, n, 1000, SL_MAX_KEY, &g), SL_ECORRUPT);
	n = build_hint(buf, SL_HINT_MAGIC, 0, 2, SEG_ID, es, 2);
	assert_int_equal(load_crafted(f, buf, n, 1000, SL_MAX_KEY, &g), SL_ECORRUPT);
	n = build_hint(buf, SL_HINT_MAGIC, 1, 2, SEG_ID + 1, es, 2);
	assert_int_equal(load_crafted(f, buf, n, 1000, SL_MAX_KEY, &g), SL_ECORRUPT);
	n = build_hint(buf, SL_HINT_MAGIC, 1, 2, SEG_ID | (1ull << 32), es, 2);
	assert_int_equal(load_crafted(f, buf, n, 1000, SL_MAX_KEY, &g), SL_ECORRUPT);
	assert_int_equal(g.n, 0);

	/* count disagrees with the entries present. */
	n = build_hint(buf, SL_HINT_MAGIC, 1, 3, SEG_ID, es, 2);
	assert_int_equal(load_crafted(f, buf, n, 1000, SL_MAX_KEY, &g), SL_ECORRUPT);
	assert_int_equal(g.n, 0);
	n = build_hint(buf, SL_HINT_MAGIC, 1, 1, SEG_ID, es, 2);
	assert_int_equal(load_crafted(f, buf, n, 1000, SL_MAX_KEY, &g), SL_ECORRUPT);
	assert_int_equal(g.n, 0);
	n = build_hint(buf, SL_HINT_MAGIC, 1, 0, SEG_ID, es, 2);
	assert_int_equal(load_crafted(f, buf, n, 1000, SL_MAX_KEY, &g), SL_ECORRUPT);
	n = build_hint(buf, SL_HINT_MAGIC, 1, UINT32_MAX, SEG_ID, es, 2);
	assert_int_equal(load_crafted(f, buf, n, 1000, SL_MAX_KEY, &g), SL_ECORRUPT);
	assert_int_equal(g.n, 0);

	/* An entry's fixed part cut short before the crc. */
	n = build_hint(buf, SL_HINT_MAGIC, 1, 1, SEG_ID, es, 0);
	assert_int_equal(load_crafted(f, buf, n, 1000, SL_MAX_KEY, &g), SL_ECORRUPT);
	memset(buf + SL_HINT_HDR_SIZE, 0, 20);
	sl_put32(buf + SL_HINT_HDR_SIZE + 20, tu_crc32c(buf, SL_HINT_HDR_SIZE + 20));
	assert_int_equal(load_crafted(f, buf, SL_HINT_HDR_SIZE + 24, 1000, SL_MAX_KEY, &g),
	                 SL_ECORRUPT);
	assert_int_equal(g.n, 0);

	/* A hint far larger than its segment could be is refused unread. */
	hent many[1000];
	for (int i = 0; i < 1000; i++) {
		many[i] = good_entry(32);
	}
	n = build_hint(buf, SL_HINT_MAGIC, 1, 1000, SEG_ID, many, 1000);
	assert_int_equal(load_crafted(f, buf, n, 1000, SL_MAX_KEY, &g), SL_ECORRUPT);
	assert_int_equal(g.n, 0);
	assert_int_equal(load_crafted(f, buf, n, 1u << 20, SL_MAX_KEY, &g), SL_OK);
	assert_int_equal(g.n, 1000);
}

/* ---- the writer against the segment's own recovery -------------------- */

/* hint.h: "Records that fail their checksum are left out."  Recovery
 * (open.c, scan_segment) skips a bad record in a sealed segment and keeps
 * indexing the valid records after it, then seals the segment, which writes
 * its hint.  If the hint stops at the bad record, the next open trusts the
 * hint and silently loses every record after it. */
static void write_skips_bad_record_and_keeps_later_ones(void **state)
{
	fx *f = *state;
	append_known(f, SL_REC_PUT, 100, 0, 5, 20);
	append_known(f, SL_REC_PUT, 101, 0, 6, 30); /* damaged below */
	append_known(f, SL_REC_PUT, 102, 0, 7, 40);
	append_known(f, SL_REC_DEL, 103, 0, 5, 0);
	f->seg->map[f->w[1].off + SL_REC_HDR_SIZE + 2] ^= 0x20; /* a key byte: crc fails */
	assert_int_equal(write_hint(f), SL_OK);
	got g;
	assert_int_equal(load(f, seg_end(f), &g), SL_OK);
	want keep[3] = {f->w[0], f->w[2], f->w[3]};
	expect_entries(&g, keep, 3);
}

/* The same for a zeroed hole inside a sealed segment (a lost write): open.c
 * treats a zero header followed by non-zero bytes as damage, not the end. */
static void write_skips_zeroed_hole_and_keeps_later_ones(void **state)
{
	fx *f = *state;
	append_known(f, SL_REC_PUT, 100, 0, 5, 20);
	append_known(f, SL_REC_PUT, 101, 0, 6, 30); /* zeroed below */
	append_known(f, SL_REC_PUT, 102, 0, 7, 40);
	memset(f->seg->map + f->w[1].off, 0, f->w[1].size);
	assert_int_equal(write_hint(f), SL_OK);
	got g;
	assert_int_equal(load(f, seg_end(f), &g), SL_OK);
	want keep[2] = {f->w[0], f->w[2]};
	expect_entries(&g, keep, 2);
}

/* Only [header, end) counts: a record copied past end (not yet published)
 * is not in the hint. */
static void write_ignores_bytes_past_end(void **state)
{
	fx *f = *state;
	fx_fill(f, 3);
	uint64_t end = seg_end(f);
	append(f->seg, SL_REC_PUT, 200, 0, "late", 4, "x", 1);
	atomic_store(&f->seg->end, end);
	assert_int_equal(write_hint(f), SL_OK);
	got g;
	assert_int_equal(load(f, end, &g), SL_OK);
	expect_entries(&g, f->w, f->n);
}

/* ---- the writer's failure paths (io.h seam) ------------------------------- */

static void write_failure_leaves_no_tmp_and_keeps_old_hint(void **state)
{
	fx *f = *state;
	fx_fill(f, 6);
	assert_int_equal(write_hint(f), SL_OK); /* a good hint already there */
	size_t n_old = f->n;
	fx_fill(f, 6);

	pwrite_errno = ENOSPC;
	assert_int_equal(write_hint(f), SL_ENOSPC);
	assert_false(tu_exists(f->tmp));
	pwrite_errno = EIO;
	assert_int_equal(write_hint(f), SL_EIO);
	assert_false(tu_exists(f->tmp));
	pwrite_errno = 0;

	fsync_fail = 1;
	assert_int_equal(write_hint(f), SL_EIO);
	assert_false(tu_exists(f->tmp));
	fsync_fail = 0;

	rename_fail = 1;
	assert_int_equal(write_hint(f), SL_EIO);
	assert_false(tu_exists(f->tmp));
	rename_fail = 0;

	/* Each failure left the previous hint untouched. */
	got g;
	assert_int_equal(load(f, seg_end(f), &g), SL_OK);
	expect_entries(&g, f->w, n_old);

	/* And with no earlier hint, a failure leaves no hint at all. */
	assert_int_equal(unlink(f->hint), 0);
	pwrite_errno = ENOSPC;
	assert_int_equal(write_hint(f), SL_ENOSPC);
	pwrite_errno = 0;
	assert_false(tu_exists(f->tmp));
	assert_false(tu_exists(f->hint));
	assert_int_equal(load(f, seg_end(f), &g), SL_ENOTFOUND);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(write_then_load_gives_entries_in_order, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(written_file_matches_format_h, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(empty_segment_gives_empty_hint, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(hint_bigger_than_its_buffer_round_trips, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(max_length_key_round_trips, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(rewrite_replaces_previous_hint, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(callback_nonzero_stops_and_is_returned, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(short_writes_and_reads_still_round_trip, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(missing_hint_is_not_found, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(byte_flip_at_every_offset_is_corrupt, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(truncation_at_every_length_is_corrupt, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(trailing_garbage_is_corrupt, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(entry_past_segment_size_is_corrupt, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(wrong_segment_id_is_corrupt, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(crafted_hint_baseline_loads, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(crafted_entry_bounds_are_checked, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(crafted_header_fields_are_checked, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(write_skips_bad_record_and_keeps_later_ones, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(write_skips_zeroed_hole_and_keeps_later_ones, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(write_ignores_bytes_past_end, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(write_failure_leaves_no_tmp_and_keeps_old_hint,
	                                    fx_setup, fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
