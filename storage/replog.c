/*
 * replog.c — the engine's side of replication (DESIGN.md §3): reading the
 * log in seq order, pinning a snapshot for a full resync, and a content
 * digest to compare nodes.  No networking here: replication/ moves the bytes.
 *
 * The log is the run of segments not written by compaction, in id order:
 * the appender writes records in seq order (db.c invariant 2), so within and
 * across those segments seqs only grow.  Compaction outputs (SL_SEG_COMPACTED)
 * hold records in no order and are never read here.
 *
 * Invariants:
 *  1. A pinned segment (pins > 0) is never a compaction input, so records a
 *     snapshot reads stay where its keydir entries say until unpinned.
 *  2. A snapshot's head seq S and its segments' ends are taken under
 *     append_mu: every record with seq <= S lies before a recorded end.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "db.h"
#include "record.h"

/* ---- sl_log_read -------------------------------------------------------- */

/* Where a previous read stopped in segment `seg`, if it stopped at `seq`. */
static uint64_t cache_find(sl_db *db, uint32_t seg, uint64_t seq)
{
	for (unsigned i = 0; i < 8; i++) {
		if (db->lr_cache[i].seg == seg && db->lr_cache[i].seq == seq) {
			return db->lr_cache[i].off;
		}
	}
	return SL_SEG_HDR_SIZE;
}

static void cache_put(sl_db *db, uint32_t seg, uint64_t off, uint64_t seq)
{
	unsigned i = db->lr_next++ % 8;
	db->lr_cache[i].seg = seg;
	db->lr_cache[i].off = off;
	db->lr_cache[i].seq = seq;
}

/* A checkpoint every CKPT_BYTES of log, at most: a read from a seq
 * nothing has read up to walks at most this much before it (about 450
 * records of 100 bytes, against up to the whole segment). */
#define CKPT_BYTES (64u << 10)

/* Notes that the record at off in s has seq `seq`, from sl_log_read's walk
 * only: every record on the way to off was decoded with its checksum, so
 * off is a record's start.  (A walk by headers alone, as
 * sl_log_bytes_from's, could follow a damaged length into a record stored
 * inside a value, and a read starting there would serve it.)  Only past
 * the last checkpoint, so they stay in file order; and only where seqs
 * rise, which is what lets ckpt_find's caller walk on from the checkpoint
 * it finds.  Seqs rise in the log above the node's floor; below it a full
 * resync loaded a snapshot in any order, and the primary serves no reads
 * there (primary.c, invariant 3). */
static void ckpt_note(sl_seg *s, uint64_t off, uint64_t seq)
{
	const struct sl_log_ckpt *last = s->nckpt > 0 ? &s->ckpt[s->nckpt - 1] : NULL;
	if (off < (last != NULL ? last->off : SL_SEG_HDR_SIZE) + CKPT_BYTES ||
	    (last != NULL && seq <= last->seq)) {
		return;
	}
	if (s->nckpt == s->ckpt_cap) {
		size_t cap = s->ckpt_cap ? s->ckpt_cap * 2 : 64;
		struct sl_log_ckpt *c = realloc(s->ckpt, cap * sizeof(*c));
		if (c == NULL) {
			return; /* only a shortcut lost */
		}
		s->ckpt = c;
		s->ckpt_cap = cap;
	}
	s->ckpt[s->nckpt++] = (struct sl_log_ckpt){.off = off, .seq = seq};
}

/* Where a walk of s for the first record with seq >= seq may start: the
 * last checkpoint at or below seq, else the first record. */
static uint64_t ckpt_find(const sl_seg *s, uint64_t seq)
{
	size_t lo = 0, hi = s->nckpt; /* the answer is ckpt[lo - 1] */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->ckpt[mid].seq <= seq) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	return lo > 0 ? s->ckpt[lo - 1].off : SL_SEG_HDR_SIZE;
}

/* Where a walk for seq in s starts: where a previous read stopped at seq,
 * else the nearest checkpoint before it. */
static uint64_t walk_start(sl_db *db, const sl_seg *s, uint64_t seq)
{
	uint64_t off = cache_find(db, s->id, seq);
	return off != SL_SEG_HDR_SIZE ? off : ckpt_find(s, seq);
}

/* The index of the log segment (not a compaction output) holding seq, or
 * db->nsegs when seq is below the log's start.  seg_mu held. */
static size_t log_seg_of(sl_db *db, uint64_t seq)
{
	for (size_t i = db->nsegs; i > 0; i--) {
		sl_seg *s = db->segs[i - 1];
		if (!(s->flags & SL_SEG_COMPACTED) && s->first_seq <= seq) {
			return i - 1;
		}
	}
	return db->nsegs;
}

int sl_log_read(sl_db *db, uint64_t from_seq, void *buf, size_t cap, size_t *len_out,
                uint64_t *next_seq_out)
{
	if (db == NULL || buf == NULL || len_out == NULL || next_seq_out == NULL || from_seq == 0) {
		return SL_EINVAL;
	}
	*len_out = 0;
	*next_seq_out = from_seq;
	int rc = SL_OK;
	size_t len = 0;
	pthread_mutex_lock(&db->seg_mu);
	size_t start = log_seg_of(db, from_seq);
	if (start == db->nsegs) {
		if (from_seq <= atomic_load(&db->last_seq)) {
			rc = SL_ESTALE;
		}
		goto out;
	}
	for (size_t i = start; i < db->nsegs; i++) {
		sl_seg *s = db->segs[i];
		if (s->flags & SL_SEG_COMPACTED) {
			continue;
		}
		if (i > start && s->first_seq > *next_seq_out) {
			/* The log segments between were compacted away (a reader
			 * no longer protected): never skip over them.  Return what
			 * came before the hole; at the hole itself, SL_ESTALE. */
			if (len == 0) {
				rc = SL_ESTALE;
			}
			goto out;
		}
		uint64_t end = atomic_load_explicit(&s->end, memory_order_acquire);
		uint64_t off = walk_start(db, s, *next_seq_out);
		while (off < end) {
			sl_rec r;
			size_t size;
			if (sl_rec_decode(s->map + off, end - off, SL_MAX_KEY, SL_MAX_VALUE, &r,
			                  &size) != SL_REC_OK) {
				break;
			}
			ckpt_note(s, off, r.seq);
			if (r.seq >= *next_seq_out) {
				if (len + size > cap) {
					cache_put(db, s->id, off, *next_seq_out);
					if (len == 0) { /* written under larger limits */
						len = size;
						rc = SL_ETOOBIG;
					}
					goto out;
				}
				memcpy((uint8_t *)buf + len, s->map + off, size);
				len += size;
				*next_seq_out = r.seq + 1;
			}
			off += size;
		}
		cache_put(db, s->id, off, *next_seq_out);
	}
out:
	*len_out = len;
	pthread_mutex_unlock(&db->seg_mu);
	return rc;
}

int sl_log_bytes_from(sl_db *db, uint64_t seq, uint64_t *bytes)
{
	if (db == NULL || bytes == NULL || seq == 0) {
		return SL_EINVAL;
	}
	*bytes = 0;
	if (seq > atomic_load(&db->last_seq)) {
		return SL_OK;
	}
	int rc = SL_OK;
	pthread_mutex_lock(&db->seg_mu);
	size_t start = log_seg_of(db, seq);
	if (start == db->nsegs) {
		rc = SL_ESTALE;
		goto out;
	}
	uint64_t total = 0;
	for (size_t i = start; i < db->nsegs; i++) {
		sl_seg *s = db->segs[i];
		if (s->flags & SL_SEG_COMPACTED) {
			continue;
		}
		uint64_t end = atomic_load_explicit(&s->end, memory_order_acquire);
		uint64_t off = SL_SEG_HDR_SIZE;
		if (i == start) {
			/* A follower's position is usually where its last fetch
			 * stopped (a resume point); else walk the headers. */
			off = walk_start(db, s, seq);
			while (off < end) {
				sl_rec r;
				if (sl_rec_decode_header(s->map + off, end - off, SL_MAX_KEY,
				                         SL_MAX_VALUE, &r) != SL_REC_OK ||
				    r.seq >= seq) {
					break;
				}
				/* no ckpt_note: this walk trusts headers it has not
				 * checksummed (see ckpt_note) */
				off += sl_rec_size(r.klen, r.vlen);
			}
		}
		total += end > off ? end - off : 0;
	}
	*bytes = total;
out:
	pthread_mutex_unlock(&db->seg_mu);
	return rc;
}

uint64_t sl_log_start(sl_db *db)
{
	uint64_t start = atomic_load(&db->last_seq) + 1;
	pthread_mutex_lock(&db->seg_mu);
	for (size_t i = 0; i < db->nsegs; i++) {
		if (!(db->segs[i]->flags & SL_SEG_COMPACTED)) {
			start = db->segs[i]->first_seq;
			break;
		}
	}
	pthread_mutex_unlock(&db->seg_mu);
	return start;
}

uint64_t sl_log_backlog_seq(sl_db *db, uint64_t bytes)
{
	uint64_t seq = atomic_load(&db->last_seq) + 1, total = 0;
	pthread_mutex_lock(&db->seg_mu);
	for (size_t i = db->nsegs; i > 0; i--) {
		sl_seg *s = db->segs[i - 1];
		if (s->flags & SL_SEG_COMPACTED) {
			continue;
		}
		total += atomic_load(&s->end) - SL_SEG_HDR_SIZE;
		if (total > bytes && seq <= atomic_load(&db->last_seq)) {
			break; /* the newest segment always counts */
		}
		seq = s->first_seq;
	}
	pthread_mutex_unlock(&db->seg_mu);
	return seq;
}

/* ---- digest --------------------------------------------------------------- */

typedef struct digest_ctx {
	uint64_t lo, hi, keys;
	XXH3_state_t *st;
} digest_ctx;

static int digest_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	digest_ctx *c = arg;
	uint8_t len[8];
	sl_put32(len, (uint32_t)kl);
	sl_put32(len + 4, (uint32_t)vl);
	XXH3_128bits_reset(c->st);
	XXH3_128bits_update(c->st, len, sizeof(len));
	XXH3_128bits_update(c->st, k, kl);
	XXH3_128bits_update(c->st, v, vl);
	XXH128_hash_t h = XXH3_128bits_digest(c->st);
	c->lo += h.low64; /* a sum: the same whatever the order keys come in */
	c->hi += h.high64;
	c->keys++;
	return 0;
}

int sl_digest(sl_db *db, char out[33], uint64_t *keys_out)
{
	if (db == NULL || out == NULL) {
		return SL_EINVAL;
	}
	digest_ctx c = {0};
	c.st = XXH3_createState();
	if (c.st == NULL) {
		return SL_ENOMEM;
	}
	int rc = sl_scan(db, NULL, 0, digest_cb, &c);
	XXH3_freeState(c.st);
	if (rc != SL_OK) {
		return rc;
	}
	snprintf(out, 33, "%016llx%016llx", (unsigned long long)(c.hi + c.keys),
	         (unsigned long long)c.lo);
	if (keys_out != NULL) {
		*keys_out = c.keys;
	}
	return SL_OK;
}

/* ---- snapshots for a full resync ---------------------------------------- */

struct sl_snapshot {
	sl_db *db;
	uint64_t head;
	sl_seg **segs;
	uint64_t *ends;
	size_t n, i;
	uint64_t off;
};

int sl_snapshot_open(sl_db *db, sl_snapshot **out, uint64_t *head_seq_out)
{
	if (db == NULL || out == NULL) {
		return SL_EINVAL;
	}
	sl_snapshot *sn = calloc(1, sizeof(*sn));
	if (sn == NULL) {
		return SL_ENOMEM;
	}
	sn->db = db;
	/* No compaction run is between its pick and its unlinks (compact_mu),
	 * and no record is half appended (append_mu): invariant 2. */
	pthread_mutex_lock(&db->compact_mu);
	pthread_mutex_lock(&db->append_mu);
	pthread_mutex_lock(&db->seg_mu);
	sn->segs = calloc(db->nsegs ? db->nsegs : 1, sizeof(*sn->segs));
	sn->ends = calloc(db->nsegs ? db->nsegs : 1, sizeof(*sn->ends));
	int rc = sn->segs && sn->ends ? SL_OK : SL_ENOMEM;
	for (size_t i = 0; rc == SL_OK && i < db->nsegs; i++) {
		sl_seg *s = db->segs[i];
		atomic_fetch_add(&s->pins, 1);
		sn->segs[sn->n] = s;
		sn->ends[sn->n++] = atomic_load(&s->end);
	}
	sn->head = atomic_load(&db->last_seq);
	pthread_mutex_unlock(&db->seg_mu);
	pthread_mutex_unlock(&db->append_mu);
	pthread_mutex_unlock(&db->compact_mu);
	if (rc != SL_OK) {
		sl_snapshot_close(sn);
		return rc;
	}
	sn->off = SL_SEG_HDR_SIZE;
	*out = sn;
	if (head_seq_out != NULL) {
		*head_seq_out = sn->head;
	}
	return SL_OK;
}

/* Whether a snapshot sends the record at (seg, off): when the key's entry is
 * that record (its latest version), or is newer than the snapshot's head —
 * overwritten or deleted after the snapshot was taken.  Then every version
 * of the key up to the head still in the pinned segments is sent, and the
 * loader keeps the highest (sl_load_raw): the follower gets the key as it
 * was at the head.  Sending only the latest version, as before, left such a
 * key out altogether (its version at the head was no longer indexed, its
 * new one is past the head): a follower promoted before it fetched past the
 * head lost a write every other node held. */
typedef struct snap_look {
	uint32_t seg, off;
	uint64_t head;
	int send;
} snap_look;

static int snap_cb(void *arg, const sl_loc *loc)
{
	snap_look *l = arg;
	l->send = (loc->seg == l->seg && loc->off == l->off) || loc->seq > l->head;
	return SL_OK;
}

int sl_snapshot_read(sl_snapshot *sn, void *buf, size_t cap, size_t *len_out, int *done)
{
	if (sn == NULL || buf == NULL || len_out == NULL || done == NULL) {
		return SL_EINVAL;
	}
	sl_db *db = sn->db;
	size_t len = 0;
	*done = 0;
	while (sn->i < sn->n) {
		sl_seg *s = sn->segs[sn->i];
		uint64_t end = sn->ends[sn->i];
		if (sn->off >= end) {
			sn->i++;
			sn->off = SL_SEG_HDR_SIZE;
			continue;
		}
		sl_rec r;
		size_t size;
		if (sl_rec_decode(s->map + sn->off, end - sn->off, SL_MAX_KEY, SL_MAX_VALUE, &r,
		                  &size) != SL_REC_OK) {
			/* Damage: skip to the next valid record (never served). */
			sn->off = sl_rec_next_valid(s->map, (size_t)sn->off, (size_t)end,
			                            SL_MAX_KEY, SL_MAX_VALUE);
			continue;
		}
		snap_look look = {s->id, (uint32_t)sn->off, sn->head, 0};
		if (r.seq <= sn->head) {
			sl_keydir_get(db->kd, sl_keydir_hash(r.key, r.klen), r.key, r.klen, snap_cb,
			              &look);
		}
		if (look.send) {
			if (len + size > cap) {
				if (len == 0) {
					*len_out = size; /* the room it needs */
					return SL_ETOOBIG;
				}
				break;
			}
			memcpy((uint8_t *)buf + len, s->map + sn->off, size);
			len += size;
		}
		sn->off += size;
	}
	*len_out = len;
	*done = sn->i >= sn->n && len == 0;
	return SL_OK;
}

void sl_snapshot_close(sl_snapshot *sn)
{
	if (sn == NULL) {
		return;
	}
	for (size_t i = 0; i < sn->n; i++) {
		atomic_fetch_sub(&sn->segs[i]->pins, 1);
	}
	free(sn->segs);
	free(sn->ends);
	free(sn);
}
