/*
 * sp.h — nng's SP framing over TCP as shiplog speaks it without nng
 * (docs/protocol.md, "On the wire"): the 8-byte handshake and the 64-bit
 * big-endian frame length.  Shared by the epoll front (node/server_ep.c),
 * the follower's plain connection (replication/follower.c) and the
 * benchmark's client (tests/bench/spclient.c).
 */
#ifndef SL_PROTO_SP_H
#define SL_PROTO_SP_H

#include <stdint.h>
#include <string.h>

#define SL_SP_REQ 0x30 /* nng's REQ protocol number */
#define SL_SP_REP 0x31 /* and REP's */

static inline void sl_sp_put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8) {
		p[i] = (uint8_t)v;
	}
}

static inline uint64_t sl_sp_get_be64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++) {
		v = v << 8 | p[i];
	}
	return v;
}

/* The handshake a peer of protocol proto (SL_SP_REQ, SL_SP_REP) sends. */
static inline void sl_sp_hello(uint8_t out[8], int proto)
{
	const uint8_t h[8] = {0, 'S', 'P', 0, (uint8_t)(proto >> 8), (uint8_t)proto, 0, 0};
	memcpy(out, h, 8);
}

/* Whether h is the handshake of a peer of protocol proto. */
static inline int sl_sp_hello_is(const uint8_t h[8], int proto)
{
	uint8_t want[8];
	sl_sp_hello(want, proto);
	return memcmp(h, want, 8) == 0;
}

#endif
