/*
 * record.c — the record codec.  A record is the unit everywhere (disk,
 * replication, replay), so its encoding and its checks live in one place.
 */
#include "record.h"

#include <isa-l/crc.h>
#include <string.h>

uint32_t sl_crc32c_extend(uint32_t crc, const void *buf, size_t len)
{
	/* isa-l's crc32_iscsi takes and returns the raw register; the standard
	 * CRC32C inverts it on the way in and out. */
	uint32_t c = ~crc;
	const unsigned char *p = buf;
	while (len > 0) {
		int n = len > (1u << 30) ? (1 << 30) : (int)len;
		c = crc32_iscsi((unsigned char *)p, n, c);
		p += n;
		len -= (size_t)n;
	}
	return ~c;
}

uint32_t sl_crc32c(const void *buf, size_t len)
{
	return sl_crc32c_extend(0, buf, len);
}

void sl_rec_encode(uint8_t *dst, uint8_t type, uint64_t seq, uint64_t expire_at, const void *key,
                   size_t klen, const void *val, size_t vlen)
{
	dst[4] = type;
	dst[5] = 0;
	sl_put16(dst + 6, (uint16_t)klen);
	sl_put32(dst + 8, (uint32_t)vlen);
	sl_put64(dst + 12, seq);
	sl_put64(dst + 20, expire_at);
	memcpy(dst + SL_REC_HDR_SIZE, key, klen);
	if (vlen > 0) {
		memcpy(dst + SL_REC_HDR_SIZE + klen, val, vlen);
	}
	sl_put32(dst, sl_crc32c(dst + 4, SL_REC_HDR_SIZE - 4 + klen + vlen));
}

int sl_rec_decode_header(const uint8_t *p, size_t avail, uint32_t max_key, uint32_t max_value,
                         sl_rec *r)
{
	if (avail < SL_REC_HDR_SIZE) {
		/* A short, all-zero remainder is still the clean end. */
		for (size_t i = 0; i < avail; i++) {
			if (p[i] != 0) {
				return SL_REC_TRUNCATED;
			}
		}
		return SL_REC_END;
	}
	r->crc = sl_get32(p);
	r->type = p[4];
	r->klen = sl_get16(p + 6);
	r->vlen = sl_get32(p + 8);
	r->seq = sl_get64(p + 12);
	r->expire_at = sl_get64(p + 20);
	if (r->type == 0 && r->crc == 0 && r->klen == 0 && r->vlen == 0 && r->seq == 0 &&
	    p[5] == 0 && r->expire_at == 0) {
		return SL_REC_END;
	}
	if ((r->type != SL_REC_PUT && r->type != SL_REC_DEL) || p[5] != 0 || r->klen == 0 ||
	    r->klen > max_key || r->vlen > max_value || r->seq == 0 ||
	    (r->type == SL_REC_DEL && r->vlen != 0)) {
		return SL_REC_BAD;
	}
	return SL_REC_OK;
}

int sl_rec_verify(const uint8_t *p, size_t len)
{
	return len >= SL_REC_HDR_SIZE && sl_crc32c(p + 4, len - 4) == sl_get32(p);
}

int sl_rec_decode(const uint8_t *p, size_t avail, uint32_t max_key, uint32_t max_value, sl_rec *r,
                  size_t *size_out)
{
	int rc = sl_rec_decode_header(p, avail, max_key, max_value, r);
	if (rc != SL_REC_OK) {
		return rc;
	}
	size_t size = sl_rec_size(r->klen, r->vlen);
	if (size > avail) {
		return SL_REC_TRUNCATED;
	}
	if (!sl_rec_verify(p, size)) {
		return SL_REC_BAD;
	}
	r->key = p + SL_REC_HDR_SIZE;
	r->val = p + SL_REC_HDR_SIZE + r->klen;
	*size_out = size;
	return SL_REC_OK;
}

size_t sl_rec_next_valid(const uint8_t *p, size_t from, size_t limit, uint32_t max_key,
                         uint32_t max_value)
{
	for (size_t o = from + 1; o + SL_REC_HDR_SIZE <= limit; o++) {
		sl_rec r;
		size_t size;
		if ((p[o + 4] == SL_REC_PUT || p[o + 4] == SL_REC_DEL) &&
		    sl_rec_decode(p + o, limit - o, max_key, max_value, &r, &size) == SL_REC_OK) {
			return o;
		}
	}
	return limit;
}
