/*
 * segment.h — one log segment file NNNNNNNNNN.seg (format.h) and its mapping.
 *
 * The active segment is preallocated to its capacity and mapped shared and
 * writable: an append is a memcpy into the page cache, so a record is in the
 * kernel (safe from a process crash) the moment the copy ends, without a
 * system call per write.  Sealed segments stay mapped for reads.
 */
#ifndef SL_SEGMENT_H
#define SL_SEGMENT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"

typedef struct sl_seg {
	uint32_t id;
	int fd;
	uint8_t *map; /* [0, cap) mapped; bytes [0, end) hold the header and records */
	size_t cap;   /* mapped length (file length while active) */
	uint64_t first_seq;
	uint64_t last_seq;          /* highest seq appended or found here */
	uint32_t flags;             /* SL_SEG_COMPACTED (format.h) */
	_Atomic int compacting;     /* an input of the running compaction */
	_Atomic int pins;           /* snapshots holding it: not compacted */
	_Atomic uint64_t ttl_bytes; /* bytes of the records with one (sl_seg_note_ttl) */
	_Atomic uint64_t ttl_last;  /* the latest of their expiry times (ms) */
	_Atomic uint64_t ttl_first; /* the earliest (0: none yet) */
	_Atomic uint64_t end;       /* bytes written: header + whole records */
	_Atomic uint64_t synced;    /* bytes known durable */
	/* An fdatasync of this file failed: sticky (sl_seg_sync).  sync_lock
	 * serializes the segment's fdatasyncs. */
	_Atomic int sync_err;
	pthread_mutex_t sync_lock;
	_Atomic uint64_t live; /* bytes of put records the keydir points at */
	_Atomic uint64_t tomb; /* bytes of tombstones the keydir points at */
	_Atomic int corrupt;   /* a bad record was found: never compacted */
	_Atomic int sealed;    /* trimmed, synced, hint written (or due) */
	_Atomic int hint_due;  /* sealed while hints were deferred: not compacted
	                          until the flusher writes its hint */
	/* A hint that failed (a full disk, an I/O error) is tried again by the
	 * flusher at hint_retry_ns (sl_mono_ns; 0: none), after a wait that
	 * doubles from 1 s to 60 s.  Under the store's seal_mu. */
	uint64_t hint_retry_ns;
	uint32_t hint_wait_ms;
	_Atomic uint64_t populated; /* active: pages before this are mapped in */
	int writable;
	/* Log reads' checkpoints (replog.c, under the store's seg_mu): the
	 * offset and seq of a record about every 64 KiB, in file order, noted
	 * as sl_log_read walks the segment, so a read from a seq no earlier
	 * read stopped at (a follower back after a restart) starts at most
	 * 64 KiB before it instead of at the segment's first record. */
	struct sl_log_ckpt {
		uint64_t off, seq;
	} * ckpt;
	size_t nckpt, ckpt_cap;
} sl_seg;

/* Name of segment id's file with the given suffix (".seg", ".hint") in dir;
 * returns a malloc'd string (caller frees) or NULL. */
char *sl_seg_path(const char *dir, uint32_t id, const char *suffix);

/* Creates segment `id` holding seqs >= first_seq: preallocates cap bytes,
 * writes and syncs the header, maps it writable.  Errors: SL_ENOSPC, SL_EIO,
 * SL_ENOMEM; a partly created file is removed. */
int sl_seg_create(const struct sl_io *io, const char *dir, int dirfd, uint32_t id,
                  uint64_t first_seq, size_t cap, sl_seg **out);

/* Opens existing segment `id` (fd read-write when writable) and maps its
 * current length read-only; `end` is the file length until the caller's scan
 * says otherwise.  *hdr_ok is set to 0 when the file header is missing or
 * damaged (the caller decides).  Does not scan. */
int sl_seg_open(const struct sl_io *io, const char *dir, uint32_t id, int writable, sl_seg **out,
                int *hdr_ok);

/* As sl_seg_create, under the name NNNNNNNNNN.seg<suffix> (e.g. ".tmp" for
 * compaction output, renamed into place later), with header flags.  With
 * suffix ".seg" exactly sl_seg_create; the header is written again (with the
 * final first_seq) by sl_seg_write_header before the rename. */
int sl_seg_create_as(const struct sl_io *io, const char *dir, int dirfd, uint32_t id,
                     uint64_t first_seq, size_t cap, const char *suffix, uint32_t flags,
                     sl_seg **out);

/* Reads segment id's header only: 1 and *flags when valid; -1 when it is
 * blank (zeros, or a file shorter than a header: a crash while the segment
 * was created, invariant 1); 0 when damaged or unreadable. */
int sl_seg_peek(const struct sl_io *io, const char *dir, uint32_t id, uint32_t *flags);

/* Writes a fresh header into an opened, writable segment. */
int sl_seg_write_header(const struct sl_io *io, sl_seg *s);

/* File size at open (before growing). */
uint64_t sl_seg_file_size(const sl_seg *s);

/* Unmaps and closes.  NULL is fine. */
void sl_seg_close(const struct sl_io *io, sl_seg *s);

/* Makes bytes [synced, end) durable with fdatasync.  SL_EIO on failure. */
int sl_seg_sync(const struct sl_io *io, sl_seg *s, uint64_t *fsyncs);

/* How sl_seg_populate brings pages [populated, upto) in ahead of the
 * appender:
 *  - SL_POP_PAGES: into the page cache alone (readahead(2)), nothing
 *    mapped: the appends are pwrites, which need no page-table entry;
 *  - SL_POP_MAP: mapped read-only as well (MADV_POPULATE_READ).  The
 *    appender's first write to a page takes a write-protect fault, and
 *    the pages stay clean, so no sync writes them out as zeros;
 *  - SL_POP_DIRTY: mapped writable (MADV_POPULATE_WRITE): no fault at
 *    all, but the pages are dirty zeros, which the next fdatasync writes
 *    out, converting the segment's preallocated (unwritten) space to
 *    written as it goes.  For a writer that reaches its pages before a
 *    sync does: a fast one, or any under --sync no; and under --sync
 *    always, whose many fdatasyncs are each cheaper once no extent is
 *    left to convert (segment.c).  sl_seg_pop_how chooses between them. */
enum { SL_POP_PAGES, SL_POP_MAP, SL_POP_DIRTY };

/* The mapping for pages brought in ahead of a mapped appender: SL_POP_MAP
 * for a slow writer under --sync everysec, SL_POP_DIRTY otherwise.  The
 * flusher knows the writer's speed; rotation maps a new segment's first
 * MiB as for a slow one (at most 256 write faults for a fast one). */
static inline int sl_seg_pop_how(int everysec, int slow)
{
	return everysec && slow ? SL_POP_MAP : SL_POP_DIRTY;
}

/* Brings pages [populated, upto) of a writable mapping in ahead of the
 * appender, `how` (SL_POP_*).  bounded: reads the pages in with
 * readahead(2), 1 MiB at a time, instead of letting a fault zero-fill a
 * whole read-around window in one go (see segment.c).  Best effort: older
 * kernels just leave the faults to the appender. */
void sl_seg_populate(sl_seg *s, uint64_t upto, int bounded, int how);

/* Cuts the file to its written length (drops the preallocated tail). */
int sl_seg_trim(const struct sl_io *io, sl_seg *s);

/* Turns an opened segment into the active one: cuts the file at `end`
 * (dropping a torn tail), preallocates cap bytes again and maps it writable. */
int sl_seg_activate(const struct sl_io *io, sl_seg *s, uint64_t end, size_t cap);
/* A record of `size` bytes expiring at expire_at (0: never) is in s: once
 * every such record has expired (now >= ttl_last) at least ttl_bytes of s
 * are reclaimable, whatever the keydir still points at (compact.c, pick). */
static inline void sl_seg_note_ttl(sl_seg *s, uint64_t expire_at, uint64_t size)
{
	if (expire_at == 0) {
		return;
	}
	atomic_fetch_add_explicit(&s->ttl_bytes, size, memory_order_relaxed);
	uint64_t last = atomic_load_explicit(&s->ttl_last, memory_order_relaxed);
	while (expire_at > last &&
	       !atomic_compare_exchange_weak_explicit(&s->ttl_last, &last, expire_at,
	                                              memory_order_relaxed, memory_order_relaxed)) {
	}
	uint64_t first = atomic_load_explicit(&s->ttl_first, memory_order_relaxed);
	while ((first == 0 || expire_at < first) &&
	       !atomic_compare_exchange_weak_explicit(&s->ttl_first, &first, expire_at,
	                                              memory_order_relaxed, memory_order_relaxed)) {
	}
}

#endif
