/*
 * db.c — the engine: open and recovery, the append path, reads, scans,
 * sync policy with group commit, sealing, stats.
 *
 * Why one file owns all of this: these are the pieces that share the
 * handle's locks, and their ordering rules are easiest to keep in one place.
 *
 * Locks, in the order they may be taken:
 *   append_mu  one appender at a time: assigns seqs, copies records into
 *              the active segment, rotates, updates the keydir
 *   seg_mu     the list of segments (the table segtab is read lock-free)
 *   keydir shard locks (keydir.c), sync_mu (group commit and the flusher)
 *
 * Invariants:
 *  1. A record is fully copied into the active segment, and the segment's
 *     `end` advanced past it, before the keydir points at it.
 *  2. Records in a segment appear in increasing seq order; the appender
 *     assigns seq and position under append_mu.
 *  3. For every key the keydir holds the location of the record with the
 *     highest seq seen (only_if_newer everywhere), never file order.
 *  4. (sync.c) synced_seq only grows, and every record with seq <= synced_seq is on
 *     disk: it is advanced to a target read *before* the segments are synced.
 *  5. A segment is published in segtab before any keydir entry points at it
 *     and is unmapped only after a keydir barrier (readers copy values while
 *     holding their shard's read lock).
 *  6. After a failed write or fsync `failed` is set and never cleared: the
 *     page cache may have dropped the data, so no later write may be
 *     acknowledged as durable (LMDB, PostgreSQL's fsync lesson).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "record.h"

#define SEGTAB_BITS  12u
#define SL_LOAD      (1u << 8)  /* append: a snapshot record, any seq order */
#define SL_COPIED    (1u << 9)  /* append: the raw record's bytes are already at end */
#define ROT_EARLY    (1u << 10) /* rotate: sl_rotate_early's, optional: no log */
#define SEGTAB_CHUNK (1u << SEGTAB_BITS)
#define SEGTAB_TOP   SL_SEGTAB_TOP

/* ---- small helpers ------------------------------------------------------ */

void sl_db_log(sl_db *db, const char *level, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (db->opt.log_fn != NULL) {
		db->opt.log_fn(db->opt.log_arg, level, msg);
		return;
	}
	if (db->opt.quiet || strcmp(level, "info") == 0 || strcmp(level, "debug") == 0) {
		return; /* stderr gets warnings and errors; a log_fn gets all */
	}
	fprintf(stderr, "shiplog-storage %s %s: %s\n", level, db->dir, msg);
}

void sl_db_count(uint64_t *c, uint64_t n)
{
	__atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

void sl_db_fail(sl_db *db, int rc, const char *what)
{
	int expect = 0;
	if (atomic_compare_exchange_strong(&db->failed, &expect, rc)) {
		sl_db_log(db, "error", "%s failed (%s); refusing writes until reopen", what,
		          sl_strerror(rc));
	}
}

const char *sl_strerror(int rc)
{
	switch (rc) {
	case SL_OK:
		return "ok";
	case SL_ENOTFOUND:
		return "not found";
	case SL_EINVAL:
		return "invalid argument";
	case SL_ETOOBIG:
		return "key or value too large";
	case SL_ECORRUPT:
		return "data corrupted (checksum mismatch)";
	case SL_EIO:
		return "I/O error";
	case SL_ENOSPC:
		return "no space left on device";
	case SL_EBUSY:
		return "data directory in use by another process or handle";
	case SL_EREADONLY:
		return "read-only: writes are not accepted here";
	case SL_ENOMEM:
		return "out of memory";
	case SL_EFAILED:
		return "an earlier write or fsync failed; reopen the store";
	case SL_ENOTSUP:
		return "unsupported format version";
	case SL_ESTALE:
		return "sequence number no longer in the log";
	case SL_EBEHIND:
		return "node has not applied the requested sequence number yet";
	case SL_ETIMEDOUT:
		return "timed out";
	case SL_EPROTO:
		return "malformed message";
	default:
		return "unknown error";
	}
}

void sl_options_init(sl_options *o)
{
	memset(o, 0, sizeof(*o));
	o->sync = SL_SYNC_EVERYSEC;
	o->sync_interval_ms = 1000;
	o->segment_bytes = 64ull << 20;
	o->max_key_bytes = SL_MAX_KEY;
	o->max_value_bytes = 16u << 20;
	o->compact_background = 1;
	o->compact_dead_ratio = 0.5;
	o->compact_min_bytes = 0; /* 0: segment_bytes / 4, decided at open */
	o->compact_interval_ms = 1000;
}

/* ---- segment table ------------------------------------------------------ */

sl_seg *sl_db_seg(sl_db *db, uint32_t id)
{
	_Atomic(sl_seg *) *chunk = atomic_load_explicit(
	    &db->segtab[(id >> SEGTAB_BITS) % SEGTAB_TOP], memory_order_acquire);
	if (chunk == NULL || (id >> SEGTAB_BITS) >= SEGTAB_TOP) {
		return NULL;
	}
	return atomic_load_explicit(&chunk[id & (SEGTAB_CHUNK - 1)], memory_order_acquire);
}

int sl_db_take_id(sl_db *db, uint32_t *id)
{
	uint32_t cur = atomic_load(&db->next_id);
	do {
		if (cur == 0 || cur >= SL_SEG_ID_MAX) {
			return SL_ENOSPC;
		}
	} while (!atomic_compare_exchange_weak(&db->next_id, &cur, cur + 1));
	*id = cur;
	return SL_OK;
}

int sl_db_seg_reserve(sl_db *db, uint32_t id, size_t extra)
{
	uint32_t top = id >> SEGTAB_BITS;
	if (top >= SEGTAB_TOP) {
		return SL_ENOSPC;
	}
	_Atomic(sl_seg *) *chunk = atomic_load(&db->segtab[top]);
	if (chunk == NULL) {
		chunk = calloc(SEGTAB_CHUNK, sizeof(*chunk));
		if (chunk == NULL) {
			return SL_ENOMEM;
		}
		atomic_store_explicit(&db->segtab[top], chunk, memory_order_release);
	}
	if (db->capsegs - db->nsegs < extra) {
		size_t cap = db->capsegs ? db->capsegs : 16;
		while (cap - db->nsegs < extra) {
			cap *= 2;
		}
		sl_seg **l = realloc(db->segs, cap * sizeof(*l));
		if (l == NULL) {
			return SL_ENOMEM;
		}
		db->segs = l;
		db->capsegs = cap;
	}
	return SL_OK;
}

static int seg_insert(sl_db *db, sl_seg *s, size_t room)
{
	int rc = sl_db_seg_reserve(db, s->id, room);
	if (rc != SL_OK) {
		return rc;
	}
	_Atomic(sl_seg *) *chunk = atomic_load(&db->segtab[s->id >> SEGTAB_BITS]);
	size_t i = db->nsegs;
	while (i > 0 && db->segs[i - 1]->id > s->id) {
		db->segs[i] = db->segs[i - 1];
		i--;
	}
	db->segs[i] = s;
	db->nsegs++;
	atomic_store_explicit(&chunk[s->id & (SEGTAB_CHUNK - 1)], s, memory_order_release);
	return SL_OK;
}

/* Adds s to the table and the id-ordered list, leaving the slots a
 * compaction holds free: a rotation while the run writes its DROPPING
 * mark took one, and the run's last output then needed a realloc after
 * its inputs were marked for removal.  Caller holds seg_mu.  Fails only
 * as sl_db_seg_reserve(db, s->id, 1 + seg_held) would. */
int sl_db_seg_publish(sl_db *db, sl_seg *s)
{
	return seg_insert(db, s, 1 + db->seg_held);
}

int sl_db_seg_publish_held(sl_db *db, sl_seg *s)
{
	if (db->seg_held > 0) {
		db->seg_held--;
	}
	return seg_insert(db, s, 1);
}

void sl_db_seg_unpublish(sl_db *db, sl_seg *s)
{
	for (size_t i = 0; i < db->nsegs; i++) {
		if (db->segs[i] == s) {
			memmove(&db->segs[i], &db->segs[i + 1],
			        (db->nsegs - i - 1) * sizeof(*db->segs));
			db->nsegs--;
			break;
		}
	}
	_Atomic(sl_seg *) *chunk = atomic_load(&db->segtab[s->id >> SEGTAB_BITS]);
	if (chunk != NULL) {
		atomic_store_explicit(&chunk[s->id & (SEGTAB_CHUNK - 1)], NULL,
		                      memory_order_release);
	}
}

/* ---- keydir bookkeeping shared by recovery and the append path --------- */

/* Installs loc for key (highest seq wins) and moves live-byte counts. */
void sl_db_account(sl_db *db, const sl_loc *loc, int delta)
{
	sl_seg *s = sl_db_seg(db, loc->seg);
	if (s == NULL) {
		return;
	}
	_Atomic uint64_t *c = loc->tomb ? &s->tomb : &s->live;
	if (delta > 0) {
		atomic_fetch_add(c, loc->size);
	} else {
		atomic_fetch_sub(c, loc->size);
	}
}

int sl_db_index(sl_db *db, uint64_t h, const void *key, size_t klen, const sl_loc *loc)
{
	sl_loc old;
	int rc = sl_keydir_put(db->kd, h, key, klen, loc, 1, &old);
	if (rc < 0) {
		return rc;
	}
	if (rc == 0) {
		return SL_OK; /* an equal or newer record is already indexed */
	}
	sl_db_account(db, loc, +1);
	if (rc == 1) {
		sl_db_account(db, &old, -1);
	}
	return SL_OK;
}

char *sl_db_parent_dir(const char *path)
{
	char *d = strdup(path);
	if (d == NULL) {
		return NULL;
	}
	size_t n = strlen(d);
	while (n > 1 && d[n - 1] == '/') {
		d[--n] = '\0';
	}
	char *slash = strrchr(d, '/');
	if (slash == NULL) {
		strcpy(d, ".");
	} else {
		slash[slash == d] = '\0'; /* "/x" -> "/" */
	}
	return d;
}

/* ---- the append path ---------------------------------------------------- */

/* A log line that a full disk would repeat once per write: the first, then
 * one per 10 s with how many were held back since the last such line.
 * Caller holds the lock that guards l (db.h). */
_Static_assert(SL_MAX_KEY == SL_MAX_KEY_BYTES, "format.h and shiplog.h disagree");

int sl_db_log_due(sl_db_limit *l, uint64_t *held)
{
	uint64_t now = sl_mono_ns();
	if (l->ns != 0 && now - l->ns < 10000000000ull) {
		l->more++;
		return 0;
	}
	*held = l->more;
	l->ns = now;
	l->more = 0;
	return 1;
}

int sl_db_seg_create_fit(sl_db *db, uint32_t id, uint64_t first_seq, size_t cap, size_t min,
                         sl_seg **out)
{
	size_t c = cap;
	int rc;
	while ((rc = sl_seg_create(db->io, db->dir, db->dirfd, id, first_seq, c, out)) ==
	           SL_ENOSPC &&
	       (c = sl_db_fit_next(c, min)) != 0) {
	}
	uint64_t held;
	if (rc == SL_OK && c < cap && sl_db_log_due(&db->fit_log, &held)) {
		sl_db_log(db, "warn",
		          "disk nearly full: segment %u preallocated %zu bytes, not %zu (%llu more "
		          "such segments since the last such line)",
		          id, c, cap, (unsigned long long)held);
	}
	return rc;
}

/* Starts a new active segment big enough for a record of `need` bytes.
 * Caller holds append_mu.  The old segment is sealed by the flusher.
 * A segment's header first_seq is a lower bound of the seqs it holds
 * (compaction's drop rule relies on it): last_seq + 1 for the log, 1 for
 * a snapshot load (SL_LOAD), whose records come in any seq order — a key
 * changed after the snapshot's pin arrives in all its versions up to the
 * pin, and an older one landing in a later segment stamped with a higher
 * first_seq could outlive the tombstone that hides it. */
static int rotate(sl_db *db, size_t need, unsigned flags)
{
	size_t cap = (size_t)db->opt.segment_bytes;
	if (cap < SL_SEG_HDR_SIZE + need) {
		cap = SL_SEG_HDR_SIZE + need;
	}
	sl_seg *n;
	uint32_t id;
	int rc = sl_db_take_id(db, &id);
	if (rc != SL_OK) {
		uint64_t held;
		if (!(flags & ROT_EARLY) && sl_db_log_due(&db->rot_log, &held)) {
			sl_db_log(db, "error",
			          "cannot start a segment: the store has used all %u segment ids "
			          "(%llu more failed writes since the last such line)",
			          SL_SEG_ID_MAX - 1, (unsigned long long)held);
		}
		return rc;
	}
	uint64_t first = flags & SL_LOAD ? 1 : atomic_load(&db->last_seq) + 1;
	rc = sl_db_seg_create_fit(db, id, first, cap, SL_SEG_HDR_SIZE + need, &n);
	if (rc != SL_OK) {
		/* No file was left: give the id back (unless compaction took the
		 * next one meanwhile), so a full disk does not use up ids. */
		uint32_t next = id + 1;
		atomic_compare_exchange_strong(&db->next_id, &next, id);
		uint64_t held;
		if (!(flags & ROT_EARLY) && sl_db_log_due(&db->rot_log, &held)) {
			sl_db_log(db, "error",
			          "cannot start segment %u: %s (%llu more failed writes since the "
			          "last such line)",
			          id, sl_strerror(rc), (unsigned long long)held);
		}
		return rc; /* nothing written: the store keeps serving */
	}
	/* Its first MiB now, bounded (sl_seg_populate), before the flusher
	 * can see it: else the next write's fault zero-fills a whole
	 * read-around window with append_mu held.  Not while appends come
	 * as pwrites (write_run), which need no populated page.  Mapped
	 * read-only under --sync everysec (segment.h). */
	if (!atomic_load_explicit(&db->pop_off, memory_order_relaxed)) {
		sl_seg_populate(n, 1u << 20, 1,
		                sl_seg_pop_how(db->opt.sync == SL_SYNC_EVERYSEC, 1));
	}
	pthread_mutex_lock(&db->seg_mu);
	rc = sl_db_seg_publish(db, n);
	if (rc == SL_OK) {
		db->active_pub = n;
	}
	pthread_mutex_unlock(&db->seg_mu);
	if (rc != SL_OK) {
		/* never listed: remove its file, which no open would read */
		char *path = sl_seg_path(db->dir, id, ".seg");
		sl_seg_close(db->io, n);
		if (path != NULL) {
			db->io->unlink(path);
			free(path);
		}
		return rc;
	}
	db->active = n;
	sl_db_set_room(db, n);
	db->rot_early_off = 0; /* a new segment: sl_rotate_early may try again */
	pthread_mutex_lock(&db->sync_mu);
	db->seal_wanted = 1;
	pthread_cond_signal(&db->flush_cv);
	pthread_mutex_unlock(&db->sync_mu);
	return SL_OK;
}

static int live_cb(void *arg, const sl_loc *loc)
{
	sl_db *db = arg;
	if (loc->tomb) {
		return SL_ENOTFOUND;
	}
	sl_seg *s = sl_db_seg(db, loc->seg);
	if (s == NULL) {
		return SL_ECORRUPT; /* an index entry without its segment: never left so */
	}
	uint64_t exp = sl_get64(s->map + loc->off + 20);
	return exp != 0 && exp <= db->io->now_ms() ? SL_ENOTFOUND : SL_OK;
}

int sl_db_index_flush(sl_db *db, sl_idx_batch *b)
{
	if (b->n == 0) {
		return SL_OK;
	}
	sl_keydir_put_many(db->kd, b->items, b->n, 1);
	int rc = SL_OK;
	for (size_t i = 0; i < b->n; i++) {
		const sl_kd_item *it = &b->items[i];
		if (it->rc < 0) {
			rc = it->rc;
		} else if (it->rc > 0) {
			sl_db_account(db, &it->loc, +1);
			if (it->rc == 1) {
				sl_db_account(db, &it->old, -1);
			}
		}
	}
	b->n = 0;
	return rc;
}

int sl_db_index_add(sl_db *db, sl_idx_batch *b, uint64_t h, const void *key, size_t klen,
                    const sl_loc *loc)
{
	if (b->n == SL_IDX_BATCH_MAX) {
		int rc = sl_db_index_flush(db, b);
		if (rc != SL_OK) {
			return rc;
		}
	}
	if (b->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 1024;
		sl_kd_item *it = realloc(b->items, cap * sizeof(*it));
		if (it == NULL) { /* no room to defer: index what was gathered, then this */
			int rc = sl_db_index_flush(db, b);
			return rc != SL_OK ? rc : sl_db_index(db, h, key, klen, loc);
		}
		b->items = it;
		b->cap = cap;
	}
	b->items[b->n++] = (sl_kd_item){.h = h, .key = key, .klen = klen, .loc = *loc};
	return SL_OK;
}

void sl_idx_batch_free(sl_idx_batch *b)
{
	free(b->items);
	memset(b, 0, sizeof(*b));
}

/* The active segment's pages ahead of an append that ends at `upto`: the
 * flusher is asked for them once the append comes within POP_AHEAD / 2 of
 * what it has done.  mapped (an append copied through the mapping): it
 * populates them into the mapping.  Otherwise (pwrites, write_run): it
 * reads them into the page cache only (pop_off; readahead of the unwritten
 * extent: zeroed pages, no I/O), since pages it mapped would be zeroed for
 * nothing and cost a TLB shootdown each at the sync. */
static void pages_ahead(sl_db *db, sl_seg *a, uint64_t upto, int mapped)
{
	if (atomic_load_explicit(&db->pop_off, memory_order_relaxed) == mapped) {
		atomic_store_explicit(&db->pop_off, !mapped, memory_order_relaxed);
	}
	uint64_t pop = atomic_load_explicit(&a->populated, memory_order_relaxed);
	if (upto + POP_AHEAD / 2 > pop && pop < (a->cap & ~(uint64_t)4095u) &&
	    !atomic_load_explicit(&db->pop_wanted, memory_order_relaxed)) {
		pthread_mutex_lock(&db->sync_mu);
		atomic_store(&db->pop_wanted, 1);
		pthread_cond_signal(&db->flush_cv);
		pthread_mutex_unlock(&db->sync_mu);
	}
}

/* One record into the log and the keydir (or, with batch, into the log
 * and onto batch: indexed by sl_db_index_flush before append_mu is released, and
 * before a rotation so that no sealed segment holds unindexed records).
 * raw != NULL: a verified record from another node, appended byte for byte
 * keeping its seq.  append_mu held. */
static int append_locked(sl_db *db, uint8_t type, const void *key, size_t klen, const void *val,
                         size_t vlen, uint64_t expire_at, const uint8_t *raw, uint64_t raw_seq,
                         unsigned flags, uint64_t *seq_out, sl_idx_batch *batch)
{
	size_t size = sl_rec_size(klen, vlen);
	uint64_t h = sl_keydir_hash(key, klen);
	int rc = SL_OK;
	uint64_t seq;
	if (db->active == NULL) {
		return SL_EREADONLY; /* opened read-only: no active segment */
	}
	if (atomic_load(&db->failed)) {
		return SL_EFAILED;
	}
	if (type == SL_REC_DEL && raw == NULL &&
	    sl_keydir_get(db->kd, h, key, klen, live_cb, db) != SL_OK) {
		return SL_ENOTFOUND;
	}
	seq = raw ? raw_seq : atomic_load(&db->last_seq) + 1;
	if ((seq <= atomic_load(&db->last_seq) && !(flags & SL_LOAD)) || seq == 0 ||
	    seq > SL_KD_SEQ_MAX) {
		return SL_EINVAL;
	}
	sl_seg *a = db->active;
	uint64_t end = atomic_load(&a->end);
	/* The first record of a segment may fill its capacity (one bigger
	 * than segment_bytes gets a segment its size); later ones stop at
	 * sl_db_seg_limit. */
	if (end + size > (end > SL_SEG_HDR_SIZE ? sl_db_seg_limit(db, a) : a->cap)) {
		if (batch != NULL && (rc = sl_db_index_flush(db, batch)) != SL_OK) {
			sl_db_fail(db, rc, "keydir insert");
			return rc;
		}
		if ((rc = rotate(db, size, flags)) != SL_OK) {
			return rc;
		}
		a = db->active;
		end = atomic_load(&a->end);
	}
	uint8_t *dst = a->map + end;
	if (flags & SL_COPIED) {
		/* written by write_run, past end: nothing to copy */
	} else if (raw != NULL) {
		memcpy(dst, raw, size);
	} else {
		sl_rec_encode(dst, type, seq, expire_at, key, klen, val, vlen);
	}
	atomic_store_explicit(&a->end, end + size, memory_order_release); /* invariant 1 */
	sl_db_set_room(db, a);
	if (!(flags & SL_COPIED)) { /* write_run asked for its run's pages */
		pages_ahead(db, a, end + size, 1);
	}
	if (seq > a->last_seq) {
		a->last_seq = seq;
	}
	sl_seg_note_ttl(a, expire_at, size);
	if (seq > atomic_load(&db->last_seq)) {
		atomic_store_explicit(&db->last_seq, seq, memory_order_release);
	}
	sl_loc loc = {.seg = a->id,
	              .off = (uint32_t)end,
	              .size = (uint32_t)size,
	              .tomb = type == SL_REC_DEL,
	              .seq = seq};
	if (seq_out != NULL) {
		*seq_out = seq;
	}
	rc = batch != NULL ? sl_db_index_add(db, batch, h, key, klen, &loc)
	                   : sl_db_index(db, h, key, klen, &loc);
	if (rc != SL_OK) {
		/* The record is in the log but not indexed: a reopen would serve
		 * it, this handle would not.  Refuse further writes. */
		sl_db_fail(db, rc, "keydir insert");
	}
	return rc;
}

static int append(sl_db *db, uint8_t type, const void *key, size_t klen, const void *val,
                  size_t vlen, uint64_t expire_at, const uint8_t *raw, uint64_t raw_seq,
                  unsigned flags, uint64_t *seq_out)
{
	uint64_t seq = 0;
	int always = db->opt.sync == SL_SYNC_ALWAYS && !(flags & SL_NOWAIT);
	if (always) {
		atomic_fetch_add(&db->arriving, 1);
	}
	pthread_mutex_lock(&db->append_mu);
	int rc = append_locked(db, type, key, klen, val, vlen, expire_at, raw, raw_seq, flags, &seq,
	                       NULL);
	pthread_mutex_unlock(&db->append_mu);
	if (always) {
		atomic_fetch_sub(&db->arriving, 1);
	}
	if (rc == SL_OK && seq_out != NULL) {
		*seq_out = seq;
	}
	if (rc == SL_OK && always) {
		rc = sl_db_sync_wait(db, seq);
	}
	return rc;
}

/* max_key: the put's limit (opt.max_key_bytes), or SL_MAX_KEY for a
 * delete: a key stored under larger limits (replicated, or written before a
 * reopen with smaller ones) can still be deleted. */
static int check_write(sl_db *db, const void *key, size_t klen, size_t vlen, size_t max_key)
{
	if (db == NULL || key == NULL || klen == 0) {
		return SL_EINVAL;
	}
	if (klen > max_key || vlen > db->opt.max_value_bytes) {
		return SL_ETOOBIG;
	}
	if (db->opt.read_only) {
		return SL_EREADONLY;
	}
	return SL_OK;
}

int sl_put_ex(sl_db *db, const void *key, size_t klen, const void *val, size_t vlen,
              uint64_t ttl_ms, unsigned flags, uint64_t *seq_out)
{
	int rc = check_write(db, key, klen, vlen, db != NULL ? db->opt.max_key_bytes : 0);
	if (rc != SL_OK) {
		return rc;
	}
	if ((val == NULL && vlen > 0) || (flags & ~SL_NOWAIT) != 0) {
		return SL_EINVAL; /* the other bits are the store's own (SL_COPIED, ...) */
	}
	uint64_t now = ttl_ms != 0 ? db->io->now_ms() : 0; /* a clock read per put, else */
	/* a TTL past the clock's range means "never expires" in practice:
	 * clamp it rather than wrap (expired at once, or 0 = no TTL) */
	uint64_t exp = ttl_ms == 0                     ? 0
	               : ttl_ms > UINT64_MAX - 1 - now ? UINT64_MAX - 1
	                                               : now + ttl_ms;
	rc = append(db, SL_REC_PUT, key, klen, val, vlen, exp, NULL, 0, flags, seq_out);
	if (rc == SL_OK) {
		sl_db_count(&db->n_puts, 1);
	}
	return rc;
}

int sl_put_ttl(sl_db *db, const void *key, size_t klen, const void *val, size_t vlen,
               uint64_t ttl_ms, uint64_t *seq_out)
{
	return sl_put_ex(db, key, klen, val, vlen, ttl_ms, 0, seq_out);
}

int sl_put(sl_db *db, const void *key, size_t klen, const void *val, size_t vlen, uint64_t *seq_out)
{
	return sl_put_ex(db, key, klen, val, vlen, 0, 0, seq_out);
}

int sl_delete(sl_db *db, const void *key, size_t klen, uint64_t *seq_out)
{
	return sl_delete_ex(db, key, klen, 0, seq_out);
}

int sl_delete_ex(sl_db *db, const void *key, size_t klen, unsigned flags, uint64_t *seq_out)
{
	int rc = check_write(db, key, klen, 0, SL_MAX_KEY);
	if (rc != SL_OK) {
		return rc;
	}
	if ((flags & ~SL_NOWAIT) != 0) {
		return SL_EINVAL; /* the other bits are the store's own */
	}
	rc = append(db, SL_REC_DEL, key, klen, NULL, 0, 0, NULL, 0, flags, seq_out);
	if (rc == SL_OK) {
		sl_db_count(&db->n_deletes, 1);
	}
	return rc;
}

/* Applying a follower's batch or a resync's chunk: raw records,
 * contiguous in the caller's buffer.  Copying them through the mapping
 * needs their pages populated first, and populating pages of the
 * preallocated (unwritten) file zero-fills each before the copy
 * overwrites it: a follower catching up spent about as much CPU in its
 * flusher's populate (memset, and TLB shootdowns at the sync) as in
 * applying.  A pwrite of whole pages into the page cache skips the zeroing,
 * so a large batch is written in runs: plan_run checks (and decodes) the
 * records of a run that fits the active segment, write_run pwrites their
 * bytes past `end` in one call, and append_locked then accounts and
 * indexes each (SL_COPIED) exactly as if it had copied it.  Readers see
 * nothing new until append_locked moves `end` (segment.c invariant 2), and
 * the page cache is the mapping's, so they read what was written. */
#define RUN_MAX_RECS  256u
#define RUN_MIN_BATCH 32u /* smaller batches: copied through the mapping */

/* Decodes the raw record p of exactly len bytes into *r (*size = len): 0,
 * or -1 when it is not one.  Under SL_VERIFIED its checksum was checked by
 * the caller (a follower checks a fetched batch on nng's thread while the
 * previous one is applied): only the header, limits and length here. */
static int raw_decode(const uint8_t *p, size_t len, unsigned flags, sl_rec *r, size_t *size)
{
	if (sl_rec_decode_header(p, len, SL_MAX_KEY, SL_MAX_VALUE, r) != SL_REC_OK ||
	    sl_rec_size(r->klen, r->vlen) != len ||
	    (!(flags & SL_VERIFIED) && !sl_rec_verify(p, len))) {
		return -1;
	}
	r->key = p + SL_REC_HDR_SIZE;
	r->val = p + SL_REC_HDR_SIZE + r->klen;
	*size = len;
	return 0;
}

/* Decodes up to RUN_MAX_RECS records from recs[i] on into rr that can be
 * appended one after the other from the active segment's end without a
 * rotation or a refusal: contiguous in memory, well-formed, seqs rising
 * (any order under SL_LOAD).  Returns how many; *bytes gets their size. */
static size_t plan_run(sl_db *db, const void *const *recs, const size_t *lens, size_t n, size_t i,
                       unsigned flags, sl_rec *rr, size_t *bytes)
{
	sl_seg *a = db->active;
	*bytes = 0;
	if (a == NULL || atomic_load(&db->failed)) {
		return 0;
	}
	/* never past segment_bytes in a larger segment: append_locked would
	 * rotate there, in the middle of the run (see it) */
	uint64_t end = atomic_load(&a->end);
	uint64_t lim = sl_db_seg_limit(db, a);
	uint64_t room = lim > end ? lim - end : 0;
	uint64_t prev = atomic_load(&db->last_seq);
	const uint8_t *next = recs[i];
	size_t k = 0, total = 0;
	for (; i + k < n && k < RUN_MAX_RECS; k++) {
		const uint8_t *p = recs[i + k];
		size_t size;
		if (p == NULL || p != next || raw_decode(p, lens[i + k], flags, &rr[k], &size) ||
		    total + size > room) {
			break;
		}
		uint64_t seq = rr[k].seq;
		if (seq == 0 || seq > SL_KD_SEQ_MAX || (!(flags & SL_LOAD) && seq <= prev)) {
			break;
		}
		prev = seq;
		total += size;
		next = p + size;
	}
	*bytes = total;
	return k;
}

/* pwrites the run's bytes at the active segment's end (beyond what any
 * reader looks at).  On failure whatever part was written is zeroed again,
 * so that nothing past `end` looks like a record. */
static int write_run(sl_db *db, const void *src, size_t bytes)
{
	sl_seg *a = db->active;
	uint64_t end = atomic_load(&a->end);
	size_t off = 0;
	pages_ahead(db, a, end + bytes, 0);
	while (off < bytes) {
		ssize_t w = db->io->pwrite(a->fd, (const uint8_t *)src + off, bytes - off,
		                           (off_t)(end + off));
		if (w < 0 && errno == EINTR) {
			continue;
		}
		if (w <= 0) {
			int rc = w < 0 && (errno == ENOSPC || errno == EDQUOT) ? SL_ENOSPC : SL_EIO;
			memset(a->map + end, 0, off);
			return rc;
		}
		off += (size_t)w;
	}
	return SL_OK;
}

static int apply_raw_many(sl_db *db, const void *const *recs, const size_t *lens, size_t n,
                          unsigned flags, size_t *applied)
{
	size_t done = 0;
	if (applied != NULL) {
		*applied = 0;
	}
	if (db == NULL || (n > 0 && (recs == NULL || lens == NULL))) {
		return SL_EINVAL;
	}
	if (db->opt.read_only) {
		return n > 0 ? SL_EREADONLY : SL_OK;
	}
	/* A single record is indexed at once.  The batch's array is the
	 * store's, kept from one call to the next: made afresh, it was grown
	 * by reallocs to a 4 MiB catch-up reply's 28 k entries every time. */
	sl_idx_batch *bp = n > 1 ? &db->apply_idx : NULL;
	uint64_t seq = 0;
	int rc = SL_OK;
	sl_rec rr[RUN_MAX_RECS];
	pthread_mutex_lock(&db->append_mu);
	while (rc == SL_OK && done < n) {
		size_t bytes, run = 0;
		if (n >= RUN_MIN_BATCH) {
			run = plan_run(db, recs, lens, n, done, flags, rr, &bytes);
		}
		if (run > 0) {
			if ((rc = write_run(db, recs[done], bytes)) != SL_OK) {
				break;
			}
			uint64_t run_end = atomic_load(&db->active->end) + bytes;
			size_t k = 0;
			for (; k < run; k++) {
				sl_rec *r = &rr[k];
				rc = append_locked(db, r->type, r->key, r->klen, r->val, r->vlen,
				                   r->expire_at, recs[done + k], r->seq,
				                   flags | SL_COPIED, &seq, bp);
				if (rc != SL_OK) {
					break;
				}
			}
			if (rc != SL_OK) {
				/* the rest of the run is past end: not records any more
				 * (a run never rotates, so it is all in this segment) */
				uint64_t end = atomic_load(&db->active->end);
				memset(db->active->map + end, 0, run_end - end);
			}
			done += k;
			continue;
		}
		/* one record through the mapping: a small batch, or a record the
		 * run could not take (it rotates the segment, or is refused) */
		sl_rec r;
		size_t size;
		if (recs[done] == NULL) {
			rc = SL_EINVAL;
			break;
		}
		if (raw_decode(recs[done], lens[done], flags, &r, &size)) {
			rc = SL_ECORRUPT;
			break;
		}
		rc = append_locked(db, r.type, r.key, r.klen, r.val, r.vlen, r.expire_at,
		                   recs[done], r.seq, flags, &seq, bp);
		if (rc != SL_OK) {
			break;
		}
		done++;
	}
	int irc = sl_db_index_flush(db, &db->apply_idx);
	if (irc != SL_OK) {
		sl_db_fail(db, irc, "keydir insert"); /* as append_locked */
	}
	pthread_mutex_unlock(&db->append_mu);
	if (irc != SL_OK) {
		return irc; /* the store refuses writes from now on */
	}
	if (applied != NULL) {
		*applied = done;
	}
	if (done > 0 && db->opt.sync == SL_SYNC_ALWAYS && !(flags & SL_NOWAIT)) {
		/* what was applied is durable on return, even when a later
		 * record was refused */
		int src = sl_db_sync_wait(db, seq);
		rc = rc != SL_OK ? rc : src;
	}
	return rc;
}

sl_sync sl_sync_policy(sl_db *db)
{
	return db->opt.sync;
}

int sl_apply_raw(sl_db *db, const void *rec, size_t len)
{
	return apply_raw_many(db, &rec, &len, 1, 0, NULL);
}

int sl_apply_raw_ex(sl_db *db, const void *rec, size_t len, unsigned flags)
{
	return apply_raw_many(db, &rec, &len, 1, flags & SL_NOWAIT, NULL);
}

int sl_load_raw(sl_db *db, const void *rec, size_t len)
{
	return apply_raw_many(db, &rec, &len, 1, SL_LOAD | SL_NOWAIT, NULL);
}

int sl_apply_raw_many(sl_db *db, const void *const *recs, const size_t *lens, size_t n,
                      unsigned flags, size_t *applied)
{
	return apply_raw_many(db, recs, lens, n, flags & (SL_NOWAIT | SL_VERIFIED), applied);
}

int sl_load_raw_many(sl_db *db, const void *const *recs, const size_t *lens, size_t n,
                     size_t *applied)
{
	return apply_raw_many(db, recs, lens, n, SL_LOAD | SL_NOWAIT, applied);
}

uint64_t sl_last_seq(sl_db *db)
{
	return db ? atomic_load(&db->last_seq) : 0;
}

uint64_t sl_append_room(sl_db *db)
{
	return db ? atomic_load_explicit(&db->room, memory_order_relaxed) : 0;
}

int sl_rotate_early(sl_db *db, uint64_t below)
{
	if (db == NULL || sl_append_room(db) >= below) {
		return SL_OK;
	}
	int rc = SL_OK;
	pthread_mutex_lock(&db->append_mu);
	sl_seg *a = db->active; /* db->opt is read under append_mu (sl_swap_dir) */
	size_t full = (size_t)db->opt.segment_bytes;
	if (a != NULL && !atomic_load(&db->failed) && !db->rot_early_off && full / 16 >= below &&
	    atomic_load(&a->end) > SL_SEG_HDR_SIZE &&
	    atomic_load_explicit(&db->room, memory_order_relaxed) < below) {
		/* A whole segment or none: on a nearly full disk a smaller one
		 * (sl_db_seg_create_fit) would have less room than `below`
		 * from the start, and every write would rotate again.  After a
		 * failure, no more tries until the segment fills and rotates
		 * the usual way, which logs what fails. */
		rc = rotate(db, full - SL_SEG_HDR_SIZE, ROT_EARLY); /* full >= 16 * below */
		if (rc != SL_OK) {
			db->rot_early_off = 1;
		}
	}
	pthread_mutex_unlock(&db->append_mu);
	return rc;
}

/* ---- reads -------------------------------------------------------------- */

typedef struct get_ctx {
	sl_db *db;
	const void *key;
	size_t klen;
	void *val;
	size_t vlen;
	uint64_t seq;
	size_t max_vlen; /* a longer value is SL_ETOOBIG, neither read nor copied */
} get_ctx;

/* Verifies the record at loc (checksum, key) and returns it in *r.
 * Called under the key's shard read lock (invariant 5). */
static int read_record(sl_db *db, const sl_loc *loc, const void *key, size_t klen, sl_rec *r)
{
	sl_seg *s = sl_db_seg(db, loc->seg);
	size_t size;
	if (s == NULL || (uint64_t)loc->off + loc->size > atomic_load(&s->end) ||
	    sl_rec_decode(s->map + loc->off, loc->size, SL_MAX_KEY, SL_MAX_VALUE, r, &size) !=
	        SL_REC_OK ||
	    size != loc->size || r->klen != klen || memcmp(r->key, key, klen) != 0) {
		sl_db_count(&db->n_corrupt, 1);
		/* never compacted away; said once a segment (a read may be
		 * repeated any number of times) */
		if (s != NULL && atomic_exchange(&s->corrupt, 1) == 0) {
			sl_db_log(
			    db, "error",
			    "segment %u: a bad record at offset %llu (%u bytes), found by a read: "
			    "not served; the segment is kept as it is (never compacted)",
			    (unsigned)loc->seg, (unsigned long long)loc->off, (unsigned)loc->size);
		}
		return SL_ECORRUPT;
	}
	return SL_OK;
}

static int get_cb(void *arg, const sl_loc *loc)
{
	get_ctx *c = arg;
	if (loc->tomb) {
		return SL_ENOTFOUND;
	}
	if (loc->size > SL_REC_HDR_SIZE + c->klen &&
	    loc->size - SL_REC_HDR_SIZE - c->klen > c->max_vlen) {
		/* told by the index, before the checksum and the copy (an mget
		 * of one 16 MiB key 20,000 times checked and copied it 20,000
		 * times, to answer "too big" for all but the first); expired
		 * is still "not found" */
		int live = live_cb(c->db, loc);
		if (live != SL_OK) {
			return live;
		}
		c->vlen = loc->size - SL_REC_HDR_SIZE - c->klen;
		return SL_ETOOBIG;
	}
	sl_rec r;
	int rc = read_record(c->db, loc, c->key, c->klen, &r);
	if (rc != SL_OK) {
		return rc;
	}
	if (r.expire_at != 0 && r.expire_at <= c->db->io->now_ms()) {
		return SL_ENOTFOUND;
	}
	c->val = malloc(r.vlen ? r.vlen : 1);
	if (c->val == NULL) {
		return SL_ENOMEM;
	}
	memcpy(c->val, r.val, r.vlen);
	c->vlen = r.vlen;
	c->seq = r.seq;
	return SL_OK;
}

int sl_get_max(sl_db *db, const void *key, size_t klen, size_t max_vlen, void **val_out,
               size_t *vlen_out, uint64_t *seq_out)
{
	if (db == NULL || key == NULL || klen == 0 || val_out == NULL || vlen_out == NULL) {
		return SL_EINVAL;
	}
	if (klen > SL_MAX_KEY) {
		return SL_ENOTFOUND;
	}
	get_ctx c = {.db = db, .key = key, .klen = klen, .max_vlen = max_vlen};
	int rc = sl_keydir_get(db->kd, sl_keydir_hash(key, klen), key, klen, get_cb, &c);
	sl_db_count(&db->n_gets, 1);
	if (rc == SL_ETOOBIG) {
		*vlen_out = c.vlen;
	}
	if (rc != SL_OK) {
		return rc;
	}
	*val_out = c.val;
	*vlen_out = c.vlen;
	if (seq_out != NULL) {
		*seq_out = c.seq;
	}
	return SL_OK;
}

int sl_get_seq(sl_db *db, const void *key, size_t klen, void **val_out, size_t *vlen_out,
               uint64_t *seq_out)
{
	return sl_get_max(db, key, klen, SIZE_MAX, val_out, vlen_out, seq_out);
}

static int prefetch_cb(void *arg, const sl_loc *loc)
{
	sl_db *db = arg;
	sl_seg *s = sl_db_seg(db, loc->seg);
	if (s != NULL && !loc->tomb && (uint64_t)loc->off + loc->size <= atomic_load(&s->end)) {
		/* every cache line the record touches, up to four (a 144-byte
		 * record spans three lines at most offsets) */
		uintptr_t a = (uintptr_t)(s->map + loc->off) & ~(uintptr_t)63;
		uintptr_t end = (uintptr_t)(s->map + loc->off) + loc->size;
		for (int i = 0; i < 4 && a < end; i++, a += 64) {
			__builtin_prefetch((const void *)a, 0, 1);
		}
	}
	return SL_OK;
}

void sl_prefetch_value(sl_db *db, const void *key, size_t klen)
{
	if (db != NULL && key != NULL && klen > 0 && klen <= SL_MAX_KEY) {
		sl_keydir_get(db->kd, sl_keydir_hash(key, klen), key, klen, prefetch_cb, db);
	}
}

void sl_prefetch_entry(sl_db *db, const void *key, size_t klen)
{
	if (db != NULL && key != NULL && klen > 0 && klen <= SL_MAX_KEY) {
		sl_keydir_prefetch_entry(db->kd, sl_keydir_hash(key, klen));
	}
}

void sl_prefetch(sl_db *db, const void *key, size_t klen)
{
	if (db != NULL && key != NULL && klen > 0 && klen <= SL_MAX_KEY) {
		sl_keydir_prefetch(db->kd, sl_keydir_hash(key, klen));
	}
}

int sl_get(sl_db *db, const void *key, size_t klen, void **val_out, size_t *vlen_out)
{
	return sl_get_seq(db, key, klen, val_out, vlen_out, NULL);
}

typedef struct scan_ctx {
	sl_db *db;
	const void *prefix;
	size_t plen;
	uint64_t now;
	uint8_t *buf; /* (klen u32, vlen u32, key, value)* for one shard */
	size_t len, cap;
	int err;
} scan_ctx;

static int scan_collect(void *arg, const void *key, size_t klen, const sl_loc *loc)
{
	scan_ctx *c = arg;
	if (loc->tomb || klen < c->plen || (c->plen > 0 && memcmp(key, c->prefix, c->plen) != 0)) {
		return 0;
	}
	sl_rec r;
	if (read_record(c->db, loc, key, klen, &r) != SL_OK) {
		return 0; /* counted; a corrupt record is never served */
	}
	if (r.expire_at != 0 && r.expire_at <= c->now) {
		return 0;
	}
	size_t need = 8 + klen + r.vlen;
	if (c->len + need > c->cap) {
		size_t cap = c->cap ? c->cap : 4096;
		while (cap < c->len + need) {
			cap *= 2;
		}
		uint8_t *b = realloc(c->buf, cap);
		if (b == NULL) {
			c->err = SL_ENOMEM;
			return 1;
		}
		c->buf = b;
		c->cap = cap;
	}
	uint8_t *p = c->buf + c->len;
	sl_put32(p, (uint32_t)klen);
	sl_put32(p + 4, r.vlen);
	memcpy(p + 8, key, klen);
	memcpy(p + 8 + klen, r.val, r.vlen);
	c->len += need;
	return 0;
}

int sl_scan(sl_db *db, const void *prefix, size_t plen,
            int (*fn)(void *arg, const void *k, size_t kl, const void *v, size_t vl), void *arg)
{
	if (db == NULL || fn == NULL || (prefix == NULL && plen > 0)) {
		return SL_EINVAL;
	}
	scan_ctx c = {.db = db, .prefix = prefix, .plen = plen, .now = db->io->now_ms()};
	int rc = 0;
	/* Values are copied out under each shard's lock, then handed to fn with
	 * no lock held, so fn may call back into the store. */
	for (unsigned sh = 0; sh < SL_KD_SHARDS && rc == 0; sh++) {
		c.len = 0;
		c.now = db->io->now_ms(); /* fn may be slow: expiry as of this shard */
		sl_keydir_scan_shard(db->kd, sh, scan_collect, &c);
		if (c.err != 0) {
			rc = c.err;
			break;
		}
		for (size_t off = 0; off < c.len && rc == 0;) {
			uint32_t kl = sl_get32(c.buf + off), vl = sl_get32(c.buf + off + 4);
			rc = fn(arg, c.buf + off + 8, kl, c.buf + off + 8 + kl, vl);
			off += 8 + kl + vl;
		}
	}
	free(c.buf);
	return rc;
}

/* ---- stats -------------------------------------------------------------- */

int sl_stats_get(sl_db *db, sl_stats *out)
{
	if (db == NULL || out == NULL) {
		return SL_EINVAL;
	}
	memset(out, 0, sizeof(*out));
	sl_keydir_stats ks;
	sl_keydir_stats_get(db->kd, &ks);
	out->keys = ks.keys;
	out->tombstones = ks.tombstones;
	out->keydir_bytes = ks.bytes;
	pthread_mutex_lock(&db->seg_mu);
	out->segments = db->nsegs;
	for (size_t i = 0; i < db->nsegs; i++) {
		sl_seg *s = db->segs[i];
		uint64_t end = atomic_load(&s->end), live = atomic_load(&s->live);
		uint64_t tomb = atomic_load(&s->tomb);
		out->disk_bytes += end;
		out->live_bytes += live;
		out->tomb_bytes += tomb;
		/* end is advanced before live: a reading between the two
		 * would wrap (about 1.8e19) without the clamp */
		uint64_t used = SL_SEG_HDR_SIZE + live + tomb;
		out->dead_bytes += end > used ? end - used : 0;
	}
	pthread_mutex_unlock(&db->seg_mu);
	out->last_seq = atomic_load(&db->last_seq);
	out->synced_seq = atomic_load(&db->synced_seq);
	out->recovery_ms = db->recovery_ms;
	out->corrupt_records = __atomic_load_n(&db->n_corrupt, __ATOMIC_RELAXED);
	out->hints_loaded = db->hints_loaded;
	out->segments_scanned = db->segments_scanned;
	out->fsyncs = __atomic_load_n(&db->n_fsyncs, __ATOMIC_RELAXED);
	out->puts = __atomic_load_n(&db->n_puts, __ATOMIC_RELAXED);
	out->gets = __atomic_load_n(&db->n_gets, __ATOMIC_RELAXED);
	out->deletes = __atomic_load_n(&db->n_deletes, __ATOMIC_RELAXED);
	out->failed = atomic_load(&db->failed);
	pthread_mutex_lock(&db->cthread_mu);
	out->compactions = db->n_compactions;
	out->compact_bytes_reclaimed = db->c_reclaimed;
	out->compact_bytes_written = db->c_written;
	out->compact_bytes_read = db->c_read;
	out->last_compaction_ms = db->c_last_ms;
	out->compact_errors = db->c_errors;
	pthread_mutex_unlock(&db->cthread_mu);
	out->compact_last_error = atomic_load(&db->c_last_error);
	return SL_OK;
}
