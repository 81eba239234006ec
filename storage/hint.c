/*
 * hint.c — hint files (format.h).  A hint is an accelerator, never the
 * truth: a missing or damaged hint only costs a scan of its segment, so every
 * check here fails towards "ignore the hint".
 *
 * Invariant: a hint is visible under its final name only after its bytes are
 * fsynced (write .tmp, fsync, rename, fsync directory), so a hint that exists
 * is either complete or fails its checksum.
 */
#define _GNU_SOURCE
#include "hint.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"
#include "record.h"
#include "shiplog.h"

/* The hint is written through a buffer of this size: a 64 MiB segment of
 * small records has a hint of about 20 MB, which was built whole in memory
 * (up to 32 MiB of resident memory for each segment sealed, about 17 bytes
 * per key in the memory figure of a 1 M-key load). */
#define HINT_BUF (1u << 20)

/* The records of s below end in file order, damage skipped the way
 * recovery's scan skips it (or the hint would hide the valid records after
 * it): *off is advanced past the record returned in *r; 0 at the end. */
static int next_rec(const sl_seg *s, uint64_t end, uint32_t max_key, uint32_t max_value,
                    uint64_t *off, sl_rec *r, size_t *size)
{
	while (*off < end) {
		int d = sl_rec_decode(s->map + *off, end - *off, max_key, max_value, r, size);
		if (d == SL_REC_OK) {
			return 1;
		}
		*off = sl_rec_next_valid(s->map, (size_t)*off, (size_t)end, max_key, max_value);
	}
	return 0;
}

/* A hint file being written: the buffer p holds len bytes that go at file
 * offset foff (hw_flush). */
typedef struct hwriter {
	const struct sl_io *io;
	int fd;
	uint8_t *p;
	size_t len;
	uint64_t foff;
} hwriter;

static int hw_write_at(hwriter *w, const uint8_t *p, size_t n, uint64_t off)
{
	while (n > 0) {
		ssize_t k = w->io->pwrite(w->fd, p, n, (off_t)off);
		if (k < 0) {
			return errno == ENOSPC ? SL_ENOSPC : SL_EIO;
		}
		if (k == 0) {
			return SL_EIO;
		}
		p += k;
		n -= (size_t)k;
		off += (uint64_t)k;
	}
	return SL_OK;
}

static int hw_flush(hwriter *w)
{
	int rc = hw_write_at(w, w->p, w->len, w->foff);
	w->foff += w->len;
	w->len = 0;
	return rc;
}

/* The CRC32C of the file's first w->foff bytes, read back (from the page
 * cache) through w's buffer. */
static int hw_crc(hwriter *w, uint32_t *crc)
{
	for (uint64_t off = 0; off < w->foff;) {
		size_t n = w->foff - off < HINT_BUF ? (size_t)(w->foff - off) : HINT_BUF;
		ssize_t k = w->io->pread(w->fd, w->p, n, (off_t)off);
		if (k <= 0) {
			return SL_EIO;
		}
		*crc =
		    off == 0 ? sl_crc32c(w->p, (size_t)k) : sl_crc32c_extend(*crc, w->p, (size_t)k);
		off += (uint64_t)k;
	}
	return SL_OK;
}

/* One pass over the sealed segment writes the entries through HINT_BUF
 * bytes of memory after room for the header; then the header, which holds
 * the count; then the checksum, which covers the header, over the file read
 * back (a second decode of the segment cost more than reading 30 % of its
 * size from the page cache). */
int sl_hint_write(const struct sl_io *io, const char *dir, int dirfd, const sl_seg *s,
                  uint32_t max_key, uint32_t max_value)
{
	uint64_t end = atomic_load(&s->end);
	char *tmp = sl_seg_path(dir, s->id, ".hint.tmp");
	char *fin = sl_seg_path(dir, s->id, ".hint");
	hwriter w = {.io = io, .fd = -1, .p = malloc(HINT_BUF), .foff = SL_HINT_HDR_SIZE};
	int rc = SL_ENOMEM;
	if (tmp == NULL || fin == NULL || w.p == NULL) {
		goto out;
	}
	w.fd = io->open(tmp, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (w.fd < 0) {
		rc = errno == ENOSPC ? SL_ENOSPC : SL_EIO;
		goto out;
	}
	rc = SL_OK;
	uint32_t count = 0;
	sl_rec r;
	size_t size;
	for (uint64_t off = SL_SEG_HDR_SIZE;
	     rc == SL_OK && next_rec(s, end, max_key, max_value, &off, &r, &size); off += size) {
		if (w.len + SL_HINT_ENTRY_FIXED + r.klen > HINT_BUF &&
		    (rc = hw_flush(&w)) != SL_OK) {
			break;
		}
		uint8_t *e = w.p + w.len;
		sl_put64(e, r.seq);
		sl_put64(e + 8, r.expire_at);
		sl_put32(e + 16, (uint32_t)off);
		sl_put32(e + 20, (uint32_t)size);
		e[24] = r.type;
		sl_put16(e + 25, r.klen);
		memcpy(e + SL_HINT_ENTRY_FIXED, r.key, r.klen);
		w.len += SL_HINT_ENTRY_FIXED + r.klen;
		count++;
	}
	if (rc == SL_OK) {
		rc = hw_flush(&w);
	}
	uint8_t hdr[SL_HINT_HDR_SIZE];
	memcpy(hdr, SL_HINT_MAGIC, 8);
	sl_put32(hdr + 8, SL_FORMAT_VERSION);
	sl_put32(hdr + 12, count);
	sl_put64(hdr + 16, s->id);
	if (rc == SL_OK) {
		rc = hw_write_at(&w, hdr, sizeof(hdr), 0);
	}
	uint32_t crc = 0;
	if (rc == SL_OK) {
		rc = hw_crc(&w, &crc);
	}
	if (rc == SL_OK) {
		uint8_t c[4];
		sl_put32(c, crc);
		rc = hw_write_at(&w, c, sizeof(c), w.foff);
	}
	if (rc == SL_OK && io->fsync(w.fd) != 0) {
		rc = SL_EIO;
	}
	io->close(w.fd);
	if (rc == SL_OK && io->rename(tmp, fin) != 0) {
		rc = SL_EIO;
	}
	if (rc != SL_OK) {
		io->unlink(tmp);
	} else if (io->fsync(dirfd) != 0) {
		rc = SL_EIO;
	}
out:
	free(w.p);
	free(tmp);
	free(fin);
	return rc;
}

/* Opens segment id's hint file for reading: SL_OK (*fd set),
 * SL_ENOTFOUND (none), SL_ENOMEM, SL_EIO. */
static int hint_open(const struct sl_io *io, const char *dir, uint32_t id, int *fd)
{
	char *path = sl_seg_path(dir, id, ".hint");
	if (path == NULL) {
		return SL_ENOMEM;
	}
	*fd = io->open(path, O_RDONLY, 0);
	free(path);
	if (*fd < 0) {
		return errno == ENOENT ? SL_ENOTFOUND : SL_EIO;
	}
	return SL_OK;
}

/* Whether the SL_HINT_HDR_SIZE bytes at p are the header of segment id's
 * hint (its entry count aside). */
static int hint_hdr_ok(const uint8_t *p, uint32_t id)
{
	return memcmp(p, SL_HINT_MAGIC, 8) == 0 && sl_get32(p + 8) == SL_FORMAT_VERSION &&
	       sl_get64(p + 16) == id;
}

/* Whether the entry whose SL_HINT_ENTRY_FIXED bytes are at e is well
 * formed: a key of 1 to max_key bytes, a put or a delete (a delete's
 * record is its header and key), a record of at least its header and key,
 * past the segment's header and ending by seg_size. */
static int hint_entry_ok(const uint8_t *e, uint32_t max_key, uint64_t seg_size)
{
	uint16_t klen = sl_get16(e + 25);
	uint64_t roff = sl_get32(e + 16), rsize = sl_get32(e + 20);
	return klen != 0 && klen <= max_key && (e[24] == SL_REC_PUT || e[24] == SL_REC_DEL) &&
	       (e[24] != SL_REC_DEL || rsize == SL_REC_HDR_SIZE + (uint64_t)klen) &&
	       roff >= SL_SEG_HDR_SIZE && rsize >= SL_REC_HDR_SIZE + (uint64_t)klen &&
	       roff + rsize <= seg_size;
}

int sl_hint_load(const struct sl_io *io, const char *dir, uint32_t id, uint64_t seg_size,
                 uint32_t max_key, int (*fn)(void *arg, const sl_hint_entry *e), void *arg)
{
	int fd;
	int orc = hint_open(io, dir, id, &fd);
	if (orc != SL_OK) {
		return orc;
	}
	int rc = SL_ECORRUPT;
	uint8_t *p = NULL;
	struct stat st;
	if (fstat(fd, &st) != 0 || st.st_size < (off_t)(SL_HINT_HDR_SIZE + 4) ||
	    (uint64_t)st.st_size > seg_size * 2 + 4096) {
		goto out; /* read whole: a hint is never much larger than its segment */
	}
	size_t len = (size_t)st.st_size;
	p = malloc(len);
	if (p == NULL) {
		rc = SL_ENOMEM;
		goto out;
	}
	for (size_t got = 0; got < len;) {
		ssize_t r = io->pread(fd, p + got, len - got, (off_t)got);
		if (r <= 0) {
			rc = SL_EIO;
			goto out;
		}
		got += (size_t)r;
	}
	if (!hint_hdr_ok(p, id) || sl_get32(p + len - 4) != sl_crc32c(p, len - 4)) {
		goto out;
	}
	uint32_t count = sl_get32(p + 12);
	/* Verify every entry's bounds before applying any. */
	size_t off = SL_HINT_HDR_SIZE;
	for (uint32_t i = 0; i < count; i++) {
		if (off + SL_HINT_ENTRY_FIXED > len - 4) {
			goto out;
		}
		const uint8_t *e = p + off;
		uint16_t klen = sl_get16(e + 25);
		if (!hint_entry_ok(e, max_key, seg_size) ||
		    off + SL_HINT_ENTRY_FIXED + klen > len - 4) {
			goto out;
		}
		off += SL_HINT_ENTRY_FIXED + klen;
	}
	if (off != len - 4) {
		goto out;
	}
	off = SL_HINT_HDR_SIZE;
	rc = SL_OK;
	for (uint32_t i = 0; i < count && rc == SL_OK; i++) {
		const uint8_t *e = p + off;
		sl_hint_entry h = {
		    .seq = sl_get64(e),
		    .expire_at = sl_get64(e + 8),
		    .off = sl_get32(e + 16),
		    .size = sl_get32(e + 20),
		    .type = e[24],
		    .klen = sl_get16(e + 25),
		    .key = e + SL_HINT_ENTRY_FIXED,
		    .last = i + 1 == count,
		};
		rc = fn(arg, &h);
		off += SL_HINT_ENTRY_FIXED + h.klen;
	}
out:
	free(p);
	io->close(fd);
	return rc;
}

/* A hint file read front to back through a buffer of HINT_BUF bytes (plus
 * one entry), its checksum taken as the bytes go by: sl_hint_extent reads
 * hints of any size a segment can have without holding one whole. */
typedef struct hint_stream {
	const struct sl_io *io;
	int fd;
	uint8_t *b;
	size_t pos, len; /* unread bytes are b[pos, len) */
	uint64_t foff;   /* the file offset of b[len] */
	uint64_t limit;  /* the checksummed part ends here (the file's size - 4) */
	uint32_t crc;    /* over the bytes before b[pos] */
} hint_stream;

#define HS_CAP (HINT_BUF + SL_HINT_ENTRY_FIXED + SL_MAX_KEY)

/* Makes n (<= HS_CAP) bytes readable at h->b + h->pos: SL_OK, SL_ECORRUPT
 * (the checksummed part ends first) or SL_EIO. */
static int hs_need(hint_stream *h, size_t n)
{
	if (h->len - h->pos >= n) {
		return SL_OK;
	}
	h->crc = sl_crc32c_extend(h->crc, h->b, h->pos);
	memmove(h->b, h->b + h->pos, h->len - h->pos);
	h->len -= h->pos;
	h->pos = 0;
	while (h->len < n) {
		uint64_t left = h->limit - h->foff;
		size_t want = HS_CAP - h->len < left ? HS_CAP - h->len : (size_t)left;
		if (want == 0) {
			return SL_ECORRUPT;
		}
		ssize_t r = h->io->pread(h->fd, h->b + h->len, want, (off_t)h->foff);
		if (r <= 0) {
			return SL_EIO;
		}
		h->len += (size_t)r;
		h->foff += (uint64_t)r;
	}
	return SL_OK;
}

int sl_hint_extent(const struct sl_io *io, const char *dir, uint32_t id, uint64_t *end)
{
	*end = 0;
	int fd;
	int orc = hint_open(io, dir, id, &fd);
	if (orc != SL_OK) {
		return orc;
	}
	hint_stream h = {.io = io, .fd = fd};
	int rc = SL_ECORRUPT;
	struct stat st;
	/* Its segment may have been written under any segment_bytes, and a
	 * hint is never larger than its segment was (an entry is a record's
	 * header and key): bounded by the largest segment there can be, and
	 * streamed, never read whole (a stray file of gigabytes named like a
	 * hint was read into memory). */
	if (fstat(fd, &st) != 0 || st.st_size < (off_t)(SL_HINT_HDR_SIZE + 4) ||
	    (uint64_t)st.st_size > (uint64_t)UINT32_MAX + 4096) {
		goto out;
	}
	h.limit = (uint64_t)st.st_size - 4;
	h.b = malloc(HS_CAP);
	if (h.b == NULL) {
		rc = SL_ENOMEM;
		goto out;
	}
	if ((rc = hs_need(&h, SL_HINT_HDR_SIZE)) != SL_OK) {
		goto out;
	}
	rc = SL_ECORRUPT;
	if (!hint_hdr_ok(h.b, id)) {
		goto out;
	}
	uint32_t count = sl_get32(h.b + 12);
	h.pos = SL_HINT_HDR_SIZE;
	uint64_t far = 0;
	for (uint32_t i = 0; i < count; i++) {
		if ((rc = hs_need(&h, SL_HINT_ENTRY_FIXED)) != SL_OK) {
			goto out;
		}
		const uint8_t *e = h.b + h.pos;
		uint16_t klen = sl_get16(e + 25);
		uint64_t rend = (uint64_t)sl_get32(e + 16) + sl_get32(e + 20);
		rc = SL_ECORRUPT;
		if (!hint_entry_ok(e, SL_MAX_KEY, UINT64_MAX)) { /* records anywhere */
			goto out;
		}
		if ((rc = hs_need(&h, SL_HINT_ENTRY_FIXED + klen)) != SL_OK) {
			goto out;
		}
		if (rend > far) {
			far = rend;
		}
		h.pos += SL_HINT_ENTRY_FIXED + klen;
	}
	rc = SL_ECORRUPT;
	if (h.foff - (h.len - h.pos) != h.limit) {
		goto out; /* bytes after the last entry */
	}
	uint8_t c[4];
	ssize_t r = io->pread(fd, c, sizeof(c), (off_t)h.limit);
	if (r != (ssize_t)sizeof(c)) {
		rc = r < 0 ? SL_EIO : SL_ECORRUPT;
		goto out;
	}
	if (sl_get32(c) == sl_crc32c_extend(h.crc, h.b, h.pos)) {
		*end = far;
		rc = SL_OK;
	}
out:
	free(h.b);
	io->close(fd);
	return rc;
}
