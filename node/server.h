/*
 * server.h — shiplogd's transport: event-loop threads owning the clients'
 * TCP connections (server_ep.c) or an nng REP socket served by many
 * contexts (any nng URL), the node's worker threads, and the metrics HTTP
 * endpoint.
 *
 * Request path: the front that read a request runs it at once when it
 * cannot wait (sl_handle_inline: gets, puts, pings, ...), else a worker
 * runs it (sl_handle_defer); a write under --sync always waits for the
 * committer's group fdatasync, and the reply goes back to the front.  Shutdown: stop taking
 * requests (later ones get SL_ESHUTDOWN, new connections are refused),
 * finish those already taken, then close the socket.
 */
#ifndef SL_NODE_SERVER_H
#define SL_NODE_SERVER_H

#include <stddef.h>

#include "node.h"

/* Which front serves the clients (sl_server_opts.engine).  AUTO: epoll
 * for tcp:// URLs (tcp4://, tcp6://), nng for every other nng URL. */
enum { SL_SERVER_AUTO = 0, SL_SERVER_NNG = 1, SL_SERVER_EPOLL = 2 };

/* engine (AUTO resolved) for clients on url: SL_SERVER_NNG or _EPOLL. */
int sl_server_engine_for(int engine, const char *url);

/* With the epoll front, the node's replication listener (sl_repl_opts
 * listen_front: a tcp:// --repl-listen) is served by the same event loops:
 * followers' connections are accepted there and their requests handed to
 * sl_repl_serve. */

typedef struct sl_server_opts {
	const char *listen_url; /* nng URL for clients, e.g. tcp://127.0.0.1:7420 */
	/* SL_SERVER_NNG: an nng REP socket served by `contexts` contexts
	 * (any nng URL).  SL_SERVER_EPOLL: tcp:// only, served by io_threads
	 * threads that own their connections and speak nng's SP framing
	 * themselves (server_ep.c); clients cannot tell them apart. */
	int engine;
	int io_threads; /* SL_SERVER_EPOLL: event loops (0: 1) */
	/* SL_SERVER_EPOLL: a connection holding part of a message that has sent
	 * nothing more for this long is closed (0: never) */
	uint32_t frame_timeout_ms;
	const char *metrics_url; /* http://host:port, or NULL for none */
	int contexts;            /* requests served at once (nng contexts) */
	int workers;             /* worker threads running requests */
	int running;             /* of which at most this many run at once, unless
	                          * waiting (see workq.h); 0: workers */
	int drain_ms;            /* at stop: how long to wait for in-flight work */
	/* Called once every address is bound and before the first request is
	 * taken (so that whoever sees the server answer also sees what it
	 * does, e.g. the pidfile written); non-zero fails the start. */
	int (*ready)(void *arg, char *err, size_t cap);
	void *ready_arg;
} sl_server_opts;

typedef struct sl_server sl_server;

/* Starts serving n (which must outlive the server).  On failure returns
 * SL_EBUSY (an address is in use), SL_EINVAL (bad URL), SL_ENOMEM or SL_EIO,
 * with a one-line reason in err (cap bytes).  The socket's receive limit is
 * n->max_msg_bytes. */
int sl_server_start(sl_node *n, const sl_server_opts *o, sl_server **out, char *err, size_t cap);

/* "epoll" or "nng": the front serving the clients (AUTO resolved). */
const char *sl_server_transport(const sl_server *s);

/* The first half of a graceful stop: refuses new requests and waits (up to
 * drain_ms) for those in flight to be answered.  Does not close the socket,
 * so it cannot hang in nng (see main.c's watchdog).  Idempotent. */
void sl_server_drain(sl_server *s);

/* Graceful stop (drain, if not done yet, then close) and free.  NULL is fine.  After it returns no
 * thread of the server touches n. */
void sl_server_stop(sl_server *s);

#endif
