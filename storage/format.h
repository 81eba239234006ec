/*
 * format.h — shiplog's on-disk layout.  Constants here never change meaning;
 * a new layout gets a new version number.  All integers are little-endian.
 *
 * Segment file NNNNNNNNNN.seg
 *
 *   +--------------------------- 32-byte file header -----------------------+
 *   | magic "SHIPLSEG" (8) | version u32 | crc32c u32 of bytes 16..31       |
 *   | segment id u32 | flags u32 | first_seq u64 (seqs in file are >= it) |
 *   +-----------------------------------------------------------------------+
 *   | record | record | record | ...  | zero bytes (preallocated, unused)  |
 *
 * Record (a 28-byte header, then key, then value; never padded):
 *
 *    0       4    5    6       8           12                  20          28
 *   +-------+----+----+-------+-----------+-------------------+-----------+
 *   | crc32c|type|rsvd| klen  |   vlen    |        seq        | expire_at |
 *   |  u32  | u8 | u8 |  u16  |    u32    |        u64        |    u64    |
 *   +-------+----+----+-------+-----------+-------------------+-----------+
 *   | key (klen bytes, 1..65535) | value (vlen bytes, 0 for a tombstone)  |
 *   +-----------------------------------------------------------------------+
 *
 *   crc32c  CRC32C (Castagnoli) over bytes 4 .. end of value
 *   type    1 = put, 2 = delete (tombstone); 0 never written (marks the
 *           zeroed, preallocated end of the active segment); others reserved
 *   rsvd    0
 *   seq     global sequence number assigned by the primary (1, 2, 3 ...)
 *   expire_at  milliseconds since the Unix epoch, 0 = never
 *
 * Segment flags: bit 0 SL_SEG_COMPACTED — written by compaction: records
 * are not in seq order and the file is not part of the replication log;
 * first_seq is the lowest seq it holds.  Other bits are 0.
 *
 * A record is self-contained: the same bytes are written to disk, shipped to
 * followers and replayed by them.
 *
 * Hint file NNNNNNNNNN.hint (written for each sealed segment)
 *
 *   | magic "SHIPLHNT" (8) | version u32 | count u32 | segment id u64 |
 *   | entry * count                                                   |
 *   | crc32c u32 over everything before it                            |
 *
 *   entry: seq u64 | expire_at u64 | offset u32 | size u32 | type u8 |
 *          klen u16 | key
 */
#ifndef SL_FORMAT_H
#define SL_FORMAT_H

#include <stdint.h>
#include <string.h>

#define SL_SEG_MAGIC      "SHIPLSEG"
#define SL_HINT_MAGIC     "SHIPLHNT"
#define SL_FORMAT_VERSION 1u

#define SL_SEG_HDR_SIZE     32u
#define SL_REC_HDR_SIZE     28u
#define SL_HINT_HDR_SIZE    24u
#define SL_HINT_ENTRY_FIXED 27u

#define SL_SEG_COMPACTED 1u

#define SL_REC_PUT 1u
#define SL_REC_DEL 2u

#define SL_MAX_KEY   65535u
#define SL_MAX_VALUE (1u << 30)

_Static_assert(SL_REC_HDR_SIZE == 4 + 1 + 1 + 2 + 4 + 8 + 8, "record header layout");
_Static_assert(SL_SEG_HDR_SIZE == 8 + 4 + 4 + 4 + 4 + 8, "segment header layout");
_Static_assert(SL_HINT_HDR_SIZE == 8 + 4 + 4 + 8, "hint header layout");
_Static_assert(SL_HINT_ENTRY_FIXED == 8 + 8 + 4 + 4 + 1 + 2, "hint entry layout");

/* Little-endian helpers (x86 and arm64 are little-endian; the memcpy keeps
 * unaligned access defined). */
static inline void sl_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static inline void sl_put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++) {
		p[i] = (uint8_t)(v >> (8 * i));
	}
}
static inline void sl_put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++) {
		p[i] = (uint8_t)(v >> (8 * i));
	}
}
static inline uint16_t sl_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t sl_get32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}
static inline uint64_t sl_get64(const uint8_t *p)
{
	return (uint64_t)sl_get32(p) | ((uint64_t)sl_get32(p + 4) << 32);
}

#endif
