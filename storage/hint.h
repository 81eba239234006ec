/*
 * hint.h — hint files: for every record of a sealed segment, its key, seq,
 * type, expire_at, offset and size (format.h), so startup can rebuild the
 * keydir without reading values.
 */
#ifndef SL_HINT_H
#define SL_HINT_H

#include <stdint.h>

#include "io.h"
#include "segment.h"

typedef struct sl_hint_entry {
	uint64_t seq;
	uint64_t expire_at;
	uint32_t off;
	uint32_t size;
	uint8_t type;
	uint16_t klen;
	const uint8_t *key; /* borrowed from the hint buffer */
	int last;           /* the file's last entry: keys borrowed until now end */
} sl_hint_entry;

/* Writes dir/NNNNNNNNNN.hint for segment s from its records [header, end):
 * to NNNNNNNNNN.hint.tmp, fsync, rename, fsync(dirfd).  Records that fail
 * their checksum are left out.  Errors: SL_EIO, SL_ENOSPC, SL_ENOMEM; the
 * temporary file is removed on failure. */
int sl_hint_write(const struct sl_io *io, const char *dir, int dirfd, const sl_seg *s,
                  uint32_t max_key, uint32_t max_value);

/* The end of the furthest record segment id's hint file lists, in *end
 * (sl_hint_load with entries allowed anywhere): a segment shorter than
 * that lost records.  The segment may have been written under any
 * segment_bytes, so the file may be as large as the largest segment's
 * hint; it is streamed through a buffer of about 1 MiB, never read
 * whole.  SL_ENOTFOUND: no hint file; SL_ECORRUPT: damaged (or larger
 * than any segment's hint); SL_EIO, SL_ENOMEM. */
int sl_hint_extent(const struct sl_io *io, const char *dir, uint32_t id, uint64_t *end);

/* Reads and verifies segment id's hint file, then calls fn for each entry
 * in file order.  SL_ENOTFOUND when there is no hint file, SL_ECORRUPT when
 * it is damaged (bad magic, checksum, bounds or an entry past seg_size); fn
 * is only called once the whole file has verified.  A non-zero fn result
 * stops and is returned. */
int sl_hint_load(const struct sl_io *io, const char *dir, uint32_t id, uint64_t seg_size,
                 uint32_t max_key, int (*fn)(void *arg, const sl_hint_entry *e), void *arg);

#endif
