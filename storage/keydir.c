/*
 * keydir.c — the sharded open-addressing hash index (see keydir.h).
 *
 * Why this shape: a read must cost one hash, one slot probe and one arena
 * touch; memory per key must stay near key length + 32 bytes; many threads
 * read while one appender writes.  Hence 4-byte slots holding an 8-bit tag
 * (so a mismatching probe rarely touches the arena) and an index into a
 * packed per-shard arena, and a reader-writer lock per shard.
 *
 * Arena entry (packed, 4-byte aligned):
 *   seg u32 | off u32 | size u32 (bit 31 = tombstone) | seq 48-bit | klen u16 | key
 *
 * Invariants:
 *  1. A slot is 0 (empty) or (tag << 24 | (arena_offset / 4 + 1)).
 *  2. Linear probing without deletion markers: removal shifts the following
 *     cluster back, so a lookup may stop at the first empty slot.
 *  3. count <= 0.8 * (mask + 1) after every insert.
 *  4. Every field of a shard is read under its lock (read or write) and
 *     written under its write lock.
 */
#include "keydir.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xxhash.h>

#include "format.h"
#include "shiplog.h"

#define ENTRY_FIXED 20u
#define TOMB_BIT    0x80000000u
#define ARENA_MAX   (64u << 20)
#define MIN_SLOTS   16u

typedef struct shard {
	pthread_rwlock_t lock;
	uint32_t *slots;
	uint32_t mask; /* slots - 1; 0 while unallocated */
	uint32_t count;
	uint8_t *arena;
	uint32_t used, cap, freed;
	uint32_t keys, tombs;
	int mapped; /* arena is an ARENA_MAX reservation (else malloc'd) */
} shard;

struct sl_keydir {
	shard shards[SL_KD_SHARDS];
};

/* Arenas live in reserved anonymous memory: ARENA_MAX of address space per
 * shard, mapped without a commitment, so growing never copies and resident
 * memory is what was written (rounded to a page).  When the reservation is
 * refused (strict overcommit), fall back to realloc. */
static uint8_t *arena_map(void)
{
	void *p = mmap(NULL, ARENA_MAX, PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static void arena_release(shard *s)
{
	if (s->arena == NULL) {
		return;
	}
	if (s->mapped) {
		munmap(s->arena, ARENA_MAX);
	} else {
		free(s->arena);
	}
	s->arena = NULL;
}

uint64_t sl_keydir_hash(const void *key, size_t klen)
{
	return XXH3_64bits(key, klen);
}

static inline unsigned shard_of(uint64_t h)
{
	return (unsigned)(h >> 54);
}
static inline uint32_t tag_of(uint64_t h)
{
	return (uint32_t)(h >> 46) & 0xffu;
}

void sl_keydir_prefetch(const sl_keydir *kd, uint64_t h)
{
	/* A hint, without the lock: the slots may be replaced (and freed) at
	 * any moment by a growth, and then this touches a stale address,
	 * which a prefetch may do (it never faults); the address is computed
	 * as an integer so a stale mask never makes an out-of-bounds pointer. */
	const shard *s = &kd->shards[shard_of(h)];
	uint32_t *slots = __atomic_load_n(&s->slots, __ATOMIC_RELAXED);
	uint32_t mask = __atomic_load_n(&s->mask, __ATOMIC_RELAXED);
	if (slots != NULL && mask != 0) {
		uintptr_t a = (uintptr_t)slots + (uintptr_t)((uint32_t)h & mask) * sizeof(uint32_t);
		__builtin_prefetch((const void *)a, 0, 1);
	}
}

static inline uint8_t *entry_at(const shard *s, uint32_t slot)
{
	return s->arena + (size_t)((slot & 0xffffffu) - 1) * 4u;
}

static inline size_t entry_size(size_t klen)
{
	return (ENTRY_FIXED + klen + 3u) & ~(size_t)3u;
}

static void entry_read(const uint8_t *e, sl_loc *loc)
{
	uint32_t size = sl_get32(e + 8);
	loc->seg = sl_get32(e);
	loc->off = sl_get32(e + 4);
	loc->size = size & ~TOMB_BIT;
	loc->tomb = (size & TOMB_BIT) != 0;
	loc->seq = (uint64_t)sl_get32(e + 12) | ((uint64_t)sl_get16(e + 16) << 32);
}

static void entry_write(uint8_t *e, const sl_loc *loc)
{
	sl_put32(e, loc->seg);
	sl_put32(e + 4, loc->off);
	sl_put32(e + 8, loc->size | (loc->tomb ? TOMB_BIT : 0));
	sl_put32(e + 12, (uint32_t)loc->seq);
	sl_put16(e + 16, (uint16_t)(loc->seq >> 32));
}

static inline uint16_t entry_klen(const uint8_t *e)
{
	return sl_get16(e + 18);
}

static inline int entry_is(const uint8_t *e, const void *key, size_t klen)
{
	return entry_klen(e) == klen && memcmp(e + ENTRY_FIXED, key, klen) == 0;
}

sl_keydir *sl_keydir_new(void)
{
	sl_keydir *kd = calloc(1, sizeof(*kd));
	if (kd == NULL) {
		return NULL;
	}
	for (unsigned i = 0; i < SL_KD_SHARDS; i++) {
		pthread_rwlock_init(&kd->shards[i].lock, NULL);
	}
	return kd;
}

void sl_keydir_free(sl_keydir *kd)
{
	if (kd == NULL) {
		return;
	}
	for (unsigned i = 0; i < SL_KD_SHARDS; i++) {
		pthread_rwlock_destroy(&kd->shards[i].lock);
		free(kd->shards[i].slots);
		arena_release(&kd->shards[i]);
	}
	free(kd);
}

/* Finds key's slot index, or the empty slot where it would go (*found 0). */
static uint32_t probe(const shard *s, uint64_t h, const void *key, size_t klen, int *found)
{
	uint32_t want = tag_of(h);
	uint32_t i = (uint32_t)h & s->mask;
	for (;;) {
		uint32_t v = s->slots[i];
		if (v == 0) {
			*found = 0;
			return i;
		}
		if ((v >> 24) == want && entry_is(entry_at(s, v), key, klen)) {
			*found = 1;
			return i;
		}
		i = (i + 1) & s->mask;
	}
}

static int grow_slots(shard *s)
{
	uint32_t n = s->mask ? (s->mask + 1) * 2 : MIN_SLOTS;
	uint32_t *slots = calloc(n, sizeof(*slots));
	if (slots == NULL) {
		return SL_ENOMEM;
	}
	for (uint32_t i = 0; s->mask && i <= s->mask; i++) {
		uint32_t v = s->slots[i];
		if (v == 0) {
			continue;
		}
		const uint8_t *e = entry_at(s, v);
		uint64_t h = XXH3_64bits(e + ENTRY_FIXED, entry_klen(e));
		uint32_t j = (uint32_t)h & (n - 1);
		while (slots[j] != 0) {
			j = (j + 1) & (n - 1);
		}
		slots[j] = v;
	}
	free(s->slots);
	/* atomic stores: sl_keydir_prefetch peeks at both without the lock */
	__atomic_store_n(&s->slots, slots, __ATOMIC_RELAXED);
	__atomic_store_n(&s->mask, n - 1, __ATOMIC_RELAXED);
	return SL_OK;
}

/* Rewrites the arena without the holes left by removed entries. */
static int arena_repack(shard *s)
{
	uint32_t cap = s->used - s->freed + 64u;
	uint8_t *a = arena_map();
	int mapped = a != NULL;
	if (a == NULL && (a = malloc(cap)) == NULL) {
		return SL_ENOMEM;
	}
	uint32_t used = 0;
	for (uint32_t i = 0; i <= s->mask; i++) {
		uint32_t v = s->slots[i];
		if (v == 0) {
			continue;
		}
		const uint8_t *e = entry_at(s, v);
		size_t sz = entry_size(entry_klen(e));
		memcpy(a + used, e, sz);
		s->slots[i] = (v & 0xff000000u) | (used / 4u + 1u);
		used += (uint32_t)sz;
	}
	arena_release(s);
	s->arena = a;
	s->mapped = mapped;
	s->used = used;
	s->cap = mapped ? ARENA_MAX : cap;
	s->freed = 0;
	return SL_OK;
}

static int arena_reserve(shard *s, size_t need)
{
	if ((size_t)s->used + need <= s->cap) {
		return SL_OK;
	}
	if ((size_t)s->used + need > ARENA_MAX) {
		return SL_ENOMEM;
	}
	if (s->arena == NULL && (s->arena = arena_map()) != NULL) {
		s->mapped = 1;
		s->cap = ARENA_MAX;
		return SL_OK;
	}
	/* Grow by 1/4: the arena is most of the keydir, so slack is memory. */
	size_t cap = (size_t)s->cap + s->cap / 4u;
	if (cap < (size_t)s->used + need) {
		cap = (size_t)s->used + need;
	}
	if (cap < 1024) {
		cap = 1024;
	}
	if (cap > ARENA_MAX) {
		cap = ARENA_MAX;
	}
	uint8_t *a = realloc(s->arena, cap);
	if (a == NULL) {
		return SL_ENOMEM;
	}
	s->arena = a;
	s->cap = (uint32_t)cap;
	return SL_OK;
}

static void count_entry(shard *s, int tomb, int delta)
{
	if (tomb) {
		s->tombs += (uint32_t)delta;
	} else {
		s->keys += (uint32_t)delta;
	}
}

int sl_keydir_get(sl_keydir *kd, uint64_t h, const void *key, size_t klen,
                  int (*fn)(void *arg, const sl_loc *loc), void *arg)
{
	shard *s = &kd->shards[shard_of(h)];
	int rc = SL_ENOTFOUND;
	pthread_rwlock_rdlock(&s->lock);
	if (s->mask != 0) {
		int found;
		uint32_t i = probe(s, h, key, klen, &found);
		if (found) {
			sl_loc loc;
			entry_read(entry_at(s, s->slots[i]), &loc);
			rc = fn(arg, &loc);
		}
	}
	pthread_rwlock_unlock(&s->lock);
	return rc;
}

typedef struct at_ctx {
	uint32_t seg, off;
} at_ctx;

static int at_cb(void *arg, const sl_loc *loc)
{
	const at_ctx *c = arg;
	return loc->seg == c->seg && loc->off == c->off ? SL_OK : SL_ENOTFOUND;
}

int sl_keydir_is_at(sl_keydir *kd, const void *key, size_t klen, uint32_t seg, uint32_t off)
{
	at_ctx c = {seg, off};
	return sl_keydir_get(kd, sl_keydir_hash(key, klen), key, klen, at_cb, &c) == SL_OK;
}

/* sl_keydir_put's work, with s's write lock held. */
static int put_locked(shard *s, uint64_t h, const void *key, size_t klen, const sl_loc *loc,
                      int only_if_newer, sl_loc *old)
{
	int rc;
	if (s->mask == 0 && (rc = grow_slots(s)) != SL_OK) {
		goto out;
	}
	int found;
	uint32_t i = probe(s, h, key, klen, &found);
	if (found) {
		uint8_t *e = entry_at(s, s->slots[i]);
		sl_loc cur;
		entry_read(e, &cur);
		if (old != NULL) {
			*old = cur;
		}
		if (only_if_newer && cur.seq >= loc->seq) {
			rc = 0;
			goto out;
		}
		entry_write(e, loc);
		count_entry(s, cur.tomb, -1);
		count_entry(s, loc->tomb, +1);
		rc = 1;
		goto out;
	}
	if ((uint64_t)(s->count + 1) * 5 > (uint64_t)(s->mask + 1) * 4) {
		if ((rc = grow_slots(s)) != SL_OK) {
			goto out;
		}
		i = probe(s, h, key, klen, &found);
	}
	size_t esz = entry_size(klen);
	if (s->freed > s->used / 2 && (rc = arena_repack(s)) != SL_OK) {
		goto out;
	}
	if ((rc = arena_reserve(s, esz)) != SL_OK) {
		goto out;
	}
	uint8_t *e = s->arena + s->used;
	entry_write(e, loc);
	sl_put16(e + 18, (uint16_t)klen);
	memcpy(e + ENTRY_FIXED, key, klen);
	s->slots[i] = (tag_of(h) << 24) | (s->used / 4u + 1u);
	s->used += (uint32_t)esz;
	s->count++;
	count_entry(s, loc->tomb, +1);
	rc = 2;
out:
	return rc;
}

int sl_keydir_put(sl_keydir *kd, uint64_t h, const void *key, size_t klen, const sl_loc *loc,
                  int only_if_newer, sl_loc *old)
{
	shard *s = &kd->shards[shard_of(h)];
	pthread_rwlock_wrlock(&s->lock);
	int rc = put_locked(s, h, key, klen, loc, only_if_newer, old);
	pthread_rwlock_unlock(&s->lock);
	return rc;
}

/* Items are taken shard by shard (a stable counting sort of their indexes),
 * each shard's under one hold of its write lock, at most this many at a
 * time so that readers of a shard never wait long. */
#define PUT_MANY_HOLD 512u

#define PUT_MANY_AHEAD 8

int sl_keydir_put_many(sl_keydir *kd, sl_kd_item *items, size_t n, int only_if_newer)
{
	if (n == 0) {
		return SL_OK;
	}
	uint32_t *order = malloc(n * sizeof(*order));
	uint32_t *start = calloc(SL_KD_SHARDS + 1, sizeof(*start));
	if (order == NULL || start == NULL || n > UINT32_MAX) {
		free(order);
		free(start);
		for (size_t i = 0; i < n; i++) { /* one at a time, in order */
			items[i].rc = sl_keydir_put(kd, items[i].h, items[i].key, items[i].klen,
			                            &items[i].loc, only_if_newer, &items[i].old);
		}
		return SL_OK;
	}
	for (size_t i = 0; i < n; i++) {
		start[shard_of(items[i].h) + 1]++;
	}
	for (unsigned k = 0; k < SL_KD_SHARDS; k++) {
		start[k + 1] += start[k];
	}
	for (size_t i = 0; i < n; i++) { /* stable: a key's items keep their order */
		order[start[shard_of(items[i].h)]++] = (uint32_t)i;
	}
	/* start[k] is now the end of shard k's run, and the start of k + 1's. */
	size_t i = 0;
	while (i < n) {
		shard *s = &kd->shards[shard_of(items[order[i]].h)];
		pthread_rwlock_wrlock(&s->lock);
		size_t held = 0;
		do {
			sl_kd_item *it = &items[order[i]];
			if (i + PUT_MANY_AHEAD < n) {
				sl_keydir_prefetch(kd, items[order[i + PUT_MANY_AHEAD]].h);
			}
			it->rc = put_locked(s, it->h, it->key, it->klen, &it->loc, only_if_newer,
			                    &it->old);
			i++;
		} while (i < n && ++held < PUT_MANY_HOLD &&
		         &kd->shards[shard_of(items[order[i]].h)] == s);
		pthread_rwlock_unlock(&s->lock);
	}
	free(order);
	free(start);
	return SL_OK;
}

static int same_place(const sl_loc *a, const sl_loc *b)
{
	return a->seg == b->seg && a->off == b->off && a->seq == b->seq;
}

int sl_keydir_cas(sl_keydir *kd, uint64_t h, const void *key, size_t klen, const sl_loc *expect,
                  const sl_loc *loc)
{
	shard *s = &kd->shards[shard_of(h)];
	int rc = 0;
	pthread_rwlock_wrlock(&s->lock);
	if (s->mask != 0) {
		int found;
		uint32_t i = probe(s, h, key, klen, &found);
		if (found) {
			uint8_t *e = entry_at(s, s->slots[i]);
			sl_loc cur;
			entry_read(e, &cur);
			if (same_place(&cur, expect)) {
				entry_write(e, loc);
				count_entry(s, cur.tomb, -1);
				count_entry(s, loc->tomb, +1);
				rc = 1;
			}
		}
	}
	pthread_rwlock_unlock(&s->lock);
	return rc;
}

int sl_keydir_remove(sl_keydir *kd, uint64_t h, const void *key, size_t klen, const sl_loc *expect)
{
	shard *s = &kd->shards[shard_of(h)];
	int rc = 0;
	pthread_rwlock_wrlock(&s->lock);
	if (s->mask == 0) {
		goto out;
	}
	int found;
	uint32_t i = probe(s, h, key, klen, &found);
	if (!found) {
		goto out;
	}
	uint8_t *e = entry_at(s, s->slots[i]);
	sl_loc cur;
	entry_read(e, &cur);
	if (!same_place(&cur, expect)) {
		goto out;
	}
	count_entry(s, cur.tomb, -1);
	s->freed += (uint32_t)entry_size(entry_klen(e));
	s->count--;
	/* Backward-shift deletion (invariant 2). */
	uint32_t hole = i, j = i;
	for (;;) {
		j = (j + 1) & s->mask;
		uint32_t v = s->slots[j];
		if (v == 0) {
			break;
		}
		const uint8_t *ej = entry_at(s, v);
		uint32_t home = (uint32_t)XXH3_64bits(ej + ENTRY_FIXED, entry_klen(ej)) & s->mask;
		/* Move v into the hole unless its home lies cyclically in (hole, j]. */
		int stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
		if (!stays) {
			s->slots[hole] = v;
			hole = j;
		}
	}
	s->slots[hole] = 0;
	rc = 1;
out:
	pthread_rwlock_unlock(&s->lock);
	return rc;
}

int sl_keydir_scan_shard(sl_keydir *kd, unsigned shard_idx,
                         int (*fn)(void *arg, const void *key, size_t klen, const sl_loc *loc),
                         void *arg)
{
	shard *s = &kd->shards[shard_idx];
	int rc = 0;
	pthread_rwlock_rdlock(&s->lock);
	for (uint32_t i = 0; s->mask != 0 && i <= s->mask && rc == 0; i++) {
		uint32_t v = s->slots[i];
		if (v == 0) {
			continue;
		}
		const uint8_t *e = entry_at(s, v);
		sl_loc loc;
		entry_read(e, &loc);
		rc = fn(arg, e + ENTRY_FIXED, entry_klen(e), &loc);
	}
	pthread_rwlock_unlock(&s->lock);
	return rc;
}

void sl_keydir_barrier(sl_keydir *kd)
{
	for (unsigned i = 0; i < SL_KD_SHARDS; i++) {
		pthread_rwlock_wrlock(&kd->shards[i].lock);
		pthread_rwlock_unlock(&kd->shards[i].lock);
	}
}

void sl_keydir_stats_get(sl_keydir *kd, sl_keydir_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < SL_KD_SHARDS; i++) {
		shard *s = &kd->shards[i];
		pthread_rwlock_rdlock(&s->lock);
		out->keys += s->keys;
		out->tombstones += s->tombs;
		out->bytes +=
		    (uint64_t)(s->mask ? s->mask + 1 : 0) * 4u + s->used - s->freed + sizeof(*s);
		out->arena_cap += s->mapped ? (s->used + 4095u) & ~4095u : s->cap;
		pthread_rwlock_unlock(&s->lock);
	}
}
