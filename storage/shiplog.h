/*
 * shiplog.h — the embedded storage engine's public API.
 *
 * A data directory holds append-only log segments and their hint files; an
 * in-memory hash index (the keydir) maps each key to its latest record.  The
 * record with the highest sequence number for a key wins, never file order.
 *
 * Threads: every function is safe to call from many threads on one sl_db.
 * Errors: SL_OK (0), SL_ENOTFOUND (1, an ordinary result) or a negative SL_E*
 * code; sl_strerror() names each.  After a failed write or fsync the handle is
 * "failed": writes return SL_EFAILED until the directory is reopened.
 *
 * Memory: values returned by sl_get() are malloc'd and owned by the caller
 * (free()).  Pointers passed to an sl_scan() callback are borrowed and valid
 * only during that call.
 *
 * Replication (see DESIGN.md §3) builds on two engine calls declared at the
 * end: sl_log_read() copies raw records in seq order out of the segments still
 * holding them contiguously, and sl_apply_raw() appends a verified raw record
 * keeping its seq.  Both work on the exact record bytes of storage/format.h.
 */
#ifndef SHIPLOG_H
#define SHIPLOG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
	SL_OK = 0,
	SL_ENOTFOUND = 1,   /* key absent, deleted or expired */
	SL_EINVAL = -1,     /* bad argument (empty key, NULL where not allowed) */
	SL_ETOOBIG = -2,    /* key or value over the configured limit */
	SL_ECORRUPT = -3,   /* checksum mismatch or malformed data on disk */
	SL_EIO = -4,        /* an I/O call failed */
	SL_ENOSPC = -5,     /* the disk is full */
	SL_EBUSY = -6,      /* the data directory is in use by another handle */
	SL_EREADONLY = -7,  /* writes are not accepted here */
	SL_ENOMEM = -8,     /* out of memory */
	SL_EFAILED = -9,    /* an earlier write or fsync failed; reopen */
	SL_ENOTSUP = -10,   /* version or feature not supported */
	SL_ESTALE = -11,    /* requested seq no longer in the log (replication) */
	SL_EBEHIND = -12,   /* node has not applied the requested seq yet */
	SL_ETIMEDOUT = -13, /* deadline passed */
	SL_EPROTO = -14,    /* malformed message (network layers) */
};

typedef struct sl_db sl_db;

typedef enum { SL_SYNC_NO, SL_SYNC_EVERYSEC, SL_SYNC_ALWAYS } sl_sync;

struct sl_io; /* the I/O seam, storage/io.h; tests swap it to inject faults */

/* The segment size a bulk load writes at least (a follower's full resync
 * loads the primary's snapshot into a store opened with it, whatever its own
 * segment_bytes). */
#define SL_LOAD_SEGMENT_BYTES (64ull << 20)

/* The largest segment_bytes: a segment's offsets are 32-bit, and a segment
 * may run one record (up to 1 GiB + 1 MiB of framing) past segment_bytes. */
#define SL_MAX_SEGMENT_BYTES (0xffffffffull - ((1ull << 30) + (1ull << 20)))

/* The longest key any store holds (the record format's 16-bit length):
 * max_key_bytes bounds new puts below it; gets and deletes take up to it. */
#define SL_MAX_KEY_BYTES 65535u

typedef struct sl_options {
	sl_sync sync;              /* default SL_SYNC_EVERYSEC */
	uint32_t sync_interval_ms; /* everysec period, default 1000 */
	uint64_t segment_bytes;    /* rotate the active segment past this, default 64 MiB,
	                            * 4 KiB .. SL_MAX_SEGMENT_BYTES */
	uint32_t max_key_bytes;    /* default and upper bound SL_MAX_KEY_BYTES */
	uint32_t max_value_bytes;  /* default 16 MiB, upper bound 1 GiB */
	int read_only;             /* 1: refuse writes with SL_EREADONLY */
	const struct sl_io *io;    /* NULL: the real system calls */
	/* Log lines (level "debug", "info", "warn", "error": corrupt records,
	 * failed fsyncs, compactions, each segment's load time at open).
	 * NULL: warnings and errors go to stderr unless quiet is set. */
	void (*log_fn)(void *arg, const char *level, const char *msg);
	void *log_arg;
	int quiet;
	/* Compaction (storage/compact.c) */
	int compact_background;       /* 1 (default): a background thread compacts */
	double compact_dead_ratio;    /* compact a sealed segment at this dead share, default 0.5 */
	uint64_t compact_min_bytes;   /* sealed segments smaller than this are merged together
	                               * rather than compacted alone; default segment_bytes / 4 */
	uint32_t compact_interval_ms; /* how often the background thread looks, default 1000 */
	uint64_t compact_protect_seq; /* never compact a segment holding a seq >= this
	                               * (replication backlog); 0 = no limit.  See
	                               * sl_compact_protect(). */
	/* Threads that load the sealed segments at open (their hints, or a
	 * scan), each segment whole on one thread; the highest seq wins
	 * whatever the order.  0 (default): one per CPU, at most 4; at most
	 * 16 in any case. */
	uint32_t open_threads;
} sl_options;

typedef struct sl_stats {
	uint64_t keys;             /* keys whose latest record is a value, expired or
	                            * not (expired ones until compaction drops them) */
	uint64_t tombstones;       /* deleted keys whose tombstone is still on disk */
	uint64_t live_bytes;       /* bytes of records the keydir points at (puts) */
	uint64_t tomb_bytes;       /* bytes of tombstones the keydir points at */
	uint64_t dead_bytes;       /* every other record byte: what compaction can reclaim */
	uint64_t disk_bytes;       /* bytes written to segment files (the active one is
	                            * preallocated larger on disk) */
	uint64_t segments;         /* segment files, the active one included */
	uint64_t last_seq;         /* highest seq written or recovered */
	uint64_t synced_seq;       /* highest seq known durable (fdatasync'd) */
	uint64_t keydir_bytes;     /* memory the keydir uses (tables + key arena) */
	uint64_t recovery_ms;      /* time sl_open took to rebuild the keydir */
	uint64_t corrupt_records;  /* bad records found at recovery or read */
	uint64_t hints_loaded;     /* sealed segments loaded from hint files */
	uint64_t segments_scanned; /* segments rebuilt by scanning records */
	uint64_t fsyncs;           /* fdatasyncs that made the log durable (not those
	                            * of new files, hints, compaction, directories) */
	uint64_t puts, gets, deletes;
	int failed;                       /* 0, or the sticky error that refuses writes */
	uint64_t compactions;             /* compaction runs that finished */
	uint64_t compact_bytes_reclaimed; /* segment bytes deleted minus bytes written */
	uint64_t compact_bytes_written;   /* bytes written by compaction */
	uint64_t compact_bytes_read;      /* bytes of input segments read */
	uint64_t last_compaction_ms; /* wall clock (ms since epoch) of the last run, 0 = never */
	int compact_last_error;      /* SL_E* of the last abandoned run, 0 = none */
	uint64_t compact_errors;     /* runs abandoned (disk full, I/O error) */
} sl_stats;

/* Fills *o with the defaults above. */
void sl_options_init(sl_options *o);

/* Opens (creating if missing) the data directory `dir`.  o may be NULL for
 * defaults.  Errors: SL_EBUSY (directory locked by another handle or process),
 * SL_EINVAL (bad options), SL_EIO/SL_ENOSPC, SL_ENOMEM, SL_ENOTSUP (unknown
 * format version).  On success *out owns the handle; release it with sl_close. */
int sl_open(const char *dir, const sl_options *o, sl_db **out);

/* Syncs (under every policy), writes the active segment's state and releases
 * the directory.  NULL is fine. */
void sl_close(sl_db *db);

/* Stores key → val.  *seq_out (may be NULL) receives the write's seq.
 * Errors: SL_EINVAL (empty key), SL_ETOOBIG, SL_EREADONLY, SL_EFAILED,
 * SL_EIO, SL_ENOSPC.  Under every sync policy the record is in the kernel
 * before return; with SL_SYNC_ALWAYS it is also on disk. */
int sl_put(sl_db *db, const void *key, size_t klen, const void *val, size_t vlen,
           uint64_t *seq_out);

/* As sl_put, the key expiring ttl_ms from now (ttl_ms 0 = never). */
int sl_put_ttl(sl_db *db, const void *key, size_t klen, const void *val, size_t vlen,
               uint64_t ttl_ms, uint64_t *seq_out);

/* Flags for sl_put_ex / sl_delete_ex (any other bit: SL_EINVAL). */
#define SL_NOWAIT                                                                                  \
	1u /* under SL_SYNC_ALWAYS, return once the record is in the                               \
	    * kernel without waiting for fdatasync; follow with                                    \
	    * sl_sync_wait(highest seq) so a batch of writes shares                                \
	    * one group commit.  No effect under other policies. */

/* sl_put_ttl with flags. */
int sl_put_ex(sl_db *db, const void *key, size_t klen, const void *val, size_t vlen,
              uint64_t ttl_ms, unsigned flags, uint64_t *seq_out);

/* Returns once every record up to seq is durable (fdatasync'd), joining the
 * group commit in flight.  SL_EFAILED if a sync failed. */
int sl_sync_wait(sl_db *db, uint64_t seq);

/* Looks key up.  On SL_OK *val_out is a malloc'd copy (caller frees; a
 * zero-length value still gets a non-NULL 1-byte allocation) and *vlen_out
 * its length.  SL_ENOTFOUND when absent, deleted or expired; SL_ECORRUPT when
 * the record fails its checksum. */
int sl_get(sl_db *db, const void *key, size_t klen, void **val_out, size_t *vlen_out);

/* A hint that key will be read soon: starts loading the index entry's
 * cache line, so that a batch that hints every key first, then reads them,
 * overlaps their memory stalls.  Changes nothing; never fails. */
void sl_prefetch(sl_db *db, const void *key, size_t klen);

/* The second step, after sl_prefetch on every key: reads key's slots
 * (loaded by now) and starts loading the index entry they point at.
 * Changes nothing; never fails. */
void sl_prefetch_entry(sl_db *db, const void *key, size_t klen);

/* The last step of that hint, after sl_prefetch_entry on every key: looks
 * key up (its slot and entry are loaded by now) and starts loading the
 * start of its record.  Changes nothing; never fails. */
void sl_prefetch_value(sl_db *db, const void *key, size_t klen);

/* As sl_get, also returning the seq of the record read (seq_out may be NULL). */
int sl_get_seq(sl_db *db, const void *key, size_t klen, void **val_out, size_t *vlen_out,
               uint64_t *seq_out);

/* As sl_get_seq, but a value longer than max_vlen is SL_ETOOBIG with its
 * length in *vlen_out, found from the index alone: neither read, checked
 * nor copied (a reply's room). */
int sl_get_max(sl_db *db, const void *key, size_t klen, size_t max_vlen, void **val_out,
               size_t *vlen_out, uint64_t *seq_out);

/* Writes a tombstone for key.  SL_ENOTFOUND (nothing written) when the key
 * has no live value. */
int sl_delete(sl_db *db, const void *key, size_t klen, uint64_t *seq_out);

/* sl_delete with flags (SL_NOWAIT). */
int sl_delete_ex(sl_db *db, const void *key, size_t klen, unsigned flags, uint64_t *seq_out);

/* Calls fn for every live key starting with prefix (plen 0: every key), in no
 * particular order.  A non-zero return from fn stops the scan and is
 * returned.  fn may call other sl_* functions on db.  The scan sees each key
 * at most once; keys written during the scan may or may not be seen. */
int sl_scan(sl_db *db, const void *prefix, size_t plen,
            int (*fn)(void *arg, const void *k, size_t kl, const void *v, size_t vl), void *arg);

/* Fills *out with a snapshot of the counters. */
int sl_stats_get(sl_db *db, sl_stats *out);

/* Runs a full compaction now (every sealed segment with dead bytes, and the
 * small ones merged) and returns when it is done.  Reads and writes go on
 * meanwhile.  Errors: SL_ENOSPC/SL_EIO (the run is abandoned, its partial
 * output removed, the store unchanged), SL_EREADONLY. */
int sl_compact(sl_db *db);

/* Forbids compacting segments that hold any seq >= seq (0: lift the limit).
 * Replication keeps its backlog contiguous with it. */
void sl_compact_protect(sl_db *db, uint64_t seq);

/* Background compaction starts no run for the next ms milliseconds (a run
 * under way finishes; sl_compact is not affected), and segments sealed
 * meanwhile get their hint files only after that (sl_compact and sl_close
 * write them at once; a crash before costs a scan of those segments at the
 * next open).  A follower catching up calls it while replies come full, so
 * its disk and CPU go to the log it is behind on first. */
void sl_compact_defer(sl_db *db, uint32_t ms);

/* Forces the active segment to disk now (any policy). */
int sl_sync_now(sl_db *db);

/* A static message for rc.  Never NULL. */
const char *sl_strerror(int rc);

/* ---- replication building blocks (DESIGN.md §3) ----------------------- */

/* Copies whole raw records with seq >= from_seq, in seq order, into buf (at
 * most cap bytes; always at least one record when one exists and fits cap).
 * *len_out gets the bytes copied, *next_seq_out the seq to ask for next.
 * SL_ESTALE when from_seq is no longer contiguous in the log (compacted);
 * SL_ETOOBIG when the first record does not fit in cap (one written under
 * larger limits than the caller sized buf for): *len_out is then its size. */
int sl_log_read(sl_db *db, uint64_t from_seq, void *buf, size_t cap, size_t *len_out,
                uint64_t *next_seq_out);

/* Verifies one raw record (format.h) and appends it keeping its seq; the
 * keydir takes it only if its seq is higher than the key's current one.
 * Errors: SL_ECORRUPT (bad checksum/length), SL_EINVAL (seq not above
 * last_seq), and the write errors of sl_put. */
int sl_apply_raw(sl_db *db, const void *rec, size_t len);

/* sl_apply_raw with flags: SL_NOWAIT lets a batch of applied records share
 * one group commit (follow with sl_sync_wait). */
int sl_apply_raw_ex(sl_db *db, const void *rec, size_t len, unsigned flags);

/* sl_apply_raw_ex for recs[0..n) (lens[i] bytes each) in order, under one
 * hold of the append lock, their index entries made shard by shard at the
 * end (a follower applying a fetched batch).  Stops at the first record
 * refused (its error is returned) with the ones before it applied;
 * *applied (may be NULL) gets how many were.  flags: SL_NOWAIT, and
 * SL_VERIFIED when the caller has already checked every record's CRC32C
 * (sl_rec_verify): the checksum is then not computed again here, every
 * other check is made. */
#define SL_VERIFIED (1u << 1)
int sl_apply_raw_many(sl_db *db, const void *const *recs, const size_t *lens, size_t n,
                      unsigned flags, size_t *applied);

/* Trades places between the directory db lives in and the directory
 * `other` (renameat2 RENAME_EXCHANGE, then an fsync of both parents): db
 * goes on at other's path, what was there moves to db's old path (close
 * any handle on it first).  Then db takes o's sync policy and interval,
 * segment size and compaction settings, starting (or stopping) background
 * compaction as o asks.  A follower's full resync loads a fresh store next
 * to its old one and swaps it in this way without closing and reopening it.
 * Unlike the rest of this API it is not for concurrent use: no other thread
 * may use db during the call (the store's own threads are handled).
 * SL_OK, SL_EINVAL (bad options: nothing changed), SL_ENOTFOUND / SL_EIO
 * (the rename failed: nothing changed), SL_ENOMEM (nothing changed, or
 * swapped but the compaction thread could not start). */
int sl_swap_dir(sl_db *db, const char *other, const sl_options *o);

/* Where a replacement for the store in `dir` is loaded: "DIR.resync"
 * beside it (*nested = 0: swap it in with sl_swap_dir) or, when dir is a
 * mount point and its parent another filesystem, "DIR/.resync" (*nested =
 * 1: close both stores, then sl_move_in).  SL_OK or SL_EINVAL (too long). */
int sl_staging_dir(const char *dir, char *out, size_t cap, int *nested);

/* Replaces the store files in dir (segments, hints, *.tmp, REPL) with those
 * of the complete, closed store in dir/.resync, and removes dir/.resync.
 * No handle may be open on either.  Crash-safe: once started (a durable
 * mark in dir/.resync), sl_open(dir) finishes it; before, dir is as it
 * was.  SL_OK, SL_ENOTFOUND (no dir/.resync), SL_EBUSY (dir or dir/.resync in use),
 * SL_ENOSPC / SL_EIO (not started: dir as it was; or stopped midway:
 * sl_open finishes it). */
int sl_move_in(const char *dir);

/* The handle's sync policy. */
sl_sync sl_sync_policy(sl_db *db);

/* As sl_apply_raw without the order check: for loading a full-resync
 * snapshot into an empty store, whose records arrive in any order (the
 * highest seq still wins).  last_seq becomes the highest seq loaded.  The
 * loaded segments are not a contiguous log: replication must not serve
 * sl_log_read below the snapshot's head seq from this store. */
int sl_load_raw(sl_db *db, const void *rec, size_t len);

/* sl_load_raw for recs[0..n), as sl_apply_raw_many does it. */
int sl_load_raw_many(sl_db *db, const void *const *recs, const size_t *lens, size_t n,
                     size_t *applied);

/* Bytes of log from seq on (the records a follower whose next seq is `seq`
 * has yet to receive): 0 when seq is past the head, SL_ESTALE when seq is
 * no longer in the log. */
int sl_log_bytes_from(sl_db *db, uint64_t seq, uint64_t *bytes);

/* The oldest seq sl_log_read can still return (start of the contiguous
 * log), or last_seq + 1 when the log is empty. */
uint64_t sl_log_start(sl_db *db);

/* The seq from which the newest log segments hold at most `bytes` bytes:
 * what to pass to sl_compact_protect() to keep a replication backlog of
 * that size out of compaction's reach. */
uint64_t sl_log_backlog_seq(sl_db *db, uint64_t bytes);

/* Highest seq written or applied. */
uint64_t sl_last_seq(sl_db *db);

/* Bytes that still fit in the active segment before the next append has to
 * start a new one (which creates and fsyncs a file).  A hint, read without
 * a lock: another writer may use the room first.  0 when read-only. */
uint64_t sl_append_room(sl_db *db);

/* Starts a new active segment now when the active one has records and
 * less than `below` bytes of room (sl_append_room), so that the writes
 * that follow find room again: a node hands writes that could need a
 * rotation to its workers, and this keeps that to one rotation's time
 * rather than the segment's last `below` bytes.  Only when segment_bytes
 * is at least 16 * below: smaller segments keep their exact size.  SL_OK
 * when nothing was due; else rotation's errors (the active segment then
 * stays, with the room it has). */
int sl_rotate_early(sl_db *db, uint64_t below);

/* A content digest over the live (not deleted, not expired) keys and their
 * values, independent of order and segment layout: equal on two stores with
 * equal live contents.  out gets 32 hex digits and a NUL; *keys_out (may be
 * NULL) the number of keys digested. */
int sl_digest(sl_db *db, char out[33], uint64_t *keys_out);

/* Full-resync source: pins the segments that hold every record up to the
 * current head seq (*head_seq_out), so compaction leaves them alone until
 * sl_snapshot_close.  Writes go on meanwhile. */
typedef struct sl_snapshot sl_snapshot;
int sl_snapshot_open(sl_db *db, sl_snapshot **out, uint64_t *head_seq_out);

/* Copies the next whole raw records of the snapshot into buf (at most cap
 * bytes; SL_ETOOBIG if a single record does not fit in cap, with its size in
 * *len_out: call again with that much room): the records,
 * with seq <= head seq, that are the current version of their key (puts and
 * tombstones), and for a key changed after the snapshot was taken every
 * version up to head seq (load them with sl_load_raw: the highest wins), in
 * no particular order.  *len_out 0 and *done 1 at the end. */
int sl_snapshot_read(sl_snapshot *sn, void *buf, size_t cap, size_t *len_out, int *done);

/* Unpins.  NULL is fine. */
void sl_snapshot_close(sl_snapshot *sn);

#ifdef __cplusplus
}
#endif
#endif
