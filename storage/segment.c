/*
 * segment.c — segment files: create, open, map, sync, trim.
 *
 * Invariants:
 *  1. A segment is created by: open(O_EXCL), fallocate(cap), write header,
 *     fdatasync, fsync(directory).  Only then do records go into it, so a
 *     crash leaves either no file, or a file whose header is zero or valid.
 *  2. Bytes past `end` are zero (preallocated) until a record is copied
 *     there; the keydir points at a record only after the whole record is
 *     copied, so readers never see a partial record.
 *  3. The mapping is never accessed at or past the file's length: the file
 *     is only trimmed down to `end`.
 */
#define _GNU_SOURCE
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"
#include "record.h"
#include "shiplog.h"

static uint64_t file_size_of(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
}

static int err_of(int e)
{
	return e == ENOSPC || e == EDQUOT ? SL_ENOSPC : SL_EIO;
}

char *sl_seg_path(const char *dir, uint32_t id, const char *suffix)
{
	size_t n = strlen(dir) + 32 + strlen(suffix);
	char *p = malloc(n);
	if (p != NULL) {
		snprintf(p, n, "%s/%010u%s", dir, id, suffix);
	}
	return p;
}

static void encode_header(uint8_t *h, uint32_t id, uint32_t flags, uint64_t first_seq)
{
	memcpy(h, SL_SEG_MAGIC, 8);
	sl_put32(h + 8, SL_FORMAT_VERSION);
	sl_put32(h + 16, id);
	sl_put32(h + 20, flags);
	sl_put64(h + 24, first_seq);
	sl_put32(h + 12, sl_crc32c(h + 16, 16));
}

int sl_seg_write_header(const struct sl_io *io, sl_seg *s)
{
	uint8_t h[SL_SEG_HDR_SIZE];
	encode_header(h, s->id, s->flags, s->first_seq);
	if (io->pwrite(s->fd, h, sizeof(h), 0) != (ssize_t)sizeof(h)) {
		return err_of(errno);
	}
	if (io->fdatasync(s->fd) != 0) {
		return SL_EIO;
	}
	return SL_OK;
}

static int map_seg(sl_seg *s, size_t len, int writable)
{
	if (len == 0) {
		len = 1; /* never mapped past EOF by invariant 3 */
	}
	void *m = mmap(NULL, len, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, s->fd, 0);
	if (m == MAP_FAILED) {
		return errno == ENOMEM ? SL_ENOMEM : SL_EIO;
	}
	s->map = m;
	s->cap = len;
	return SL_OK;
}

int sl_seg_create(const struct sl_io *io, const char *dir, int dirfd, uint32_t id,
                  uint64_t first_seq, size_t cap, sl_seg **out)
{
	return sl_seg_create_as(io, dir, dirfd, id, first_seq, cap, "", 0, out);
}

/* A zeroed segment with its sync_lock made (sl_seg_close destroys it), or
 * NULL. */
static sl_seg *seg_new(void)
{
	sl_seg *s = calloc(1, sizeof(*s));
	if (s != NULL) {
		pthread_mutex_init(&s->sync_lock, NULL);
	}
	return s;
}

int sl_seg_create_as(const struct sl_io *io, const char *dir, int dirfd, uint32_t id,
                     uint64_t first_seq, size_t cap, const char *suffix, uint32_t flags,
                     sl_seg **out)
{
	int rc = SL_ENOMEM;
	char sfx[32];
	snprintf(sfx, sizeof(sfx), ".seg%s", suffix);
	char *path = sl_seg_path(dir, id, sfx);
	sl_seg *s = seg_new();
	if (path == NULL || s == NULL) {
		goto fail;
	}
	s->id = id;
	s->flags = flags;
	s->first_seq = first_seq;
	s->last_seq = first_seq - 1;
	s->writable = 1;
	s->fd = io->open(path, O_RDWR | O_CREAT | O_EXCL, 0644);
	if (s->fd < 0) {
		rc = err_of(errno);
		goto fail;
	}
	if (io->fallocate(s->fd, 0, (off_t)cap) != 0) {
		rc = err_of(errno);
		goto fail_file;
	}
	if ((rc = sl_seg_write_header(io, s)) != SL_OK) {
		goto fail_file;
	}
	if (io->fsync(dirfd) != 0) {
		rc = SL_EIO;
		goto fail_file;
	}
	if ((rc = map_seg(s, cap, 1)) != SL_OK) {
		goto fail_file;
	}
	atomic_store(&s->end, SL_SEG_HDR_SIZE);
	atomic_store(&s->synced, SL_SEG_HDR_SIZE);
	free(path);
	*out = s;
	return SL_OK;
fail_file:
	io->close(s->fd);
	io->unlink(path);
fail:
	free(path);
	free(s);
	return rc;
}

int sl_seg_open(const struct sl_io *io, const char *dir, uint32_t id, int writable, sl_seg **out,
                int *hdr_ok)
{
	int rc = SL_ENOMEM;
	char *path = sl_seg_path(dir, id, ".seg");
	sl_seg *s = seg_new();
	if (path == NULL || s == NULL) {
		goto fail;
	}
	s->id = id;
	s->fd = io->open(path, writable ? O_RDWR : O_RDONLY, 0);
	if (s->fd < 0) {
		rc = SL_EIO;
		goto fail;
	}
	struct stat st;
	if (fstat(s->fd, &st) != 0) {
		rc = SL_EIO;
		goto fail_fd;
	}
	if (!S_ISREG(st.st_mode)) {
		/* a directory opens read-only; it is not a segment */
		errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
		rc = SL_EIO;
		goto fail_fd;
	}
	uint64_t size = (uint64_t)st.st_size;
	if ((rc = map_seg(s, (size_t)size, 0)) != SL_OK) {
		goto fail_fd;
	}
	*hdr_ok = 0;
	if (size >= SL_SEG_HDR_SIZE) {
		const uint8_t *h = s->map;
		if (memcmp(h, SL_SEG_MAGIC, 8) == 0 && sl_get32(h + 8) == SL_FORMAT_VERSION &&
		    sl_get32(h + 12) == sl_crc32c(h + 16, 16) && sl_get32(h + 16) == id) {
			s->flags = sl_get32(h + 20);
			s->first_seq = sl_get64(h + 24);
			*hdr_ok = 1;
		} else if (memcmp(h, SL_SEG_MAGIC, 8) == 0 &&
		           sl_get32(h + 8) != SL_FORMAT_VERSION &&
		           sl_get32(h + 12) == sl_crc32c(h + 16, 16) && sl_get32(h + 16) == id) {
			/* An intact header of another version: not ours to read. */
			rc = SL_ENOTSUP;
			goto fail_map;
		}
	}
	if (s->first_seq == 0) {
		s->first_seq = 1;
	}
	s->last_seq = s->first_seq - 1;
	/* end and synced are set by the caller's scan. */
	atomic_store(&s->end, size < SL_SEG_HDR_SIZE ? SL_SEG_HDR_SIZE : size);
	atomic_store(&s->synced, atomic_load(&s->end));
	s->sealed = 1;
	free(path);
	*out = s;
	return SL_OK;
fail_map:
	munmap(s->map, s->cap);
fail_fd:;
	int e = errno; /* for the caller's message */
	io->close(s->fd);
	errno = e;
fail:
	free(path);
	free(s);
	return rc;
}

uint64_t sl_seg_file_size(const sl_seg *s)
{
	return file_size_of(s->fd);
}

void sl_seg_close(const struct sl_io *io, sl_seg *s)
{
	if (s == NULL) {
		return;
	}
	if (s->map != NULL) {
		munmap(s->map, s->cap);
	}
	io->close(s->fd);
	free(s->ckpt);
	pthread_mutex_destroy(&s->sync_lock);
	free(s);
}

static int sync_locked(const struct sl_io *io, sl_seg *s, uint64_t end, uint64_t *fsyncs)
{
	if (fsyncs != NULL) {
		__atomic_fetch_add(fsyncs, 1, __ATOMIC_RELAXED);
	}
	if (s->writable) {
		/* Unmap the fully written pages first: writeback then finds no
		 * writable mapping to clean, which would cost a TLB-shootdown IPI
		 * per page.  The pages stay dirty in the page cache; a later read
		 * faults them back in.  Nothing is lost by this. */
		uint64_t from = atomic_load(&s->synced) & ~(uint64_t)4095u,
		         to = end & ~(uint64_t)4095u;
		if (to > from) {
			madvise(s->map + from, (size_t)(to - from), MADV_DONTNEED);
		}
	}
	if (io->fdatasync(s->fd) != 0) {
		atomic_store(&s->sync_err, 1);
		return SL_EIO;
	}
	/* Monotonic: a concurrent syncer may have covered more already. */
	uint64_t cur = atomic_load(&s->synced);
	while (cur < end && !atomic_compare_exchange_weak(&s->synced, &cur, end)) {
	}
	return SL_OK;
}

/* Linux reports a writeback error to one fdatasync of an open file and
 * then forgets it: the failed pages are clean again and their bytes are
 * not on the disk, so the next fdatasync of the same descriptor returns 0.
 * A failure is therefore sticky here, and one segment's fdatasyncs are
 * serialized, so that no fdatasync returning 0 is taken for success after,
 * or while, another one on the same file reported the error. */
int sl_seg_sync(const struct sl_io *io, sl_seg *s, uint64_t *fsyncs)
{
	uint64_t end = atomic_load_explicit(&s->end, memory_order_acquire);
	if (atomic_load(&s->synced) >= end) {
		return SL_OK;
	}
	pthread_mutex_lock(&s->sync_lock);
	int rc = SL_OK;
	if (atomic_load(&s->sync_err)) {
		rc = SL_EIO;
	} else if (atomic_load(&s->synced) < end) { /* else: covered meanwhile */
		rc = sync_locked(io, s, end, fsyncs);
	}
	pthread_mutex_unlock(&s->sync_lock);
	return rc;
}

#define POPULATE_STEP (1u << 20)
#define RA_STEP       (128u << 10)

/* Linux 5.14; older headers lack them (an older kernel answers EINVAL,
 * below).  Without them this did nothing and `populated` never moved: the
 * flusher, asked for pages ahead, asked again for ever. */
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

void sl_seg_populate(sl_seg *s, uint64_t upto, int bounded, int how)
{
	if (!s->writable) {
		return;
	}
	if (upto > s->cap) {
		upto = s->cap;
	}
	/* The mapping covers whole pages, so the page holding the end of a
	 * capacity that is not page-aligned is populated too; `populated`
	 * then reaches cap exactly and the flusher stops asking. */
	uint64_t lim = (s->cap + 4095u) & ~(uint64_t)4095u;
	uint64_t from = atomic_load(&s->populated) & ~(uint64_t)4095u;
	upto = (upto + 4095u) & ~(uint64_t)4095u;
	if (upto > lim) {
		upto = lim;
	}
	/* bounded: the page-cache pages first, by an explicit readahead(2) of
	 * at most 1 MiB at a time, then the page-table entries.  Otherwise a
	 * populate fault that misses the page cache reads around the page: the
	 * device's whole read_ahead_kb (8 MiB on the test VM) of unwritten
	 * space zero-filled in one stretch of kernel time, 10-20 ms there,
	 * during which the loopback deliveries queued on that CPU wait too
	 * (the write->visible max under a 50-client load with 2 followers was
	 * 23-68 ms; 9-29 ms bounded).  But the read-around makes large
	 * folios and readahead(2) single pages, which cost a follower catching
	 * up at 230 MB/s a fifth of its speed; so the caller bounds only a
	 * slow writer's populates. */
	uint64_t step = bounded ? POPULATE_STEP : upto - from;
	for (uint64_t off = from, n; off < upto; off += n) {
		n = upto - off < step ? upto - off : step;
		if (how == SL_POP_PAGES) {
			/* the appends are pwrites: no page-table entries.  The
			 * kernel reads no more per call than the device's
			 * readahead or request size, which may be 128 KiB. */
			for (uint64_t o = off; o < off + n; o += RA_STEP) {
				uint64_t m = off + n - o < RA_STEP ? off + n - o : RA_STEP;
				readahead(s->fd, (off64_t)o, (size_t)m);
			}
			continue;
		}
		if (bounded) {
			readahead(s->fd, (off64_t)off, (size_t)n);
		}
		/* SL_POP_MAP for a slow writer under everysec: mapped
		 * for writing, its pages were dirty zeros that the next
		 * fdatasync wrote out and cleaned before the appender reached
		 * them, so it took a write fault on each page all the same and
		 * the disk got every page twice (340 MB written per 147 MB of
		 * records; docs/performance.md, twentieth session).  Under
		 * --sync always SL_POP_DIRTY is faster, zeros and all: 72 k
		 * puts/s against 58-68 k, as each group commit's fdatasync then
		 * finds the extents it covers converted already. */
		if (madvise(s->map + off, (size_t)n,
		            how == SL_POP_MAP ? MADV_POPULATE_READ : MADV_POPULATE_WRITE) != 0) {
			break; /* EINVAL before Linux 5.14: leave the faults to the appender */
		}
	}
	if (upto > from || upto == lim) {
		atomic_store(&s->populated, upto >= lim ? s->cap : upto);
	}
}

int sl_seg_trim(const struct sl_io *io, sl_seg *s)
{
	uint64_t end = atomic_load(&s->end);
	if (file_size_of(s->fd) == end) {
		return SL_OK;
	}
	if (io->ftruncate(s->fd, (off_t)end) != 0) {
		return SL_EIO;
	}
	return SL_OK;
}

int sl_seg_activate(const struct sl_io *io, sl_seg *s, uint64_t end, size_t cap)
{
	if (cap < end) {
		cap = (size_t)end;
	}
	if (s->map != NULL) {
		munmap(s->map, s->cap);
		s->map = NULL;
	}
	if (io->ftruncate(s->fd, (off_t)end) != 0) {
		return SL_EIO;
	}
	if (io->fallocate(s->fd, 0, (off_t)cap) != 0) {
		return err_of(errno);
	}
	if (io->fdatasync(s->fd) != 0) {
		return SL_EIO;
	}
	int rc = map_seg(s, cap, 1);
	if (rc != SL_OK) {
		return rc;
	}
	s->writable = 1;
	s->sealed = 0;
	atomic_store(&s->end, end);
	atomic_store(&s->synced, end);
	return SL_OK;
}

int sl_seg_peek(const struct sl_io *io, const char *dir, uint32_t id, uint32_t *flags)
{
	char *path = sl_seg_path(dir, id, ".seg");
	if (path == NULL) {
		return 0;
	}
	int fd = io->open(path, O_RDONLY, 0);
	free(path);
	if (fd < 0) {
		return 0;
	}
	uint8_t h[SL_SEG_HDR_SIZE];
	ssize_t got = io->pread(fd, h, sizeof(h), 0);
	io->close(fd);
	if (got == (ssize_t)sizeof(h) && memcmp(h, SL_SEG_MAGIC, 8) == 0 &&
	    sl_get32(h + 12) == sl_crc32c(h + 16, 16) && sl_get32(h + 16) == id) {
		*flags = sl_get32(h + 20);
		return 1;
	}
	for (ssize_t i = 0; i < got; i++) {
		if (h[i] != 0) {
			return 0;
		}
	}
	return got >= 0 ? -1 : 0;
}
