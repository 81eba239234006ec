/*
 * testutil.h — header-only helpers shared by shiplog's tests: scratch
 * directories under $SL_TEST_TMP (or /tmp), rm -rf, whole-file helpers, a
 * seeded xorshift RNG, and an independent reader of the on-disk format
 * (format.h) so tests can find and damage exact records without trusting the
 * engine's own codec.
 *
 * Nothing here calls cmocka: the helpers are also used in forked children,
 * which must report through exit codes.
 *
 * Environment understood by the storage tests: SL_TEST_TMP (scratch root),
 * SL_TEST_SEEDS / SL_TEST_SEED (how much randomized work, and where its
 * seeds start), SL_TEST_FILTER (a cmocka test-name pattern, e.g.
 * "test_hint*"), SL_TEST_VERBOSE (let the engine log).
 */
#ifndef SL_TESTUTIL_H
#define SL_TESTUTIL_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "format.h"

#define TU_PATH 4400 /* a directory path plus a file name */

/* ---- environment ------------------------------------------------------ */

/* An unsigned integer from the environment, or def when unset/unparsable. */
static inline uint64_t tu_env_u64(const char *name, uint64_t def)
{
	const char *s = getenv(name);
	if (s == NULL || *s == '\0') {
		return def;
	}
	char *end = NULL;
	unsigned long long v = strtoull(s, &end, 0);
	if (end == s) {
		return def;
	}
	return (uint64_t)v;
}

/* Options' `quiet`: the engine's log lines only with SL_TEST_VERBOSE set. */
static inline int tu_quiet(void)
{
	return getenv("SL_TEST_VERBOSE") == NULL;
}

static inline uint64_t tu_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- RNG: xorshift64* seeded through splitmix64 ------------------------ */

typedef struct tu_rng {
	uint64_t s;
} tu_rng;

static inline uint64_t tu_splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static inline void tu_rng_seed(tu_rng *r, uint64_t seed)
{
	r->s = tu_splitmix64(seed);
	if (r->s == 0) {
		r->s = 0x2545f4914f6cdd1dull;
	}
}

static inline uint64_t tu_rng_next(tu_rng *r)
{
	uint64_t x = r->s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	r->s = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* Uniform-enough value in [0, n); n > 0. */
static inline uint64_t tu_rng_below(tu_rng *r, uint64_t n)
{
	return tu_rng_next(r) % n;
}

/* Value in [lo, hi] inclusive. */
static inline uint64_t tu_rng_range(tu_rng *r, uint64_t lo, uint64_t hi)
{
	return lo + tu_rng_below(r, hi - lo + 1);
}

static inline void tu_rng_fill(tu_rng *r, void *buf, size_t n)
{
	uint8_t *p = buf;
	while (n > 0) {
		uint64_t v = tu_rng_next(r);
		size_t k = n < 8 ? n : 8;
		memcpy(p, &v, k);
		p += k;
		n -= k;
	}
}

/* Deterministic bytes derived from a 64-bit tag: the same tag always gives
 * the same stream, so a parent can recompute what a child wrote. */
static inline void tu_fill_tagged(void *buf, size_t n, uint64_t tag)
{
	tu_rng r;
	tu_rng_seed(&r, tag);
	tu_rng_fill(&r, buf, n);
}

/* ---- files and directories ------------------------------------------- */

static inline int tu_mkdir_p(const char *path)
{
	char buf[4096];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof(buf)) {
		return -1;
	}
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (buf[i] == '/' || buf[i] == '\0') {
			char c = buf[i];
			buf[i] = '\0';
			if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
				return -1;
			}
			buf[i] = c;
		}
	}
	return 0;
}

/* Creates a fresh empty directory <root>/<tag>-XXXXXX, root being
 * $SL_TEST_TMP or /tmp.  Returns a malloc'd path (caller frees) or NULL. */
static inline char *tu_mkdtemp(const char *tag)
{
	const char *root = getenv("SL_TEST_TMP");
	if (root == NULL || *root == '\0') {
		root = "/tmp";
	}
	if (tu_mkdir_p(root) != 0) {
		return NULL;
	}
	size_t n = strlen(root) + strlen(tag) + 16;
	char *p = malloc(n);
	if (p == NULL) {
		return NULL;
	}
	snprintf(p, n, "%s/%s-XXXXXX", root, tag);
	if (mkdtemp(p) == NULL) {
		free(p);
		return NULL;
	}
	return p;
}

/* rm -rf path.  Returns 0 when path is gone afterwards. */
static inline int tu_rm_rf(const char *path)
{
	struct stat st;
	if (lstat(path, &st) != 0) {
		return errno == ENOENT ? 0 : -1;
	}
	if (S_ISDIR(st.st_mode)) {
		DIR *d = opendir(path);
		if (d == NULL) {
			return -1;
		}
		struct dirent *e;
		while ((e = readdir(d)) != NULL) {
			if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
				continue;
			}
			size_t n = strlen(path) + strlen(e->d_name) + 2;
			char *sub = malloc(n);
			if (sub == NULL) {
				closedir(d);
				return -1;
			}
			snprintf(sub, n, "%s/%s", path, e->d_name);
			tu_rm_rf(sub);
			free(sub);
		}
		closedir(d);
		return rmdir(path);
	}
	return unlink(path);
}

static inline int tu_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

static inline long long tu_file_size(const char *path)
{
	struct stat st;
	if (stat(path, &st) != 0) {
		return -1;
	}
	return (long long)st.st_size;
}

/* Reads a whole file into a malloc'd buffer (caller frees; non-NULL even
 * when empty).  0 on success. */
static inline int tu_read_file(const char *path, uint8_t **buf, size_t *len)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0) {
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) != 0) {
		close(fd);
		return -1;
	}
	size_t n = (size_t)st.st_size;
	uint8_t *p = malloc(n + 1);
	if (p == NULL) {
		close(fd);
		return -1;
	}
	size_t got = 0;
	while (got < n) {
		ssize_t r = pread(fd, p + got, n - got, (off_t)got);
		if (r <= 0) {
			free(p);
			close(fd);
			return -1;
		}
		got += (size_t)r;
	}
	close(fd);
	*buf = p;
	*len = n;
	return 0;
}

/* Replaces path's content with buf[0..len). */
static inline int tu_write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) {
		return -1;
	}
	size_t done = 0;
	while (done < len) {
		ssize_t w = pwrite(fd, (const uint8_t *)buf + done, len - done, (off_t)done);
		if (w <= 0) {
			close(fd);
			return -1;
		}
		done += (size_t)w;
	}
	return close(fd);
}

static inline int tu_truncate(const char *path, long long len)
{
	return truncate(path, (off_t)len);
}

/* XORs the byte at off with mask (non-zero). */
static inline int tu_flip_byte(const char *path, long long off, uint8_t mask)
{
	int fd = open(path, O_RDWR);
	if (fd < 0) {
		return -1;
	}
	uint8_t b;
	if (pread(fd, &b, 1, (off_t)off) != 1) {
		close(fd);
		return -1;
	}
	b ^= mask;
	int rc = pwrite(fd, &b, 1, (off_t)off) == 1 ? 0 : -1;
	close(fd);
	return rc;
}

/* ---- directory snapshots: save every regular file, restore exactly ----- */

typedef struct tu_file {
	char name[256];
	uint8_t *data;
	size_t len;
} tu_file;

typedef struct tu_snapshot {
	tu_file *files;
	size_t n;
} tu_snapshot;

static inline int tu_snapshot_take(const char *dir, tu_snapshot *s)
{
	s->files = NULL;
	s->n = 0;
	DIR *d = opendir(dir);
	if (d == NULL) {
		return -1;
	}
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d)) != NULL) {
		char p[TU_PATH];
		struct stat st;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		if (lstat(p, &st) != 0 || !S_ISREG(st.st_mode) || strlen(e->d_name) >= 256) {
			continue;
		}
		tu_file *nf = realloc(s->files, (s->n + 1) * sizeof(*nf));
		if (nf == NULL) {
			rc = -1;
			break;
		}
		s->files = nf;
		tu_file *f = &s->files[s->n];
		snprintf(f->name, sizeof(f->name), "%s", e->d_name);
		if (tu_read_file(p, &f->data, &f->len) != 0) {
			rc = -1;
			break;
		}
		s->n++;
	}
	closedir(d);
	return rc;
}

/* Makes dir hold exactly the snapshot's files (others are removed). */
static inline int tu_snapshot_restore(const char *dir, const tu_snapshot *s)
{
	DIR *d = opendir(dir);
	if (d == NULL) {
		return -1;
	}
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
			continue;
		}
		char p[TU_PATH];
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		tu_rm_rf(p);
	}
	closedir(d);
	for (size_t i = 0; i < s->n; i++) {
		char p[TU_PATH];
		snprintf(p, sizeof(p), "%s/%s", dir, s->files[i].name);
		if (tu_write_file(p, s->files[i].data, s->files[i].len) != 0) {
			return -1;
		}
	}
	return 0;
}

static inline void tu_snapshot_free(tu_snapshot *s)
{
	for (size_t i = 0; i < s->n; i++) {
		free(s->files[i].data);
	}
	free(s->files);
	s->files = NULL;
	s->n = 0;
}

/* ---- data-directory naming -------------------------------------------- */

/* Path of segment/hint `id` ("seg" or "hint") in dir. */
static inline void tu_seg_path(char *buf, size_t cap, const char *dir, uint64_t id, const char *ext)
{
	snprintf(buf, cap, "%s/%010llu.%s", dir, (unsigned long long)id, ext);
}

/* Is name exactly ten digits, a dot and ext?  Sets *id. */
static inline int tu_parse_name(const char *name, const char *ext, uint64_t *id)
{
	size_t el = strlen(ext);
	if (strlen(name) != 11 + el || name[10] != '.' || strcmp(name + 11, ext) != 0) {
		return 0;
	}
	uint64_t v = 0;
	for (int i = 0; i < 10; i++) {
		if (name[i] < '0' || name[i] > '9') {
			return 0;
		}
		v = v * 10 + (uint64_t)(name[i] - '0');
	}
	*id = v;
	return 1;
}

/* Sorted ids of every NNNNNNNNNN.<ext> in dir.  *ids is malloc'd (caller
 * frees; may be NULL when none).  Returns the count, or -1. */
static inline int tu_list_ids(const char *dir, const char *ext, uint64_t **ids)
{
	*ids = NULL;
	DIR *d = opendir(dir);
	if (d == NULL) {
		return -1;
	}
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		uint64_t id;
		if (!tu_parse_name(e->d_name, ext, &id)) {
			continue;
		}
		uint64_t *ni = realloc(*ids, (size_t)(n + 1) * sizeof(**ids));
		if (ni == NULL) {
			closedir(d);
			return -1;
		}
		*ids = ni;
		(*ids)[n++] = id;
	}
	closedir(d);
	for (int i = 1; i < n; i++) { /* insertion sort: a few dozen ids */
		uint64_t v = (*ids)[i];
		int j = i - 1;
		while (j >= 0 && (*ids)[j] > v) {
			(*ids)[j + 1] = (*ids)[j];
			j--;
		}
		(*ids)[j + 1] = v;
	}
	return n;
}

/* ---- CRC32C (Castagnoli), bitwise table: independent of the engine ---- */

static inline uint32_t tu_crc32c(const void *buf, size_t len)
{
	static uint32_t table[256];
	static int ready;
	if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
		uint32_t t[256];
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t c = i;
			for (int k = 0; k < 8; k++) {
				c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
			}
			t[i] = c;
		}
		for (int i = 0; i < 256; i++) {
			__atomic_store_n(&table[i], t[i], __ATOMIC_RELAXED);
		}
		__atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
	}
	const uint8_t *p = buf;
	uint32_t c = 0xffffffffu;
	for (size_t i = 0; i < len; i++) {
		c = __atomic_load_n(&table[(c ^ p[i]) & 0xff], __ATOMIC_RELAXED) ^ (c >> 8);
	}
	return c ^ 0xffffffffu;
}

/* ---- segment parsing (format.h) ---------------------------------------- */

typedef struct tu_rec {
	size_t off;  /* offset of the record header in the file */
	size_t size; /* header + key + value */
	uint8_t type;
	uint16_t klen;
	uint32_t vlen;
	uint64_t seq;
	uint64_t expire_at;
	const uint8_t *key; /* borrowed from the parsed buffer */
	const uint8_t *val;
} tu_rec;

typedef struct tu_seg {
	uint8_t *buf; /* the whole file */
	size_t len;
	int hdr_ok; /* magic, version and header crc check out */
	uint64_t id;
	uint32_t flags; /* SL_SEG_COMPACTED, ... */
	uint64_t first_seq;
	tu_rec *recs; /* the valid records from the start, in file order */
	size_t nrecs;
	size_t end; /* offset where valid records stop */
	int tail;   /* why they stop: 0 end of file, 1 zero type, 2 truncated, 3 bad crc/type */
} tu_seg;

/* Parses a segment file: header, then records until a type-0 header, the end
 * of the file, a record running past the end or a bad record. */
static inline int tu_seg_parse(const char *path, tu_seg *s)
{
	memset(s, 0, sizeof(*s));
	if (tu_read_file(path, &s->buf, &s->len) != 0) {
		return -1;
	}
	const uint8_t *b = s->buf;
	if (s->len < SL_SEG_HDR_SIZE) {
		s->end = s->len;
		s->tail = 2;
		return 0;
	}
	s->hdr_ok = memcmp(b, SL_SEG_MAGIC, 8) == 0 && sl_get32(b + 8) == SL_FORMAT_VERSION &&
	            sl_get32(b + 12) == tu_crc32c(b + 16, 16);
	s->id = sl_get32(b + 16);
	s->flags = sl_get32(b + 20);
	s->first_seq = sl_get64(b + 24);
	size_t off = SL_SEG_HDR_SIZE;
	for (;;) {
		if (off == s->len) {
			s->tail = 0;
			break;
		}
		if (s->len - off < SL_REC_HDR_SIZE) {
			/* a short zero run is the end marker too */
			int allzero = 1;
			for (size_t i = off; i < s->len; i++) {
				allzero &= b[i] == 0;
			}
			s->tail = allzero ? 1 : 2;
			break;
		}
		const uint8_t *h = b + off;
		uint8_t type = h[4];
		if (type == 0) {
			s->tail = 1;
			break;
		}
		uint16_t klen = sl_get16(h + 6);
		uint32_t vlen = sl_get32(h + 8);
		size_t size = SL_REC_HDR_SIZE + (size_t)klen + (size_t)vlen;
		if ((type != SL_REC_PUT && type != SL_REC_DEL) || h[5] != 0 || klen == 0) {
			s->tail = 3;
			break;
		}
		if (size > s->len - off) {
			s->tail = 2;
			break;
		}
		if (sl_get32(h) != tu_crc32c(h + 4, size - 4)) {
			s->tail = 3;
			break;
		}
		tu_rec *nr = realloc(s->recs, (s->nrecs + 1) * sizeof(*nr));
		if (nr == NULL) {
			return -1;
		}
		s->recs = nr;
		tu_rec *r = &s->recs[s->nrecs++];
		r->off = off;
		r->size = size;
		r->type = type;
		r->klen = klen;
		r->vlen = vlen;
		r->seq = sl_get64(h + 12);
		r->expire_at = sl_get64(h + 20);
		r->key = h + SL_REC_HDR_SIZE;
		r->val = h + SL_REC_HDR_SIZE + klen;
		off += size;
	}
	s->end = off;
	return 0;
}

static inline void tu_seg_free(tu_seg *s)
{
	free(s->buf);
	free(s->recs);
	memset(s, 0, sizeof(*s));
}

/* ---- hint parsing (format.h) ------------------------------------------ */

/* Checks a hint file's magic, version, segment id and trailing crc, and that
 * its entries exactly fill it.  Returns the entry count, or -1. */
static inline long tu_hint_check(const uint8_t *b, size_t len, uint64_t want_id)
{
	if (len < SL_HINT_HDR_SIZE + 4 || memcmp(b, SL_HINT_MAGIC, 8) != 0 ||
	    sl_get32(b + 8) != SL_FORMAT_VERSION || sl_get64(b + 16) != want_id) {
		return -1;
	}
	if (sl_get32(b + len - 4) != tu_crc32c(b, len - 4)) {
		return -1;
	}
	uint32_t count = sl_get32(b + 12);
	size_t off = SL_HINT_HDR_SIZE;
	for (uint32_t i = 0; i < count; i++) {
		if (len - 4 - off < SL_HINT_ENTRY_FIXED) {
			return -1;
		}
		uint16_t klen = sl_get16(b + off + 25);
		off += SL_HINT_ENTRY_FIXED + klen;
		if (off > len - 4) {
			return -1;
		}
	}
	return off == len - 4 ? (long)count : -1;
}

#endif
