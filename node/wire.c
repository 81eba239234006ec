/*
 * wire.c — a pre-decode walk over a Request's protobuf wire format.
 *
 * protobuf-c allocates while it decodes, before any of our code sees the
 * message: one struct per repeated element, and for every field occurrence
 * a 32-byte record of where it was, plus a 24-byte record and a copy of
 * the bytes for every field it does not know.  A 16 MB request of 2-byte
 * unknown fields took the server's peak memory from 5 to 270 MB (one
 * request; each worker may decode one at a time).  STYLE.md habit 7 says
 * sizes from outside are bounded before allocating, so the handler first
 * walks the bytes (no allocation), following the schema's descriptors into
 * every sub-message, and rejects the message when
 *  - a repeated field has more elements than its bound (batch operations
 *    and mget keys: SL_MAX_BATCH_OPS / SL_MAX_MGET_KEYS), or
 *  - one message holds more than MAX_SINGLE occurrences of its other
 *    fields (non-repeated ones, repeated only to be overwritten, and
 *    unknown ones): a few unknown fields from a newer client still pass;
 *  - the whole request holds more unknown fields than UNKNOWN_BASE plus
 *    UNKNOWN_PER_ELEMENT for each batch operation and mget key: the
 *    per-message bound alone let a batch of 65,536 operations, each with
 *    125 unknown fields in 17 MB, cost 458 MB (kept until the reply).  A
 *    newer client's field or two in every operation still passes.
 * What protobuf-c then allocates is bounded by those counts and by the
 * message's size, which nng's receive limit bounds.
 */
#include <protobuf-c/protobuf-c.h>

#include "handler.h"

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

#define MAX_SINGLE          64 /* other field occurrences in one message */
#define UNKNOWN_BASE        64 /* unknown fields in a whole request, plus */
#define UNKNOWN_PER_ELEMENT 2  /* this many per batch operation and mget key */
#define MAX_DEPTH           16 /* the schema nests 3 deep */

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

/* Reads the field at *p (before end) and moves *p past it: its number, its
 * wire type, and its value (a varint's) or length (a WT_LEN field's, whose
 * bytes start at *data).  0, or -1 when malformed or of a wire type our
 * schema has none of (groups, reserved). */
static int next_field(const uint8_t **p, const uint8_t *end, uint64_t *field, unsigned *wt,
                      uint64_t *v, const uint8_t **data)
{
	uint64_t key;
	if (read_varint(p, end, &key) != 0) {
		return -1;
	}
	*field = key >> 3;
	*wt = (unsigned)(key & 7);
	*v = 0;
	switch (*wt) {
	case WT_VARINT:
		return read_varint(p, end, v);
	case WT_I64:
	case WT_I32: {
		size_t k = *wt == WT_I64 ? 8 : 4;
		if ((size_t)(end - *p) < k) {
			return -1;
		}
		*p += k;
		return 0;
	}
	case WT_LEN:
		if (read_varint(p, end, v) != 0 || *v > (uint64_t)(end - *p)) {
			return -1;
		}
		*data = *p;
		*p += *v;
		return 0;
	default:
		return -1;
	}
}

struct counts {
	size_t batch_ops, mget_keys, unknown;
	int too_many; /* a message had more than MAX_SINGLE other fields */
	int has_id;
	uint64_t id; /* Request.id, at the top level */
};

/* Walks the message of type d in [p, end), validating every field's
 * framing and following message-typed fields.  0, or -1 when malformed or
 * over a bound (c->too_many says which). */
static int walk(const ProtobufCMessageDescriptor *d, const uint8_t *p, const uint8_t *end,
                struct counts *c, int depth)
{
	if (depth > MAX_DEPTH) {
		return -1;
	}
	size_t single = 0;
	while (p < end) {
		uint64_t field, v;
		unsigned wt;
		const uint8_t *data = NULL;
		if (next_field(&p, end, &field, &wt, &v, &data) != 0) {
			return -1;
		}
		if (field == 0 || field > 536870911u) {
			return -1;
		}
		const ProtobufCFieldDescriptor *f =
		    protobuf_c_message_descriptor_get_field(d, (unsigned)field);
		if (f != NULL && f->label == PROTOBUF_C_LABEL_REPEATED) {
			if (d == &shiplog__batch__descriptor) {
				c->batch_ops++;
			} else if (d == &shiplog__mget__descriptor) {
				c->mget_keys++;
			} else {
				single++; /* no other repeated field in a Request */
			}
		} else {
			single++;
			c->unknown += f == NULL;
		}
		if (single > MAX_SINGLE) {
			c->too_many = 1;
			return -1;
		}
		if (wt == WT_VARINT && depth == 0 && field == 1) { /* Request.id */
			c->id = v;
			c->has_id = 1;
		}
		if (wt == WT_LEN && f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE &&
		    walk(f->descriptor, data, data + v, c, depth + 1) != 0) {
			return -1;
		}
	}
	return 0;
}

int sl_request_precheck(const void *buf, size_t len, sl_request_shape *shape)
{
	struct counts c = {0};
	const uint8_t *p = buf;
	if (shape != NULL) {
		*shape = (sl_request_shape){0};
	}
	if (len > 0 && p == NULL) {
		return SL_EINVAL;
	}
	int rc = walk(&shiplog__request__descriptor, p, p + len, &c, 0);
	if (shape != NULL) {
		shape->batch_ops = c.batch_ops;
		shape->mget_keys = c.mget_keys;
		shape->has_id = c.has_id;
		shape->id = c.id;
	}
	if (rc != 0) {
		return SL_EPROTO; /* malformed, or too many fields (c.too_many) */
	}
	if (c.unknown > UNKNOWN_BASE + UNKNOWN_PER_ELEMENT * (c.batch_ops + c.mget_keys)) {
		return SL_EPROTO; /* too many unknown fields */
	}
	if (c.batch_ops > SL_MAX_BATCH_OPS || c.mget_keys > SL_MAX_MGET_KEYS) {
		return SL_ETOOBIG;
	}
	return SL_OK;
}

int sl_request_key(const void *buf, size_t len, int *op, const uint8_t **key, size_t *klen)
{
	const uint8_t *p = buf, *end = p + len;
	while (p < end) {
		uint64_t field, v;
		unsigned wt;
		const uint8_t *data = NULL;
		if (next_field(&p, end, &field, &wt, &v, &data) != 0) {
			return 0;
		}
		if (wt != WT_LEN || field < SHIPLOG__REQUEST__OP_GET ||
		    field > SHIPLOG__REQUEST__OP_DEL) {
			continue;
		}
		/* a Get, Put or Del: its key is field 1 (bytes) in all three */
		const uint8_t *q = data, *qe = data + v;
		while (q < qe) {
			uint64_t kf, kv;
			unsigned kwt;
			const uint8_t *kd = NULL;
			if (next_field(&q, qe, &kf, &kwt, &kv, &kd) != 0) {
				return 0;
			}
			if (kf == 1 && kwt == WT_LEN) {
				*op = (int)field;
				*key = kd;
				*klen = (size_t)kv;
				return 1;
			}
		}
		return 0;
	}
	return 0;
}
