/*
 * client.h — the shiplog client library: talk to a shiplogd over nng.
 *
 * One sl_client is one nng REQ socket dialed to one server URL
 * ("tcp://127.0.0.1:7420").  Every call sends one protobuf Request and waits
 * for its Response (docs/protocol.md), at most timeout_ms.
 *
 * Errors: every int-returning function returns SL_OK (0), SL_ENOTFOUND (1, an
 * ordinary result: key absent, deleted or expired) or a negative code: the
 * engine's SL_E* codes (storage/shiplog.h) as reported by the server, or the
 * protocol's (proto/status.h):
 *   SL_ETIMEDOUT  no response within the timeout
 *   SL_ECONN      could not connect / the connection dropped mid-request
 *   SL_ESHUTDOWN  the server is stopping and did not run the request
 *   SL_EPROTO     a malformed message (either side)
 *   SL_EBADOP     the server does not know the operation
 * sl_client_strerror() describes any code; sl_client_errmsg() gives the
 * server's own message for the last failed call (e.g. "key is 70000 bytes,
 * limit 65535").
 *
 * Writes are NOT idempotent and are never resent silently: the library turns
 * nng REQ's automatic resend off.  After SL_ETIMEDOUT or SL_ECONN on a write
 * its outcome is unknown — it may or may not have been applied; read the key
 * back (compare the seq) before retrying.  See docs/protocol.md.
 *
 * Threads: a handle may be shared between threads, but its calls are
 * serialised (one request in flight per handle).  Open one handle per thread
 * for concurrency.  What a handle remembers of its last call
 * (sl_client_errmsg, sl_client_last_acks, sl_client_primary) is the last
 * call's, whichever thread made it: a thread that needs its own call's
 * message must not share the handle.
 *
 * Memory: every pointer a function returns through an out-parameter is
 * malloc'd and owned by the caller unless the comment says "borrowed".
 * Values are never NUL-terminated by contract (binary-safe); a zero-length
 * value is still returned as a non-NULL pointer.
 */
#ifndef SL_CLIENT_H
#define SL_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "shiplog.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SL_CLIENT_DEFAULT_URL        "tcp://127.0.0.1:7420"
#define SL_CLIENT_DEFAULT_TIMEOUT_MS 5000

typedef struct sl_client sl_client;

/* ---- lifecycle -------------------------------------------------------- */

/* Dials url (nng URL: tcp://host:port, ipc:///path, …) and waits until the
 * connection is up.  timeout_ms bounds every later request (<= 0: default
 * 5000).  Connecting checks the server's handshake within timeout_ms
 * (a server that accepts and hangs: SL_ETIMEDOUT; not a shiplog node:
 * SL_EPROTO).  A dropped connection is re-dialed in the background; a
 * request made while it is down first checks that something answers at
 * the URL: if nothing does (refused, unreachable, no handshake) it fails at
 * once with that error (SL_ECONN, SL_ETIMEDOUT), else it waits (up to its
 * timeout) for the connection to come back.  So a caller riding out a
 * server's restart retries with a pause, not in a tight loop.
 * Errors: SL_EINVAL (NULL/bad url), SL_ECONN (refused/unreachable),
 * SL_ETIMEDOUT, SL_EPROTO, SL_ENOMEM.  On success *out owns the handle; release with
 * sl_client_close. */
int sl_client_open(const char *url, int timeout_ms, sl_client **out);

/* sl_client_open, and when it fails why says what it found when it can
 * ("Connection refused", "cannot resolve 'x': Name or service not known",
 * "port 99999 is not in 1..65535"; else empty). */
int sl_client_open_why(const char *url, int timeout_ms, sl_client **out, char *why, size_t cap);

/* The SL_E* code this library reports for an nng error (0: SL_OK; refused,
 * reset or closed connections: SL_ECONN). */
int sl_client_map_nng(int rv);

/* Closes the socket and frees the handle.  NULL is fine. */
void sl_client_close(sl_client *c);

/* Changes the per-request timeout (<= 0: default). */
void sl_client_set_timeout(sl_client *c, int timeout_ms);

/* Replication options carried by every following request (DESIGN.md §3).
 * min_seq (reads): the node answers only once it has applied seq >= min_seq
 * (0: no constraint; SL_EBEHIND when it cannot in time).  acks (writes): the
 * primary answers once this many followers have the write durably, waiting at
 * most acks_timeout_ms (0: none).  Servers without replication ignore acks
 * and answer SL_EBEHIND to a min_seq above their last seq. */
void sl_client_set_min_seq(sl_client *c, uint64_t min_seq);
/* A read answered SL_EBEHIND (the node had not applied min_seq within its
 * own --min-seq-wait-ms, or is a primary below it) is sent again until
 * wait_ms have passed since the first send (0, the default: answered at
 * once).  The CLI sets it to its --timeout. */
void sl_client_set_min_seq_wait(sl_client *c, int wait_ms);
void sl_client_set_acks(sl_client *c, uint32_t acks, uint32_t acks_timeout_ms);

/* The server's error message for this handle's last failed call, or "" —
 * borrowed, valid until the next call on c. */
const char *sl_client_errmsg(const sl_client *c);

/* Description of any status code (engine or protocol).  Never NULL, static. */
const char *sl_client_strerror(int rc);

/* ---- single operations ------------------------------------------------ */

/* Round trip that touches no storage.  SL_OK or a transport error. */
int sl_client_ping(sl_client *c);

/* Reads key.  On SL_OK *val_out is a malloc'd copy (caller frees) of *vlen_out
 * bytes; *seq_out (may be NULL) the seq of the record read.  SL_ENOTFOUND when
 * absent/deleted/expired (outputs untouched). */
int sl_client_get(sl_client *c, const void *key, size_t klen, void **val_out, size_t *vlen_out,
                  uint64_t *seq_out);

/* Stores key → val; *seq_out (may be NULL) gets the write's seq.
 * Errors: SL_EINVAL (empty key), SL_ETOOBIG (key/value over the server's
 * limits), SL_EREADONLY (a follower; sl_client_errmsg names the primary),
 * SL_EFAILED/SL_EIO/SL_ENOSPC (server disk), transport errors. */
int sl_client_put(sl_client *c, const void *key, size_t klen, const void *val, size_t vlen,
                  uint64_t *seq_out);

/* As sl_client_put, the key expiring ttl_ms after the server stores it
 * (0 = never). */
int sl_client_put_ttl(sl_client *c, const void *key, size_t klen, const void *val, size_t vlen,
                      uint64_t ttl_ms, uint64_t *seq_out);

/* Deletes key; *seq_out (may be NULL) gets the tombstone's seq.  SL_ENOTFOUND
 * when there was nothing to delete (no write happened). */
int sl_client_del(sl_client *c, const void *key, size_t klen, uint64_t *seq_out);

/* ---- multi-key results ------------------------------------------------ */

/* One key's answer in sl_client_mget / sl_client_scan / a pipeline. */
typedef struct sl_client_item {
	int status; /* SL_OK, SL_ENOTFOUND or an error (pipeline ops) */
	void *key;  /* scan: the key; mget/pipeline: NULL */
	size_t klen;
	void *val; /* get/mget/scan on SL_OK: the value; else NULL */
	size_t vlen;
	uint64_t seq; /* put/del: the write's seq; get/mget: the record's */
} sl_client_item;

/* Frees n items returned by sl_client_mget/sl_client_scan (the array and
 * every key/val).  NULL is fine. */
void sl_client_items_free(sl_client_item *items, size_t n);

/* Reads n keys in one request.  On SL_OK *items_out is a malloc'd array of n
 * items in request order (each SL_OK with val, SL_ENOTFOUND, or the error
 * the server met on that key: SL_EINVAL for an empty or oversized key,
 * SL_ECORRUPT, SL_EIO); free with
 * sl_client_items_free(items, n).  SL_ETOOBIG when the values together exceed
 * the server's message limit (ask for fewer keys).  n may be 0. */
int sl_client_mget(sl_client *c, size_t n, const void *const *keys, const size_t *klens,
                   sl_client_item **items_out);

/* One page of a prefix scan, keys in ascending byte order.
 * prefix/plen: keys starting with it (plen 0: all keys).  limit: at most this
 * many entries (0: server default 1000; the server also caps a page by bytes).
 * cursor/curlen: resume after this key (NULL/0: from the start) — pass the
 * previous page's *cursor_out.  keys_only: 1 to skip values (val NULL).
 * On SL_OK: *items_out and *n_out the entries (free with sl_client_items_free);
 * an entry whose value the server cannot send (over its message limit: a
 * value stored under a larger --max-value-bytes) has status SL_ETOOBIG and
 * val NULL, the others SL_OK;
 * *cursor_out a malloc'd cursor for the next page and *curlen_out its length,
 * or NULL/0 when the scan is complete.  Keys written during a multi-page scan
 * may or may not be seen; each key is returned at most once. */
int sl_client_scan(sl_client *c, const void *prefix, size_t plen, uint32_t limit,
                   const void *cursor, size_t curlen, int keys_only, sl_client_item **items_out,
                   size_t *n_out, void **cursor_out, size_t *curlen_out);

/* ---- stats and admin -------------------------------------------------- */

/* One named server statistic: a number, or text when text != NULL. */
typedef struct sl_client_stat {
	char *name; /* e.g. "keys", "live_bytes", "role" */
	uint64_t value;
	char *text; /* NULL for numbers; "primary", "always", … for text */
} sl_client_stat;

/* The server's statistics, in the server's order (stable names, see
 * docs/protocol.md): role, version, uptime_s, keys, tombstones, live_bytes,
 * dead_bytes, disk_bytes, segments, last_seq, synced_seq, keydir_bytes,
 * recovery_ms, corrupt_records, hints_loaded, segments_scanned, fsyncs, puts,
 * gets, deletes, compactions, failed, sync, max_key_bytes, max_value_bytes,
 * requests.  Clients must ignore names they do not know.  */
typedef struct sl_client_stats {
	size_t n;
	sl_client_stat *items;
} sl_client_stats;

/* Fetches the stats.  On SL_OK *out is malloc'd; free with
 * sl_client_stats_free. */
int sl_client_stats_get(sl_client *c, sl_client_stats **out);

/* The stat called name, borrowed from st, or NULL. */
const sl_client_stat *sl_client_stats_find(const sl_client_stats *st, const char *name);

/* NULL is fine. */
void sl_client_stats_free(sl_client_stats *st);

/* Runs a full compaction on the server and returns when it is done (use a
 * generous timeout).  Errors: the engine's (SL_ENOSPC, SL_EIO, SL_EREADONLY). */
int sl_client_compact(sl_client *c);

/* As sl_client_compact, and *out gets what the run did (free with
 * sl_client_stats_free): "reclaimed_bytes", "segments_before",
 * "segments_after", "dead_bytes_left" (dead bytes the run could not take:
 * in the active segment, or in segments held for the replication backlog).
 * A server that sends none gives an empty set. */
int sl_client_compact_stats(sl_client *c, sl_client_stats **out);

/* ---- replication (docs/replication.md) -------------------------------- */

/* Followers that acknowledged this handle's last write made with acks
 * (sl_client_set_acks), or -1 when the last response carried no count.
 * With acks set, a write that reached fewer followers than asked within
 * acks_timeout_ms returns SL_ETIMEDOUT — yet it WAS applied on the primary
 * (its seq is still returned through seq_out). */
int sl_client_last_acks(const sl_client *c);

/* After SL_EREADONLY from a follower: the primary's replication URL it
 * named, or "" — borrowed, valid until the next call on c. */
const char *sl_client_primary(const sl_client *c);

/* The node's content digest over its live keys (out: 32 hex digits + NUL)
 * and the number of keys digested (keys_out may be NULL).  Equal on nodes
 * with equal live contents. */
int sl_client_digest(sl_client *c, char out[33], uint64_t *keys_out);

/* Turns a follower into a primary with a new history id (hid, 33 bytes,
 * may be NULL).  SL_OK also when it already was one. */
int sl_client_promote(sl_client *c, char hid[33]);

/* Re-points the node at the primary whose replication URL is url (the node
 * becomes a follower if it was a primary).  SL_EINVAL for a bad URL. */
int sl_client_follow(sl_client *c, const char *url, char hid[33]);

/* A primary refuses writes (SL_EREADONLY) for ms milliseconds, 0: no
 * longer; it serves reads and its followers' fetches meanwhile (a
 * failover's fence).  *last_seq (may be NULL): the node's last seq, at or
 * above every write made before the pause.  SL_EREADONLY on a follower. */
int sl_client_pause_writes(sl_client *c, uint32_t ms, uint64_t *last_seq);

/* Like Redis WAIT: waits up to timeout_ms until `replicas` followers have
 * seq (0: the node's last seq) durably; *acks_out gets how many did (the
 * call succeeds either way).  The request is allowed timeout_ms more than
 * the handle's timeout. */
int sl_client_wait(sl_client *c, uint32_t replicas, uint64_t seq, uint32_t timeout_ms,
                   uint32_t *acks_out);

/* ---- pipeline: many operations in one Batch message -------------------- */

/* A pipeline queues get/put/del/ping operations on a client and sends them
 * as one Batch request; the server runs them in order and answers them all
 * in one response.  This is what makes many small operations cheap (nng's
 * per-message cost bounds single-operation messages).  Each queued
 * operation's key/value is copied at queue time.  The whole batch must fit
 * the server's message limit (max value bytes + 1 MiB by default).
 * A batch is not a transaction: operations before a failing one stay
 * applied, later ones still run.  But a batch holding any put or del sent
 * to a follower is refused whole (SL_EREADONLY, sl_client_primary names
 * the primary) before any of its operations runs. */
typedef struct sl_pipeline sl_pipeline;

/* New empty pipeline bound to c (c must outlive it).  SL_ENOMEM. */
int sl_pipeline_new(sl_client *c, sl_pipeline **out);

/* NULL is fine.  Frees queued operations and the last results. */
void sl_pipeline_free(sl_pipeline *p);

/* Queue one operation.  SL_OK, SL_EINVAL (NULL key) or SL_ENOMEM. */
int sl_pipeline_get(sl_pipeline *p, const void *key, size_t klen);
int sl_pipeline_put(sl_pipeline *p, const void *key, size_t klen, const void *val, size_t vlen,
                    uint64_t ttl_ms);
int sl_pipeline_del(sl_pipeline *p, const void *key, size_t klen);
int sl_pipeline_ping(sl_pipeline *p);

/* Operations queued and not yet executed. */
size_t sl_pipeline_len(const sl_pipeline *p);

/* Sends the queued operations as one Batch and waits for the response.
 * On SL_OK *items_out (borrowed: valid until the next exec/reset/free of p)
 * holds *n_out results in queue order, each with its own status (get: val,
 * seq; put/del: seq; ping: SL_OK), and the queue is empty again.  With
 * acks asked (sl_client_set_acks) and fewer followers in time, the same
 * comes back with SL_ETIMEDOUT: every operation ran (results and seqs
 * given, the queue emptied: do not send it again), the writes are short of
 * their acks (sl_client_last_acks).  Any other return, and SL_ETIMEDOUT
 * with *n_out 0, is a failure of the whole round trip (timeout, connection,
 * server shutdown, SL_ETOOBIG for a batch over the limit …): the queue is
 * kept so the caller can inspect or drop it (sl_pipeline_reset), and the
 * writes in it may or may not have been applied.
 * Executing an empty pipeline returns SL_OK with 0 results. */
int sl_pipeline_exec(sl_pipeline *p, const sl_client_item **items_out, size_t *n_out);

/* Drops the queued operations (and the last results). */
void sl_pipeline_reset(sl_pipeline *p);

#ifdef __cplusplus
}
#endif
#endif
