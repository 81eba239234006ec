/*
 * repl.h — replication: a primary streams its log to followers that replay
 * it (DESIGN.md §3, docs/replication.md).
 *
 * One sl_repl per node.  It owns:
 *  - the node's persistent replication state (DIR/REPL: node id, history id
 *    and its ancestors, role, primary URL, log floor);
 *  - the primary side: a REP socket on --repl-listen served by nng contexts
 *    and its own worker threads (fetches with long poll, snapshot chunks for
 *    full resyncs, the follower table, acks, the backlog kept out of
 *    compaction);
 *  - the follower side: one fetch-loop thread (fetch, apply, report the
 *    durable seq, reconnect with backoff, full resync into a sibling
 *    directory swapped in atomically).
 *
 * The store: the node keeps `sl_db *` in *o->dbp and guards every use of it
 * with a read lock on *o->db_lock; a full resync takes the write lock only
 * to close the old store, swap the directories and reopen (reads go on from
 * the old store while the snapshot loads).
 *
 * Errors: SL_* codes (storage/shiplog.h, proto/status.h).  Every function
 * accepts r == NULL (a node without replication) and then behaves as a
 * lone primary.
 */
#ifndef SL_REPL_H
#define SL_REPL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "shiplog.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SL_REPL_DEFAULT_URL "tcp://127.0.0.1:7520"

typedef struct sl_repl sl_repl;

/* Log levels passed to log_fn: as node/log.h (0 debug … 3 error). */
typedef void (*sl_repl_log_fn)(int level, const char *msg);

typedef struct sl_repl_opts {
	const char *dir;           /* the data directory (state in DIR/REPL) */
	const sl_options *db_opts; /* to open the resync store and reopen */
	sl_db **dbp;               /* the node's store pointer (swapped by full resyncs) */
	pthread_rwlock_t *db_lock; /* read: any use of *dbp; write: the swap */
	const char *listen_url;    /* NULL: serve no fetches */
	int listen_is_default;     /* listen_url is the default: none on a follower */
	/* listen_url (a tcp:// one) is served by the node's epoll front: r
	 * binds it (sl_repl_listen_fd), the front accepts the followers'
	 * connections, speaks nng's SP framing and hands each request to
	 * sl_repl_serve.  0: an nng REP socket serves it. */
	int listen_front;
	/* Follow a tcp:// primary over a plain socket speaking nng's SP REQ
	 * framing (follower.c, "the plain connection"); 0: an nng REQ socket. */
	int follow_plain;
	const char *follow_url;   /* non-NULL: follow it (else the persisted role) */
	const char *self_url;     /* this node's client URL (follower table, errors) */
	uint64_t backlog_bytes;   /* --repl-backlog-bytes */
	uint32_t min_replicas;    /* --min-replicas */
	uint32_t timeout_ms;      /* a follower unseen this long is disconnected */
	uint32_t min_seq_wait_ms; /* longest a min_seq read waits */
	uint32_t batch_us;        /* --repl-batch-us: a streaming follower's pause */
	size_t max_record_bytes;  /* largest raw record (key + value limits + header) */
	sl_repl_log_fn log_fn;
} sl_repl_opts;

/* Loads (or creates) DIR/REPL, discards a half-done resync directory,
 * listens on o->listen_url and starts following when the node is a
 * follower.  SL_EBUSY (address in use), SL_EINVAL (bad URL), SL_EIO
 * (state file), SL_ENOMEM; err gets one line.  The options' strings and
 * pointers must outlive r. */
int sl_repl_start(const sl_repl_opts *o, sl_repl **out, char *err, size_t cap);

/* Stops the fetch loop and the listener and frees r.  NULL is fine.  Call
 * after the client server has stopped and before the store is closed. */
/* The node's start failed after sl_repl_start (its client port, say): the
 * replication state the start found is written back (a restarted primary's
 * new history, a --follow), so a refused start changes nothing.  Call
 * before sl_repl_stop. */
void sl_repl_start_failed(sl_repl *r);

void sl_repl_stop(sl_repl *r);

/* ---- the replication listener on the node's epoll front ---------------- */

/* The largest replication request (a fetch or snapshot request): bigger
 * frames close their connection. */
#define SL_REPL_REQ_LIMIT (64u << 10)

/* How a request read by the front gets its reply.  room is asked at most
 * once, for the reply's sz bytes, which are packed there at once (NULL:
 * out of memory, the reply is dropped); end is called exactly once when
 * the request is over, replied to or dropped (stopping).  Both from any
 * thread: the one that called sl_repl_serve, a replication worker, a
 * write that released a parked fetch. */
typedef struct sl_repl_sender sl_repl_sender;
struct sl_repl_sender {
	uint8_t *(*room)(sl_repl_sender *s, size_t sz);
	void (*end)(sl_repl_sender *s);
};

/* The listening socket the front accepts followers on (-1: none: not
 * listening, or an nng socket serves the URL). */
int sl_repl_listen_fd(sl_repl *r);

/* Serves one request (len bytes at buf, a packed shiplog.ReplRequest;
 * copied before return if it must be kept) as the nng socket's are
 * served: inline when it can, else by a worker or parked (long poll). */
void sl_repl_serve(sl_repl *r, const void *buf, size_t len, sl_repl_sender *snd);

/* The front is closing: parked requests end unanswered, new ones are
 * refused, and it waits (timeout_ms at most) until every request it
 * handed over has ended.  1 when they all have; 0 when some are still
 * out (the front must then not free what their senders point at). */
int sl_repl_front_stop(sl_repl *r, int timeout_ms);

/* "primary" or "follower" (static). */
const char *sl_repl_role(sl_repl *r);
/* Where it serves fetches (NULL: nowhere). */
const char *sl_repl_listen_url(sl_repl *r);

/* SL_OK when writes are accepted now; else SL_EREADONLY with a message in
 * msg and, on a follower, the primary's replication URL copied into
 * primary (cap bytes; "" when unknown). */
int sl_repl_write_check(sl_repl *r, char *msg, size_t cap, char *primary, size_t pcap);

/* Recomputes the backlog limit handed to sl_compact_protect now (it is
 * otherwise refreshed every second): call before a manual compaction.
 * Takes the store read lock itself. */
void sl_repl_protect_update(sl_repl *r);

/* A write of seq was made: wakes fetches waiting for new records.  The
 * same as sl_repl_advance_head then sl_repl_wake_fetches. */
void sl_repl_notify_write(sl_repl *r, uint64_t seq);

/* The first half of sl_repl_notify_write: the head the node reports (and
 * that reads with min_seq see) moves to seq.  Call before the write is
 * acknowledged. */
void sl_repl_advance_head(sl_repl *r, uint64_t seq);

/* The second half: serves the fetches parked for records up to the head
 * (in this thread when they are small).  May run after the write's reply
 * has gone, so that the client does not wait for it. */
void sl_repl_wake_fetches(sl_repl *r);

/* An event loop's pass (node/server_ep.c): from sl_repl_defer_wakes on,
 * this thread's sl_repl_wake_fetches only notes the wake, and
 * sl_repl_wake_deferred (which ends the deferral) makes it once.  The
 * pass writes its clients' replies in between: they do not wait for the
 * fetches their writes released, and one fetch reply carries every
 * record the pass wrote instead of the first write's alone. */
void sl_repl_defer_wakes(void);
void sl_repl_wake_deferred(void);

/* The seq this node has applied (a primary: its head); 0 for r NULL. */
uint64_t sl_repl_applied_seq(sl_repl *r);

/* Waits up to timeout_ms for the node to have applied seq.  SL_OK, or
 * SL_EBEHIND with *applied (may be NULL) set to the applied seq. */
int sl_repl_wait_applied(sl_repl *r, uint64_t seq, uint32_t timeout_ms, uint64_t *applied);

/* The same wait without a thread blocked in it (a read's --min-seq that
 * a follower has not applied yet): a parked wait, embedded in its owner
 * (the server's request context).  fn runs exactly once, with ok = 1 when
 * the node has applied seq:
 *  - in sl_repl_applied_park itself when it has, when it is a primary
 *    (ok: its head is at seq), when r is NULL, timeout_ms is 0 or the node
 *    is stopping;
 *  - else in the follower's thread that applied seq (the fetch thread, or
 *    an nng callback applying a reply inline: fn must not wait);
 *  - else in the replication waker thread at the deadline (ok 0), or at
 *    sl_repl_ack_flush.
 * A read waiting this way costs no thread, and the record's arrival runs
 * it at once: the worker that waited in sl_repl_wait_applied added a
 * thread wakeup between the apply and the reply. */
typedef struct sl_repl_applied_wait {
	struct sl_repl_applied_wait *next;
	uint64_t seq;
	uint64_t deadline_ms;
	int ok;
	void (*fn)(struct sl_repl_applied_wait *w, int ok);
} sl_repl_applied_wait;

/* Returns 1 when w was parked, 0 when fn ran before the return. */
int sl_repl_applied_park(sl_repl *r, sl_repl_applied_wait *w, uint64_t seq, uint32_t timeout_ms,
                         void (*fn)(sl_repl_applied_wait *w, int ok));

/* Acks: call begin before a write that will wait for acks (so fetch
 * replies ask followers to sync at once), then wait, then end. */
void sl_repl_ack_begin(sl_repl *r);
void sl_repl_ack_end(sl_repl *r);

/* Waits up to timeout_ms until n followers report durable_seq >= seq.
 * *acked gets how many did.  SL_OK or SL_ETIMEDOUT. */
int sl_repl_wait_acks(sl_repl *r, uint64_t seq, uint32_t n, uint32_t timeout_ms, uint32_t *acked);

/* The same wait without a thread blocked in it: a parked ack wait.  Its
 * owner (the server's request context) embeds it; fn runs exactly once,
 * with how many followers report durable_seq >= seq:
 *  - in sl_repl_ack_park itself when n already do, timeout_ms is 0, r is
 *    NULL or the node is stopping;
 *  - else in the thread that serves the fetch bringing the n-th ack (an
 *    nng callback or a replication worker: fn must not wait);
 *  - else in the replication waker thread at the deadline, or at
 *    sl_repl_ack_flush.
 * Call sl_repl_ack_begin before the write (as for sl_repl_wait_acks); fn
 * calls sl_repl_ack_end. */
typedef struct sl_repl_ack_wait {
	struct sl_repl_ack_wait *next;
	uint64_t seq;
	uint32_t n;     /* followers wanted */
	uint32_t acked; /* followers that had it when the wait ended */
	uint64_t deadline_ms;
	void (*fn)(struct sl_repl_ack_wait *w, uint32_t acked);
} sl_repl_ack_wait;

void sl_repl_ack_park(sl_repl *r, sl_repl_ack_wait *w, uint64_t seq, uint32_t n,
                      uint32_t timeout_ms, void (*fn)(sl_repl_ack_wait *w, uint32_t acked));

/* Completes every parked ack wait now, with the acks counted so far, and
 * every parked applied wait with what it has (a stopping server, before
 * its request contexts go). */
void sl_repl_ack_flush(sl_repl *r);

/* Follower → primary: stops the fetch loop, records (old history id,
 * applied seq) and starts a new history.  hid gets the new id (33 bytes).
 * SL_OK (also when already primary: nothing changes). */
int sl_repl_promote(sl_repl *r, char hid[33], char *msg, size_t cap);

/* 1 when url can be a primary's replication URL: has "://", under 256
 * bytes, no whitespace or control bytes (it is kept in the line-based
 * DIR/REPL). */
int sl_repl_url_ok(const char *url);

/* Whether nng could ever dial url: a scheme it knows, an address of that
 * scheme's form, a port in 1..65535 (whether anyone answers is not
 * checked).  Else 0, and why in why.  A follower only retries its dial: an
 * unusable --follow or `follow` URL is refused up front. */
int sl_repl_url_dialable(const char *url, char *why, size_t cap);

/* Adds to s's counters (fsyncs, puts, gets, deletes, corrupt records,
 * compaction counts and bytes) those of the stores full resyncs replaced in
 * this process: sl_stats_get of the current store starts them from 0.
 * NULL r is fine. */
void sl_repl_add_carried(sl_repl *r, sl_stats *s);

/* Whether dialing `dial` reaches what `listen` listens on: the same URL,
 * or (tcp) the same port on an address the two hosts share — a listen on
 * every address (*, 0.0.0.0, ::) matches any address of this host
 * (loopback included).  Names are resolved; 0 when either cannot be. */
int sl_repl_same_endpoint(const char *dial, const char *listen);

/* Re-points the node at url (becoming a follower if it was a primary).
 * SL_EINVAL for an empty/bad url. */
int sl_repl_follow(sl_repl *r, const char *url, char *msg, size_t cap);

/* A primary refuses writes for ms milliseconds (0: no longer), serving
 * reads and fetches (a failover's fence: its followers catch up with a
 * head that no longer moves).  *last gets the store's last seq: every
 * write made before the pause is at or below it (taken under the store's
 * write lock).  SL_EREADONLY on a follower.  A role change ends it. */
int sl_repl_pause_writes(sl_repl *r, uint32_t ms, uint64_t *last, char *msg, size_t cap);

/* The current history id (33 bytes, hex). */
void sl_repl_history_id(sl_repl *r, char hid[33]);

typedef struct sl_repl_follower_stat {
	char node_id[40];
	char address[128];
	uint64_t applied_seq, durable_seq;
	uint64_t lag_records, lag_bytes, lag_ms; /* lag_bytes: log bytes after applied_seq;
	                                          * lag_ms: age of the oldest write not applied */
	uint64_t last_seen_ms_ago;
	int connected;
	int stalled; /* behind and applying nothing for 10x --repl-timeout-ms: the
	              * log is no longer kept for it */
} sl_repl_follower_stat;

typedef struct sl_repl_stats {
	const char *role;
	char history_id[33];
	char node_id[40];
	char primary[256];          /* follower: the URL followed */
	const char *state;          /* follower: "connecting", "streaming", "resyncing" */
	uint64_t link_down_ms;      /* follower: ms since it last streamed (0: streaming) */
	char last_error[512];       /* follower: the fetch loop's last failure, or "" */
	uint64_t last_error_ago_ms; /* how long ago */
	uint64_t applied_seq;
	uint64_t log_floor; /* below it this node cannot serve a partial resync */
	uint64_t resyncs_full, resyncs_partial;
	uint64_t bytes_fetched, records_fetched; /* follower side */
	uint64_t fetches;                        /* follower: replies that carried records */
	uint64_t bytes_served, records_served;   /* primary side */
	uint64_t refused_batches;                /* follower: fetch replies refused (bad records) */
	uint64_t apply_errors;  /* follower: fetch replies this node could not store (its disk) */
	uint64_t min_seq_waits; /* reads parked until this node applied their --min-seq */
	uint64_t read_buffer_bytes; /* follower: its connection's read buffer (tcp://) */
	uint64_t writes_paused_ms;  /* primary: how much longer writes are paused */
	uint64_t backlog_bytes, protect_seq;
	size_t n_followers;
	sl_repl_follower_stat *followers; /* malloc'd; sl_repl_stats_free */
} sl_repl_stats;

/* Fills *out.  Call with the store read lock (db_lock) held: per-follower
 * lag in bytes reads the log (sl_log_bytes_from). */
int sl_repl_stats_get(sl_repl *r, sl_repl_stats *out);
void sl_repl_stats_free(sl_repl_stats *s);

#ifdef __cplusplus
}
#endif
#endif
