/*
 * test_record.c — the record codec (storage/record.c) against format.h.
 *
 * Why: a record is the unit on disk, on the wire and in replay, so the codec
 * is the last line between a damaged byte and a wrong value.  Beyond round
 * trips, the adversarial cases are exhaustive where that is cheap: every
 * truncation length, every single-byte corruption (all 255 XOR masks at
 * every offset), and each header limit on its own.  The CRC is checked
 * against published vectors and an independent bitwise implementation, so a
 * codec that agrees with itself but not with the format is caught too.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "record.h"

/* ---- helpers ---------------------------------------------------------- */

/* Reference CRC32C: bitwise, reflected polynomial 0x82F63B78. */
static uint32_t ref_crc32c(const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint32_t c = 0xffffffffu;
	for (size_t i = 0; i < len; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++) {
			c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		}
	}
	return c ^ 0xffffffffu;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
	uint64_t x = rng_state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545f4914f6cdd1dull;
}

static void fill(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		p[i] = (uint8_t)rng();
	}
}

/* A freshly encoded record in a malloc'd buffer of exactly its size. */
typedef struct enc {
	uint8_t *buf;
	size_t size;
	uint8_t *key, *val;
	size_t klen, vlen;
	uint8_t type;
	uint64_t seq, exp;
} enc;

static enc enc_make(uint8_t type, uint64_t seq, uint64_t exp, size_t klen, size_t vlen)
{
	enc e = {.type = type, .seq = seq, .exp = exp, .klen = klen, .vlen = vlen};
	e.key = malloc(klen ? klen : 1);
	e.val = malloc(vlen ? vlen : 1);
	assert_non_null(e.key);
	assert_non_null(e.val);
	fill(e.key, klen);
	fill(e.val, vlen);
	e.size = sl_rec_size(klen, vlen);
	e.buf = malloc(e.size);
	assert_non_null(e.buf);
	sl_rec_encode(e.buf, type, seq, exp, e.key, klen, e.val, vlen);
	return e;
}

static void enc_free(enc *e)
{
	free(e->buf);
	free(e->key);
	free(e->val);
}

/* Decodes e (with `avail` bytes of p) and checks every field against it. */
static void expect_decodes_as(const uint8_t *p, size_t avail, const enc *e)
{
	sl_rec r;
	size_t size = 0;
	assert_int_equal(sl_rec_decode(p, avail, SL_MAX_KEY, SL_MAX_VALUE, &r, &size), SL_REC_OK);
	assert_int_equal(size, e->size);
	assert_int_equal(r.type, e->type);
	assert_int_equal(r.klen, e->klen);
	assert_int_equal(r.vlen, e->vlen);
	assert_int_equal(r.seq, e->seq);
	assert_int_equal(r.expire_at, e->exp);
	assert_ptr_equal(r.key, p + SL_REC_HDR_SIZE);
	assert_ptr_equal(r.val, p + SL_REC_HDR_SIZE + e->klen);
	assert_memory_equal(r.key, e->key, e->klen);
	if (e->vlen > 0) {
		assert_memory_equal(r.val, e->val, e->vlen);
	}
}

/* Builds a 28-byte header by hand (format.h), crc left as given. */
static void raw_header(uint8_t *h, uint32_t crc, uint8_t type, uint8_t rsvd, uint16_t klen,
                       uint32_t vlen, uint64_t seq, uint64_t exp)
{
	sl_put32(h, crc);
	h[4] = type;
	h[5] = rsvd;
	sl_put16(h + 6, klen);
	sl_put32(h + 8, vlen);
	sl_put64(h + 12, seq);
	sl_put64(h + 20, exp);
}

/* A whole record with a hand-built header and a correct crc, so only the
 * header limit under test can make it fail. */
static size_t raw_record(uint8_t *buf, uint8_t type, uint8_t rsvd, uint16_t klen, uint32_t vlen,
                         uint64_t seq)
{
	raw_header(buf, 0, type, rsvd, klen, vlen, seq, 0);
	memset(buf + SL_REC_HDR_SIZE, 'k', (size_t)klen + vlen);
	size_t size = SL_REC_HDR_SIZE + (size_t)klen + vlen;
	sl_put32(buf, ref_crc32c(buf + 4, size - 4));
	return size;
}

/* ---- CRC32C ----------------------------------------------------------- */

static void crc32c_known_vectors(void **state)
{
	(void)state;
	assert_int_equal(sl_crc32c("123456789", 9), 0xE3069283u);
	assert_int_equal(sl_crc32c("", 0), 0u);
	assert_int_equal(sl_crc32c(NULL, 0), 0u);
	/* RFC 3720 (iSCSI) B.4 test patterns. */
	uint8_t b[48];
	memset(b, 0, 32);
	assert_int_equal(sl_crc32c(b, 32), 0x8A9136AAu);
	memset(b, 0xff, 32);
	assert_int_equal(sl_crc32c(b, 32), 0x62A8AB43u);
	for (int i = 0; i < 32; i++) {
		b[i] = (uint8_t)i;
	}
	assert_int_equal(sl_crc32c(b, 32), 0x46DD794Eu);
	for (int i = 0; i < 32; i++) {
		b[i] = (uint8_t)(31 - i);
	}
	assert_int_equal(sl_crc32c(b, 32), 0x113FDB5Cu);
	static const uint8_t scsi_read[48] = {
	    0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	    0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
	    0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
	    0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	};
	assert_int_equal(sl_crc32c(scsi_read, 48), 0xD9963A56u);
}

/* isa-l switches code paths by length and alignment: compare against the
 * bitwise reference for every length 0..1100 at every alignment 0..7, and a
 * few large buffers. */
static void crc32c_matches_reference_all_lengths_and_alignments(void **state)
{
	(void)state;
	size_t cap = (1u << 20) + 64;
	uint8_t *b = malloc(cap);
	assert_non_null(b);
	fill(b, cap);
	for (size_t align = 0; align < 8; align++) {
		for (size_t len = 0; len <= 1100; len++) {
			assert_int_equal(sl_crc32c(b + align, len), ref_crc32c(b + align, len));
		}
	}
	static const size_t big[] = {4095, 4096, 4097, 65536 + 3, 1u << 20};
	for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
		assert_int_equal(sl_crc32c(b + 1, big[i]), ref_crc32c(b + 1, big[i]));
	}
	free(b);
}

static void crc32c_extend_composes_at_every_split(void **state)
{
	(void)state;
	uint8_t b[600];
	fill(b, sizeof(b));
	uint32_t whole = sl_crc32c(b, sizeof(b));
	for (size_t cut = 0; cut <= sizeof(b); cut++) {
		assert_int_equal(sl_crc32c_extend(sl_crc32c(b, cut), b + cut, sizeof(b) - cut),
		                 whole);
	}
	/* Three pieces, and extending by nothing is the identity. */
	uint32_t c = sl_crc32c(b, 100);
	c = sl_crc32c_extend(c, b + 100, 0);
	c = sl_crc32c_extend(c, b + 100, 333);
	c = sl_crc32c_extend(c, b + 433, sizeof(b) - 433);
	assert_int_equal(c, whole);
	assert_int_equal(sl_crc32c_extend(0, "123456789", 9), 0xE3069283u);
	assert_int_equal(sl_crc32c_extend(sl_crc32c("1234", 4), "56789", 5), 0xE3069283u);
}

/* ---- encoding --------------------------------------------------------- */

/* The exact bytes of format.h, built by hand: the codec may not drift from
 * the documented layout even if encode and decode agree with each other. */
static void encode_matches_format_h_byte_for_byte(void **state)
{
	(void)state;
	uint8_t want[SL_REC_HDR_SIZE + 3 + 4] = {
	    0,    0,    0,    0,                            /* crc, filled below */
	    1,                                              /* type put */
	    0,                                              /* rsvd */
	    3,    0,                                        /* klen 3 */
	    4,    0,    0,    0,                            /* vlen 4 */
	    0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, /* seq */
	    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, /* expire_at */
	    'k',  'e',  'y',  'v',  'a',  'l',  '!',
	};
	sl_put32(want, ref_crc32c(want + 4, sizeof(want) - 4));
	uint8_t got[sizeof(want)];
	memset(got, 0xAA, sizeof(got));
	sl_rec_encode(got, SL_REC_PUT, 0x0102030405060708ull, 0x8877665544332211ull, "key", 3,
	              "val!", 4);
	assert_int_equal(sl_rec_size(3, 4), sizeof(want));
	assert_memory_equal(got, want, sizeof(want));
}

static void encode_writes_exactly_rec_size_bytes(void **state)
{
	(void)state;
	uint8_t buf[200];
	memset(buf, 0xEE, sizeof(buf));
	sl_rec_encode(buf + 10, SL_REC_PUT, 9, 0, "abc", 3, "defgh", 5);
	size_t n = sl_rec_size(3, 5);
	for (size_t i = 0; i < 10; i++) {
		assert_int_equal(buf[i], 0xEE);
	}
	for (size_t i = 10 + n; i < sizeof(buf); i++) {
		assert_int_equal(buf[i], 0xEE);
	}
}

static void round_trip_put_and_delete(void **state)
{
	(void)state;
	enc put = enc_make(SL_REC_PUT, 1, 0, 5, 17);
	expect_decodes_as(put.buf, put.size, &put);
	enc put_ttl = enc_make(SL_REC_PUT, 123456789, 1700000000123ull, 12, 1);
	expect_decodes_as(put_ttl.buf, put_ttl.size, &put_ttl);
	enc del = enc_make(SL_REC_DEL, 42, 0, 9, 0);
	expect_decodes_as(del.buf, del.size, &del);
	enc_free(&put);
	enc_free(&put_ttl);
	enc_free(&del);
}

static void round_trip_key_length_1_and_65535(void **state)
{
	(void)state;
	enc k1 = enc_make(SL_REC_PUT, 7, 0, 1, 3);
	expect_decodes_as(k1.buf, k1.size, &k1);
	enc kmax = enc_make(SL_REC_PUT, 8, 0, SL_MAX_KEY, 3);
	expect_decodes_as(kmax.buf, kmax.size, &kmax);
	enc kmax_del = enc_make(SL_REC_DEL, 9, 0, SL_MAX_KEY, 0);
	expect_decodes_as(kmax_del.buf, kmax_del.size, &kmax_del);
	enc_free(&k1);
	enc_free(&kmax);
	enc_free(&kmax_del);
}

static void round_trip_value_length_0_and_large(void **state)
{
	(void)state;
	enc v0 = enc_make(SL_REC_PUT, 1, 0, 4, 0);
	expect_decodes_as(v0.buf, v0.size, &v0);
	enc big = enc_make(SL_REC_PUT, 2, 0, 16, 8u << 20);
	expect_decodes_as(big.buf, big.size, &big);
	enc_free(&v0);
	enc_free(&big);
}

static void round_trip_extreme_seq_and_expire(void **state)
{
	(void)state;
	enc a = enc_make(SL_REC_PUT, UINT64_MAX, UINT64_MAX, 3, 3);
	expect_decodes_as(a.buf, a.size, &a);
	enc b = enc_make(SL_REC_DEL, (1ull << 48) - 1, 1, 3, 0);
	expect_decodes_as(b.buf, b.size, &b);
	enc_free(&a);
	enc_free(&b);
}

/* Limits are inclusive: klen == max_key and vlen == max_value decode. */
static void limits_are_inclusive(void **state)
{
	(void)state;
	uint8_t buf[SL_REC_HDR_SIZE + 10 + 20];
	size_t n = raw_record(buf, SL_REC_PUT, 0, 10, 20, 1);
	sl_rec r;
	size_t size;
	assert_int_equal(sl_rec_decode(buf, n, 10, 20, &r, &size), SL_REC_OK);
	assert_int_equal(size, n);
	assert_int_equal(sl_rec_decode(buf, n, 9, 20, &r, &size), SL_REC_BAD);
	assert_int_equal(sl_rec_decode(buf, n, 10, 19, &r, &size), SL_REC_BAD);
}

/* A record followed by more data decodes to its own size; records laid
 * end to end decode one after another. */
static void decode_stops_at_record_boundary(void **state)
{
	(void)state;
	enc a = enc_make(SL_REC_PUT, 1, 0, 3, 10);
	enc b = enc_make(SL_REC_DEL, 2, 0, 7, 0);
	enc c = enc_make(SL_REC_PUT, 3, 99, 1, 1);
	size_t total = a.size + b.size + c.size + 40; /* + a zeroed tail */
	uint8_t *log = calloc(1, total);
	assert_non_null(log);
	memcpy(log, a.buf, a.size);
	memcpy(log + a.size, b.buf, b.size);
	memcpy(log + a.size + b.size, c.buf, c.size);
	size_t off = 0;
	expect_decodes_as(log + off, total - off, &a);
	off += a.size;
	expect_decodes_as(log + off, total - off, &b);
	off += b.size;
	expect_decodes_as(log + off, total - off, &c);
	off += c.size;
	sl_rec r;
	size_t size;
	assert_int_equal(sl_rec_decode(log + off, total - off, SL_MAX_KEY, SL_MAX_VALUE, &r, &size),
	                 SL_REC_END);
	free(log);
	enc_free(&a);
	enc_free(&b);
	enc_free(&c);
}

/* ---- adversarial: zeroes, truncation, corruption ------------------------- */

static void decode_zeroed_buffer_is_end(void **state)
{
	(void)state;
	uint8_t z[256] = {0};
	sl_rec r;
	size_t size;
	for (size_t n = 0; n <= sizeof(z); n++) {
		assert_int_equal(sl_rec_decode(z, n, SL_MAX_KEY, SL_MAX_VALUE, &r, &size),
		                 SL_REC_END);
		assert_int_equal(sl_rec_decode_header(z, n, SL_MAX_KEY, SL_MAX_VALUE, &r),
		                 SL_REC_END);
	}
}

/* Every proper prefix of a record: TRUNCATED (END only if the prefix is all
 * zero), never OK. */
static void check_every_truncation(const enc *e)
{
	for (size_t n = 0; n < e->size; n++) {
		/* Small records get a private copy of exactly n bytes so ASan
		 * sees any overread; large ones are decoded in place (quadratic
		 * copying would take minutes). */
		int own = e->size <= 4096;
		uint8_t *p = e->buf;
		if (own) {
			p = malloc(n ? n : 1);
			assert_non_null(p);
			memcpy(p, e->buf, n);
		}
		sl_rec r;
		size_t size = 12345;
		int rc = sl_rec_decode(p, n, SL_MAX_KEY, SL_MAX_VALUE, &r, &size);
		int allzero = 1;
		for (size_t i = 0; i < n && allzero; i++) {
			allzero = p[i] == 0;
		}
		if (rc != SL_REC_TRUNCATED && !(allzero && rc == SL_REC_END)) {
			fail_msg("truncation to %zu of %zu bytes gave %d", n, e->size, rc);
		}
		assert_int_equal(size, 12345); /* untouched unless OK */
		if (own) {
			free(p);
		}
	}
}

static void truncation_at_every_length_is_never_ok(void **state)
{
	(void)state;
	enc cases[] = {
	    enc_make(SL_REC_PUT, 1, 0, 1, 0),
	    enc_make(SL_REC_PUT, 77, 5, 13, 200),
	    enc_make(SL_REC_DEL, 3, 0, 30, 0),
	    enc_make(SL_REC_PUT, 4, 0, SL_MAX_KEY, 70000),
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		check_every_truncation(&cases[i]);
		enc_free(&cases[i]);
	}
}

/* A record whose crc happens to start with zero bytes: short prefixes are all
 * zero, which the codec may call END but must never call OK. */
static void truncation_of_record_with_zero_leading_bytes(void **state)
{
	(void)state;
	/* Search seqs until the crc's low byte is zero (1 in 256). */
	for (uint64_t seq = 1;; seq++) {
		enc e = enc_make(SL_REC_PUT, seq, 0, 4, 4);
		if (e.buf[0] == 0) {
			check_every_truncation(&e);
			enc_free(&e);
			return;
		}
		enc_free(&e);
		assert_true(seq < 100000);
	}
}

/* Flips `mask` into byte `off` of e and decodes with `avail` bytes (the
 * record alone, or followed by zeroes or by random bytes).  The result must
 * be BAD or TRUNCATED: never OK, and never END for a header that was not
 * zero. */
static void check_corruption(const enc *e, size_t off, uint8_t mask, size_t pad, int pad_random)
{
	size_t n = e->size + pad;
	uint8_t *p = malloc(n);
	assert_non_null(p);
	memcpy(p, e->buf, e->size);
	if (pad_random) {
		fill(p + e->size, pad);
	} else {
		memset(p + e->size, 0, pad);
	}
	p[off] ^= mask;
	sl_rec r;
	size_t size = 0;
	int rc = sl_rec_decode(p, n, SL_MAX_KEY, SL_MAX_VALUE, &r, &size);
	if (rc != SL_REC_BAD && rc != SL_REC_TRUNCATED) {
		fail_msg("byte %zu ^ 0x%02x (pad %zu) gave %d", off, mask, pad, rc);
	}
	free(p);
}

static void byte_flip_at_every_offset_is_detected(void **state)
{
	(void)state;
	enc cases[] = {
	    enc_make(SL_REC_PUT, 1000, 0, 5, 40),
	    enc_make(SL_REC_PUT, 1, 1700000000000ull, 1, 0),
	    enc_make(SL_REC_DEL, 0x0000ffffffffffffull, 0, 11, 0),
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enc *e = &cases[i];
		for (size_t off = 0; off < e->size; off++) {
			for (unsigned mask = 1; mask < 256; mask++) {
				check_corruption(e, off, (uint8_t)mask, 0, 0);
			}
			/* Room after the record: a grown klen/vlen now fits and
			 * must be caught by the checksum instead. */
			check_corruption(e, off, 0x01, 300, 0);
			check_corruption(e, off, 0x02, 300, 1);
			check_corruption(e, off, 0x80, 300, 0);
			check_corruption(e, off, 0xff, 300, 1);
		}
		enc_free(e);
	}
}

/* A bad checksum alone: the header still looks plausible. */
static void crc_mismatch_is_bad_but_header_plausible(void **state)
{
	(void)state;
	enc e = enc_make(SL_REC_PUT, 5, 0, 4, 4);
	e.buf[e.size - 1] ^= 0x40;
	sl_rec r;
	size_t size;
	assert_int_equal(sl_rec_decode_header(e.buf, e.size, SL_MAX_KEY, SL_MAX_VALUE, &r),
	                 SL_REC_OK);
	assert_int_equal(r.klen, 4);
	assert_int_equal(r.vlen, 4);
	assert_int_equal(sl_rec_decode(e.buf, e.size, SL_MAX_KEY, SL_MAX_VALUE, &r, &size),
	                 SL_REC_BAD);
	enc_free(&e);
}

/* ---- adversarial: header limits (each with a correct crc) ---------------- */

static int decode_raw(const uint8_t *buf, size_t n, uint32_t max_key, uint32_t max_value)
{
	sl_rec r;
	size_t size;
	int full = sl_rec_decode(buf, n, max_key, max_value, &r, &size);
	int hdr = sl_rec_decode_header(buf, n, max_key, max_value, &r);
	/* decode_header must never be stricter than decode on a whole record. */
	if (full == SL_REC_OK) {
		assert_int_equal(hdr, SL_REC_OK);
	}
	return full;
}

static void header_klen_zero_is_bad(void **state)
{
	(void)state;
	uint8_t buf[64];
	size_t n = raw_record(buf, SL_REC_PUT, 0, 0, 4, 1);
	assert_int_equal(decode_raw(buf, n, SL_MAX_KEY, SL_MAX_VALUE), SL_REC_BAD);
	n = raw_record(buf, SL_REC_DEL, 0, 0, 0, 1);
	assert_int_equal(decode_raw(buf, n, SL_MAX_KEY, SL_MAX_VALUE), SL_REC_BAD);
}

static void header_klen_over_max_key_is_bad(void **state)
{
	(void)state;
	uint8_t buf[64];
	size_t n = raw_record(buf, SL_REC_PUT, 0, 17, 1, 1);
	assert_int_equal(decode_raw(buf, n, 17, SL_MAX_VALUE), SL_REC_OK);
	assert_int_equal(decode_raw(buf, n, 16, SL_MAX_VALUE), SL_REC_BAD);
	assert_int_equal(decode_raw(buf, n, 0, SL_MAX_VALUE), SL_REC_BAD);
}

static void header_vlen_over_max_value_is_bad(void **state)
{
	(void)state;
	uint8_t buf[64];
	size_t n = raw_record(buf, SL_REC_PUT, 0, 1, 30, 1);
	assert_int_equal(decode_raw(buf, n, SL_MAX_KEY, 30), SL_REC_OK);
	assert_int_equal(decode_raw(buf, n, SL_MAX_KEY, 29), SL_REC_BAD);
	/* A huge vlen in a short buffer: BAD (limit), not TRUNCATED. */
	uint8_t h[SL_REC_HDR_SIZE + 8];
	memset(h, 'x', sizeof(h));
	raw_header(h, 0x12345678u, SL_REC_PUT, 0, 1, SL_MAX_VALUE + 1u, 1, 0);
	assert_int_equal(decode_raw(h, sizeof(h), SL_MAX_KEY, SL_MAX_VALUE), SL_REC_BAD);
	raw_header(h, 0x12345678u, SL_REC_PUT, 0, 1, UINT32_MAX, 1, 0);
	assert_int_equal(decode_raw(h, sizeof(h), SL_MAX_KEY, SL_MAX_VALUE), SL_REC_BAD);
}

static void header_type_0_and_3_and_255_are_bad(void **state)
{
	(void)state;
	uint8_t buf[64];
	static const uint8_t types[] = {0, 3, 4, 0x81, 255};
	for (size_t i = 0; i < sizeof(types); i++) {
		size_t n = raw_record(buf, types[i], 0, 3, 2, 1);
		assert_int_equal(decode_raw(buf, n, SL_MAX_KEY, SL_MAX_VALUE), SL_REC_BAD);
	}
	/* Type 0 with only the crc set: not the clean end. */
	uint8_t h[SL_REC_HDR_SIZE] = {0};
	h[0] = 1;
	assert_int_equal(decode_raw(h, sizeof(h), SL_MAX_KEY, SL_MAX_VALUE), SL_REC_BAD);
}

static void header_tombstone_with_value_is_bad(void **state)
{
	(void)state;
	uint8_t buf[64];
	size_t n = raw_record(buf, SL_REC_DEL, 0, 3, 1, 1);
	assert_int_equal(decode_raw(buf, n, SL_MAX_KEY, SL_MAX_VALUE), SL_REC_BAD);
	n = raw_record(buf, SL_REC_DEL, 0, 3, 0, 1);
	assert_int_equal(decode_raw(buf, n, SL_MAX_KEY, SL_MAX_VALUE), SL_REC_OK);
}

static void header_seq_zero_is_bad(void **state)
{
	(void)state;
	uint8_t buf[64];
	size_t n = raw_record(buf, SL_REC_PUT, 0, 3, 1, 0);
	assert_int_equal(decode_raw(buf, n, SL_MAX_KEY, SL_MAX_VALUE), SL_REC_BAD);
	n = raw_record(buf, SL_REC_DEL, 0, 3, 0, 0);
	assert_int_equal(decode_raw(buf, n, SL_MAX_KEY, SL_MAX_VALUE), SL_REC_BAD);
}

static void header_reserved_byte_nonzero_is_bad(void **state)
{
	(void)state;
	uint8_t buf[64];
	for (unsigned v = 1; v < 256; v++) {
		size_t n = raw_record(buf, SL_REC_PUT, (uint8_t)v, 3, 1, 1);
		assert_int_equal(decode_raw(buf, n, SL_MAX_KEY, SL_MAX_VALUE), SL_REC_BAD);
	}
}

/* SL_REC_END means "a zero header" (record.h): the clean end of written
 * data, after which a scan of the active segment stops looking.  A header
 * whose crc, type, klen, vlen and seq are zero but whose reserved byte or
 * expire_at is not is not a zero header: it is damage, and calling it END
 * makes recovery discard any valid records behind it without a word. */
static void header_zero_except_rsvd_or_expire_is_not_end(void **state)
{
	(void)state;
	uint8_t h[SL_REC_HDR_SIZE + 16];
	sl_rec r;
	size_t size;
	for (size_t off = 5; off < SL_REC_HDR_SIZE; off++) {
		if (off >= 6 && off < 20) {
			continue; /* klen, vlen, seq: covered by the cases above */
		}
		memset(h, 0, sizeof(h));
		h[off] = 0x01;
		int rc = sl_rec_decode(h, sizeof(h), SL_MAX_KEY, SL_MAX_VALUE, &r, &size);
		if (rc != SL_REC_BAD) {
			fail_msg("zero header with byte %zu = 1 gave %d, want SL_REC_BAD", off, rc);
		}
	}
}

/* Random garbage never decodes as a record with a different identity: over
 * many random 28..200 byte buffers, OK would need a crc collision. */
static void random_garbage_is_never_ok(void **state)
{
	(void)state;
	uint8_t buf[256];
	for (int i = 0; i < 200000; i++) {
		size_t n = SL_REC_HDR_SIZE + (size_t)(rng() % 200);
		fill(buf, n);
		/* Make the header plausible half the time so the crc is what
		 * has to catch it. */
		if (i & 1) {
			size_t body = n - SL_REC_HDR_SIZE;
			size_t klen = 1 + (size_t)(rng() % (body ? body : 1));
			buf[4] = (uint8_t)(1 + (rng() & 1));
			buf[5] = 0;
			sl_put16(buf + 6, (uint16_t)klen);
			sl_put32(buf + 8, buf[4] == SL_REC_DEL || klen >= body
			                      ? 0
			                      : (uint32_t)(body - klen));
			buf[12] |= 1;
		}
		sl_rec r;
		size_t size;
		int rc = sl_rec_decode(buf, n, SL_MAX_KEY, SL_MAX_VALUE, &r, &size);
		assert_int_not_equal(rc, SL_REC_OK);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(crc32c_known_vectors),
	    cmocka_unit_test(crc32c_matches_reference_all_lengths_and_alignments),
	    cmocka_unit_test(crc32c_extend_composes_at_every_split),
	    cmocka_unit_test(encode_matches_format_h_byte_for_byte),
	    cmocka_unit_test(encode_writes_exactly_rec_size_bytes),
	    cmocka_unit_test(round_trip_put_and_delete),
	    cmocka_unit_test(round_trip_key_length_1_and_65535),
	    cmocka_unit_test(round_trip_value_length_0_and_large),
	    cmocka_unit_test(round_trip_extreme_seq_and_expire),
	    cmocka_unit_test(limits_are_inclusive),
	    cmocka_unit_test(decode_stops_at_record_boundary),
	    cmocka_unit_test(decode_zeroed_buffer_is_end),
	    cmocka_unit_test(truncation_at_every_length_is_never_ok),
	    cmocka_unit_test(truncation_of_record_with_zero_leading_bytes),
	    cmocka_unit_test(byte_flip_at_every_offset_is_detected),
	    cmocka_unit_test(crc_mismatch_is_bad_but_header_plausible),
	    cmocka_unit_test(header_klen_zero_is_bad),
	    cmocka_unit_test(header_klen_over_max_key_is_bad),
	    cmocka_unit_test(header_vlen_over_max_value_is_bad),
	    cmocka_unit_test(header_type_0_and_3_and_255_are_bad),
	    cmocka_unit_test(header_tombstone_with_value_is_bad),
	    cmocka_unit_test(header_seq_zero_is_bad),
	    cmocka_unit_test(header_reserved_byte_nonzero_is_bad),
	    cmocka_unit_test(header_zero_except_rsvd_or_expire_is_not_end),
	    cmocka_unit_test(random_garbage_is_never_ok),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
