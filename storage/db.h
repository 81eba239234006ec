/*
 * db.h — the handle's insides, shared by db.c (reads, writes, sync) and
 * open.c (open, recovery, close).  Not part of the public API.
 */
#ifndef SL_DB_H
#define SL_DB_H

#include <pthread.h>
#include <stdatomic.h>

#include "io.h"
#include "keydir.h"
#include "segment.h"
#include "shiplog.h"

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
	_Atomic(_Atomic(sl_seg *) *) segtab[4096];
	sl_seg *active_pub; /* the active segment, as seen under seg_mu */

	/* the appender */
	pthread_mutex_t append_mu;
	sl_seg *active; /* under append_mu */
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
	pthread_t flusher;
	int flusher_started;

	/* counters */
	uint64_t recovery_ms, hints_loaded, segments_scanned;
	uint64_t n_corrupt, n_fsyncs, n_puts, n_gets, n_deletes;
};

/* Segment `id`, or NULL.  Lock-free; see db.c invariant 5. */
sl_seg *sl_db_seg(sl_db *db, uint32_t id);

/* Adds s to the table and the id-ordered list.  Caller holds seg_mu. */
int sl_db_seg_publish(sl_db *db, sl_seg *s);
/* Points key at loc if loc's seq is the highest seen; moves live bytes. */
int sl_db_index(sl_db *db, uint64_t h, const void *key, size_t klen, const sl_loc *loc);
/* Sync, trim and write the hint of a segment that is no longer active. */
int sl_db_seal(sl_db *db, sl_seg *s);
/* Makes every record up to last_seq durable and advances synced_seq. */
int sl_db_sync_all(sl_db *db);
void *sl_db_flusher_main(void *arg);

void sl_db_log(sl_db *db, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
