/*
 * open.c — opening a data directory: lock, recovery, and closing it.
 *
 * Recovery rebuilds the keydir from every segment, in id order but resolving
 * by seq (db.c invariant 3), so the order segments are read in never
 * matters:
 *
 *   sealed segment, valid hint   load the hint (keys, seqs, offsets; no values)
 *   sealed segment, no/bad hint  scan its records; a bad record is counted,
 *                                logged and skipped by resynchronising on the
 *                                next valid record; then seal it again
 *                                (trim; its hint is left due for the
 *                                flusher) so the next open is fast
 *   last segment (the active)    scan; a torn or checksum-failing tail (no
 *                                valid record after it) is cut off; then it
 *                                is preallocated and mapped for appends
 *
 * Invariants:
 *  1. Only one handle holds a directory: flock(LOCK_EX) on dir/LOCK, which
 *     conflicts across processes and across handles of one process.
 *  2. last_seq after open >= every seq on disk and >= the active segment's
 *     first_seq - 1, so seqs stay strictly increasing across reopen even when
 *     the newest records were removed by compaction.
 *  3. Temporary files (*.tmp) are never part of the store: removed on open.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "hint.h"
#include "record.h"

/* fsyncs directory dir (NULL: -1, as a failure).  0 or -1. */
static int fsync_dir(const struct sl_io *io, const char *dir)
{
	int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	int rc = fd >= 0 && io->fsync(fd) == 0 ? 0 : -1;
	if (fd >= 0) {
		close(fd);
	}
	return rc;
}

/* Makes dir and its parents; a failure is logged with the path that
 * could not be made and why ("/proc/x: No such file or directory"). */
static int mkdir_p(sl_db *db, const char *dir)
{
	char *p = strdup(dir);
	if (p == NULL) {
		return SL_ENOMEM;
	}
	int rc = SL_OK;
	for (char *s = p + (p[0] != '\0');; s++) {
		if (*s == '/' || *s == '\0') {
			char c = *s;
			*s = 0;
			if (mkdir(p, 0755) == 0) {
				/* its entry durable in its parent (".": a relative
				 * first name, the default data directory), before a
				 * segment's acknowledged writes depend on it */
				char *parent = sl_db_parent_dir(p);
				if (fsync_dir(db->io, parent) != 0) {
					sl_db_log(db, "warn",
					          "fsync of the directory holding %s failed", p);
				}
				free(parent);
			} else if (errno != EEXIST) {
				sl_db_log(db, "error", "cannot create directory %s: %s", p,
				          strerror(errno));
				rc = SL_EIO;
				break;
			}
			*s = c;
			if (c == '\0') {
				break;
			}
		}
	}
	free(p);
	return rc;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* Lists segment ids (sorted) and removes temporaries (invariant 3). */
static int list_segments(sl_db *db, uint32_t **ids_out, size_t *n_out)
{
	DIR *d = opendir(db->dir);
	if (d == NULL) {
		return SL_EIO;
	}
	uint32_t *ids = NULL;
	size_t n = 0, cap = 0;
	struct dirent *e;
	int rc = SL_OK;
	for (;;) {
		/* A listing cut short by an error (EIO from a damaged
		 * directory block, ENOMEM) is no list: opened without its last
		 * segments, the store would hand out their seqs and ids again. */
		errno = 0;
		if ((e = readdir(d)) == NULL) {
			if (errno != 0) {
				sl_db_log(db, "error", "cannot list %s: %s", db->dir,
				          strerror(errno));
				rc = SL_EIO;
			}
			break;
		}
		size_t len = strlen(e->d_name);
		if (len > 4 && strcmp(e->d_name + len - 4, ".tmp") == 0 && !db->opt.read_only) {
			unlinkat(db->dirfd, e->d_name, 0);
			continue;
		}
		if (len == 15 && strcmp(e->d_name + 10, ".hint") == 0 &&
		    sl_db_is_digits(e->d_name, 10) && !db->opt.read_only) {
			/* A hint whose segment is gone (a crash between a
			 * compaction's unlinks, or its hint written before the
			 * output's rename) belongs to nothing. */
			char seg[32];
			snprintf(seg, sizeof(seg), "%.10s.seg", e->d_name);
			if (faccessat(db->dirfd, seg, F_OK, 0) != 0 && errno == ENOENT) {
				unlinkat(db->dirfd, e->d_name, 0);
			}
			continue;
		}
		if (len != 14 || strcmp(e->d_name + 10, ".seg") != 0 ||
		    !sl_db_is_digits(e->d_name, 10)) {
			continue;
		}
		unsigned long id = strtoul(e->d_name, NULL, 10);
		if (id == 0 || id >= SL_SEG_ID_MAX) {
			sl_db_log(db, "warn", "ignoring segment file %s (id out of range)",
			          e->d_name);
			continue;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			uint32_t *p = realloc(ids, cap * sizeof(*ids));
			if (p == NULL) {
				rc = SL_ENOMEM;
				break;
			}
			ids = p;
		}
		ids[n++] = (uint32_t)id;
	}
	closedir(d);
	if (rc != SL_OK) {
		free(ids);
		return rc;
	}
	if (n > 1) {
		qsort(ids, n, sizeof(*ids), cmp_u32);
	}
	*ids_out = ids;
	*n_out = n;
	return SL_OK;
}

/* ---- rebuilding the keydir ---------------------------------------------- */

typedef struct load_ctx {
	sl_db *db;
	sl_seg *seg;
	uint64_t max_seq;
	int scanned;        /* loaded by a scan, not from a hint */
	int tail_counted;   /* its lost tail is counted already (the hint's extent) */
	sl_idx_batch batch; /* index entries made shard by shard */
} load_ctx;

/* The active segment as its scan left it, to be activated (activate) once
 * every other segment has loaded: seg NULL until then. */
typedef struct act_state {
	sl_seg *seg;
	uint64_t end;
	int hdr_ok;
} act_state;

static int index_one(load_ctx *c, uint8_t type, const void *key, size_t klen, uint32_t off,
                     uint32_t size, uint64_t seq)
{
	sl_loc loc = {
	    .seg = c->seg->id, .off = off, .size = size, .tomb = type == SL_REC_DEL, .seq = seq};
	if (seq > c->max_seq) {
		c->max_seq = seq;
	}
	if (seq > c->seg->last_seq) {
		c->seg->last_seq = seq;
	}
	return sl_db_index_add(c->db, &c->batch, sl_keydir_hash(key, klen), key, klen, &loc);
}

static int hint_cb(void *arg, const sl_hint_entry *e)
{
	load_ctx *c = arg;
	sl_seg_note_ttl(c->seg, e->expire_at, e->size);
	int rc = index_one(c, e->type, e->key, e->klen, e->off, e->size, e->seq);
	if (rc == SL_OK && e->last) {
		rc = sl_db_index_flush(c->db, &c->batch); /* the keys live in the hint buffer */
	}
	return rc;
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

/* Whether [off, limit) of s is all zero, reading only what holds data: the
 * preallocated rest of an active segment is unwritten space, a hole to
 * SEEK_DATA, and reading it through the mapping would bring in (and zero)
 * every page of it.  A sealed segment has no holes: all of it is read. */
static int zero_rest(const sl_seg *s, uint64_t off, uint64_t limit)
{
	/* the page off is in, whatever SEEK_DATA says of it */
	uint64_t pos = (off | 4095u) + 1;
	if (!all_zero(s->map + off, (pos < limit ? pos : limit) - off)) {
		return 0;
	}
	while (pos < limit) {
		off_t d = lseek(s->fd, (off_t)pos, SEEK_DATA);
		if (d < 0) {
			return errno == ENXIO ? 1 : all_zero(s->map + pos, limit - pos);
		}
		if ((uint64_t)d >= limit) {
			return 1;
		}
		off_t h = lseek(s->fd, d, SEEK_HOLE);
		uint64_t to = h < 0 || (uint64_t)h > limit ? limit : (uint64_t)h;
		if (!all_zero(s->map + d, to - (uint64_t)d)) {
			return 0;
		}
		pos = to > (uint64_t)d ? to : limit;
	}
	return 1;
}

/* Scans records [header, limit) into the keydir.  Returns the end of the
 * last valid record in *end_out.  A bad record followed by valid ones is
 * corruption: counted and skipped.  A bad record with nothing valid after
 * it is a torn tail when `active` (cut off, not counted) and corruption
 * otherwise. */
static int scan_segment(load_ctx *c, uint64_t limit, int active, uint64_t *end_out)
{
	sl_db *db = c->db;
	const uint8_t *m = c->seg->map;
	uint32_t mk = SL_MAX_KEY, mv = SL_MAX_VALUE;
	uint64_t off = SL_SEG_HDR_SIZE, good_end = SL_SEG_HDR_SIZE;
	while (off < limit) {
		sl_rec r;
		size_t size;
		int d = sl_rec_decode(m + off, limit - off, mk, mv, &r, &size);
		if (d == SL_REC_OK) {
			sl_seg_note_ttl(c->seg, r.expire_at, size);
			int rc = index_one(c, r.type, r.key, r.klen, (uint32_t)off, (uint32_t)size,
			                   r.seq);
			if (rc != SL_OK) {
				return rc;
			}
			off += size;
			good_end = off;
			continue;
		}
		/* A zero header ends the data if everything after it is zero
		 * too (the preallocated rest of the active segment); zeros with
		 * records after them are damage, counted and skipped. */
		if (d == SL_REC_END && zero_rest(c->seg, off, limit)) {
			break;
		}
		uint64_t next = sl_rec_next_valid(m, (size_t)off, (size_t)limit, mk, mv);
		if (next >= limit) {
			if (!active) {
				/* one damage, one count: a cut in the middle of a
				 * record was counted by its hint's extent too */
				if (!c->tail_counted) {
					__atomic_fetch_add(&db->n_corrupt, 1, __ATOMIC_RELAXED);
				}
				atomic_store(&c->seg->corrupt, 1);
				sl_db_log(db, "warn",
				          "segment %u: bad record at offset %llu, none after it",
				          c->seg->id, (unsigned long long)off);
			} else {
				sl_db_log(db, "info",
				          "segment %u: torn tail cut at offset %llu (%llu bytes)",
				          c->seg->id, (unsigned long long)good_end,
				          (unsigned long long)(limit - good_end));
			}
			break;
		}
		__atomic_fetch_add(&db->n_corrupt, 1, __ATOMIC_RELAXED);
		atomic_store(&c->seg->corrupt, 1);
		sl_db_log(db, "warn", "segment %u: bad record at offset %llu, %llu bytes skipped",
		          c->seg->id, (unsigned long long)off, (unsigned long long)(next - off));
		off = next;
	}
	*end_out = good_end;
	return SL_OK;
}

static int load_segment_into(load_ctx *c, sl_db *db, uint32_t id, int last, uint64_t *max_seq,
                             act_state *act)
{
	int writable = !db->opt.read_only;
	sl_seg *s;
	int hdr_ok;
	int rc = sl_seg_open(db->io, db->dir, id, writable, &s, &hdr_ok);
	if (rc != SL_OK) {
		/* errno says why the file would not open (EISDIR, EACCES ...) */
		sl_db_log(db, "error", "cannot open segment file %s/%010u.seg: %s%s%s", db->dir, id,
		          sl_strerror(rc), rc == SL_EIO ? ": " : "",
		          rc == SL_EIO ? strerror(errno) : "");
		return rc;
	}
	uint64_t size = sl_seg_file_size(s);
	if (!hdr_ok && (!last || !writable)) {
		/* Its first_seq (1 now) and flags are unknown: it is kept out of
		 * the replication log (a log read from a seq below its records
		 * would start in it and skip the segments before), and 1 stays a
		 * lower bound of its seqs for compaction. */
		s->flags |= SL_SEG_COMPACTED;
	}
	if (!hdr_ok &&
	    !(last && all_zero(s->map, size < SL_SEG_HDR_SIZE ? size : SL_SEG_HDR_SIZE))) {
		__atomic_fetch_add(&db->n_corrupt, 1, __ATOMIC_RELAXED);
		sl_db_log(db, "warn", "segment %u: damaged file header", id);
	}
	pthread_mutex_lock(&db->seg_mu);
	rc = sl_db_seg_publish(db, s);
	pthread_mutex_unlock(&db->seg_mu);
	if (rc != SL_OK) {
		sl_seg_close(db->io, s);
		return rc;
	}
	c->seg = s;
	if (!last && hdr_ok) {
		rc = sl_hint_load(db->io, db->dir, id, size, SL_MAX_KEY, hint_cb, c);
		if (rc == SL_OK) {
			__atomic_fetch_add(&db->hints_loaded, 1, __ATOMIC_RELAXED);
			atomic_store(&s->end, size);
			atomic_store(&s->synced, size);
			goto done;
		}
		if (rc != SL_ENOTFOUND && rc != SL_ECORRUPT) {
			return rc;
		}
		if (rc == SL_ECORRUPT) {
			/* A hint whose checksum holds, listing records past the
			 * segment's end: the segment lost its tail (a cut at a
			 * record boundary leaves nothing else to see) */
			uint64_t hend = 0;
			if (sl_hint_extent(db->io, db->dir, id, &hend) == SL_OK && hend > size) {
				__atomic_fetch_add(&db->n_corrupt, 1, __ATOMIC_RELAXED);
				c->tail_counted = 1;
				atomic_store(&s->corrupt, 1);
				sl_db_log(
				    db, "warn",
				    "segment %u: %llu bytes, its hint file lists records up to "
				    "byte %llu: the records past the end are lost",
				    id, (unsigned long long)size, (unsigned long long)hend);
			} else {
				sl_db_log(db, "warn", "segment %u: damaged hint file, scanning",
				          id);
			}
		}
	}
	uint64_t end;
	c->scanned = 1;
	__atomic_fetch_add(&db->segments_scanned, 1, __ATOMIC_RELAXED);
	if ((rc = scan_segment(c, size, last, &end)) != SL_OK ||
	    (rc = sl_db_index_flush(db, &c->batch)) != SL_OK) { /* keys in the map */
		return rc;
	}
	if (last && writable) {
		/* activated after the others loaded (activate): a failed open
		 * leaves it untouched, and a damaged header's first_seq follows
		 * every seq found */
		*act = (act_state){.seg = s, .end = end, .hdr_ok = hdr_ok};
	} else {
		atomic_store(&s->end, end);
		atomic_store(&s->synced, end);
		if (writable && hdr_ok) {
			/* Sealed again (zero tail cut) by load_all once every
			 * segment loaded, so a refused open changes no segment;
			 * the missing hint is left due for the flusher
			 * (sl_db_seal_pending), not written inside the open:
			 * 64 MiB of 100 B records scanned and hinted took 222
			 * ms of an open of 562, a hint loaded 90-160 ms.  A
			 * crash before the flusher writes it costs the next
			 * open the same scan.  hint_due marks it until then
			 * (nothing else runs yet). */
			atomic_store(&s->hint_due, 1);
		}
	}
done:
	if (c->max_seq > *max_seq) {
		*max_seq = c->max_seq;
	}
	if (s->first_seq > 0 && s->first_seq - 1 > *max_seq) {
		*max_seq = s->first_seq - 1; /* invariant 2 */
	}
	return SL_OK;
}

/* Makes the scanned active segment the one appends go to: its first_seq
 * (damaged header) after every seq found, its torn tail cut, room
 * preallocated.  max_seq is the highest seq of every segment. */
static int activate(sl_db *db, const act_state *a, uint64_t max_seq)
{
	sl_seg *s = a->seg;
	if (!a->hdr_ok) {
		s->first_seq = max_seq + 1;
	}
	/* As much room as --segment-bytes asks, or what the disk has (down to
	 * none: the store opens, and the first write that needs room starts a
	 * segment or gets SL_ENOSPC). */
	size_t want = (size_t)db->opt.segment_bytes;
	size_t min = a->end > SL_SEG_HDR_SIZE ? (size_t)a->end : SL_SEG_HDR_SIZE;
	size_t cap = want > min ? want : min;
	int rc;
	while ((rc = sl_seg_activate(db->io, s, a->end, cap)) == SL_ENOSPC &&
	       (cap = sl_db_fit_next(cap, min)) != 0) {
	}
	if (rc == SL_OK && cap < want) {
		sl_db_log(db, "warn",
		          "disk nearly full: active segment %u preallocated %zu bytes, not %zu",
		          s->id, cap, want);
	}
	if (rc == SL_OK && !a->hdr_ok) {
		rc = sl_seg_write_header(db->io, s);
	}
	/* Its name too: a crash between a rotation's create and its directory
	 * fsync left a file this open adopts (segment.c invariant 1). */
	if (rc == SL_OK && db->io->fsync(db->dirfd) != 0) {
		rc = SL_EIO;
	}
	if (rc != SL_OK) {
		return rc;
	}
	db->active = s;
	db->active_pub = s;
	sl_db_set_room(db, s);
	return SL_OK; /* invariant 2 holds: a good header's first_seq - 1 was
	               * counted in *max_seq by its load, a new one is above it */
}

/* Loads segment id into the keydir: from its hint file, else by scanning
 * it (the last one is left in *act for activate). */
static int load_segment(sl_db *db, uint32_t id, int last, uint64_t *max_seq, act_state *act)
{
	load_ctx c = {.db = db};
	uint64_t t0 = sl_mono_ns();
	int rc = load_segment_into(&c, db, id, last, max_seq, act);
	sl_db_log(db, "debug", "segment %u%s: %s in %.1f ms", id, last ? " (active)" : "",
	          c.scanned ? "scanned" : "hint loaded", (double)(sl_mono_ns() - t0) / 1e6);
	sl_idx_batch_free(&c.batch);
	return rc;
}

/* Segments are loaded by several threads (sl_options.open_threads), each
 * taking the next segment and loading it whole.  Nothing depends on the
 * order: the keydir keeps the highest seq per key (only_if_newer) and a
 * record's bytes are accounted live only while it is the one indexed
 * (sl_db_index_flush), segments are published under seg_mu in id order,
 * and each thread keeps its own max_seq.  The active segment (always
 * scanned, never hinted) is the first job, so its scan runs beside the
 * others instead of after them (a full one took 126-170 ms of a 7-segment
 * open of 456-591 ms, alone); it is activated (activate) only once every
 * segment has loaded, so a failed open does not touch it and its first_seq
 * (damaged header) follows every seq found.  Scanned sealed segments are
 * sealed again (zero tail cut) only then too: a refused open changes no
 * segment (it only removes leftover temporaries and orphaned hints). */
typedef struct par_load {
	sl_db *db;
	const uint32_t *ids;
	size_t n, act; /* job 0 is ids[act] when act < n; then the others in order */
	act_state as;  /* written by the worker that scans ids[act] */
	_Atomic size_t next;
	_Atomic int rc;
} par_load;

typedef struct par_worker {
	par_load *pl;
	uint64_t max_seq;
	pthread_t th;
} par_worker;

static void *load_worker(void *arg)
{
	par_worker *w = arg;
	par_load *pl = w->pl;
	for (;;) {
		size_t j = atomic_fetch_add(&pl->next, 1);
		if (j >= pl->n || atomic_load(&pl->rc) != SL_OK) {
			break;
		}
		size_t i = pl->act >= pl->n ? j : j == 0 ? pl->act : j <= pl->act ? j - 1 : j;
		int rc = load_segment(pl->db, pl->ids[i], i == pl->act, &w->max_seq, &pl->as);
		if (rc != SL_OK) {
			int ok = SL_OK;
			atomic_compare_exchange_strong(&pl->rc, &ok, rc);
			break;
		}
	}
	return NULL;
}

static unsigned open_threads(const sl_db *db, size_t sealed)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned t = db->opt.open_threads ? db->opt.open_threads
	             : cpus > 4           ? 4u
	             : cpus > 1           ? (unsigned)cpus
	                                  : 1u;
	t = t > 16 ? 16 : t; /* load_all's workers */
	return sealed < t ? (sealed > 0 ? (unsigned)sealed : 1u) : t;
}

/* Loads every segment into the keydir, ids[act] (act < n) as the active
 * one, then activates it; *max_seq gets the highest seq found (or implied
 * by a header). */
static int load_all(sl_db *db, const uint32_t *ids, size_t n, size_t act, uint64_t *max_seq)
{
	par_load pl = {.db = db, .ids = ids, .n = n, .act = act};
	atomic_init(&pl.next, 0);
	atomic_init(&pl.rc, SL_OK);
	par_worker w[16];
	unsigned nt = open_threads(db, n);
	unsigned started = 1;
	for (unsigned k = 0; k < nt; k++) {
		w[k] = (par_worker){.pl = &pl, .max_seq = 0};
	}
	for (; started < nt; started++) {
		if (pthread_create(&w[started].th, NULL, load_worker, &w[started]) != 0) {
			break; /* fewer threads: the others take its share */
		}
	}
	load_worker(&w[0]);
	for (unsigned k = 1; k < started; k++) {
		pthread_join(w[k].th, NULL);
	}
	for (unsigned k = 0; k < started; k++) {
		*max_seq = w[k].max_seq > *max_seq ? w[k].max_seq : *max_seq;
	}
	int rc = atomic_load(&pl.rc);
	for (size_t i = 0; rc == SL_OK && i < db->nsegs; i++) {
		if (atomic_load(&db->segs[i]->hint_due)) { /* scanned, sealed: reseal */
			rc = sl_db_seal(db, db->segs[i], 1);
		}
	}
	if (rc == SL_OK && pl.as.seg != NULL) {
		rc = activate(db, &pl.as, *max_seq);
	}
	return rc;
}

/* ---- open / close ------------------------------------------------------- */

static int check_options(const sl_options *o)
{
	if (o->sync != SL_SYNC_NO && o->sync != SL_SYNC_EVERYSEC && o->sync != SL_SYNC_ALWAYS) {
		return SL_EINVAL;
	}
	if (o->sync_interval_ms == 0 || o->segment_bytes < 4096 ||
	    o->segment_bytes > SL_MAX_SEGMENT_BYTES) {
		return SL_EINVAL;
	}
	if (!(o->compact_dead_ratio > 0.0 && o->compact_dead_ratio <= 1.0) ||
	    (o->compact_background && o->compact_interval_ms == 0)) {
		return SL_EINVAL;
	}
	if (o->max_key_bytes == 0 || o->max_key_bytes > SL_MAX_KEY ||
	    o->max_value_bytes > SL_MAX_VALUE) {
		return SL_EINVAL;
	}
	return SL_OK;
}

static void flusher_stop(sl_db *db)
{
	if (db->flusher_started) {
		pthread_mutex_lock(&db->sync_mu);
		db->stop = 1;
		pthread_cond_signal(&db->flush_cv);
		pthread_mutex_unlock(&db->sync_mu);
		pthread_join(db->flusher, NULL);
		db->flusher_started = 0;
	}
}

static void db_free(sl_db *db)
{
	for (size_t i = 0; i < db->nsegs; i++) {
		sl_seg_close(db->io, db->segs[i]);
	}
	if (db->segtab != NULL) {
		for (size_t i = 0; i < SL_SEGTAB_TOP; i++) {
			free(atomic_load(&db->segtab[i]));
		}
		munmap((void *)db->segtab, SL_SEGTAB_TOP * sizeof(*db->segtab));
	}
	free(db->segs);
	sl_idx_batch_free(&db->apply_idx);
	sl_keydir_free(db->kd);
	if (db->lockfd >= 0) {
		close(db->lockfd); /* releases the flock */
	}
	if (db->dirfd >= 0) {
		close(db->dirfd);
	}
	pthread_mutex_destroy(&db->seg_mu);
	pthread_mutex_destroy(&db->append_mu);
	pthread_mutex_destroy(&db->sync_mu);
	pthread_cond_destroy(&db->flush_cv);
	pthread_mutex_destroy(&db->compact_mu);
	pthread_mutex_destroy(&db->seal_mu);
	pthread_mutex_destroy(&db->cthread_mu);
	pthread_cond_destroy(&db->cthread_cv);
	free(db->dir);
	free(db);
}

int sl_open(const char *dir, const sl_options *o, sl_db **out)
{
	if (dir == NULL || *dir == 0 || out == NULL) {
		return SL_EINVAL;
	}
	*out = NULL;
	sl_options def;
	if (o == NULL) {
		sl_options_init(&def);
		o = &def;
	}
	int rc = check_options(o);
	if (rc != SL_OK) {
		return rc;
	}
	sl_db *db = calloc(1, sizeof(*db));
	if (db == NULL) {
		return SL_ENOMEM;
	}
	void *tab = mmap(NULL, SL_SEGTAB_TOP * sizeof(*db->segtab), PROT_READ | PROT_WRITE,
	                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (tab == MAP_FAILED) {
		free(db);
		return SL_ENOMEM;
	}
	db->segtab = tab;
	db->opt = *o;
	db->io = o->io != NULL ? o->io : &sl_io_default;
	db->dirfd = db->lockfd = -1;
	pthread_mutex_init(&db->seg_mu, NULL);
	/* Adaptive: the appender's critical section is a memcpy and a keydir
	 * update, shorter than a futex sleep. */
	pthread_mutexattr_t ma;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
	pthread_mutex_init(&db->append_mu, &ma);
	pthread_mutexattr_destroy(&ma);
	pthread_mutex_init(&db->sync_mu, NULL);
	sl_cond_init_mono(&db->flush_cv); /* timed waits: the flusher */
	pthread_mutex_init(&db->compact_mu, NULL);
	pthread_mutex_init(&db->seal_mu, NULL);
	pthread_mutex_init(&db->cthread_mu, NULL);
	sl_cond_init_mono(&db->cthread_cv); /* timed waits: the compactor */
	if (db->opt.compact_min_bytes == 0) {
		db->opt.compact_min_bytes = db->opt.segment_bytes / 4;
	}
	atomic_store(&db->protect_seq, db->opt.compact_protect_seq);
	db->dir = strdup(dir);
	db->kd = sl_keydir_new();
	if (db->dir == NULL || db->kd == NULL) {
		rc = SL_ENOMEM;
		goto fail;
	}
	uint64_t t0 = sl_mono_ns();
	if ((rc = mkdir_p(db, dir)) != SL_OK) {
		goto fail;
	}
	db->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	char *lock = malloc(strlen(dir) + 8);
	if (db->dirfd < 0 || lock == NULL) {
		free(lock);
		rc = db->dirfd < 0 ? SL_EIO : SL_ENOMEM;
		goto fail;
	}
	strcpy(lock, dir);
	strcat(lock, "/LOCK");
	db->lockfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	free(lock);
	if (db->lockfd < 0) {
		rc = SL_EIO;
		goto fail;
	}
	if (flock(db->lockfd, LOCK_EX | LOCK_NB) != 0) { /* invariant 1 */
		rc = errno == EWOULDBLOCK ? SL_EBUSY : SL_EIO;
		goto fail;
	}

	/* A replacement store whose move-in a crash interrupted (movein.c). */
	if (db->opt.read_only && sl_move_in_pending(db->dirfd)) {
		sl_db_log(db, "error", "%s is half-way through a move-in: open it writable once",
		          dir);
		rc = SL_EBUSY;
		goto fail;
	}
	if (!db->opt.read_only && (rc = sl_move_in_finish(db->dirfd)) != SL_OK) {
		sl_db_log(db, "error", "cannot finish moving %s/.resync in: %s", dir,
		          sl_strerror(rc));
		goto fail;
	}
	/* A compaction whose inputs' removal a crash interrupted (compact.c). */
	if (db->opt.read_only && sl_compact_drop_pending(db->dirfd)) {
		sl_db_log(db, "error",
		          "%s is half-way through removing compacted segments: open it "
		          "writable once",
		          dir);
		rc = SL_EBUSY;
		goto fail;
	}
	if (!db->opt.read_only && (rc = sl_compact_drop_finish(db)) != SL_OK) {
		goto fail;
	}
	uint32_t *ids = NULL;
	size_t n = 0;
	if ((rc = list_segments(db, &ids, &n)) != SL_OK) {
		goto fail;
	}
	/* The active segment is the newest one not written by compaction
	 * (compaction outputs take fresh ids too, so it need not be the last);
	 * it is scanned beside the others and activated after them (load_all).
	 * A header that does not read is the active one's only when it is
	 * blank (a crash while the segment was created: segment.c, invariant
	 * 1).  A damaged one could be a compaction output's: activated, its
	 * first_seq became the next seq above records it holds, so the drop
	 * rule took tombstones of keys whose older puts it held.  It is
	 * loaded as a damaged sealed segment then, and appends go to a new
	 * one. */
	size_t act = n;
	for (size_t i = n; i > 0; i--) {
		uint32_t flags = 0;
		int hdr = sl_seg_peek(db->io, db->dir, ids[i - 1], &flags);
		if (hdr == 1 && (flags & SL_SEG_COMPACTED)) {
			continue;
		}
		if (hdr != 0) {
			act = i - 1; /* a log segment's header, or a blank one */
		}
		break;
	}
	uint64_t max_seq = 0;
	rc = load_all(db, ids, n, act, &max_seq);
	uint32_t next_id = n > 0 ? ids[n - 1] + 1 : 1;
	atomic_store(&db->next_id, next_id);
	free(ids);
	if (rc != SL_OK) {
		goto fail;
	}
	atomic_store(&db->last_seq, max_seq);
	atomic_store(&db->synced_seq, max_seq);
	if (db->active == NULL && !db->opt.read_only) {
		sl_seg *s;
		uint32_t id;
		rc = sl_db_take_id(db, &id);
		if (rc == SL_OK) {
			rc =
			    sl_db_seg_create_fit(db, id, max_seq + 1, (size_t)db->opt.segment_bytes,
			                         SL_SEG_HDR_SIZE, &s);
		}
		if (rc != SL_OK) {
			goto fail;
		}
		pthread_mutex_lock(&db->seg_mu);
		rc = sl_db_seg_publish(db, s);
		db->active_pub = s;
		pthread_mutex_unlock(&db->seg_mu);
		if (rc != SL_OK) {
			sl_seg_close(db->io, s);
			goto fail;
		}
		db->active = s;
		sl_db_set_room(db, s);
	}
	db->recovery_ms = (sl_mono_ns() - t0) / 1000000u;
	if (!db->opt.read_only) {
		if (pthread_create(&db->flusher, NULL, sl_db_flusher_main, db) != 0) {
			rc = SL_ENOMEM;
			goto fail;
		}
		db->flusher_started = 1;
		if ((rc = sl_compactor_start(db)) != SL_OK) {
			goto fail;
		}
	}
	*out = db;
	return SL_OK;
fail:
	flusher_stop(db); /* started when only the compactor failed to start */
	db_free(db);
	return rc;
}

int sl_swap_dir(sl_db *db, const char *other, const sl_options *o)
{
	if (db == NULL || other == NULL || o == NULL || db->opt.read_only) {
		return SL_EINVAL;
	}
	sl_options n = db->opt;
	n.sync = o->sync;
	n.sync_interval_ms = o->sync_interval_ms;
	n.segment_bytes = o->segment_bytes;
	n.compact_background = o->compact_background;
	n.compact_dead_ratio = o->compact_dead_ratio;
	n.compact_min_bytes = o->compact_min_bytes ? o->compact_min_bytes : o->segment_bytes / 4;
	n.compact_interval_ms = o->compact_interval_ms;
	if (check_options(&n) != SL_OK) {
		return SL_EINVAL;
	}
	char *nd = strdup(other);
	if (nd == NULL) {
		return SL_ENOMEM;
	}
	/* The store's own threads build paths from db->dir under one of these
	 * (sealing: seal_mu; compaction: compact_mu; rotation: append_mu), so
	 * none uses the old name while the directories trade places. */
	pthread_mutex_lock(&db->seal_mu);
	pthread_mutex_lock(&db->compact_mu);
	pthread_mutex_lock(&db->append_mu);
	int rc = SL_OK;
	if (renameat2(AT_FDCWD, db->dir, AT_FDCWD, other, RENAME_EXCHANGE) != 0) {
		rc = errno == ENOENT ? SL_ENOTFOUND : SL_EIO;
		free(nd);
	} else {
		/* Both entries changed: make both parents durable (one when they
		 * share it). */
		char *p1 = sl_db_parent_dir(other), *p2 = sl_db_parent_dir(db->dir);
		int two = p2 != NULL && p1 != NULL && strcmp(p1, p2) != 0;
		int unsynced = fsync_dir(db->io, p1) != 0 || (two && fsync_dir(db->io, p2) != 0);
		/* Not known durable: traded back, so that the caller, told
		 * SL_EIO, finds both where they were.  Reported done, a power
		 * loss could bring the old store back under the caller's name
		 * after the caller had counted the new one durable. */
		if (unsynced &&
		    renameat2(AT_FDCWD, db->dir, AT_FDCWD, other, RENAME_EXCHANGE) == 0) {
			fsync_dir(db->io, p1);
			if (two) {
				fsync_dir(db->io, p2);
			}
			sl_db_log(db, "error",
			          "fsync of the parent directory of %s failed: the directories "
			          "are traded back",
			          other);
			rc = SL_EIO;
			free(nd);
		} else if (unsynced) {
			sl_db_log(db, "warn",
			          "fsync of the parent directory of %s failed, and trading back "
			          "failed too: the exchange stands",
			          other);
		}
		free(p1);
		free(p2);
	}
	if (rc == SL_OK) {
		free(db->dir);
		db->dir = nd;
		pthread_mutex_lock(&db->sync_mu);
		/* cthread_mu too (a leaf lock): the compactor reads its
		 * interval under it alone */
		pthread_mutex_lock(&db->cthread_mu);
		db->opt = n;
		pthread_mutex_unlock(&db->cthread_mu);
		if (db->active != NULL) {
			sl_db_set_room(db, db->active); /* against the new segment_bytes */
		}
		pthread_cond_signal(&db->flush_cv); /* the new sync interval applies now */
		pthread_mutex_unlock(&db->sync_mu);
	}
	pthread_mutex_unlock(&db->append_mu);
	pthread_mutex_unlock(&db->compact_mu);
	pthread_mutex_unlock(&db->seal_mu);
	if (rc != SL_OK) {
		return rc;
	}
	if (!n.compact_background && db->compactor_started) {
		sl_compactor_stop(db);
	} else if (n.compact_background && db->compactor_started) {
		pthread_mutex_lock(&db->cthread_mu);
		pthread_cond_signal(&db->cthread_cv); /* the new interval applies now */
		pthread_mutex_unlock(&db->cthread_mu);
	} else if (n.compact_background) {
		pthread_mutex_lock(&db->cthread_mu);
		db->compact_stop = 0;
		pthread_mutex_unlock(&db->cthread_mu);
		/* The directories are exchanged by now: a compactor that cannot
		 * start is logged, not reported as a failed swap (the caller
		 * would take the new store for the old one). */
		if (sl_compactor_start(db) != SL_OK) {
			sl_db_log(db, "warn",
			          "background compaction could not start; "
			          "sl_compact still works");
		}
	}
	return rc;
}

void sl_close(sl_db *db)
{
	if (db == NULL) {
		return;
	}
	sl_compactor_stop(db);
	flusher_stop(db);
	if (db->active != NULL && !atomic_load(&db->failed)) {
		/* The flusher may have stopped with a rotation not yet sealed:
		 * seal now so the next open finds every hint. */
		sl_db_seal_pending(db, 0);
	}
	if (db->active != NULL && !atomic_load(&db->failed)) {
		sl_db_sync_all(db);
		/* Drop the preallocated tail so the directory shows real sizes;
		 * the next open preallocates again. */
		if (sl_seg_trim(db->io, db->active) == SL_OK) {
			db->io->fsync(db->active->fd);
		}
	}
	db_free(db);
}
