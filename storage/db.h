/*
 * db.h — the handle's insides, shared by db.c (reads, writes, sync) and
 * open.c (open, recovery, close).  Not part of the public API.
 */
#ifndef SL_DB_H
#define SL_DB_H

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "io.h"
#include "keydir.h"
#include "monotime.h"
#include "segment.h"
#include "shiplog.h"

#define POP_AHEAD (16u << 20) /* populate the active segment this far ahead */

/* Index inserts gathered and made together, grouped by shard
 * (sl_keydir_put_many): a follower's batch of applied records, a hint file
 * or a segment scan at open.  The keys must stay valid until flushed. */
#define SL_IDX_BATCH_MAX 65536u /* flushed when this many are gathered */
typedef struct sl_idx_batch {
	sl_kd_item *items;
	size_t n, cap;
} sl_idx_batch;

/* When a repeated log line was last written and how many were held back
 * since (sl_db_log_due). */
typedef struct sl_db_limit {
	uint64_t ns, more;
} sl_db_limit;

struct sl_db {
	char *dir;
	int dirfd, lockfd;
	sl_options opt;
	const struct sl_io *io;
	sl_keydir *kd;

	/* segments: list ordered by id under seg_mu; segtab read lock-free */
	pthread_mutex_t seg_mu;
	sl_seg **segs;
	size_t nsegs, capsegs;
	/* slots of segs held for a compaction's outputs between its
	 * reservation and its switch: other publishes leave them free */
	size_t seg_held;
	/* SL_SEGTAB_TOP chunks of 4096 ids: every 32-bit id (an anonymous
	 * mapping, so the untouched part costs no memory) */
	_Atomic(_Atomic(sl_seg *) *) *segtab;
	sl_seg *active_pub;       /* the active segment, as seen under seg_mu */
	_Atomic uint32_t next_id; /* next segment id (rotation and compaction) */

	/* the appender */
	pthread_mutex_t append_mu;
	sl_seg *active;      /* under append_mu */
	sl_db_limit rot_log; /* under append_mu: failed rotations (db.c) */
	int rot_early_off;   /* under append_mu: sl_rotate_early failed; until the next rotation */
	sl_db_limit fit_log; /* under append_mu: smaller segments on a full disk */
	sl_db_limit abandon_log; /* under compact_mu: abandoned compactions (compact.c) */
	/* under append_mu: apply_raw_many's index batch, kept from one batch
	 * to the next (db.c) */
	sl_idx_batch apply_idx;
	_Atomic uint64_t room; /* bytes left in active, as of the last append */
	_Atomic uint64_t last_seq;
	_Atomic int failed;

	/* sync policy and the flusher thread */
	pthread_mutex_t sync_mu;
	pthread_cond_t flush_cv; /* wakes the flusher */
	_Atomic uint64_t synced_seq;
	_Atomic uint32_t sync_gen; /* futex word: bumped after every sync */
	_Atomic int syncing;       /* a group-commit leader is syncing */
	int stop, seal_wanted;
	_Atomic int arriving;   /* sync=always writers not yet in the log */
	_Atomic int pop_wanted; /* the appender nears the populated mark */
	_Atomic int pop_off;    /* appends come as pwrites (write_run): populate nothing */
	pthread_t flusher;
	int flusher_started;

	/* compaction (compact.c) */
	pthread_mutex_t compact_mu; /* one run at a time */
	pthread_mutex_t seal_mu;    /* one sealer at a time */
	pthread_mutex_t cthread_mu;
	pthread_cond_t cthread_cv;
	pthread_t compactor;
	int compactor_started;
	_Atomic int compact_stop;
	_Atomic uint64_t protect_seq;
	_Atomic uint64_t defer_until_ns; /* sl_compact_defer: no background run before */
	uint64_t n_compactions, c_reclaimed, c_written, c_read, c_last_ms, c_errors;
	_Atomic int c_last_error;

	/* sl_log_read's resume points, one per reader position (replog.c) */
	struct {
		uint32_t seg;
		uint64_t off, seq;
	} lr_cache[8];
	unsigned lr_next;

	/* counters */
	uint64_t recovery_ms, hints_loaded, segments_scanned;
	uint64_t n_corrupt, n_fsyncs, n_puts, n_gets, n_deletes;
};

/* Segment `id`, or NULL.  Lock-free; see db.c invariant 5. */
sl_seg *sl_db_seg(sl_db *db, uint32_t id);

/* Adds s to the table and the id-ordered list, leaving seg_held slots
 * free (a compaction's outputs publish with sl_db_seg_publish_held).
 * Caller holds seg_mu. */
int sl_db_seg_publish(sl_db *db, sl_seg *s);
/* sl_db_seg_publish into a slot sl_db_seg_reserve held (seg_held); caller
 * holds seg_mu. */
int sl_db_seg_publish_held(sl_db *db, sl_seg *s);
/* The directory path holds ("." for a bare name, "/" for "/x"); malloc'd,
 * NULL without memory. */
char *sl_db_parent_dir(const char *path);
/* s[0..n) are all decimal digits (segment and hint file names). */
static inline int sl_db_is_digits(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9') {
			return 0;
		}
	}
	return 1;
}
/* Finishes the removal of a compaction's inputs that a crash interrupted
 * (compact.c, step 7: DROPPING lists them); SL_OK when there was none.
 * Caller holds LOCK, before listing the segments. */
int sl_compact_drop_finish(sl_db *db);
/* A compaction's removal was interrupted (a read-only open must not load
 * the half-removed inputs). */
int sl_compact_drop_pending(int dirfd);
/* Finishes a sl_move_in into the directory dirfd that a crash
 * interrupted (movein.c); SL_OK when there was none.  Caller holds LOCK. */
int sl_move_in_finish(int dirfd);
/* A move-in was started in dirfd and not finished (a read-only open
 * must not read the mix). */
int sl_move_in_pending(int dirfd);
/* sl_seg_create with room for cap bytes or, when the disk has not that
 * much (SL_ENOSPC), for the most of cap/2, cap/4, ... down to min: a nearly
 * full disk still takes the writes that fit.  Logs a smaller segment. */
int sl_db_seg_create_fit(sl_db *db, uint32_t id, uint64_t first_seq, size_t cap, size_t min,
                         sl_seg **out);
/* The next smaller capacity to try after SL_ENOSPC at cap (>= min), or 0
 * when min was tried. */
static inline size_t sl_db_fit_next(size_t cap, size_t min)
{
	return cap <= min ? 0 : cap / 2 > min ? cap / 2 : min;
}
/* Points key at loc if loc's seq is the highest seen; moves live bytes. */
int sl_db_index(sl_db *db, uint64_t h, const void *key, size_t klen, const sl_loc *loc);
/* Adds (delta +1) or removes (-1) loc's record from its segment's live or
 * tombstone byte count. */
void sl_db_account(sl_db *db, const sl_loc *loc, int delta);
/* Removes s from the table and the list.  Caller holds seg_mu. */
void sl_db_seg_unpublish(sl_db *db, sl_seg *s);
/* Sync, trim and write the hint of a segment that is no longer active;
 * with defer_hint the hint is left due (hint_due) for sl_db_seal_pending. */
int sl_db_seal(sl_db *db, sl_seg *s, int defer_hint);
/* Makes every record up to last_seq durable and advances synced_seq. */
int sl_db_sync_all(sl_db *db);
void *sl_db_flusher_main(void *arg);
/* Seals every segment that is no longer active (normally the flusher's job).
 * flusher: while sl_compact_defer's window is open, hints are left due;
 * otherwise one due hint is written, and the flusher asked to come back
 * (seal_wanted) when more are due.  Not the flusher: every due hint. */
void sl_db_seal_pending(sl_db *db, int flusher);
/* Starts / stops the background compaction thread (compact.c). */
int sl_compactor_start(sl_db *db);
void sl_compactor_stop(sl_db *db);

/* Relaxed counter add. */
void sl_db_count(uint64_t *c, uint64_t n);
/* Makes the handle refuse writes from now on (first error wins), logged. */
void sl_db_fail(sl_db *db, int rc, const char *what);

/* Segment ids: 1 .. SL_SEG_ID_MAX - 1, never reused over a store's life
 * (file names have 10 digits).  sl_db_take_id hands out the next, or
 * SL_ENOSPC once they are used up. */
#define SL_SEGTAB_TOP (1u << 20)
#define SL_SEG_ID_MAX 0xFFFFFFFFu
int sl_db_take_id(sl_db *db, uint32_t *id);
/* Under seg_mu: makes sure publishing a segment with this id, and `extra`
 * more segments in all, cannot fail for want of memory (compaction
 * reserves its outputs' room before it commits to a run). */
int sl_db_seg_reserve(sl_db *db, uint32_t id, size_t extra);
/* Group commit: returns once seq is durable (sync.c). */
int sl_db_sync_wait(sl_db *db, uint64_t seq);

void sl_db_log(sl_db *db, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Adds one insert as sl_db_index would make it (flushing first when the
 * batch is full; indexing at once when memory for it is short). */
int sl_db_index_add(sl_db *db, sl_idx_batch *b, uint64_t h, const void *key, size_t klen,
                    const sl_loc *loc);

/* Makes the inserts gathered in b and accounts live/dead bytes as
 * sl_db_index does; b is then empty.  The first error (SL_ENOMEM) is
 * returned; the caller decides whether the store fails. */
int sl_db_index_flush(sl_db *db, sl_idx_batch *b);

void sl_idx_batch_free(sl_idx_batch *b);

/* Records what is left in the active segment s for sl_append_room
 * (caller holds append_mu). */
/* CLOCK_MONOTONIC in ns: durations inside the engine (recovery time,
 * group-commit gathering, the flusher's populate pacing). */
static inline uint64_t sl_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* 1 when a rate-limited log line is due (the first, then one per 10 s;
 * *held: how many were held back since the last); 0 to hold it back. */
int sl_db_log_due(sl_db_limit *l, uint64_t *held);

/* Where the active segment s ends for appends past its first record: its
 * mapped capacity, or segment_bytes when it is larger (a full resync's 64
 * MiB segments swapped in, a reopen with a smaller size): append_locked
 * rotates there, so that it is sealed, hinted and compacted in time.  Call
 * with append_mu held (db->opt changes under it). */
static inline uint64_t sl_db_seg_limit(const sl_db *db, const sl_seg *s)
{
	return s->cap > db->opt.segment_bytes ? db->opt.segment_bytes : s->cap;
}

/* What the active segment s takes before a rotation (sl_append_room). */
static inline void sl_db_set_room(sl_db *db, const sl_seg *s)
{
	uint64_t end = atomic_load_explicit(&s->end, memory_order_relaxed);
	uint64_t lim = sl_db_seg_limit(db, s);
	atomic_store_explicit(&db->room, lim > end ? lim - end : 0, memory_order_relaxed);
}

#endif
