/*
 * wire.c — a pre-decode walk over a Request's protobuf wire format.
 *
 * protobuf-c allocates one struct per repeated element while it decodes,
 * before any of our code sees the message: a 17 MiB message of empty batch
 * operations would become millions of allocations.  STYLE.md habit 7 says
 * sizes from outside are bounded before allocating, so the handler first
 * walks the bytes (no allocation) and counts the repeated fields that
 * allocate per element, rejecting the message when a count is over its
 * bound.  Everything else protobuf-c allocates is proportional to the
 * message's size, which nng's receive limit already bounds.
 */
#include "handler.h"

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

/* Request field numbers (proto/shiplog.proto) whose contents we count. */
enum { F_REQ_MGET = 13, F_REQ_BATCH = 18, F_REPEATED = 1 };

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	uint64_t r = 0;
	for (unsigned shift = 0; shift < 64; shift += 7) {
		if (*p >= end) {
			return -1;
		}
		uint8_t b = *(*p)++;
		r |= (uint64_t)(b & 0x7f) << shift;
		if ((b & 0x80) == 0) {
			*v = r;
			return 0;
		}
	}
	return -1;
}

/* Calls on_len(field, data, n) for every length-delimited field of the
 * message in [p, end); validates every field's framing.  Returns 0 or -1. */
static int walk(const uint8_t *p, const uint8_t *end,
                int (*on_len)(void *arg, uint64_t field, const uint8_t *d, size_t n), void *arg)
{
	while (p < end) {
		uint64_t key, v;
		if (read_varint(&p, end, &key) != 0) {
			return -1;
		}
		uint64_t field = key >> 3;
		if (field == 0 || field > 536870911u) {
			return -1;
		}
		switch (key & 7) {
		case WT_VARINT:
			if (read_varint(&p, end, &v) != 0) {
				return -1;
			}
			break;
		case WT_I64:
			if (end - p < 8) {
				return -1;
			}
			p += 8;
			break;
		case WT_I32:
			if (end - p < 4) {
				return -1;
			}
			p += 4;
			break;
		case WT_LEN:
			if (read_varint(&p, end, &v) != 0 || v > (uint64_t)(end - p)) {
				return -1;
			}
			if (on_len != NULL && on_len(arg, field, p, (size_t)v) != 0) {
				return -1;
			}
			p += v;
			break;
		default: /* groups (3, 4) and reserved types: not in our schema */
			return -1;
		}
	}
	return 0;
}

static int count_repeated(void *arg, uint64_t field, const uint8_t *d, size_t n)
{
	(void)d;
	(void)n;
	if (field == F_REPEATED) {
		(*(size_t *)arg)++;
	}
	return 0;
}

struct counts {
	size_t batch_ops, mget_keys;
};

static int top_field(void *arg, uint64_t field, const uint8_t *d, size_t n)
{
	struct counts *c = arg;
	if (field == F_REQ_BATCH) {
		return walk(d, d + n, count_repeated, &c->batch_ops);
	}
	if (field == F_REQ_MGET) {
		return walk(d, d + n, count_repeated, &c->mget_keys);
	}
	return 0;
}

int sl_request_precheck(const void *buf, size_t len, size_t *batch_ops, size_t *mget_keys)
{
	struct counts c = {0, 0};
	const uint8_t *p = buf;
	if (len > 0 && p == NULL) {
		return SL_EINVAL;
	}
	if (walk(p, p + len, top_field, &c) != 0) {
		return SL_EPROTO;
	}
	if (batch_ops != NULL) {
		*batch_ops = c.batch_ops;
	}
	if (mget_keys != NULL) {
		*mget_keys = c.mget_keys;
	}
	if (c.batch_ops > SL_MAX_BATCH_OPS || c.mget_keys > SL_MAX_MGET_KEYS) {
		return SL_ETOOBIG;
	}
	return SL_OK;
}
