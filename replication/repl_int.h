/*
 * repl_int.h — what the replication files share (not a public API):
 * the persistent state (state.c), the sl_repl object, and the entry points
 * of the primary side (primary.c) and the follower side (follower.c).
 */
#ifndef SL_REPL_INT_H
#define SL_REPL_INT_H

#include <nng/nng.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "monotime.h"
#include "quiet.h"
#include "repl.h"
#include "shiplog.pb-c.h"

#define SL_HID_BYTES  16
#define SL_MAX_LINKS  64
#define SL_MAX_FOLLOW 64
#define SL_MAX_SNAPS  8

enum { ROLE_PRIMARY, ROLE_FOLLOWER };

/* One ancestor: history `id` ended at last_seq when its successor began. */
typedef struct repl_link {
	uint8_t id[SL_HID_BYTES];
	uint64_t last_seq;
} repl_link;

/* DIR/REPL, written whole: temp, fsync, rename, fsync dir. */
typedef struct repl_state {
	char node_id[17]; /* 16 hex */
	uint8_t hid[SL_HID_BYTES];
	int role;
	char primary[256]; /* follower: the URL followed */
	uint64_t floor;    /* the log is contiguous only above it (full resync head) */
	size_t nlinks;
	repl_link links[SL_MAX_LINKS]; /* oldest first */
} repl_state;

/* state.c */
/* SL_ENOTFOUND when absent; SL_ECORRUPT with *bad_line the first line
 * that does not read as repl_state_save writes it. */
int repl_state_load(const char *dir, repl_state *st, int *bad_line);
int repl_state_save(const char *dir, const repl_state *st);
int repl_random(void *buf, size_t n);
void repl_hex(const uint8_t *b, size_t n, char *out); /* out: 2n+1 */
int repl_rm_rf(const char *path);

typedef struct follower_ent {
	int used;
	char node_id[40];
	char address[128];
	uint64_t applied, durable;
	uint64_t last_seen_ms;
	uint64_t
	    caught_up_ms;  /* last time applied reached head (lag_ms beyond the write times kept) */
	uint64_t moved_ms; /* last time applied grew (or the entry was made) */
	int stalled_said;  /* its stall was logged (follower_stalled) */
} follower_ent;

/* A follower seen but whose applied seq has not moved for this many
 * --repl-timeout-ms while behind the head (its disk is full, say) no
 * longer holds the primary's log from compaction (tick). */
#define STALL_TIMEOUTS 10u

/* Whether e is behind head and has applied nothing for STALL_TIMEOUTS
 * --repl-timeout-ms. */
static inline int follower_stalled(const follower_ent *e, uint64_t head, uint64_t timeout_ms,
                                   uint64_t now)
{
	uint64_t moved = e->moved_ms > e->caught_up_ms ? e->moved_ms : e->caught_up_ms;
	return e->used && e->applied < head && now > moved &&
	       now - moved > STALL_TIMEOUTS * timeout_ms;
}

typedef struct snap_sess {
	uint64_t id;
	sl_snapshot *sn;
	uint64_t head;
	uint64_t next_chunk;
	uint64_t last_ms;
	int busy;
	char node[40]; /* the follower it is for ("" unknown) */
} snap_sess;

struct rctx;

struct sl_repl {
	sl_repl_opts o;
	char dir[4096];

	pthread_mutex_t admin;   /* one promote or follow at a time (they stop and
	                          * start the fetch loop; two joining it at once
	                          * was undefined, and could leave two loops) */
	pthread_mutex_t mu;      /* everything below unless said otherwise */
	pthread_cond_t cv;       /* state changes: applied, acks, parked fetches, stop */
	pthread_cond_t ack_cv;   /* a follower's durable seq moved (acks waiters only) */
	int acks_flushed;        /* sl_repl_ack_flush ran (the server stops): no ack wait blocks */
	uint64_t ack_gen;        /* bumped when the role changes: blocking ack waits end */
	uint64_t pause_until_ms; /* sl_repl_pause_writes: writes refused until (repl_now_ms) */
	repl_state st;
	/* The REPL this start found, when it wrote another (a new history, a
	 * --follow): written back if the start fails (sl_repl_start_failed),
	 * so that a refused start adds no link. */
	repl_state st_found;
	int st_rewrote;
	atomic_int role;
	atomic_uint_fast64_t head; /* the store's last seq, as writes report it */
	/* The engine's counters of the stores a full resync replaced (under
	 * mu): added to the current store's, so that counters never go back
	 * while the process lives (sl_repl_add_carried). */
	sl_stats carried;
	/* When writes happened, for the follower table's lag_ms (the age of
	 * the oldest write a follower lacks): (the first seq written in a
	 * millisecond, that millisecond) each time a write comes in a new
	 * millisecond, the last WT_SLOTS of them (at least 4 s of writes).
	 * Under wt_mu; wt_last_ms is read without it by every write. */
	pthread_mutex_t wt_mu;
	atomic_uint_fast64_t wt_last_ms;
	uint64_t wt_n; /* entries ever noted */
	struct {
		uint64_t seq, ms;
	} wt[4096];
	atomic_uint_fast64_t applied; /* follower: last seq applied */
	atomic_int ack_waiters;
	struct sl_repl_ack_wait *ack_parked; /* sl_repl_ack_park, earliest first not kept */
	uint64_t waker_wake_ms;              /* when the waker wakes next (0: unknown) */
	atomic_int applied_waiters;
	struct sl_repl_applied_wait *applied_parked; /* sl_repl_applied_park */
	int stopping;

	/* primary side (primary.c) */
	nng_socket sock;
	int sock_open;
	struct rctx *ctxs;
	int nctx;
	int lfd, lfd_open;       /* listen_front: the socket the node's front accepts on */
	atomic_int front_closed; /* sl_repl_front_stop ran: the front's requests get no reply */
	atomic_int front_live;   /* the front's requests not yet ended */
	struct rctx *runq_head, *runq_tail; /* ready for a worker */
	struct rctx *parked;                /* long polls waiting for records */
	atomic_int parked_any;              /* parked != NULL, for a peek without mu */
	sl_quiet quiet;                     /* going quiet before the close (repl_primary_stop) */
	pthread_cond_t runq_cv;
	pthread_t workers[4];
	int nworkers;
	pthread_t waker;
	int waker_started;
	follower_ent followers[SL_MAX_FOLLOW];
	snap_sess snaps[SL_MAX_SNAPS];
	uint64_t next_snap_id;
	uint64_t table_full_log_ms; /* last "the follower table is full" (table_update) */
	uint64_t protect_seq;
	atomic_uint_fast64_t bytes_served, records_served;

	/* follower side (follower.c) */
	pthread_t fetcher;
	int fetcher_started;
	int fetch_stop;   /* ask the fetch loop to end */
	nng_socket fsock; /* the loop's REQ socket (closed to interrupt it) */
	int fsock_open;
	nng_aio *fwait;     /* the aio the fetch loop waits on now (mu), for a stop to cancel */
	int fexit;          /* stopping for good: the socket is left open (drop_conn) */
	uint64_t fsock_gen; /* bumped at each open: contexts of older ones are dead */
	/* the plain connection (follower.c): used instead of fsock when fplain */
	int fplain;
	int ffd;           /* -1: none; set and cleared under mu */
	uint64_t ffd_gen;  /* bumped at each connect (under mu) */
	int fstop_efd;     /* written by repl_follower_stop: wakes the loop's waits */
	uint32_t fnext_id; /* the last request id */
	uint8_t *fbuf;     /* bytes read, not yet taken */
	size_t fcap, flen;
	atomic_size_t fbuf_bytes; /* fcap, for the stats (repl_read_buffer_bytes) */
	/* when the fetch loop's once-a-second look at the store is due
	 * (repl_now_ms): inline_apply leaves replies to the loop from then */
	_Atomic uint64_t fcheck_ms;
	char furl[256]; /* the primary it connects to */
	/* its reader thread (follower.c, plain_reader_main), started on
	 * first use and stopped as the fetch loop ends */
	pthread_t fr_thread;
	int fr_started, fr_quit;
	pthread_mutex_t fr_mu;
	pthread_cond_t fr_cv;
	struct pending *fr_job;
	const char *fstate; /* "connecting", "streaming", "resyncing" (repl_set_fstate) */
	uint64_t fdown_ms;  /* when the link last stopped streaming (mono ms); 0 while streaming */
	char ferr[512];     /* the fetch loop's last failure (repl_follow_fail), or "" */
	uint64_t ferr_ms;   /* when it happened */
	char primary_client[256]; /* follower: the primary's client URL, once known */
	uint64_t durable;         /* follower: highest seq known synced */
	atomic_uint_fast64_t resyncs_full, resyncs_partial;
	atomic_uint_fast64_t bytes_fetched, records_fetched, refused, apply_errors;
	atomic_uint_fast64_t min_seq_waits; /* sl_repl_applied_park parked a read */
	atomic_uint_fast64_t fetches;       /* follower: fetch replies that carried records */
};

void repl_log(sl_repl *r, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The fetch loop's state, with when it last stopped streaming.  Call with
 * r->mu held. */
void repl_set_fstate(sl_repl *r, const char *state);

/* Logs a failure of the fetch loop (a warning at level 2, an error at 3; 0:
 * not logged, a repeat) and keeps it for the stats (repl_last_error).  Call
 * without r->mu. */
void repl_follow_fail(sl_repl *r, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Before a full resync closes the store `old`: keeps its counters
 * (sl_repl_add_carried). */
void repl_carry_counters(sl_repl *r, sl_db *old);
uint64_t repl_now_ms(void);

/* Milliseconds from `then` to `now`, 0 when `then` is later: a thread that
 * read its clock before another stamped an entry must not see it as ~2^64
 * ms old (it would drop a follower that just fetched, or close a snapshot
 * being streamed). */
static inline uint64_t repl_ms_since(uint64_t now, uint64_t then)
{
	return now > then ? now - then : 0;
}

/* repl.c: parked ack waits (mu held).  acks_count counts the followers
 * with durable >= seq; ack_take moves the parked waits that are done (n
 * acks, or, with now > 0, past their deadline) onto *out, each with its
 * count in `acked`, and returns the earliest deadline of those left
 * (UINT64_MAX: none); ack_run runs the fns of such a list, mu not held. */
uint32_t repl_acks_count(sl_repl *r, uint64_t seq);
uint64_t repl_ack_take(sl_repl *r, uint64_t now, struct sl_repl_ack_wait **out);
void repl_ack_run(struct sl_repl_ack_wait *list);
/* Takes (mu held) the parked applied waits that are over: applied, this
 * node a primary now, or (now > 0) past their deadline; returns the next
 * deadline of those left (UINT64_MAX: none).  Run them with
 * repl_applied_run, mu not held. */
uint64_t repl_applied_take(sl_repl *r, uint64_t now, struct sl_repl_applied_wait **out);
void repl_applied_run(struct sl_repl_applied_wait *list);

/* primary.c */
int repl_primary_start(sl_repl *r, char *err, size_t cap);
void repl_primary_stop(sl_repl *r);
/* Closes every open snapshot (before the store is swapped).  mu held. */
void repl_snaps_close_all(sl_repl *r);
/* Serves every parked fetch that the head now satisfies, in the calling
 * thread (the write's: mu not held), or hands it to the primary's workers
 * when it is too big to serve inline: a write answers its long polls
 * without a hop through the waker thread or a worker. */
void repl_release_parked(sl_repl *r);
/* Whether follower `id` has a long poll parked here now (mu held): such a
 * follower is connected whatever --repl-timeout-ms says. */
int repl_parked_has(sl_repl *r, const char *id);

/* follower.c */
void repl_follower_start(sl_repl *r);             /* mu held */
void repl_follower_stop(sl_repl *r, int exiting); /* mu NOT held; joins the loop */

/* Splits a buffer of raw records; calls fn on each.  Returns SL_OK or
 * SL_ECORRUPT (a record's header does not fit the buffer or its limits),
 * or fn's first error. */
int repl_split_records(const uint8_t *p, size_t len, size_t max_rec,
                       int (*fn)(void *arg, const uint8_t *rec, size_t n, uint64_t seq), void *arg);

#endif
