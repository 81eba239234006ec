/*
 * test_keydir.c — the sharded open-addressing index (storage/keydir.c).
 *
 * Why: the keydir is the only place a key's latest location lives between
 * restarts; a lookup that misses a present key reads a stale value, one that
 * finds a removed key resurrects it.  The dangerous code is backward-shift
 * deletion (keydir.c invariant 2) and the arena repack, so besides the
 * contract of each call the adversarial cases are: a 200k-key table with a
 * random half removed (every survivor found with its exact location, every
 * removed key absent), hand-picked keys that form one wrap-around cluster in
 * a 16-slot shard removed in every position and random orders, and churn
 * that forces repacks.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keydir.h"
#include "shiplog.h"

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint64_t rng(void)
{
	uint64_t x = rng_state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545f4914f6cdd1dull;
}

static void shuffle(uint32_t *a, size_t n)
{
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)(rng() % i);
		uint32_t t = a[i - 1];
		a[i - 1] = a[j];
		a[j] = t;
	}
}

#define KLEN 16

/* Key i: 16 printable bytes, unique per i. */
static void key_of(uint32_t i, char k[KLEN + 1])
{
	snprintf(k, KLEN + 1, "key-%012u", i);
}

/* A distinct, fully populated location per key i (and version v). */
static sl_loc loc_of(uint32_t i, uint32_t v)
{
	sl_loc l = {
	    .seg = i % 97u + 1u + v * 1000u,
	    .off = i * 7u + 32u,
	    .size = 28u + KLEN + i % 100u,
	    .tomb = i % 13u == 0,
	    .seq = (uint64_t)i + 1u + (uint64_t)v * 10000000u,
	};
	return l;
}

static int loc_eq(const sl_loc *a, const sl_loc *b)
{
	return a->seg == b->seg && a->off == b->off && a->size == b->size && a->tomb == b->tomb &&
	       a->seq == b->seq;
}

static void assert_loc_eq(const sl_loc *got, const sl_loc *want)
{
	if (!loc_eq(got, want)) {
		fail_msg("loc {seg %u off %u size %u tomb %d seq %llu} != want {seg %u off %u size "
		         "%u tomb %d seq %llu}",
		         got->seg, got->off, got->size, got->tomb, (unsigned long long)got->seq,
		         want->seg, want->off, want->size, want->tomb,
		         (unsigned long long)want->seq);
	}
}

static int copy_loc(void *arg, const sl_loc *loc)
{
	*(sl_loc *)arg = *loc;
	return SL_OK;
}

static int put(sl_keydir *kd, const void *key, size_t klen, const sl_loc *loc, int newer,
               sl_loc *old)
{
	return sl_keydir_put(kd, sl_keydir_hash(key, klen), key, klen, loc, newer, old);
}

/* SL_OK with *out filled, or SL_ENOTFOUND. */
static int get(sl_keydir *kd, const void *key, size_t klen, sl_loc *out)
{
	return sl_keydir_get(kd, sl_keydir_hash(key, klen), key, klen, copy_loc, out);
}

static int cas(sl_keydir *kd, const void *key, size_t klen, const sl_loc *expect, const sl_loc *loc)
{
	return sl_keydir_cas(kd, sl_keydir_hash(key, klen), key, klen, expect, loc);
}

static int rm(sl_keydir *kd, const void *key, size_t klen, const sl_loc *expect)
{
	return sl_keydir_remove(kd, sl_keydir_hash(key, klen), key, klen, expect);
}

static void expect_found(sl_keydir *kd, const void *key, size_t klen, const sl_loc *want)
{
	sl_loc got;
	memset(&got, 0xA5, sizeof(got));
	assert_int_equal(get(kd, key, klen, &got), SL_OK);
	assert_loc_eq(&got, want);
}

static void expect_absent(sl_keydir *kd, const void *key, size_t klen)
{
	sl_loc got;
	assert_int_equal(get(kd, key, klen, &got), SL_ENOTFOUND);
}

static sl_keydir_stats stats(sl_keydir *kd)
{
	sl_keydir_stats st;
	sl_keydir_stats_get(kd, &st);
	return st;
}

/* ---- basic contract --------------------------------------------------- */

static void new_free_and_free_null(void **state)
{
	(void)state;
	sl_keydir_free(NULL);
	sl_keydir *kd = sl_keydir_new();
	assert_non_null(kd);
	sl_keydir_stats st = stats(kd);
	assert_int_equal(st.keys, 0);
	assert_int_equal(st.tombstones, 0);
	sl_keydir_free(kd);
}

static void get_on_empty_is_not_found(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	expect_absent(kd, "a", 1);
	sl_loc l = loc_of(1, 0);
	assert_int_equal(cas(kd, "a", 1, &l, &l), 0);
	assert_int_equal(rm(kd, "a", 1, &l), 0);
	expect_absent(kd, "a", 1);
	sl_keydir_free(kd);
}

static void insert_get_replace(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	sl_loc a = {.seg = 3, .off = 100, .size = 50, .tomb = 0, .seq = 10};
	sl_loc b = {.seg = 4, .off = 200, .size = 60, .tomb = 0, .seq = 11};
	sl_loc old;
	assert_int_equal(put(kd, "alpha", 5, &a, 0, &old), 2);
	expect_found(kd, "alpha", 5, &a);
	expect_absent(kd, "alph", 4);
	expect_absent(kd, "alphaa", 6);
	expect_absent(kd, "alphb", 5);
	memset(&old, 0, sizeof(old));
	assert_int_equal(put(kd, "alpha", 5, &b, 0, &old), 1);
	assert_loc_eq(&old, &a);
	expect_found(kd, "alpha", 5, &b);
	/* Replacing with old == NULL is allowed. */
	assert_int_equal(put(kd, "alpha", 5, &a, 0, NULL), 1);
	expect_found(kd, "alpha", 5, &a);
	/* Without only_if_newer an older seq still replaces. */
	sl_loc older = {.seg = 1, .off = 40, .size = 33, .tomb = 0, .seq = 2};
	assert_int_equal(put(kd, "alpha", 5, &older, 0, &old), 1);
	expect_found(kd, "alpha", 5, &older);
	sl_keydir_stats st = stats(kd);
	assert_int_equal(st.keys, 1);
	assert_int_equal(st.tombstones, 0);
	sl_keydir_free(kd);
}

static int return_seven(void *arg, const sl_loc *loc)
{
	(void)loc;
	(*(int *)arg)++;
	return 7;
}

static void get_returns_callback_result(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	sl_loc a = loc_of(5, 0);
	assert_int_equal(put(kd, "k", 1, &a, 0, NULL), 2);
	int calls = 0;
	assert_int_equal(sl_keydir_get(kd, sl_keydir_hash("k", 1), "k", 1, return_seven, &calls),
	                 7);
	assert_int_equal(calls, 1);
	assert_int_equal(sl_keydir_get(kd, sl_keydir_hash("q", 1), "q", 1, return_seven, &calls),
	                 SL_ENOTFOUND);
	assert_int_equal(calls, 1);
	sl_keydir_free(kd);
}

static void only_if_newer_keeps_equal_or_newer(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	sl_loc cur = {.seg = 2, .off = 64, .size = 40, .tomb = 0, .seq = 100};
	sl_loc old;
	/* A new key is inserted whatever its seq. */
	assert_int_equal(put(kd, "k", 1, &cur, 1, &old), 2);

	sl_loc older = {.seg = 1, .off = 32, .size = 41, .tomb = 1, .seq = 99};
	memset(&old, 0, sizeof(old));
	assert_int_equal(put(kd, "k", 1, &older, 1, &old), 0);
	assert_loc_eq(&old, &cur); /* *old is the entry kept */
	expect_found(kd, "k", 1, &cur);

	sl_loc same = {.seg = 9, .off = 96, .size = 42, .tomb = 0, .seq = 100};
	memset(&old, 0, sizeof(old));
	assert_int_equal(put(kd, "k", 1, &same, 1, &old), 0);
	assert_loc_eq(&old, &cur);
	expect_found(kd, "k", 1, &cur);

	/* old == NULL on the kept path too. */
	assert_int_equal(put(kd, "k", 1, &older, 1, NULL), 0);
	expect_found(kd, "k", 1, &cur);

	/* At an equal seq a tombstone wins over a put, in either order (an
	 * expired put and the tombstone compaction made of it, both on disk
	 * after a crash: every open must agree) */
	sl_loc tomb_same = {.seg = 8, .off = 48, .size = 30, .tomb = 1, .seq = 100};
	assert_int_equal(put(kd, "k", 1, &tomb_same, 1, NULL), 1);
	expect_found(kd, "k", 1, &tomb_same);
	assert_int_equal(put(kd, "k", 1, &cur, 1, NULL), 0);
	expect_found(kd, "k", 1, &tomb_same);
	sl_loc tomb_same2 = {.seg = 7, .off = 16, .size = 30, .tomb = 1, .seq = 100};
	assert_int_equal(put(kd, "k", 1, &tomb_same2, 1, NULL), 0); /* tombstone twice: kept */
	expect_found(kd, "k", 1, &tomb_same);
	assert_int_equal(sl_keydir_remove(kd, sl_keydir_hash("k", 1), "k", 1, &tomb_same), 1);
	assert_int_equal(put(kd, "k", 1, &cur, 1, NULL), 2);

	sl_loc newer = {.seg = 3, .off = 128, .size = 43, .tomb = 1, .seq = 101};
	memset(&old, 0, sizeof(old));
	assert_int_equal(put(kd, "k", 1, &newer, 1, &old), 1);
	assert_loc_eq(&old, &cur);
	expect_found(kd, "k", 1, &newer);

	/* Counters follow only what actually happened. */
	sl_keydir_stats st = stats(kd);
	assert_int_equal(st.keys, 0);
	assert_int_equal(st.tombstones, 1);
	sl_keydir_free(kd);
}

static void tombstone_flag_round_trips_and_counts(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	sl_loc live = {.seg = 1, .off = 32, .size = 0x7fffffffu, .tomb = 0, .seq = 1};
	sl_loc tomb = {.seg = 1, .off = 99, .size = 29, .tomb = 1, .seq = 2};
	assert_int_equal(put(kd, "x", 1, &live, 0, NULL), 2);
	expect_found(kd, "x", 1, &live); /* size's top bit is free for the flag */
	assert_int_equal(stats(kd).keys, 1);
	assert_int_equal(stats(kd).tombstones, 0);

	assert_int_equal(put(kd, "x", 1, &tomb, 0, NULL), 1);
	expect_found(kd, "x", 1, &tomb);
	assert_int_equal(stats(kd).keys, 0);
	assert_int_equal(stats(kd).tombstones, 1);

	sl_loc tomb_big = {.seg = 1, .off = 99, .size = 0x7fffffffu, .tomb = 1, .seq = 3};
	assert_int_equal(put(kd, "x", 1, &tomb_big, 0, NULL), 1);
	expect_found(kd, "x", 1, &tomb_big);

	assert_int_equal(put(kd, "x", 1, &live, 0, NULL), 1);
	expect_found(kd, "x", 1, &live);
	assert_int_equal(stats(kd).keys, 1);
	assert_int_equal(stats(kd).tombstones, 0);

	/* A tombstone can be inserted as a new key. */
	assert_int_equal(put(kd, "y", 1, &tomb, 0, NULL), 2);
	assert_int_equal(stats(kd).keys, 1);
	assert_int_equal(stats(kd).tombstones, 1);
	assert_int_equal(rm(kd, "y", 1, &tomb), 1);
	assert_int_equal(stats(kd).tombstones, 0);
	sl_keydir_free(kd);
}

static void extreme_field_values_round_trip(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	static const uint64_t seqs[] = {
	    1, 0xffffffffull, 0x100000000ull, 0xabcdef012345ull, SL_KD_SEQ_MAX - 1, SL_KD_SEQ_MAX};
	for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
		char k[8];
		snprintf(k, sizeof(k), "s%zu", i);
		sl_loc l = {.seg = UINT32_MAX - (uint32_t)i,
		            .off = UINT32_MAX - 7u * (uint32_t)i,
		            .size = 0x7fffffffu - (uint32_t)i,
		            .tomb = (int)(i & 1),
		            .seq = seqs[i]};
		assert_int_equal(put(kd, k, strlen(k), &l, 0, NULL), 2);
		expect_found(kd, k, strlen(k), &l);
	}
	/* only_if_newer compares all 48 bits. */
	sl_loc top = {.seg = 1, .off = 32, .size = 30, .tomb = 0, .seq = SL_KD_SEQ_MAX};
	sl_loc below = {.seg = 2, .off = 32, .size = 30, .tomb = 0, .seq = SL_KD_SEQ_MAX - 1};
	sl_loc low32 = {.seg = 3, .off = 32, .size = 30, .tomb = 0, .seq = 0xffffffffull};
	assert_int_equal(put(kd, "top", 3, &top, 0, NULL), 2);
	assert_int_equal(put(kd, "top", 3, &below, 1, NULL), 0);
	assert_int_equal(put(kd, "top", 3, &low32, 1, NULL), 0);
	expect_found(kd, "top", 3, &top);
	assert_int_equal(put(kd, "low", 3, &low32, 0, NULL), 2);
	assert_int_equal(put(kd, "low", 3, &below, 1, NULL), 1);
	expect_found(kd, "low", 3, &below);
	sl_keydir_free(kd);
}

static void cas_requires_same_seg_off_and_seq(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	sl_loc cur = {.seg = 5, .off = 500, .size = 50, .tomb = 0, .seq = 77};
	sl_loc next = {.seg = 9, .off = 32, .size = 50, .tomb = 0, .seq = 77};
	assert_int_equal(put(kd, "key", 3, &cur, 0, NULL), 2);

	sl_loc e = cur;
	e.seg++;
	assert_int_equal(cas(kd, "key", 3, &e, &next), 0);
	e = cur;
	e.off++;
	assert_int_equal(cas(kd, "key", 3, &e, &next), 0);
	e = cur;
	e.seq++;
	assert_int_equal(cas(kd, "key", 3, &e, &next), 0);
	expect_found(kd, "key", 3, &cur);

	/* Missing key: nothing is inserted. */
	assert_int_equal(cas(kd, "kex", 3, &cur, &next), 0);
	expect_absent(kd, "kex", 3);

	assert_int_equal(cas(kd, "key", 3, &cur, &next), 1);
	expect_found(kd, "key", 3, &next);
	/* The old expectation no longer matches. */
	assert_int_equal(cas(kd, "key", 3, &cur, &cur), 0);
	expect_found(kd, "key", 3, &next);

	/* cas into a tombstone moves the counters. */
	sl_loc t = {.seg = 10, .off = 64, .size = 31, .tomb = 1, .seq = 78};
	assert_int_equal(cas(kd, "key", 3, &next, &t), 1);
	assert_int_equal(stats(kd).keys, 0);
	assert_int_equal(stats(kd).tombstones, 1);
	sl_keydir_free(kd);
}

static void remove_requires_exact_entry(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	sl_loc cur = {.seg = 5, .off = 500, .size = 50, .tomb = 0, .seq = 77};
	assert_int_equal(put(kd, "key", 3, &cur, 0, NULL), 2);
	sl_loc e = cur;
	e.seq = 76;
	assert_int_equal(rm(kd, "key", 3, &e), 0);
	e = cur;
	e.off = 0;
	assert_int_equal(rm(kd, "key", 3, &e), 0);
	e = cur;
	e.seg = 4;
	assert_int_equal(rm(kd, "key", 3, &e), 0);
	expect_found(kd, "key", 3, &cur);
	assert_int_equal(rm(kd, "ke", 2, &cur), 0);
	assert_int_equal(rm(kd, "key", 3, &cur), 1);
	expect_absent(kd, "key", 3);
	assert_int_equal(rm(kd, "key", 3, &cur), 0);
	assert_int_equal(stats(kd).keys, 0);
	/* And the key can come back. */
	assert_int_equal(put(kd, "key", 3, &cur, 0, NULL), 2);
	expect_found(kd, "key", 3, &cur);
	sl_keydir_free(kd);
}

/* ---- key shapes ------------------------------------------------------- */

static int count_len(void *arg, const void *key, size_t klen, const sl_loc *loc)
{
	(void)key;
	(void)loc;
	size_t *by_len = arg;
	if (klen == 1) {
		by_len[0]++;
	} else if (klen == 65534) {
		by_len[1]++;
	} else if (klen == 65535) {
		by_len[2]++;
	}
	return 0;
}

static void keys_of_length_1_and_65535(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	/* Every one-byte key, NUL included. */
	for (unsigned b = 0; b < 256; b++) {
		uint8_t k = (uint8_t)b;
		sl_loc l = loc_of(b, 0);
		assert_int_equal(put(kd, &k, 1, &l, 0, NULL), 2);
	}
	/* Maximum-length keys that differ only in the first or last byte,
	 * and one a byte shorter (a prefix of another). */
	size_t n = 65535;
	uint8_t *big = malloc(n);
	assert_non_null(big);
	memset(big, 'z', n);
	sl_loc l0 = loc_of(1000, 0), l1 = loc_of(1001, 0), l2 = loc_of(1002, 0),
	       l3 = loc_of(1003, 0);
	assert_int_equal(put(kd, big, n, &l0, 0, NULL), 2);
	big[n - 1] = 'y';
	assert_int_equal(put(kd, big, n, &l1, 0, NULL), 2);
	big[n - 1] = 'z';
	big[0] = 'y';
	assert_int_equal(put(kd, big, n, &l2, 0, NULL), 2);
	big[0] = 'z';
	assert_int_equal(put(kd, big, n - 1, &l3, 0, NULL), 2);

	for (unsigned b = 0; b < 256; b++) {
		uint8_t k = (uint8_t)b;
		sl_loc l = loc_of(b, 0);
		expect_found(kd, &k, 1, &l);
	}
	expect_found(kd, big, n, &l0);
	expect_found(kd, big, n - 1, &l3);
	big[n - 1] = 'y';
	expect_found(kd, big, n, &l1);
	big[n - 1] = 'z';
	big[0] = 'y';
	expect_found(kd, big, n, &l2);
	big[0] = 'x';
	expect_absent(kd, big, n);
	big[0] = 'z';

	/* The scan hands back the full lengths. */
	assert_int_equal(stats(kd).keys + stats(kd).tombstones, 256 + 4);
	size_t by_len[3] = {0};
	for (unsigned s = 0; s < SL_KD_SHARDS; s++) {
		assert_int_equal(sl_keydir_scan_shard(kd, s, count_len, by_len), 0);
	}
	assert_int_equal(by_len[0], 256);
	assert_int_equal(by_len[1], 1);
	assert_int_equal(by_len[2], 3);
	assert_int_equal(rm(kd, big, n, &l0), 1);
	expect_absent(kd, big, n);
	expect_found(kd, big, n - 1, &l3);
	free(big);
	sl_keydir_free(kd);
}

/* Keys with embedded NULs and common prefixes are compared by length and
 * bytes, not as strings. */
static void keys_compared_by_length_and_bytes(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	static const char *const keys[] = {"a", "a\0", "a\0\0", "\0a", "ab", "abc", "abd"};
	static const size_t lens[] = {1, 2, 3, 2, 2, 3, 3};
	for (uint32_t i = 0; i < 7; i++) {
		sl_loc l = loc_of(i, 0);
		assert_int_equal(put(kd, keys[i], lens[i], &l, 0, NULL), 2);
	}
	for (uint32_t i = 0; i < 7; i++) {
		sl_loc l = loc_of(i, 0);
		expect_found(kd, keys[i], lens[i], &l);
	}
	sl_keydir_free(kd);
}

/* ---- scale: growth, removal, scan, memory --------------------------------- */

#define BIG_N 200000u

static sl_keydir *fill_big(uint32_t n)
{
	sl_keydir *kd = sl_keydir_new();
	assert_non_null(kd);
	char k[KLEN + 1];
	for (uint32_t i = 0; i < n; i++) {
		key_of(i, k);
		sl_loc l = loc_of(i, 0);
		int rc = put(kd, k, KLEN, &l, 0, NULL);
		if (rc != 2) {
			fail_msg("insert %u returned %d", i, rc);
		}
	}
	return kd;
}

static void verify_all(sl_keydir *kd, const uint8_t *present, uint32_t n, uint32_t v)
{
	char k[KLEN + 1];
	for (uint32_t i = 0; i < n; i++) {
		key_of(i, k);
		sl_loc got;
		int rc = get(kd, k, KLEN, &got);
		if (present[i]) {
			if (rc != SL_OK) {
				fail_msg("key %u missing (rc %d)", i, rc);
			}
			sl_loc want = loc_of(i, present[i] == 2 ? v : 0);
			assert_loc_eq(&got, &want);
		} else if (rc != SL_ENOTFOUND) {
			fail_msg("removed key %u still found (rc %d)", i, rc);
		}
	}
}

/* Backward-shift deletion (keydir.c invariant 2): after removing a random
 * half of 200k keys, lookups that stop at the first empty slot must still
 * reach every survivor. */
static void remove_random_half_of_200k_keeps_probing_invariant(void **state)
{
	(void)state;
	sl_keydir *kd = fill_big(BIG_N);
	uint8_t *present = malloc(BIG_N);
	uint32_t *order = malloc(BIG_N * sizeof(*order));
	assert_non_null(present);
	assert_non_null(order);
	memset(present, 1, BIG_N);
	verify_all(kd, present, BIG_N, 0);

	for (uint32_t i = 0; i < BIG_N; i++) {
		order[i] = i;
	}
	shuffle(order, BIG_N);
	char k[KLEN + 1];
	uint64_t tombs_left = 0;
	for (uint32_t i = 0; i < BIG_N; i++) {
		uint32_t id = order[i];
		sl_loc l = loc_of(id, 0);
		key_of(id, k);
		if (i < BIG_N / 2) {
			/* A stale expectation first: must not remove. */
			sl_loc stale = l;
			stale.seq++;
			assert_int_equal(rm(kd, k, KLEN, &stale), 0);
			if (rm(kd, k, KLEN, &l) != 1) {
				fail_msg("remove of key %u failed", id);
			}
			present[id] = 0;
		} else if (l.tomb) {
			tombs_left++;
		}
	}
	verify_all(kd, present, BIG_N, 0);
	sl_keydir_stats st = stats(kd);
	assert_int_equal(st.keys + st.tombstones, BIG_N - BIG_N / 2);
	assert_int_equal(st.tombstones, tombs_left);

	/* Removing everything else leaves an empty, still usable index. */
	for (uint32_t i = BIG_N / 2; i < BIG_N; i++) {
		uint32_t id = order[i];
		sl_loc l = loc_of(id, 0);
		key_of(id, k);
		assert_int_equal(rm(kd, k, KLEN, &l), 1);
		present[id] = 0;
	}
	st = stats(kd);
	assert_int_equal(st.keys, 0);
	assert_int_equal(st.tombstones, 0);
	verify_all(kd, present, BIG_N, 0);
	free(order);
	free(present);
	sl_keydir_free(kd);
}

/* Picks `want` keys that fall in the same shard and whose home slots in a
 * 16-slot table are 13, 14, 15, 0 or 1, so together they form one cluster
 * that wraps around the end of the table.  Relies on keydir.c's layout
 * (shard = top 10 bits of the hash, home = low bits); if that changes the
 * test still runs, only less pointedly. */
static int pick_wrapping_cluster(char keys[][KLEN + 1], int want)
{
	uint64_t shard = UINT64_MAX;
	int n = 0;
	for (uint32_t i = 0; i < 50000000u && n < want; i++) {
		char k[KLEN + 1];
		snprintf(k, sizeof(k), "wrap-%011u", i);
		uint64_t h = sl_keydir_hash(k, KLEN);
		uint32_t home = (uint32_t)h & 15u;
		if (home != 13 && home != 14 && home != 15 && home != 0 && home != 1) {
			continue;
		}
		if (shard == UINT64_MAX) {
			shard = h >> 54;
		} else if (h >> 54 != shard) {
			continue;
		}
		memcpy(keys[n++], k, KLEN + 1);
	}
	return n;
}

static void remove_from_wrapping_cluster_every_position(void **state)
{
	(void)state;
	enum { N = 12 }; /* stays at 16 slots: (12 + 1) * 5 <= 16 * 4 is false at 13 */
	char keys[N][KLEN + 1];
	assert_int_equal(pick_wrapping_cluster(keys, N), N);
	uint32_t order[N];

	/* Remove each single key from the full cluster. */
	for (int victim = 0; victim < N; victim++) {
		for (int ins = 0; ins < 4; ins++) {
			sl_keydir *kd = sl_keydir_new();
			for (uint32_t i = 0; i < N; i++) {
				order[i] = i;
			}
			if (ins > 0) {
				shuffle(order, N);
			}
			for (int i = 0; i < N; i++) {
				sl_loc l = loc_of(order[i], 0);
				assert_int_equal(put(kd, keys[order[i]], KLEN, &l, 0, NULL), 2);
			}
			sl_loc lv = loc_of((uint32_t)victim, 0);
			assert_int_equal(rm(kd, keys[victim], KLEN, &lv), 1);
			for (int i = 0; i < N; i++) {
				sl_loc l = loc_of((uint32_t)i, 0);
				if (i == victim) {
					expect_absent(kd, keys[i], KLEN);
				} else {
					expect_found(kd, keys[i], KLEN, &l);
				}
			}
			sl_keydir_free(kd);
		}
	}

	/* Random insertion orders, random removal subsets and orders, then
	 * reinsertion of what was removed. */
	for (int trial = 0; trial < 3000; trial++) {
		sl_keydir *kd = sl_keydir_new();
		for (uint32_t i = 0; i < N; i++) {
			order[i] = i;
		}
		shuffle(order, N);
		for (int i = 0; i < N; i++) {
			sl_loc l = loc_of(order[i], 0);
			assert_int_equal(put(kd, keys[order[i]], KLEN, &l, 0, NULL), 2);
		}
		shuffle(order, N);
		int nrm = 1 + (int)(rng() % N);
		uint8_t present[N];
		memset(present, 1, sizeof(present));
		for (int i = 0; i < nrm; i++) {
			sl_loc l = loc_of(order[i], 0);
			assert_int_equal(rm(kd, keys[order[i]], KLEN, &l), 1);
			present[order[i]] = 0;
			/* Check after every single removal. */
			for (int j = 0; j < N; j++) {
				sl_loc lj = loc_of((uint32_t)j, 0);
				if (present[j]) {
					expect_found(kd, keys[j], KLEN, &lj);
				} else {
					expect_absent(kd, keys[j], KLEN);
				}
			}
		}
		for (int i = 0; i < nrm; i++) {
			sl_loc l = loc_of(order[i], 1);
			assert_int_equal(put(kd, keys[order[i]], KLEN, &l, 0, NULL), 2);
			present[order[i]] = 2;
		}
		for (int j = 0; j < N; j++) {
			sl_loc lj = loc_of((uint32_t)j, present[j] == 2 ? 1 : 0);
			expect_found(kd, keys[j], KLEN, &lj);
		}
		assert_int_equal(stats(kd).keys + stats(kd).tombstones, N);
		sl_keydir_free(kd);
	}
}

typedef struct scan_ctx {
	uint32_t *visits;
	uint32_t n;
	uint64_t total;
	int bad;
} scan_ctx;

static int count_visit(void *arg, const void *key, size_t klen, const sl_loc *loc)
{
	scan_ctx *c = arg;
	c->total++;
	char k[KLEN + 1];
	if (klen != KLEN) {
		c->bad++;
		return 0;
	}
	memcpy(k, key, KLEN);
	k[KLEN] = '\0';
	unsigned id;
	if (sscanf(k, "key-%u", &id) != 1 || id >= c->n) {
		c->bad++;
		return 0;
	}
	sl_loc want = loc_of(id, 0);
	if (!loc_eq(loc, &want)) {
		c->bad++;
	}
	c->visits[id]++;
	return 0;
}

static void scan_visits_each_entry_exactly_once(void **state)
{
	(void)state;
	const uint32_t n = 50000;
	sl_keydir *kd = fill_big(n);
	/* Remove every third key so the scan also runs over shifted slots. */
	char k[KLEN + 1];
	for (uint32_t i = 0; i < n; i += 3) {
		key_of(i, k);
		sl_loc l = loc_of(i, 0);
		assert_int_equal(rm(kd, k, KLEN, &l), 1);
	}
	scan_ctx c = {.visits = calloc(n, sizeof(uint32_t)), .n = n};
	assert_non_null(c.visits);
	for (unsigned s = 0; s < SL_KD_SHARDS; s++) {
		assert_int_equal(sl_keydir_scan_shard(kd, s, count_visit, &c), 0);
	}
	assert_int_equal(c.bad, 0);
	for (uint32_t i = 0; i < n; i++) {
		if (c.visits[i] != (i % 3 == 0 ? 0u : 1u)) {
			fail_msg("key %u visited %u times", i, c.visits[i]);
		}
	}
	assert_int_equal(c.total, n - (n + 2) / 3);
	free(c.visits);
	sl_keydir_free(kd);
}

static int stop_after_one(void *arg, const void *key, size_t klen, const sl_loc *loc)
{
	(void)key;
	(void)klen;
	(void)loc;
	(*(int *)arg)++;
	return -42;
}

static void scan_stops_on_nonzero_and_returns_it(void **state)
{
	(void)state;
	sl_keydir *kd = fill_big(20000);
	int calls = 0;
	int stopped = 0;
	for (unsigned s = 0; s < SL_KD_SHARDS; s++) {
		int before = calls;
		int rc = sl_keydir_scan_shard(kd, s, stop_after_one, &calls);
		if (calls > before) {
			assert_int_equal(rc, -42);
			assert_int_equal(calls - before, 1);
			stopped++;
		} else {
			assert_int_equal(rc, 0);
		}
	}
	assert_true(stopped > (int)(SL_KD_SHARDS / 2)); /* 20k keys fill most shards */
	sl_keydir_free(kd);
}

/* keydir.h promises about klen + 32 bytes per key. */
static void bytes_per_key_at_most_klen_plus_32(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	char k[KLEN + 1];
	for (uint32_t i = 0; i < BIG_N; i++) {
		key_of(i, k);
		sl_loc l = loc_of(i, 0);
		l.tomb = 0;
		assert_int_equal(put(kd, k, KLEN, &l, 0, NULL), 2);
	}
	sl_keydir_stats st = stats(kd);
	assert_int_equal(st.keys, BIG_N);
	assert_int_equal(st.tombstones, 0);
	double per_key = (double)st.bytes / (double)st.keys;
	print_message("keydir: %.1f bytes/key in use, arena capacity %.1f bytes/key\n", per_key,
	              (double)st.arena_cap / (double)st.keys);
	if (per_key > KLEN + 32) {
		fail_msg("%.1f bytes per 16-byte key > %d", per_key, KLEN + 32);
	}
	assert_true(st.arena_cap >= (uint64_t)BIG_N * (KLEN + 20));
	sl_keydir_free(kd);
}

/* Churn: remove most entries and insert new ones, round after round.  The
 * arena must be repacked (bounded size) and nothing may be lost across a
 * repack, which rewrites every slot's arena index. */
static void churn_repacks_arena_and_keeps_everything_findable(void **state)
{
	(void)state;
	const uint32_t n = 60000, keep = 6000, rounds = 8;
	sl_keydir *kd = fill_big(n);
	uint8_t *present = malloc(n);
	assert_non_null(present);
	memset(present, 1, n);
	char k[KLEN + 1];
	uint64_t cap_after_first = 0;
	for (uint32_t r = 0; r < rounds; r++) {
		/* Remove all but `keep` keys (those stay in place throughout). */
		for (uint32_t i = keep; i < n; i++) {
			key_of(i, k);
			sl_loc l = loc_of(i, present[i] == 2 ? r : 0);
			assert_int_equal(rm(kd, k, KLEN, &l), 1);
			present[i] = 0;
		}
		verify_all(kd, present, n, r);
		/* Insert them again with a new version: repacks happen here. */
		for (uint32_t i = keep; i < n; i++) {
			key_of(i, k);
			sl_loc l = loc_of(i, r + 1);
			assert_int_equal(put(kd, k, KLEN, &l, 0, NULL), 2);
			present[i] = 2;
		}
		verify_all(kd, present, n, r + 1);
		sl_keydir_stats st = stats(kd);
		assert_int_equal(st.keys + st.tombstones, n);
		if (r == 0) {
			cap_after_first = st.arena_cap;
		}
		/* Without repacking the arena would grow by ~n * 36 bytes per
		 * round; allow slack but not that. */
		if (st.arena_cap > cap_after_first * 2) {
			fail_msg("round %u: arena_cap %llu vs %llu after round 0", r,
			         (unsigned long long)st.arena_cap,
			         (unsigned long long)cap_after_first);
		}
	}
	free(present);
	sl_keydir_free(kd);
}

/* A removal-heavy shard followed by inserts of long keys: the repack must
 * carry keys of mixed sizes (entry sizes not multiples of each other). */
static void repack_with_mixed_key_lengths(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	enum { N = 8000 };
	static char keys[N][80];
	static size_t lens[N];
	for (uint32_t i = 0; i < N; i++) {
		/* "<id>:" then filler: unique, lengths 1..70 spread over ids. */
		int pre = snprintf(keys[i], sizeof(keys[i]), "%u:", i);
		size_t len = 1 + (i * 37u) % 70u;
		lens[i] = len < (size_t)pre ? (size_t)pre : len;
		for (size_t j = (size_t)pre; j < lens[i]; j++) {
			keys[i][j] = (char)('a' + (i + j * 7u) % 26u);
		}
	}
	for (uint32_t i = 0; i < N; i++) {
		sl_loc l = loc_of(i, 0);
		int rc = put(kd, keys[i], lens[i], &l, 0, NULL);
		assert_int_equal(rc, 2);
	}
	for (uint32_t i = 0; i < N; i++) {
		if (i % 10 != 0) {
			sl_loc l = loc_of(i, 0);
			assert_int_equal(rm(kd, keys[i], lens[i], &l), 1);
		}
	}
	for (uint32_t i = 0; i < N; i++) {
		if (i % 10 != 0) {
			sl_loc l = loc_of(i, 2);
			assert_int_equal(put(kd, keys[i], lens[i], &l, 0, NULL), 2);
		}
	}
	for (uint32_t i = 0; i < N; i++) {
		sl_loc l = loc_of(i, i % 10 != 0 ? 2 : 0);
		expect_found(kd, keys[i], lens[i], &l);
	}
	sl_keydir_free(kd);
}

/* One shard's arena takes 4 KiB chunks from the keydir's pool, and an
 * entry too big for the rest of its chunk starts a run of whole chunks (a
 * 65535-byte key spans 17).  Keys of sizes around those boundaries, all in
 * one shard (keydir.c's shard_of: the hash's top 10 bits), survive inserts,
 * removals, a repack (which lays every entry out again) and replacement.
 *
 * The hash is seeded at random per process, so which keys land in the
 * shard varies, but what the test relies on does not: key i has length
 * run_lens[i % N_RUN_LENS] (it is the first id congruent to i mod RUN_KEYS
 * that lands in the shard), so every length has RUN_PER_LEN keys, inserted
 * in the same order, and the removals take two in three of every length
 * (run_gone): 66 % of the entry bytes.  When the keys were the first 240 of
 * any length to land in the shard and those with i % 3 != 0 went, the share
 * removed followed where the twenty-odd 65535-byte keys (half the bytes)
 * fell: 0.46 to 0.80 over 1000 seeds.  The shortest length is 4, not 1: its
 * entry is as small (24 bytes), but there are only 256 one-byte keys, a
 * quarter of one per shard (keys_of_length_1_and_65535 tests them). */
enum { RUN_PER_LEN = 20 };
static const size_t run_lens[] = {4,    2000, 2100, 4000, 4075,  4076,
                                  4077, 4096, 5000, 9000, 20000, 65535};
#define N_RUN_LENS (sizeof(run_lens) / sizeof(run_lens[0]))
enum { RUN_KEYS = RUN_PER_LEN * N_RUN_LENS };

static void run_key(uint32_t id, size_t len, uint8_t *k)
{
	memset(k, (int)('a' + id % 26u), len);
	memcpy(k, &id, sizeof(id)); /* unique: every length is at least 4 */
}

/* Key i is removed and inserted again: two keys in three of each length
 * (13 or 14 of its 20).  The pattern shifts by one at each round of the
 * lengths; i % 3 alone would keep the same four lengths every time, 12
 * being a multiple of 3. */
static int run_gone(uint32_t i)
{
	return (i + i / N_RUN_LENS) % 3u != 0;
}

static void arena_runs_across_chunk_boundaries(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	static uint8_t keys[RUN_KEYS][65535];
	static size_t lens[RUN_KEYS];
	const uint32_t n = RUN_KEYS;
	for (uint32_t i = 0; i < n; i++) {
		lens[i] = run_lens[i % N_RUN_LENS];
		for (uint32_t id = i;; id += RUN_KEYS) { /* ids differ from every other key's */
			run_key(id, lens[i], keys[i]);
			if ((sl_keydir_hash(keys[i], lens[i]) >> 54) == 7) {
				break;
			}
		}
	}
	for (uint32_t i = 0; i < n; i++) {
		sl_loc l = loc_of(i, 0);
		assert_int_equal(put(kd, keys[i], lens[i], &l, 0, NULL), 2);
	}
	for (uint32_t i = 0; i < n; i++) {
		sl_loc l = loc_of(i, 0);
		expect_found(kd, keys[i], lens[i], &l);
	}
	uint64_t cap0 = stats(kd).arena_cap;
	/* Remove two keys in three: the next inserts repack the shard. */
	for (uint32_t i = 0; i < n; i++) {
		if (run_gone(i)) {
			sl_loc l = loc_of(i, 0);
			assert_int_equal(rm(kd, keys[i], lens[i], &l), 1);
		}
	}
	for (uint32_t i = 0; i < n; i++) {
		if (run_gone(i)) {
			expect_absent(kd, keys[i], lens[i]);
			sl_loc l = loc_of(i, 1);
			assert_int_equal(put(kd, keys[i], lens[i], &l, 0, NULL), 2);
		}
	}
	/* Replace every key in place (no new arena space). */
	for (uint32_t i = 0; i < n; i++) {
		sl_loc l = loc_of(i, run_gone(i) ? 1 : 0), nl = loc_of(i, 2), old;
		assert_int_equal(put(kd, keys[i], lens[i], &nl, 1, &old), 1);
		assert_loc_eq(&old, &l);
	}
	for (uint32_t i = 0; i < n; i++) {
		sl_loc l = loc_of(i, 2);
		expect_found(kd, keys[i], lens[i], &l);
	}
	sl_keydir_stats st = stats(kd);
	assert_int_equal(st.keys + st.tombstones, n);
	/* The removed entries are 66 % of the entry bytes, twice the live
	 * ones: the first insert after the removals repacks, and the arena
	 * ends about as big as before (0.99 to 1.01 times, with the order the
	 * repack lays the entries out in).  Without the repack it would hold
	 * the removed entries too: 1.66 times (the same for every seed: the
	 * layout follows the entry sizes in insertion order). */
	if (st.arena_cap > cap0 + cap0 / 4) {
		fail_msg("arena_cap %llu after churn, %llu before",
		         (unsigned long long)st.arena_cap, (unsigned long long)cap0);
	}
	sl_keydir_free(kd);
}

/* Keys whose entries leave nearly half of each run unused, as tails no
 * other entry fits in: 2100 bytes (an entry of 2120, one per chunk) and
 * 4077 (4100, one per run of two chunks).  Removing two keys in three
 * leaves holes twice the size of the live entries, so the next insert
 * repacks, tails or not.  When the repack was due at freed > used / 2,
 * with the tails counted in used, such a shard repacked only once nearly
 * all of it was holes: churn grew its arena by the removed entries every
 * round (1.67 times after the first, 9 after twelve). */
static void repack_counts_holes_not_run_tails(void **state)
{
	(void)state;
	static const size_t tail_lens[] = {2100, 4077};
	enum { KEYS = 96, ROUNDS = 6 };
	static uint8_t keys[KEYS][4077];
	for (size_t t = 0; t < sizeof(tail_lens) / sizeof(tail_lens[0]); t++) {
		size_t len = tail_lens[t];
		sl_keydir *kd = sl_keydir_new();
		for (uint32_t i = 0, id = 0; i < KEYS; id++) {
			memset(keys[i], 't', len);
			memcpy(keys[i], &id, sizeof(id));
			if ((sl_keydir_hash(keys[i], len) >> 54) == 11) { /* keydir.c's shard_of */
				i++;
			}
		}
		for (uint32_t i = 0; i < KEYS; i++) {
			sl_loc l = loc_of(i, 0);
			assert_int_equal(put(kd, keys[i], len, &l, 0, NULL), 2);
		}
		uint64_t cap0 = stats(kd).arena_cap;
		for (uint32_t r = 1; r <= ROUNDS; r++) {
			for (uint32_t i = 0; i < KEYS; i++) {
				if (i % 3 != 0) {
					sl_loc l = loc_of(i, r - 1);
					assert_int_equal(rm(kd, keys[i], len, &l), 1);
				}
			}
			for (uint32_t i = 0; i < KEYS; i++) {
				if (i % 3 != 0) {
					sl_loc l = loc_of(i, r);
					assert_int_equal(put(kd, keys[i], len, &l, 0, NULL), 2);
				}
			}
			for (uint32_t i = 0; i < KEYS; i++) {
				sl_loc l = loc_of(i, i % 3 != 0 ? r : 0);
				expect_found(kd, keys[i], len, &l);
			}
			uint64_t cap = stats(kd).arena_cap;
			if (cap > cap0 + cap0 / 4) {
				fail_msg("%zu-byte keys, round %u: arena_cap %llu, %llu before",
				         len, r, (unsigned long long)cap, (unsigned long long)cap0);
			}
		}
		sl_keydir_free(kd);
	}
}

/* Entries of more than one chunk, all in one shard, inserted and removed
 * round after round: each round's first insert repacks the shard, which
 * gives the runs back whole, and the inserts reuse them, so the memory
 * held (arena chunks and the pool's free lists) stays bounded.  When freed
 * runs went back as single chunks, every run of two was cut afresh and
 * the memory held grew by the whole set each round. */
static void big_entries_reuse_freed_runs(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	enum { KEYS = 200, LEN = 5000, ROUNDS = 12 };
	static uint8_t keys[KEYS][LEN];
	uint32_t n = 0;
	for (uint32_t id = 0; n < KEYS; id++) {
		memset(keys[n], 'q', LEN);
		memcpy(keys[n], &id, sizeof(id));
		if ((sl_keydir_hash(keys[n], LEN) >> 54) == 9) { /* keydir.c's shard_of */
			n++;
		}
	}
	uint64_t held1 = 0;
	for (uint32_t r = 0; r < ROUNDS; r++) {
		for (uint32_t i = 0; i < KEYS; i++) {
			sl_loc l = loc_of(i, r);
			assert_int_equal(put(kd, keys[i], LEN, &l, 0, NULL), 2);
		}
		for (uint32_t i = 0; i < KEYS; i++) {
			sl_loc l = loc_of(i, r);
			expect_found(kd, keys[i], LEN, &l);
			assert_int_equal(rm(kd, keys[i], LEN, &l), 1);
		}
		sl_keydir_stats st = stats(kd);
		assert_int_equal(st.keys + st.tombstones, 0);
		uint64_t held = st.arena_cap + st.pool_free;
		if (r == 1) {
			held1 = held;
		} else if (r > 1 && held > held1 + held1 / 4) {
			fail_msg("round %u: %llu bytes held, %llu after round 1", r,
			         (unsigned long long)held, (unsigned long long)held1);
		}
	}
	sl_keydir_free(kd);
}

/* sl_keydir_put_many gives every item the rc and old location that
 * sl_keydir_put in the same order gives, and leaves the same table: with
 * repeated keys (newer and older versions) in one batch, over many shards
 * and runs longer than one lock hold. */
static void put_many_equals_puts_in_order(void **state)
{
	(void)state;
	enum { N = 3000, ITEMS = 9000 };
	sl_keydir *one = sl_keydir_new(), *many = sl_keydir_new();
	assert_non_null(one);
	assert_non_null(many);
	static char keys[N][KLEN + 1];
	for (uint32_t i = 0; i < N; i++) {
		key_of(i, keys[i]);
	}
	for (uint32_t i = 0; i < N; i += 3) { /* some keys exist beforehand */
		sl_loc l = loc_of(i, 1);
		assert_int_equal(put(one, keys[i], KLEN, &l, 1, NULL), 2);
		assert_int_equal(put(many, keys[i], KLEN, &l, 1, NULL), 2);
	}
	static sl_kd_item items[ITEMS];
	int want_rc[ITEMS];
	sl_loc want_old[ITEMS];
	for (size_t j = 0; j < ITEMS; j++) {
		uint32_t i = (uint32_t)(rng() % N);
		uint32_t v = (uint32_t)(rng() % 3); /* 0 and 1 older or equal, 2 newer */
		items[j] = (sl_kd_item){.h = sl_keydir_hash(keys[i], KLEN),
		                        .key = keys[i],
		                        .klen = KLEN,
		                        .loc = loc_of(i, v),
		                        .rc = -999};
		memset(&want_old[j], 0, sizeof(want_old[j]));
		want_rc[j] = put(one, keys[i], KLEN, &items[j].loc, 1, &want_old[j]);
	}
	assert_int_equal(sl_keydir_put_many(many, items, ITEMS, 1), SL_OK);
	size_t kept = 0, replaced = 0;
	for (size_t j = 0; j < ITEMS; j++) {
		assert_int_equal(items[j].rc, want_rc[j]);
		if (want_rc[j] < 2) {
			assert_loc_eq(&items[j].old, &want_old[j]);
		}
		kept += want_rc[j] == 0;
		replaced += want_rc[j] == 1;
	}
	assert_true(kept > 0 && replaced > 0); /* both outcomes were exercised */
	for (uint32_t i = 0; i < N; i++) {
		sl_loc a, b;
		int ra = get(one, keys[i], KLEN, &a), rb = get(many, keys[i], KLEN, &b);
		assert_int_equal(ra, rb);
		if (ra == SL_OK) {
			assert_loc_eq(&b, &a);
		}
	}
	sl_keydir_stats sa, sb;
	sl_keydir_stats_get(one, &sa);
	sl_keydir_stats_get(many, &sb);
	assert_int_equal(sa.keys, sb.keys);
	assert_int_equal(sa.tombstones, sb.tombstones);
	assert_int_equal(sl_keydir_put_many(many, items, 0, 1), SL_OK); /* empty batch */
	sl_keydir_free(one);
	sl_keydir_free(many);
}

/* Where the pool's 64 GiB reservation is refused (strict overcommit, a
 * ulimit -v), arenas are malloc'd run by run: the same tests pass in a
 * child limited to 4 GiB of address space.  Not under AddressSanitizer
 * or ThreadSanitizer, whose shadow memory needs far more address space
 * than that. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SL_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SL_TEST_ASAN 1
#endif
#endif

static void churn_repacks_arena_and_keeps_everything_findable(void **state);
static void repack_with_mixed_key_lengths(void **state);

static void without_a_reservation_arenas_are_malloced(void **state)
{
	(void)state;
#ifndef SL_TEST_ASAN
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct rlimit rl = {4ull << 30, 4ull << 30};
		if (setrlimit(RLIMIT_AS, &rl) != 0) {
			_exit(99);
		}
		const struct CMUnitTest limited[] = {
		    cmocka_unit_test(keys_of_length_1_and_65535),
		    cmocka_unit_test(arena_runs_across_chunk_boundaries),
		    cmocka_unit_test(repack_counts_holes_not_run_tails),
		    cmocka_unit_test(churn_repacks_arena_and_keeps_everything_findable),
		    cmocka_unit_test(repack_with_mixed_key_lengths),
		};
		_exit(cmocka_run_group_tests_name("limited to 4 GiB", limited, NULL, NULL) == 0
		          ? 0
		          : 1);
	}
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fail_msg("the child limited to 4 GiB %s %d (its cmocka output is above)",
		         WIFEXITED(st) ? "exited with" : "was killed by signal",
		         WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
	}
#endif
}

/* The pool's pages are faulted in ahead of the puts by the pool's own
 * thread once the keydir outgrows a 2 MiB page (keydir.c, POPULATE_AHEAD),
 * and not at all for a small keydir; either way every key stays found,
 * and freeing the keydir stops the thread. */
/* Whether this kernel has MADV_POPULATE_WRITE (Linux 5.14). */
static int populate_write_works(void)
{
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
	size_t n = (size_t)sysconf(_SC_PAGESIZE);
	void *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		return 0;
	}
	int ok = madvise(m, n, MADV_POPULATE_WRITE) == 0;
	munmap(m, n);
	return ok;
}

static void pool_pages_faulted_in_ahead_of_the_puts(void **state)
{
	(void)state;
	sl_keydir *kd = sl_keydir_new();
	char k[KLEN + 1];
	uint32_t n = 0;
	for (; n < 100; n++) { /* a 4 KiB chunk each, in as many shards */
		key_of(n, k);
		sl_loc l = loc_of(n, 0);
		assert_int_equal(put(kd, k, KLEN, &l, 0, NULL), 2);
	}
	usleep(50000);
	sl_keydir_stats st = stats(kd);
	if (st.pool_top == 0) {
		sl_keydir_free(kd); /* no reservation (strict overcommit): nothing to fault */
		skip();
	}
	assert_true(st.pool_top < (2u << 20));
	assert_int_equal(st.pool_populated, 0); /* small: no thread, nothing ahead */
	if (!populate_write_works()) {
		sl_keydir_free(kd); /* before Linux 5.14: the puts fault the pages */
		skip();
	}
	while (stats(kd).pool_top < (3u << 20)) {
		key_of(n, k);
		sl_loc l = loc_of(n, 0);
		assert_int_equal(put(kd, k, KLEN, &l, 0, NULL), 2);
		n++;
	}
	/* at least a 2 MiB page past what the puts have taken, within 5 s */
	for (int i = 0; i < 500; i++) {
		st = stats(kd);
		if (st.pool_populated >= st.pool_top + (2u << 20)) {
			break;
		}
		usleep(10000);
	}
	print_message("pool: %llu bytes taken, %llu faulted in\n", (unsigned long long)st.pool_top,
	              (unsigned long long)st.pool_populated);
	if (st.pool_populated < st.pool_top + (2u << 20)) {
		fail_msg(
		    "pool pages faulted in up to %llu, the puts have taken %llu: nothing ahead",
		    (unsigned long long)st.pool_populated, (unsigned long long)st.pool_top);
	}
	for (uint32_t i = 0; i < n; i++) {
		key_of(i, k);
		sl_loc want = loc_of(i, 0);
		expect_found(kd, k, KLEN, &want);
	}
	sl_keydir_free(kd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(new_free_and_free_null),
	    cmocka_unit_test(get_on_empty_is_not_found),
	    cmocka_unit_test(insert_get_replace),
	    cmocka_unit_test(get_returns_callback_result),
	    cmocka_unit_test(only_if_newer_keeps_equal_or_newer),
	    cmocka_unit_test(tombstone_flag_round_trips_and_counts),
	    cmocka_unit_test(extreme_field_values_round_trip),
	    cmocka_unit_test(cas_requires_same_seg_off_and_seq),
	    cmocka_unit_test(remove_requires_exact_entry),
	    cmocka_unit_test(keys_of_length_1_and_65535),
	    cmocka_unit_test(arena_runs_across_chunk_boundaries),
	    cmocka_unit_test(repack_counts_holes_not_run_tails),
	    cmocka_unit_test(big_entries_reuse_freed_runs),
	    cmocka_unit_test(keys_compared_by_length_and_bytes),
	    cmocka_unit_test(remove_random_half_of_200k_keeps_probing_invariant),
	    cmocka_unit_test(remove_from_wrapping_cluster_every_position),
	    cmocka_unit_test(scan_visits_each_entry_exactly_once),
	    cmocka_unit_test(scan_stops_on_nonzero_and_returns_it),
	    cmocka_unit_test(bytes_per_key_at_most_klen_plus_32),
	    cmocka_unit_test(churn_repacks_arena_and_keeps_everything_findable),
	    cmocka_unit_test(repack_with_mixed_key_lengths),
	    cmocka_unit_test(put_many_equals_puts_in_order),
	    cmocka_unit_test(without_a_reservation_arenas_are_malloced),
	    cmocka_unit_test(pool_pages_faulted_in_ahead_of_the_puts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
