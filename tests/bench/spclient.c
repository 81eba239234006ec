/*
 * spclient.c — a plain-TCP client of nng's SP REQ/REP framing (spclient.h).
 *
 * The wire (nng 1.5.2's TCP transport with the req0/rep0 protocols):
 * an 8-byte handshake each way, {0, 'S', 'P', 0, proto >> 8, proto, 0, 0};
 * then every message is a 64-bit big-endian length, followed by that many
 * bytes: for REQ/REP a 4-byte big-endian request id with its top bit set,
 * then the body.  A REP answers with the id of the request it answers.
 */
#define _GNU_SOURCE
#include "spclient.h"
#include "probe.h"

#include "shiplog.h"
#include "status.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int sp_parse_url(const char *url, char *host, size_t hcap, char *port, size_t pcap)
{
	int family;
	if (sl_tcp_split(url, &family, host, hcap, port, pcap) != 0 || port[0] == '\0') {
		return -1;
	}
	if (host[0] == '\0' || strcmp(host, "*") == 0) {
		snprintf(host, hcap, "127.0.0.1");
	}
	return 0;
}

int sp_dial(const char *host, const char *port, int timeout_ms, char *err, size_t errcap, int *code)
{
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_socktype = SOCK_STREAM;
	*code = SL_ECONN;
	int gai = getaddrinfo(host, port, &hints, &res);
	if (gai != 0) {
		snprintf(err, errcap, "%.100s: %s", host, gai_strerror(gai));
		return -1;
	}
	/* timeout_ms bounds the connect (SO_SNDTIMEO) and the handshake. */
	struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
	int fd = -1, e = 0;
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0 &&
		    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0 &&
		    connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
			break;
		}
		e = errno;
		if (fd >= 0) {
			close(fd);
		}
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		snprintf(err, errcap, "connect: %s", e == EINPROGRESS ? "timed out" : strerror(e));
		return -1;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	uint8_t hello[8], peer[8];
	sl_sp_hello(hello, SL_SP_REQ);
	errno = 0;
	if (send(fd, hello, sizeof hello, MSG_NOSIGNAL) != (ssize_t)sizeof hello ||
	    recv(fd, peer, sizeof peer, MSG_WAITALL) != (ssize_t)sizeof peer) {
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			snprintf(err, errcap, "no SP handshake within %d ms", timeout_ms);
		} else {
			snprintf(err, errcap, "SP handshake: %s",
			         errno ? strerror(errno) : "connection closed");
		}
		close(fd);
		return -1;
	}
	if (!sl_sp_hello_is(peer, SL_SP_REP)) {
		snprintf(err, errcap, "the peer is not an SP REP socket");
		*code = SL_EPROTO;
		close(fd);
		return -1;
	}
	return fd;
}

static int sp_spin;

void sp_set_spin(int on)
{
	sp_spin = on != 0;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Reads exactly n bytes. */
static int read_full(int fd, uint8_t *p, size_t n, char *err, size_t errcap)
{
	uint64_t spins = 0, deadline = 0;
	while (n > 0) {
		ssize_t k = recv(fd, p, n, sp_spin ? MSG_DONTWAIT : 0);
		if (k < 0 && sp_spin && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if ((++spins & 1023u) == 0) {
				uint64_t t = mono_ns();
				if (deadline == 0) {
					deadline = t + 10000000000ull;
				} else if (t > deadline) {
					snprintf(err, errcap, "receive: timed out");
					return SL_ECONN;
				}
			}
			continue;
		}
		if (k > 0) {
			p += k;
			n -= (size_t)k;
		} else if (k == 0) {
			snprintf(err, errcap, "connection closed by the server");
			return SL_ECONN;
		} else if (errno != EINTR) {
			snprintf(err, errcap, "receive: %s",
			         errno == EAGAIN || errno == EWOULDBLOCK ? "timed out"
			                                                 : strerror(errno));
			return SL_ECONN;
		}
	}
	return SL_OK;
}

int sp_call(int fd, uint32_t id, const void *req, size_t len, uint8_t **buf, size_t *cap,
            const uint8_t **body, size_t *blen, char *err, size_t errcap)
{
	id |= 0x80000000u;
	size_t want = SP_PREFIX + len;
	if (*cap < want) {
		uint8_t *nb = realloc(*buf, want);
		if (nb == NULL) {
			snprintf(err, errcap, "out of memory for a %zu-byte request", want);
			return SL_ENOMEM;
		}
		*buf = nb;
		*cap = want;
	}
	uint8_t *b = *buf;
	sl_sp_put_be64(b, 4 + (uint64_t)len);
	b[8] = (uint8_t)(id >> 24);
	b[9] = (uint8_t)(id >> 16);
	b[10] = (uint8_t)(id >> 8);
	b[11] = (uint8_t)id;
	memcpy(b + SP_PREFIX, req, len);
	for (size_t off = 0; off < want;) {
		ssize_t k = send(fd, b + off, want - off, MSG_NOSIGNAL);
		if (k > 0) {
			off += (size_t)k;
		} else if (k < 0 && errno != EINTR) {
			snprintf(err, errcap, "send: %s", strerror(errno));
			return SL_ECONN;
		}
	}
	/* A reply to an earlier request (one that timed out) is dropped, as
	 * nng's REQ socket drops it, and the next one read. */
	for (;;) {
		uint8_t hdr[SP_PREFIX];
		int rc = read_full(fd, hdr, sizeof hdr, err, errcap);
		if (rc != SL_OK) {
			return rc;
		}
		uint64_t n = sl_sp_get_be64(hdr);
		if (n < 4 || n > SP_MAX_MSG) {
			snprintf(err, errcap, "bad SP frame length %llu", (unsigned long long)n);
			return SL_EPROTO;
		}
		uint32_t got = (uint32_t)hdr[8] << 24 | (uint32_t)hdr[9] << 16 |
		               (uint32_t)hdr[10] << 8 | hdr[11];
		n -= 4;
		if (*cap < n) {
			uint8_t *nb = realloc(*buf, n ? n : 1);
			if (nb == NULL) {
				snprintf(err, errcap, "out of memory for a %llu-byte reply",
				         (unsigned long long)n);
				return SL_ENOMEM;
			}
			*buf = nb;
			*cap = n;
		}
		rc = read_full(fd, *buf, (size_t)n, err, errcap);
		if (rc != SL_OK) {
			return rc;
		}
		if (got == id) {
			*blen = (size_t)n;
			break;
		}
	}
	*body = *buf;
	return SL_OK;
}
