/*
 * follower.c — the follower side: one thread fetches the primary's log,
 * applies it record by record, reports how far it is durable, and falls
 * back to a full resync when the primary says its position is gone.
 *
 * Invariants:
 *  1. Only this thread writes the follower's store (sl_apply_raw_many), and only
 *     this thread swaps it; so it may use *dbp without the read lock, and
 *     takes the write lock only for the swap.  The one exception: while
 *     this thread waits for a streaming reply it lets pend_cb apply it, on
 *     nng's thread (inline_apply); this thread is blocked in call_finish
 *     all that time, so there is still one writer at a time.
 *  2. Nothing from the network reaches the store unchecked: every record's
 *     header is bounded against the reply and the limits before it is
 *     applied, sl_apply_raw_many verifies its checksum, and seqs must rise.  A
 *     reply with one bad record is refused from that record on (the ones
 *     before it were whole and verified), the connection is dropped and the
 *     loop reconnects after a backoff.
 *  3. A full resync loads into DIR.resync, a sibling directory that is
 *     removed at start, and becomes the store only through one
 *     renameat2(RENAME_EXCHANGE) of two complete directories followed by an
 *     fsync of the parent: a crash leaves either the old store or the new
 *     one as DIR, never a mix.  DIR/REPL moves with the data.  A DIR that
 *     is a mount point (DIR.resync would be on another filesystem) loads
 *     into DIR/.resync instead and its files are moved in by sl_move_in,
 *     whose durable marks let sl_open finish a move a crash interrupted:
 *     again the old store or the new one, never a mix.
 *  4. Reads go on from the old store while a resync loads; they pause only
 *     for the swap (close, exchange, reopen; for a mount point: close both,
 *     move in, open).
 *  5. A store that failed (an fsync error) or holds damaged records (its
 *     corrupt_records > 0: a segment cut short, a bad record) is replaced
 *     with a full resync: the primary holds what it lost.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "format.h"
#include "probe.h"
#include "record.h"
#include "repl_int.h"
#include "slice.h"
#include "sp.h"

#define FETCH_WAIT_MS 1000
#define FETCH_MAX     (8u << 20)
/* --repl-sched fifo: real-time only after replies this small (slice.h); a
 * follower applying replies of megabytes back to back is catching up */
#define FIFO_MAX_REPLY (256u << 10)
/* The largest record any node's engine stores: what a follower takes from
 * its primary, whatever its own --max-key-bytes / --max-value-bytes (those
 * bound what clients write; a primary may hold records written under
 * larger ones, before a restart, or set larger than this node's). */
#define REPL_MAX_RECORD ((size_t)SL_REC_HDR_SIZE + SL_MAX_KEY + SL_MAX_VALUE)
#define PROBE_MS        500 /* sl_probe_tcp of a primary not connected */
#define BACKOFF_MIN_MS  50
#define BACKOFF_MAX_MS  2000
/* background compaction waits this long after each full (catch-up) reply */
#define CATCHUP_COMPACT_DEFER_MS 1000
/* A reply with at least this many records means the primary is busy:
 * with --repl-batch-us the follower then pauses before its next fetch. */
#define BATCH_MIN_RECORDS 16
/* between full resyncs this node's disk could not hold */
#define RESYNC_BACKOFF_MIN_MS 1000
#define RESYNC_BACKOFF_MAX_MS 60000
#define SNAP_TIMEOUT          30000

int repl_split_records(const uint8_t *p, size_t len, size_t max_rec,
                       int (*fn)(void *arg, const uint8_t *rec, size_t n, uint64_t seq), void *arg)
{
	size_t off = 0;
	while (off < len) {
		if (len - off < SL_REC_HDR_SIZE) {
			return SL_ECORRUPT;
		}
		const uint8_t *h = p + off;
		size_t kl = sl_get16(h + 6), vl = sl_get32(h + 8);
		uint64_t seq = sl_get64(h + 12);
		size_t size = SL_REC_HDR_SIZE + kl + vl;
		if (kl == 0 || (h[4] != SL_REC_PUT && h[4] != SL_REC_DEL) || size > max_rec ||
		    size > len - off || seq == 0) {
			return SL_ECORRUPT;
		}
		int rc = fn(arg, h, size, seq);
		if (rc != SL_OK) {
			return rc;
		}
		off += size;
	}
	return SL_OK;
}

/* Sleeps up to ms unless asked to stop.  mu NOT held.  1 when stopping. */
static int pause_ms(sl_repl *r, uint64_t ms)
{
	struct timespec ts;
	sl_mono_after(&ts, ms);
	pthread_mutex_lock(&r->mu);
	while (!r->fetch_stop) {
		if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) != 0) {
			break;
		}
	}
	int stop = r->fetch_stop;
	pthread_mutex_unlock(&r->mu);
	return stop;
}

/* Whether repl_follower_stop has asked the fetch loop to end. */
static int fetch_stopping(sl_repl *r)
{
	pthread_mutex_lock(&r->mu);
	int stop = r->fetch_stop;
	pthread_mutex_unlock(&r->mu);
	return stop;
}

/* ---- the connection ----------------------------------------------------- */

static void *closer_main(void *arg)
{
	nng_socket *s = arg;
	nng_close(*s);
	free(s);
	return NULL;
}

/* Closes the loop's socket, if open, without waiting for it: nng 1.5.2's
 * nng_close can hang for good in its reaper (nanomsg/nng#1543, #1813; seen
 * about once in 20-60 closes of a socket with traffic on it), so it runs
 * on a detached thread and neither this thread nor r->mu (stats, the
 * applied-seq waiters) waits for it.  Its requests are aborted at once:
 * the hang is in the pipes' teardown after.  A hung close parks that
 * thread and nng's one reaper thread with it, so later closes of other
 * sockets hang too: when the node is exiting (r->fexit) the socket is not
 * closed at all, and the loop's wait is cancelled instead
 * (repl_follower_stop).  Re-pointing and promotion still close it here. */
static void plain_close(sl_repl *r);

static void drop_conn(sl_repl *r)
{
	if (r->fplain) {
		plain_close(r);
		return;
	}
	pthread_mutex_lock(&r->mu);
	int open = r->fsock_open;
	nng_socket s = r->fsock;
	int exiting = r->fexit;
	r->fsock_open = 0;
	pthread_mutex_unlock(&r->mu);
	if (!open || exiting) {
		/* The process is about to exit, which closes the connection: a
		 * close now, even on another thread, could hang nng's one reaper
		 * thread (above), and with it the close of every other socket
		 * of this node (seen in 3 of 30 stops of a streaming follower). */
		return;
	}
	nng_socket *arg = malloc(sizeof(*arg));
	pthread_attr_t at;
	pthread_t t;
	int started = 0;
	if (arg != NULL && pthread_attr_init(&at) == 0) {
		*arg = s;
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		pthread_attr_setstacksize(&at, 64 * 1024);
		started = pthread_create(&t, &at, closer_main, arg) == 0;
		pthread_attr_destroy(&at);
	}
	if (!started) {
		free(arg);
		nng_close(s);
	}
}

static int ensure_conn(sl_repl *r, const char *url)
{
	if (r->fplain) {
		/* the connection opens with the next request (plain_call_start) */
		if (strcmp(r->furl, url) != 0) {
			plain_close(r);
			snprintf(r->furl, sizeof(r->furl), "%s", url);
		}
		return fetch_stopping(r) ? SL_EIO : SL_OK;
	}
	pthread_mutex_lock(&r->mu);
	if (r->fsock_open || r->fetch_stop) {
		int stop = r->fetch_stop;
		pthread_mutex_unlock(&r->mu);
		return stop ? SL_EIO : SL_OK;
	}
	int rv = nng_req0_open(&r->fsock);
	if (rv == 0) {
		r->fsock_open = 1;
		/* Fetches are idempotent, but a resend could overlap a long
		 * poll; the loop retries itself. */
		nng_socket_set_ms(r->fsock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
		nng_socket_set_size(r->fsock, NNG_OPT_RECVMAXSZ, REPL_MAX_RECORD + (1u << 20));
		nng_socket_set_ms(r->fsock, NNG_OPT_RECONNMINT, BACKOFF_MIN_MS);
		nng_socket_set_ms(r->fsock, NNG_OPT_RECONNMAXT, BACKOFF_MAX_MS);
		rv = nng_dial(r->fsock, url, NULL, NNG_FLAG_NONBLOCK);
		if (rv != 0) {
			nng_close(r->fsock);
			r->fsock_open = 0;
		} else {
			r->fsock_gen++;
		}
	}
	pthread_mutex_unlock(&r->mu);
	return rv == 0 ? SL_OK : SL_EIO;
}

/* A request in flight on the loop's socket: sent, its reply not yet read.
 * One at a time; it lets the loop apply one reply while the primary reads
 * and sends the next (catch-up and full resync overlap network and disk). */
typedef struct pending {
	sl_repl *r;
	nng_aio *aio;  /* the reply: pend_cb */
	nng_aio *saio; /* the request: no callback (see call_start) */
	nng_ctx ctx;
	uint64_t gen; /* the socket generation ctx belongs to */
	int ctx_open;
	int live;
	nng_pipe pipe; /* the connection the last reply came on */
	/* Set by pend_cb when the reply arrives (on nng's thread), read by
	 * call_finish after nng_aio_wait, which waits for pend_cb too. */
	int rv;
	Shiplog__ReplReply *rep;
	int verified; /* a fetch reply whose every record's checksum matched */
	/* Streaming (inline_apply): set by call_finish while the loop waits
	 * and may leave a reply's records to pend_cb; then whether pend_cb
	 * applied the reply it hands over, and with what result. */
	_Atomic int inline_ok;
	struct apply_ctx *ia;   /* pend_cb's own, reused */
	int inline_done;        /* 1: applied, 2: applied and counted */
	unsigned inline_rounds; /* replies pend_cb applied and fetched on from */
	int inline_rc;
	/* the plain connection (r->fplain): the request's id, its deadline,
	 * and the connection its reply came on (r->ffd_gen) */
	uint32_t id;
	uint64_t deadline_ms;
	uint64_t conn_gen;
	/* Set by the caller before a request sent ahead (catch-up, snapshot
	 * chunks): its reply is read by r's reader thread while this thread
	 * applies the previous one (plain_reader_main). */
	int early;
	int async; /* its reply is the reader's to read (under fr_mu) */
	int adone; /* the reader has read it: rv, rep (under fr_mu) */
} pending;

/* Which connection a reply came on, to drop that one later (drop_pipe). */
typedef struct pend_conn {
	nng_pipe pipe;
	uint64_t gen;
} pend_conn;

static pend_conn pend_conn_of(const pending *p)
{
	pend_conn c = {p->pipe, p->conn_gen};
	return c;
}

static void pend_conn_set(pending *p, pend_conn c)
{
	p->pipe = c.pipe;
	p->conn_gen = c.gen;
}

struct apply_ctx;
static int inline_apply(pending *p);
static void apply_free(struct apply_ctx *a);

static int verify_one(void *arg, const uint8_t *rec, size_t n, uint64_t seq)
{
	(void)arg;
	(void)seq;
	return sl_rec_verify(rec, n) ? SL_OK : SL_ECORRUPT;
}

/* p's reply aio completed.  A reply is decoded here, on nng's thread, and a
 * fetch reply's records checked (CRC32C) here too: while the loop is still
 * applying the previous reply (catch-up sends the next fetch first), so
 * the two overlap on the two cores, and the loop applies with SL_VERIFIED.
 * perf showed the decode's copy and the checksum at about a third of the
 * applying thread's time during a catch-up. */
static void pend_cb(void *arg)
{
	pending *p = arg;
	p->rep = NULL;
	p->verified = 0;
	p->inline_done = 0;
	p->rv = nng_aio_result(p->aio);
	if (p->rv != 0) {
		return;
	}
	nng_msg *m = nng_aio_get_msg(p->aio);
	nng_aio_set_msg(p->aio, NULL);
	p->pipe = nng_msg_get_pipe(m);
	p->rep = shiplog__repl_reply__unpack(NULL, nng_msg_len(m), nng_msg_body(m));
	nng_msg_free(m);
	const Shiplog__ReplReply *rep = p->rep;
	if (rep != NULL && rep->op_case == SHIPLOG__REPL_REPLY__OP_FETCH && rep->fetch != NULL &&
	    rep->fetch->status == SL_OK && rep->fetch->records.len > 0) {
		p->verified = repl_split_records(rep->fetch->records.data, rep->fetch->records.len,
		                                 REPL_MAX_RECORD, verify_one, NULL) == SL_OK;
	}
	if (p->verified && atomic_load(&p->inline_ok) && inline_apply(p)) {
		return; /* applied, and the next fetch is out: the loop sleeps on */
	}
}

/* ---- the plain connection ------------------------------------------------
 *
 * To a tcp:// primary (unless --transport nng) the loop talks over a
 * plain TCP socket of its own, speaking nng's SP REQ framing itself
 * (docs/protocol.md "On the wire"), as the primary's epoll front does on
 * the other end.  This thread sends each request and reads its reply
 * itself: one wakeup per reply, where nng's REQ socket took its poller
 * thread and a task-queue thread (perf, seventeenth session: 78% of a
 * streaming follower's CPU was in nng's threads, mostly the scheduler).
 * Replies are decoded and checked here, so pend_cb and inline_apply play
 * no part.  The connection is opened by the first request after it is
 * lost, and a request's reply is matched by its id: a late reply (of a
 * request abandoned by pend_abort or a timeout) is skipped.  A stop
 * (repl_follower_stop) interrupts any wait through r->fstop_efd. */

/* A reply whose bytes keep coming is waited for this long after the last
 * of them (plain_read_reply). */
#define REPLY_PROGRESS_MS 5000u

/* Waits until fd is ready for ev or deadline_ms passes: 1 ready, 0 timed
 * out, -1 asked to stop. */
static int plain_wait(sl_repl *r, int fd, short ev, uint64_t deadline_ms)
{
	for (;;) {
		uint64_t now = repl_now_ms();
		if (now >= deadline_ms) {
			return 0;
		}
		uint64_t left = deadline_ms - now;
		struct pollfd pf[2] = {{.fd = fd, .events = ev},
		                       {.fd = r->fstop_efd, .events = POLLIN}};
		int n = poll(pf, 2, left > 60000 ? 60000 : (int)left);
		if (n < 0 && errno != EINTR) {
			return -1;
		}
		if (n > 0 && pf[1].revents) {
			return -1;
		}
		if (n > 0 && pf[0].revents) {
			return 1;
		}
	}
}

/* The plain connection's read buffer goes back (its bytes are read). */
static void fbuf_release(sl_repl *r)
{
	free(r->fbuf);
	r->fbuf = NULL;
	r->fcap = r->flen = 0;
	atomic_store_explicit(&r->fbuf_bytes, 0, memory_order_relaxed);
}

static void plain_close(sl_repl *r)
{
	pthread_mutex_lock(&r->mu);
	int fd = r->ffd;
	r->ffd = -1;
	pthread_mutex_unlock(&r->mu);
	if (fd >= 0) {
		close(fd);
	}
	if (r->fcap > (16u << 20)) {
		fbuf_release(r); /* a catch-up's: not kept while the link is down */
	} else {
		r->flen = 0;
	}
}

/* Writes len bytes at b to fd: SL_OK, or SL_EIO (lost, stopping) or
 * SL_ETIMEDOUT. */
static int plain_write(sl_repl *r, int fd, const uint8_t *b, size_t len, uint64_t deadline)
{
	while (len > 0) {
		ssize_t w = send(fd, b, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w > 0) {
			b += w;
			len -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR) {
			continue;
		}
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int rv = plain_wait(r, fd, POLLOUT, deadline);
			if (rv <= 0) {
				return rv == 0 ? SL_ETIMEDOUT : SL_EIO;
			}
			continue;
		}
		return SL_EIO;
	}
	return SL_OK;
}

/* Connects to r->furl and exchanges the SP handshake as a REQ socket.
 * SL_OK (r->ffd set), or SL_EIO. */
static int plain_connect(sl_repl *r, uint64_t deadline)
{
	char host[256], port[32];
	int family;
	if (sl_tcp_split(r->furl, &family, host, sizeof(host), port, sizeof(port)) != 0) {
		return SL_EIO;
	}
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
	                         .ai_family = family,
	                         .ai_flags = AI_ADDRCONFIG},
	                *ai = NULL;
	/* The name's lookup within the deadline too, and ended by a stop: a
	 * resolver that does not answer would hold this thread (and a stop)
	 * for 10 s. */
	uint64_t now = repl_now_ms();
	char why[160];
	if (now >= deadline ||
	    sl_resolve(host[0] && strcmp(host, "*") != 0 ? host : "127.0.0.1", port, &hints,
	               (int)(deadline - now), r->fstop_efd, &ai, why, sizeof(why)) != SL_OK) {
		return SL_EIO;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int ok = fd >= 0;
	if (ok && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
		int err = 0;
		socklen_t el = sizeof(err);
		ok = errno == EINPROGRESS && plain_wait(r, fd, POLLOUT, deadline) == 1 &&
		     getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0;
	}
	freeaddrinfo(ai);
	int one = 1;
	uint8_t hello[8], peer[8];
	sl_sp_hello(hello, SL_SP_REQ);
	size_t got = 0;
	ok = ok && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0 &&
	     plain_write(r, fd, hello, sizeof(hello), deadline) == SL_OK;
	while (ok && got < sizeof(peer)) {
		ssize_t k = recv(fd, peer + got, sizeof(peer) - got, 0);
		if (k > 0) {
			got += (size_t)k;
		} else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
			ok = plain_wait(r, fd, POLLIN, deadline) == 1;
		} else {
			ok = 0;
		}
	}
	if (ok && !sl_sp_hello_is(peer, SL_SP_REP)) {
		repl_log(r, 2, "%s is not a replication listener (not an SP REP socket)", r->furl);
		ok = 0;
	}
	if (!ok) {
		if (fd >= 0) {
			close(fd);
		}
		return SL_EIO;
	}
	pthread_mutex_lock(&r->mu);
	r->ffd = fd;
	r->ffd_gen++;
	pthread_mutex_unlock(&r->mu);
	r->flen = 0;
	return SL_OK;
}

static int plain_read_reply(pending *p, Shiplog__ReplReply **out);

/* The reader thread: reads the reply of a request sent ahead (p->early)
 * while the fetch thread applies the one before, as nng's thread did
 * (decoding a catch-up reply copies its megabytes once more): the two
 * overlap on the two cores.  One job at a time (r->fr_job); the fetch
 * thread touches the connection again only once it is done. */
static void *plain_reader_main(void *arg)
{
	sl_slice_apply_repl(); /* --io-slice-us, --repl-sched (slice.h) */
	sl_repl *r = arg;
	pthread_mutex_lock(&r->fr_mu);
	for (;;) {
		while (r->fr_job == NULL && !r->fr_quit) {
			pthread_cond_wait(&r->fr_cv, &r->fr_mu);
		}
		pending *p = r->fr_job;
		if (p == NULL) {
			break;
		}
		pthread_mutex_unlock(&r->fr_mu);
		Shiplog__ReplReply *rep = NULL;
		int rc = plain_read_reply(p, &rep);
		pthread_mutex_lock(&r->fr_mu);
		p->rep = rep;
		p->rv = rc;
		p->adone = 1;
		r->fr_job = NULL;
		pthread_cond_broadcast(&r->fr_cv);
	}
	pthread_mutex_unlock(&r->fr_mu);
	return NULL;
}

/* Hands p's reply to the reader thread (started on first use): 0, or -1
 * when it cannot start (the reply is then read by call_finish). */
static int plain_read_early(sl_repl *r, pending *p)
{
	if (!r->fr_started) {
		pthread_mutex_init(&r->fr_mu, NULL);
		pthread_cond_init(&r->fr_cv, NULL);
		r->fr_quit = 0;
		if (pthread_create(&r->fr_thread, NULL, plain_reader_main, r) != 0) {
			pthread_mutex_destroy(&r->fr_mu);
			pthread_cond_destroy(&r->fr_cv);
			return -1;
		}
		r->fr_started = 1;
	}
	pthread_mutex_lock(&r->fr_mu);
	p->async = 1;
	p->adone = 0;
	r->fr_job = p;
	pthread_cond_signal(&r->fr_cv);
	pthread_mutex_unlock(&r->fr_mu);
	return 0;
}

/* The fetch loop ends: its reader thread with it. */
static void plain_reader_stop(sl_repl *r)
{
	if (!r->fr_started) {
		return;
	}
	pthread_mutex_lock(&r->fr_mu);
	r->fr_quit = 1;
	pthread_cond_broadcast(&r->fr_cv);
	pthread_mutex_unlock(&r->fr_mu);
	pthread_join(r->fr_thread, NULL);
	pthread_mutex_destroy(&r->fr_mu);
	pthread_cond_destroy(&r->fr_cv);
	r->fr_started = 0;
}

static int plain_call_finish(pending *p, Shiplog__ReplReply **out)
{
	*out = NULL;
	if (!p->live) {
		return SL_EIO;
	}
	p->live = 0;
	p->inline_done = 0;
	p->verified = 0;
	if (!p->async) {
		return plain_read_reply(p, out);
	}
	sl_repl *r = p->r;
	pthread_mutex_lock(&r->fr_mu);
	while (!p->adone) {
		pthread_cond_wait(&r->fr_cv, &r->fr_mu);
	}
	p->async = 0;
	pthread_mutex_unlock(&r->fr_mu);
	*out = p->rep;
	p->rep = NULL;
	return p->rv;
}

static int plain_call_start(sl_repl *r, const Shiplog__ReplRequest *q, int timeout_ms, pending *p)
{
	int early = p->early;
	p->early = 0;
	p->live = 0;
	p->r = r;
	p->deadline_ms = repl_now_ms() + (uint64_t)timeout_ms;
	if (r->ffd < 0) {
		uint64_t cd = repl_now_ms() + PROBE_MS * 2;
		int rc = plain_connect(r, cd < p->deadline_ms ? cd : p->deadline_ms);
		if (rc != SL_OK) {
			return rc;
		}
	}
	size_t sz = shiplog__repl_request__get_packed_size(q);
	uint8_t stackbuf[512];
	uint8_t *b = 12 + sz <= sizeof(stackbuf) ? stackbuf : malloc(12 + sz);
	if (b == NULL) {
		return SL_ENOMEM;
	}
	uint32_t id = (++r->fnext_id & 0x7fffffffu) | 0x80000000u;
	sl_sp_put_be64(b, 4 + (uint64_t)sz);
	b[8] = (uint8_t)(id >> 24);
	b[9] = (uint8_t)(id >> 16);
	b[10] = (uint8_t)(id >> 8);
	b[11] = (uint8_t)id;
	shiplog__repl_request__pack(q, b + 12);
	int rc = plain_write(r, r->ffd, b, 12 + sz, p->deadline_ms);
	if (b != stackbuf) {
		free(b);
	}
	if (rc != SL_OK) {
		plain_close(r); /* a request half sent: the connection is unusable */
		return rc == SL_ETIMEDOUT ? SL_ETIMEDOUT : SL_EIO;
	}
	p->id = id;
	p->live = 1;
	if (early) {
		plain_read_early(r, p);
	}
	return SL_OK;
}

/* Reads p's reply (plain_call_finish, or the reader thread). */
static int plain_read_reply(pending *p, Shiplog__ReplReply **out)
{
	sl_repl *r = p->r;
	*out = NULL;
	const uint64_t limit = REPL_MAX_RECORD + (1u << 20) + 4u * 8;
	for (;;) {
		if (r->ffd < 0) {
			return SL_EIO;
		}
		size_t need = 8;
		if (r->flen >= 8) {
			uint64_t flen = sl_sp_get_be64(r->fbuf);
			if (flen < 4 || flen > limit) {
				repl_log(r, 2,
				         "a %llu-byte reply frame from %s; connection dropped",
				         (unsigned long long)flen, r->furl);
				plain_close(r);
				return SL_EPROTO;
			}
			need = 8 + (size_t)flen;
			if (r->flen >= need) {
				const uint8_t *h = r->fbuf + 8;
				uint32_t id = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 |
				              (uint32_t)h[2] << 8 | h[3];
				Shiplog__ReplReply *rep = NULL;
				if (id == p->id) {
					rep = shiplog__repl_reply__unpack(NULL, need - 12, h + 4);
				}
				memmove(r->fbuf, r->fbuf + need, r->flen - need);
				r->flen -= need;
				if (id != p->id) {
					continue; /* a late reply to an abandoned request */
				}
				if (rep == NULL) {
					return SL_EPROTO;
				}
				p->conn_gen = r->ffd_gen;
				/* not verified here: the apply checks each record's
				 * checksum as it stores it, while it is in cache */
				*out = rep;
				/* A big buffer goes back once replies are small again
				 * (caught up), not after each big one: a catch-up's
				 * replies are up to the primary's largest record (17
				 * MB by default), so the buffer grew to 32 MiB, was
				 * freed after every reply and mapped afresh for the
				 * next: a page fault for every 4 KiB received (127 k
				 * in a 500 MB catch-up, 0.3 s of the reader's CPU). */
				if (r->fcap > (16u << 20) && r->flen == 0 && need < r->fcap / 8) {
					fbuf_release(r); /* its room goes back */
				}
				return SL_OK;
			}
		}
		if (r->fcap < need || r->fcap - r->flen < 4096) {
			size_t ncap = r->fcap ? r->fcap : 65536;
			while (ncap < need || ncap - r->flen < 4096) {
				ncap *= 2;
			}
			uint8_t *nb = realloc(r->fbuf, ncap);
			if (nb == NULL) {
				plain_close(r);
				return SL_ENOMEM;
			}
			r->fbuf = nb;
			r->fcap = ncap;
			atomic_store_explicit(&r->fbuf_bytes, ncap, memory_order_relaxed);
		}
		ssize_t k = recv(r->ffd, r->fbuf + r->flen, r->fcap - r->flen, MSG_DONTWAIT);
		if (k > 0) {
			r->flen += (size_t)k;
			/* Bytes arriving: the reply is on its way, however long a
			 * big one takes.  The deadline was fixed at the send, and
			 * a reply over 6 s on the wire (a 16 MiB value at 20
			 * Mbit/s) timed out at every try, for ever. */
			uint64_t t = repl_now_ms() + REPLY_PROGRESS_MS;
			if (p->deadline_ms < t) {
				p->deadline_ms = t;
			}
			continue;
		}
		if (k < 0 && errno == EINTR) {
			continue;
		}
		if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int rv = plain_wait(r, r->ffd, POLLIN, p->deadline_ms);
			if (rv == 0) {
				return SL_ETIMEDOUT; /* its reply, if it comes, is skipped */
			}
			if (rv < 0) {
				return SL_EIO;
			}
			continue;
		}
		plain_close(r); /* closed by the primary, or reset */
		return SL_EIO;
	}
}

static void pend_ctx_close(pending *p)
{
	if (p->ctx_open) {
		nng_ctx_close(p->ctx); /* NNG_ECLOSED when the socket went first */
		p->ctx_open = 0;
	}
}

/* nng_aio_wait that a stop can cut short (repl_follower_stop cancels
 * r->fwait). */
static void wait_stoppable(sl_repl *r, nng_aio *aio)
{
	pthread_mutex_lock(&r->mu);
	r->fwait = aio;
	int stop = r->fetch_stop;
	pthread_mutex_unlock(&r->mu);
	if (stop) {
		nng_aio_cancel(aio);
	}
	nng_aio_wait(aio);
	pthread_mutex_lock(&r->mu);
	r->fwait = NULL;
	pthread_mutex_unlock(&r->mu);
}

static int nng_to_sl(int rv)
{
	return rv == NNG_ETIMEDOUT ? SL_ETIMEDOUT : rv == NNG_ENOMEM ? SL_ENOMEM : SL_EIO;
}

/* q packed into a new message (NULL: out of memory). */
static nng_msg *req_msg(const Shiplog__ReplRequest *q)
{
	size_t sz = shiplog__repl_request__get_packed_size(q);
	nng_msg *m = NULL;
	if (nng_msg_alloc(&m, sz) != 0) {
		return NULL;
	}
	shiplog__repl_request__pack(q, nng_msg_body(m));
	return m;
}

/* Sends q on a fresh context of the loop's socket and starts receiving
 * its reply; finish with call_finish (or pend_abort). */
static int call_start(sl_repl *r, const Shiplog__ReplRequest *q, int timeout_ms, pending *p)
{
	if (r->fplain) {
		return plain_call_start(r, q, timeout_ms, p);
	}
	p->early = 0; /* nng's thread reads every reply (pend_cb) */
	p->live = 0;
	p->r = r;
	pthread_mutex_lock(&r->mu);
	nng_socket s = r->fsock;
	int open = r->fsock_open;
	uint64_t gen = r->fsock_gen;
	pthread_mutex_unlock(&r->mu);
	if (!open) {
		return SL_EIO;
	}
	if (p->aio == NULL && nng_aio_alloc(&p->aio, pend_cb, p) != 0) {
		return SL_ENOMEM;
	}
	if (p->saio == NULL && nng_aio_alloc(&p->saio, NULL, NULL) != 0) {
		return SL_ENOMEM;
	}
	/* One context per connection, reused by every request on it. */
	if (p->ctx_open && p->gen != gen) {
		pend_ctx_close(p);
	}
	int rv;
	if (!p->ctx_open) {
		if ((rv = nng_ctx_open(&p->ctx, s)) != 0) {
			return nng_to_sl(rv);
		}
		p->ctx_open = 1;
		p->gen = gen;
	}
	nng_msg *m = req_msg(q);
	if (m == NULL) {
		return SL_ENOMEM;
	}
	/* The send has an aio without a callback: REQ completes it inside
	 * nng_ctx_send when a connection is ready, so the wait below returns
	 * at once.  With pend_cb on it, the completion went through nng's
	 * task queue: a thread woken to run a callback that does nothing,
	 * and this one woken after it, for every fetch. */
	nng_aio_set_timeout(p->saio, timeout_ms);
	nng_aio_set_timeout(p->aio, timeout_ms);
	nng_aio_set_msg(p->saio, m);
	nng_ctx_send(p->ctx, p->saio);
	wait_stoppable(r, p->saio);
	if ((rv = nng_aio_result(p->saio)) != 0) {
		nng_msg_free(nng_aio_get_msg(p->saio));
		nng_aio_set_msg(p->saio, NULL);
		pend_ctx_close(p);
		return nng_to_sl(rv);
	}
	nng_ctx_recv(p->ctx, p->aio);
	p->live = 1;
	return SL_OK;
}

/* Waits for the reply of the request p carries.  *out is freed by the
 * caller.  With inline_ok, pend_cb may apply streaming replies itself and
 * fetch again (inline_apply): *out is then the first reply it did not
 * take, or took but handed back (p->inline_done). */
static int call_finish(pending *p, Shiplog__ReplReply **out, int inline_ok)
{
	*out = NULL;
	if (p->r != NULL && p->r->fplain) {
		return plain_call_finish(p, out);
	}
	if (!p->live) {
		return SL_EIO;
	}
	atomic_store(&p->inline_ok, inline_ok);
	wait_stoppable(p->r, p->aio); /* and for pend_cb */
	atomic_store(&p->inline_ok, 0);
	p->live = 0;
	if (p->rv != 0) {
		pend_ctx_close(p); /* a timed-out or cancelled request: start afresh */
		return nng_to_sl(p->rv);
	}
	*out = p->rep;
	p->rep = NULL;
	return *out != NULL ? SL_OK : SL_EPROTO;
}

/* Closes the connection p's last reply came on (bad records, a malformed
 * reply): the socket dials again by itself.  Unlike closing the socket
 * (drop_conn) this never waits, for nng's reaper or anything else. */
static void drop_pipe(pending *p)
{
	if (p->r != NULL && p->r->fplain) {
		if (p->r->ffd >= 0 && p->conn_gen == p->r->ffd_gen) {
			plain_close(p->r);
		}
		return;
	}
	if (nng_pipe_id(p->pipe) > 0) {
		nng_pipe_close(p->pipe);
	}
	p->pipe = (nng_pipe)NNG_PIPE_INITIALIZER;
}

/* Drops the request in flight, if any. */
static void pend_abort(pending *p)
{
	if (p->live && p->r->fplain) {
		/* a reply read ahead is waited for (it comes at once, or within
		 * the fetch's long poll) and dropped; otherwise it is skipped by
		 * its id when it comes */
		Shiplog__ReplReply *rep = NULL;
		if (p->async) {
			plain_call_finish(p, &rep);
			shiplog__repl_reply__free_unpacked(rep, NULL);
		}
		p->live = 0;
		return;
	}
	if (p->live) {
		nng_aio_cancel(p->aio);
		Shiplog__ReplReply *rep = NULL;
		call_finish(p, &rep, 0);
		shiplog__repl_reply__free_unpacked(rep, NULL);
	}
}

static void pend_free(pending *p)
{
	pend_abort(p);
	pend_ctx_close(p);
	if (p->aio != NULL) {
		nng_aio_free(p->aio);
		p->aio = NULL;
	}
	if (p->saio != NULL) {
		nng_aio_free(p->saio);
		p->saio = NULL;
	}
	if (p->ia != NULL) {
		apply_free(p->ia);
		free(p->ia);
		p->ia = NULL;
	}
}

/* ---- streaming ---------------------------------------------------------- */

/* A fetched batch being applied: the records' places in the reply, gathered
 * by gather_one, then applied in one sl_apply_raw_many call. */
typedef struct apply_ctx {
	sl_repl *r;
	sl_db *db;
	uint64_t last; /* highest seq applied (before: the seq applied so far) */
	uint64_t count;
	const void **recs; /* gathered: reused from fetch to fetch */
	size_t *lens;
	uint64_t *seqs;
	size_t n, cap;
	int any_order; /* a snapshot's records: no seq order */
	int verified;  /* every record's checksum is known good (pend_cb) */
} apply_ctx;

static int gather_one(void *arg, const uint8_t *rec, size_t n, uint64_t seq)
{
	apply_ctx *a = arg;
	if (!a->any_order && seq <= (a->n > 0 ? a->seqs[a->n - 1] : a->last)) {
		return SL_EINVAL; /* invariant 2: seqs rise */
	}
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 4096;
		const void **recs = realloc(a->recs, cap * sizeof(*recs));
		if (recs != NULL) {
			a->recs = recs;
		}
		size_t *lens = realloc(a->lens, cap * sizeof(*lens));
		if (lens != NULL) {
			a->lens = lens;
		}
		uint64_t *seqs = realloc(a->seqs, cap * sizeof(*seqs));
		if (seqs != NULL) {
			a->seqs = seqs;
		}
		if (recs == NULL || lens == NULL || seqs == NULL) {
			return SL_ENOMEM;
		}
		a->cap = cap;
	}
	a->recs[a->n] = rec;
	a->lens[a->n] = n;
	a->seqs[a->n] = seq;
	a->n++;
	return SL_OK;
}

/* An apply error that is this node's (disk full, I/O error, a store that
 * must be reopened, memory) rather than a bad record from the primary. */
static int local_failure(int rc)
{
	return rc == SL_ENOSPC || rc == SL_EIO || rc == SL_EFAILED || rc == SL_ENOMEM;
}

/* Splits a fetched reply (or, with any_order, a snapshot chunk) into
 * records and applies (loads) them with one call, their index entries all
 * at once: a refused record stops it, with the ones before it applied, as
 * one at a time would.  a->count gets how many were; a->last and the
 * node's applied seq follow a fetch's. */
static int apply_records(apply_ctx *a, const uint8_t *p, size_t len)
{
	a->n = 0;
	a->count = 0;
	int rc = repl_split_records(p, len, REPL_MAX_RECORD, gather_one, a);
	size_t done = 0;
	int arc = a->any_order
	              ? sl_load_raw_many(a->db, a->recs, a->lens, a->n, &done)
	              : sl_apply_raw_many(a->db, a->recs, a->lens, a->n,
	                                  SL_NOWAIT | (a->verified ? SL_VERIFIED : 0), &done);
	a->count = done;
	if (done > 0 && !a->any_order) {
		a->last = a->seqs[done - 1];
		atomic_store(&a->r->applied, a->last);
	}
	return arc != SL_OK ? arc : rc;
}

static void apply_free(apply_ctx *a)
{
	free(a->recs);
	free(a->lens);
	free(a->seqs);
	a->recs = NULL;
	a->lens = NULL;
	a->seqs = NULL;
	a->n = a->cap = 0;
}

/* Whether the history of a reply (id and ancestors) is the one this node
 * follows.  r->mu held. */
static int history_same(const sl_repl *r, const ProtobufCBinaryData *hid, size_t n,
                        Shiplog__HistoryLink **links)
{
	int same = memcmp(r->st.hid, hid->data, SL_HID_BYTES) == 0 && r->st.nlinks == n;
	for (size_t i = 0; same && i < n; i++) {
		same = links[i]->id.len == SL_HID_BYTES &&
		       memcmp(r->st.links[i].id, links[i]->id.data, SL_HID_BYTES) == 0 &&
		       r->st.links[i].last_seq == links[i]->last_seq;
	}
	return same;
}

/* Puts a primary's history (id, when 16 bytes, and its ancestor links) in
 * st. */
static void history_take(repl_state *st, const ProtobufCBinaryData *hid, size_t n,
                         Shiplog__HistoryLink **links)
{
	if (hid->len == SL_HID_BYTES) {
		memcpy(st->hid, hid->data, SL_HID_BYTES);
	}
	st->nlinks = 0;
	for (size_t i = 0; i < n && i < SL_MAX_LINKS; i++) {
		if (links[i]->id.len == SL_HID_BYTES) {
			memcpy(st->links[st->nlinks].id, links[i]->id.data, SL_HID_BYTES);
			st->links[st->nlinks++].last_seq = links[i]->last_seq;
		}
	}
}

/* Adopts the primary's history (id and ancestors) when it differs: saved
 * in DIR/REPL first, then taken in memory, so that no record of the new
 * history is applied while REPL still names the old one.  0, or -1 when
 * it could not be saved (nothing changed; the caller applies nothing and
 * fetches again).  Only the loop thread changes r->st's history. */
static int adopt_history(sl_repl *r, const ProtobufCBinaryData *hid, size_t n,
                         Shiplog__HistoryLink **links)
{
	if (hid->len != SL_HID_BYTES) {
		return 0;
	}
	pthread_mutex_lock(&r->mu);
	if (history_same(r, hid, n, links)) {
		pthread_mutex_unlock(&r->mu);
		return 0;
	}
	repl_state st = r->st;
	pthread_mutex_unlock(&r->mu);
	history_take(&st, hid, n, links);
	int rc = repl_state_save(r->dir, &st);
	if (rc != SL_OK) {
		repl_follow_fail(r, 3, "cannot save replication state in %s: %s; not applying",
		                 r->dir, sl_strerror(rc));
		return -1;
	}
	pthread_mutex_lock(&r->mu);
	memcpy(r->st.hid, st.hid, SL_HID_BYTES);
	memcpy(r->st.links, st.links, sizeof(st.links));
	r->st.nlinks = st.nlinks;
	pthread_mutex_unlock(&r->mu);
	char h[33];
	repl_hex(st.hid, SL_HID_BYTES, h);
	repl_log(r, 1, "following history %s", h);
	return 0;
}

/* ---- full resync --------------------------------------------------------- */

/* Asks for chunk `chunk` of snapshot snap_id (0: open one). */
static int snap_start(sl_repl *r, const repl_state *st, uint64_t snap_id, uint64_t chunk,
                      pending *p)
{
	Shiplog__ReplRequest q = SHIPLOG__REPL_REQUEST__INIT;
	Shiplog__SnapFetch sf = SHIPLOG__SNAP_FETCH__INIT;
	sf.has_snap_id = 1;
	sf.snap_id = snap_id;
	sf.has_chunk = 1;
	sf.chunk = chunk;
	sf.has_max_bytes = 1;
	sf.max_bytes = FETCH_MAX;
	sf.node_id = (char *)st->node_id;
	q.op_case = SHIPLOG__REPL_REQUEST__OP_SNAP;
	q.snap = &sf;
	return call_start(r, &q, SNAP_TIMEOUT, p);
}

/* *local: the failure was this node's storage (local_failure), not the
 * primary's or the network's. */
static int full_resync(sl_repl *r, const char *url, int *local)
{
	*local = 0;
	char tmp[4200];
	int nested = 0; /* DIR is a mount point: tmp is DIR/.resync (sl_move_in) */
	if (sl_staging_dir(r->dir, tmp, sizeof(tmp), &nested) != SL_OK) {
		return SL_EINVAL;
	}
	repl_rm_rf(tmp);
	pthread_mutex_lock(&r->mu);
	repl_set_fstate(r, "resyncing");
	pthread_mutex_unlock(&r->mu);
	repl_log(r, 1, "full resync from %s into %s", url, tmp);
	uint64_t t0 = repl_now_ms();
	sl_options o = *r->o.db_opts;
	o.compact_background = 0;
	/* One sync at the end (below), and few big segments while loading. */
	o.sync = SL_SYNC_NO;
	if (o.segment_bytes < SL_LOAD_SEGMENT_BYTES) {
		o.segment_bytes = SL_LOAD_SEGMENT_BYTES;
	}
	sl_db *db = NULL;
	int rc = sl_open(tmp, &o, &db);
	if (rc != SL_OK) {
		repl_follow_fail(r, 3, "full resync: cannot create %s: %s", tmp, sl_strerror(rc));
		*local = local_failure(rc);
		return rc;
	}
	apply_ctx l = {.r = r, .db = db, .any_order = 1};
	uint64_t loaded = 0; /* records loaded */
	uint64_t snap_id = 0, chunk = 0, head = 0, bytes = 0;
	repl_state nst;
	pthread_mutex_lock(&r->mu);
	nst = r->st;
	pthread_mutex_unlock(&r->mu);
	pending ahead = {0}; /* chunk+1, asked for while chunk loads */
	for (;;) {
		Shiplog__ReplReply *rep = NULL;
		if (!ahead.live) {
			rc = snap_start(r, &nst, snap_id, chunk, &ahead);
		}
		if (rc == SL_OK) {
			rc = call_finish(&ahead, &rep, 0);
		}
		if (rc != SL_OK) {
			shiplog__repl_reply__free_unpacked(rep, NULL);
			break;
		}
		/* the connection this chunk came on: read now, since pend_cb
		 * writes ahead.pipe when the next chunk (asked for below) arrives */
		pend_conn got = pend_conn_of(&ahead);
		if (rep->op_case != SHIPLOG__REPL_REPLY__OP_SNAP || !rep->snap->has_status) {
			rc = SL_EPROTO;
		} else if (rep->snap->status != SL_OK) {
			rc = rep->snap->status;
			repl_follow_fail(r, 2, "full resync: primary says %s",
			                 rep->snap->error ? rep->snap->error : sl_strerror(rc));
		} else {
			Shiplog__SnapChunk *c = rep->snap;
			if (chunk == 0) {
				snap_id = c->snap_id;
				head = c->head_seq;
				history_take(&nst, &c->history_id, c->n_history, c->history);
			} else if (c->snap_id != snap_id || c->head_seq != head) {
				rc = SL_EPROTO;
			}
			if (rc == SL_OK && !c->done) {
				ahead.early = 1; /* read while this chunk loads */
				if (snap_start(r, &nst, snap_id, chunk + 1, &ahead) != SL_OK) {
					pend_abort(&ahead); /* asked for again at the top */
				}
			}
			if (rc == SL_OK) {
				rc = apply_records(&l, c->records.data, c->records.len);
				loaded += l.count;
				bytes += c->records.len;
				if (rc != SL_OK && local_failure(rc)) {
					*local = 1;
					atomic_fetch_add(&r->apply_errors, 1);
					repl_follow_fail(
					    r, 3,
					    "full resync: cannot store a chunk: %s (this "
					    "node's storage)",
					    sl_strerror(rc));
				} else if (rc != SL_OK) {
					atomic_fetch_add(&r->refused, 1);
					repl_follow_fail(
					    r, 3,
					    "full resync: refused a chunk with a bad record: %s",
					    sl_strerror(rc));
					/* before asking again, a fresh connection */
					pend_abort(&ahead);
					pend_conn_set(&ahead, got);
					drop_pipe(&ahead);
				}
			}
			chunk++;
			if (rc == SL_OK && c->done) {
				shiplog__repl_reply__free_unpacked(rep, NULL);
				break;
			}
		}
		shiplog__repl_reply__free_unpacked(rep, NULL);
		if (rc != SL_OK) {
			break;
		}
		pthread_mutex_lock(&r->mu);
		int stop = r->fetch_stop;
		pthread_mutex_unlock(&r->mu);
		if (stop) {
			rc = SL_ETIMEDOUT;
			break;
		}
	}
	pend_free(&ahead);
	apply_free(&l);
	uint64_t t_stream = repl_now_ms();
	nst.floor = head;
	nst.role = ROLE_FOLLOWER;
	if (rc == SL_OK && (rc = sl_sync_now(db)) != SL_OK) {
		*local = 1;
	}
	if (rc == SL_OK && (rc = repl_state_save(tmp, &nst)) != SL_OK) {
		*local = 1;
	}
	uint64_t t_closed = repl_now_ms();
	if (rc != SL_OK) {
		sl_close(db);
		repl_rm_rf(tmp);
		return rc;
	}
	/* Invariant 3: swap two complete directories.  The loaded store stays
	 * open and becomes the node's (sl_swap_dir): no close and reopen.
	 * DIR a mount point: its files are replaced by the loaded store's
	 * (sl_move_in, crash-safe), which is then opened in DIR. */
	if (nested) {
		sl_close(db);
		db = NULL;
	}
	pthread_rwlock_wrlock(r->o.db_lock);
	pthread_mutex_lock(&r->mu);
	repl_snaps_close_all(r);
	pthread_mutex_unlock(&r->mu);
	repl_carry_counters(r, *r->o.dbp);
	sl_close(*r->o.dbp);
	*r->o.dbp = NULL;
	if (nested) {
		rc = sl_move_in(r->dir);
		if (rc == SL_OK) {
			rc = sl_open(r->dir, r->o.db_opts, &db);
			if (rc != SL_OK) {
				repl_follow_fail(r, 3,
				                 "cannot open %s after the resync: %s; stopping",
				                 r->dir, sl_strerror(rc));
				abort(); /* the files moved in: a restart opens them */
			}
		}
	} else {
		rc = sl_swap_dir(db, r->dir, r->o.db_opts);
	}
	if (rc == SL_OK) {
		*r->o.dbp = db;
	} else {
		repl_follow_fail(r, 3, "full resync: cannot %s %s and %s: %s",
		                 nested ? "move in" : "swap", tmp, r->dir, sl_strerror(rc));
		*local = 1;
		sl_close(db);
		int orc = sl_open(r->dir, r->o.db_opts, r->o.dbp);
		if (orc != SL_OK) {
			repl_follow_fail(r, 3, "cannot reopen %s after the resync: %s; stopping",
			                 r->dir, sl_strerror(orc));
			abort(); /* no store to serve from: a restart recovers (invariant 3) */
		}
		struct stat sst;
		if (nested && stat(tmp, &sst) != 0 && errno == ENOENT) {
			/* The move had begun (its mark was durable) and sl_open
			 * finished it: DIR holds the loaded store after all. */
			repl_log(r, 1, "full resync: the move-in was finished on reopening %s",
			         r->dir);
			rc = SL_OK;
			*local = 0;
		}
	}
	uint64_t last = sl_last_seq(*r->o.dbp);
	pthread_rwlock_unlock(r->o.db_lock);
	if (rc != SL_OK) {
		repl_rm_rf(tmp);
		return rc;
	}
	if (last < head) {
		last = head;
	}
	/* Counted before the applied seq moves: whoever sees the new applied
	 * seq in the stats also sees the resync that brought it. */
	atomic_fetch_add(&r->resyncs_full, 1);
	atomic_fetch_add(&r->bytes_fetched, bytes);
	atomic_fetch_add(&r->records_fetched, loaded);
	pthread_mutex_lock(&r->mu);
	r->st.floor = nst.floor;
	memcpy(r->st.hid, nst.hid, SL_HID_BYTES);
	r->st.nlinks = nst.nlinks;
	memcpy(r->st.links, nst.links, sizeof(nst.links));
	r->durable = last;
	atomic_store(&r->applied, last);
	atomic_store(&r->head, last);
	pthread_cond_broadcast(&r->cv);
	sl_repl_applied_wait *done = NULL;
	repl_applied_take(r, 0, &done);
	pthread_mutex_unlock(&r->mu);
	repl_applied_run(done);
	repl_rm_rf(tmp); /* the old store, now that reads see the new one */
	uint64_t t_end = repl_now_ms();
	repl_log(r, 1,
	         "full resync done: %llu records (%llu bytes) up to seq %llu in %llu ms "
	         "(stream and load %llu, sync %llu, swap %llu)",
	         (unsigned long long)loaded, (unsigned long long)bytes, (unsigned long long)head,
	         (unsigned long long)(t_end - t0), (unsigned long long)(t_stream - t0),
	         (unsigned long long)(t_closed - t_stream), (unsigned long long)(t_end - t_closed));
	return SL_OK;
}

/* ---- the loop ------------------------------------------------------------ */

/* The history a store at `applied` under st presents in a fetch.  A
 * history that began at seq L holds nothing of its own at L: the store is
 * then its predecessor's at L (links[i] = (predecessor, L)), and so on down
 * the links.  A node restarted as primary (a new history at every start,
 * invariant of repl.c) and re-pointed before it took a write thus continues
 * on a primary that knows only the older history, without a full resync. */
static const uint8_t *fetch_history(const repl_state *st, uint64_t applied)
{
	const uint8_t *id = st->hid;
	for (size_t i = st->nlinks; i > 0 && st->links[i - 1].last_seq == applied; i--) {
		id = st->links[i - 1].id;
	}
	return id;
}

/* Fills q (and f, which it points to) with a fetch from seq `from`
 * reporting `durable`. */
static void fetch_fill(Shiplog__ReplRequest *q, Shiplog__Fetch *f, sl_repl *r, const repl_state *st,
                       uint64_t from, uint64_t durable)
{
	shiplog__repl_request__init(q);
	shiplog__fetch__init(f);
	f->has_history_id = 1;
	f->history_id.data = (uint8_t *)fetch_history(st, from - 1);
	f->history_id.len = SL_HID_BYTES;
	f->has_from_seq = 1;
	f->from_seq = from;
	f->has_max_bytes = 1;
	f->max_bytes = FETCH_MAX;
	f->has_wait_ms = 1;
	f->wait_ms = FETCH_WAIT_MS;
	f->node_id = (char *)st->node_id;
	f->has_durable_seq = 1;
	f->durable_seq = durable;
	f->address = (char *)(r->o.self_url ? r->o.self_url : "");
	q->op_case = SHIPLOG__REPL_REQUEST__OP_FETCH;
	q->fetch = f;
}

/* Sends a fetch from seq `from` reporting `durable`, and `applied` when
 * it is below from - 1 (sent ahead of an apply). */
static int fetch_start(sl_repl *r, const repl_state *st, uint64_t from, uint64_t durable,
                       uint64_t applied, pending *p)
{
	Shiplog__ReplRequest q;
	Shiplog__Fetch f;
	fetch_fill(&q, &f, r, st, from, durable);
	if (applied + 1 < from) {
		f.has_applied_seq = 1;
		f.applied_seq = applied;
	}
	return call_start(r, &q, FETCH_WAIT_MS + 5000, p);
}

/* A streaming reply's records were applied (a): the counters and the
 * follower's head. */
static void applied_note(sl_repl *r, const apply_ctx *a, size_t bytes)
{
	if (a->count > 0) {
		atomic_fetch_add(&r->records_fetched, a->count);
		atomic_fetch_add(&r->fetches, 1);
		atomic_fetch_add(&r->bytes_fetched, bytes);
		uint64_t h = atomic_load(&r->head);
		while (h < a->last && !atomic_compare_exchange_weak(&r->head, &h, a->last)) {
		}
	}
}

/* What the next fetch reports durable; wakes the reads waiting for an
 * applied seq (--min-seq) when count records were applied. */
static void durable_note(sl_repl *r, uint64_t durable, uint64_t count)
{
	sl_repl_applied_wait *done = NULL;
	pthread_mutex_lock(&r->mu);
	if (durable > r->durable) {
		r->durable = durable;
	}
	if (count > 0 && atomic_load(&r->applied_waiters) > 0) {
		pthread_cond_broadcast(&r->cv);
		repl_applied_take(r, 0, &done);
	}
	pthread_mutex_unlock(&r->mu);
	repl_applied_run(done); /* the reads parked for what was applied */
}

/* pend_cb's fast path while streaming (the loop passed inline_ok to
 * call_finish: connected, no store error, --sync not always, no
 * --repl-batch-us): it applies a verified reply of the primary's current
 * history that is not a catch-up chunk itself and sends the next fetch,
 * then re-arms the receive, so the loop stays asleep.  That saves a thread
 * wakeup between a reply's arrival and the fetch that acknowledges it
 * (the primary counts that fetch's durable_seq for --acks): ninth
 * session, `--figures acks,lag`, 6 alternating pairs, --acks 1 put p50
 * 251-273 -> 185-220 us.  Returns 1 when it did all that; otherwise the
 * reply goes to the loop, with p->inline_done set if its records were
 * applied here (their result in p->inline_rc, p->ia; 2: and counted): an
 * apply error, a stop, or no memory for the next fetch are the loop's to
 * handle. */
static int inline_apply(pending *p)
{
	sl_repl *r = p->r;
	const Shiplog__ReplReply *rep = p->rep;
	const Shiplog__FetchReply *fr = rep->fetch;
	if (p->ia == NULL || !fr->has_status || fr->status != SL_OK || fr->records.len == 0 ||
	    fr->records.len >= FETCH_MAX / 2 || fr->history_id.len != SL_HID_BYTES) {
		return 0;
	}
	/* The loop's look at the store (a failed or damaged one is replaced)
	 * is due: the reply goes back to it.  Under steady writes every reply
	 * was applied here and the loop never woke to look (a review in the
	 * twenty-seventh session). */
	if (repl_now_ms() >= atomic_load(&r->fcheck_ms)) {
		return 0;
	}
	pthread_mutex_lock(&r->mu);
	int ok = !r->fetch_stop && history_same(r, &fr->history_id, fr->n_history, fr->history) &&
	         (fr->client_url == NULL || strcmp(fr->client_url, r->primary_client) == 0);
	repl_state st = r->st;
	pthread_mutex_unlock(&r->mu);
	if (!ok) {
		return 0;
	}
	apply_ctx *a = p->ia;
	a->r = r;
	a->db = *r->o.dbp; /* invariant 1 */
	a->last = atomic_load(&r->applied);
	a->any_order = 0;
	a->verified = 1;
	p->inline_rc = apply_records(a, fr->records.data, fr->records.len);
	p->inline_done = 1;
	if (p->inline_rc != SL_OK || a->count == 0) {
		return 0;
	}
	/* counted before the next fetch goes: a node converged (applied up
	 * to the head) has counted what it applied */
	applied_note(r, a, fr->records.len);
	p->inline_done = 2;
	Shiplog__ReplRequest q;
	Shiplog__Fetch f;
	fetch_fill(&q, &f, r, &st, a->last + 1, a->last);
	nng_msg *m = req_msg(&q);
	if (m == NULL) {
		return 0;
	}
	durable_note(r, a->last, a->count);
	nng_aio_wait(p->saio); /* done: its reply is this one */
	pthread_mutex_lock(&r->mu);
	if (r->fetch_stop) { /* repl_follower_stop cancels r->fwait under mu */
		pthread_mutex_unlock(&r->mu);
		nng_msg_free(m);
		return 0;
	}
	/* A zero timeout: REQ sends at once to a ready connection or fails
	 * (NNG_ETIMEDOUT, the message left on the aio); it never queues the
	 * request.  A queued send would be completed later by another thread
	 * while the receive below is armed on the same context, which REQ
	 * does not allow for, and saio would still be busy when the loop
	 * reuses it. */
	nng_aio_set_timeout(p->saio, NNG_DURATION_ZERO);
	nng_aio_set_msg(p->saio, m);
	nng_ctx_send(p->ctx, p->saio);
	if (nng_aio_get_msg(p->saio) != NULL || nng_aio_result(p->saio) != 0) {
		/* refused: no ready connection (its previous send not yet
		 * completed), or a closed socket; the loop sends it */
		pthread_mutex_unlock(&r->mu);
		nng_msg_free(nng_aio_get_msg(p->saio));
		nng_aio_set_msg(p->saio, NULL);
		return 0;
	}
	p->inline_rounds++;
	shiplog__repl_reply__free_unpacked(p->rep, NULL);
	p->rep = NULL;
	/* Last: once the receive is armed, the next reply's pend_cb may run on
	 * another of nng's threads, even before this one has returned; p is
	 * its from here on. */
	nng_ctx_recv(p->ctx, p->aio);
	pthread_mutex_unlock(&r->mu);
	return 1;
}

/* The next wait after v (doubled, at most max). */
static uint64_t backoff_next(uint64_t v, uint64_t max)
{
	return v * 2 > max ? max : v * 2;
}

/* A full resync from url; on failure, waits as the failure asks (this
 * node's storage: *resync_backoff, 1 s .. 60 s, since each try streams all
 * that fits and throws it away; else *backoff, up to 2 s) and lengthens
 * that wait.  On success both waits start over.  *stop: the follower is
 * stopping. */
static int resync_or_wait(sl_repl *r, const char *url, uint64_t *backoff, uint64_t *resync_backoff,
                          int *stop)
{
	int local = 0;
	*stop = 0;
	/* The store the resync opens starts its own threads (flusher,
	 * compactor, loaders): not with --repl-sched batch's policy. */
	sl_slice_apply_normal();
	int rc = full_resync(r, url, &local);
	sl_slice_apply_repl();
	if (rc == SL_OK) {
		*backoff = BACKOFF_MIN_MS;
		*resync_backoff = RESYNC_BACKOFF_MIN_MS;
		return SL_OK;
	}
	uint64_t *wait = local ? resync_backoff : backoff;
	repl_follow_fail(r, 2, "full resync failed: %s%s; retrying in %llu ms", sl_strerror(rc),
	                 local ? " (this node's storage)" : "", (unsigned long long)*wait);
	pthread_mutex_lock(&r->mu);
	repl_set_fstate(r, local ? "store_error" : "connecting");
	pthread_mutex_unlock(&r->mu);
	*stop = pause_ms(r, *wait);
	*wait = backoff_next(*wait, local ? RESYNC_BACKOFF_MAX_MS : BACKOFF_MAX_MS);
	return rc;
}

static void *fetch_main(void *arg)
{
	sl_slice_apply_repl(); /* --io-slice-us, --repl-sched (slice.h) */
	sl_repl *r = arg;
	uint64_t backoff = BACKOFF_MIN_MS;
	int connected = 0; /* a fetch succeeded on this connection */
	int resynced = 0;  /* a full resync just ended: the next fetch streams */
	int last_err = 0;
	char last_msg[sizeof(r->ferr)] = ""; /* logged once until it changes */
	int store_err = 0;    /* the local error storing the last reply failed with */
	int store_failed = 0; /* the store must be replaced (above): 1 SL_EFAILED,
	                       * 2 it holds damaged records */
	uint64_t last_replace_ms = 0, replace_backoff = RESYNC_BACKOFF_MIN_MS;
	/* a damaged store whose replacement failed streams on until then */
	uint64_t damage_retry_ms = 0, damage_backoff = RESYNC_BACKOFF_MIN_MS;
	uint64_t catchup_since_ms = 0; /* full replies since (compaction deferral) */
	uint64_t resync_backoff = RESYNC_BACKOFF_MIN_MS;
	uint64_t store_backoff = BACKOFF_MIN_MS / 2;
	uint64_t refuse_backoff = BACKOFF_MIN_MS / 2; /* after refused records */
	char last_refused[sizeof(r->ferr)] = "";      /* logged once until it changes */
	int refusing = 0; /* the last reply was refused; none applied since */
	uint64_t last_stats_ms = 0;
	pending ahead = {0};      /* the next fetch, sent early (see below) */
	unsigned inline_seen = 0; /* ahead.inline_rounds last looked at */
	apply_ctx a = {0};        /* its arrays are reused from fetch to fetch */
	for (;;) {
		char url[256];
		repl_state st;
		pthread_mutex_lock(&r->mu);
		int stop = r->fetch_stop;
		snprintf(url, sizeof(url), "%s", r->st.primary);
		st = r->st;
		uint64_t durable = r->durable;
		if (!connected && !refusing) {
			repl_set_fstate(r, "connecting");
		}
		pthread_mutex_unlock(&r->mu);
		if (stop) {
			break;
		}
		if (ensure_conn(r, url) != SL_OK) {
			if (pause_ms(r, backoff)) {
				break;
			}
			backoff = backoff_next(backoff, BACKOFF_MAX_MS);
			continue;
		}
		if (store_failed) {
			/* A fetch sent ahead (a catch-up) is dropped first: the
			 * resync talks on the same connection, and the reader
			 * thread, still reading that reply into the same buffer,
			 * raced the resync's own reads (a review in the
			 * twenty-seventh session). */
			pend_abort(&ahead);
			/* The store refuses writes for good (an fsync failed: what
			 * it holds past its last good sync is unknown), and only a
			 * reopen would clear that: replace it with the primary's
			 * snapshot instead, which also fills any hole.  A disk that
			 * keeps failing gets replacements less and less often (1 s,
			 * 2 s, ... 60 s apart while they come within a minute). */
			uint64_t now = repl_now_ms();
			if (last_replace_ms != 0 && now - last_replace_ms < 60000) {
				pthread_mutex_lock(&r->mu);
				repl_set_fstate(r, "store_error");
				pthread_mutex_unlock(&r->mu);
				if (pause_ms(r, replace_backoff)) {
					break;
				}
				replace_backoff =
				    backoff_next(replace_backoff, RESYNC_BACKOFF_MAX_MS);
			} else {
				replace_backoff = RESYNC_BACKOFF_MIN_MS;
			}
			repl_follow_fail(r, 3,
			                 "this node's store %s; replacing it with a full resync "
			                 "from %s",
			                 store_failed == 2 ? "has damaged records (a file was cut "
			                                     "or changed on disk)"
			                                   : "has failed",
			                 url);
			int stop;
			if (resync_or_wait(r, url, &backoff, &resync_backoff, &stop) != SL_OK) {
				connected = 0;
				if (stop) {
					break;
				}
				if (store_failed == 2) {
					/* Unlike a failed store, a damaged one still
					 * takes records: it streams on (only the damaged
					 * keys wrong) and the replacement is tried again
					 * later, 1 s, 2 s, ... 10 min apart (a resync
					 * needs room for a second copy of the store). */
					store_failed = 0;
					damage_retry_ms = repl_now_ms() + damage_backoff;
					damage_backoff = backoff_next(damage_backoff, 600000);
				}
				continue;
			}
			damage_backoff = RESYNC_BACKOFF_MIN_MS;
			last_replace_ms = repl_now_ms();
			store_failed = 0;
			store_err = 0;
			store_backoff = BACKOFF_MIN_MS / 2;
			connected = 1;
			resynced = 1;
			continue;
		}
		sl_db *db = *r->o.dbp; /* invariant 1 */
		uint64_t applied = atomic_load(&r->applied);
		uint64_t now = repl_now_ms();
		if (now - last_stats_ms >= 1000) {
			sl_stats s;
			int src = sl_stats_get(db, &s);
			if (src == SL_OK && s.synced_seq > durable) {
				durable = s.synced_seq;
			}
			last_stats_ms = now;
			atomic_store(&r->fcheck_ms, now + 1000);
			if (src == SL_OK &&
			    s.failed != 0) { /* its flusher's fdatasync failed, say */
				store_failed = 1;
				continue;
			}
			if (src == SL_OK && s.corrupt_records > 0 && now >= damage_retry_ms) {
				/* Found by the open (a sealed segment cut short,
				 * a bad record) or by a read since: records it
				 * reports applied are gone or unreadable, and
				 * streaming on would never bring them back; the
				 * primary holds them. */
				store_failed = 2;
				continue;
			}
		}
		int probe_failed = 0;
		if (!connected && !ahead.live) {
			/* Not connected: see whether the primary answers at all, and
			 * if not say why at once ("Connection refused", "no answer
			 * within 500 ms"): nng's REQ socket only waits for a
			 * connection, and the fetch would time out saying nothing
			 * more.  Advisory only: the fetch goes out all the same
			 * (nng resolves and dials on its own, and may reach what
			 * the probe did not). */
			char why[160], msg[sizeof(r->ferr)];
			/* (a probe ended by a stop says nothing: the loop ends) */
			if (sl_probe_tcp_stop(url, PROBE_MS, r->fstop_efd, why, sizeof(why)) !=
			        SL_OK &&
			    !fetch_stopping(r)) {
				snprintf(msg, sizeof(msg), "cannot connect to %s: %s; retrying",
				         url, why);
				repl_follow_fail(r, strcmp(msg, last_msg) != 0 ? 2 : 0, "%s", msg);
				snprintf(last_msg, sizeof(last_msg), "%s", msg);
				probe_failed = 1;
			}
		}
		Shiplog__ReplReply *rep = NULL;
		int rc;
		/* Streaming replies may be applied by pend_cb while this thread
		 * waits (inline_apply): not when this node syncs each batch, or
		 * pauses between fetches, or is not streaming cleanly. */
		int inline_ok = connected && !resynced && store_err == 0 &&
		                sl_sync_policy(db) != SL_SYNC_ALWAYS && r->o.batch_us == 0;
		if (inline_ok && ahead.ia == NULL) {
			ahead.ia = calloc(1, sizeof(*ahead.ia)); /* NULL: no fast path */
		}
		if (ahead.live) {
			/* sent before the previous reply was applied (below) */
			rc = call_finish(&ahead, &rep, inline_ok);
		} else {
			rc = fetch_start(r, &st, applied + 1, durable > applied ? applied : durable,
			                 applied, &ahead);
			if (rc == SL_OK) {
				rc = call_finish(&ahead, &rep, inline_ok);
			}
		}
		if (ahead.inline_rounds != inline_seen || (rc == SL_OK && ahead.inline_done)) {
			/* pend_cb applied replies while this thread waited: the
			 * positions read above are behind (and those replies were no
			 * catch-up) */
			inline_seen = ahead.inline_rounds;
			catchup_since_ms = 0;
			applied = atomic_load(&r->applied);
			pthread_mutex_lock(&r->mu);
			durable = r->durable > durable ? r->durable : durable;
			pthread_mutex_unlock(&r->mu);
		}
		if (rc == SL_OK &&
		    (rep->op_case != SHIPLOG__REPL_REPLY__OP_FETCH || !rep->fetch->has_status)) {
			rc = SL_EPROTO;
		}
		if (rc != SL_OK && fetch_stopping(r)) {
			/* repl_follower_stop interrupted the fetch (the node stops,
			 * or follows another primary): nothing to warn about */
			shiplog__repl_reply__free_unpacked(rep, NULL);
			break;
		}
		if (rc != SL_OK) {
			char msg[sizeof(r->ferr)];
			if (probe_failed) { /* the probe's reason says more */
				snprintf(msg, sizeof(msg), "%s", last_msg);
			} else {
				snprintf(msg, sizeof(msg), "fetch from %s failed: %s; retrying",
				         url, rc == SL_EIO ? "not connected" : sl_strerror(rc));
			}
			repl_follow_fail(r, strcmp(msg, last_msg) != 0 ? 2 : 0, "%s", msg);
			snprintf(last_msg, sizeof(last_msg), "%s", msg);
			last_err = rc;
			shiplog__repl_reply__free_unpacked(rep, NULL);
			if (rc == SL_EPROTO) {
				drop_pipe(&ahead); /* a malformed reply: a fresh connection */
			}
			/* Otherwise (not connected, timed out) the socket dials again
			 * by itself; it is closed only when the node stops following
			 * this primary (drop_conn). */
			connected = 0;
			if (pause_ms(r, backoff)) {
				break;
			}
			backoff = backoff_next(backoff, BACKOFF_MAX_MS);
			continue;
		}
		Shiplog__FetchReply *fr = rep->fetch;
		pend_conn got = pend_conn_of(&ahead); /* the connection fr came on */
		a.verified = ahead.verified; /* read now: the next fetch may go out below */
		int inline_done = rc == SL_OK ? ahead.inline_done : 0; /* applied by pend_cb */
		if ((fr->status == SL_OK || fr->status == SL_ESTALE) && fr->client_url != NULL &&
		    fr->client_url[0]) {
			/* a primary's answer: remember where clients should write */
			pthread_mutex_lock(&r->mu);
			snprintf(r->primary_client, sizeof(r->primary_client), "%s",
			         fr->client_url);
			pthread_mutex_unlock(&r->mu);
		}
		if (fr->status == SL_ESTALE) {
			shiplog__repl_reply__free_unpacked(rep, NULL);
			repl_log(r, 1, "primary %s cannot continue from seq %llu: full resync", url,
			         (unsigned long long)(applied + 1));
			int stop;
			rc = resync_or_wait(r, url, &backoff, &resync_backoff, &stop);
			connected = resynced = rc == SL_OK;
			refusing = refusing && rc != SL_OK;
			if (stop) {
				break;
			}
			continue;
		}
		if (fr->status != SL_OK) {
			/* logged once; the stats' time of it follows each one */
			repl_follow_fail(r, fr->status != last_err ? 2 : 0,
			                 "primary %s refused the fetch: %s", url,
			                 fr->error ? fr->error : sl_strerror(fr->status));
			last_err = fr->status;
			shiplog__repl_reply__free_unpacked(rep, NULL);
			connected = 0;
			if (pause_ms(r, backoff)) {
				break;
			}
			backoff = backoff_next(backoff, BACKOFF_MAX_MS);
			continue;
		}
		/* Back after refusing the primary's records: not streaming (nor a
		 * partial resync) until a reply is applied (below). */
		if (!connected && !refusing) {
			repl_log(r, 1, "streaming from %s at seq %llu", url,
			         (unsigned long long)(applied + 1));
			if (applied > 0) {
				atomic_fetch_add(&r->resyncs_partial, 1);
			}
		}
		if ((!connected && !refusing) || resynced) {
			/* also after a full resync, which leaves connected set */
			pthread_mutex_lock(&r->mu);
			repl_set_fstate(r, "streaming");
			pthread_mutex_unlock(&r->mu);
			resynced = 0;
		}
		connected = 1;
		last_err = 0;
		last_msg[0] = '\0';
		backoff = BACKOFF_MIN_MS;
		if (adopt_history(r, &fr->history_id, fr->n_history, fr->history) != 0) {
			/* this node's disk: retried once a second, as a store error */
			shiplog__repl_reply__free_unpacked(rep, NULL);
			if (pause_ms(r, 1000)) {
				break;
			}
			continue;
		}
		pthread_mutex_lock(&r->mu);
		st = r->st; /* the history just adopted goes in the next fetch */
		pthread_mutex_unlock(&r->mu);
		/* A full reply means more is waiting (catch-up): ask for it now,
		 * so the primary reads and sends it while this one is applied.
		 * Not when the primary wants a durable position back (acks):
		 * that goes in the fetch sent after the sync below. */
		if (fr->records.len >= FETCH_MAX / 2) {
			/* catching up: background compaction waits (a second after
			 * the last full reply), the log goes first; but not for more
			 * than 30 s of a catch-up that never ends, or dead space
			 * would grow without bound */
			uint64_t now_ms = repl_now_ms();
			if (catchup_since_ms == 0) {
				catchup_since_ms = now_ms;
			}
			if (now_ms - catchup_since_ms < 30000) {
				sl_compact_defer(db, CATCHUP_COMPACT_DEFER_MS);
			}
		} else {
			catchup_since_ms = 0;
		}
		/* --repl-sched fifo: real-time while caught up only (slice.h) */
		if (sl_slice_repl_streaming(fr->records.len < FIFO_MAX_REPLY) != 0) {
			repl_log(r, 2,
			         "--repl-sched fifo: this process may not use SCHED_FIFO (it needs "
			         "root, CAP_SYS_NICE or an RLIMIT_RTPRIO); the fetch thread stays "
			         "normal");
		}
		uint64_t next = fr->records.len >= FETCH_MAX / 2 && fr->has_next_seq &&
		                        !(fr->has_sync_seq && fr->sync_seq)
		                    ? fr->next_seq
		                    : 0;
		if (next > applied + 1) {
			ahead.early = 1; /* read while this reply is applied */
			if (fetch_start(r, &st, next, durable > applied ? applied : durable,
			                applied, &ahead) != SL_OK) {
				pend_abort(&ahead); /* the loop reconnects as after any failure */
			}
		}
		a.r = r;
		a.db = db;
		a.last = applied;
		if (inline_done) {
			a.last = ahead.ia->last;
			a.count = ahead.ia->count;
			rc = ahead.inline_rc;
		} else {
			rc = apply_records(&a, fr->records.data, fr->records.len);
		}
		if (ahead.live && (rc != SL_OK || a.last + 1 != next)) {
			pend_abort(&ahead); /* it would not continue right after what was applied */
		}
		if (rc == SL_OK) {
			refuse_backoff = BACKOFF_MIN_MS / 2;
			last_refused[0] = '\0';
			if (refusing) {
				repl_log(r, 1, "streaming from %s at seq %llu", url,
				         (unsigned long long)(applied + 1));
				pthread_mutex_lock(&r->mu);
				repl_set_fstate(r, "streaming");
				pthread_mutex_unlock(&r->mu);
				refusing = 0;
			}
		}
		if (rc == SL_OK && store_err != 0) {
			repl_log(r, 1, "storing records from %s again at seq %llu", url,
			         (unsigned long long)a.last);
			store_err = 0;
			store_backoff = BACKOFF_MIN_MS / 2;
			pthread_mutex_lock(&r->mu);
			repl_set_fstate(r, "streaming");
			pthread_mutex_unlock(&r->mu);
		}
		if (inline_done != 2) { /* 2: pend_cb counted them */
			applied_note(r, &a, fr->records.len);
		}
		/* What the next fetch reports durable (and the primary counts as
		 * acks) is what this node's --sync promises for its own writes:
		 * under `always` the batch is fdatasynced first, with one
		 * fdatasync for all its records; under `everysec` and `no` a
		 * record is durable once it is in this node's log, where it
		 * survives this process's crash and reaches the disk within
		 * the sync period, as a put acknowledged by a primary under the
		 * same flag (Kafka's acks=all counts a replica's log the same
		 * way; Redis's WAIT counts a replica's memory). */
		if (a.count > 0 && sl_sync_policy(db) == SL_SYNC_ALWAYS) {
			if (sl_sync_wait(db, a.last) != SL_OK) {
				rc = SL_EFAILED; /* below: the store is replaced */
			}
		}
		if (a.count > 0 && rc == SL_OK && a.last > durable) {
			durable = a.last;
		}
		/* Streaming behind a busy primary (many records per reply, the
		 * reply not full, nobody waits for acks): a short pause lets the
		 * next reply carry more records; each round trip costs both
		 * nodes several thread wakeups, more than applying a few
		 * records.  A follower getting a record or a few per reply (idle,
		 * or back-to-back single writes) never pauses. */
		int pause = rc == SL_OK && a.count >= BATCH_MIN_RECORDS && !ahead.live &&
		            !(fr->has_sync_seq && fr->sync_seq) && r->o.batch_us > 0;
		durable_note(r, durable, a.count);
		shiplog__repl_reply__free_unpacked(rep, NULL);
		if (pause) {
			struct timespec ts = {0, (long)r->o.batch_us * 1000};
			nanosleep(&ts, NULL);
		}
		if (rc != SL_OK) {
			pend_abort(&ahead);
			if (local_failure(rc)) {
				/* this node's disk, not the primary's records: the
				 * connection is fine, the same fetch is retried, less
				 * and less often (the fetch itself resets `backoff`) */
				atomic_fetch_add(&r->apply_errors, 1);
				if (rc == SL_EFAILED) {
					store_failed = 1; /* replaced at the top of the loop */
				} else if (store_err != rc) {
					repl_follow_fail(
					    r, 3,
					    "cannot store records from %s after seq %llu: %s "
					    "(this node's storage); retrying every %d ms or less "
					    "until it can",
					    url, (unsigned long long)a.last, sl_strerror(rc),
					    BACKOFF_MAX_MS);
				}
				store_err = rc;
				pthread_mutex_lock(&r->mu);
				repl_set_fstate(r, "store_error");
				pthread_mutex_unlock(&r->mu);
				store_backoff = backoff_next(store_backoff, BACKOFF_MAX_MS);
				backoff = store_backoff;
			} else {
				/* the primary sends the same records again: wait longer
				 * each time (the fetch itself resets `backoff`) */
				atomic_fetch_add(&r->refused, 1);
				refuse_backoff = backoff_next(refuse_backoff, BACKOFF_MAX_MS);
				char msg[sizeof(r->ferr)];
				snprintf(msg, sizeof(msg),
				         "refused records from %s after seq %llu: %s; reconnecting",
				         url, (unsigned long long)a.last, sl_strerror(rc));
				repl_follow_fail(r, strcmp(msg, last_refused) != 0 ? 3 : 0, "%s",
				                 msg);
				snprintf(last_refused, sizeof(last_refused), "%s", msg);
				pend_conn_set(&ahead, got);
				drop_pipe(&ahead);
				connected = 0;
				pthread_mutex_lock(&r->mu);
				repl_set_fstate(r, "refusing");
				pthread_mutex_unlock(&r->mu);
				refusing = 1;
				backoff = refuse_backoff;
			}
			if (pause_ms(r, backoff)) {
				break;
			}
			backoff = backoff_next(backoff, BACKOFF_MAX_MS);
		}
	}
	pend_free(&ahead);
	apply_free(&a);
	plain_reader_stop(r);
	drop_conn(r);
	fbuf_release(r); /* up to 32 MiB after a catch-up: not kept once not following */
	return NULL;
}

void repl_follower_start(sl_repl *r)
{
	if (r->fetcher_started) {
		return;
	}
	r->fetch_stop = 0;
	r->fdown_ms = 0; /* down from now: a new primary, or this node's start */
	/* the plain connection for a tcp:// primary (unless --transport nng) */
	char host[256], port[32];
	int family;
	r->fplain =
	    r->o.follow_plain && r->fstop_efd >= 0 &&
	    sl_tcp_split(r->st.primary, &family, host, sizeof(host), port, sizeof(port)) == 0;
	uint64_t v;
	while (r->fstop_efd >= 0 && read(r->fstop_efd, &v, sizeof(v)) > 0) {
		/* a stop's wakeup, left from the last loop */
	}
	r->ferr[0] = '\0';
	repl_set_fstate(r, "connecting");
	if (pthread_create(&r->fetcher, NULL, fetch_main, r) == 0) {
		r->fetcher_started = 1;
	} else {
		repl_log(r, 3, "cannot start the fetch thread"); /* r->mu is held */
	}
}

void repl_follower_stop(sl_repl *r, int exiting)
{
	pthread_mutex_lock(&r->mu);
	if (!r->fetcher_started) {
		pthread_mutex_unlock(&r->mu);
		return;
	}
	r->fetch_stop = 1;
	r->fexit = exiting;
	pthread_cond_broadcast(&r->cv);
	if (r->fwait != NULL) {
		nng_aio_cancel(r->fwait); /* interrupts a long poll */
	}
	if (r->fstop_efd >= 0) {
		uint64_t one = 1; /* interrupts the plain connection's waits */
		ssize_t w = write(r->fstop_efd, &one, sizeof(one));
		(void)w;
	}
	pthread_t t = r->fetcher;
	pthread_mutex_unlock(&r->mu);
	if (!r->fplain) {
		drop_conn(r); /* closes the socket, unless exiting */
	}                     /* the plain one: by the loop as it ends (fstop_efd woke it) */
	pthread_join(t, NULL);
	pthread_mutex_lock(&r->mu);
	r->fetcher_started = 0;
	r->fetch_stop = 0;
	pthread_mutex_unlock(&r->mu);
}
