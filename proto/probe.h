/*
 * probe.h — whether a tcp:// URL answers, and if not, why, within a
 * deadline.  nng's dial has no deadline of its own (against a cut link a
 * blocking dial waits minutes for the kernel to give up) and a non-blocking
 * one only retries in the background: the client library probes before it
 * dials (so that `shiplog` can say "Connection refused"), and a follower
 * probes its primary while the link is down (stats: repl_last_error).
 * And the listening side of the same URLs, for shiplogd's epoll front.
 */
#ifndef SL_PROTO_PROBE_H
#define SL_PROTO_PROBE_H

#include <stddef.h>

/* For tcp://HOST:PORT: a TCP connect within timeout_ms, closed at once
 * with a reset.  SL_OK (it connected, or not a tcp URL: nothing to probe),
 * SL_EINVAL (a port out of range, a name that does not resolve), SL_ECONN
 * (refused, unreachable) or SL_ETIMEDOUT (no answer, or the name's lookup
 * took longer than timeout_ms: sl_resolve); why (cap bytes) says which. */
int sl_probe_tcp(const char *url, int timeout_ms, char *why, size_t cap);
/* The same, ended early (SL_ETIMEDOUT, "stopped waiting") when stop_fd
 * becomes readable: a follower's probe of its primary, stopped with it. */
int sl_probe_tcp_stop(const char *url, int timeout_ms, int stop_fd, char *why, size_t cap);
/* sl_probe_tcp, and then on that connection nng's SP handshake as a peer of
 * protocol self (SL_SP_REQ, sp.h), expecting protocol peer back, all within
 * timeout_ms: nng's own dial waits 10 s for a handshake whatever the
 * caller's timeout, so a server that accepts and hangs (SIGSTOPped, its
 * loop stuck) is told by this one.  Adds SL_ETIMEDOUT (accepted, no
 * handshake) and SL_EPROTO (the peer is something else). */
int sl_probe_sp(const char *url, int timeout_ms, int self, int peer, char *why, size_t cap);

/* getaddrinfo(host, port, hints) within timeout_ms: a name whose lookup
 * has not answered by then (a resolver that does not answer takes 5 s a
 * try, two tries by default) is given up on (SL_ETIMEDOUT; the lookup ends
 * in a thread of its own and frees what it found), a name that does not
 * resolve is SL_EINVAL; why (cap bytes) says which.  stop_fd (-1: none)
 * readable ends the wait early (SL_ETIMEDOUT).  An address (no name) is
 * answered at once, without a thread.  SL_OK: *out for freeaddrinfo. */
struct addrinfo;
int sl_resolve(const char *host, const char *port, const struct addrinfo *hints, int timeout_ms,
               int stop_fd, struct addrinfo **out, char *why, size_t cap);

/* Splits tcp://HOST:PORT, tcp4:// or tcp6:// (HOST may be [v6], empty or
 * "*": every address) into host and port, with *family AF_UNSPEC, AF_INET
 * or AF_INET6.  0; -1 for any other URL (or parts too long); -2 for a
 * port that is not a decimal number up to 65535 (empty is 0). */
int sl_tcp_split(const char *url, int *family, char *host, size_t hcap, char *port, size_t pcap);

/* A listening TCP socket (non-blocking, SO_REUSEADDR, backlog 1024) bound
 * where url says, the first address the name resolves to, as nng binds
 * one: *fd, or SL_EBUSY (address in use), SL_EINVAL (not a tcp URL, a name
 * that does not resolve, an address not of this host) or SL_EIO, with err
 * (cap bytes) saying which. */
int sl_tcp_listen(const char *url, int *fd, char *err, size_t cap);

#endif
