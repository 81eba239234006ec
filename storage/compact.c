/*
 * compact.c — reclaiming space: sealed segments are rewritten keeping only
 * the records the keydir still points at, small ones merged together.
 *
 * Why here and like this: a log that only grows is a toy, and every node
 * compacts its own segments (DESIGN.md §2).  Reads and writes go on during a
 * run: compaction reads its inputs through their mappings, writes outputs that
 * nobody sees yet, and touches the keydir one entry at a time.
 *
 * Visibility order of one run (tests cite these numbers):
 *  1. Live records are copied into fresh outputs NNNNNNNNNN.seg.tmp
 *     (preallocated, mapped; ids from the same counter as rotation).
 *  2. Each output is trimmed, its header rewritten (lowest seq held, flag
 *     SL_SEG_COMPACTED) and fdatasync'd.
 *  3. Its hint NNNNNNNNNN.hint is written (.tmp, fsync, rename, fsync dir).
 *  4. NNNNNNNNNN.seg.tmp is renamed to .seg; the directory is fsync'd.
 *  4b. The log is synced (a record left out for a newer version must not go
 *     while that version is only in the page cache), then the inputs' ids
 *     are written to DROPPING (temp, fsync, rename, fsync dir); a run that
 *     cannot write it is abandoned here, outputs removed.
 *  5. Only then are outputs published and keydir entries moved to them,
 *     compare-and-swap on location (a concurrent overwrite wins).
 *  6. Tombstones and expired records that can be dropped are removed from the
 *     keydir, again only if the entry is still exactly theirs.  An expired
 *     put that cannot be dropped yet is copied as a tombstone with its seq
 *     (its entry becomes one): it still hides older values of its key.
 *  7. Inputs are unpublished, a keydir barrier waits out every reader that
 *     could still be copying from them; they are unlinked, hints with them,
 *     the directory fsync'd, and DROPPING removed (kept when an unlink
 *     failed).  An open that finds DROPPING finishes those unlinks before
 *     it lists the segments (sl_compact_drop_finish), so the inputs go all
 *     together or not at all.
 * A crash before 4 leaves only *.tmp files and hints without segments, both
 * removed at open.  A crash after 4 and before 4b's rename leaves outputs
 * beside their inputs: records with equal seqs, harmless since the highest
 * seq wins; after it, the inputs go at the next open.
 *
 * Dropping: a tombstone, or an expired record, with seq T may be dropped
 * only when every segment that stays (not an input of this run) holds seqs
 * > T only (a segment's first_seq bounds its seqs from below: format.h) —
 * then no older value of its key survives anywhere to be resurrected at the
 * next open.  The inputs, which may hold such older values, go all at once
 * (7): a crash between two unlinks once left an input holding a put whose
 * tombstone had gone with an earlier-unlinked one.
 *
 * Never compacted: the active segment, unsealed segments, segments holding a
 * seq >= protect_seq (the replication backlog), segments found corrupt (kept
 * as evidence; their bad records are never served).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "hint.h"
#include "record.h"

typedef struct move {
	uint32_t in_seg, in_off, out_off, size;
	uint32_t out_size; /* size in the output: a tombstone's, for an expired put kept */
	int out_tomb;      /* the output record is a tombstone */
} move;

typedef struct output {
	sl_seg *s;
	uint64_t min_seq, max_seq;
	move *moves;
	size_t nmoves, capmoves;
	int renamed;
} output;

typedef struct run {
	sl_db *db;
	sl_seg **in;
	size_t nin;
	output *out;
	size_t nout;
	move *drops; /* in_seg/in_off/size of records dropped (out_off unused) */
	size_t ndrops, capdrops;
	uint64_t keep_min_seq; /* lowest first_seq among segments that stay */
	uint64_t bytes_read, bytes_written;
} run;

static uint64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int push_move(move **v, size_t *n, size_t *cap, move m)
{
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 1024;
		move *p = realloc(*v, c * sizeof(*p));
		if (p == NULL) {
			return SL_ENOMEM;
		}
		*v = p;
		*cap = c;
	}
	(*v)[(*n)++] = m;
	return SL_OK;
}

/* Unlinks segment id's file (with `suffix`) and its hint: 0, or -1 (logged)
 * when one is still there; a missing one counts as removed.  Discarded
 * outputs ignore the result (a file left is a duplicate or an orphan hint,
 * both harmless); a run's inputs do not (DROPPING stays). */
static int unlink_files(sl_db *db, uint32_t id, const char *suffix)
{
	const char *sfx[] = {suffix, ".hint"};
	int rc = 0;
	for (int k = 0; k < 2; k++) {
		char *f = sl_seg_path(db->dir, id, sfx[k]);
		if (f == NULL || (db->io->unlink(f) != 0 && errno != ENOENT)) {
			sl_db_log(db, "error", "cannot remove %s: %s", f ? f : "a segment",
			          strerror(errno));
			rc = -1;
		}
		free(f);
	}
	return rc;
}

static int new_output(run *r, size_t need)
{
	sl_db *db = r->db;
	output *o = realloc(r->out, (r->nout + 1) * sizeof(*o));
	if (o == NULL) {
		return SL_ENOMEM;
	}
	r->out = o;
	o = &r->out[r->nout];
	memset(o, 0, sizeof(*o));
	size_t cap = (size_t)db->opt.segment_bytes;
	if (cap < SL_SEG_HDR_SIZE + need) {
		cap = SL_SEG_HDR_SIZE + need;
	}
	uint32_t id;
	int rc = sl_db_take_id(db, &id);
	if (rc != SL_OK) {
		sl_db_log(db, "error", "compaction: the store has used all %u segment ids",
		          SL_SEG_ID_MAX - 1);
		return rc;
	}
	rc = sl_seg_create_as(db->io, db->dir, db->dirfd, id, 1, cap, ".tmp", SL_SEG_COMPACTED,
	                      &o->s);
	if (rc != SL_OK) {
		return rc;
	}
	o->min_seq = UINT64_MAX;
	r->nout++;
	return SL_OK;
}

/* Step 1 for one record at `off` of `in` whose key is known live-or-not by
 * the keydir: copy it, drop it (see "Dropping"), or skip it when dead. */
static int take_record(run *r, sl_seg *in, uint64_t off, uint64_t now)
{
	sl_db *db = r->db;
	uint64_t end = atomic_load(&in->end);
	sl_rec rec;
	size_t size;
	if (sl_rec_decode(in->map + off, end - off, SL_MAX_KEY, SL_MAX_VALUE, &rec, &size) !=
	    SL_REC_OK) {
		/* Keep a damaged segment as it is: its bad record is never
		 * served, and deleting it would hide the evidence. */
		atomic_store(&in->corrupt, 1);
		sl_db_log(db, "warn", "compaction: segment %u has a bad record at %llu; left alone",
		          in->id, (unsigned long long)off);
		return SL_ECORRUPT;
	}
	r->bytes_read += size;
	int expired = rec.type == SL_REC_PUT && rec.expire_at != 0 && rec.expire_at <= now;
	move m = {in->id, (uint32_t)off, 0, (uint32_t)size, (uint32_t)size, rec.type == SL_REC_DEL};
	if ((rec.type == SL_REC_DEL || expired) && rec.seq < r->keep_min_seq) {
		return push_move(&r->drops, &r->ndrops, &r->capdrops, m);
	}
	/* An expired put that may not go yet (an older value of its key may
	 * be in a segment that stays) becomes a tombstone with its seq: it
	 * still hides that value, and its value's bytes are reclaimed. */
	size_t osize = expired ? sl_rec_size(rec.klen, 0) : size;
	output *o = r->nout ? &r->out[r->nout - 1] : NULL;
	int rc;
	if (o == NULL || atomic_load(&o->s->end) + osize > o->s->cap) {
		if ((rc = new_output(r, osize)) != SL_OK) {
			return rc;
		}
		o = &r->out[r->nout - 1];
	}
	uint64_t oend = atomic_load(&o->s->end);
	if (expired) {
		sl_rec_encode(o->s->map + oend, SL_REC_DEL, rec.seq, 0, rec.key, rec.klen, NULL, 0);
		m.out_size = (uint32_t)osize;
		m.out_tomb = 1;
	} else {
		memcpy(o->s->map + oend, in->map + off, size);
		sl_seg_note_ttl(o->s, rec.expire_at, size);
	}
	atomic_store(&o->s->end, oend + osize);
	m.out_off = (uint32_t)oend;
	o->min_seq = rec.seq < o->min_seq ? rec.seq : o->min_seq;
	o->max_seq = rec.seq > o->max_seq ? rec.seq : o->max_seq;
	r->bytes_written += osize;
	return push_move(&o->moves, &o->nmoves, &o->capmoves, m);
}

typedef struct hint_walk {
	run *r;
	sl_seg *in;
	uint64_t now;
} hint_walk;

static int hint_entry_cb(void *arg, const sl_hint_entry *e)
{
	hint_walk *w = arg;
	sl_db *db = w->r->db;
	if (atomic_load_explicit(&db->compact_stop, memory_order_relaxed)) {
		return SL_EBUSY; /* closing: abandon */
	}
	if (!sl_keydir_is_at(db->kd, e->key, e->klen, w->in->id, e->off)) {
		return SL_OK; /* dead: its bytes are never even read */
	}
	return take_record(w->r, w->in, e->off, w->now);
}

/* Step 1 for one input: copy what the keydir still points at.  The input's
 * hint says where every record is and whose it is, so dead records (most of
 * a segment worth compacting) are skipped without reading them; without a
 * usable hint, the segment is scanned. */
static int copy_input(run *r, sl_seg *in, uint64_t now)
{
	sl_db *db = r->db;
	uint64_t end = atomic_load(&in->end);
	hint_walk w = {r, in, now};
	int rc = sl_hint_load(db->io, db->dir, in->id, end, SL_MAX_KEY, hint_entry_cb, &w);
	if (rc != SL_ENOTFOUND && rc != SL_ECORRUPT) {
		return rc; /* SL_OK, or a failure of take_record / the stop flag */
	}
	for (uint64_t off = SL_SEG_HDR_SIZE; off < end;) {
		if (atomic_load_explicit(&db->compact_stop, memory_order_relaxed)) {
			return SL_EBUSY;
		}
		sl_rec rec;
		size_t size;
		if (sl_rec_decode(in->map + off, end - off, SL_MAX_KEY, SL_MAX_VALUE, &rec,
		                  &size) != SL_REC_OK) {
			return take_record(r, in, off, now); /* reports the damage */
		}
		if (sl_keydir_is_at(db->kd, rec.key, rec.klen, in->id, (uint32_t)off) &&
		    (rc = take_record(r, in, off, now)) != SL_OK) {
			return rc;
		}
		off += size;
	}
	return SL_OK;
}

/* Steps 2-4 for every output. */
static int finish_outputs(run *r)
{
	sl_db *db = r->db;
	const struct sl_io *io = db->io;
	for (size_t i = 0; i < r->nout; i++) {
		output *o = &r->out[i];
		sl_seg *s = o->s;
		s->first_seq = o->min_seq == UINT64_MAX ? 1 : o->min_seq;
		s->last_seq = o->max_seq;
		int rc = sl_seg_trim(io, s);
		if (rc == SL_OK) {
			rc = sl_seg_write_header(io, s); /* pwrite + fdatasync */
		}
		if (rc == SL_OK && io->fsync(s->fd) != 0) {
			rc = SL_EIO;
		}
		if (rc == SL_OK) {
			rc = sl_hint_write(io, db->dir, db->dirfd, s, SL_MAX_KEY, SL_MAX_VALUE);
		}
		if (rc != SL_OK) {
			return rc;
		}
	}
	for (size_t i = 0; i < r->nout; i++) {
		output *o = &r->out[i];
		char *tmp = sl_seg_path(db->dir, o->s->id, ".seg.tmp");
		char *fin = sl_seg_path(db->dir, o->s->id, ".seg");
		int ok = tmp != NULL && fin != NULL && io->rename(tmp, fin) == 0;
		free(tmp);
		free(fin);
		if (!ok) {
			return SL_EIO;
		}
		o->renamed = 1;
	}
	return io->fsync(db->dirfd) == 0 ? SL_OK : SL_EIO;
}

/* Removes an abandoned run's outputs, whatever step they reached. */
static void discard_outputs(run *r)
{
	sl_db *db = r->db;
	for (size_t i = 0; i < r->nout; i++) {
		output *o = &r->out[i];
		int rc = unlink_files(db, o->s->id, o->renamed ? ".seg" : ".seg.tmp");
		if (rc != SL_OK && o->renamed) {
			/* A renamed output left on disk is a segment the next open
			 * loads, which this handle does not know: a later run would
			 * drop a tombstone that still hides one of its older values,
			 * and that value would come back at the next open.  Stop
			 * here: writes and compaction wait for a reopen, which loads
			 * it (highest seq wins) with every tombstone still in place. */
			sl_db_fail(db, SL_EIO, "removing an abandoned compaction output");
		}
		sl_seg_close(db->io, o->s);
		o->s = NULL;
	}
}

static int rec_loc(sl_db *db, uint32_t seg, uint32_t off, uint32_t size, sl_rec *rec, sl_loc *loc)
{
	sl_seg *s = sl_db_seg(db, seg);
	if (s == NULL ||
	    sl_rec_decode_header(s->map + off, size, SL_MAX_KEY, SL_MAX_VALUE, rec) != SL_REC_OK) {
		return SL_ECORRUPT;
	}
	rec->key = s->map + off + SL_REC_HDR_SIZE;
	*loc = (sl_loc){
	    .seg = seg, .off = off, .size = size, .tomb = rec->type == SL_REC_DEL, .seq = rec->seq};
	return SL_OK;
}

/* Steps 5-6. */
static void switch_keydir(run *r)
{
	sl_db *db = r->db;
	pthread_mutex_lock(&db->seg_mu);
	for (size_t i = 0; i < r->nout; i++) {
		sl_seg *s = r->out[i].s;
		s->writable = 0;
		atomic_store(&s->synced, atomic_load(&s->end));
		atomic_store(&s->sealed, 1);
		sl_db_seg_publish_held(db, s); /* room reserved before the run committed */
	}
	pthread_mutex_unlock(&db->seg_mu);
	for (size_t i = 0; i < r->nout; i++) {
		output *o = &r->out[i];
		for (size_t j = 0; j < o->nmoves; j++) {
			move *m = &o->moves[j];
			sl_rec rec;
			sl_loc from, to;
			if (rec_loc(db, m->in_seg, m->in_off, m->size, &rec, &from) != SL_OK) {
				continue;
			}
			to = from;
			to.seg = o->s->id;
			to.off = m->out_off;
			to.size = m->out_size;
			to.tomb = m->out_tomb;
			/* counted before the swap: a put of the key right after it
			 * takes `to` off the output's count, which then went below
			 * zero for a moment (stats showed ~1.8e19 live bytes) */
			sl_db_account(db, &to, +1);
			if (sl_keydir_cas(db->kd, sl_keydir_hash(rec.key, rec.klen), rec.key,
			                  rec.klen, &from, &to)) {
				sl_db_account(db, &from, -1);
			} else {
				sl_db_account(db, &to, -1);
			}
		}
	}
	for (size_t j = 0; j < r->ndrops; j++) {
		move *m = &r->drops[j];
		sl_rec rec;
		sl_loc from;
		if (rec_loc(db, m->in_seg, m->in_off, m->size, &rec, &from) != SL_OK) {
			continue;
		}
		if (sl_keydir_remove(db->kd, sl_keydir_hash(rec.key, rec.klen), rec.key, rec.klen,
		                     &from)) {
			sl_db_account(db, &from, -1);
		}
	}
}

#define DROP_MARK "DROPPING"

/* db->dir/name (malloc'd) or NULL. */
static char *dir_file(const sl_db *db, const char *name)
{
	size_t n = strlen(db->dir) + strlen(name) + 2;
	char *p = malloc(n);
	if (p != NULL) {
		snprintf(p, n, "%s/%s", db->dir, name);
	}
	return p;
}

/* Writes the ids of the run's inputs to DROP_MARK (temp, fsync, rename,
 * fsync dir): one id a line.  SL_OK once renamed; an error only when no
 * mark was left. */
static int drop_mark_write(sl_db *db, const run *r)
{
	const struct sl_io *io = db->io;
	char *tmp = dir_file(db, DROP_MARK ".tmp"), *fin = dir_file(db, DROP_MARK);
	char *text = malloc(r->nin * 12 + 1);
	int rc = tmp && fin && text ? SL_OK : SL_ENOMEM;
	size_t len = 0;
	for (size_t i = 0; rc == SL_OK && i < r->nin; i++) {
		len += (size_t)sprintf(text + len, "%u\n", r->in[i]->id);
	}
	int fd = rc == SL_OK ? io->open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
	if (rc == SL_OK && fd < 0) {
		rc = SL_EIO;
	}
	if (rc == SL_OK && (io->pwrite(fd, text, len, 0) != (ssize_t)len || io->fsync(fd) != 0)) {
		rc = SL_EIO;
	}
	if (fd >= 0) {
		io->close(fd);
	}
	if (rc == SL_OK && io->rename(tmp, fin) != 0) {
		rc = SL_EIO;
	}
	if (rc != SL_OK && tmp != NULL) {
		io->unlink(tmp); /* no mark: the caller may abandon the run */
	} else if (io->fsync(db->dirfd) != 0) {
		/* renamed: the mark is there and the run must go on (its
		 * outputs may not be discarded under it) */
		sl_db_log(db, "warn", "compaction: fsync of the directory after %s failed",
		          DROP_MARK);
	}
	free(text);
	free(tmp);
	free(fin);
	return rc;
}

int sl_compact_drop_pending(int dirfd)
{
	return faccessat(dirfd, DROP_MARK, F_OK, 0) == 0;
}

int sl_compact_drop_finish(sl_db *db)
{
	char *fin = dir_file(db, DROP_MARK);
	if (fin == NULL) {
		return SL_ENOMEM;
	}
	int fd = db->io->open(fin, O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0) {
		free(fin);
		return errno == ENOENT ? SL_OK : SL_EIO;
	}
	struct stat st;
	char *buf = NULL;
	ssize_t n = -1;
	/* ids up to SL_SEG_ID_MAX - 1 (db.h), at most 11 bytes each, one for
	 * each input of a run */
	if (fstat(fd, &st) == 0 && st.st_size < (off_t)(64u << 20) &&
	    (buf = malloc((size_t)st.st_size + 1)) != NULL) {
		n = 0;
		while (n < st.st_size) {
			ssize_t k = db->io->pread(fd, buf + n, (size_t)(st.st_size - n), n);
			if (k <= 0) {
				n = -1;
				break;
			}
			n += k;
		}
	}
	db->io->close(fd);
	if (n < 0) {
		free(buf);
		free(fin);
		return SL_EIO;
	}
	buf[n] = '\0';
	size_t dropped = 0;
	int rc = SL_OK;
	for (char *p = buf, *e; rc == SL_OK && *p != '\0'; p = e) {
		unsigned long id = strtoul(p, &e, 10);
		if (e == p || *e != '\n' || id == 0 || id >= SL_SEG_ID_MAX) {
			sl_db_log(db, "error", "%s is damaged; not opening", fin);
			rc = SL_ECORRUPT;
			break;
		}
		e++;
		if (unlink_files(db, (uint32_t)id, ".seg") != 0) {
			rc = SL_EIO; /* the mark stays: the next open tries again */
		}
		dropped++;
	}
	free(buf);
	if (rc != SL_OK) {
		free(fin);
		return rc;
	}
	rc = db->io->fsync(db->dirfd) == 0 && db->io->unlink(fin) == 0 &&
	             db->io->fsync(db->dirfd) == 0
	         ? SL_OK
	         : SL_EIO;
	sl_db_log(db, "info", "finished a compaction's removal of %zu segments", dropped);
	free(fin);
	return rc;
}

/* Step 7. */
static void drop_inputs(run *r)
{
	sl_db *db = r->db;
	pthread_mutex_lock(&db->seg_mu);
	for (size_t i = 0; i < r->nin; i++) {
		sl_db_seg_unpublish(db, r->in[i]);
	}
	pthread_mutex_unlock(&db->seg_mu);
	/* The appender moves live-byte counts of the segment an overwritten
	 * entry pointed at, under append_mu but after its keydir update: wait
	 * it out too, then every reader (the barrier). */
	pthread_mutex_lock(&db->append_mu);
	pthread_mutex_unlock(&db->append_mu);
	sl_keydir_barrier(db->kd);
	/* DROPPING lists them (compact_once wrote it before the switch); it
	 * stays when one could not be removed, for the next open to finish */
	int left = 0;
	for (size_t i = 0; i < r->nin; i++) {
		left |= unlink_files(db, r->in[i]->id, ".seg") != 0;
	}
	char *fin = dir_file(db, DROP_MARK);
	if (left || db->io->fsync(db->dirfd) != 0 || fin == NULL || db->io->unlink(fin) != 0) {
		sl_db_log(db, "warn", "compaction: %s kept; the next open finishes the removal",
		          DROP_MARK);
	}
	db->io->fsync(db->dirfd);
	free(fin);
	for (size_t i = 0; i < r->nin; i++) {
		sl_seg_close(db->io, r->in[i]);
	}
}

static void run_free(run *r)
{
	for (size_t i = 0; i < r->nout; i++) {
		free(r->out[i].moves);
	}
	free(r->out);
	free(r->drops);
	free(r->in);
}

/* Chooses inputs and marks them `compacting`.  full: every sealed segment
 * with an id below `below` (those that existed when sl_compact began, so a
 * run's own outputs are not taken again); else those past the dead ratio,
 * and small ones when there are at least two to merge. */
static int pick(sl_db *db, int full, uint32_t below, run *r)
{
	uint64_t protect = atomic_load(&db->protect_seq);
	uint64_t now = db->io->now_ms();
	uint64_t min_bytes = db->opt.compact_min_bytes;
	uint64_t budget = 8 * db->opt.segment_bytes, taken = 0;
	size_t nsmall = 0;
	uint64_t small_need = 0; /* live + tombstone bytes of the small ones */
	pthread_mutex_lock(&db->seg_mu);
	r->in = calloc(db->nsegs ? db->nsegs : 1, sizeof(*r->in));
	if (r->in == NULL) {
		pthread_mutex_unlock(&db->seg_mu);
		return SL_ENOMEM;
	}
	/* The two lowest first_seqs (the lowest one's holder): a segment
	 * whose last seq is below every other segment's first_seq holds only
	 * tombstones the drop rule takes, compacted alone ("Dropping"). */
	uint64_t min1 = UINT64_MAX, min2 = UINT64_MAX;
	size_t min1_at = SIZE_MAX;
	for (size_t i = 0; i < db->nsegs; i++) {
		uint64_t f = db->segs[i]->first_seq;
		if (f < min1) {
			min2 = min1;
			min1 = f;
			min1_at = i;
		} else if (f < min2) {
			min2 = f;
		}
	}
	int merge_small = 0;
	for (int pass = 0; pass < 2; pass++) {
		if (pass == 1) {
			/* Merging pays only if the small ones' live bytes fit in
			 * fewer segments than there are small ones. */
			uint64_t seg = db->opt.segment_bytes;
			merge_small = nsmall >= 2 && (small_need + seg - 1) / seg < nsmall;
		}
		for (size_t i = 0; i < db->nsegs && taken < budget; i++) {
			sl_seg *s = db->segs[i];
			if (s == db->active_pub || !atomic_load(&s->sealed) ||
			    atomic_load(&s->hint_due) || atomic_load(&s->corrupt) ||
			    atomic_load(&s->compacting) || atomic_load(&s->pins) > 0 ||
			    (protect != 0 && s->last_seq >= protect)) {
				continue;
			}
			uint64_t size = atomic_load(&s->end) - SL_SEG_HDR_SIZE;
			uint64_t need = atomic_load(&s->live) + atomic_load(&s->tomb);
			uint64_t dead = size > need ? size - need : 0;
			/* Expired records are dead too, though the keydir still
			 * points at them (a get skips them): once all of this
			 * segment's have expired, at least their bytes are. */
			uint64_t ttl = atomic_load(&s->ttl_bytes);
			if (ttl > dead && now >= atomic_load(&s->ttl_last)) {
				dead = ttl < size ? ttl : size;
			}
			/* Tombstones that hide nothing any more are dead too: a
			 * segment of them (the output of runs that had to keep
			 * them) was never picked again, so a delete-heavy store's
			 * tombstones, and the keydir's entries for them, grew for
			 * good, every later one kept behind it. */
			uint64_t others_min = i == min1_at ? min2 : min1;
			if (s->last_seq < others_min) {
				uint64_t t = atomic_load(&s->tomb);
				dead = dead + t < size ? dead + t : size;
			}
			int small = size < min_bytes;
			int want;
			if (pass == 0) { /* count the small ones first */
				nsmall += small;
				small_need += small ? need : 0;
				continue;
			}
			if (full) {
				/* Everything that existed, unless it cannot shrink:
				 * no dead bytes, no tombstone, no expired record
				 * (some TTL record's time has passed), not small. */
				uint64_t first = atomic_load(&s->ttl_first);
				want = s->id < below && (dead > 0 || atomic_load(&s->tomb) > 0 ||
				                         (first != 0 && now >= first) || small);
			} else {
				want = (dead > 0 && (double)dead >= db->opt.compact_dead_ratio *
				                                        (double)size) ||
				       (small && merge_small);
			}
			if (want) {
				atomic_store(&s->compacting, 1);
				r->in[r->nin++] = s;
				taken += size;
			}
		}
	}
	/* The lowest seq any staying segment may hold (see "Dropping"). */
	r->keep_min_seq = atomic_load(&db->last_seq) + 1;
	for (size_t i = 0; i < db->nsegs; i++) {
		sl_seg *s = db->segs[i];
		if (!atomic_load(&s->compacting) && s->first_seq < r->keep_min_seq) {
			r->keep_min_seq = s->first_seq;
		}
	}
	pthread_mutex_unlock(&db->seg_mu);
	return SL_OK;
}

/* One run: pick, copy, make durable, switch, drop.  *did: inputs taken. */
/* A run that failed, for the stats. */
static void count_error(sl_db *db, int rc)
{
	pthread_mutex_lock(&db->cthread_mu);
	db->c_errors++;
	pthread_mutex_unlock(&db->cthread_mu);
	atomic_store(&db->c_last_error, rc);
}

static int compact_once(sl_db *db, int full, uint32_t below, size_t *did)
{
	run r = {.db = db};
	*did = 0;
	if (atomic_load(&db->failed) != 0) {
		return SL_EFAILED; /* see discard_outputs: nothing moves until a reopen */
	}
	/* An earlier run's kept DROPPING (an input it could not remove) is
	 * finished first: this run's own mark would replace it, and that
	 * input, unlisted, would come back at the next open with puts whose
	 * tombstones the earlier run dropped.  Its segments are closed and
	 * out of the index already: only files are left. */
	if (sl_compact_drop_pending(db->dirfd)) {
		int drc = sl_compact_drop_finish(db);
		if (drc != SL_OK) {
			sl_db_log(db, "error",
			          "compaction: cannot finish an earlier run's removal (%s): %s; no "
			          "compaction until it can",
			          DROP_MARK, sl_strerror(drc));
			count_error(db, drc);
			return drc;
		}
	}
	int rc = pick(db, full, below, &r);
	if (rc != SL_OK || r.nin == 0) {
		run_free(&r);
		return rc;
	}
	*did = r.nin;
	uint64_t now = db->io->now_ms();
	for (size_t i = 0; i < r.nin && rc == SL_OK; i++) {
		rc = copy_input(&r, r.in[i], now);
	}
	if (rc == SL_OK) {
		rc = finish_outputs(&r);
	}
	if (rc == SL_OK) {
		/* A record was left out because the index held a newer version
		 * of its key, which may still be only in the active segment's
		 * page cache: made durable before the input can go, or a crash
		 * would lose both versions (the older one acknowledged). */
		rc = sl_sync_now(db);
	}
	if (rc == SL_OK) {
		/* the outputs' room in the segment table, before the run commits:
		 * switch_keydir must not find it missing after the inputs are
		 * marked for removal */
		pthread_mutex_lock(&db->seg_mu);
		for (size_t i = 0; i < r.nout && rc == SL_OK; i++) {
			rc = sl_db_seg_reserve(db, r.out[i].s->id, r.nout);
		}
		if (rc == SL_OK) {
			db->seg_held = r.nout; /* kept free by other publishes */
		}
		pthread_mutex_unlock(&db->seg_mu);
	}
	if (rc == SL_OK) {
		/* the inputs' removal recorded before anything changes: a run
		 * that cannot record it changes nothing (step 7) */
		rc = drop_mark_write(db, &r);
	}
	if (rc != SL_OK) {
		pthread_mutex_lock(&db->seg_mu);
		db->seg_held = 0; /* the outputs' slots, if held: no longer */
		pthread_mutex_unlock(&db->seg_mu);
		discard_outputs(&r);
		for (size_t i = 0; i < r.nin; i++) {
			atomic_store(&r.in[i]->compacting, 0);
		}
		if (rc != SL_EBUSY && rc != SL_ECORRUPT) {
			/* a full disk fails every run, once a compact_interval_ms:
			 * one line per 10 s (stats compact_errors count them all) */
			uint64_t held;
			if (sl_db_log_due(&db->abandon_log, &held)) {
				sl_db_log(db, "error",
				          "compaction abandoned: %s (store unchanged; %llu more "
				          "since the last such line)",
				          sl_strerror(rc), (unsigned long long)held);
			}
			count_error(db, rc);
		}
		run_free(&r);
		return rc;
	}
	switch_keydir(&r);
	uint64_t in_bytes = 0;
	for (size_t i = 0; i < r.nin; i++) {
		in_bytes += atomic_load(&r.in[i]->end);
	}
	uint64_t out_bytes = 0;
	for (size_t i = 0; i < r.nout; i++) {
		out_bytes += atomic_load(&r.out[i].s->end);
	}
	drop_inputs(&r);
	pthread_mutex_lock(&db->cthread_mu);
	db->n_compactions++;
	db->c_read += r.bytes_read;
	db->c_written += out_bytes;
	db->c_reclaimed += in_bytes > out_bytes ? in_bytes - out_bytes : 0;
	db->c_last_ms = wall_ms();
	pthread_mutex_unlock(&db->cthread_mu);
	sl_db_log(db, "info", "compacted %zu segments (%llu bytes) into %zu (%llu bytes)", r.nin,
	          (unsigned long long)in_bytes, r.nout, (unsigned long long)out_bytes);
	run_free(&r);
	return SL_OK;
}

int sl_compact(sl_db *db)
{
	if (db == NULL) {
		return SL_EINVAL;
	}
	if (db->opt.read_only) {
		return SL_EREADONLY;
	}
	/* Segments sealed by now are what "full" covers; the flusher seals
	 * asynchronously, so wait for it first (and write due hints). */
	sl_db_seal_pending(db, 0);
	pthread_mutex_lock(&db->compact_mu);
	uint32_t below = atomic_load(&db->next_id);
	int rc;
	size_t did;
	/* A run that finds a bad record is abandoned whole and marks its
	 * segment corrupt, which no later run takes: go on with the others
	 * (it stopped there, and said OK having compacted nothing). */
	do { /* in runs of a bounded size, until every older segment is done */
		rc = compact_once(db, 1, below, &did);
	} while ((rc == SL_OK || rc == SL_ECORRUPT) && did > 0 && !atomic_load(&db->compact_stop));
	pthread_mutex_unlock(&db->compact_mu);
	return rc == SL_ECORRUPT ? SL_OK : rc;
}

void sl_compact_protect(sl_db *db, uint64_t seq)
{
	if (db != NULL) {
		atomic_store(&db->protect_seq, seq);
	}
}

void sl_compact_defer(sl_db *db, uint32_t ms)
{
	if (db != NULL) {
		uint64_t until = sl_mono_ns() + (uint64_t)ms * 1000000u;
		uint64_t cur = atomic_load(&db->defer_until_ns);
		while (cur < until &&
		       !atomic_compare_exchange_weak(&db->defer_until_ns, &cur, until)) {
		}
	}
}

static void *compactor_main(void *arg)
{
	sl_db *db = arg;
	pthread_mutex_lock(&db->cthread_mu);
	while (!db->compact_stop) {
		struct timespec ts;
		sl_mono_after(&ts, db->opt.compact_interval_ms);
		pthread_cond_timedwait(&db->cthread_cv, &db->cthread_mu, &ts);
		if (db->compact_stop) {
			break;
		}
		pthread_mutex_unlock(&db->cthread_mu);
		if (!atomic_load(&db->failed) && sl_mono_ns() >= atomic_load(&db->defer_until_ns)) {
			size_t did;
			pthread_mutex_lock(&db->compact_mu);
			compact_once(db, 0, 0, &did);
			pthread_mutex_unlock(&db->compact_mu);
		}
		pthread_mutex_lock(&db->cthread_mu);
	}
	pthread_mutex_unlock(&db->cthread_mu);
	return NULL;
}

int sl_compactor_start(sl_db *db)
{
	if (!db->opt.compact_background || db->opt.read_only) {
		return SL_OK;
	}
	if (pthread_create(&db->compactor, NULL, compactor_main, db) != 0) {
		return SL_ENOMEM;
	}
	db->compactor_started = 1;
	return SL_OK;
}

void sl_compactor_stop(sl_db *db)
{
	pthread_mutex_lock(&db->cthread_mu);
	db->compact_stop = 1;
	pthread_cond_signal(&db->cthread_cv);
	pthread_mutex_unlock(&db->cthread_mu);
	if (db->compactor_started) {
		pthread_join(db->compactor, NULL);
		db->compactor_started = 0;
	}
}
