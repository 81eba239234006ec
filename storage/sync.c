/*
 * sync.c — durability: the sync policies, group commit, the flusher thread
 * and sealing of segments that are no longer active.
 *
 * Why apart from db.c: this is where the engine waits for the disk; the
 * append path only hands it a seq to wait for.
 *
 * Invariants (db.c numbers them with the rest):
 *  4. synced_seq only grows, and every record with seq <= synced_seq is on
 *     disk: it is advanced to a target read *before* the segments are synced.
 *  6. A failed fdatasync is sticky (sl_db_fail).
 *  7. One sealer at a time (seal_mu): a segment being sealed is not sealed,
 *     so compaction cannot free it under the sealer.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "format.h"
#include "hint.h"

#define GATHER_MAX_US 200 /* longest a group-commit leader waits for arrivals */

/* ---- syncing: group commit, flusher, sealing ---------------------------- */

/* fdatasyncs every segment holding unsynced bytes: the active one and
 * those rotated out but not yet sealed, eight at a time, newest first,
 * until a pass finds fewer (a stalled flusher can leave dozens: a sync
 * that took only the newest eight published a synced_seq that older ones
 * did not back; test_sync_covers_every_segment).  Each is pinned while it
 * is synced outside seg_mu: a segment rotated out but not yet sealed could
 * otherwise be sealed by another thread (sl_compact's seal), compacted and
 * freed while this one still waits in an earlier fdatasync (compaction
 * never takes a pinned segment, and takes only sealed ones, which this
 * loop never pins). */
#define FLUSH_BATCH 8
static int flush_all(sl_db *db)
{
	int rc = SL_OK;
	size_t n;
	do {
		sl_seg *todo[FLUSH_BATCH];
		n = 0;
		pthread_mutex_lock(&db->seg_mu);
		for (size_t i = db->nsegs; i > 0 && n < FLUSH_BATCH; i--) {
			sl_seg *s = db->segs[i - 1];
			if (s->flags & SL_SEG_COMPACTED) {
				continue; /* synced before it was published */
			}
			if (atomic_load(&s->synced) < atomic_load(&s->end)) {
				atomic_fetch_add(&s->pins, 1);
				todo[n++] = s;
			} else if (s->sealed) {
				break; /* sealed ⇒ synced, and every older log segment too */
			}
		}
		pthread_mutex_unlock(&db->seg_mu);
		for (size_t i = 0; i < n; i++) {
			if (rc == SL_OK) {
				rc = sl_seg_sync(db->io, todo[i], &db->n_fsyncs);
			}
			atomic_fetch_sub(&todo[i]->pins, 1);
		}
	} while (rc == SL_OK && n == FLUSH_BATCH);
	return rc;
}

/* Group-commit waiters sleep on a futex word, sync_gen, bumped after every
 * sync: one wake reaches all of them and none has to re-take a mutex to
 * learn its fate (with 32 writers on 2 cores a condition variable's mutex
 * handoff chain cost more than the fdatasync). */
static void gen_wait(sl_db *db, uint32_t seen)
{
	struct timespec ts = {0, 20 * 1000 * 1000}; /* bounded: re-check failure */
	syscall(SYS_futex, &db->sync_gen, FUTEX_WAIT_PRIVATE, seen, &ts, NULL, 0);
}

static void gen_bump(sl_db *db)
{
	atomic_fetch_add(&db->sync_gen, 1);
	syscall(SYS_futex, &db->sync_gen, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

/* Makes every record up to the current last seq durable (invariant 4). */
int sl_db_sync_all(sl_db *db)
{
	uint64_t target = atomic_load(&db->last_seq);
	int rc = flush_all(db);
	if (rc != SL_OK) {
		sl_db_fail(db, rc, "fdatasync");
	} else {
		uint64_t cur = atomic_load(&db->synced_seq);
		while (cur < target &&
		       !atomic_compare_exchange_weak(&db->synced_seq, &cur, target)) {
		}
	}
	gen_bump(db);
	return rc;
}

/* Before a group-commit leader syncs, it lets writers that are already on
 * their way into the log (counted in `arriving`) append, so one fdatasync
 * covers them too; bounded so a lone writer never waits. */
static void gather(sl_db *db)
{
	uint64_t t0 = sl_mono_ns();
	while (atomic_load(&db->arriving) > 0) {
		sched_yield();
		if (sl_mono_ns() - t0 >= GATHER_MAX_US * 1000u) {
			break;
		}
	}
}

/* Group commit: the first waiter to find no sync running syncs for
 * everyone whose record is already in the log. */
int sl_db_sync_wait(sl_db *db, uint64_t seq)
{
	for (;;) {
		uint32_t gen = atomic_load(&db->sync_gen);
		if (atomic_load(&db->synced_seq) >= seq) {
			return SL_OK;
		}
		if (atomic_load(&db->failed)) {
			return SL_EFAILED;
		}
		int idle = 0;
		if (atomic_compare_exchange_strong(&db->syncing, &idle, 1)) {
			gather(db);
			int r = sl_db_sync_all(db);
			atomic_store(&db->syncing, 0);
			gen_bump(db);
			if (r != SL_OK) {
				return SL_EFAILED;
			}
		} else {
			gen_wait(db, gen);
		}
	}
}

int sl_sync_wait(sl_db *db, uint64_t seq)
{
	if (db == NULL) {
		return SL_EINVAL;
	}
	if (seq > atomic_load(&db->last_seq)) {
		seq = atomic_load(&db->last_seq);
	}
	return sl_db_sync_wait(db, seq);
}

int sl_sync_now(sl_db *db)
{
	if (atomic_load(&db->failed)) {
		return SL_EFAILED;
	}
	return sl_db_sync_wait(db, atomic_load(&db->last_seq));
}

/* A failed hint's waits before it is tried again (hint_write). */
#define HINT_RETRY_MIN_MS 1000u
#define HINT_RETRY_MAX_MS 60000u

/* A segment found corrupt gets no hint: a hint lists only the records
 * that were good, so the next open would load it, never see the damage,
 * and compaction would rewrite the segment the scan had kept as evidence.
 * Without one, every open scans it and marks it corrupt again. */
static void hint_write(sl_db *db, sl_seg *s)
{
	if (atomic_load(&s->corrupt)) {
		sl_db_log(db, "warn", "segment %u is corrupt: no hint written (kept as found)",
		          s->id);
		return;
	}
	int rc = sl_hint_write(db->io, db->dir, db->dirfd, s, SL_MAX_KEY, SL_MAX_VALUE);
	if (rc != SL_OK) {
		/* Tried again later (sl_db_seal_pending): a disk that was full
		 * may have room after a compaction, and an open without the
		 * hint scans the whole segment. */
		s->hint_wait_ms = s->hint_wait_ms == 0                       ? HINT_RETRY_MIN_MS
		                  : s->hint_wait_ms >= HINT_RETRY_MAX_MS / 2 ? HINT_RETRY_MAX_MS
		                                                             : s->hint_wait_ms * 2;
		s->hint_retry_ns = sl_mono_ns() + (uint64_t)s->hint_wait_ms * 1000000u;
		sl_db_log(db, "warn", "hint for segment %u not written: %s; trying again in %u s",
		          s->id, sl_strerror(rc), s->hint_wait_ms / 1000u);
	} else {
		s->hint_retry_ns = 0;
		s->hint_wait_ms = 0;
	}
}

/* Seals a segment that is no longer active: sync, trim, hint.  A failed
 * hint only costs a scan at the next open, so it is logged, not fatal;
 * so does a deferred one (defer_hint: hint_due, written by
 * sl_db_seal_pending later; compaction skips the segment until then, so
 * it is not freed under that write). */
int sl_db_seal(sl_db *db, sl_seg *s, int defer_hint)
{
	int rc = sl_seg_sync(db->io, s, &db->n_fsyncs);
	if (rc != SL_OK) {
		sl_db_fail(db, rc, "fdatasync of a sealed segment");
		return rc;
	}
	if (sl_seg_trim(db->io, s) != SL_OK || db->io->fsync(s->fd) != 0) {
		sl_db_log(db, "warn", "could not trim segment %u", s->id);
	}
	sl_db_count(&db->n_fsyncs, 1);
	if (defer_hint) {
		atomic_store(&s->hint_due, 1);
	} else {
		hint_write(db, s);
	}
	atomic_store(&s->sealed, 1);
	return SL_OK;
}

/* Seals every non-active, unsealed segment, then writes due hints (the
 * flusher: one per call) unless the flusher is inside sl_compact_defer's
 * window.  A follower catching up spent about a sixth of its CPU on hints
 * (decoding every record again and writing about a quarter of the log's
 * bytes); deferred, the same catch-up ran 18 % faster (median of 3
 * alternating runs). */
void sl_db_seal_pending(sl_db *db, int flusher)
{
	int defer = flusher && sl_mono_ns() < atomic_load(&db->defer_until_ns);
	/* One sealer at a time (the flusher, sl_compact): two sealing the same
	 * segment would let the second still be writing its hint after the
	 * first marked it sealed and a compaction freed it. */
	pthread_mutex_lock(&db->seal_mu);
	for (;;) {
		sl_seg *s = NULL;
		pthread_mutex_lock(&db->seg_mu);
		for (size_t i = 0; i < db->nsegs; i++) {
			sl_seg *c = db->segs[i];
			if (!atomic_load(&c->sealed) && c != db->active_pub) {
				s = c;
				break;
			}
		}
		pthread_mutex_unlock(&db->seg_mu);
		if (s == NULL || sl_db_seal(db, s, defer) != SL_OK) {
			break;
		}
	}
	if (!defer) {
		/* Hints that failed, due again; not a segment a compaction has
		 * taken (pick skips hint_due ones, but this may come after the
		 * pick): the run frees it, under the hint written from its
		 * mapping.  compacting is set under seg_mu, as hint_due is here. */
		uint64_t now = sl_mono_ns();
		pthread_mutex_lock(&db->seg_mu);
		for (size_t i = 0; i < db->nsegs; i++) {
			sl_seg *c = db->segs[i];
			if (c->hint_retry_ns != 0 && now >= c->hint_retry_ns &&
			    !atomic_load(&c->compacting)) {
				c->hint_retry_ns = 0;
				atomic_store(&c->hint_due, 1);
			}
		}
		pthread_mutex_unlock(&db->seg_mu);
	}
	int more = 0;
	for (int written = 0; !defer; written++) {
		sl_seg *s = NULL;
		pthread_mutex_lock(&db->seg_mu);
		for (size_t i = 0; i < db->nsegs && s == NULL; i++) {
			s = atomic_load(&db->segs[i]->hint_due) ? db->segs[i] : NULL;
		}
		pthread_mutex_unlock(&db->seg_mu);
		if (s == NULL) {
			break;
		}
		if (flusher && written == 1) {
			/* The flusher writes one hint per pass and comes straight
			 * back: a pass that wrote every due hint (an open that
			 * scanned many segments, the end of a catch-up) held off
			 * everysec's sync, populates and seals, and sl_compact
			 * waiting for seal_mu, for all of them (19 hints of 16
			 * MiB segments: 841 ms between syncs against 236). */
			more = 1;
			break;
		}
		hint_write(db, s);
		atomic_store(&s->hint_due, 0);
	}
	pthread_mutex_unlock(&db->seal_mu);
	if (more) {
		pthread_mutex_lock(&db->sync_mu);
		db->seal_wanted = 1;
		pthread_mutex_unlock(&db->sync_mu);
	}
}

#define POP_FAST_NS (250u * 1000u * 1000u)

void *sl_db_flusher_main(void *arg)
{
	sl_db *db = arg;
	uint64_t last_pop_ns = 0;
	pthread_mutex_lock(&db->sync_mu);
	while (!db->stop) {
		struct timespec ts;
		sl_mono_after(&ts, db->opt.sync_interval_ms);
		if (!db->seal_wanted && !atomic_load(&db->pop_wanted)) {
			pthread_cond_timedwait(&db->flush_cv, &db->sync_mu, &ts);
		}
		int stop = db->stop;
		/* read under sync_mu: sl_swap_dir replaces db->opt under it */
		int everysec = db->opt.sync == SL_SYNC_EVERYSEC;
		db->seal_wanted = 0;
		pthread_mutex_unlock(&db->sync_mu);
		if (atomic_exchange(&db->pop_wanted, 0)) {
			/* In 1 MiB steps, each under seal_mu with the active segment
			 * looked up afresh: a segment that is not sealed cannot be
			 * compacted and freed, and seal_mu keeps it unsealed.  A
			 * writer that needs this again within POP_FAST_NS (more than
			 * POP_AHEAD/2 per POP_FAST_NS: 32 MiB/s) gets whole
			 * read-arounds, a slower one bounded steps (sl_seg_populate),
			 * mapped read-only under --sync everysec (segment.h). */
			uint64_t t = sl_mono_ns();
			int bounded = t - last_pop_ns > POP_FAST_NS;
			last_pop_ns = t;
			for (int more = 1; more;) {
				pthread_mutex_lock(&db->seal_mu);
				pthread_mutex_lock(&db->seg_mu);
				sl_seg *a = db->active_pub;
				pthread_mutex_unlock(&db->seg_mu);
				uint64_t pop = a ? atomic_load(&a->populated) : 0;
				int how = atomic_load(&db->pop_off)
				              ? SL_POP_PAGES
				              : sl_seg_pop_how(everysec, bounded);
				more = a != NULL && !atomic_load(&a->sealed) &&
				       pop < atomic_load(&a->end) + POP_AHEAD && pop < a->cap;
				if (more) {
					sl_seg_populate(a, pop + (1u << 20), bounded, how);
				}
				pthread_mutex_unlock(&db->seal_mu);
			}
		}
		if (!atomic_load(&db->failed)) {
			sl_db_seal_pending(db, 1);
			if (everysec && !stop) {
				sl_db_sync_all(db);
			}
		}
		pthread_mutex_lock(&db->sync_mu);
	}
	pthread_mutex_unlock(&db->sync_mu);
	return NULL;
}
