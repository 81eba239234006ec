/*
 * test_segment.c — segment files (storage/segment.c) against format.h.
 *
 * Why: a segment's header and length decide what recovery believes, and its
 * create/activate steps are where a full disk or a crash meets the data.
 * Cases cite segment.c's invariants: (1) create = open(O_EXCL), fallocate,
 * header, fdatasync, fsync(dir) — and a failure leaves no file, while a
 * clash with an existing file leaves that file alone; (2) bytes past `end`
 * are zero; (3) the file is only ever cut down to `end`.  Adversarial cases:
 * a flip at every header byte, short and zeroed headers, a header copied
 * from another segment, ENOSPC/EIO injected at each step through the I/O
 * seam (io.h).
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "format.h"
#include "io.h"
#include "record.h"
#include "segment.h"
#include "shiplog.h"
#include "testutil.h"

/* ---- helpers: files --------------------------------------------------- */

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

static void pwrite_at(const char *path, const void *p, size_t n, off_t off)
{
	int fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, p, n, off), (ssize_t)n);
	assert_int_equal(close(fd), 0);
}

static int all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] != 0) {
			return 0;
		}
	}
	return 1;
}

/* ---- helpers: an I/O seam with faults and a call log ----------------------- */

static struct sl_io fio;
static int fallocate_errno, pwrite_errno, open_errno;
static int fdatasync_fail, fsync_fail, ftruncate_fail;
static int n_fdatasync, n_unlink;
static char calls[256]; /* one letter per call, in order */

static void note(char c)
{
	size_t n = strlen(calls);
	if (n + 1 < sizeof(calls)) {
		calls[n] = c;
		calls[n + 1] = '\0';
	}
}

static int f_open(const char *path, int flags, mode_t mode)
{
	note('o');
	if (open_errno) {
		errno = open_errno;
		return -1;
	}
	return sl_io_default.open(path, flags, mode);
}

static int f_fallocate(int fd, off_t off, off_t len)
{
	note('a');
	if (fallocate_errno) {
		errno = fallocate_errno;
		return -1;
	}
	return sl_io_default.fallocate(fd, off, len);
}

static ssize_t f_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	note('w');
	if (pwrite_errno) {
		errno = pwrite_errno;
		return -1;
	}
	return pwrite(fd, buf, n, off);
}

static int f_fdatasync(int fd)
{
	note('d');
	n_fdatasync++;
	if (fdatasync_fail) {
		errno = EIO;
		return -1;
	}
	return fdatasync(fd);
}

static int f_fsync(int fd)
{
	note('s');
	if (fsync_fail) {
		errno = EIO;
		return -1;
	}
	return fsync(fd);
}

static int f_ftruncate(int fd, off_t len)
{
	note('t');
	if (ftruncate_fail) {
		errno = EIO;
		return -1;
	}
	return ftruncate(fd, len);
}

static int f_unlink(const char *path)
{
	note('u');
	n_unlink++;
	return unlink(path);
}

/* ---- fixture ------------------------------------------------------------ */

typedef struct fx {
	char *dir;
	int dirfd;
} fx;

static void fx_open(fx *f)
{
	fio = sl_io_default;
	fio.open = f_open;
	fio.fallocate = f_fallocate;
	fio.pwrite = f_pwrite;
	fio.fdatasync = f_fdatasync;
	fio.fsync = f_fsync;
	fio.ftruncate = f_ftruncate;
	fio.unlink = f_unlink;
	fallocate_errno = pwrite_errno = open_errno = 0;
	fdatasync_fail = fsync_fail = ftruncate_fail = 0;
	n_fdatasync = n_unlink = 0;
	calls[0] = '\0';

	const char *root = getenv("SL_TEST_TMP");
	if (root == NULL || *root == '\0') {
		root = "/tmp";
	}
	mkdir(root, 0755);
	f->dir = malloc(strlen(root) + 32);
	assert_non_null(f->dir);
	sprintf(f->dir, "%s/test_segment-XXXXXX", root);
	assert_non_null(mkdtemp(f->dir));
	f->dirfd = open(f->dir, O_RDONLY | O_DIRECTORY);
	assert_true(f->dirfd >= 0);
}

static void fx_close(fx *f)
{
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

static void seg_file(const fx *f, uint32_t id, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s/%010u.seg", f->dir, id);
}

static uint32_t append(sl_seg *s, uint64_t seq, const char *key, const char *val)
{
	uint64_t off = atomic_load(&s->end);
	size_t klen = strlen(key), vlen = strlen(val);
	size_t size = sl_rec_size(klen, vlen);
	assert_true(off + size <= s->cap);
	sl_rec_encode(s->map + off, SL_REC_PUT, seq, 0, key, klen, val, vlen);
	atomic_store(&s->end, off + size);
	s->last_seq = seq;
	return (uint32_t)off;
}

static void expect_record(const sl_seg *s, uint32_t off, uint64_t seq, const char *key)
{
	sl_rec r;
	size_t size;
	assert_int_equal(sl_rec_decode(s->map + off, atomic_load(&s->end) - off, SL_MAX_KEY,
	                               SL_MAX_VALUE, &r, &size),
	                 SL_REC_OK);
	assert_int_equal(r.seq, seq);
	assert_int_equal(r.klen, strlen(key));
	assert_memory_equal(r.key, key, r.klen);
}

/* Checks a header per format.h with an independent crc. */
static void expect_header(const uint8_t *h, uint32_t id, uint64_t first_seq)
{
	assert_memory_equal(h, "SHIPLSEG", 8);
	assert_int_equal(sl_get32(h + 8), 1);
	assert_int_equal(sl_get32(h + 12), tu_crc32c(h + 16, 16));
	assert_int_equal(sl_get64(h + 16), id);
	assert_int_equal(sl_get64(h + 24), first_seq);
}

/* ---- naming ------------------------------------------------------------- */

static void path_is_ten_digit_id_and_suffix(void **state)
{
	(void)state;
	char *p = sl_seg_path("/d", 42, ".seg");
	assert_string_equal(p, "/d/0000000042.seg");
	free(p);
	p = sl_seg_path("/a/b", UINT32_MAX, ".hint.tmp");
	assert_string_equal(p, "/a/b/4294967295.hint.tmp");
	free(p);
	p = sl_seg_path("rel", 0, ".hint");
	assert_string_equal(p, "rel/0000000000.hint");
	free(p);
}

/* ---- create (invariant 1) ---------------------------------------------- */

static void create_preallocates_and_writes_valid_header(void **state)
{
	fx *f = *state;
	const size_t cap = 256 * 1024;
	sl_seg *s = NULL;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 12, 5000, cap, &s), SL_OK);
	assert_non_null(s);
	/* Invariant 1, in order: open, fallocate, header, fdatasync, fsync(dir). */
	assert_string_equal(calls, "oawds");

	char path[512];
	seg_file(f, 12, path, sizeof(path));
	assert_int_equal(tu_file_size(path), (long long)cap);
	assert_int_equal(sl_seg_file_size(s), cap);
	assert_int_equal(s->id, 12);
	assert_true(s->fd >= 0);
	assert_non_null(s->map);
	assert_int_equal(s->cap, cap);
	assert_int_equal(s->first_seq, 5000);
	assert_int_equal(s->last_seq, 4999);
	assert_int_equal(atomic_load(&s->end), SL_SEG_HDR_SIZE);
	assert_int_equal(atomic_load(&s->synced), SL_SEG_HDR_SIZE);
	assert_int_equal(atomic_load(&s->live), 0);
	assert_int_equal(atomic_load(&s->sealed), 0);
	assert_int_equal(s->writable, 1);
	/* The mapping shows the header; everything past it is zero (inv. 2). */
	expect_header(s->map, 12, 5000);
	assert_true(all_zero(s->map + SL_SEG_HDR_SIZE, cap - SL_SEG_HDR_SIZE));

	size_t len;
	uint8_t *disk = read_all(path, &len);
	assert_int_equal(len, cap);
	expect_header(disk, 12, 5000);
	assert_true(all_zero(disk + SL_SEG_HDR_SIZE, cap - SL_SEG_HDR_SIZE));
	free(disk);
	sl_seg_close(&fio, s);
}

/* The map is shared: a memcpy into it is the append, visible in the file. */
static void append_through_map_reaches_file(void **state)
{
	fx *f = *state;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 1, 1, 64 * 1024, &s), SL_OK);
	uint32_t a = append(s, 1, "alpha", "one");
	uint32_t b = append(s, 2, "beta", "two");
	assert_int_equal(a, SL_SEG_HDR_SIZE);
	char path[512];
	seg_file(f, 1, path, sizeof(path));
	size_t len;
	uint8_t *disk = read_all(path, &len);
	assert_int_equal(b, a + sl_rec_size(5, 3));
	/* No sync yet: the shared mapping alone makes the bytes visible. */
	assert_int_equal(len, 64 * 1024);
	assert_memory_equal(disk + a, s->map + a, atomic_load(&s->end) - a);
	expect_record(s, b, 2, "beta");
	free(disk);
	sl_seg_close(&fio, s);
}

/* Minor faults taken by writing one zero byte into every page of
 * [from, to) of s's mapping (the space past `end` is zero already):
 * about 0 once the pages are mapped writable, one per page otherwise —
 * being in the page cache (mincore) is not enough. Not instrumented:
 * a sanitizer's shadow memory for the range would fault in too. */
__attribute__((no_sanitize_address, no_sanitize_thread)) static long
write_faults(sl_seg *s, size_t from, size_t to)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	struct rusage r0, r1;
	assert_int_equal(getrusage(RUSAGE_THREAD, &r0), 0);
	for (size_t off = (from + pg - 1) / pg * pg; off < to; off += pg) {
		((volatile uint8_t *)s->map)[off] = 0;
	}
	assert_int_equal(getrusage(RUSAGE_THREAD, &r1), 0);
	return r1.ru_minflt - r0.ru_minflt;
}

/* MADV_POPULATE_WRITE exists here (headers and kernel >= 5.14). */
static int have_populate(void)
{
#ifdef MADV_POPULATE_WRITE
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	void *m = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(m != MAP_FAILED);
	int ok = madvise(m, pg, MADV_POPULATE_WRITE) == 0;
	munmap(m, pg);
	return ok;
#else
	return 0;
#endif
}

/* Bytes this process has dirtied in the page cache so far (the
 * write_bytes of /proc/self/io), or -1 without task I/O accounting. */
static long long dirtied_bytes(void)
{
	FILE *fp = fopen("/proc/self/io", "r");
	long long v = -1;
	char line[128];
	while (fp != NULL && fgets(line, sizeof(line), fp) != NULL) {
		if (sscanf(line, "write_bytes: %lld", &v) == 1) {
			break;
		}
	}
	if (fp != NULL) {
		fclose(fp);
	}
	return v;
}

/* Every way of populating a mapping (unbounded, or bounded: readahead(2)
 * in 1 MiB steps first; SL_POP_DIRTY: MADV_POPULATE_WRITE, SL_POP_MAP:
 * MADV_POPULATE_READ) faults the asked range in, advances `populated`
 * only forward, leaves the space past `end` zero (invariant 2) and the
 * records before it intact.  SL_POP_DIRTY maps the pages writable;
 * SL_POP_MAP maps them read-only and dirties none: mapped writable they
 * would be dirty zeros that the next fdatasync writes out before the
 * appender fills them. */
static void populate_faults_in_range_every_way(void **state)
{
	fx *f = *state;
	if (!have_populate()) {
		skip();
	}
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	struct statfs fs;
	int tmpfs = fstatfs(f->dirfd, &fs) == 0 && fs.f_type == TMPFS_MAGIC;
	static const struct {
		int bounded, how;
	} ways[] = {{0, SL_POP_DIRTY}, {1, SL_POP_DIRTY}, {1, SL_POP_MAP}};
	for (size_t w = 0; w < sizeof(ways) / sizeof(ways[0]); w++) {
		int bounded = ways[w].bounded;
		sl_seg *s;
		uint32_t id = (uint32_t)(10 + w);
		size_t cap = 6u << 20;
		assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, id, 1, cap, &s), SL_OK);
		uint32_t a = append(s, 1, "before", "populate");
		long long d0 = dirtied_bytes();
		sl_seg_populate(s, (3u << 20) + 100, bounded, ways[w].how);
		long long d1 = dirtied_bytes();
		/* rounded up to a whole page */
		assert_int_equal(atomic_load(&s->populated), ((3u << 20) + 100 + pg - 1) / pg * pg);
		size_t npg = ((3u << 20) - atomic_load(&s->end)) / pg;
		long wf = write_faults(s, atomic_load(&s->end), 3u << 20);
		if (ways[w].how == SL_POP_DIRTY) {
			/* mapped writable, not just read into the page cache:
			 * writing the populated pages takes (almost) no fault */
			assert_true(wf <= 8);
			if (d0 >= 0 && !tmpfs) {
				assert_true(d1 - d0 >= (long long)(2u << 20));
			}
		} else {
			/* mapped read-only: each page's first write faults
			 * (write-protect), and populating dirtied nothing.  Not
			 * on tmpfs, which tracks no dirty pages: mapped
			 * writable there, no fault */
			if (!tmpfs) {
				assert_true(wf >= (long)npg - 8);
			}
			if (d0 >= 0 && !tmpfs) {
				assert_true(d1 - d0 < (long long)(64u << 10));
			}
		}
		expect_record(s, a, 1, "before");
		for (size_t off = atomic_load(&s->end); off < (3u << 20); off += 4093) {
			assert_int_equal(s->map[off], 0);
		}
		/* never backwards; up to the whole capacity */
		sl_seg_populate(s, 1u << 20, bounded, ways[w].how);
		assert_int_equal(atomic_load(&s->populated), ((3u << 20) + 100 + pg - 1) / pg * pg);
		sl_seg_populate(s, cap + (1u << 20), bounded, ways[w].how);
		assert_int_equal(atomic_load(&s->populated), cap);
		uint32_t b = append(s, 2, "after", "populate");
		expect_record(s, b, 2, "after");
		sl_seg_close(&fio, s);
	}
}

/* pages_only (the appends are pwrites): the pages are read into the page
 * cache (mincore), `populated` advances, and nothing is mapped, so a
 * write through the mapping still faults once per page; the space past
 * `end` stays zero and the record before it intact. */
static void populate_pages_only_fills_page_cache_not_mapping(void **state)
{
	fx *f = *state;
	if (!have_populate()) {
		skip(); /* sl_seg_populate is compiled only with MADV_POPULATE_WRITE */
	}
	struct statfs fs;
	if (fstatfs(f->dirfd, &fs) == 0 && fs.f_type == TMPFS_MAGIC) {
		skip(); /* readahead(2) does nothing on tmpfs: nothing to read in */
	}
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	sl_seg *s;
	size_t cap = 6u << 20;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 20, 1, cap, &s), SL_OK);
	uint32_t a = append(s, 1, "before", "readahead");
	size_t upto = 2u << 20;
	size_t npg = upto / pg;
	unsigned char *vec = malloc(npg);
	assert_non_null(vec);
	assert_int_equal(mincore(s->map, upto, vec), 0);
	size_t before = 0;
	for (size_t i = 0; i < npg; i++) {
		before += vec[i] & 1;
	}
	sl_seg_populate(s, upto, 1, SL_POP_PAGES);
	assert_int_equal(atomic_load(&s->populated), upto);
	assert_int_equal(mincore(s->map, upto, vec), 0);
	size_t after = 0;
	for (size_t i = 0; i < npg; i++) {
		after += vec[i] & 1;
	}
	free(vec);
	assert_true(before < npg / 2); /* a fresh, fallocated file */
	assert_true(after >= npg * 9 / 10);
	/* not mapped: writing each page faults */
	assert_true(write_faults(s, 1u << 20, upto) >= (long)((1u << 20) / pg) / 2);
	expect_record(s, a, 1, "before");
	for (size_t off = atomic_load(&s->end); off < upto; off += 4093) {
		assert_int_equal(s->map[off], 0);
	}
	sl_seg_close(&fio, s);
}

static void sync_calls_fdatasync_only_when_behind(void **state)
{
	fx *f = *state;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 1, 1, 64 * 1024, &s), SL_OK);
	uint64_t fsyncs = 0;
	n_fdatasync = 0;
	assert_int_equal(sl_seg_sync(&fio, s, &fsyncs), SL_OK);
	assert_int_equal(n_fdatasync, 0);
	assert_int_equal(fsyncs, 0);

	append(s, 1, "k", "v");
	assert_int_equal(sl_seg_sync(&fio, s, &fsyncs), SL_OK);
	assert_int_equal(n_fdatasync, 1);
	assert_int_equal(fsyncs, 1);
	assert_int_equal(atomic_load(&s->synced), atomic_load(&s->end));
	assert_int_equal(sl_seg_sync(&fio, s, NULL), SL_OK);
	assert_int_equal(n_fdatasync, 1);

	/* A failed fdatasync reports SL_EIO and does not advance synced.  It
	 * stays failed: Linux reports a writeback error once, so the next
	 * fdatasync of the file may return 0 with the bytes lost. */
	append(s, 2, "k2", "v2");
	uint64_t before = atomic_load(&s->synced);
	fdatasync_fail = 1;
	assert_int_equal(sl_seg_sync(&fio, s, &fsyncs), SL_EIO);
	assert_int_equal(atomic_load(&s->synced), before);
	fdatasync_fail = 0;
	n_fdatasync = 0;
	assert_int_equal(sl_seg_sync(&fio, s, &fsyncs), SL_EIO);
	assert_int_equal(n_fdatasync, 0);
	assert_int_equal(atomic_load(&s->synced), before);
	sl_seg_close(&fio, s);
}

/* O_EXCL: creating an id that exists fails, and the failure path must not
 * delete the file it did not create (that file holds data). */
static void create_existing_id_fails_and_keeps_file(void **state)
{
	fx *f = *state;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 3, 1, 64 * 1024, &s), SL_OK);
	append(s, 1, "precious", "data");
	assert_int_equal(sl_seg_sync(&fio, s, NULL), SL_OK);
	sl_seg_close(&fio, s);
	char path[512];
	seg_file(f, 3, path, sizeof(path));
	size_t len0;
	uint8_t *before = read_all(path, &len0);

	n_unlink = 0;
	sl_seg *s2 = (sl_seg *)(uintptr_t)0x1;
	int rc = sl_seg_create(&fio, f->dir, f->dirfd, 3, 100, 128 * 1024, &s2);
	assert_int_not_equal(rc, SL_OK);
	assert_ptr_equal(s2, (sl_seg *)(uintptr_t)0x1); /* *out untouched */
	assert_int_equal(n_unlink, 0);
	size_t len1;
	uint8_t *after = read_all(path, &len1);
	assert_int_equal(len1, len0);
	assert_memory_equal(after, before, len0);
	free(before);
	free(after);

	/* Also through the real system calls. */
	rc = sl_seg_create(&sl_io_default, f->dir, f->dirfd, 3, 100, 128 * 1024, &s2);
	assert_int_not_equal(rc, SL_OK);
	assert_int_equal(tu_file_size(path), (long long)len0);
	sl_seg *o;
	int hdr_ok = -1;
	assert_int_equal(sl_seg_open(&fio, f->dir, 3, 0, &o, &hdr_ok), SL_OK);
	assert_int_equal(hdr_ok, 1);
	assert_int_equal(o->first_seq, 1);
	sl_seg_close(&fio, o);
}

static void expect_create_fails_cleanly(fx *f, uint32_t id, int want_rc)
{
	char path[512];
	seg_file(f, id, path, sizeof(path));
	sl_seg *s = (sl_seg *)(uintptr_t)0x1;
	calls[0] = '\0';
	int rc = sl_seg_create(&fio, f->dir, f->dirfd, id, 1, 1u << 20, &s);
	if (rc != want_rc) {
		fail_msg("create rc %d, want %d (calls %s)", rc, want_rc, calls);
	}
	assert_ptr_equal(s, (sl_seg *)(uintptr_t)0x1);
	if (tu_file_size(path) != -1) {
		fail_msg("failed create left %s behind (%lld bytes; calls %s)", path,
		         tu_file_size(path), calls);
	}
}

static void create_enospc_on_fallocate_leaves_no_file(void **state)
{
	fx *f = *state;
	fallocate_errno = ENOSPC;
	expect_create_fails_cleanly(f, 9, SL_ENOSPC);
	fallocate_errno = EDQUOT;
	expect_create_fails_cleanly(f, 9, SL_ENOSPC);
	fallocate_errno = EIO;
	expect_create_fails_cleanly(f, 9, SL_EIO);
	fallocate_errno = 0;
	/* Nothing left behind blocks the next attempt. */
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 9, 1, 1u << 20, &s), SL_OK);
	sl_seg_close(&fio, s);
}

static void create_fails_at_each_later_step_leaves_no_file(void **state)
{
	fx *f = *state;
	open_errno = ENOSPC;
	expect_create_fails_cleanly(f, 4, SL_ENOSPC);
	open_errno = EACCES;
	expect_create_fails_cleanly(f, 4, SL_EIO);
	open_errno = 0;
	pwrite_errno = ENOSPC;
	expect_create_fails_cleanly(f, 4, SL_ENOSPC);
	pwrite_errno = EIO;
	expect_create_fails_cleanly(f, 4, SL_EIO);
	pwrite_errno = 0;
	fdatasync_fail = 1;
	expect_create_fails_cleanly(f, 4, SL_EIO);
	fdatasync_fail = 0;
	fsync_fail = 1; /* the directory fsync */
	expect_create_fails_cleanly(f, 4, SL_EIO);
	fsync_fail = 0;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 4, 1, 1u << 20, &s), SL_OK);
	sl_seg_close(&fio, s);
}

/* ---- open --------------------------------------------------------------- */

static void open_reports_hdr_ok_and_first_seq(void **state)
{
	fx *f = *state;
	const size_t cap = 64 * 1024;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 5, 1000, cap, &s), SL_OK);
	uint32_t off = append(s, 1000, "key", "value");
	assert_int_equal(sl_seg_sync(&fio, s, NULL), SL_OK);
	sl_seg_close(&fio, s);

	for (int writable = 0; writable <= 1; writable++) {
		sl_seg *o = NULL;
		int hdr_ok = -1;
		assert_int_equal(sl_seg_open(&fio, f->dir, 5, writable, &o, &hdr_ok), SL_OK);
		assert_int_equal(hdr_ok, 1);
		assert_int_equal(o->id, 5);
		assert_int_equal(o->first_seq, 1000);
		assert_int_equal(o->last_seq, 999);
		assert_int_equal(sl_seg_file_size(o), cap);
		assert_int_equal(atomic_load(&o->end), cap); /* until the caller scans */
		assert_int_equal(atomic_load(&o->synced), cap);
		assert_int_equal(atomic_load(&o->sealed), 1);
		expect_header(o->map, 5, 1000);
		atomic_store(&o->end, off + sl_rec_size(3, 5));
		expect_record(o, off, 1000, "key");
		sl_seg_close(&fio, o);
	}
}

static void open_missing_segment_fails(void **state)
{
	fx *f = *state;
	sl_seg *o = (sl_seg *)(uintptr_t)0x1;
	int hdr_ok = 7;
	assert_int_not_equal(sl_seg_open(&fio, f->dir, 77, 0, &o, &hdr_ok), SL_OK);
	assert_ptr_equal(o, (sl_seg *)(uintptr_t)0x1);
}

/* Every header byte flipped: never hdr_ok.  A changed version with an intact
 * magic may instead be refused as SL_ENOTSUP (a future format). */
static void damaged_header_byte_flip_each_offset(void **state)
{
	fx *f = *state;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 6, 42, 4096, &s), SL_OK);
	sl_seg_close(&fio, s);
	char path[512];
	seg_file(f, 6, path, sizeof(path));
	size_t len;
	uint8_t *orig = read_all(path, &len);
	static const uint8_t masks[] = {0x01, 0x80, 0xff};
	for (size_t off = 0; off < SL_SEG_HDR_SIZE; off++) {
		for (size_t m = 0; m < sizeof(masks); m++) {
			uint8_t b = orig[off] ^ masks[m];
			pwrite_at(path, &b, 1, (off_t)off);
			sl_seg *o = NULL;
			int hdr_ok = -1;
			int rc = sl_seg_open(&fio, f->dir, 6, 0, &o, &hdr_ok);
			int version_byte = off >= 8 && off < 12;
			if (rc == SL_OK) {
				if (hdr_ok != 0) {
					fail_msg("flip 0x%02x at header byte %zu: hdr_ok %d",
					         masks[m], off, hdr_ok);
				}
				assert_true(o->first_seq >= 1);
				sl_seg_close(&fio, o);
			} else if (!(version_byte && rc == SL_ENOTSUP)) {
				fail_msg("flip 0x%02x at header byte %zu: rc %d", masks[m], off,
				         rc);
			}
			pwrite_at(path, orig + off, 1, (off_t)off);
		}
	}
	sl_seg *o;
	int hdr_ok;
	assert_int_equal(sl_seg_open(&fio, f->dir, 6, 0, &o, &hdr_ok), SL_OK);
	assert_int_equal(hdr_ok, 1);
	sl_seg_close(&fio, o);
	free(orig);
}

/* A crash between fallocate and the header write leaves a zero header. */
static void zero_header_is_not_ok(void **state)
{
	fx *f = *state;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 2, 10, 4096, &s), SL_OK);
	sl_seg_close(&fio, s);
	char path[512];
	seg_file(f, 2, path, sizeof(path));
	uint8_t z[SL_SEG_HDR_SIZE] = {0};
	pwrite_at(path, z, sizeof(z), 0);
	sl_seg *o;
	int hdr_ok = -1;
	assert_int_equal(sl_seg_open(&fio, f->dir, 2, 1, &o, &hdr_ok), SL_OK);
	assert_int_equal(hdr_ok, 0);
	assert_int_equal(o->first_seq, 1);
	/* sl_seg_write_header repairs it (the caller sets first_seq). */
	o->first_seq = 10;
	assert_int_equal(sl_seg_write_header(&fio, o), SL_OK);
	sl_seg_close(&fio, o);
	assert_int_equal(sl_seg_open(&fio, f->dir, 2, 0, &o, &hdr_ok), SL_OK);
	assert_int_equal(hdr_ok, 1);
	assert_int_equal(o->first_seq, 10);
	sl_seg_close(&fio, o);
}

static void short_file_header_is_not_ok(void **state)
{
	fx *f = *state;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 8, 10, 4096, &s), SL_OK);
	sl_seg_close(&fio, s);
	char path[512];
	seg_file(f, 8, path, sizeof(path));
	static const off_t lens[] = {SL_SEG_HDR_SIZE - 1, 16, 1, 0};
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		assert_int_equal(truncate(path, lens[i]), 0);
		sl_seg *o;
		int hdr_ok = -1;
		assert_int_equal(sl_seg_open(&fio, f->dir, 8, 0, &o, &hdr_ok), SL_OK);
		assert_int_equal(hdr_ok, 0);
		assert_int_equal(sl_seg_file_size(o), (uint64_t)lens[i]);
		sl_seg_close(&fio, o);
	}
}

/* A valid header for a different id (a file renamed or copied) is damage. */
static void header_of_other_segment_is_not_ok(void **state)
{
	fx *f = *state;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 20, 10, 4096, &s), SL_OK);
	sl_seg_close(&fio, s);
	char a[512], b[512];
	seg_file(f, 20, a, sizeof(a));
	seg_file(f, 21, b, sizeof(b));
	assert_int_equal(rename(a, b), 0);
	sl_seg *o;
	int hdr_ok = -1;
	assert_int_equal(sl_seg_open(&fio, f->dir, 21, 0, &o, &hdr_ok), SL_OK);
	assert_int_equal(hdr_ok, 0);
	sl_seg_close(&fio, o);
}

/* ---- trim and activate (invariants 2, 3) ------------------------------- */

static void trim_cuts_file_to_end(void **state)
{
	fx *f = *state;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 1, 1, 64 * 1024, &s), SL_OK);
	uint32_t o1 = append(s, 1, "a", "1");
	uint32_t o2 = append(s, 2, "bb", "22");
	uint32_t o3 = append(s, 3, "ccc", "333");
	uint64_t end = atomic_load(&s->end);
	assert_int_equal(sl_seg_sync(&fio, s, NULL), SL_OK);
	assert_int_equal(sl_seg_trim(&fio, s), SL_OK);
	assert_int_equal(sl_seg_file_size(s), end);
	/* Trimming again is a no-op that makes no call. */
	calls[0] = '\0';
	assert_int_equal(sl_seg_trim(&fio, s), SL_OK);
	assert_string_equal(calls, "");
	assert_int_equal(sl_seg_file_size(s), end);
	sl_seg_close(&fio, s);

	sl_seg *o;
	int hdr_ok;
	assert_int_equal(sl_seg_open(&fio, f->dir, 1, 0, &o, &hdr_ok), SL_OK);
	assert_int_equal(hdr_ok, 1);
	assert_int_equal(atomic_load(&o->end), end);
	expect_record(o, o1, 1, "a");
	expect_record(o, o2, 2, "bb");
	expect_record(o, o3, 3, "ccc");
	sl_seg_close(&fio, o);
}

static void trim_failure_is_eio(void **state)
{
	fx *f = *state;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 1, 1, 64 * 1024, &s), SL_OK);
	append(s, 1, "a", "1");
	ftruncate_fail = 1;
	assert_int_equal(sl_seg_trim(&fio, s), SL_EIO);
	assert_int_equal(sl_seg_file_size(s), 64 * 1024);
	ftruncate_fail = 0;
	sl_seg_close(&fio, s);
}

/* Activate: reopen a trimmed segment, grow it, map it writable, append. */
static void activate_grows_and_maps_writable(void **state)
{
	fx *f = *state;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 1, 1, 64 * 1024, &s), SL_OK);
	uint32_t o1 = append(s, 1, "first", "x");
	uint64_t end = atomic_load(&s->end);
	assert_int_equal(sl_seg_sync(&fio, s, NULL), SL_OK);
	assert_int_equal(sl_seg_trim(&fio, s), SL_OK);
	sl_seg_close(&fio, s);

	sl_seg *o;
	int hdr_ok;
	assert_int_equal(sl_seg_open(&fio, f->dir, 1, 1, &o, &hdr_ok), SL_OK);
	assert_int_equal(hdr_ok, 1);
	const size_t cap = 128 * 1024;
	assert_int_equal(sl_seg_activate(&fio, o, end, cap), SL_OK);
	assert_int_equal(sl_seg_file_size(o), cap);
	assert_int_equal(o->cap, cap);
	assert_int_equal(atomic_load(&o->end), end);
	assert_int_equal(atomic_load(&o->synced), end);
	assert_int_equal(o->writable, 1);
	assert_int_equal(atomic_load(&o->sealed), 0);
	assert_true(all_zero(o->map + end, cap - end));
	expect_record(o, o1, 1, "first");
	uint32_t o2 = append(o, 2, "second", "y");
	assert_int_equal(o2, end);
	assert_int_equal(sl_seg_sync(&fio, o, NULL), SL_OK);
	uint64_t end2 = atomic_load(&o->end);
	sl_seg_close(&fio, o);

	assert_int_equal(sl_seg_open(&fio, f->dir, 1, 0, &o, &hdr_ok), SL_OK);
	atomic_store(&o->end, end2);
	expect_record(o, o1, 1, "first");
	expect_record(o, o2, 2, "second");
	sl_seg_close(&fio, o);
}

/* A torn tail past `end` (garbage a crash left) is cut: after activate the
 * bytes past end read as zero again (invariant 2), so the next record's
 * neighbour is not stale garbage. */
static void activate_cuts_torn_tail(void **state)
{
	fx *f = *state;
	const size_t cap = 64 * 1024;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 1, 1, cap, &s), SL_OK);
	append(s, 1, "good", "record");
	uint64_t end = atomic_load(&s->end);
	memset(s->map + end, 0xA7, 300); /* half a record, never published */
	assert_int_equal(sl_seg_sync(&fio, s, NULL), SL_OK);
	sl_seg_close(&fio, s);

	sl_seg *o;
	int hdr_ok;
	assert_int_equal(sl_seg_open(&fio, f->dir, 1, 1, &o, &hdr_ok), SL_OK);
	assert_int_equal(sl_seg_activate(&fio, o, end, cap), SL_OK);
	assert_int_equal(sl_seg_file_size(o), cap);
	assert_true(all_zero(o->map + end, cap - end));
	sl_seg_close(&fio, o);
	char path[512];
	seg_file(f, 1, path, sizeof(path));
	size_t len;
	uint8_t *disk = read_all(path, &len);
	assert_int_equal(len, cap);
	assert_true(all_zero(disk + end, cap - end));
	free(disk);
}

static void activate_with_cap_below_end_keeps_data(void **state)
{
	fx *f = *state;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 1, 1, 64 * 1024, &s), SL_OK);
	uint32_t o1 = append(s, 1, "k", "v");
	uint64_t end = atomic_load(&s->end);
	sl_seg_close(&fio, s);
	sl_seg *o;
	int hdr_ok;
	assert_int_equal(sl_seg_open(&fio, f->dir, 1, 1, &o, &hdr_ok), SL_OK);
	assert_int_equal(sl_seg_activate(&fio, o, end, 16), SL_OK);
	assert_int_equal(sl_seg_file_size(o), end);
	assert_true(o->cap >= end);
	expect_record(o, o1, 1, "k");
	sl_seg_close(&fio, o);
}

static void activate_enospc_is_reported_and_close_is_safe(void **state)
{
	fx *f = *state;
	sl_seg *s;
	assert_int_equal(sl_seg_create(&fio, f->dir, f->dirfd, 1, 1, 4096, &s), SL_OK);
	uint64_t end = atomic_load(&s->end);
	sl_seg_close(&fio, s);
	sl_seg *o;
	int hdr_ok;
	assert_int_equal(sl_seg_open(&fio, f->dir, 1, 1, &o, &hdr_ok), SL_OK);
	fallocate_errno = ENOSPC;
	assert_int_equal(sl_seg_activate(&fio, o, end, 1u << 20), SL_ENOSPC);
	fallocate_errno = 0;
	sl_seg_close(&fio, o); /* must not unmap twice */

	assert_int_equal(sl_seg_open(&fio, f->dir, 1, 1, &o, &hdr_ok), SL_OK);
	ftruncate_fail = 1;
	assert_int_equal(sl_seg_activate(&fio, o, end, 1u << 20), SL_EIO);
	ftruncate_fail = 0;
	sl_seg_close(&fio, o);

	assert_int_equal(sl_seg_open(&fio, f->dir, 1, 1, &o, &hdr_ok), SL_OK);
	fdatasync_fail = 1;
	assert_int_equal(sl_seg_activate(&fio, o, end, 1u << 20), SL_EIO);
	fdatasync_fail = 0;
	sl_seg_close(&fio, o);

	/* The header survived all of it. */
	assert_int_equal(sl_seg_open(&fio, f->dir, 1, 0, &o, &hdr_ok), SL_OK);
	assert_int_equal(hdr_ok, 1);
	sl_seg_close(&fio, o);
	sl_seg_close(&fio, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(path_is_ten_digit_id_and_suffix, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(create_preallocates_and_writes_valid_header, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(append_through_map_reaches_file, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(populate_pages_only_fills_page_cache_not_mapping,
	                                    fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(populate_faults_in_range_every_way, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(sync_calls_fdatasync_only_when_behind, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(create_existing_id_fails_and_keeps_file, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(create_enospc_on_fallocate_leaves_no_file, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(create_fails_at_each_later_step_leaves_no_file,
	                                    fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(open_reports_hdr_ok_and_first_seq, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(open_missing_segment_fails, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(damaged_header_byte_flip_each_offset, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(zero_header_is_not_ok, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(short_file_header_is_not_ok, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(header_of_other_segment_is_not_ok, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(trim_cuts_file_to_end, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(trim_failure_is_eio, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(activate_grows_and_maps_writable, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(activate_cuts_torn_tail, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(activate_with_cap_below_end_keeps_data, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(activate_enospc_is_reported_and_close_is_safe, fx_setup,
	                                    fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
