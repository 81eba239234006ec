/*
 * quiet.h — letting an nng REP socket go quiet before nng_close.
 *
 * nng 1.5.2's nng_close can hang for good when a pipe is closed while one of
 * its operations is starting (nanomsg/nng#1543, #1813, fixed in 1.8).  A REQ
 * peer sends only after it has a reply, so once a REP socket answers nothing
 * more, nothing more arrives; the socket is then closed once nothing has
 * moved on it for a while.  Shared by the client socket (node/server.c) and
 * the replication socket (primary.c):
 *
 *   every aio callback       sl_quiet_cb_begin ... sl_quiet_cb_end
 *   every nng_ctx_send       sl_quiet_send_begin, and sl_quiet_send_end in
 *                            the callback that sees it done
 *   requests and replies     dropped while sl_quiet_on
 *   to stop answering        sl_quiet_start (or sl_quiet_wait, which starts)
 *   before nng_close         sl_quiet_wait
 */
#ifndef SL_QUIET_H
#define SL_QUIET_H

#include <stdatomic.h>
#include <stdint.h>

typedef struct sl_quiet {
	atomic_int on;                /* no reply is sent any more */
	atomic_int busy;              /* callbacks and sends under way */
	atomic_uint_fast64_t last_ms; /* when the socket last did anything */
} sl_quiet;

static inline int sl_quiet_on(sl_quiet *q)
{
	return atomic_load(&q->on);
}

/* Around every aio callback of the socket (quiet.c). */
void sl_quiet_cb_begin(sl_quiet *q);
void sl_quiet_cb_end(sl_quiet *q);

static inline void sl_quiet_send_begin(sl_quiet *q)
{
	atomic_fetch_add(&q->busy, 1);
}

static inline void sl_quiet_send_end(sl_quiet *q)
{
	atomic_fetch_sub(&q->busy, 1);
}

/* From now on no reply is sent (and requests are dropped). */
static inline void sl_quiet_start(sl_quiet *q)
{
	atomic_store(&q->on, 1);
}

/* Turns q on if it is not, then waits until nothing has moved on the socket
 * for idle_ms (max_ms at most). */
void sl_quiet_wait(sl_quiet *q, unsigned idle_ms, unsigned max_ms);

#endif
