/*
 * keydir.c — the sharded open-addressing hash index (see keydir.h).
 *
 * Why this shape: a read must cost one hash, one slot probe and one arena
 * touch; memory per key must stay near key length + 32 bytes; many threads
 * read while one appender writes.  Hence 4-byte slots holding an 8-bit tag
 * (so a mismatching probe rarely touches the arena) and an index into a
 * packed per-shard arena, and a reader-writer lock per shard.  The arenas'
 * memory is 4 KiB chunks of one pool per keydir (see `pool` below), so the
 * arenas of all shards share a few huge pages instead of 1024 mappings.
 *
 * Arena entry (packed, 4-byte aligned):
 *   seg u32 | off u32 | size u32 (bit 31 = tombstone) | seq 48-bit | klen u16 | key
 *
 * Invariants:
 *  1. A slot is 0 (empty) or (tag << 24 | (arena_offset / 4 + 1)); the
 *     offset is in the shard's index space, chunk (offset >> 12) of its
 *     chunk table, and an entry lies whole in one run of chunks.
 *  2. Linear probing without deletion markers: removal shifts the following
 *     cluster back, so a lookup may stop at the first empty slot.
 *  3. count <= 0.8 * (mask + 1) after every insert.
 *  4. Every field of a shard is read under its lock (read or write) and
 *     written under its write lock.
 */
#include "keydir.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "format.h"
#include "shiplog.h"

#define ENTRY_FIXED 20u
#define TOMB_BIT    0x80000000u
#define ARENA_MAX   (64u << 20) /* a shard's index space: 24 bits of 4-byte units */
#define MIN_SLOTS   16u

/* Arena memory comes in 4 KiB chunks from one pool per keydir (below). */
#define CHUNK_SHIFT  12u
#define CHUNK        (1u << CHUNK_SHIFT)
#define SHARD_CHUNKS (ARENA_MAX / CHUNK)
#define RUN_START    ((uintptr_t)1) /* tag bit in a chunk-table entry */
#define POOL_MAX     ((size_t)SL_KD_SHARDS * ARENA_MAX)
/* The longest run an entry needs (a 65535-byte key: 17 chunks), + 1. */
#define RUN_CLASSES ((ENTRY_FIXED + 65535u + 3u + CHUNK - 1u) / CHUNK + 1u)

/* A shard's arena: chunk i of its index space is tab[i] (bit 0 tagged on
 * the first chunk of each run allocated together).  An entry never spans
 * two runs, so it is contiguous in memory. */
typedef struct arena {
	uintptr_t *tab;
	uint32_t nchunks, tabcap;
	uint32_t used;  /* bytes of index space taken */
	uint32_t freed; /* of which holes left by removed entries */
	uint32_t waste; /* and unused tails of runs (an entry did not fit) */
} arena;

/* Two cache lines, aligned: the first holds the lock and the slots, the
 * second the mask and the arena, and sl_keydir_prefetch loads both (a
 * probe reads all four; unaligned, a header straddled three lines, and the
 * second was a miss of every put a prefetch did not cover). */
typedef struct shard {
	pthread_rwlock_t lock;
	uint32_t *slots;
	uint32_t mask; /* slots - 1; 0 while unallocated */
	uint32_t count;
	arena a;
	uint32_t keys, tombs;
} __attribute__((aligned(64))) shard;

/* The chunk pool.  Why: with an arena per shard in its own mapping, a put
 * touched the tail page of one of 1024 arenas, nearly always a TLB miss
 * (a two-level page walk in a VM): about 1 us of a put's 13 us of server
 * CPU went to the keydir.  All arenas now take 4 KiB chunks from one
 * reservation marked MADV_HUGEPAGE, handed out in order, so the arenas of
 * a million keys lie in some twenty 2 MiB pages.  The runs a repack frees
 * go on free lists by length and are reused whole; resident memory does
 * not shrink.  When the reservation is refused (strict overcommit), runs
 * are malloc'd. */
typedef struct pool {
	pthread_mutex_t mu;
	uint8_t *base; /* POOL_MAX reserved, or NULL: malloc */
	size_t top;    /* bytes of base handed out */
	/* Pages ahead of top are faulted in by a thread of the pool's own
	 * (pool_ahead_main), not by the put that first writes them: see
	 * POPULATE_AHEAD.  Under mu: */
	pthread_t th;
	pthread_cond_t cv;
	int th_started, th_quit, th_off; /* th_off: the kernel refused, or no thread */
	size_t populated, want;          /* bytes of base faulted in; asked for */
	/* freed runs of k chunks (freek[k]), linked through their first
	 * word: a run is reused whole, by an entry that needs k chunks */
	void *freek[RUN_CLASSES];
	uint64_t free_bytes; /* on those lists */
} pool;

/* Each shard's slots, mask and chunk table, copied here for
 * sl_keydir_prefetch: 24 KiB that stay in cache, where the shard headers
 * (128 KiB) do not, so the prefetch of a slot and of the chunk table need
 * not wait for the header to load first.  The table is a probe's second
 * dependent miss (slot → table → entry): with it loaded ahead, the entry's
 * address is known as soon as the slot is (sl_keydir_prefetch_entry). */
typedef struct slot_hint {
	uint32_t *slots;
	uintptr_t *tab;
	uint32_t mask;
} slot_hint;

struct sl_keydir {
	pool pool;
	slot_hint hint[SL_KD_SHARDS];
	shard shards[SL_KD_SHARDS];
};

/* How far ahead of the pool's top its thread faults pages in.  Why: the
 * first write to each 2 MiB page of the pool faulted there and then, in
 * the put that made it, and the kernel zeroed the page before the put went
 * on; on this project's VMs a first touch of memory costs several times a
 * later one (docs/performance.md, "The machine").  A follower catching up
 * on 500 MB of new keys spent some 20 % of its applying thread's time in
 * those faults, with the other core partly idle.  Faulted in ahead by a
 * thread that does nothing else, they leave the applying thread (and a
 * primary's event loop) alone.  4 MiB, two pages, resident a little before
 * they are needed; and only once the pool holds a page's worth (a small
 * keydir, as a test's or a compaction's, gets no thread). */
#define POPULATE_AHEAD (4u << 20)
#define POPULATE_STEP  (2u << 20)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older headers lack it */
#endif

static void *pool_ahead_main(void *arg)
{
	pool *p = arg;
	/* Started by whichever thread first needs it: a follower's applying
	 * thread, say, under --repl-sched batch or a short --io-slice-us,
	 * whose policy and slice it inherited.  It is the store's: the
	 * default policy, which also resets a custom slice. */
	struct sched_param sp = {0};
	pthread_setschedparam(pthread_self(), SCHED_OTHER, &sp);
	pthread_mutex_lock(&p->mu);
	while (!p->th_quit) {
		if (p->populated >= p->want || p->th_off) {
			pthread_cond_wait(&p->cv, &p->mu);
			continue;
		}
		size_t from = p->populated, to = p->want;
		pthread_mutex_unlock(&p->mu);
		int rc = madvise(p->base + from, to - from, MADV_POPULATE_WRITE);
		pthread_mutex_lock(&p->mu);
		if (rc == 0) {
			if (to > p->populated) { /* pool_ahead may have moved it past */
				p->populated = to;
			}
		} else {
			p->th_off = 1; /* an older kernel, or no memory now: the puts fault */
		}
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* Under p->mu, after top moved: asks the thread (started on first need)
 * to fault in the pages up to POPULATE_AHEAD past top. */
static void pool_ahead(pool *p)
{
	if (p->th_off || p->top < POPULATE_STEP || p->top + POPULATE_AHEAD <= p->want) {
		return;
	}
	size_t want = (p->top + POPULATE_AHEAD + POPULATE_STEP - 1) & ~((size_t)POPULATE_STEP - 1);
	p->want = want < POOL_MAX ? want : POOL_MAX;
	if (p->populated < p->top) {
		p->populated = p->top & ~((size_t)POPULATE_STEP - 1); /* the puts are ahead of it */
	}
	if (!p->th_started) {
		if (pthread_create(&p->th, NULL, pool_ahead_main, p) != 0) {
			p->th_off = 1;
			return;
		}
		p->th_started = 1;
	}
	pthread_cond_signal(&p->cv);
}

static void pool_init(pool *p)
{
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	void *b = mmap(NULL, POOL_MAX, PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (b == MAP_FAILED) {
		return;
	}
#ifdef MADV_HUGEPAGE
	madvise(b, POOL_MAX, MADV_HUGEPAGE); /* a hint: without it, 4 KiB pages */
#endif
	p->base = b;
}

static void pool_destroy(pool *p)
{
	if (p->th_started) {
		pthread_mutex_lock(&p->mu);
		p->th_quit = 1;
		pthread_cond_signal(&p->cv);
		pthread_mutex_unlock(&p->mu);
		pthread_join(p->th, NULL);
	}
	pthread_cond_destroy(&p->cv);
	if (p->base != NULL) {
		munmap(p->base, POOL_MAX);
	}
	pthread_mutex_destroy(&p->mu);
}

/* k contiguous chunks, or NULL. */
static uint8_t *pool_take(pool *p, uint32_t k)
{
	uint8_t *r = NULL;
	size_t n = (size_t)k * CHUNK;
	if (p->base == NULL) {
		return aligned_alloc(CHUNK, n);
	}
	pthread_mutex_lock(&p->mu);
	if (k < RUN_CLASSES && p->freek[k] != NULL) {
		r = p->freek[k];
		p->freek[k] = *(void **)r;
		p->free_bytes -= n;
	} else if (n <= POOL_MAX - p->top) {
		r = p->base + p->top;
		p->top += n;
		pool_ahead(p);
	}
	pthread_mutex_unlock(&p->mu);
	return r;
}

/* Gives back the chunks of a's table, run by run (a run starts at each
 * RUN_START tag and ends before the next). */
static void pool_give(pool *p, const arena *a)
{
	pthread_mutex_lock(&p->mu);
	for (uint32_t i = 0, j; i < a->nchunks; i = j) {
		for (j = i + 1; j < a->nchunks && !(a->tab[j] & RUN_START);) {
			j++;
		}
		uint8_t *c = (uint8_t *)(a->tab[i] & ~RUN_START);
		uint32_t k = j - i;
		if (p->base == NULL) {
			free(c);
		} else if (k < RUN_CLASSES) {
			*(void **)c = p->freek[k];
			p->freek[k] = c;
			p->free_bytes += (uint64_t)k * CHUNK;
		}
		/* else: no entry needs such a run, and none is ever made */
	}
	pthread_mutex_unlock(&p->mu);
}

static void arena_release(pool *p, arena *a)
{
	pool_give(p, a);
	free(a->tab);
	memset(a, 0, sizeof(*a));
}

/* Room for an entry of esz bytes at the end of a: its offset in a's index
 * space in *off.  SL_ENOMEM when memory or the index space ran out. */
static int arena_take(pool *p, arena *a, size_t esz, uint32_t *off)
{
	uint32_t room = a->nchunks * CHUNK - a->used;
	if (esz > room) {
		uint32_t k = (uint32_t)((esz + CHUNK - 1) >> CHUNK_SHIFT);
		if (a->nchunks + k > SHARD_CHUNKS) {
			return SL_ENOMEM;
		}
		if (a->nchunks + k > a->tabcap) {
			uint32_t cap = a->tabcap ? a->tabcap * 2 : 8;
			while (cap < a->nchunks + k) {
				cap *= 2;
			}
			uintptr_t *t = realloc(a->tab, cap * sizeof(*t));
			if (t == NULL) {
				return SL_ENOMEM;
			}
			a->tab = t;
			a->tabcap = cap;
		}
		uint8_t *r = pool_take(p, k);
		if (r == NULL) {
			return SL_ENOMEM;
		}
		for (uint32_t i = 0; i < k; i++) {
			a->tab[a->nchunks + i] =
			    (uintptr_t)(r + (size_t)i * CHUNK) | (i == 0 ? RUN_START : 0);
		}
		a->waste += room; /* the last run's tail stays unused */
		a->used = a->nchunks * CHUNK;
		a->nchunks += k;
	}
	*off = a->used;
	a->used += (uint32_t)esz;
	return SL_OK;
}

static inline uint8_t *arena_at(const arena *a, uint32_t off)
{
	return (uint8_t *)(a->tab[off >> CHUNK_SHIFT] & ~RUN_START) + (off & (CHUNK - 1u));
}

/* The hash is seeded once per process, at random: the shard is its top
 * 10 bits, and with a known hash anyone could aim keys at one shard and
 * fill its 64 MiB of index space (960 keys of 64 KiB): the next put was
 * in the log but not indexed, the store failed for good, and the open
 * that re-indexed the same keys ran out of room too.  Spread at random,
 * one shard fills only when the whole keydir holds about 64 GiB.
 * Nothing stores these hashes: hints, the log, digests and scan cursors
 * use keys. */
static uint64_t g_seed;

/* At load time, before main: every hash in the process sees one seed. */
__attribute__((constructor)) static void seed_init(void)
{
	uint64_t s = 0;
	if (getrandom(&s, sizeof(s), 0) != (ssize_t)sizeof(s)) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		s = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() << 32 ^
		    (uint64_t)ts.tv_sec;
	}
	g_seed = s;
}

uint64_t sl_keydir_hash(const void *key, size_t klen)
{
	return XXH3_64bits_withSeed(key, klen, g_seed);
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
	 * as an integer so a stale mask never makes an out-of-bounds pointer.
	 * The shard's header (its lock) is fetched at the same time. */
	unsigned i = shard_of(h);
	const slot_hint *sh = &kd->hint[i];
	uint32_t *slots = __atomic_load_n(&sh->slots, __ATOMIC_RELAXED);
	uint32_t mask = __atomic_load_n(&sh->mask, __ATOMIC_RELAXED);
	uintptr_t *tab = __atomic_load_n(&sh->tab, __ATOMIC_RELAXED);
	__builtin_prefetch(&kd->shards[i].lock, 1, 1);
	__builtin_prefetch((const char *)&kd->shards[i] + 64, 1, 1);
	if (slots != NULL && mask != 0) {
		uintptr_t a = (uintptr_t)slots + (uintptr_t)((uint32_t)h & mask) * sizeof(uint32_t);
		__builtin_prefetch((const void *)a, 0, 1);
	}
	if (tab != NULL) { /* its first 16 chunks: 64 KiB of entries, ~1,800 keys */
		__builtin_prefetch(tab, 0, 1);
		__builtin_prefetch(tab + 8, 0, 1);
	}
}

/* Keeps s's hint's chunk table current (its slots: grow_slots); called
 * where the table can move, an insert's arena_repack and arena_take. */
static inline void hint_tab(sl_keydir *kd, const shard *s)
{
	slot_hint *sh = &kd->hint[s - kd->shards];
	if (__atomic_load_n(&sh->tab, __ATOMIC_RELAXED) != s->a.tab) {
		__atomic_store_n(&sh->tab, s->a.tab, __ATOMIC_RELAXED);
	}
}

static inline uint8_t *entry_at(const shard *s, uint32_t slot)
{
	return arena_at(&s->a, ((slot & 0xffffffu) - 1u) * 4u);
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
	void *mem = NULL; /* the shards are aligned to cache lines */
	if (posix_memalign(&mem, 64, sizeof(sl_keydir)) != 0) {
		return NULL;
	}
	sl_keydir *kd = memset(mem, 0, sizeof(sl_keydir));
	pool_init(&kd->pool);
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
		if (kd->pool.base != NULL) {
			free(kd->shards[i].a.tab); /* its chunks go with the pool */
		} else {
			arena_release(&kd->pool, &kd->shards[i].a);
		}
	}
	pool_destroy(&kd->pool);
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

static int grow_slots(sl_keydir *kd, shard *s)
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
		uint64_t h = sl_keydir_hash(e + ENTRY_FIXED, entry_klen(e));
		uint32_t j = (uint32_t)h & (n - 1);
		while (slots[j] != 0) {
			j = (j + 1) & (n - 1);
		}
		slots[j] = v;
	}
	free(s->slots);
	s->slots = slots;
	s->mask = n - 1;
	/* atomic stores: sl_keydir_prefetch peeks at both without the lock */
	slot_hint *sh = &kd->hint[s - kd->shards];
	__atomic_store_n(&sh->slots, slots, __ATOMIC_RELAXED);
	__atomic_store_n(&sh->mask, n - 1, __ATOMIC_RELAXED);
	return SL_OK;
}

/* Rewrites the arena without the holes left by removed entries.  Builds
 * the new arena and the new slots aside, so a failure changes nothing. */
static int arena_repack(pool *p, shard *s)
{
	arena n = {0};
	uint32_t *ns = malloc(((size_t)s->mask + 1) * sizeof(*ns));
	if (ns == NULL) {
		return SL_ENOMEM;
	}
	for (uint32_t i = 0; i <= s->mask; i++) {
		uint32_t v = s->slots[i], off;
		ns[i] = 0;
		if (v == 0) {
			continue;
		}
		const uint8_t *e = entry_at(s, v);
		size_t sz = entry_size(entry_klen(e));
		if (arena_take(p, &n, sz, &off) != SL_OK) {
			free(ns);
			arena_release(p, &n);
			return SL_ENOMEM;
		}
		memcpy(arena_at(&n, off), e, sz);
		ns[i] = (v & 0xff000000u) | (off / 4u + 1u);
	}
	memcpy(s->slots, ns, ((size_t)s->mask + 1) * sizeof(*ns));
	free(ns);
	arena_release(p, &s->a);
	s->a = n;
	return SL_OK;
}

/* Is a repack due: do the holes left by removed entries outweigh the live
 * entries?  Checked before each new key's insert, so an arena holds at most
 * about as many bytes of removed entries as of live ones, plus the unused
 * tails of its runs (waste: each shorter than the entry that started the
 * next run).  The tails count on neither side.  Their share depends only on
 * the key lengths, not on removals: about half the arena when entries are a
 * little over a chunk (4077-byte keys: one 4100-byte entry per run of two
 * chunks) or a little over half of one (2100-byte keys: one per chunk).
 * With them counted as live (the test was freed > used / 2), such a shard
 * repacked only once nearly every entry in it was a hole, so churn (remove
 * two keys in three, insert them again) grew its arena by the removed
 * entries every round: 9 times its size after 12 rounds. */
static int repack_due(const arena *a)
{
	return (uint64_t)a->freed * 2u > (uint64_t)a->used - a->waste;
}

static void count_entry(shard *s, int tomb, int delta)
{
	if (tomb) {
		s->tombs += (uint32_t)delta;
	} else {
		s->keys += (uint32_t)delta;
	}
}

/* sl_keydir_prefetch_entry's work, with s's lock held.  Always inlined:
 * a prefetch has no effect the compiler must keep, and GCC found this
 * function, called on its own, free of effects and dropped the calls. */
static inline __attribute__((always_inline)) void entry_prefetch_locked(const shard *s, uint64_t h)
{
	uint32_t want = tag_of(h);
	if (s->mask == 0) {
		return;
	}
	/* tags only: no entry is read here, so no miss is waited for */
	for (uint32_t i = (uint32_t)h & s->mask, n = 0; n < 8; n++) {
		uint32_t v = s->slots[i];
		if (v == 0) {
			break;
		}
		if ((v >> 24) == want) {
			const uint8_t *e = entry_at(s, v);
			__builtin_prefetch(e, 0, 1);
			__builtin_prefetch(e + 32, 0, 1); /* key bytes past the first line */
			break;
		}
		i = (i + 1) & s->mask;
	}
}

void sl_keydir_prefetch_entry(sl_keydir *kd, uint64_t h)
{
	shard *s = &kd->shards[shard_of(h)];
	pthread_rwlock_rdlock(&s->lock);
	entry_prefetch_locked(s, h);
	pthread_rwlock_unlock(&s->lock);
}

/* sl_keydir_prefetch_entry for sl_keydir_put_many, which holds held's
 * write lock: a shard whose lock is not free at once is skipped (its own;
 * or another writer's, and waiting for it could deadlock two batches). */
static void entry_prefetch_try(sl_keydir *kd, uint64_t h, const shard *held)
{
	shard *s = &kd->shards[shard_of(h)];
	if (s == held || pthread_rwlock_tryrdlock(&s->lock) != 0) {
		return;
	}
	entry_prefetch_locked(s, h);
	pthread_rwlock_unlock(&s->lock);
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
static int put_locked(sl_keydir *kd, shard *s, uint64_t h, const void *key, size_t klen,
                      const sl_loc *loc, int only_if_newer, sl_loc *old)
{
	int rc;
	if (s->mask == 0 && (rc = grow_slots(kd, s)) != SL_OK) {
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
		/* Equal seqs: the same record twice (a compaction output beside
		 * its input after a crash) — or an expired put and the
		 * tombstone compaction made of it (compact.c): the tombstone
		 * wins, whichever comes first, so that every open agrees. */
		if (only_if_newer &&
		    (cur.seq > loc->seq || (cur.seq == loc->seq && (cur.tomb || !loc->tomb)))) {
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
		if ((rc = grow_slots(kd, s)) != SL_OK) {
			goto out;
		}
		i = probe(s, h, key, klen, &found);
	}
	size_t esz = entry_size(klen);
	if (repack_due(&s->a) && (rc = arena_repack(&kd->pool, s)) != SL_OK) {
		goto out;
	}
	uint32_t off;
	rc = arena_take(&kd->pool, &s->a, esz, &off);
	hint_tab(kd, s); /* the repack or the take may have moved the chunk table */
	if (rc != SL_OK) {
		goto out;
	}
	uint8_t *e = arena_at(&s->a, off);
	entry_write(e, loc);
	sl_put16(e + 18, (uint16_t)klen);
	memcpy(e + ENTRY_FIXED, key, klen);
	s->slots[i] = (tag_of(h) << 24) | (off / 4u + 1u);
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
	int rc = put_locked(kd, s, h, key, klen, loc, only_if_newer, old);
	pthread_rwlock_unlock(&s->lock);
	return rc;
}

/* Items are taken shard by shard (a stable counting sort of their indexes),
 * each shard's under one hold of its write lock, at most this many at a
 * time so that readers of a shard never wait long. */
#define PUT_MANY_HOLD 512u

/* A put's three dependent misses (slot, chunk table, entry) are loaded
 * ahead in two stages: the slot and the table PUT_MANY_AHEAD items ahead
 * (sl_keydir_prefetch), the entry, whose address needs both,
 * PUT_MANY_AHEAD2 items ahead.  A follower's batch is some 30 records in
 * as many shards, so the first items are prefetched before the loop too.
 * The probe was a quarter of a follower's CPU, nearly all of it waiting on
 * those loads; 30 puts into 1 M keys took 205 ns each, 105 with the
 * stages (a throwaway test of put_many alone; 495 → 280 with the caches
 * flushed between batches, as a follower's are by the other processes). */
#define PUT_MANY_AHEAD  24
#define PUT_MANY_AHEAD2 12

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
	for (size_t j = 0; j < n && j < PUT_MANY_AHEAD; j++) {
		sl_keydir_prefetch(kd, items[order[j]].h);
	}
	for (size_t j = 0; j < n && j < PUT_MANY_AHEAD2; j++) {
		entry_prefetch_try(kd, items[order[j]].h, NULL);
	}
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
			if (i + PUT_MANY_AHEAD2 < n) {
				entry_prefetch_try(kd, items[order[i + PUT_MANY_AHEAD2]].h, s);
			}
			it->rc = put_locked(kd, s, it->h, it->key, it->klen, &it->loc,
			                    only_if_newer, &it->old);
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
	s->a.freed += (uint32_t)entry_size(entry_klen(e));
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
		uint32_t home =
		    (uint32_t)sl_keydir_hash(ej + ENTRY_FIXED, entry_klen(ej)) & s->mask;
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
		out->bytes += (uint64_t)(s->mask ? s->mask + 1 : 0) * 4u + s->a.used - s->a.freed -
		              s->a.waste + sizeof(*s) + (uint64_t)s->a.tabcap * sizeof(*s->a.tab);
		out->arena_cap += (uint64_t)s->a.nchunks * CHUNK;
		pthread_rwlock_unlock(&s->lock);
	}
	pthread_mutex_lock(&kd->pool.mu);
	out->pool_free = kd->pool.free_bytes;
	out->pool_top = kd->pool.top;
	out->pool_populated = kd->pool.populated;
	pthread_mutex_unlock(&kd->pool.mu);
}
