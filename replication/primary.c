/*
 * primary.c — the primary side of replication: serve fetches out of the
 * log, stream snapshots for full resyncs, keep the follower table, keep the
 * backlog out of compaction.
 *
 * A request's life (one nng context, like node/server.c):
 *
 *     RECV --msg--> RUNQ --worker--> reply --------------------> SEND
 *                     ^                \-- nothing new: PARKED --+
 *                     +---- waker: new records or deadline ------+
 *
 * A request read by shiplogd's epoll front (sl_repl_serve: a tcp://
 * --repl-listen when the clients are on that front too) has the same life
 * in a malloc'd rctx with no nng context: its reply is packed into the
 * room its sl_repl_sender gives (on the front's own loop, straight into
 * the connection's buffer) and the rctx freed (front_reply).
 *
 * Invariants:
 *  1. nng callbacks (and the front's loops) never wait: they serve a fetch of a few records at the
 *     head themselves (serve_fetch inline: mapped segments only, a stack
 *     buffer, the store lock only if free) and move every other request
 *     onto the run queue of this file's worker threads (catch-up fetches,
 *     snapshot chunks).  A write that satisfies parked fetches serves
 *     them the same way (repl_release_parked).
 *  2. A parked fetch holds no thread and no store lock; the write that
 *     moves the head past its from_seq serves it (sl_repl_notify_write),
 *     or the waker thread does when its wait_ms ends.  A fetch parks
 *     only if the head, read after it is listed, is still below its
 *     from_seq: a write either sees it listed or is seen.
 *  3. Records are served only from the contiguous log above the node's
 *     floor (the head of its last full resync): below it the store holds a
 *     snapshot, not a log, and the follower must full-resync.
 *  4. A follower continues (partial resync) only if its history is ours or
 *     one of our ancestors and it has not applied past the point where that
 *     history ended; otherwise it gets SL_ESTALE and full-resyncs.
 *  5. Every store access holds the store read lock (the node may swap the
 *     store under the write lock when it is itself a follower).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "probe.h"
#include "repl_int.h"
#include "status.h"

enum { ST_RECV, ST_WORK, ST_SEND };

#define SNAP_IDLE_MS 30000
/* With every slot taken, a new full resync takes the slot idle the
 * longest once it has been idle this long: a follower loading a snapshot
 * asks for its next chunk as soon as it has written the last one, so only
 * a stuck or made-up one is idle for seconds (8 SnapFetches under made-up
 * node ids held every slot, and a real follower waited SNAP_IDLE_MS). */
#define SNAP_STEAL_MS   5000
#define MAX_WAIT_MS     10000
#define CHUNK_DEFAULT   (4u << 20)
#define CHUNK_MAX       (64u << 20)
#define FORGET_TIMEOUTS 10u /* a follower unseen this many --repl-timeout-ms is dropped */

typedef struct rctx {
	struct rctx *next;
	sl_repl *r;
	nng_ctx ctx;
	nng_aio *aio;
	int state;
	Shiplog__ReplRequest *q; /* decoded; kept while parked */
	int parked_once;
	uint64_t deadline_ms;
	sl_repl_sender *snd; /* read by the node's epoll front (sl_repl_serve); else NULL */
} rctx;

/* ---- replies --------------------------------------------------------- */

/* A request read by the node's front ends here: its reply (NULL: none,
 * dropped) packed straight into the room the front gives, and c freed. */
static void front_reply(rctx *c, const Shiplog__ReplReply *rep)
{
	sl_repl *r = c->r;
	sl_repl_sender *snd = c->snd;
	if (rep != NULL && !sl_quiet_on(&r->quiet) && !atomic_load(&r->front_closed)) {
		size_t sz = shiplog__repl_reply__get_packed_size(rep);
		uint8_t *room = snd->room(snd, sz); /* NULL: the front says why */
		if (room != NULL) {
			shiplog__repl_reply__pack(rep, room);
		}
	}
	snd->end(snd);
	free(c);
	atomic_fetch_sub(&r->front_live, 1);
}

static void send_reply(rctx *c, Shiplog__ReplReply *rep)
{
	if (c->q != NULL) {
		shiplog__repl_request__free_unpacked(c->q, NULL);
		c->q = NULL;
	}
	c->parked_once = 0;
	if (c->snd != NULL) {
		front_reply(c, rep);
		return;
	}
	if (sl_quiet_on(&c->r->quiet)) {
		c->state = ST_RECV; /* idle: see repl_primary_stop */
		return;
	}
	size_t sz = shiplog__repl_reply__get_packed_size(rep);
	nng_msg *m = NULL;
	if (nng_msg_alloc(&m, sz) != 0) {
		repl_log(c->r, 3, "out of memory for a %zu-byte fetch reply", sz);
		c->state = ST_RECV;
		nng_ctx_recv(c->ctx, c->aio);
		return;
	}
	shiplog__repl_reply__pack(rep, nng_msg_body(m));
	c->state = ST_SEND;
	sl_quiet_send_begin(&c->r->quiet); /* ended by ctx_cb */
	nng_aio_set_msg(c->aio, m);
	nng_ctx_send(c->ctx, c->aio);
}

static void reply_fetch_status(rctx *c, int status, const char *msg)
{
	Shiplog__ReplReply rep = SHIPLOG__REPL_REPLY__INIT;
	Shiplog__FetchReply f = SHIPLOG__FETCH_REPLY__INIT;
	f.has_status = 1;
	f.status = status;
	f.error = (char *)msg;
	f.has_head_seq = 1;
	f.head_seq = atomic_load(&c->r->head);
	f.client_url = (char *)(c->r->o.self_url ? c->r->o.self_url : "");
	rep.op_case = SHIPLOG__REPL_REPLY__OP_FETCH;
	rep.fetch = &f;
	send_reply(c, &rep);
}

static void reply_snap_status(rctx *c, int status, const char *msg)
{
	Shiplog__ReplReply rep = SHIPLOG__REPL_REPLY__INIT;
	Shiplog__SnapChunk s = SHIPLOG__SNAP_CHUNK__INIT;
	s.has_status = 1;
	s.status = status;
	s.error = (char *)msg;
	rep.op_case = SHIPLOG__REPL_REPLY__OP_SNAP;
	rep.snap = &s;
	send_reply(c, &rep);
}

/* The history chain as protobuf links (pointers into the arrays given). */
typedef struct links_buf {
	Shiplog__HistoryLink l[SL_MAX_LINKS];
	Shiplog__HistoryLink *p[SL_MAX_LINKS];
	repl_link copy[SL_MAX_LINKS];
	size_t n;
	uint8_t hid[SL_HID_BYTES];
} links_buf;

static void links_fill(sl_repl *r, links_buf *b)
{
	pthread_mutex_lock(&r->mu);
	b->n = r->st.nlinks;
	memcpy(b->copy, r->st.links, b->n * sizeof(repl_link));
	memcpy(b->hid, r->st.hid, SL_HID_BYTES);
	pthread_mutex_unlock(&r->mu);
	for (size_t i = 0; i < b->n; i++) {
		shiplog__history_link__init(&b->l[i]);
		b->l[i].has_id = 1;
		b->l[i].id.data = b->copy[i].id;
		b->l[i].id.len = SL_HID_BYTES;
		b->l[i].has_last_seq = 1;
		b->l[i].last_seq = b->copy[i].last_seq;
		b->p[i] = &b->l[i];
	}
}

/* ---- the follower table ----------------------------------------------- */

/* What a fetch says its follower has applied: what precedes from_seq, or
 * less for a fetch sent ahead of storing the last reply. */
static uint64_t fetch_applied(const Shiplog__Fetch *f)
{
	uint64_t from = f->has_from_seq ? f->from_seq : 1;
	uint64_t applied = from > 0 ? from - 1 : 0;
	if (f->has_applied_seq && f->applied_seq < applied) {
		applied = f->applied_seq;
	}
	return applied;
}

/* Whether the table's (possibly cut) id `stored` is id: ids are kept cut
 * to the table's width, so a longer one is compared as cut (compared whole,
 * each fetch of a 50-character id took a new slot, the same id in each). */
static int same_id(const char *stored, const char *id)
{
	size_t w = sizeof(((follower_ent *)0)->node_id) - 1;
	return strncmp(stored, id, w) == 0 && (strlen(id) >= w || stored[strlen(id)] == '\0');
}

/* Records what a fetch says about its follower.  mu held. */
static void table_update(sl_repl *r, const Shiplog__Fetch *f, uint64_t now)
{
	const char *id = f->node_id != NULL && f->node_id[0] ? f->node_id : "?";
	follower_ent *e = NULL, *oldest = NULL;
	for (int i = 0; i < SL_MAX_FOLLOW; i++) {
		follower_ent *x = &r->followers[i];
		if (x->used && same_id(x->node_id, id)) {
			e = x;
			break;
		}
		if (!x->used) {
			if (oldest == NULL || oldest->used) {
				oldest = x;
			}
		} else if (oldest == NULL ||
		           (oldest->used && x->last_seen_ms < oldest->last_seen_ms)) {
			oldest = x;
		}
	}
	if (e == NULL && oldest->used &&
	    repl_ms_since(now, oldest->last_seen_ms) < r->o.timeout_ms) {
		/* Full of connected followers: none is pushed out for a newcomer
		 * (64 made-up node ids did that to every real one: their acks,
		 * the log kept for them).  The newcomer is served, not tracked. */
		if (repl_ms_since(now, r->table_full_log_ms) >= 10000) {
			r->table_full_log_ms = now;
			repl_log(r, 2,
			         "the follower table is full (%d followers connected): %s is "
			         "served but not tracked (its acks do not count, the log is not "
			         "kept for it)",
			         SL_MAX_FOLLOW, id);
		}
		return;
	}
	if (e == NULL) {
		e = oldest;
		memset(e, 0, sizeof(*e));
		e->used = 1;
		snprintf(e->node_id, sizeof(e->node_id), "%s", id);
		e->caught_up_ms = now;
		e->moved_ms = now;
	}
	uint64_t was = e->applied;
	if (f->address != NULL) {
		snprintf(e->address, sizeof(e->address), "%s", f->address);
	}
	e->applied = fetch_applied(f);
	e->durable = f->has_durable_seq ? f->durable_seq : 0;
	if (e->durable > e->applied) {
		e->durable = e->applied;
	}
	e->last_seen_ms = now;
	if (e->applied >= atomic_load(&r->head)) {
		e->caught_up_ms = now;
	}
	if (e->applied > was) {
		e->moved_ms = now;
		e->stalled_said = 0;
	}
	if (atomic_load(&r->ack_waiters) > 0) {
		pthread_cond_broadcast(&r->ack_cv);
	}
}

/* The entry of follower id, or NULL.  mu held. */
static follower_ent *table_find(sl_repl *r, const char *id)
{
	for (int i = 0; id != NULL && i < SL_MAX_FOLLOW; i++) {
		follower_ent *x = &r->followers[i];
		if (x->used && same_id(x->node_id, id)) {
			return x;
		}
	}
	return NULL;
}

static void table_touch(sl_repl *r, const char *id, uint64_t now)
{
	follower_ent *x = table_find(r, id);
	if (x != NULL) {
		x->last_seen_ms = now;
	}
}

/* Zeroes a follower's positions (it is resyncing onto this history) while
 * keeping it in the table as seen.  mu held. */
static void table_forget(sl_repl *r, const char *id, uint64_t now)
{
	follower_ent *x = table_find(r, id);
	if (x != NULL) {
		x->applied = 0;
		x->durable = 0;
		x->last_seen_ms = now;
		x->moved_ms = now;
		x->stalled_said = 0;
	}
}

/* ---- fetch -------------------------------------------------------------- */

/* Invariant 4.  mu held.  SL_OK: continue from from_seq; SL_ESTALE. */
static int ancestry_check(sl_repl *r, const Shiplog__Fetch *f, uint64_t head)
{
	uint64_t applied = f->from_seq - 1;
	if (applied == 0) {
		return SL_OK; /* an empty store is a prefix of every history */
	}
	if (!f->has_history_id || f->history_id.len != SL_HID_BYTES) {
		return SL_ESTALE;
	}
	if (memcmp(f->history_id.data, r->st.hid, SL_HID_BYTES) == 0) {
		return applied <= head ? SL_OK : SL_ESTALE;
	}
	/* This node holds an ancestor's records up to the lowest link from it
	 * on (history_begin clamps them; a REPL written before it did may
	 * not be). */
	uint64_t bound = head;
	for (size_t i = r->st.nlinks; i > 0; i--) {
		const repl_link *l = &r->st.links[i - 1];
		bound = l->last_seq < bound ? l->last_seq : bound;
		if (memcmp(f->history_id.data, l->id, SL_HID_BYTES) == 0) {
			return applied <= bound ? SL_OK : SL_ESTALE;
		}
	}
	return SL_ESTALE;
}

/* The worker thread's fetch buffer, kept between fetches: a fresh 4 MiB
 * allocation per fetch cost a page fault and a page clear per 4 KiB. */
static __thread uint8_t *tl_buf;
static __thread size_t tl_cap;

static uint8_t *fetch_buf(size_t cap)
{
	if (tl_cap < cap) {
		free(tl_buf);
		tl_buf = malloc(cap);
		tl_cap = tl_buf != NULL ? cap : 0;
	}
	return tl_buf;
}

/* After a reply: a buffer grown past what this node's limits need (for a
 * record written under larger ones) is given back. */
static void fetch_buf_trim(const sl_repl *r)
{
	size_t keep = r->o.max_record_bytes > CHUNK_MAX ? r->o.max_record_bytes : CHUNK_MAX;
	if (tl_cap > keep) {
		free(tl_buf);
		tl_buf = NULL;
		tl_cap = 0;
	}
}

/* Serves c's fetch with the store read lock held (invariant 5).  With
 * ibuf (an inline serve, see serve_fetch), records go through the icap
 * bytes at ibuf, and -1 is returned, nothing sent nor parked, when the
 * first record waiting does not fit.  Else returns 1 when c was parked (no
 * reply yet), 0 when answered. */
static int serve_fetch_locked(rctx *c, uint8_t *ibuf, size_t icap)
{
	sl_repl *r = c->r;
	const Shiplog__Fetch *f = c->q->fetch;
	uint64_t now = repl_now_ms();
	if (!f->has_from_seq || f->from_seq == 0) {
		reply_fetch_status(c, SL_EPROTO, "fetch without from_seq");
		return 0;
	}
	/* The head as the store has it: a write's notification may lag the
	 * records a previous fetch already returned. */
	sl_repl_advance_head(r, sl_last_seq(*r->o.dbp));
	pthread_mutex_lock(&r->mu);
	int role = atomic_load(&r->role);
	char primary[256];
	snprintf(primary, sizeof(primary), "%s", r->st.primary);
	uint64_t floor = r->st.floor;
	uint64_t head = atomic_load(&r->head);
	int rc = ancestry_check(r, f, head);
	if (rc == SL_OK && f->from_seq <= floor) {
		rc = SL_ESTALE; /* invariant 3 */
	}
	if (role != ROLE_PRIMARY) {
		/* refused below: a follower keeps no table (a node pointed at a
		 * follower showed there as its connected follower) */
	} else if (rc != SL_OK) {
		/* A follower off this history (an old primary ahead of us, say)
		 * holds none of our writes past the fork: its positions must not
		 * count as acks while it resyncs. */
		table_forget(r, f->node_id, now);
	} else if (!c->parked_once) {
		table_update(r, f, now);
	} else {
		table_touch(r, f->node_id, now);
	}
	/* Writes parked for acks that this fetch's durable_seq completes are
	 * answered from here: no thread waits for them. */
	sl_repl_ack_wait *acked = NULL;
	if (r->ack_parked != NULL && rc == SL_OK && role == ROLE_PRIMARY && !c->parked_once) {
		repl_ack_take(r, 0, &acked);
	}
	pthread_mutex_unlock(&r->mu);
	repl_ack_run(acked);
	if (role != ROLE_PRIMARY) {
		char msg[320];
		snprintf(msg, sizeof(msg), "this node is a follower (of %s), not a primary",
		         primary[0] ? primary : "?");
		reply_fetch_status(c, SL_EREADONLY, msg);
		return 0;
	}
	if (rc != SL_OK) {
		reply_fetch_status(c, rc, "history diverged or seq not in the log: full resync");
		return 0;
	}
	size_t cap = f->has_max_bytes && f->max_bytes ? f->max_bytes : CHUNK_DEFAULT;
	if (cap > CHUNK_MAX) {
		cap = CHUNK_MAX;
	}
	if (cap < r->o.max_record_bytes) {
		cap = r->o.max_record_bytes;
	}
	uint8_t *buf = ibuf;
	if (ibuf != NULL) {
		cap = icap;
	} else if ((buf = fetch_buf(cap)) == NULL) {
		reply_fetch_status(c, SL_ENOMEM, "out of memory");
		return 0;
	}
	size_t len = 0;
	uint64_t next = f->from_seq;
	rc = sl_log_read(*r->o.dbp, f->from_seq, buf, cap, &len, &next);
	if (rc == SL_ETOOBIG && ibuf == NULL) {
		/* A record bigger than this node's limits allow now (written
		 * before a restart with smaller ones): sent alone, as it is. */
		cap = len;
		len = 0;
		next = f->from_seq;
		rc = (buf = fetch_buf(cap)) == NULL
		         ? SL_ENOMEM
		         : sl_log_read(*r->o.dbp, f->from_seq, buf, cap, &len, &next);
		if (rc == SL_ENOMEM) {
			reply_fetch_status(c, SL_ENOMEM, "out of memory");
			return 0;
		}
		if (rc != SL_OK) {
			fetch_buf_trim(r); /* the error reply needs none of it */
		}
	}
	head = sl_last_seq(*r->o.dbp);
	if (ibuf != NULL &&
	    (rc == SL_ETOOBIG || (rc == SL_OK && len == 0 && head >= f->from_seq))) {
		return -1; /* a record bigger than the inline buffer */
	}
	if (rc == SL_ESTALE) {
		reply_fetch_status(c, SL_ESTALE, "seq no longer in the backlog: full resync");
		return 0;
	}
	if (rc != SL_OK) {
		reply_fetch_status(c, rc, sl_strerror(rc));
		return 0;
	}
	uint32_t wait = f->has_wait_ms ? f->wait_ms : 0;
	if (wait > MAX_WAIT_MS) {
		wait = MAX_WAIT_MS;
	}
	if (len == 0 && wait > 0 && (!c->parked_once || now < c->deadline_ms)) {
		pthread_mutex_lock(&r->mu);
		if (!c->parked_once) {
			c->parked_once = 1;
			c->deadline_ms = now + wait;
		}
		if (!r->stopping && !(c->snd != NULL && atomic_load(&r->front_closed))) {
			c->next = r->parked;
			r->parked = c;
			atomic_store(&r->parked_any, 1);
			/* A write that moved the head past from_seq since the read
			 * above either sees parked_any (sl_repl_wake_fetches: it
			 * releases this fetch) or is seen here (both seq_cst), and
			 * then this fetch is answered now, empty: the follower
			 * fetches again at once. */
			if (atomic_load(&r->head) < f->from_seq) {
				/* The waker sleeps until its next deadline: woken only
				 * for a sooner one.  It was woken for every fetch
				 * parked, hundreds of times a second under a 50-client
				 * load, each a context switch on the event loop's core. */
				if (r->waker_wake_ms == 0 || c->deadline_ms < r->waker_wake_ms) {
					pthread_cond_broadcast(&r->cv);
				}
				pthread_mutex_unlock(&r->mu);
				return 1;
			}
			r->parked = c->next;
			atomic_store(&r->parked_any, r->parked != NULL);
		}
		pthread_mutex_unlock(&r->mu);
	}
	links_buf lb;
	links_fill(r, &lb);
	Shiplog__ReplReply rep = SHIPLOG__REPL_REPLY__INIT;
	Shiplog__FetchReply fr = SHIPLOG__FETCH_REPLY__INIT;
	fr.has_status = 1;
	fr.status = SL_OK;
	fr.has_records = 1;
	fr.records.data = buf;
	fr.records.len = len;
	fr.has_head_seq = 1;
	fr.head_seq = head;
	fr.has_history_id = 1;
	fr.history_id.data = lb.hid;
	fr.history_id.len = SL_HID_BYTES;
	fr.n_history = lb.n;
	fr.history = lb.p;
	fr.client_url = (char *)(r->o.self_url ? r->o.self_url : "");
	fr.has_waited = c->parked_once;
	fr.waited = c->parked_once;
	fr.has_next_seq = len > 0;
	fr.next_seq = next;
	if (atomic_load(&r->ack_waiters) > 0) {
		fr.has_sync_seq = 1;
		fr.sync_seq = head;
	}
	rep.op_case = SHIPLOG__REPL_REPLY__OP_FETCH;
	rep.fetch = &fr;
	if (len > 0) {
		size_t nrec = 0;
		for (size_t off = 0; off + 28 <= len;) {
			const uint8_t *p = buf + off;
			size_t kl = (size_t)p[6] | (size_t)p[7] << 8;
			size_t vl = (size_t)p[8] | (size_t)p[9] << 8 | (size_t)p[10] << 16 |
			            (size_t)p[11] << 24;
			off += 28 + kl + vl;
			nrec++;
		}
		atomic_fetch_add(&r->bytes_served, len);
		atomic_fetch_add(&r->records_served, nrec);
	}
	send_reply(c, &rep);
	fetch_buf_trim(r);
	return 0;
}

/* A fetch asking for at most this many records past the head is served
 * inline: where it arrives (an nng callback, invariant 1) or by the write
 * that releases it from parking, through a buffer on the stack.  It reads
 * only mapped segments and never waits; anything bigger (catch-up) goes to
 * the workers and their 8 MiB buffers. */
#define INLINE_RECORDS 256
#define INLINE_BYTES   (64u << 10)

/* serve_fetch_locked under the store read lock.  Inline (try_inline set):
 * -1 when the lock is not free at once (a resync swapping the store) or
 * the records do not fit INLINE_BYTES, having sent and parked nothing. */
static int serve_fetch(rctx *c, int try_inline)
{
	sl_repl *r = c->r;
	if (!try_inline) {
		pthread_rwlock_rdlock(r->o.db_lock);
		int rc = serve_fetch_locked(c, NULL, 0);
		pthread_rwlock_unlock(r->o.db_lock);
		return rc;
	}
	const Shiplog__Fetch *f = c->q->fetch;
	if (f->has_from_seq && f->from_seq > 0 &&
	    atomic_load(&r->head) >= f->from_seq + INLINE_RECORDS) {
		return -1;
	}
	if (pthread_rwlock_tryrdlock(r->o.db_lock) != 0) {
		return -1;
	}
	uint8_t buf[INLINE_BYTES];
	int rc = serve_fetch_locked(c, buf, sizeof(buf));
	pthread_rwlock_unlock(r->o.db_lock);
	return rc;
}

/* ---- snapshots (full resync source) ------------------------------------ */

void repl_snaps_close_all(sl_repl *r)
{
	for (int i = 0; i < SL_MAX_SNAPS; i++) {
		if (r->snaps[i].sn != NULL) {
			sl_snapshot_close(r->snaps[i].sn);
			memset(&r->snaps[i], 0, sizeof(r->snaps[i]));
		}
	}
}

static void serve_snap(rctx *c)
{
	sl_repl *r = c->r;
	const Shiplog__SnapFetch *s = c->q->snap;
	uint64_t now = repl_now_ms();
	if (atomic_load(&r->role) != ROLE_PRIMARY) {
		reply_snap_status(c, SL_EREADONLY, "this node is a follower, not a primary");
		return;
	}
	size_t cap = s->has_max_bytes && s->max_bytes ? s->max_bytes : CHUNK_DEFAULT;
	if (cap > CHUNK_MAX) {
		cap = CHUNK_MAX;
	}
	if (cap < r->o.max_record_bytes) {
		cap = r->o.max_record_bytes;
	}
	uint64_t id = s->has_snap_id ? s->snap_id : 0;
	snap_sess *ss = NULL;
	pthread_rwlock_rdlock(r->o.db_lock);
	pthread_mutex_lock(&r->mu);
	if (id == 0) {
		/* A follower that asks for a new snapshot has given up on the one
		 * it had (a failed load, a disk-full retry): close that now rather
		 * than at its idle timeout, or a few retries held every slot. */
		for (int i = 0; s->node_id != NULL && s->node_id[0] && i < SL_MAX_SNAPS; i++) {
			snap_sess *o = &r->snaps[i];
			/* idle for a second at least: a follower streaming asks for
			 * its next chunk at once, so two nodes sharing an id (a
			 * copied data directory) do not close each other's */
			if (o->sn != NULL && !o->busy && same_id(o->node, s->node_id) &&
			    repl_ms_since(now, o->last_ms) >= 1000) {
				repl_log(r, 2,
				         "snapshot %llu abandoned by %s (it asked for a new one); "
				         "closed",
				         (unsigned long long)o->id, o->node);
				sl_snapshot_close(o->sn);
				memset(o, 0, sizeof(*o));
			}
		}
		snap_sess *idlest = NULL;
		for (int i = 0; i < SL_MAX_SNAPS && ss == NULL; i++) {
			snap_sess *o = &r->snaps[i];
			if (o->sn == NULL && !o->busy) {
				ss = o;
			} else if (o->sn != NULL && !o->busy &&
			           (idlest == NULL || o->last_ms < idlest->last_ms)) {
				idlest = o;
			}
		}
		if (ss == NULL && idlest != NULL &&
		    repl_ms_since(now, idlest->last_ms) >= SNAP_STEAL_MS) {
			repl_log(r, 2,
			         "snapshot %llu of %s idle for %llu ms, every slot taken: closed "
			         "for %s's full resync",
			         (unsigned long long)idlest->id, idlest->node,
			         (unsigned long long)repl_ms_since(now, idlest->last_ms),
			         s->node_id ? s->node_id : "?");
			sl_snapshot_close(idlest->sn);
			memset(idlest, 0, sizeof(*idlest));
			ss = idlest;
		}
		if (ss != NULL) {
			/* Opening waits for a running compaction (compact_mu): not
			 * under mu, which every write and fetch takes briefly. The
			 * slot stays reserved (busy, no snapshot) meanwhile. */
			ss->busy = 1;
			pthread_mutex_unlock(&r->mu);
			sl_snapshot *sn = NULL;
			uint64_t head = 0;
			int rc = sl_snapshot_open(*r->o.dbp, &sn, &head);
			pthread_mutex_lock(&r->mu);
			ss->busy = 0;
			if (rc != SL_OK) {
				pthread_mutex_unlock(&r->mu);
				pthread_rwlock_unlock(r->o.db_lock);
				reply_snap_status(c, rc, "cannot open a snapshot");
				return;
			}
			ss->sn = sn;
			ss->head = head;
			/* random, not a count from 1 at each start: a chunk request
			 * queued for a primary that restarted meanwhile could match
			 * another follower's new snapshot of the same number (and
			 * the follower mix chunks of two snapshots) */
			uint64_t sid = 0;
			if (repl_random(&sid, sizeof(sid)) != 0 || sid == 0) {
				sid = (repl_now_ms() << 20) ^ ++r->next_snap_id;
			}
			ss->id = sid;
			ss->next_chunk = 0;
			snprintf(ss->node, sizeof(ss->node), "%s", s->node_id ? s->node_id : "");
			repl_log(r, 1, "full resync for %s: snapshot %llu at seq %llu",
			         s->node_id ? s->node_id : "?", (unsigned long long)ss->id,
			         (unsigned long long)head);
		}
	} else {
		char node[sizeof(r->snaps[0].node)]; /* as stored: cut to fit */
		snprintf(node, sizeof(node), "%s", s->node_id ? s->node_id : "");
		for (int i = 0; i < SL_MAX_SNAPS && ss == NULL; i++) {
			if (r->snaps[i].sn != NULL && r->snaps[i].id == id &&
			    strcmp(r->snaps[i].node, node) == 0) {
				ss = &r->snaps[i];
			}
		}
	}
	if (ss == NULL || ss->busy || (s->has_chunk ? s->chunk : 0) != ss->next_chunk) {
		pthread_mutex_unlock(&r->mu);
		pthread_rwlock_unlock(r->o.db_lock);
		reply_snap_status(c, id == 0 ? SL_EBUSY : SL_EINVAL,
		                  id == 0 ? "too many snapshots open; retry later"
		                          : "unknown snapshot or chunk out of order; restart");
		return;
	}
	ss->busy = 1;
	ss->last_ms = now;
	pthread_mutex_unlock(&r->mu);

	uint8_t *buf = fetch_buf(cap);
	size_t len = 0;
	int done = 0;
	int rc = buf ? sl_snapshot_read(ss->sn, buf, cap, &len, &done) : SL_ENOMEM;
	if (rc == SL_ETOOBIG) {
		/* a record bigger than this node's limits allow now: alone */
		cap = len;
		len = 0;
		buf = fetch_buf(cap);
		rc = buf ? sl_snapshot_read(ss->sn, buf, cap, &len, &done) : SL_ENOMEM;
	}
	links_buf lb;
	links_fill(r, &lb);
	pthread_mutex_lock(&r->mu);
	ss->busy = 0;
	ss->next_chunk++;
	ss->last_ms = repl_now_ms();
	uint64_t sid = ss->id, head = ss->head;
	if (done || rc != SL_OK) {
		sl_snapshot_close(ss->sn);
		memset(ss, 0, sizeof(*ss));
	}
	pthread_mutex_unlock(&r->mu);
	pthread_rwlock_unlock(r->o.db_lock);
	if (rc != SL_OK) {
		fetch_buf_trim(r);
		reply_snap_status(c, rc, "snapshot read failed");
		return;
	}
	Shiplog__ReplReply rep = SHIPLOG__REPL_REPLY__INIT;
	Shiplog__SnapChunk ch = SHIPLOG__SNAP_CHUNK__INIT;
	ch.has_status = 1;
	ch.status = SL_OK;
	ch.has_snap_id = 1;
	ch.snap_id = sid;
	ch.has_head_seq = 1;
	ch.head_seq = head;
	ch.has_history_id = 1;
	ch.history_id.data = lb.hid;
	ch.history_id.len = SL_HID_BYTES;
	ch.n_history = lb.n;
	ch.history = lb.p;
	ch.has_records = 1;
	ch.records.data = buf;
	ch.records.len = len;
	ch.has_done = 1;
	ch.done = done != 0;
	rep.op_case = SHIPLOG__REPL_REPLY__OP_SNAP;
	rep.snap = &ch;
	atomic_fetch_add(&r->bytes_served, len);
	send_reply(c, &rep);
	fetch_buf_trim(r);
}

/* ---- workers, waker, callbacks ----------------------------------------- */

static void tick(sl_repl *r, uint64_t now);

/* Runs c's request, decoded by ctx_cb (or kept while it was parked). */
static void run_ctx(rctx *c)
{
	switch (c->q->op_case) {
	case SHIPLOG__REPL_REQUEST__OP_FETCH:
		serve_fetch(c, 0);
		break;
	case SHIPLOG__REPL_REQUEST__OP_SNAP:
		serve_snap(c);
		break;
	default:
		reply_fetch_status(c, SL_EBADOP, "unknown replication request");
		break;
	}
}

static void runq_push(sl_repl *r, rctx *c) /* mu held */
{
	c->next = NULL;
	if (r->runq_tail != NULL) {
		r->runq_tail->next = c;
	} else {
		r->runq_head = c;
	}
	r->runq_tail = c;
	pthread_cond_signal(&r->runq_cv);
}

static void *worker_main(void *arg)
{
	sl_repl *r = arg;
	pthread_mutex_lock(&r->mu);
	for (;;) {
		while (r->runq_head == NULL && !r->stopping) {
			pthread_cond_wait(&r->runq_cv, &r->mu);
		}
		rctx *c = r->runq_head;
		if (c == NULL) {
			break;
		}
		r->runq_head = c->next;
		if (r->runq_head == NULL) {
			r->runq_tail = NULL;
		}
		pthread_mutex_unlock(&r->mu);
		run_ctx(c); /* stopping: send_reply drops the reply */
		pthread_mutex_lock(&r->mu);
	}
	pthread_mutex_unlock(&r->mu);
	free(tl_buf);
	tl_buf = NULL;
	tl_cap = 0;
	return NULL;
}

/* Keeps the backlog (and what connected followers still need) out of
 * compaction; closes abandoned snapshots. */
void sl_repl_protect_update(sl_repl *r)
{
	if (r != NULL) {
		tick(r, repl_now_ms());
	}
}

static void tick(sl_repl *r, uint64_t now)
{
	pthread_rwlock_rdlock(r->o.db_lock);
	uint64_t seq = sl_log_backlog_seq(*r->o.dbp, r->o.backlog_bytes);
	uint64_t head = atomic_load(&r->head);
	pthread_mutex_lock(&r->mu);
	/* A follower whose long poll is parked here is alive, and caught up
	 * while it has applied the head (else, with a short
	 * --repl-timeout-ms, an idle follower looked stalled). */
	for (rctx *c = r->parked; c != NULL; c = c->next) {
		const Shiplog__Fetch *f = c->q->fetch;
		follower_ent *e = table_find(r, f->node_id);
		if (e == NULL) {
			continue;
		}
		e->last_seen_ms = now;
		if (fetch_applied(f) >= head) {
			e->caught_up_ms = now;
		}
	}
	for (int i = 0; i < SL_MAX_FOLLOW; i++) {
		follower_ent *e = &r->followers[i];
		if (e->used && repl_ms_since(now, e->last_seen_ms) >
		                   FORGET_TIMEOUTS * (uint64_t)r->o.timeout_ms) {
			/* Gone (stopped, or re-pointed at another primary): drop it
			 * from the table and the stats; it is added again if it
			 * comes back. */
			repl_log(r, 1,
			         "follower %s (%s) not seen for %llu s; dropped from the table",
			         e->node_id, e->address[0] ? e->address : "?",
			         (unsigned long long)(repl_ms_since(now, e->last_seen_ms) / 1000));
			memset(e, 0, sizeof(*e));
			continue;
		}
		if (!e->used || repl_ms_since(now, e->last_seen_ms) > r->o.timeout_ms) {
			continue;
		}
		if (follower_stalled(e, head, r->o.timeout_ms, now)) {
			/* Seen, but storing nothing (its disk is full, say): it
			 * would pin the log here until this disk filled too.  It
			 * resumes from the log if what it needs is still there,
			 * else with a full resync, like a follower that was away. */
			if (!e->stalled_said) {
				e->stalled_said = 1;
				repl_log(
				    r, 1,
				    "follower %s (%s) has applied nothing for %llu s (at seq %llu "
				    "of %llu): the log is no longer kept for it",
				    e->node_id, e->address[0] ? e->address : "?",
				    (unsigned long long)(STALL_TIMEOUTS *
				                         (uint64_t)r->o.timeout_ms / 1000),
				    (unsigned long long)e->applied, (unsigned long long)head);
			}
			continue;
		}
		if (e->applied + 1 < seq) {
			seq = e->applied + 1;
		}
	}
	if (seq == 0) {
		seq = 1;
	}
	r->protect_seq = seq;
	for (int i = 0; i < SL_MAX_SNAPS; i++) {
		snap_sess *s = &r->snaps[i];
		if (s->sn != NULL && !s->busy && repl_ms_since(now, s->last_ms) > SNAP_IDLE_MS) {
			repl_log(r, 2, "snapshot %llu abandoned by its follower; closed",
			         (unsigned long long)s->id);
			sl_snapshot_close(s->sn);
			memset(s, 0, sizeof(*s));
		}
	}
	pthread_mutex_unlock(&r->mu);
	sl_compact_protect(*r->o.dbp, seq);
	pthread_rwlock_unlock(r->o.db_lock);
}

/* Takes every parked fetch the head satisfies or, with now > 0, whose
 * wait is over: onto *out when out is given, else to the workers.  Returns
 * the earliest deadline of those still parked (UINT64_MAX: none).  mu
 * held. */
static uint64_t release_due(sl_repl *r, uint64_t now, rctx **out)
{
	uint64_t head = atomic_load(&r->head), next = UINT64_MAX;
	rctx **pp = &r->parked;
	while (*pp != NULL) {
		rctx *c = *pp;
		if (head >= c->q->fetch->from_seq || (now > 0 && now >= c->deadline_ms)) {
			*pp = c->next;
			if (out != NULL) {
				c->next = *out;
				*out = c;
			} else {
				runq_push(r, c);
			}
			continue;
		}
		if (c->deadline_ms < next) {
			next = c->deadline_ms;
		}
		pp = &c->next;
	}
	atomic_store(&r->parked_any, r->parked != NULL);
	return next;
}

int repl_parked_has(sl_repl *r, const char *id)
{
	for (rctx *c = r->parked; id != NULL && c != NULL; c = c->next) {
		if (c->q != NULL && c->q->fetch != NULL && c->q->fetch->node_id != NULL &&
		    strcmp(c->q->fetch->node_id, id) == 0) {
			return 1;
		}
	}
	return 0;
}

void repl_release_parked(sl_repl *r)
{
	rctx *list = NULL;
	pthread_mutex_lock(&r->mu);
	release_due(r, 0, &list);
	pthread_mutex_unlock(&r->mu);
	/* Served here, by the write that satisfied them: no hop to a worker
	 * for the records it just appended. */
	while (list != NULL) {
		rctx *c = list;
		list = c->next;
		if (serve_fetch(c, 1) < 0) {
			pthread_mutex_lock(&r->mu);
			runq_push(r, c);
			pthread_mutex_unlock(&r->mu);
		}
	}
}

static void *waker_main(void *arg)
{
	sl_repl *r = arg;
	uint64_t next_tick = 0;
	pthread_mutex_lock(&r->mu);
	while (!r->stopping) {
		uint64_t now = repl_now_ms();
		uint64_t wake = release_due(r, now, NULL);
		sl_repl_ack_wait *expired = NULL;
		uint64_t ack_wake = repl_ack_take(r, now, &expired);
		if (expired != NULL) {
			/* writes whose --acks timed out: answered with the count */
			pthread_mutex_unlock(&r->mu);
			repl_ack_run(expired);
			pthread_mutex_lock(&r->mu);
			continue;
		}
		if (ack_wake < wake) {
			wake = ack_wake;
		}
		sl_repl_applied_wait *aexp = NULL;
		uint64_t applied_wake = repl_applied_take(r, now, &aexp);
		if (aexp != NULL) {
			/* reads whose --min-seq wait ended (or this node was
			 * promoted meanwhile): answered */
			pthread_mutex_unlock(&r->mu);
			repl_applied_run(aexp);
			pthread_mutex_lock(&r->mu);
			continue;
		}
		if (applied_wake < wake) {
			wake = applied_wake;
		}
		if (wake > now + 1000) {
			wake = now + 1000;
		}
		if (now >= next_tick) {
			pthread_mutex_unlock(&r->mu);
			tick(r, now);
			pthread_mutex_lock(&r->mu);
			next_tick = now + 1000;
			continue;
		}
		if (next_tick < wake) {
			wake = next_tick;
		}
		struct timespec ts;
		uint64_t d = wake > now ? wake - now : 1;
		r->waker_wake_ms = now + d; /* sl_repl_ack_park wakes it sooner */
		sl_mono_after(&ts, d);
		pthread_cond_timedwait(&r->cv, &r->mu, &ts);
	}
	/* Stopping: parked fetches go to the workers, whose replies are
	 * dropped (repl_primary_stop). */
	while (r->parked != NULL) {
		rctx *c = r->parked;
		r->parked = c->next;
		runq_push(r, c);
	}
	atomic_store(&r->parked_any, 0);
	/* and writes parked for acks are answered with the count so far */
	sl_repl_ack_wait *left = NULL;
	repl_ack_take(r, UINT64_MAX, &left);
	pthread_mutex_unlock(&r->mu);
	repl_ack_run(left);
	return NULL;
}

/* Decodes the request (len bytes at buf) into c and serves it: a small
 * fetch right here (invariant 1: it cannot wait), the rest by the workers.
 * Requests are at most SL_REPL_REQ_LIMIT bytes (NNG_OPT_RECVMAXSZ, or the
 * front's frame limit): decoding one here is cheap. */
static void dispatch(rctx *c, const void *buf, size_t len)
{
	sl_repl *r = c->r;
	c->q = shiplog__repl_request__unpack(NULL, len, buf);
	if (c->q == NULL) {
		reply_fetch_status(c, SL_EPROTO, "malformed replication request");
		return;
	}
	if (c->q->op_case == SHIPLOG__REPL_REQUEST__OP_FETCH && serve_fetch(c, 1) >= 0) {
		return;
	}
	pthread_mutex_lock(&r->mu);
	runq_push(r, c);
	pthread_mutex_unlock(&r->mu);
}

static void ctx_cb_run(rctx *c);

static void ctx_cb(void *arg)
{
	rctx *c = arg;
	sl_repl *r = c->r;
	sl_quiet_cb_begin(&r->quiet);
	ctx_cb_run(c);
	sl_quiet_cb_end(&r->quiet);
}

static void ctx_cb_run(rctx *c)
{
	sl_repl *r = c->r;
	int rv = nng_aio_result(c->aio);
	if (c->state == ST_SEND) {
		sl_quiet_send_end(&r->quiet); /* begun by send_reply */
		if (rv != 0) {
			nng_msg_free(nng_aio_get_msg(c->aio));
			nng_aio_set_msg(c->aio, NULL);
		}
		c->state = ST_RECV;
		if (rv == NNG_ECLOSED || sl_quiet_on(&r->quiet)) {
			return;
		}
		nng_ctx_recv(c->ctx, c->aio);
		return;
	}
	if (rv != 0) {
		if (rv != NNG_ECLOSED && !sl_quiet_on(&r->quiet)) {
			nng_ctx_recv(c->ctx, c->aio);
		}
		return;
	}
	if (sl_quiet_on(&r->quiet)) {
		/* stopping: a request gets no reply, so its follower sends no
		 * more (repl_primary_stop) */
		nng_msg_free(nng_aio_get_msg(c->aio));
		nng_aio_set_msg(c->aio, NULL);
		c->state = ST_RECV;
		return;
	}
	c->state = ST_WORK;
	nng_msg *m = nng_aio_get_msg(c->aio);
	nng_aio_set_msg(c->aio, NULL);
	dispatch(c, nng_msg_body(m), nng_msg_len(m));
	nng_msg_free(m);
}

void sl_repl_serve(sl_repl *r, const void *buf, size_t len, sl_repl_sender *snd)
{
	rctx *c = NULL;
	if (sl_quiet_on(&r->quiet) || atomic_load(&r->front_closed) ||
	    (c = calloc(1, sizeof(*c))) == NULL) {
		snd->end(snd); /* stopping (or out of memory): no reply, as the nng socket */
		return;
	}
	atomic_fetch_add(&r->front_live, 1);
	c->r = r;
	c->snd = snd;
	c->state = ST_WORK;
	dispatch(c, buf, len);
}

int sl_repl_front_stop(sl_repl *r, int timeout_ms)
{
	if (r == NULL) {
		return 1;
	}
	atomic_store(&r->front_closed, 1);
	rctx *list = NULL;
	pthread_mutex_lock(&r->mu);
	for (rctx **pp = &r->parked; *pp != NULL;) {
		rctx *c = *pp;
		if (c->snd != NULL) {
			*pp = c->next;
			c->next = list;
			list = c;
		} else {
			pp = &c->next;
		}
	}
	atomic_store(&r->parked_any, r->parked != NULL);
	pthread_mutex_unlock(&r->mu);
	while (list != NULL) {
		rctx *c = list;
		list = c->next;
		send_reply(c, NULL); /* a front's: ended unanswered */
	}
	/* what the workers hold ends in front_reply too, unsent */
	for (int waited = 0; atomic_load(&r->front_live) > 0; waited++) {
		if (waited >= timeout_ms) {
			return 0;
		}
		struct timespec ts = {0, 1000000L};
		nanosleep(&ts, NULL);
	}
	return 1;
}

int sl_repl_listen_fd(sl_repl *r)
{
	return r != NULL && r->lfd_open ? r->lfd : -1;
}

int repl_primary_start(sl_repl *r, char *err, size_t cap)
{
	pthread_cond_init(&r->runq_cv, NULL);
	if (pthread_create(&r->waker, NULL, waker_main, r) != 0) {
		snprintf(err, cap, "cannot start the replication thread");
		return SL_EIO;
	}
	r->waker_started = 1;
	for (int i = 0; i < 4; i++) {
		if (pthread_create(&r->workers[i], NULL, worker_main, r) != 0) {
			snprintf(err, cap, "cannot start replication workers");
			return SL_EIO;
		}
		r->nworkers++;
	}
	if (r->o.listen_url == NULL || r->o.listen_url[0] == '\0') {
		return SL_OK;
	}
	if (r->o.listen_front) {
		/* served by the node's epoll front (sl_repl_serve) */
		int rc = sl_tcp_listen(r->o.listen_url, &r->lfd, err, cap);
		if (rc != SL_OK) {
			char why[400];
			snprintf(why, sizeof(why), "%s", err);
			if (strncmp(why, "cannot listen on ", 17) ==
			    0) { /* as the nng path says it */
				snprintf(err, cap, "cannot listen for replication on %s", why + 17);
			} else {
				snprintf(err, cap, "replication: %s", why);
			}
			return rc;
		}
		r->lfd_open = 1;
		return SL_OK;
	}
	int rv = nng_rep0_open(&r->sock);
	if (rv != 0) {
		snprintf(err, cap, "cannot open replication socket: %s", nng_strerror(rv));
		return SL_EIO;
	}
	r->sock_open = 1;
	nng_socket_set_size(r->sock, NNG_OPT_RECVMAXSZ, SL_REPL_REQ_LIMIT);
	r->nctx = 64;
	r->ctxs = calloc((size_t)r->nctx, sizeof(rctx));
	if (r->ctxs == NULL) {
		r->nctx = 0;
		snprintf(err, cap, "out of memory");
		return SL_ENOMEM;
	}
	for (int i = 0; i < r->nctx; i++) {
		rctx *c = &r->ctxs[i];
		c->r = r;
		if ((rv = nng_aio_alloc(&c->aio, ctx_cb, c)) != 0 ||
		    (rv = nng_ctx_open(&c->ctx, r->sock)) != 0) {
			snprintf(err, cap, "cannot open replication context: %s", nng_strerror(rv));
			return SL_ENOMEM;
		}
	}
	rv = nng_listen(r->sock, r->o.listen_url, NULL, 0);
	if (rv != 0) {
		snprintf(err, cap, "cannot listen for replication on %s: %s", r->o.listen_url,
		         nng_strerror(rv));
		return rv == NNG_EADDRINUSE                                            ? SL_EBUSY
		       : rv == NNG_EADDRINVAL || rv == NNG_EINVAL || rv == NNG_ENOTSUP ? SL_EINVAL
		                                                                       : SL_EIO;
	}
	for (int i = 0; i < r->nctx; i++) {
		r->ctxs[i].state = ST_RECV;
		nng_ctx_recv(r->ctxs[i].ctx, r->ctxs[i].aio);
	}
	return SL_OK;
}

void repl_primary_stop(sl_repl *r)
{
	/* The socket goes quiet first (quiet.h): no reply is sent any more
	 * (parked fetches and new requests are dropped), so the followers stop
	 * sending, and it is closed once nothing has moved on it for 50 ms.
	 * Without it nng_close hung in half of the stops of a primary whose
	 * followers were streaming.  The followers see the connection close
	 * and reconnect, as after a crash. */
	sl_quiet_start(&r->quiet);
	pthread_mutex_lock(&r->mu);
	r->stopping = 1;
	pthread_cond_broadcast(&r->cv);
	pthread_cond_broadcast(&r->ack_cv);
	pthread_mutex_unlock(&r->mu);
	if (r->waker_started) {
		pthread_join(r->waker, NULL);
	}
	/* Workers drain the run queue (dropping what is in it), then exit. */
	pthread_mutex_lock(&r->mu);
	pthread_cond_broadcast(&r->runq_cv);
	pthread_mutex_unlock(&r->mu);
	for (int i = 0; i < r->nworkers; i++) {
		pthread_join(r->workers[i], NULL);
	}
	if (r->sock_open) {
		sl_quiet_wait(&r->quiet, 50, 1000);
		nng_close(r->sock);
	}
	for (int i = 0; i < r->nctx; i++) {
		if (r->ctxs[i].aio != NULL) {
			nng_aio_stop(r->ctxs[i].aio);
		}
	}
	for (int i = 0; i < r->nctx; i++) {
		nng_aio_free(r->ctxs[i].aio);
		if (r->ctxs[i].q != NULL) {
			shiplog__repl_request__free_unpacked(r->ctxs[i].q, NULL);
		}
	}
	free(r->ctxs);
	if (r->lfd_open) {
		close(r->lfd);
		r->lfd_open = 0;
	}
	pthread_mutex_lock(&r->mu);
	repl_snaps_close_all(r);
	pthread_mutex_unlock(&r->mu);
	pthread_cond_destroy(&r->runq_cv);
}
