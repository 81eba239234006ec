/*
 * spclient.h — the benchmark's plain-TCP client of nng's SP request/reply
 * protocol (docs/protocol.md, "On the wire"): what redis-benchmark and the
 * Redis anchor's Python socket are to Redis, a client with no threads of its
 * own, so that a benchmark times the server and not the client library.
 * shiplog-bench --url --engine epoll connects through it; shiplog-bench repl
 * times its write -> visible probe with it (sp_call).  Products use
 * node/client.h.
 */
#ifndef SL_SPCLIENT_H
#define SL_SPCLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "sp.h" /* the framing's pieces: sl_sp_put_be64, sl_sp_hello ... */

#define SP_PREFIX  12                                  /* length + request id */
#define SP_MAX_MSG ((uint64_t)(1u << 30) + (4u << 20)) /* as the client library */

/* Splits tcp://HOST:PORT (HOST may be [v6], "*" means 127.0.0.1).  0, or -1
 * for any other URL. */
int sp_parse_url(const char *url, char *host, size_t hcap, char *port, size_t pcap);

/* Connects to host:port, blocking, with TCP_NODELAY, and exchanges the SP
 * handshake as a REQ socket; timeout_ms bounds the connect and the
 * handshake (and stays on the socket as its send/receive timeout).  The
 * descriptor, or -1 with the reason in err and *code set to SL_ECONN
 * (cannot connect, no handshake) or SL_EPROTO (the peer is not a REP
 * socket). */
int sp_dial(const char *host, const char *port, int timeout_ms, char *err, size_t errcap,
            int *code);

/* One round trip on a blocking descriptor from sp_dial: sends req (len
 * bytes, a packed shiplog.Request) under request id `id` and reads replies
 * into *buf (grown as needed, *cap its size) until the one with that id
 * (a late reply to an earlier request is dropped, as nng's REQ socket
 * drops it); body and blen point at its protobuf inside *buf.  The
 * socket's timeout bounds each receive.  SL_OK, or SL_ECONN (connection
 * lost, timed out), SL_EPROTO (a bad frame) or SL_ENOMEM, with err set. */
int sp_call(int fd, uint32_t id, const void *req, size_t len, uint8_t **buf, size_t *cap,
            const uint8_t **body, size_t *blen, char *err, size_t errcap);

/* With on != 0, every later receive of sp_call spins on its socket
 * (MSG_DONTWAIT) instead of blocking, for at most 10 s: a client whose
 * core never halts between its request and the reply (docs/performance.md,
 * "Idle round trips").  It burns its core meanwhile. */
void sp_set_spin(int on);

#endif
