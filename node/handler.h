/*
 * handler.h — turns one encoded Request into one Response.
 *
 * This is the whole request path minus the transport: bound the sizes,
 * decode, check the arguments, call the engine, build the Response.  It is
 * a plain function of (node, bytes) so that the server's workers, the unit
 * tests and the libFuzzer target (tests/node/fuzz_handler.c) all drive the
 * same code.  sl_handle may block on disk (sl_put under --sync always,
 * sl_compact) or wait (--acks, --min-seq): call it only from the node's
 * worker threads.  sl_handle_inline runs only what cannot wait, and is the
 * one entry point for nng callback threads.
 */
#ifndef SL_NODE_HANDLER_H
#define SL_NODE_HANDLER_H

#include <stddef.h>
#include <stdint.h>

#include "node.h"
#include "shiplog.pb-c.h"

/* Bounds checked on the wire before protobuf-c allocates anything. */
#define SL_MAX_BATCH_OPS 65536u
#define SL_MAX_MGET_KEYS 65536u

/* A Response being built, and every allocation it points into. */
typedef struct sl_reply {
	Shiplog__Response resp;
	void **owned; /* freed by sl_reply_free */
	size_t nowned, capowned;
	size_t bytes;  /* running size of the values/keys added, for budgets */
	size_t budget; /* a batch's: what bytes may reach (sl_reply_sync_failed) */
	int wake_repl; /* a write: call sl_repl_wake_fetches once r is sent */
	/* A write with --acks run by sl_handle_defer or sl_handle_inline:
	 * made, not yet acknowledged.  The caller parks it (sl_repl_ack_park
	 * with these), then completes r with sl_reply_acked and sends it. */
	uint64_t ack_seq;
	uint32_t ack_want, ack_timeout_ms;
	int ack_is_wait; /* a WAIT parked the same way: answered OK with its acks */
	/* sl_handle_inline returned -1 for a read whose --min-seq this node
	 * has not applied yet: that seq (0: another reason).  The caller
	 * parks it (sl_repl_applied_park), then runs it again. */
	uint64_t wait_applied;
	char errbuf[512];
} sl_reply;

/* Decodes the len bytes at buf as a Request, runs it against n and fills r
 * (which the caller has not initialised; release with sl_reply_free whatever
 * the outcome).  Returns the operation (SL_OP_*) for metrics; the status is
 * r->resp.status.  Never fails: bad input gives an error status.  A write
 * also wakes the followers' parked fetches before it returns. */
int sl_handle(sl_node *n, const void *buf, size_t len, sl_reply *r);

/* As sl_handle, but under --sync always a put, delete or batch of writes
 * without --acks is only appended: *sync_seq gets the seq that must be
 * durable before the reply may be sent (0: send at once; sync_seq NULL:
 * exactly sl_handle).  The
 * caller then runs sl_sync_wait(db, seq) — one call covers many replies —,
 * sl_reply_sync_failed on each reply if it failed, sl_repl_notify_write, and
 * sends.  Lets the server answer many connections per fdatasync without a
 * thread blocked per write.  Unlike sl_handle it leaves waking the
 * followers to the caller: with r->wake_repl set, call
 * sl_repl_wake_fetches after sending r (the client does not wait for it). */
int sl_handle_defer(sl_node *n, const void *buf, size_t len, sl_reply *r, uint64_t *sync_seq);
/* With sync_seq != NULL a write with --acks does not wait for them either:
 * it returns with r->ack_want set (above). */

/* The nng callback's fast path: runs buf at once when it cannot wait (a
 * get, put, delete, multi-get or batch of them, at most 64 KiB, with
 * --acks only when not under --sync always (r->ack_want is then set, as
 * for sl_handle_defer), with a --min-seq already applied, while a write leaves room in
 * the active segment and no resync swaps the store) and returns its op with
 * r filled — and *sync_seq as sl_handle_defer under --sync always, for the
 * committer.  With r->wake_repl set (a write), the caller sends the reply
 * and then calls sl_repl_wake_fetches: followers' parked fetches are served
 * after the client has its answer.  Malformed requests are answered here
 * too.  Returns -1 (r
 * released, nothing changed) when the request is for a worker, or, with
 * r->wait_applied set, a read whose --min-seq is not applied yet.  Such
 * requests touch memory and the page cache (mapped segments), never fsync,
 * never wait for a follower or a condition. */
int sl_handle_inline(sl_node *n, const void *buf, size_t len, sl_reply *r, uint64_t *sync_seq);

/* Starts loading what the get, put or delete in the encoded Request at
 * buf will touch (nothing for other requests or bad bytes), in stages as
 * sl_prefetch (0: the key's keydir slots), sl_prefetch_entry (1: its
 * entry) and, for a get, sl_prefetch_value (2: the record): a front that
 * has read several requests runs each stage on all of them before the
 * next, then runs the requests, so that their cache misses overlap.
 * Caller holds n->db_lock (read). */
void sl_handle_prefetch(sl_node *n, const void *buf, size_t len, int stage);

/* Completes a reply left waiting for acks (r->ack_want > 0): `acked`
 * followers had the write when the wait ended.  Fewer than wanted makes a
 * write that was made (ack_seq > 0) SL_ETIMEDOUT; its seq stays.  Ends the
 * node's sl_repl_ack_begin.  The blocking path (sl_handle) ends its wait
 * here too. */
void sl_reply_acked(sl_node *n, sl_reply *r, uint32_t acked);

/* Turns every successful write in r (the top-level put/delete, or the
 * batch results carrying a seq) into status rc ("sync: …"). */
void sl_reply_sync_failed(sl_reply *r, int rc);

/* Fills r with status (and message) for the request in buf, whose id is
 * echoed when it can be decoded; used for SL_ESHUTDOWN while stopping. */
void sl_handle_reject(const void *buf, size_t len, int status, const char *msg, sl_reply *r);

/* Fills r (not initialised) with the SL_EBEHIND answer to the read at buf
 * whose --min-seq wait ended before the node applied min_seq: the node's
 * applied seq with it, as a wait in sl_handle_defer answers.  Returns the
 * operation (SL_OP_*). */
int sl_handle_behind(sl_node *n, const void *buf, size_t len, uint64_t min_seq, sl_reply *r);

/* Encoded size of r's Response, and the encoding itself into out (which has
 * room for sl_reply_size(r) bytes). */
size_t sl_reply_size(const sl_reply *r);
void sl_reply_pack(const sl_reply *r, void *out);

void sl_reply_free(sl_reply *r);

/* What sl_request_precheck saw of a request. */
typedef struct sl_request_shape {
	size_t batch_ops, mget_keys;
	int has_id;  /* a top-level id was read (the last one, as protobuf) */
	uint64_t id; /* before any malformed or over-bound part */
} sl_request_shape;

/* Walks the protobuf wire format of a Request without allocating, into
 * every sub-message the schema knows: checks that it is well-formed, counts
 * batch operations and mget keys, allows at most 64 occurrences of any
 * message's other fields (unknown ones included) and 64 unknown fields plus
 * 2 per batch op and mget key in all, and reads the top-level id (so a
 * refusal can echo it).  SL_OK, SL_EPROTO (malformed, or too many fields),
 * SL_ETOOBIG (over the bounds above).  shape may be NULL.  Exposed for
 * tests. */
int sl_request_precheck(const void *buf, size_t len, sl_request_shape *shape);

/* Finds the key of the get, put or delete in the encoded Request at buf
 * without decoding it (wire.c): 1 with *op the Request field
 * (SHIPLOG__REQUEST__OP_GET / _PUT / _DEL) and *key, *klen pointing into
 * buf; 0 for any other request or malformed bytes. */
int sl_request_key(const void *buf, size_t len, int *op, const uint8_t **key, size_t *klen);

#endif
