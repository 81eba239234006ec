/*
 * test_faults.c — damaged files, a locked directory and failing I/O.
 *
 * Adversarial cases, each named after what it does to the data directory:
 *
 *   torn_tail_every_offset     cut the last record of the active segment at
 *                              every length, or flip each of its bytes: the
 *                              record is dropped, everything before it stays,
 *                              the next put gets a fresh seq and survives a
 *                              further reopen (the torn bytes were cut away).
 *   sealed_segment_flips       flip bytes inside records of a sealed segment,
 *                              with and without its hint: the damaged key
 *                              reads SL_ECORRUPT or an older value, never
 *                              wrong bytes; every other key reads right;
 *                              stats.corrupt_records counts it.
 *   sealed_segment_header_flips  flip each byte of a sealed segment's file
 *                              header: the same promises for its keys.
 *   hint_flips                 flip every byte of a hint file, truncate it,
 *                              give it another segment's hint: recovery falls
 *                              back to a scan of that one segment.
 *   busy_same_process/_fork    a second handle, or another process, gets
 *                              SL_EBUSY; the lock goes with the holder.
 *   enospc_via_seam            fallocate/pwrite/ftruncate fail with ENOSPC
 *                              after N calls: the put fails cleanly, reads
 *                              go on, acknowledged data survives reopen.
 *   fsync_eio_*                fdatasync fails: the write fails, the handle
 *                              refuses writes (SL_EFAILED) until reopened,
 *                              reads go on.
 *
 * SL_TEST_SEEDS sets how many ENOSPC budgets (0 .. N-1 calls) are tried,
 * default 16.  Background compaction is off: the files are checked exactly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xxhash.h>

#include "format.h"
#include "io.h"
#include "record.h"
#include "shiplog.h"
#include "testutil.h"

/* ---- helpers ---------------------------------------------------------- */

static void open_db(const char *dir, const sl_options *o, sl_db **db)
{
	*db = NULL;
	int rc = sl_open(dir, o, db);
	if (rc != SL_OK) {
		fail_msg("sl_open(%s) = %d (%s)", dir, rc, sl_strerror(rc));
	}
	assert_non_null(*db);
}

static sl_stats stats(sl_db *db)
{
	sl_stats st;
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	return st;
}

/* A tiny model: for each key every acknowledged version, oldest first. */
#define MAXVER 4
typedef struct kv {
	char key[32];
	int nver;
	uint8_t *val[MAXVER]; /* NULL: the version is a delete */
	size_t vlen[MAXVER];
	uint64_t seq[MAXVER];
} kv;

typedef struct kvset {
	kv *k;
	int n;
} kvset;

static kv *kv_lookup(kvset *s, const char *key)
{
	for (int i = 0; i < s->n; i++) {
		if (strcmp(s->k[i].key, key) == 0) {
			return &s->k[i];
		}
	}
	return NULL;
}

static kv *kv_find(kvset *s, const char *key)
{
	for (int i = 0; i < s->n; i++) {
		if (strcmp(s->k[i].key, key) == 0) {
			return &s->k[i];
		}
	}
	s->k = realloc(s->k, (size_t)(s->n + 1) * sizeof(*s->k));
	assert_non_null(s->k);
	kv *e = &s->k[s->n++];
	memset(e, 0, sizeof(*e));
	snprintf(e->key, sizeof(e->key), "%s", key);
	return e;
}

static void kv_add(kvset *s, const char *key, const void *val, size_t vlen, uint64_t seq)
{
	kv *e = kv_find(s, key);
	assert_true(e->nver < MAXVER);
	if (val != NULL) {
		e->val[e->nver] = malloc(vlen + 1);
		assert_non_null(e->val[e->nver]);
		memcpy(e->val[e->nver], val, vlen);
	} else {
		e->val[e->nver] = NULL;
	}
	e->vlen[e->nver] = vlen;
	e->seq[e->nver] = seq;
	e->nver++;
}

static void kvset_free(kvset *s)
{
	for (int i = 0; i < s->n; i++) {
		for (int j = 0; j < s->k[i].nver; j++) {
			free(s->k[i].val[j]);
		}
	}
	free(s->k);
	s->k = NULL;
	s->n = 0;
}

static uint64_t do_put(sl_db *db, kvset *s, const char *key, size_t vlen, uint64_t tag)
{
	uint8_t *v = malloc(vlen + 1);
	assert_non_null(v);
	tu_fill_tagged(v, vlen, tag);
	uint64_t seq = 0;
	int rc = sl_put(db, key, strlen(key), v, vlen, &seq);
	if (rc != SL_OK) {
		fail_msg("put %s = %d (%s)", key, rc, sl_strerror(rc));
	}
	kv_add(s, key, v, vlen, seq);
	free(v);
	return seq;
}

static uint64_t do_delete(sl_db *db, kvset *s, const char *key)
{
	uint64_t seq = 0;
	int rc = sl_delete(db, key, strlen(key), &seq);
	if (rc != SL_OK) {
		fail_msg("delete %s = %d (%s)", key, rc, sl_strerror(rc));
	}
	kv_add(s, key, NULL, 0, seq);
	return seq;
}

/* Does (val, vlen, seq) equal version j of e? */
static int ver_eq(const kv *e, int j, int rc, const void *val, size_t vlen, uint64_t seq)
{
	if (e->val[j] == NULL) {
		return rc == SL_ENOTFOUND;
	}
	return rc == SL_OK && vlen == e->vlen[j] && seq == e->seq[j] &&
	       (vlen == 0 || memcmp(val, e->val[j], vlen) == 0);
}

/* Checks every key reads its latest version, except keys in `damaged` (a
 * predicate on the key) which may also read SL_ECORRUPT or any older version
 * (or SL_ENOTFOUND when there is none).  Returns how many damaged keys read
 * SL_ECORRUPT. */
typedef int (*damaged_fn)(void *arg, const kv *e);

static int check_kvset(sl_db *db, kvset *s, damaged_fn damaged, void *arg, const char *what)
{
	int ncorrupt = 0;
	for (int i = 0; i < s->n; i++) {
		const kv *e = &s->k[i];
		void *v = NULL;
		size_t vl = 0;
		uint64_t seq = 0;
		int rc = sl_get_seq(db, e->key, strlen(e->key), &v, &vl, &seq);
		int ok = ver_eq(e, e->nver - 1, rc, v, vl, seq);
		if (!ok && damaged != NULL && damaged(arg, e)) {
			if (rc == SL_ECORRUPT) {
				ok = 1;
				ncorrupt++;
			} else if (rc == SL_ENOTFOUND) {
				ok = 1; /* the damaged put was the key's first write */
				for (int j = 0; j < e->nver - 1; j++) {
					ok &= e->val[j] == NULL;
				}
			} else {
				for (int j = 0; j < e->nver - 1; j++) {
					ok |= ver_eq(e, j, rc, v, vl, seq);
				}
			}
		}
		if (!ok) {
			fail_msg(
			    "%s: key %s: rc %d (%s), %zu bytes, seq %llu; latest is %s seq %llu",
			    what, e->key, rc, sl_strerror(rc), vl, (unsigned long long)seq,
			    e->val[e->nver - 1] ? "a put" : "a delete",
			    (unsigned long long)e->seq[e->nver - 1]);
		}
		free(v);
	}
	return ncorrupt;
}

typedef struct scan_chk {
	kvset *s;
	damaged_fn damaged;
	void *arg;
	int seen, bad;
	const char *what;
} scan_chk;

static int scan_chk_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	scan_chk *c = arg;
	char key[64];
	if (kl >= sizeof(key)) {
		c->bad++;
		return 0;
	}
	memcpy(key, k, kl);
	key[kl] = '\0';
	kv *e = NULL;
	for (int i = 0; i < c->s->n; i++) {
		if (strcmp(c->s->k[i].key, key) == 0) {
			e = &c->s->k[i];
		}
	}
	int ok = 0;
	if (e != NULL) {
		int last = e->nver - 1;
		ok = e->val[last] != NULL && vl == e->vlen[last] &&
		     (vl == 0 || memcmp(v, e->val[last], vl) == 0);
		if (!ok && c->damaged != NULL && c->damaged(c->arg, e)) {
			for (int j = 0; j < last; j++) {
				ok |= e->val[j] != NULL && vl == e->vlen[j] &&
				      (vl == 0 || memcmp(v, e->val[j], vl) == 0);
			}
		}
	}
	if (!ok) {
		print_error("%s: scan served wrong bytes for key %s (%zu bytes)\n", c->what, key,
		            vl);
		c->bad++;
	}
	c->seen++;
	return 0;
}

/* A scan serves only right bytes; when it completes it has every live key
 * that is not damaged. */
static void check_scan(sl_db *db, kvset *s, damaged_fn damaged, void *arg, const char *what)
{
	scan_chk c = {s, damaged, arg, 0, 0, what};
	int rc = sl_scan(db, "", 0, scan_chk_cb, &c);
	assert_int_equal(c.bad, 0);
	if (rc == SL_ECORRUPT && damaged != NULL) {
		return;
	}
	if (rc != 0) {
		fail_msg("%s: sl_scan = %d", what, rc);
	}
	int want = 0;
	for (int i = 0; i < s->n; i++) {
		if (s->k[i].val[s->k[i].nver - 1] != NULL &&
		    (damaged == NULL || !damaged(arg, &s->k[i]))) {
			want++;
		}
	}
	if (c.seen < want) {
		fail_msg("%s: scan saw %d keys, want at least %d", what, c.seen, want);
	}
}

/* A fresh directory (tu_mkdtemp(tag)) and options for it: quiet, no
 * background compaction (the files are damaged and checked exactly), no
 * sync, segments of segment_bytes. */
static char *fault_dir(const char *tag, sl_options *o, uint64_t segment_bytes)
{
	char *dir = tu_mkdtemp(tag);
	assert_non_null(dir);
	sl_options_init(o);
	o->quiet = tu_quiet();
	o->compact_background = 0;
	o->sync = SL_SYNC_NO;
	o->segment_bytes = segment_bytes;
	return dir;
}

static char *seg_file(const char *dir, uint64_t id, const char *ext)
{
	char *p = malloc(4096);
	assert_non_null(p);
	tu_seg_path(p, 4096, dir, id, ext);
	return p;
}

static uint64_t highest_seg(const char *dir)
{
	uint64_t *ids;
	int n = tu_list_ids(dir, "seg", &ids);
	assert_true(n >= 1);
	uint64_t top = ids[n - 1];
	free(ids);
	return top;
}

/* ======================================================================
 * Torn tail at every offset of the last record
 * ====================================================================== */

/* Every segment holds only whole, valid records, then nothing or zeros: no
 * torn bytes were left behind for later records to sit after.  Returns the
 * seq of the last record of the highest segment. */
static uint64_t check_clean_segments(const char *dir, const char *what)
{
	uint64_t *ids;
	int n = tu_list_ids(dir, "seg", &ids);
	assert_true(n >= 1);
	uint64_t last = 0;
	for (int i = 0; i < n; i++) {
		char *p = seg_file(dir, ids[i], "seg");
		tu_seg sg;
		assert_int_equal(tu_seg_parse(p, &sg), 0);
		int clean = sg.hdr_ok && (sg.tail == 0 || sg.tail == 1);
		for (size_t j = sg.end; clean && j < sg.len; j++) {
			clean = sg.buf[j] == 0;
		}
		if (!clean) {
			fail_msg("%s: %s: bytes that are no record at offset %zu of %zu", what, p,
			         sg.end, sg.len);
		}
		if (i == n - 1 && sg.nrecs > 0) {
			last = sg.recs[sg.nrecs - 1].seq;
		}
		tu_seg_free(&sg);
		free(p);
	}
	free(ids);
	return last;
}

static void torn_tail_case(int last_is_delete)
{
	sl_options o;
	char *dir = fault_dir("torn", &o, 64 << 10);
	sl_db *db;
	open_db(dir, &o, &db);
	kvset s = {0};
	for (int i = 0; i < 20; i++) {
		char k[16];
		snprintf(k, sizeof(k), "k%02d", i);
		do_put(db, &s, k, 20 + (size_t)i * 7, (uint64_t)i);
	}
	uint64_t last;
	if (last_is_delete) {
		last = do_delete(db, &s, "k07");
	} else {
		last = do_put(db, &s, "k05", 100, 999); /* overwrites k05 */
	}
	assert_int_equal(last, 21);
	sl_close(db);

	uint64_t top = highest_seg(dir);
	char *segp = seg_file(dir, top, "seg");
	char *hintp = seg_file(dir, top, "hint");
	tu_seg sg;
	assert_int_equal(tu_seg_parse(segp, &sg), 0);
	assert_true(sg.nrecs >= 1);
	tu_rec rec = sg.recs[sg.nrecs - 1];
	assert_int_equal(rec.seq, last);
	tu_seg_free(&sg);
	tu_snapshot snap;
	assert_int_equal(tu_snapshot_take(dir, &snap), 0);

	/* The record as the model sees it once dropped. */
	kv *victim = kv_find(&s, last_is_delete ? "k07" : "k05");
	victim->nver--; /* val[nver] stays allocated for the control below */

	for (int mode = 0; mode < 2; mode++) {
		for (size_t at = rec.off; at < rec.off + rec.size; at++) {
			char what[96];
			snprintf(what, sizeof(what), "%s %s at %zu (record %zu..%zu)",
			         last_is_delete ? "delete" : "put", mode ? "flip" : "truncate", at,
			         rec.off, rec.off + rec.size);
			assert_int_equal(tu_snapshot_restore(dir, &snap), 0);
			if (mode == 0) {
				assert_int_equal(tu_truncate(segp, (long long)at), 0);
			} else {
				uint8_t mask = (uint8_t)(1u << (at % 8));
				assert_int_equal(tu_flip_byte(segp, (long long)at, mask), 0);
			}
			unlink(hintp); /* a crash comes before sealing */
			int rc = sl_open(dir, &o, &db);
			if (rc != SL_OK) {
				fail_msg("%s: sl_open = %d (%s)", what, rc, sl_strerror(rc));
			}
			check_kvset(db, &s, NULL, NULL, what);
			sl_stats st = stats(db);
			if (st.last_seq != last - 1 && st.last_seq != last) {
				fail_msg("%s: last_seq %llu", what,
				         (unsigned long long)st.last_seq);
			}
			/* A new write gets a seq above every surviving record and is
			 * appended where the torn bytes were cut away. */
			uint64_t seq = 0;
			assert_int_equal(sl_put(db, "after", 5, "A", 1, &seq), SL_OK);
			assert_true(seq >= last);
			assert_int_equal(seq, st.last_seq + 1);
			sl_close(db);
			if (check_clean_segments(dir, what) != seq) {
				fail_msg("%s: the put after recovery is not the last record", what);
			}
			open_db(dir, &o, &db);
			check_kvset(db, &s, NULL, NULL, what);
			assert_int_equal(stats(db).corrupt_records, 0);
			void *v = NULL;
			size_t vl = 0;
			uint64_t got = 0;
			rc = sl_get_seq(db, "after", 5, &v, &vl, &got);
			if (rc != SL_OK || vl != 1 || got != seq) {
				fail_msg(
				    "%s: the put after recovery is lost on the next reopen (rc %d)",
				    what, rc);
			}
			free(v);
			assert_int_equal(stats(db).last_seq, seq);
			sl_close(db);
		}
	}

	/* Control: the whole record present is the record kept. */
	assert_int_equal(tu_snapshot_restore(dir, &snap), 0);
	assert_int_equal(tu_truncate(segp, (long long)(rec.off + rec.size)), 0);
	unlink(hintp);
	victim->nver++;
	open_db(dir, &o, &db);
	check_kvset(db, &s, NULL, NULL, "intact tail");
	assert_int_equal(stats(db).last_seq, last);
	sl_close(db);

	tu_snapshot_free(&snap);
	kvset_free(&s);
	free(segp);
	free(hintp);
	tu_rm_rf(dir);
	free(dir);
}

static void test_torn_tail_every_offset_put(void **state)
{
	(void)state;
	torn_tail_case(0);
}

static void test_torn_tail_every_offset_delete(void **state)
{
	(void)state;
	torn_tail_case(1);
}

/* ======================================================================
 * Byte flips inside a sealed segment
 * ====================================================================== */

typedef struct victim {
	const char *key; /* key of the damaged record */
	size_t klen;
} victim;

static int is_victim(void *arg, const kv *e)
{
	victim *v = arg;
	return strlen(e->key) == v->klen && memcmp(e->key, v->key, v->klen) == 0;
}

/* Builds a store whose sealed segments hold records that are each the
 * latest of their key, some overwriting an older value in an earlier
 * segment.  Returns the id of a sealed segment in the middle. */
static uint64_t build_sealed(const char *dir, const sl_options *o, kvset *s)
{
	sl_db *db;
	open_db(dir, o, &db);
	char k[32];
	for (int i = 0; i < 12; i++) {
		snprintf(k, sizeof(k), "old-%02d", i);
		do_put(db, s, k, 150, 100 + (uint64_t)i);
	}
	for (int i = 0; i < 36; i++) {
		if (i % 3 == 0) {
			snprintf(k, sizeof(k), "old-%02d", i / 3);
		} else {
			snprintf(k, sizeof(k), "t-%02d", i);
		}
		do_put(db, s, k, 180 + (size_t)(i % 5) * 11, 200 + (uint64_t)i);
	}
	for (int i = 0; i < 40; i++) {
		snprintf(k, sizeof(k), "f-%02d", i);
		do_put(db, s, k, 200, 300 + (uint64_t)i);
	}
	sl_close(db);

	/* The sealed segment holding the most overwrites of old-* keys. */
	uint64_t *ids;
	int n = tu_list_ids(dir, "seg", &ids);
	assert_true(n >= 4);
	uint64_t best = 0;
	int best_n = -1;
	for (int i = 0; i < n - 1; i++) {
		char *p = seg_file(dir, ids[i], "seg");
		tu_seg sg;
		assert_int_equal(tu_seg_parse(p, &sg), 0);
		int cnt = 0;
		for (size_t j = 0; j < sg.nrecs; j++) {
			cnt += sg.recs[j].seq > 12 && memcmp(sg.recs[j].key, "old-", 4) == 0;
		}
		if (cnt > best_n && sg.nrecs >= 4) {
			best_n = cnt;
			best = ids[i];
		}
		tu_seg_free(&sg);
		free(p);
	}
	free(ids);
	assert_true(best_n >= 1);
	char *hp = seg_file(dir, best, "hint");
	assert_true(tu_exists(hp));
	free(hp);
	return best;
}

static void sealed_flips(int with_hint)
{
	sl_options o;
	char *dir = fault_dir("sealed", &o, 4096);
	kvset s = {0};
	uint64_t target = build_sealed(dir, &o, &s);
	char *segp = seg_file(dir, target, "seg");
	char *hintp = seg_file(dir, target, "hint");
	tu_seg sg;
	assert_int_equal(tu_seg_parse(segp, &sg), 0);
	assert_int_equal(sg.tail, 0); /* sealed: trimmed to its records */
	tu_snapshot snap;
	assert_int_equal(tu_snapshot_take(dir, &snap), 0);

	/* Offsets inside each record: every header field, key and value. */
	static const int rel[] = {0, 3, 4, 5, 6, 7, 8, 10, 11, 12, 17, 19, 20, 27};
	int cases = 0;
	for (size_t r = 0; r < sg.nrecs; r++) {
		const tu_rec *rec = &sg.recs[r];
		char key[64];
		memcpy(key, rec->key, rec->klen);
		key[rec->klen] = '\0';
		size_t nrel = sizeof(rel) / sizeof(rel[0]);
		for (size_t q = 0; q < nrel + 3; q++) {
			size_t at;
			if (q < nrel) {
				at = rec->off + (size_t)rel[q];
			} else if (q == nrel) {
				at = rec->off + SL_REC_HDR_SIZE; /* first key byte */
			} else if (q == nrel + 1) {
				at = rec->off + SL_REC_HDR_SIZE + rec->klen + rec->vlen / 2;
			} else {
				at = rec->off + rec->size - 1;
			}
			uint8_t mask = (uint8_t)(q % 2 ? 0x80u >> (q % 8) : 0xffu);
			char what[192];
			snprintf(what, sizeof(what),
			         "%s hint: flip 0x%02x at %zu (record %zu of key %s)",
			         with_hint ? "with" : "without", mask, at, r, key);
			assert_int_equal(tu_snapshot_restore(dir, &snap), 0);
			assert_int_equal(tu_flip_byte(segp, (long long)at, mask), 0);
			if (!with_hint) {
				assert_int_equal(unlink(hintp), 0);
			}
			sl_db *db = NULL;
			int rc = sl_open(dir, &o, &db);
			if (rc != SL_OK) {
				fail_msg("%s: sl_open = %d (%s)", what, rc, sl_strerror(rc));
			}
			victim vic = {key, rec->klen};
			check_kvset(db, &s, is_victim, &vic, what);
			check_scan(db, &s, is_victim, &vic, what);
			sl_stats st = stats(db);
			if (st.corrupt_records == 0) {
				fail_msg("%s: stats.corrupt_records is 0", what);
			}
			/* The store stays writable: the damaged key can be rewritten. */
			uint64_t seq = 0;
			assert_int_equal(sl_put(db, key, rec->klen, "fresh", 5, &seq), SL_OK);
			assert_int_equal(seq, 89);
			void *v = NULL;
			size_t vl = 0;
			assert_int_equal(sl_get(db, key, rec->klen, &v, &vl), SL_OK);
			assert_int_equal(vl, 5);
			assert_memory_equal(v, "fresh", 5);
			free(v);
			sl_close(db);
			cases++;
		}
	}
	print_message("sealed segment %llu %s hint: %d flips over %zu records\n",
	              (unsigned long long)target, with_hint ? "with" : "without", cases, sg.nrecs);
	tu_seg_free(&sg);
	tu_snapshot_free(&snap);
	kvset_free(&s);
	free(segp);
	free(hintp);
	tu_rm_rf(dir);
	free(dir);
}

static void test_sealed_segment_flips_with_hint(void **state)
{
	(void)state;
	sealed_flips(1);
}

static void test_sealed_segment_flips_without_hint(void **state)
{
	(void)state;
	sealed_flips(0);
}

/* Every byte of a sealed segment's 32-byte file header flipped, hint in
 * place: the directory still opens (a flipped version may be refused as
 * SL_ENOTSUP), the keys whose latest record lives there may read SL_ECORRUPT
 * or an older value, never wrong bytes; everything else reads right. */
typedef struct in_seg {
	const char **keys;
	size_t n;
} in_seg;

static int is_in_seg(void *arg, const kv *e)
{
	in_seg *v = arg;
	for (size_t i = 0; i < v->n; i++) {
		if (strcmp(v->keys[i], e->key) == 0) {
			return 1;
		}
	}
	return 0;
}

/* 1 when snapshots a and b hold the same files with the same bytes (the
 * LOCK file aside, which an open creates empty). */
static int same_files(const tu_snapshot *a, const tu_snapshot *b)
{
	size_t na = 0;
	for (size_t i = 0; i < a->n; i++) {
		if (strcmp(a->files[i].name, "LOCK") == 0) {
			continue;
		}
		na++;
		int found = 0;
		for (size_t j = 0; j < b->n && !found; j++) {
			found = strcmp(a->files[i].name, b->files[j].name) == 0 &&
			        a->files[i].len == b->files[j].len &&
			        memcmp(a->files[i].data, b->files[j].data, a->files[i].len) == 0;
		}
		if (!found) {
			return 0;
		}
	}
	size_t nb = 0;
	for (size_t j = 0; j < b->n; j++) {
		nb += strcmp(b->files[j].name, "LOCK") != 0;
	}
	return na == nb;
}

static void test_sealed_segment_header_flips(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("sealhdr", &o, 4096);
	kvset s = {0};
	uint64_t target = build_sealed(dir, &o, &s);
	char *segp = seg_file(dir, target, "seg");
	tu_seg sg;
	assert_int_equal(tu_seg_parse(segp, &sg), 0);
	assert_true(sg.hdr_ok);
	uint64_t target_first = sg.nrecs > 0 ? sg.recs[0].seq : 0;
	char keys[64][64];
	const char *kp[64];
	in_seg vic = {kp, 0};
	for (size_t r = 0; r < sg.nrecs && r < 64; r++) {
		memcpy(keys[r], sg.recs[r].key, sg.recs[r].klen);
		keys[r][sg.recs[r].klen] = '\0';
		kp[vic.n++] = keys[r];
	}
	tu_seg_free(&sg);
	tu_snapshot snap;
	assert_int_equal(tu_snapshot_take(dir, &snap), 0);
	for (int at = 0; at < (int)SL_SEG_HDR_SIZE; at++) {
		char what[96];
		snprintf(what, sizeof(what), "segment %llu header flipped at %d",
		         (unsigned long long)target, at);
		assert_int_equal(tu_snapshot_restore(dir, &snap), 0);
		assert_int_equal(tu_flip_byte(segp, at, (uint8_t)(1u << (at % 8))), 0);
		tu_snapshot before, after;
		assert_int_equal(tu_snapshot_take(dir, &before), 0);
		sl_db *db = NULL;
		int rc = sl_open(dir, &o, &db);
		if (rc == SL_ENOTSUP && at >= 8 && at < 12) {
			/* The version field is outside the header checksum: a flipped
			 * version is indistinguishable from a newer format, and
			 * refusing the directory is the safe answer.  A refused
			 * open writes nothing: not even the active segment, whose
			 * scan ran beside this segment's load, is activated. */
			assert_int_equal(tu_snapshot_take(dir, &after), 0);
			if (!same_files(&before, &after)) {
				fail_msg("%s: the refused open changed the directory", what);
			}
			tu_snapshot_free(&after);
			tu_snapshot_free(&before);
			continue;
		}
		tu_snapshot_free(&before);
		if (rc != SL_OK) {
			fail_msg("%s: sl_open = %d (%s)", what, rc, sl_strerror(rc));
		}
		check_kvset(db, &s, is_in_seg, &vic, what);
		check_scan(db, &s, is_in_seg, &vic, what);
		if (stats(db).corrupt_records == 0) {
			fail_msg("%s: stats.corrupt_records is 0", what);
		}
		/* Log reads from the first seq and from the damaged segment's
		 * first seq: the records from exactly there, or SL_ESTALE (a full
		 * resync) — never a later segment's records as if those came first
		 * (the damaged header's first_seq read 1, and a read from seq 1
		 * started in that segment, skipping every one before it). */
		static uint8_t lbuf[1 << 16];
		uint64_t froms[2] = {1, target_first};
		for (int k = 0; k < 2; k++) {
			size_t llen = 0;
			uint64_t next = 0;
			int lrc = sl_log_read(db, froms[k], lbuf, sizeof(lbuf), &llen, &next);
			if (lrc == SL_OK && llen > 0 && sl_get64(lbuf + 12) != froms[k]) {
				fail_msg("%s: a log read from seq %llu began at seq %llu", what,
				         (unsigned long long)froms[k],
				         (unsigned long long)sl_get64(lbuf + 12));
			}
			assert_true(lrc == SL_OK || lrc == SL_ESTALE);
		}
		uint64_t seq = 0;
		assert_int_equal(sl_put(db, "new", 3, "n", 1, &seq), SL_OK);
		assert_int_equal(seq, 89);
		sl_close(db);
	}
	tu_snapshot_free(&snap);
	kvset_free(&s);
	free(segp);
	tu_rm_rf(dir);
	free(dir);
}

static char g_open_msg[512];
static void keep_open_error(void *arg, const char *level, const char *msg)
{
	(void)arg;
	if (strcmp(level, "error") == 0 && strstr(msg, "segment file") != NULL) {
		snprintf(g_open_msg, sizeof(g_open_msg), "%s", msg);
	}
}

/* Something that is not a file under a segment's name (a directory made
 * by hand, a restore gone wrong): the open is refused, saying which entry
 * and why, and changes nothing; without it the store opens whole. */
static void test_directory_named_like_a_segment(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("dirseg", &o, 4096);
	kvset s = {0};
	(void)build_sealed(dir, &o, &s);
	uint64_t *ids;
	int n = tu_list_ids(dir, "seg", &ids);
	assert_true(n >= 2);
	char *bogus = seg_file(dir, ids[n - 1] + 5, "seg"); /* would be the newest */
	assert_int_equal(mkdir(bogus, 0755), 0);
	tu_snapshot before, after;
	assert_int_equal(tu_snapshot_take(dir, &before), 0);
	o.log_fn = keep_open_error;
	g_open_msg[0] = '\0';
	sl_db *db = NULL;
	assert_int_equal(sl_open(dir, &o, &db), SL_EIO);
	assert_null(db);
	if (strstr(g_open_msg, bogus) == NULL || strstr(g_open_msg, "Is a directory") == NULL) {
		fail_msg("the refusal does not say which entry and why: \"%s\"", g_open_msg);
	}
	assert_int_equal(tu_snapshot_take(dir, &after), 0);
	if (!same_files(&before, &after)) {
		fail_msg("the refused open changed the directory");
	}
	tu_snapshot_free(&after);
	tu_snapshot_free(&before);
	o.log_fn = NULL;
	assert_int_equal(rmdir(bogus), 0);
	open_db(dir, &o, &db);
	check_kvset(db, &s, NULL, NULL, "after the directory went");
	sl_close(db);
	free(bogus);
	free(ids);
	kvset_free(&s);
	tu_rm_rf(dir);
	free(dir);
}

/* A sealed segment left without its hint and with a preallocated zero
 * tail (a crash between a rotation and its seal), and a later segment with
 * a flipped version byte: the open is refused, and the first segment, which
 * it scanned before reaching the second (one loader thread), is not cut.
 * Once the version is right again the open cuts that tail and every key
 * reads back. */
static void test_refused_open_leaves_scanned_segments(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("refused", &o, 4096);
	o.open_threads = 1; /* the scan of ids[0] comes before ids[n - 2] */
	kvset s = {0};
	(void)build_sealed(dir, &o, &s);
	uint64_t *ids;
	int n = tu_list_ids(dir, "seg", &ids);
	assert_true(n >= 4);
	char *zseg = seg_file(dir, ids[0], "seg");
	char *zhint = seg_file(dir, ids[0], "hint");
	char *vseg = seg_file(dir, ids[n - 2], "seg");
	struct stat st0;
	assert_int_equal(stat(zseg, &st0), 0);
	assert_int_equal(truncate(zseg, st0.st_size + 4096), 0);
	assert_int_equal(unlink(zhint), 0);
	assert_int_equal(tu_flip_byte(vseg, 8, 0x01), 0); /* the version */

	tu_snapshot before, after;
	assert_int_equal(tu_snapshot_take(dir, &before), 0);
	sl_db *db = NULL;
	assert_int_equal(sl_open(dir, &o, &db), SL_ENOTSUP);
	assert_int_equal(tu_snapshot_take(dir, &after), 0);
	if (!same_files(&before, &after)) {
		fail_msg("the refused open changed the directory");
	}
	tu_snapshot_free(&after);
	tu_snapshot_free(&before);

	assert_int_equal(tu_flip_byte(vseg, 8, 0x01), 0);
	open_db(dir, &o, &db);
	struct stat st1;
	assert_int_equal(stat(zseg, &st1), 0);
	assert_int_equal(st1.st_size, st0.st_size); /* the zero tail cut */
	check_kvset(db, &s, NULL, NULL, "after the refused open");
	assert_int_equal(stats(db).corrupt_records, 0);
	sl_close(db);
	free(zseg);
	free(zhint);
	free(vseg);
	free(ids);
	kvset_free(&s);
	tu_rm_rf(dir);
	free(dir);
}

/* One damaged record: build_sealed's target segment with a byte of one
 * record's value flipped (its middle record, which has valid ones after
 * it, or its last) and its hint removed. */
typedef struct damaged_rec {
	char *segp, *hintp;
	char key[64];
	victim vic;
	size_t off; /* where the damaged record starts */
} damaged_rec;

static void damage_one(const char *dir, const sl_options *o, kvset *s, int last, damaged_rec *d)
{
	uint64_t target = build_sealed(dir, o, s);
	d->segp = seg_file(dir, target, "seg");
	d->hintp = seg_file(dir, target, "hint");
	tu_seg sg;
	assert_int_equal(tu_seg_parse(d->segp, &sg), 0);
	assert_true(sg.nrecs >= 4);
	const tu_rec *rec = &sg.recs[last ? sg.nrecs - 1 : sg.nrecs / 2];
	memcpy(d->key, rec->key, rec->klen);
	d->key[rec->klen] = '\0';
	d->vic = (victim){d->key, rec->klen};
	d->off = rec->off;
	long long at = (long long)(rec->off + SL_REC_HDR_SIZE + rec->klen + rec->vlen / 2);
	tu_seg_free(&sg);
	assert_int_equal(tu_flip_byte(d->segp, at, 0xff), 0);
	assert_int_equal(unlink(d->hintp), 0);
}

/* A sealed segment found corrupt by the open's scan keeps that mark at
 * every later open: it gets no hint (a hint lists only the good records,
 * so an open that loaded it would not see the damage), is scanned again,
 * and compaction leaves it as found. */
static void test_corrupt_segment_stays_corrupt(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("corrupt", &o, 4096);
	kvset s = {0};
	damaged_rec d;
	damage_one(dir, &o, &s, 0, &d);
	char *segp = d.segp, *hintp = d.hintp;
	tu_snapshot damaged;
	assert_int_equal(tu_snapshot_take(dir, &damaged), 0);

	for (int round = 0; round < 3; round++) {
		char what[64];
		snprintf(what, sizeof(what), "open %d after the damage", round + 1);
		sl_db *db = NULL;
		open_db(dir, &o, &db);
		if (stats(db).corrupt_records == 0) {
			fail_msg("%s: stats.corrupt_records is 0", what);
		}
		check_kvset(db, &s, is_victim, &d.vic, what);
		assert_int_equal(sl_compact(db), SL_OK); /* every sealed segment but it */
		sl_close(db);                            /* writes every due hint */
		if (tu_exists(hintp)) {
			fail_msg("%s: the corrupt segment got a hint", what);
		}
		if (!tu_exists(segp)) {
			fail_msg("%s: compaction removed the corrupt segment", what);
		}
	}
	tu_snapshot now;
	assert_int_equal(tu_snapshot_take(dir, &now), 0);
	const char *base = strrchr(segp, '/') + 1;
	int kept = 0;
	for (size_t i = 0; i < damaged.n; i++) {
		for (size_t j = 0; j < now.n; j++) {
			kept += strcmp(damaged.files[i].name, base) == 0 &&
			        strcmp(now.files[j].name, base) == 0 &&
			        damaged.files[i].len == now.files[j].len &&
			        memcmp(damaged.files[i].data, now.files[j].data,
			               damaged.files[i].len) == 0;
		}
	}
	assert_int_equal(kept, 1); /* its bytes as found */
	tu_snapshot_free(&now);
	tu_snapshot_free(&damaged);
	kvset_free(&s);
	free(segp);
	free(hintp);
	tu_rm_rf(dir);
	free(dir);
}

/* A bad last record of a sealed segment, nothing valid after it: what a
 * machine crash leaves in a segment rotated out but not yet synced (its
 * torn tail).  The open counts it and cuts it off, as for the active
 * segment; the next open finds a clean segment (kept corrupt for good, it
 * would be rescanned at every open and, never compacted, hold back every
 * tombstone drop after its first_seq). */
static void test_corrupt_last_record_cut(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("lastrec", &o, 4096);
	kvset s = {0};
	damaged_rec d;
	damage_one(dir, &o, &s, 1, &d);
	char *segp = d.segp, *hintp = d.hintp;
	victim vic = d.vic;
	size_t cut = d.off;
	sl_db *db = NULL;
	open_db(dir, &o, &db);
	assert_true(stats(db).corrupt_records > 0);
	check_kvset(db, &s, is_victim, &vic, "first open");
	sl_close(db);
	struct stat st;
	assert_int_equal(stat(segp, &st), 0);
	assert_int_equal((size_t)st.st_size, cut);
	open_db(dir, &o, &db);
	assert_int_equal(stats(db).corrupt_records, 0);
	check_kvset(db, &s, is_victim, &vic, "second open");
	sl_close(db);
	kvset_free(&s);
	free(segp);
	free(hintp);
	tu_rm_rf(dir);
	free(dir);
}

/* The offset of the n-th record (from 0) of the segment file at path, and
 * its size; fails the test when the file has fewer. */
static size_t nth_record(const char *path, int n, size_t *size)
{
	size_t len = 0;
	uint8_t *b = NULL;
	assert_int_equal(tu_read_file(path, &b, &len), 0);
	size_t off = SL_SEG_HDR_SIZE;
	for (int i = 0;; i++) {
		sl_rec r;
		assert_int_equal(
		    sl_rec_decode(b + off, len - off, SL_MAX_KEY, SL_MAX_VALUE, &r, size),
		    SL_REC_OK);
		if (i == n) {
			break;
		}
		off += *size;
	}
	free(b);
	return off;
}

static void overwrite_at(const char *path, size_t off, const void *p, size_t n)
{
	FILE *f = fopen(path, "r+b");
	assert_non_null(f);
	assert_int_equal(fseek(f, (long)off, SEEK_SET), 0);
	assert_int_equal(fwrite(p, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
}

/* Zeros at a record boundary of the active segment with records after
 * them (a sector lost): the records after are kept and the damage counted.
 * It read as the clean end: the file was cut there with every record after
 * it, nothing said so, and their seqs were given out again. */
static void test_zeroed_stretch_in_active_segment(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("zerohole", &o, 64u << 20);
	sl_db *db = NULL;
	open_db(dir, &o, &db);
	char k[32], v[100];
	for (int i = 0; i < 200; i++) {
		snprintf(k, sizeof k, "key%03d", i);
		memset(v, 'a' + i % 26, sizeof v);
		assert_int_equal(sl_put(db, k, strlen(k), v, sizeof v, NULL), SL_OK);
	}
	sl_close(db);
	char *segp = seg_file(dir, highest_seg(dir), "seg");
	size_t sz;
	size_t off = nth_record(segp, 32, &sz);
	uint8_t zeros[512] = {0};
	overwrite_at(segp, off, zeros, sizeof zeros);
	/* as a crash leaves it: the rest of the 64 MiB unwritten (close
	 * trimmed it), a hole to SEEK_DATA */
	assert_int_equal(truncate(segp, 64 << 20), 0);
	int lost = 0;
	for (int pass = 0; pass < 2; pass++) {
		open_db(dir, &o, &db);
		sl_stats st = stats(db);
		if (pass == 0) {
			assert_true(st.corrupt_records > 0);
		}
		assert_int_equal(st.last_seq, 200 + pass); /* no seq given twice */
		int found = 0;
		for (int i = 0; i < 200; i++) {
			snprintf(k, sizeof k, "key%03d", i);
			void *got = NULL;
			size_t gl = 0;
			int rc = sl_get(db, k, strlen(k), &got, &gl);
			if (rc == SL_OK) {
				memset(v, 'a' + i % 26, sizeof v);
				assert_int_equal(gl, sizeof v);
				assert_memory_equal(got, v, sizeof v);
				found++;
			} else {
				assert_int_equal(rc, SL_ENOTFOUND);
				assert_true(i >= 32 &&
				            i < 32 + 512 / (int)sz + 1); /* only the zeroed */
			}
			free(got);
		}
		if (pass == 0) {
			lost = 200 - found;
			assert_true(lost >= 1 && lost <= 512 / (int)sz + 1);
			uint64_t seq = 0;
			assert_int_equal(sl_put(db, "after", 5, "x", 1, &seq), SL_OK);
			assert_int_equal(seq, 201);
		} else {
			assert_int_equal(200 - found, lost);
			void *got = NULL;
			size_t gl = 0;
			assert_int_equal(sl_get(db, "after", 5, &got, &gl), SL_OK);
			free(got);
		}
		sl_close(db);
	}
	free(segp);
	tu_rm_rf(dir);
	free(dir);
}

/* The first 4 KiB of the active segment lost (its header and first
 * records): the records after them are kept, at this open and the ones
 * after (the old scan cut the file at the first zero header: every
 * record gone). */
static void test_zeroed_head_of_active_segment(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("zerohead", &o, 64u << 20);
	sl_db *db = NULL;
	open_db(dir, &o, &db);
	char k[32], v[50];
	memset(v, 'v', sizeof v);
	for (int i = 0; i < 100; i++) {
		snprintf(k, sizeof k, "k%03d", i);
		assert_int_equal(sl_put(db, k, strlen(k), v, sizeof v, NULL), SL_OK);
	}
	sl_close(db);
	char *segp = seg_file(dir, highest_seg(dir), "seg");
	uint8_t zeros[4096] = {0};
	overwrite_at(segp, 0, zeros, sizeof zeros);
	int first = -1;
	for (int pass = 0; pass < 3; pass++) {
		open_db(dir, &o, &db);
		assert_true(stats(db).corrupt_records > 0);
		assert_int_equal(stats(db).last_seq, 100);
		int found = 0;
		for (int i = 0; i < 100; i++) {
			snprintf(k, sizeof k, "k%03d", i);
			void *got = NULL;
			size_t gl = 0;
			if (sl_get(db, k, strlen(k), &got, &gl) == SL_OK) {
				found++;
				assert_memory_equal(got, v, sizeof v);
				free(got);
			}
		}
		/* 4096 bytes held the header and some 50 records of 84 */
		assert_true(found >= 40 && found <= 60);
		if (first < 0) {
			first = found;
		}
		assert_int_equal(found, first);
		sl_close(db);
	}
	free(segp);
	tu_rm_rf(dir);
	free(dir);
}

/* Records written under larger --max-key-bytes / --max-value-bytes than
 * a later open's: the limits apply to new writes only.  Before, every
 * decode of stored records used the open's limits, so a 2 MiB value as the
 * last record of the active segment looked like a torn tail and was cut
 * off the disk (its seq then given again to the next write), and one in a
 * hinted segment read as corrupt. */
static void test_lower_limits_keep_stored_records(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("limits", &o, 4u << 20);
	size_t big = 2u << 20;
	char *v = malloc(big);
	assert_non_null(v);
	memset(v, 'b', big);
	sl_db *db;
	open_db(dir, &o, &db);
	uint64_t seq = 0;
	assert_int_equal(sl_put(db, "sealed", 6, v, big, &seq), SL_OK); /* rotated out below */
	assert_int_equal(sl_put(db, "small", 5, "s", 1, &seq), SL_OK);
	memset(v, 'c', big);
	assert_int_equal(sl_put(db, "k", 1, "old", 3, &seq), SL_OK);
	assert_int_equal(sl_put(db, "filler", 6, v, big, &seq), SL_OK); /* a new segment */
	assert_int_equal(sl_put(db, "k", 1, v, big, &seq), SL_OK);      /* active's last */
	uint64_t last = seq;
	sl_close(db);

	o.max_value_bytes = 1u << 20;
	o.max_key_bytes = 4;
	for (int round = 0; round < 2; round++) { /* and again after a reopen */
		open_db(dir, &o, &db);
		assert_int_equal(sl_last_seq(db), last);
		const char *keys[] = {"sealed", "filler", "k"};
		for (int i = 0; i < 3; i++) {
			void *got = NULL;
			size_t gl = 0;
			/* "sealed" and "filler" are longer than the new key
			 * limit: still read (the limit is the server's, for
			 * requests; storage reads what it holds) */
			assert_int_equal(sl_get(db, keys[i], strlen(keys[i]), &got, &gl), SL_OK);
			assert_int_equal(gl, big);
			free(got);
		}
		sl_stats st = stats(db);
		assert_int_equal(st.corrupt_records, 0);
		assert_int_equal(st.keys, 4);
		/* new writes over the limits are refused */
		assert_int_equal(sl_put(db, "n", 1, v, big, &seq), SL_ETOOBIG);
		assert_int_equal(sl_put(db, "longkey", 7, "x", 1, &seq), SL_ETOOBIG);
		sl_close(db);
	}
	o.max_value_bytes = 16u << 20;
	o.max_key_bytes = SL_MAX_KEY;
	open_db(dir, &o, &db);
	void *got = NULL;
	size_t gl = 0;
	assert_int_equal(sl_get(db, "sealed", 6, &got, &gl), SL_OK);
	assert_int_equal(gl, big);
	free(got);
	assert_int_equal(sl_put(db, "n", 1, "x", 1, &seq), SL_OK);
	assert_int_equal(seq, last + 1);
	sl_close(db);
	free(v);
	tu_rm_rf(dir);
	free(dir);
}

/* ======================================================================
 * Damaged hint files: fall back to scanning that segment
 * ====================================================================== */

static void test_hint_flips(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("hint", &o, 4096);
	kvset s = {0};
	uint64_t target = build_sealed(dir, &o, &s);
	/* Some tombstones in sealed segments too. */
	sl_db *db;
	open_db(dir, &o, &db);
	do_delete(db, &s, "t-01");
	do_delete(db, &s, "old-05");
	char k[32];
	for (int i = 0; i < 30; i++) {
		snprintf(k, sizeof(k), "g-%02d", i);
		do_put(db, &s, k, 250, 400 + (uint64_t)i);
	}
	sl_close(db);

	uint64_t *segs, *hints;
	int ns = tu_list_ids(dir, "seg", &segs);
	int nh = tu_list_ids(dir, "hint", &hints);
	assert_true(nh >= 5);
	tu_snapshot snap;
	assert_int_equal(tu_snapshot_take(dir, &snap), 0);

	open_db(dir, &o, &db);
	sl_stats base = stats(db);
	assert_int_equal(base.hints_loaded, (uint64_t)nh);
	assert_int_equal(base.segments_scanned, (uint64_t)(ns - nh));
	check_kvset(db, &s, NULL, NULL, "pristine");
	sl_close(db);

	char *hintp = seg_file(dir, target, "hint");
	uint8_t *hb = NULL;
	size_t hl = 0;
	assert_int_equal(tu_read_file(hintp, &hb, &hl), 0);
	free(hb);
	assert_true(hl > SL_HINT_HDR_SIZE + 4);

	/* Every byte flipped (a strided subset under a big hint). */
	size_t step = hl > 400 ? hl / 400 : 1;
	int cases = 0;
	for (size_t at = 0; at < hl; at += (at + 4 >= hl ? 1 : step)) {
		char what[96];
		snprintf(what, sizeof(what), "hint %llu flipped at %zu of %zu",
		         (unsigned long long)target, at, hl);
		assert_int_equal(tu_snapshot_restore(dir, &snap), 0);
		assert_int_equal(tu_flip_byte(hintp, (long long)at, (uint8_t)(1u << (at % 8))), 0);
		open_db(dir, &o, &db);
		sl_stats st = stats(db);
		if (st.hints_loaded != (uint64_t)nh - 1 ||
		    st.segments_scanned != base.segments_scanned + 1) {
			fail_msg(
			    "%s: hints_loaded %llu (want %d), segments_scanned %llu (want %llu)",
			    what, (unsigned long long)st.hints_loaded, nh - 1,
			    (unsigned long long)st.segments_scanned,
			    (unsigned long long)base.segments_scanned + 1);
		}
		check_kvset(db, &s, NULL, NULL, what);
		assert_int_equal(stats(db).corrupt_records, 0);
		assert_int_equal(stats(db).last_seq, base.last_seq);
		sl_close(db);
		cases++;
	}

	/* Truncated at assorted lengths, emptied, missing. */
	long long lens[] = {0,
	                    1,
	                    8,
	                    SL_HINT_HDR_SIZE - 1,
	                    SL_HINT_HDR_SIZE,
	                    SL_HINT_HDR_SIZE + 10,
	                    (long long)hl / 2,
	                    (long long)hl - 5,
	                    (long long)hl - 1,
	                    -1};
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		char what[64];
		snprintf(what, sizeof(what), "hint truncated to %lld", lens[i]);
		assert_int_equal(tu_snapshot_restore(dir, &snap), 0);
		if (lens[i] < 0) {
			assert_int_equal(unlink(hintp), 0);
		} else {
			assert_int_equal(tu_truncate(hintp, lens[i]), 0);
		}
		open_db(dir, &o, &db);
		sl_stats st = stats(db);
		if (st.hints_loaded != (uint64_t)nh - 1 ||
		    st.segments_scanned != base.segments_scanned + 1) {
			fail_msg("%s: hints_loaded %llu, segments_scanned %llu", what,
			         (unsigned long long)st.hints_loaded,
			         (unsigned long long)st.segments_scanned);
		}
		check_kvset(db, &s, NULL, NULL, what);
		sl_close(db);
		cases++;
	}

	/* Another segment's (valid) hint under this segment's name: only its
	 * own segment id inside gives it away.  Take one of a segment no bigger
	 * than this one, so every entry is in bounds here too. */
	char *tsegp = seg_file(dir, target, "seg");
	long long tsize = tu_file_size(tsegp);
	free(tsegp);
	uint64_t other = 0;
	long long osize = -1;
	for (int i = 0; i < nh; i++) {
		char *sp = seg_file(dir, hints[i], "seg");
		long long sz = tu_file_size(sp);
		free(sp);
		if (hints[i] != target && sz > 0 && sz <= tsize && sz > osize) {
			other = hints[i];
			osize = sz;
		}
	}
	assert_true(osize > 0);
	char *otherp = seg_file(dir, other, "hint");
	assert_int_equal(tu_snapshot_restore(dir, &snap), 0);
	uint8_t *ob = NULL;
	size_t ol = 0;
	assert_int_equal(tu_read_file(otherp, &ob, &ol), 0);
	assert_int_equal(tu_write_file(hintp, ob, ol), 0);
	free(ob);
	open_db(dir, &o, &db);
	check_kvset(db, &s, NULL, NULL, "foreign hint");
	assert_int_equal(stats(db).hints_loaded, (uint64_t)nh - 1);
	sl_close(db);

	/* After a fallback the next open is fast again (the hint is rewritten)
	 * or at least still correct. */
	open_db(dir, &o, &db);
	check_kvset(db, &s, NULL, NULL, "after fallback");
	sl_close(db);

	/* The open leaves a missing hint to the flusher: it appears while the
	 * store is open (no close needed, so a crash after it keeps it), and
	 * the next open loads it. */
	assert_int_equal(tu_snapshot_restore(dir, &snap), 0);
	assert_int_equal(unlink(hintp), 0);
	open_db(dir, &o, &db);
	assert_int_equal(stats(db).segments_scanned, base.segments_scanned + 1);
	int waited_ms = 0;
	while (tu_file_size(hintp) < 0 && waited_ms < 10000) {
		usleep(10000);
		waited_ms += 10;
	}
	if (tu_file_size(hintp) < 0) {
		fail_msg("the flusher did not write the missing hint in 10 s");
	}
	check_kvset(db, &s, NULL, NULL, "hint left to the flusher");
	sl_close(db);
	open_db(dir, &o, &db);
	assert_int_equal(stats(db).hints_loaded, (uint64_t)nh);
	check_kvset(db, &s, NULL, NULL, "hint written by the flusher");
	sl_close(db);

	print_message("hint %llu (%zu bytes): %d damaged variants\n", (unsigned long long)target,
	              hl, cases);
	tu_snapshot_free(&snap);
	kvset_free(&s);
	free(segs);
	free(hints);
	free(hintp);
	free(otherp);
	tu_rm_rf(dir);
	free(dir);
}

/* ======================================================================
 * One handle per directory
 * ====================================================================== */

/* In a child: try to open dir; exit 0 if the result is `want`. */
static void child_try_open(const char *dir, int want, int do_put)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		sl_db *db = NULL;
		int rc = sl_open(dir, NULL, &db);
		if (rc != want) {
			_exit(10 + (rc < 0 ? -rc : rc));
		}
		if (rc == SL_OK) {
			if (do_put && sl_put(db, "child", 5, "c", 1, NULL) != SL_OK) {
				_exit(40);
			}
			sl_close(db);
		}
		_exit(0);
	}
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	if (WEXITSTATUS(status) != 0) {
		fail_msg("child sl_open: wanted %d, exit status %d", want, WEXITSTATUS(status));
	}
}

static void test_busy(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp("busy");
	assert_non_null(dir);
	sl_db *db, *db2 = NULL;
	open_db(dir, NULL, &db);
	assert_int_equal(sl_put(db, "k", 1, "v", 1, NULL), SL_OK);

	/* Same process, second handle. */
	assert_int_equal(sl_open(dir, NULL, &db2), SL_EBUSY);
	assert_int_equal(sl_open(dir, NULL, &db2), SL_EBUSY);
	/* The failed attempts released nothing: another process is refused. */
	child_try_open(dir, SL_EBUSY, 0);
	/* And the first handle still works. */
	assert_int_equal(sl_put(db, "k2", 2, "v2", 2, NULL), SL_OK);
	void *v = NULL;
	size_t vl;
	assert_int_equal(sl_get(db, "k", 1, &v, &vl), SL_OK);
	free(v);
	sl_close(db);

	/* Closed: another process may open it and write. */
	child_try_open(dir, SL_OK, 1);
	open_db(dir, NULL, &db);
	assert_int_equal(sl_get(db, "child", 5, &v, &vl), SL_OK);
	free(v);
	assert_int_equal(stats(db).last_seq, 3);

	/* A child holding the directory, then killed: the lock dies with it. */
	sl_close(db);
	int p2c[2], c2p[2];
	assert_int_equal(pipe(p2c), 0);
	assert_int_equal(pipe(c2p), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		sl_db *cdb = NULL;
		char c = sl_open(dir, NULL, &cdb) == SL_OK ? 'y' : 'n';
		if (write(c2p[1], &c, 1) != 1) {
			_exit(1);
		}
		char x;
		ssize_t r = read(p2c[0], &x, 1); /* wait to be killed */
		(void)r;
		_exit(0);
	}
	char c = 0;
	assert_int_equal(read(c2p[0], &c, 1), 1);
	assert_int_equal(c, 'y');
	db2 = NULL;
	assert_int_equal(sl_open(dir, NULL, &db2), SL_EBUSY);
	kill(pid, SIGKILL);
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	close(p2c[0]);
	close(p2c[1]);
	close(c2p[0]);
	close(c2p[1]);
	open_db(dir, NULL, &db);
	assert_int_equal(stats(db).last_seq, 3);
	sl_close(db);
	tu_rm_rf(dir);
	free(dir);
}

/* ======================================================================
 * Failing I/O through the seam
 * ====================================================================== */

static _Atomic long g_budget = -1;  /* fallocate/pwrite/ftruncate calls left; -1: off */
static _Atomic int g_sync_fail = 0; /* fdatasync/fsync fail with EIO */
static _Atomic long g_space_calls = 0, g_space_fails = 0, g_sync_calls = 0;

static int spend(void)
{
	atomic_fetch_add(&g_space_calls, 1);
	long b = atomic_load(&g_budget);
	while (b >= 0) {
		if (b == 0) {
			atomic_fetch_add(&g_space_fails, 1);
			errno = ENOSPC;
			return -1;
		}
		if (atomic_compare_exchange_weak(&g_budget, &b, b - 1)) {
			break;
		}
	}
	return 0;
}

static ssize_t f_pwrite(int fd, const void *b, size_t n, off_t off)
{
	if (spend() != 0) {
		return -1;
	}
	return sl_io_default.pwrite(fd, b, n, off);
}

static int f_ftruncate(int fd, off_t len)
{
	if (spend() != 0) {
		return -1;
	}
	return sl_io_default.ftruncate(fd, len);
}

static _Atomic long g_falloc_max = -1; /* fallocate of more fails with ENOSPC; -1: off */
static _Atomic long g_falloc_refused = 0;

static int f_fallocate(int fd, off_t off, off_t len)
{
	long max = atomic_load(&g_falloc_max);
	if (max >= 0 && off + len > max) {
		atomic_fetch_add(&g_falloc_refused, 1);
		errno = ENOSPC;
		return -1;
	}
	if (spend() != 0) {
		return -1;
	}
	return sl_io_default.fallocate(fd, off, len);
}

static int f_fdatasync(int fd)
{
	atomic_fetch_add(&g_sync_calls, 1);
	if (atomic_load(&g_sync_fail)) {
		errno = EIO;
		return -1;
	}
	return sl_io_default.fdatasync(fd);
}

static int f_fsync(int fd)
{
	atomic_fetch_add(&g_sync_calls, 1);
	if (atomic_load(&g_sync_fail)) {
		errno = EIO;
		return -1;
	}
	return sl_io_default.fsync(fd);
}

static struct sl_io g_fio;

static const struct sl_io *faulty_io(void)
{
	g_fio = sl_io_default;
	g_fio.pwrite = f_pwrite;
	g_fio.ftruncate = f_ftruncate;
	g_fio.fallocate = f_fallocate;
	g_fio.fdatasync = f_fdatasync;
	g_fio.fsync = f_fsync;
	atomic_store(&g_budget, -1);
	atomic_store(&g_sync_fail, 0);
	atomic_store(&g_falloc_max, -1);
	return &g_fio;
}

/* The put of key -> (val, vlen) failed: the key reads its last
 * acknowledged state or, at most, exactly the value of the failed put. */
static void check_failed_put(sl_db *db, kvset *s, const char *key, const void *val, size_t vlen,
                             const char *what)
{
	kv *e = kv_lookup(s, key);
	void *v = NULL;
	size_t vl = 0;
	int g = sl_get(db, key, strlen(key), &v, &vl);
	int old_ok;
	if (e == NULL || e->val[e->nver - 1] == NULL) {
		old_ok = g == SL_ENOTFOUND;
	} else {
		old_ok = g == SL_OK && vl == e->vlen[e->nver - 1] &&
		         memcmp(v, e->val[e->nver - 1], vl) == 0;
	}
	int new_ok = g == SL_OK && vl == vlen && memcmp(v, val, vl) == 0;
	if (!old_ok && !new_ok) {
		fail_msg("%s: the failed put of %s reads rc %d, %zu bytes", what, key, g, vl);
	}
	free(v);
}

static void enospc_case(long n, sl_sync sync)
{
	char *dir = tu_mkdtemp("enospc");
	assert_non_null(dir);
	sl_options o;
	sl_options_init(&o);
	o.quiet = tu_quiet();
	o.compact_background = 0; /* no background writer besides the appender */
	o.sync = sync;
	o.segment_bytes = 4096;
	o.io = faulty_io();
	sl_db *db;
	open_db(dir, &o, &db);
	kvset s = {0};
	char k[32];
	for (int i = 0; i < 20; i++) {
		snprintf(k, sizeof(k), "pre-%02d", i);
		do_put(db, &s, k, 300, (uint64_t)i);
	}
	long calls_before = atomic_load(&g_space_calls);
	assert_true(calls_before > 0); /* the engine goes through the seam */

	atomic_store(&g_budget, n);
	int rc = SL_OK;
	int i;
	char fkey[32] = "";
	uint8_t fval[300];
	for (i = 0; i < 600; i++) {
		/* Overwrite pre-* keys now and then so a failed put has an old value. */
		if (i % 4 == 0) {
			snprintf(k, sizeof(k), "pre-%02d", (i / 4) % 20);
		} else {
			snprintf(k, sizeof(k), "new-%03d", i);
		}
		uint8_t v[300];
		tu_fill_tagged(v, sizeof(v), 1000 + (uint64_t)i);
		uint64_t seq = 0;
		rc = sl_put(db, k, strlen(k), v, sizeof(v), &seq);
		if (rc != SL_OK) {
			snprintf(fkey, sizeof(fkey), "%s", k);
			memcpy(fval, v, sizeof(v));
			break;
		}
		kv_add(&s, k, v, sizeof(v), seq);
	}
	if (rc == SL_OK) {
		fail_msg("budget %ld: 600 puts and no failure (space calls %ld)", n,
		         atomic_load(&g_space_calls) - calls_before);
	}
	assert_true(rc < 0);
	assert_true(strlen(sl_strerror(rc)) > 0);
	assert_true(atomic_load(&g_space_fails) > 0);

	char what[64];
	snprintf(what, sizeof(what), "ENOSPC after %ld calls", n);
	/* The failed put's key is checked exactly by check_failed_put. */
	victim fv = {fkey, strlen(fkey)};

	/* Reads keep working; the failed put is either absent (old value) or
	 * complete. */
	check_kvset(db, &s, is_victim, &fv, what);
	check_failed_put(db, &s, fkey, fval, sizeof(fval), what);

	/* Still full.  A write may fail again or (when what failed was only
	 * housekeeping, e.g. a hint) succeed; either way nothing half-applies. */
	uint64_t seq = 0;
	int rc2 = sl_put(db, "more", 4, "m", 1, &seq);
	if (rc2 == SL_OK) {
		kv_add(&s, "more", "m", 1, seq);
	} else {
		assert_true(rc2 < 0);
	}
	uint64_t ls = stats(db).last_seq;
	if (strcmp(fkey, "pre-00") != 0) {
		rc2 = sl_delete(db, "pre-00", 6, &seq);
		if (rc2 == SL_OK) {
			kv_add(&s, "pre-00", NULL, 0, seq);
			ls = seq;
		} else {
			assert_true(rc2 < 0);
			assert_int_equal(stats(db).last_seq, ls);
		}
	}
	check_kvset(db, &s, is_victim, &fv, what);
	check_failed_put(db, &s, fkey, fval, sizeof(fval), what);

	/* Space comes back.  Either writes resume or the handle stays failed. */
	atomic_store(&g_budget, -1);
	rc2 = sl_put(db, "later", 5, "L", 1, &seq);
	int later_ok = rc2 == SL_OK;
	if (!later_ok) {
		assert_int_equal(rc2, SL_EFAILED);
		assert_true(stats(db).failed != 0);
	}
	if (n % 2 == 0) {
		atomic_store(&g_budget, 0); /* close on a still-full disk */
	}
	sl_close(db);

	/* Everything acknowledged is there with the normal seam. */
	o.io = NULL;
	open_db(dir, &o, &db);
	snprintf(what, sizeof(what), "ENOSPC after %ld calls, reopened", n);
	check_kvset(db, &s, is_victim, &fv, what);
	check_failed_put(db, &s, fkey, fval, sizeof(fval), what);
	void *v = NULL;
	size_t vl = 0;
	int g = sl_get(db, "later", 5, &v, &vl);
	if (later_ok) {
		assert_int_equal(g, SL_OK);
	} else {
		assert_int_equal(g, SL_ENOTFOUND);
	}
	free(v);
	sl_stats st = stats(db);
	assert_int_equal(st.failed, 0);
	assert_int_equal(st.corrupt_records, 0);
	uint64_t seq2 = 0;
	assert_int_equal(sl_put(db, "final", 5, "F", 1, &seq2), SL_OK);
	assert_true(seq2 > ls);
	if (later_ok) {
		assert_true(seq2 > seq);
	}
	sl_close(db);
	kvset_free(&s);
	tu_rm_rf(dir);
	free(dir);
}

static void test_enospc_via_seam(void **state)
{
	(void)state;
	long max = (long)tu_env_u64("SL_TEST_SEEDS", 16);
	for (long n = 0; n < max; n++) {
		enospc_case(n, n % 3 == 2 ? SL_SYNC_ALWAYS : SL_SYNC_NO);
	}
	atomic_store(&g_budget, -1);
}

/* A nearly full disk (fallocate refuses more than a few hundred KiB): the
 * store opens with a smaller active segment instead of failing, serves
 * reads, takes the writes that fit in smaller segments, answers SL_ENOSPC
 * (and stays usable) when not even one record fits, and keeps everything
 * acknowledged. */
static void test_nearly_full_disk(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp("nearfull");
	assert_non_null(dir);
	sl_options o;
	sl_options_init(&o);
	o.quiet = tu_quiet();
	o.segment_bytes = 1 << 20;
	o.compact_background = 0; /* its outputs take segment ids too: counted below */
	o.io = faulty_io();
	sl_db *db;
	open_db(dir, &o, &db);
	kvset s = {0};
	char k[32];
	for (int i = 0; i < 100; i++) {
		snprintf(k, sizeof(k), "a%03d", i);
		do_put(db, &s, k, 1000, (uint64_t)i);
	}
	sl_close(db);

	/* Room for a 256 KiB file, not the 1 MiB segment --segment-bytes asks. */
	atomic_store(&g_falloc_max, 256 * 1024);
	atomic_store(&g_falloc_refused, 0);
	open_db(dir, &o, &db);
	assert_true(atomic_load(&g_falloc_refused) > 0); /* it did ask for more */
	check_kvset(db, &s, NULL, NULL, "opened nearly full");
	for (int i = 0; i < 600; i++) { /* 600 KB: several smaller segments */
		snprintf(k, sizeof(k), "b%03d", i);
		do_put(db, &s, k, 1000, 1000 + (uint64_t)i);
	}
	assert_true(stats(db).segments >= 3);

	/* Not even one record fits: SL_ENOSPC, nothing half-written, the
	 * store keeps serving and takes writes again once there is room. */
	atomic_store(&g_falloc_max, 0);
	uint64_t seq = 0;
	uint8_t big[60000];
	tu_fill_tagged(big, sizeof(big), 7);
	int rc = SL_OK;
	for (int i = 0; i < 40 && rc == SL_OK; i++) {
		snprintf(k, sizeof(k), "c%03d", i);
		rc = sl_put(db, k, strlen(k), big, sizeof(big), &seq);
		if (rc == SL_OK) {
			kv_add(&s, k, big, sizeof(big), seq);
		}
	}
	assert_int_equal(rc, SL_ENOSPC);
	/* many more failures use up no segment ids */
	uint64_t *ids = NULL;
	int nids = tu_list_ids(dir, "seg", &ids);
	assert_true(nids > 0);
	uint64_t max_before = ids[nids - 1];
	free(ids);
	for (int i = 0; i < 200; i++) {
		assert_int_equal(sl_put(db, "full", 4, big, sizeof(big), &seq), SL_ENOSPC);
	}
	assert_int_equal(stats(db).failed, 0);
	check_kvset(db, &s, NULL, NULL, "full");
	atomic_store(&g_falloc_max, -1);
	do_put(db, &s, "after", 100, 99);
	do_put(db, &s, "after2", 60000, 98); /* needs a new segment */
	nids = tu_list_ids(dir, "seg", &ids);
	assert_true(nids > 0);
	assert_true(ids[nids - 1] <= max_before + 2);
	free(ids);
	sl_close(db);

	o.io = NULL;
	open_db(dir, &o, &db);
	check_kvset(db, &s, NULL, NULL, "reopened");
	sl_stats st = stats(db);
	assert_int_equal(st.corrupt_records, 0);
	assert_int_equal(st.failed, 0);
	sl_close(db);
	kvset_free(&s);
	tu_rm_rf(dir);
	free(dir);
}

static void test_fsync_eio_always(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp("eio");
	assert_non_null(dir);
	sl_options o;
	sl_options_init(&o);
	o.quiet = tu_quiet();
	o.compact_background = 0; /* the files are damaged and checked exactly */
	o.sync = SL_SYNC_ALWAYS;
	o.segment_bytes = 1 << 20;
	o.io = faulty_io();
	sl_db *db;
	open_db(dir, &o, &db);
	kvset s = {0};
	char k[32];
	for (int i = 0; i < 10; i++) {
		snprintf(k, sizeof(k), "k%d", i);
		do_put(db, &s, k, 100, (uint64_t)i);
	}
	sl_stats st = stats(db);
	assert_int_equal(st.failed, 0);
	assert_true(st.synced_seq >= 10);
	assert_true(atomic_load(&g_sync_calls) > 0);

	atomic_store(&g_sync_fail, 1);
	int rc = sl_put(db, "k3", 2, "doomed", 6, NULL);
	assert_true(rc < 0);
	assert_true(rc != SL_ENOTFOUND);
	assert_true(strlen(sl_strerror(rc)) > 0);
	st = stats(db);
	assert_true(st.failed != 0);
	assert_true(st.synced_seq < 11);
	atomic_store(&g_sync_fail, 0);

	/* Sticky: the disk is fine again, the handle still refuses writes. */
	assert_int_equal(sl_put(db, "x", 1, "y", 1, NULL), SL_EFAILED);
	assert_int_equal(sl_put_ttl(db, "x", 1, "y", 1, 1000, NULL), SL_EFAILED);
	assert_int_equal(sl_delete(db, "k1", 2, NULL), SL_EFAILED);
	assert_int_equal(sl_put(db, "x", 1, "y", 1, NULL), SL_EFAILED);
	uint64_t ls = stats(db).last_seq;
	assert_true(ls == 10 || ls == 11);

	/* Reads keep working. */
	kv *e = kv_find(&s, "k3");
	for (int i = 0; i < s.n; i++) {
		if (&s.k[i] == e) {
			continue;
		}
		void *v = NULL;
		size_t vl = 0;
		assert_int_equal(sl_get(db, s.k[i].key, strlen(s.k[i].key), &v, &vl), SL_OK);
		assert_int_equal(vl, s.k[i].vlen[0]);
		assert_memory_equal(v, s.k[i].val[0], vl);
		free(v);
	}
	check_failed_put(db, &s, "k3", "doomed", 6, "fdatasync EIO");
	sl_close(db);

	/* Reopen: writable again, acknowledged data intact. */
	open_db(dir, &o, &db);
	assert_int_equal(stats(db).failed, 0);
	for (int i = 0; i < s.n; i++) {
		if (&s.k[i] == e) {
			continue;
		}
		void *v = NULL;
		size_t vl = 0;
		assert_int_equal(sl_get(db, s.k[i].key, strlen(s.k[i].key), &v, &vl), SL_OK);
		assert_memory_equal(v, s.k[i].val[0], vl);
		free(v);
	}
	check_failed_put(db, &s, "k3", "doomed", 6, "fdatasync EIO, reopened");
	uint64_t seq = 0;
	assert_int_equal(sl_put(db, "x", 1, "y", 1, &seq), SL_OK);
	assert_true(seq > 10);
	sl_close(db);
	kvset_free(&s);
	tu_rm_rf(dir);
	free(dir);
}

static void test_fsync_eio_everysec(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp("eio-es");
	assert_non_null(dir);
	sl_options o;
	sl_options_init(&o);
	o.quiet = tu_quiet();
	o.compact_background = 0; /* the files are damaged and checked exactly */
	o.sync = SL_SYNC_EVERYSEC;
	o.sync_interval_ms = 20;
	o.io = faulty_io();
	sl_db *db;
	open_db(dir, &o, &db);
	kvset s = {0};
	do_put(db, &s, "a", 10, 1);
	/* The background sync catches up. */
	uint64_t t0 = tu_mono_ms();
	while (stats(db).synced_seq < 1 && tu_mono_ms() - t0 < 5000) {
		usleep(5000);
	}
	assert_true(stats(db).synced_seq >= 1);

	atomic_store(&g_sync_fail, 1);
	int rc = SL_OK;
	int i = 0;
	t0 = tu_mono_ms();
	while (tu_mono_ms() - t0 < 5000) {
		char k[16];
		snprintf(k, sizeof(k), "b%d", i++);
		uint64_t seq = 0;
		rc = sl_put(db, k, strlen(k), "v", 1, &seq);
		if (rc != SL_OK) {
			break;
		}
		kv_add(&s, k, "v", 1, seq);
		usleep(2000);
	}
	atomic_store(&g_sync_fail, 0);
	if (rc != SL_EFAILED) {
		fail_msg("background fdatasync failing for 5 s: put = %d, want SL_EFAILED", rc);
	}
	assert_true(stats(db).failed != 0);
	assert_int_equal(sl_put(db, "c", 1, "v", 1, NULL), SL_EFAILED);
	check_kvset(db, &s, NULL, NULL, "everysec failed");
	sl_close(db);
	open_db(dir, &o, &db);
	check_kvset(db, &s, NULL, NULL, "everysec reopened");
	assert_int_equal(sl_put(db, "c", 1, "v", 1, NULL), SL_OK);
	sl_close(db);

	/* sl_sync_now failing makes the handle failed too (sync=no). */
	o.sync = SL_SYNC_NO;
	open_db(dir, &o, &db);
	assert_int_equal(sl_put(db, "d", 1, "v", 1, NULL), SL_OK);
	atomic_store(&g_sync_fail, 1);
	rc = sl_sync_now(db);
	atomic_store(&g_sync_fail, 0);
	assert_true(rc < 0);
	assert_int_equal(sl_put(db, "e", 1, "v", 1, NULL), SL_EFAILED);
	assert_true(stats(db).failed != 0);
	void *v = NULL;
	size_t vl;
	assert_int_equal(sl_get(db, "c", 1, &v, &vl), SL_OK);
	free(v);
	sl_close(db);
	open_db(dir, &o, &db);
	assert_int_equal(sl_get(db, "d", 1, &v, &vl), SL_OK);
	free(v);
	assert_int_equal(sl_put(db, "e", 1, "v", 1, NULL), SL_OK);
	sl_close(db);
	kvset_free(&s);
	tu_rm_rf(dir);
	free(dir);
}

/* ======================================================================
 * A sync covers every segment written since the last one
 * ====================================================================== */

/* The flusher (which seals rotated segments, syncing each) is held in the
 * first hint's rename; meanwhile the store rotates through many segments.
 * sl_sync_now must then fdatasync every one of them: it used to take the
 * newest eight only and still publish synced_seq as the last seq, so a
 * machine crash could lose writes acknowledged as durable (sync always). */
#define SY_FDS 1024
static _Atomic int g_hint_hold;            /* a .hint rename waits while set (5 s at most) */
static _Atomic long g_syncs_by_id[SY_FDS]; /* fdatasyncs of segment id */
static _Atomic int g_id_of_fd[SY_FDS];     /* segment id open on fd (0: none) */

static int sy_open(const char *path, int flags, mode_t mode)
{
	int fd = sl_io_default.open(path, flags, mode);
	if (fd >= 0 && fd < SY_FDS) {
		const char *b = strrchr(path, '/');
		b = b != NULL ? b + 1 : path;
		unsigned long id = strtoul(b, NULL, 10);
		size_t n = strlen(b);
		int seg = n > 4 && strcmp(b + n - 4, ".seg") == 0 && id < SY_FDS;
		atomic_store(&g_id_of_fd[fd], seg ? (int)id : 0);
	}
	return fd;
}

static int sy_fdatasync(int fd)
{
	if (fd >= 0 && fd < SY_FDS && atomic_load(&g_id_of_fd[fd]) > 0) {
		atomic_fetch_add(&g_syncs_by_id[atomic_load(&g_id_of_fd[fd])], 1);
	}
	return sl_io_default.fdatasync(fd);
}

static int sy_rename(const char *from, const char *to)
{
	size_t n = strlen(to);
	if (n > 5 && strcmp(to + n - 5, ".hint") == 0) {
		for (int i = 0; i < 500 && atomic_load(&g_hint_hold); i++) {
			usleep(10000);
		}
	}
	return sl_io_default.rename(from, to);
}

static void test_sync_covers_every_segment(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("syncall", &o, 4096);
	struct sl_io io = sl_io_default;
	io.open = sy_open;
	io.fdatasync = sy_fdatasync;
	io.rename = sy_rename;
	o.io = &io;
	atomic_store(&g_hint_hold, 1);
	sl_db *db;
	open_db(dir, &o, &db);
	char key[32], val[1000];
	memset(val, 'v', sizeof(val));
	uint64_t seq = 0;
	for (int i = 0; i < 80; i++) { /* 4 records a segment: about 20 */
		snprintf(key, sizeof(key), "k%03d", i);
		assert_int_equal(sl_put(db, key, strlen(key), val, sizeof(val), &seq), SL_OK);
	}
	uint64_t top = highest_seg(dir);
	assert_true(top >= 15);
	for (int i = 0; i < SY_FDS; i++) {
		atomic_store(&g_syncs_by_id[i], 0);
	}
	assert_int_equal(sl_sync_now(db), SL_OK);
	assert_true(stats(db).synced_seq >= seq);
	/* Segment 1 was synced by the flusher (which then stopped in its
	 * hint); every later one holds records only this sync made durable. */
	int unsynced = 0;
	for (uint64_t id = 2; id <= top; id++) {
		if (atomic_load(&g_syncs_by_id[id]) == 0) {
			print_message("segment %llu: no fdatasync\n", (unsigned long long)id);
			unsynced++;
		}
	}
	atomic_store(&g_hint_hold, 0);
	sl_close(db);
	assert_int_equal(unsynced, 0);
	tu_rm_rf(dir);
	free(dir);
}

/* Linux reports a writeback error to one fdatasync of a file and then
 * forgets it: the next fdatasync of the same descriptor returns 0 although
 * the bytes never reached the disk.  once_fdatasync plays that for segment
 * g_once_id once armed: its next fdatasync fails with EIO, every later one
 * returns 0 without syncing.  The flusher's seal of a segment failed that
 * way and, in the same pass, its periodic sync fdatasynced the segment
 * again, got 0 and published synced_seq as the last seq: sl_sync_wait then
 * answered "durable" for records a power loss would lose. */
static _Atomic int g_once_id;     /* the segment */
static _Atomic int g_once_armed;  /* its next fdatasync fails */
static _Atomic int g_once_failed; /* it failed: later ones "succeed", syncing nothing */

static int once_fdatasync(int fd)
{
	int id = fd >= 0 && fd < SY_FDS ? atomic_load(&g_id_of_fd[fd]) : 0;
	if (id > 0 && id == atomic_load(&g_once_id) && atomic_load(&g_once_armed)) {
		if (!atomic_exchange(&g_once_failed, 1)) {
			errno = EIO;
			return -1;
		}
		return 0;
	}
	return sl_io_default.fdatasync(fd);
}

static void test_fsync_error_reported_once(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("once", &o, 64 << 10);
	struct sl_io io = sl_io_default;
	io.open = sy_open;
	io.fdatasync = once_fdatasync;
	io.rename = sy_rename;
	o.io = &io;
	o.sync = SL_SYNC_EVERYSEC;
	o.sync_interval_ms = 60000;
	atomic_store(&g_once_id, 2);
	atomic_store(&g_once_armed, 0);
	atomic_store(&g_once_failed, 0);
	sl_db *db;
	open_db(dir, &o, &db);
	/* The flusher seals segment 1 and stops in its hint's rename while
	 * segments 2 and 3 start; then segment 2's next fdatasync is armed
	 * and the flusher let go: its pass seals segment 2 (which fails),
	 * then syncs. */
	atomic_store(&g_hint_hold, 1);
	char key[32], val[1000];
	memset(val, 'v', sizeof(val));
	uint64_t seq = 0;
	for (int i = 0; highest_seg(dir) < 3; i++) {
		assert_true(i < 400);
		snprintf(key, sizeof(key), "k%d", i);
		assert_int_equal(sl_put(db, key, strlen(key), val, sizeof(val), &seq), SL_OK);
	}
	atomic_store(&g_once_armed, 1);
	atomic_store(&g_hint_hold, 0);
	uint64_t t0 = tu_mono_ms();
	while (!stats(db).failed && tu_mono_ms() - t0 < 10000) {
		usleep(5000);
	}
	assert_true(atomic_load(&g_once_failed));
	assert_true(stats(db).failed != 0);
	usleep(200 * 1000); /* the rest of the flusher's pass */
	sl_stats st = stats(db);
	if (st.synced_seq >= seq) {
		fail_msg("segment 2's fdatasync failed, yet synced_seq = %llu (last seq %llu)",
		         (unsigned long long)st.synced_seq, (unsigned long long)seq);
	}
	assert_int_equal(sl_sync_wait(db, seq), SL_EFAILED);
	assert_true(sl_sync_now(db) < 0);
	assert_int_equal(stats(db).synced_seq, st.synced_seq);
	atomic_store(&g_once_armed, 0);
	sl_close(db);
	tu_rm_rf(dir);
	free(dir);
}

/* sl_get_max tells a value too long for the caller's room from the index
 * alone: a damaged big value is SL_ETOOBIG there (never read, so never
 * checked), SL_ECORRUPT to a read that takes it; an expired one is not
 * found either way. */
static void test_get_max_reads_no_value_too_long(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("getmax", &o, 1 << 20);
	sl_db *db;
	open_db(dir, &o, &db);
	enum { BIG = 100000 };
	char *big = malloc(BIG);
	assert_non_null(big);
	memset(big, 'B', BIG);
	assert_int_equal(sl_put(db, "big", 3, big, BIG, NULL), SL_OK);
	assert_int_equal(sl_put_ttl(db, "gone", 4, big, BIG, 1, NULL), SL_OK);
	void *v = NULL;
	size_t vl = 0;
	uint64_t seq = 0;
	assert_int_equal(sl_get_max(db, "big", 3, BIG, &v, &vl, &seq), SL_OK);
	assert_int_equal(vl, BIG);
	free(v);
	/* a byte in the middle of the value, through the file */
	char *seg = seg_file(dir, 1, "seg");
	int fd = open(seg, O_RDWR);
	assert_true(fd >= 0);
	size_t flen = (size_t)lseek(fd, 0, SEEK_END);
	char *all = malloc(flen);
	assert_non_null(all);
	assert_int_equal(pread(fd, all, flen, 0), (ssize_t)flen);
	char *at = memchr(all, 'B', flen);
	assert_non_null(at);
	assert_int_equal(pwrite(fd, "X", 1, (off_t)(at - all) + BIG / 2), 1);
	close(fd);
	free(all);
	free(seg);
	v = NULL;
	vl = 0;
	assert_int_equal(sl_get_max(db, "big", 3, BIG - 1, &v, &vl, &seq), SL_ETOOBIG);
	assert_null(v);
	assert_int_equal(vl, BIG);
	assert_int_equal(sl_get_max(db, "big", 3, SIZE_MAX, &v, &vl, &seq), SL_ECORRUPT);
	usleep(20 * 1000); /* "gone" expires (1 ms) */
	assert_int_equal(sl_get_max(db, "gone", 4, 10, &v, &vl, &seq), SL_ENOTFOUND);
	assert_int_equal(sl_get_max(db, "gone", 4, SIZE_MAX, &v, &vl, &seq), SL_ENOTFOUND);
	sl_close(db);
	free(big);
	tu_rm_rf(dir);
	free(dir);
}

/* A data directory the open makes, with its parents: each new entry is
 * made durable in its parent (they were never fsynced: a power loss could
 * take the directory, and the acknowledged writes in it, away). */
#define DS_MAX 16
static _Atomic int g_nds;
static ino_t g_ds_ino[DS_MAX];

static int ds_fsync(int fd)
{
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		int i = atomic_fetch_add(&g_nds, 1);
		if (i < DS_MAX) {
			g_ds_ino[i] = st.st_ino;
		}
	}
	return sl_io_default.fsync(fd);
}

static int ds_synced(const char *path)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	for (int i = 0; i < atomic_load(&g_nds) && i < DS_MAX; i++) {
		if (g_ds_ino[i] == st.st_ino) {
			return 1;
		}
	}
	return 0;
}

static void test_new_data_directory_entries_synced(void **state)
{
	(void)state;
	char *root = tu_mkdtemp("mkdirs");
	assert_non_null(root);
	char x[600], y[700], z[800];
	snprintf(x, sizeof(x), "%s/x", root);
	snprintf(y, sizeof(y), "%s/y", x);
	snprintf(z, sizeof(z), "%s/z", y);
	struct sl_io io = sl_io_default;
	io.fsync = ds_fsync;
	sl_options o;
	sl_options_init(&o);
	o.quiet = tu_quiet();
	o.sync = SL_SYNC_ALWAYS;
	o.io = &io;
	atomic_store(&g_nds, 0);
	sl_db *db;
	open_db(z, &o, &db);
	assert_int_equal(sl_put(db, "k", 1, "v", 1, NULL), SL_OK);
	assert_true(ds_synced(root)); /* holds x */
	assert_true(ds_synced(x));    /* holds y */
	assert_true(ds_synced(y));    /* holds z */
	assert_true(ds_synced(z));    /* holds the segment */
	sl_close(db);
	/* a bare relative name (shiplogd's default --dir): its parent is "." */
	char cwd[4096];
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(chdir(root), 0);
	atomic_store(&g_nds, 0);
	int rc = sl_open("rel", &o, &db);
	int rel_synced = rc == SL_OK && ds_synced(".");
	if (rc == SL_OK) {
		sl_close(db);
	}
	assert_int_equal(chdir(cwd), 0);
	assert_int_equal(rc, SL_OK);
	assert_true(rel_synced);
	tu_rm_rf(root);
	free(root);
}

/* ======================================================================
 * A damaged header on the newest file, a compaction output
 * ====================================================================== */

static void tf_put(sl_db *db, const char *k, const char *v, size_t vl)
{
	assert_int_equal(sl_put(db, k, strlen(k), v, vl, NULL), SL_OK);
}

static int tf_absent(sl_db *db, const char *k)
{
	void *v = NULL;
	size_t vl = 0;
	int rc = sl_get(db, k, strlen(k), &v, &vl);
	free(v);
	return rc == SL_ENOTFOUND;
}

/* Segment 3 is a compaction output holding K's put; the tombstone is in
 * segment 2, the log.  Bit rot in 3's header made the open take 3 for the
 * active segment (the newest whose header did not say "compaction"):
 * appends went into it and its rewritten header said first_seq 31 over
 * records from seq 1, so a compaction dropped K's tombstone with segment
 * 2 and K came back at the next open.  Now 3 is loaded as a damaged
 * sealed segment, left as it is, and appends go to a new segment. */
static void test_damaged_output_header(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("outhdr", &o, 4096);
	o.compact_min_bytes = 1;
	sl_db *db;
	open_db(dir, &o, &db);
	char k[32], v[199];
	memset(v, 'x', sizeof(v));
	tf_put(db, "K", "resurrected", 11);
	for (int i = 0; i < 19; i++) {
		snprintf(k, sizeof(k), "f%d", i);
		tf_put(db, k, v, sizeof(v));
	}
	tf_put(db, "f0", v, sizeof(v)); /* a dead record: the full compaction takes segment 1 */
	assert_int_equal(sl_compact(db), SL_OK);
	assert_int_equal(sl_delete(db, "K", 1, NULL), SL_OK);
	for (int i = 0; i < 8; i++) {
		snprintf(k, sizeof(k), "g%d", i);
		tf_put(db, k, v, sizeof(v));
	}
	sl_close(db);
	uint64_t top = highest_seg(dir);
	char *path = seg_file(dir, top, "seg");
	uint8_t *before = NULL;
	size_t blen = 0;
	assert_int_equal(tu_read_file(path, &before, &blen), 0);
	assert_true(blen >= SL_SEG_HDR_SIZE);
	assert_true(((uint32_t)before[20] & SL_SEG_COMPACTED) != 0); /* the output */
	free(before);
	assert_int_equal(tu_flip_byte(path, 30, 0x7f), 0);
	assert_int_equal(tu_read_file(path, &before, &blen), 0);

	open_db(dir, &o, &db);
	assert_true(tf_absent(db, "K"));
	for (int i = 0; i < 8; i++) { /* segment 2, the tombstone's, mostly dead */
		snprintf(k, sizeof(k), "g%d", i);
		tf_put(db, k, "new", 3);
	}
	uint8_t *after = NULL;
	size_t alen = 0;
	assert_int_equal(tu_read_file(path, &after, &alen), 0);
	assert_int_equal(alen, blen);
	assert_memory_equal(after, before, blen); /* neither appended to nor rewritten */
	free(after);
	free(before);
	/* (a compaction may take it: its records are good, its seqs bounded
	 * below by 1, and its output gets a good header) */
	assert_int_equal(sl_compact(db), SL_OK);
	assert_true(tf_absent(db, "K"));
	sl_close(db);
	open_db(dir, &o, &db);
	assert_true(tf_absent(db, "K"));
	sl_close(db);
	free(path);
	tu_rm_rf(dir);
	free(dir);
}

/* ======================================================================
 * Keys aimed at one keydir shard
 * ====================================================================== */

/* 1000 keys of 64 KiB whose unseeded XXH3 puts them all in shard 0 (the
 * top 10 bits): 64 MiB of index entries, more than one shard's index space.
 * With the hash unseeded, the 963rd put failed after its record was
 * appended, the store refused every write from then on, and reopening it
 * ran out of room too.  The seed (keydir.c) spreads them. */
static void test_keys_aimed_at_one_shard(void **state)
{
	(void)state;
	sl_options o;
	char *dir = fault_dir("aimed", &o, 0);
	o.segment_bytes = 64u << 20;
	sl_db *db;
	open_db(dir, &o, &db);
	size_t kl = SL_MAX_KEY;
	uint8_t *k = malloc(kl);
	assert_non_null(k);
	memset(k, 'A', kl);
	uint64_t ctr = 0;
	for (int found = 0; found < 1000; ctr++) {
		memcpy(k + kl - 8, &ctr, 8);
		if (XXH3_64bits(k, kl) >> 54 != 0) {
			continue;
		}
		found++;
		int rc = sl_put(db, k, kl, "v", 1, NULL);
		if (rc != SL_OK) {
			fail_msg("put of aimed key %d: %s", found, sl_strerror(rc));
		}
	}
	assert_int_equal(sl_put(db, "innocent", 8, "x", 1, NULL), SL_OK);
	sl_close(db);
	open_db(dir, &o, &db);
	assert_int_equal(stats(db).keys, 1001);
	sl_close(db);
	free(k);
	tu_rm_rf(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sync_covers_every_segment),
	    cmocka_unit_test(test_fsync_error_reported_once),
	    cmocka_unit_test(test_get_max_reads_no_value_too_long),
	    cmocka_unit_test(test_new_data_directory_entries_synced),
	    cmocka_unit_test(test_damaged_output_header),
	    cmocka_unit_test(test_keys_aimed_at_one_shard),
	    cmocka_unit_test(test_torn_tail_every_offset_put),
	    cmocka_unit_test(test_torn_tail_every_offset_delete),
	    cmocka_unit_test(test_sealed_segment_flips_with_hint),
	    cmocka_unit_test(test_sealed_segment_flips_without_hint),
	    cmocka_unit_test(test_sealed_segment_header_flips),
	    cmocka_unit_test(test_refused_open_leaves_scanned_segments),
	    cmocka_unit_test(test_directory_named_like_a_segment),
	    cmocka_unit_test(test_corrupt_segment_stays_corrupt),
	    cmocka_unit_test(test_corrupt_last_record_cut),
	    cmocka_unit_test(test_lower_limits_keep_stored_records),
	    cmocka_unit_test(test_hint_flips),
	    cmocka_unit_test(test_zeroed_stretch_in_active_segment),
	    cmocka_unit_test(test_zeroed_head_of_active_segment),
	    cmocka_unit_test(test_busy),
	    cmocka_unit_test(test_enospc_via_seam),
	    cmocka_unit_test(test_nearly_full_disk),
	    cmocka_unit_test(test_fsync_eio_always),
	    cmocka_unit_test(test_fsync_eio_everysec),
	};
	const char *filter = getenv("SL_TEST_FILTER"); /* e.g. "test_hint*" */
	if (filter != NULL) {
		cmocka_set_test_filter(filter);
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
