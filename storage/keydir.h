/*
 * keydir.h — the in-memory hash index: key → location of its latest record.
 *
 * One table for the whole node, split into SL_KD_SHARDS shards by hash so a
 * writer updating one key never blocks readers of most others, and a resize
 * moves only one shard.  Each shard is an open-addressing, linear-probing
 * table of 4-byte slots (8-bit hash tag + index into the shard's key arena);
 * entries live packed in the arena — no per-entry malloc, no linked nodes.
 *
 * Memory per key: 20 + klen bytes of arena (rounded up to 4) plus 4 bytes
 * per slot at a load factor between 0.4 and 0.8.  A removed key's entry
 * stays in the arena as a hole until the shard's next insert finds the
 * holes bigger than its live entries and repacks it.
 */
#ifndef SL_KEYDIR_H
#define SL_KEYDIR_H

#include <stddef.h>
#include <stdint.h>

#define SL_KD_SHARDS  1024u
#define SL_KD_SEQ_MAX ((1ull << 48) - 1) /* seqs are stored in 48 bits */

typedef struct sl_loc {
	uint32_t seg;  /* segment id */
	uint32_t off;  /* offset of the record in the segment */
	uint32_t size; /* whole record size */
	int tomb;      /* 1: the latest record is a tombstone */
	uint64_t seq;
} sl_loc;

typedef struct sl_keydir sl_keydir;

sl_keydir *sl_keydir_new(void);
void sl_keydir_free(sl_keydir *kd);

uint64_t sl_keydir_hash(const void *key, size_t klen);

/* A hint that key h will be looked up soon: starts loading its slot's
 * cache line (batches prefetch every key first, then look them up, so the
 * cache misses overlap).  Takes no lock and changes nothing. */
void sl_keydir_prefetch(const sl_keydir *kd, uint64_t h);

/* After sl_keydir_prefetch: under the shard's read lock, starts loading the
 * entry of the first slot on h's probe path whose tag matches. */
void sl_keydir_prefetch_entry(sl_keydir *kd, uint64_t h);

/* Looks key up.  When found, calls fn(arg, loc) while holding the shard's
 * read lock (so the location cannot be replaced or compacted away during fn)
 * and returns fn's result; SL_ENOTFOUND (1) when absent.  fn must be short
 * and must not call back into the keydir. */
int sl_keydir_get(sl_keydir *kd, uint64_t h, const void *key, size_t klen,
                  int (*fn)(void *arg, const sl_loc *loc), void *arg);

/* 1 when key's entry is exactly the record at (seg, off), else 0: is that
 * record the key's current version? */
int sl_keydir_is_at(sl_keydir *kd, const void *key, size_t klen, uint32_t seg, uint32_t off);

/* Inserts or replaces key's location.  With only_if_newer, an existing entry
 * whose seq is >= loc->seq is kept.  Returns 2 when the key was new, 1 when
 * an entry was replaced (*old filled, old may be NULL), 0 when kept
 * (*old filled with the current entry), SL_ENOMEM when memory or the shard's
 * arena (64 MiB) ran out. */
int sl_keydir_put(sl_keydir *kd, uint64_t h, const void *key, size_t klen, const sl_loc *loc,
                  int only_if_newer, sl_loc *old);

/* One insert of a batch for sl_keydir_put_many: h, key, klen and loc in;
 * rc and old out, as sl_keydir_put's return value and *old. */
typedef struct sl_kd_item {
	uint64_t h;
	const void *key;
	size_t klen;
	sl_loc loc;
	sl_loc old;
	int rc;
} sl_kd_item;

/* sl_keydir_put for each of items[0..n), with the same outcome as calling
 * it for each in order, but grouped by shard: each shard's lock is taken
 * once per run of (up to 512) items, and its slots stay in cache.  A reader
 * may see some items of the batch before others.  Returns SL_OK; each
 * item's own rc tells its outcome. */
int sl_keydir_put_many(sl_keydir *kd, sl_kd_item *items, size_t n, int only_if_newer);

/* Replaces key's location only if it is still exactly *expect (same segment,
 * offset and seq): a concurrent overwrite wins.  1 when replaced, 0 when not. */
int sl_keydir_cas(sl_keydir *kd, uint64_t h, const void *key, size_t klen, const sl_loc *expect,
                  const sl_loc *loc);

/* Removes key only if its entry is still exactly *expect.  1 / 0 as above. */
int sl_keydir_remove(sl_keydir *kd, uint64_t h, const void *key, size_t klen, const sl_loc *expect);

/* Calls fn for every entry of shard `shard` (0 .. SL_KD_SHARDS-1) under its
 * read lock.  A non-zero return stops and is returned.  key is borrowed. */
int sl_keydir_scan_shard(sl_keydir *kd, unsigned shard,
                         int (*fn)(void *arg, const void *key, size_t klen, const sl_loc *loc),
                         void *arg);

/* Takes and releases every shard's write lock once: after it returns, no
 * reader that looked a location up before the call is still inside its fn. */
void sl_keydir_barrier(sl_keydir *kd);

typedef struct sl_keydir_stats {
	uint64_t keys;           /* entries that are not tombstones */
	uint64_t tombstones;     /* entries that are */
	uint64_t bytes;          /* slot tables + arena bytes in use */
	uint64_t arena_cap;      /* arena bytes allocated */
	uint64_t pool_free;      /* arena bytes freed by repacks, kept for reuse */
	uint64_t pool_top;       /* bytes of the pool's reservation handed out */
	uint64_t pool_populated; /* of the reservation, faulted in ahead (POPULATE_AHEAD) */
} sl_keydir_stats;

void sl_keydir_stats_get(sl_keydir *kd, sl_keydir_stats *out);

#endif
