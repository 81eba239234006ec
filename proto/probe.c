/*
 * probe.c — see probe.h.
 */
#include "probe.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "shiplog.h"
#include "sp.h"
#include "status.h"

/* A lookup run by a thread of its own, which the caller may stop waiting
 * for: whoever lets go of it last (refs) frees it, and the addresses if
 * the caller has not taken them.  The thread says it is done on efd. */
typedef struct lookup {
	pthread_mutex_t mu;
	int refs, done, gai, efd;
	char host[256], port[32];
	struct addrinfo hints, *ai;
} lookup;

/* Lookups given up on may still run (a resolver that does not answer holds
 * each for its own timeout, attempts x servers x seconds): at most this
 * many at once; past it a name is refused at once, until some end. */
#define LOOKUPS_MAX 16
static _Atomic int lookups_running;

static void lookup_release(lookup *l)
{
	pthread_mutex_lock(&l->mu);
	int last = --l->refs == 0;
	pthread_mutex_unlock(&l->mu);
	if (last) {
		if (l->ai != NULL) {
			freeaddrinfo(l->ai);
		}
		close(l->efd);
		pthread_mutex_destroy(&l->mu);
		free(l);
	}
}

static void *lookup_main(void *arg)
{
	lookup *l = arg;
	struct addrinfo *ai = NULL;
	int gai = getaddrinfo(l->host, l->port, &l->hints, &ai);
	atomic_fetch_sub(&lookups_running, 1);
	pthread_mutex_lock(&l->mu);
	l->gai = gai;
	l->ai = gai == 0 ? ai : NULL;
	l->done = 1;
	uint64_t one = 1;
	ssize_t w = write(l->efd, &one, sizeof(one));
	(void)w; /* an eventfd of 0 takes it */
	pthread_mutex_unlock(&l->mu);
	lookup_release(l);
	return NULL;
}

static long ms_since(const struct timespec *t0)
{
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (long)(t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

int sl_resolve(const char *host, const char *port, const struct addrinfo *hints, int timeout_ms,
               int stop_fd, struct addrinfo **out, char *why, size_t cap)
{
	*out = NULL;
	/* An address needs no lookup: answered at once, no thread. */
	struct addrinfo h = *hints;
	h.ai_flags |= AI_NUMERICHOST;
	int gai = getaddrinfo(host, port, &h, out);
	if (gai == 0 && *out != NULL) {
		return SL_OK;
	}
	*out = NULL;
	if (gai != EAI_NONAME) {
		snprintf(why, cap, "cannot resolve '%.200s': %s", host, gai_strerror(gai));
		return SL_EINVAL;
	}
	if (atomic_fetch_add(&lookups_running, 1) >= LOOKUPS_MAX) {
		atomic_fetch_sub(&lookups_running, 1);
		snprintf(why, cap,
		         "cannot resolve '%.200s': %d lookups already waiting on the resolver",
		         host, LOOKUPS_MAX);
		return SL_ETIMEDOUT;
	}
	lookup *l = calloc(1, sizeof(*l));
	int efd = l != NULL ? eventfd(0, EFD_CLOEXEC) : -1;
	if (efd < 0 || strlen(host) >= sizeof(l->host) || strlen(port) >= sizeof(l->port)) {
		snprintf(why, cap, "cannot resolve '%.200s': %s", host,
		         efd < 0 ? strerror(errno) : "name too long");
		if (efd >= 0) {
			close(efd);
		}
		free(l);
		atomic_fetch_sub(&lookups_running, 1);
		return SL_EINVAL;
	}
	pthread_mutex_init(&l->mu, NULL);
	l->efd = efd;
	snprintf(l->host, sizeof(l->host), "%s", host);
	snprintf(l->port, sizeof(l->port), "%s", port);
	l->hints = *hints;
	l->hints.ai_canonname = NULL;
	l->hints.ai_addr = NULL;
	l->hints.ai_next = NULL;
	l->refs = 2;
	pthread_t t;
	pthread_attr_t ta;
	pthread_attr_init(&ta);
	pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&ta, 256 * 1024); /* not the 8 MiB default */
	if (pthread_create(&t, &ta, lookup_main, l) != 0) {
		lookup_main(l); /* no thread: here, without the deadline */
	}
	pthread_attr_destroy(&ta);
	int ms = timeout_ms > 0 ? timeout_ms : 1;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int stopped = 0;
	for (;;) {
		long spent = ms_since(&t0);
		if (spent >= ms) {
			break;
		}
		struct pollfd pf[2] = {{.fd = efd, .events = POLLIN},
		                       {.fd = stop_fd, .events = POLLIN}};
		int n = poll(pf, stop_fd >= 0 ? 2 : 1, (int)(ms - spent));
		if (n > 0 && pf[0].revents) {
			break;
		}
		if (n > 0 && stop_fd >= 0 && pf[1].revents) {
			stopped = 1;
			break;
		}
		if (n < 0 && errno != EINTR) {
			break;
		}
	}
	pthread_mutex_lock(&l->mu);
	int rc = SL_OK;
	if (!l->done) {
		if (stopped) {
			snprintf(why, cap, "cannot resolve '%.200s': stopped waiting", host);
		} else {
			snprintf(why, cap, "cannot resolve '%.200s': no answer within %d ms", host,
			         ms);
		}
		rc = SL_ETIMEDOUT; /* the lookup frees itself when it ends */
	} else if (l->gai != 0 || l->ai == NULL) {
		snprintf(why, cap, "cannot resolve '%.200s': %s", host,
		         l->gai != 0 ? gai_strerror(l->gai) : "no address");
		rc = SL_EINVAL;
	} else {
		*out = l->ai;
		l->ai = NULL;
	}
	pthread_mutex_unlock(&l->mu);
	lookup_release(l);
	return rc;
}

/* On the connected fd: nng's SP handshake as protocol self, the peer's
 * expected as protocol peer, by the deadline (timeout_ms from t0).  SL_OK,
 * SL_ETIMEDOUT (it accepted and said nothing: a server that hangs),
 * SL_EPROTO (something else answered) or SL_ECONN (closed), with why. */
static int handshake(int fd, int self, int peer, int timeout_ms, const struct timespec *t0,
                     int stop_fd, char *why, size_t cap)
{
	uint8_t hello[8], got[8];
	sl_sp_hello(hello, self);
	if (send(fd, hello, sizeof(hello), MSG_NOSIGNAL) != (ssize_t)sizeof(hello)) {
		snprintf(why, cap, "%s", strerror(errno));
		return SL_ECONN;
	}
	size_t have = 0;
	while (have < sizeof(got)) {
		long left = timeout_ms - ms_since(t0);
		struct pollfd p[2] = {{.fd = fd, .events = POLLIN},
		                      {.fd = stop_fd, .events = POLLIN}};
		int n = left > 0 ? poll(p, stop_fd >= 0 ? 2 : 1, (int)left) : 0;
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n == 0) {
			snprintf(why, cap,
			         "it accepted the connection but did not answer within %d ms (a "
			         "server that hangs, or not a shiplog node)",
			         timeout_ms);
			return SL_ETIMEDOUT;
		}
		if (n < 0 || !p[0].revents) {
			snprintf(why, cap, "stopped waiting");
			return SL_ETIMEDOUT;
		}
		ssize_t k = recv(fd, got + have, sizeof(got) - have, 0);
		if (k < 0 && (errno == EINTR || errno == EAGAIN)) {
			continue;
		}
		if (k <= 0) {
			snprintf(why, cap, "%s",
			         k == 0 ? "the connection was closed before the handshake"
			                : strerror(errno));
			return SL_ECONN;
		}
		have += (size_t)k;
	}
	if (!sl_sp_hello_is(got, peer)) {
		snprintf(why, cap, "the peer is not a shiplog node (no nng %s handshake)",
		         peer == SL_SP_REP ? "REP" : "SP");
		return SL_EPROTO;
	}
	return SL_OK;
}

/* One address: SL_OK, SL_ECONN or SL_ETIMEDOUT, with why; with self != 0,
 * then the handshake (handshake()), all within timeout_ms. */
static int connect_one(const struct addrinfo *ai, int timeout_ms, int stop_fd, int self, int peer,
                       char *why, size_t cap)
{
	int rc = SL_ECONN;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(why, cap, "%s", strerror(errno));
		return rc;
	}
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
		rc = SL_OK;
	} else if (errno != EINPROGRESS) {
		snprintf(why, cap, "%s", strerror(errno));
	} else {
		struct pollfd p[2] = {{.fd = fd, .events = POLLOUT},
		                      {.fd = stop_fd, .events = POLLIN}};
		int n = poll(p, stop_fd >= 0 ? 2 : 1, timeout_ms);
		int err = 0;
		socklen_t el = sizeof(err);
		if (n > 0 && !(p[0].revents)) {
			rc = SL_ETIMEDOUT;
			snprintf(why, cap, "stopped waiting");
		} else if (n == 0) {
			rc = SL_ETIMEDOUT;
			snprintf(why, cap, "no answer within %d ms", timeout_ms);
		} else if (n > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 &&
		           err == 0) {
			rc = SL_OK;
		} else if (err != 0) {
			snprintf(why, cap, "%s", strerror(err));
		}
	}
	if (rc == SL_OK && self != 0) {
		rc = handshake(fd, self, peer, timeout_ms, &t0, stop_fd, why, cap);
	}
	/* Close with a reset: a clean close makes nng 1.5.2's listener cool
	 * down for 100 ms before its next accept (a failed negotiation), which
	 * delayed this very client's real connection; a reset is a "remote
	 * condition" it retries at once. */
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
	return rc;
}

static int probe(const char *url, int timeout_ms, int stop_fd, int self, int peer, char *why,
                 size_t cap)
{
	char h[256], port[32];
	int family;
	int sp = sl_tcp_split(url, &family, h, sizeof(h), port, sizeof(port));
	if (sp == -1) {
		return SL_OK; /* not tcp (nothing to probe), or let nng report it */
	}
	if (sp == -2 || strtoul(port, NULL, 10) == 0) {
		snprintf(why, cap, "port %s is not in 1..65535", port);
		return SL_EINVAL;
	}
	/* AI_ADDRCONFIG as nng's resolver has it (no ::1 for "localhost" on a
	 * host without IPv6); then every address, as one may answer where
	 * another does not.  The reason given is the first address's. */
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
	                         .ai_family = family,
	                         .ai_flags = AI_ADDRCONFIG},
	                *ai = NULL;
	int rrc = sl_resolve(h, port, &hints, timeout_ms, stop_fd, &ai, why, cap);
	if (rrc != SL_OK) {
		return rrc;
	}
	int rc = SL_ECONN;
	int tries = 0;
	for (struct addrinfo *x = ai; x != NULL && rc != SL_OK && tries < 4;
	     x = x->ai_next, tries++) {
		char w[200] = "";
		int xrc = connect_one(x, timeout_ms, stop_fd, self, peer, w, sizeof(w));
		if (xrc == SL_OK || tries == 0) {
			rc = xrc;
			snprintf(why, cap, "%s", w);
		}
	}
	freeaddrinfo(ai);
	return rc;
}

int sl_probe_tcp(const char *url, int timeout_ms, char *why, size_t cap)
{
	return probe(url, timeout_ms, -1, 0, 0, why, cap);
}

int sl_probe_tcp_stop(const char *url, int timeout_ms, int stop_fd, char *why, size_t cap)
{
	return probe(url, timeout_ms, stop_fd, 0, 0, why, cap);
}

int sl_probe_sp(const char *url, int timeout_ms, int self, int peer, char *why, size_t cap)
{
	return probe(url, timeout_ms, -1, self, peer, why, cap);
}

int sl_tcp_split(const char *url, int *family, char *host, size_t hcap, char *port, size_t pcap)
{
	const char *rest = NULL;
	*family = AF_UNSPEC;
	if (strncmp(url, "tcp://", 6) == 0) {
		rest = url + 6;
	} else if (strncmp(url, "tcp4://", 7) == 0) {
		rest = url + 7;
		*family = AF_INET;
	} else if (strncmp(url, "tcp6://", 7) == 0) {
		rest = url + 7;
		*family = AF_INET6;
	} else {
		return -1;
	}
	const char *colon = strrchr(rest, ':');
	if (colon == NULL || strchr(colon, '/') != NULL) {
		return -1;
	}
	size_t hl = (size_t)(colon - rest);
	const char *h = rest;
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') { /* [v6]:port */
		h++;
		hl -= 2;
	}
	if (hl >= hcap || strlen(colon + 1) >= pcap) {
		return -1;
	}
	memcpy(host, h, hl);
	host[hl] = '\0';
	snprintf(port, pcap, "%s", colon + 1);
	/* a decimal port up to 65535, or none (getaddrinfo would take 99999
	 * as 34463) */
	char *end = NULL;
	unsigned long pn = strtoul(port, &end, 10);
	if (port[0] == '+' || port[0] == '-' || port[0] == ' ' || *end != '\0' || pn > 65535) {
		return -2;
	}
	return 0;
}

int sl_tcp_listen(const char *url, int *out, char *err, size_t cap)
{
	*out = -1;
	char host[256], port[32];
	int family;
	int sp = sl_tcp_split(url, &family, host, sizeof(host), port, sizeof(port));
	if (sp != 0) {
		snprintf(err, cap,
		         sp == -2 ? "cannot listen on %s: Address invalid"
		                  : "cannot listen on '%s': not tcp://HOST:PORT",
		         url);
		return SL_EINVAL;
	}
	struct addrinfo hints = {0}, *ai = NULL;
	hints.ai_socktype = SOCK_STREAM;
	/* AI_ADDRCONFIG as nng's resolver: "localhost" on a host without
	 * IPv6 addresses must not bind ::1 where clients dial 127.0.0.1 */
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV | AI_ADDRCONFIG;
	hints.ai_family = family;
	const char *h = host[0] == '\0' || strcmp(host, "*") == 0 ? NULL : host;
	int gai = getaddrinfo(h, port[0] ? port : "0", &hints, &ai);
	if (gai != 0 || ai == NULL) {
		snprintf(err, cap, "cannot listen on %s: %s", url,
		         gai != 0 ? gai_strerror(gai) : "no address");
		return SL_EINVAL;
	}
	struct addrinfo *a = ai;
	while (a->ai_next != NULL && a->ai_family != AF_INET && a->ai_family != AF_INET6) {
		a = a->ai_next;
	}
	int fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	int rc = SL_OK;
	if (fd < 0) {
		snprintf(err, cap, "cannot open socket: %s", strerror(errno));
		rc = SL_EIO;
	} else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	           bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
		int e = errno;
		snprintf(err, cap, "cannot listen on %s: %s", url,
		         e == EADDRINUSE ? "Address in use" : strerror(e));
		rc = e == EADDRINUSE ? SL_EBUSY : e == EADDRNOTAVAIL ? SL_EINVAL : SL_EIO;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	*out = fd;
	return rc;
}
