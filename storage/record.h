/*
 * record.h — encoding and verification of one log record (format.h).
 */
#ifndef SL_RECORD_H
#define SL_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "format.h"

typedef struct sl_rec {
	uint32_t crc;
	uint8_t type;
	uint16_t klen;
	uint32_t vlen;
	uint64_t seq;
	uint64_t expire_at;
	const uint8_t *key; /* borrowed: points into the buffer decoded */
	const uint8_t *val;
} sl_rec;

/* CRC32C (Castagnoli) of buf, standard init/final xor. */
uint32_t sl_crc32c(const void *buf, size_t len);
/* Continues a CRC32C: sl_crc32c_extend(sl_crc32c(a), b) == sl_crc32c(a||b). */
uint32_t sl_crc32c_extend(uint32_t crc, const void *buf, size_t len);

static inline size_t sl_rec_size(size_t klen, size_t vlen)
{
	return SL_REC_HDR_SIZE + klen + vlen;
}

/* Writes a complete record into dst (sl_rec_size(klen, vlen) bytes). */
void sl_rec_encode(uint8_t *dst, uint8_t type, uint64_t seq, uint64_t expire_at, const void *key,
                   size_t klen, const void *val, size_t vlen);

/* Outcome of decoding the bytes at some offset. */
enum {
	SL_REC_OK = 0,
	SL_REC_END = 1,       /* a zero header: the clean end of written data */
	SL_REC_TRUNCATED = 2, /* header or body runs past the available bytes */
	SL_REC_BAD = 3,       /* impossible header or checksum mismatch */
};

/* Decodes the record at p with `avail` bytes available, checking the header
 * against the limits and the checksum.  On SL_REC_OK fills *r (pointers into
 * p) and *size_out. */
int sl_rec_decode(const uint8_t *p, size_t avail, uint32_t max_key, uint32_t max_value, sl_rec *r,
                  size_t *size_out);

/* 1 when the len bytes at p (one whole record) carry a matching CRC32C. */
int sl_rec_verify(const uint8_t *p, size_t len);

/* Decodes only the header (no checksum).  SL_REC_OK when plausible. */
int sl_rec_decode_header(const uint8_t *p, size_t avail, uint32_t max_key, uint32_t max_value,
                         sl_rec *r);

/* The first offset in (from, limit) where a valid record starts (a PUT or
 * DEL type byte and a matching checksum), or limit when there is none.
 * Used to resynchronise after a damaged record. */
size_t sl_rec_next_valid(const uint8_t *p, size_t from, size_t limit, uint32_t max_key,
                         uint32_t max_value);

#endif
