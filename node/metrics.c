/*
 * metrics.c — what an operator scrapes: requests by operation and status,
 * latency histograms per operation, and the engine's counters, in the
 * Prometheus text exposition format (version 0.0.4).  Metric names follow
 * Prometheus conventions (base units, _total for counters) so that
 * `promtool check metrics` passes; tests/node/test_metrics.c checks it.
 */
#include "metrics.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "repl.h"
#include "status.h"

/* Status codes get a dense index: 1..-14 (engine), -100..-103 (protocol),
 * and one slot for anything else. */
#define N_STATUS 21

static int status_index(int st)
{
	if (st <= 1 && st >= -14) {
		return 1 - st; /* 0..15 */
	}
	if (st <= -100 && st >= -103) {
		return 16 + (-100 - st); /* 16..19 */
	}
	return 20;
}

static int status_of_index(int i)
{
	if (i <= 15) {
		return 1 - i;
	}
	if (i <= 19) {
		return -100 - (i - 16);
	}
	return -9999; /* "unknown" */
}

/* Upper bounds in nanoseconds, and as Prometheus writes them. */
static const uint64_t bucket_ns[] = {
    50000,     100000,     250000,     500000,     1000000,     2500000,
    5000000,   10000000,   25000000,   50000000,   100000000,   250000000,
    500000000, 1000000000, 2500000000, 5000000000, 10000000000,
};
static const char *const bucket_le[] = {
    "5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
    "0.05",  "0.1",    "0.25",    "0.5",    "1",     "2.5",    "5",     "10",
};
#define N_BUCKETS (sizeof(bucket_ns) / sizeof(bucket_ns[0]))

struct sl_metrics {
	atomic_uint_fast64_t requests[SL_OP_COUNT][N_STATUS];
	atomic_uint_fast64_t hist[SL_OP_COUNT][N_BUCKETS + 1]; /* last: +Inf only */
	atomic_uint_fast64_t sum_ns[SL_OP_COUNT];
	atomic_uint_fast64_t count[SL_OP_COUNT];
	atomic_int inflight;
};

sl_metrics *sl_metrics_new(void)
{
	return calloc(1, sizeof(sl_metrics));
}

void sl_metrics_free(sl_metrics *m)
{
	free(m);
}

void sl_metrics_observe(sl_metrics *m, int op, int status, uint64_t ns)
{
	if (m == NULL || op < 0 || op >= SL_OP_COUNT) {
		return;
	}
	atomic_fetch_add_explicit(&m->requests[op][status_index(status)], 1, memory_order_relaxed);
	size_t b = 0;
	while (b < N_BUCKETS && ns > bucket_ns[b]) {
		b++;
	}
	atomic_fetch_add_explicit(&m->hist[op][b], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&m->sum_ns[op], ns, memory_order_relaxed);
	atomic_fetch_add_explicit(&m->count[op], 1, memory_order_relaxed);
}

void sl_metrics_inflight_add(sl_metrics *m, int delta)
{
	if (m != NULL) {
		atomic_fetch_add_explicit(&m->inflight, delta, memory_order_relaxed);
	}
}

/* ---- a growable text buffer ------------------------------------------ */

typedef struct buf {
	char *p;
	size_t len, cap;
	int oom;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(buf *b, const char *fmt, ...)
{
	if (b->oom) {
		return;
	}
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = 1;
			return;
		}
		if ((size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap * 2 + (size_t)n;
		char *p = realloc(b->p, cap);
		if (p == NULL) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

static void meta(buf *b, const char *name, const char *type, const char *help)
{
	put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(buf *b, const char *name, const char *type, const char *help, uint64_t v)
{
	meta(b, name, type, help);
	put(b, "%s %llu\n", name, (unsigned long long)v);
}

static void render_requests(sl_metrics *m, buf *b)
{
	meta(b, "shiplog_requests_total", "counter",
	     "Client requests answered, by operation and status.");
	for (int op = 0; op < SL_OP_COUNT; op++) {
		for (int s = 0; s < N_STATUS; s++) {
			uint64_t v =
			    atomic_load_explicit(&m->requests[op][s], memory_order_relaxed);
			if (v == 0) {
				continue;
			}
			put(b, "shiplog_requests_total{op=\"%s\",status=\"%s\"} %llu\n",
			    sl_op_names[op], sl_status_name(status_of_index(s)),
			    (unsigned long long)v);
		}
	}
	meta(b, "shiplog_request_duration_seconds", "histogram",
	     "Time from receiving a request to handing its response to the transport.");
	for (int op = 0; op < SL_OP_COUNT; op++) {
		uint64_t count = atomic_load_explicit(&m->count[op], memory_order_relaxed);
		if (count == 0) {
			continue;
		}
		/* Buckets are read one by one while others count: make them
		 * cumulative and never above _count, as Prometheus requires. */
		uint64_t cum = 0;
		for (size_t i = 0; i < N_BUCKETS; i++) {
			cum += atomic_load_explicit(&m->hist[op][i], memory_order_relaxed);
			if (cum > count) {
				cum = count;
			}
			put(b,
			    "shiplog_request_duration_seconds_bucket{op=\"%s\",le=\"%s\"} %llu\n",
			    sl_op_names[op], bucket_le[i], (unsigned long long)cum);
		}
		double sum =
		    (double)atomic_load_explicit(&m->sum_ns[op], memory_order_relaxed) / 1e9;
		put(b, "shiplog_request_duration_seconds_bucket{op=\"%s\",le=\"+Inf\"} %llu\n",
		    sl_op_names[op], (unsigned long long)count);
		put(b, "shiplog_request_duration_seconds_sum{op=\"%s\"} %.9f\n", sl_op_names[op],
		    sum);
		put(b, "shiplog_request_duration_seconds_count{op=\"%s\"} %llu\n", sl_op_names[op],
		    (unsigned long long)count);
	}
}

/* A label value in the text format: backslash, double quote and newline
 * escaped, other control and non-ASCII bytes replaced by '?' (a follower's
 * node id comes from its fetches: any bytes). */
static const char *label_esc(const char *in, char *out, size_t cap)
{
	size_t o = 0;
	for (; *in != '\0' && o + 3 < cap; in++) {
		if (*in == '\\' || *in == '"') {
			out[o++] = '\\';
			out[o++] = *in;
		} else if (*in == '\n') {
			out[o++] = '\\';
			out[o++] = 'n';
		} else if ((unsigned char)*in < 0x20 || (unsigned char)*in >= 0x7f) {
			out[o++] = '?'; /* not valid UTF-8 for sure: Prometheus refuses those */
		} else {
			out[o++] = *in;
		}
	}
	out[o] = '\0';
	return out;
}

static void render_repl(sl_node *n, buf *b)
{
	sl_repl_stats rs;
	sl_repl_stats_get(n->repl, &rs);
	one(b, "shiplog_repl_applied_seq", "gauge", "Highest seq applied (primary: written).",
	    rs.applied_seq);
	one(b, "shiplog_repl_resyncs_full_total", "counter",
	    "Full resyncs completed as a follower.", rs.resyncs_full);
	one(b, "shiplog_repl_resyncs_partial_total", "counter",
	    "Times streaming resumed from the applied seq (partial resync).", rs.resyncs_partial);
	one(b, "shiplog_repl_fetched_bytes_total", "counter", "Record bytes fetched as a follower.",
	    rs.bytes_fetched);
	one(b, "shiplog_repl_fetched_records_total", "counter", "Records fetched as a follower.",
	    rs.records_fetched);
	one(b, "shiplog_repl_fetches_total", "counter",
	    "Fetch replies that carried records, as a follower.", rs.fetches);
	one(b, "shiplog_repl_read_buffer_bytes", "gauge",
	    "The follower connection's read buffer (grows to the largest reply).",
	    rs.read_buffer_bytes);
	one(b, "shiplog_repl_refused_batches_total", "counter",
	    "Fetch replies refused because of a bad record.", rs.refused_batches);
	one(b, "shiplog_repl_apply_errors_total", "counter",
	    "Fetch replies this follower could not store (its own disk full or failing).",
	    rs.apply_errors);
	one(b, "shiplog_repl_min_seq_waits_total", "counter",
	    "Reads that waited for this node to apply their min_seq.", rs.min_seq_waits);
	one(b, "shiplog_repl_served_bytes_total", "counter", "Record bytes served to followers.",
	    rs.bytes_served);
	one(b, "shiplog_repl_backlog_bytes", "gauge", "Configured replication backlog.",
	    rs.backlog_bytes);
	meta(b, "shiplog_repl_link_down_seconds", "gauge",
	     "A follower: seconds since its link to the primary last streamed (0 while it "
	     "streams; 0 on a primary).");
	put(b, "shiplog_repl_link_down_seconds %.3f\n", (double)rs.link_down_ms / 1000.0);
	one(b, "shiplog_repl_protect_seq", "gauge",
	    "Segments holding seqs from here on are kept out of compaction.", rs.protect_seq);
	char lab[2 * 64 + 8];
	meta(b, "shiplog_repl_follower_lag_records", "gauge", "Records a follower is behind.");
	for (size_t i = 0; i < rs.n_followers; i++) {
		put(b, "shiplog_repl_follower_lag_records{follower=\"%s\"} %llu\n",
		    label_esc(rs.followers[i].node_id, lab, sizeof(lab)),
		    (unsigned long long)rs.followers[i].lag_records);
	}
	meta(b, "shiplog_repl_follower_lag_bytes", "gauge",
	     "Bytes of log a follower has yet to receive.");
	for (size_t i = 0; i < rs.n_followers; i++) {
		put(b, "shiplog_repl_follower_lag_bytes{follower=\"%s\"} %llu\n",
		    label_esc(rs.followers[i].node_id, lab, sizeof(lab)),
		    (unsigned long long)rs.followers[i].lag_bytes);
	}
	meta(b, "shiplog_repl_follower_lag_seconds", "gauge",
	     "Age of the oldest write a follower has not applied (0: it has every record).");
	for (size_t i = 0; i < rs.n_followers; i++) {
		put(b, "shiplog_repl_follower_lag_seconds{follower=\"%s\"} %.3f\n",
		    label_esc(rs.followers[i].node_id, lab, sizeof(lab)),
		    (double)rs.followers[i].lag_ms / 1000.0);
	}
	meta(b, "shiplog_repl_follower_connected", "gauge",
	     "1 when the follower fetched recently.");
	for (size_t i = 0; i < rs.n_followers; i++) {
		put(b, "shiplog_repl_follower_connected{follower=\"%s\"} %d\n",
		    label_esc(rs.followers[i].node_id, lab, sizeof(lab)),
		    rs.followers[i].connected);
	}
	sl_repl_stats_free(&rs);
}

int sl_metrics_render(sl_metrics *m, sl_node *n, char **out, size_t *len)
{
	buf b = {.p = malloc(8192), .cap = 8192};
	if (b.p == NULL) {
		return SL_ENOMEM;
	}
	b.p[0] = '\0';
	sl_stats s;
	memset(&s, 0, sizeof(s));
	int have = n != NULL && n->db != NULL && sl_stats_get(n->db, &s) == SL_OK;
	if (have) {
		sl_repl_add_carried(n->repl, &s);
	}

	meta(&b, "shiplog_build_info", "gauge", "Always 1; the version is a label.");
	put(&b, "shiplog_build_info{version=\"%s\"} 1\n", SL_NODE_VERSION);
	meta(&b, "shiplog_role", "gauge", "1 for this node's current role.");
	put(&b, "shiplog_role{role=\"%s\"} 1\n",
	    n && n->repl   ? sl_repl_role(n->repl)
	    : n && n->role ? n->role
	                   : "primary");
	if (n != NULL && n->repl != NULL) {
		render_repl(n, &b);
	}
	if (n != NULL) {
		double up = (double)(sl_node_mono_ms() - n->start_ms) / 1000.0;
		meta(&b, "shiplog_uptime_seconds", "gauge", "Seconds since the node started.");
		put(&b, "shiplog_uptime_seconds %.3f\n", up);
		one(&b, "shiplog_compactions_total", "counter",
		    "Manual compactions completed by this node (compact requests).",
		    atomic_load(&n->compactions));
	}
	if (m != NULL) {
		one(&b, "shiplog_inflight_requests", "gauge",
		    "Requests received and not yet answered.",
		    (uint64_t)(atomic_load(&m->inflight) < 0 ? 0 : atomic_load(&m->inflight)));
		render_requests(m, &b);
	}
	if (have) {
		one(&b, "shiplog_keys", "gauge",
		    "Keys whose latest record is a value (expired ones count until compaction).",
		    s.keys);
		one(&b, "shiplog_tombstones", "gauge",
		    "Deleted keys whose tombstone is still on disk.", s.tombstones);
		one(&b, "shiplog_live_bytes", "gauge", "Bytes of records the keydir points at.",
		    s.live_bytes);
		one(&b, "shiplog_dead_bytes", "gauge",
		    "Bytes of superseded records in the segments.", s.dead_bytes);
		one(&b, "shiplog_disk_bytes", "gauge",
		    "Bytes written to segment files (the active one is preallocated larger).",
		    s.disk_bytes);
		one(&b, "shiplog_keydir_bytes", "gauge", "Memory used by the keydir.",
		    s.keydir_bytes);
		one(&b, "shiplog_segments", "gauge", "Segment files, the active one included.",
		    s.segments);
		one(&b, "shiplog_last_seq", "gauge",
		    "Highest sequence number written or recovered.", s.last_seq);
		one(&b, "shiplog_synced_seq", "gauge", "Highest sequence number known durable.",
		    s.synced_seq);
		one(&b, "shiplog_fsyncs_total", "counter",
		    "fdatasyncs that made the log durable (group commits, everysec flushes, "
		    "sealed segments); new files, hints, compaction and directories not counted.",
		    s.fsyncs);
		one(&b, "shiplog_corrupt_records_total", "counter",
		    "Bad records found at recovery or on read.", s.corrupt_records);
		one(&b, "shiplog_compaction_runs_total", "counter",
		    "Compaction runs finished by the engine, background and manual.",
		    s.compactions);
		one(&b, "shiplog_compact_reclaimed_bytes_total", "counter",
		    "Segment bytes compaction deleted, less the bytes it wrote.",
		    s.compact_bytes_reclaimed);
		one(&b, "shiplog_compact_errors_total", "counter",
		    "Compaction runs abandoned (a full disk, an I/O error); the store unchanged.",
		    s.compact_errors);
		meta(&b, "shiplog_recovery_seconds", "gauge",
		     "Time the last open took to rebuild the keydir.");
		put(&b, "shiplog_recovery_seconds %.3f\n", (double)s.recovery_ms / 1000.0);
		one(&b, "shiplog_engine_puts_total", "counter", "Puts applied by the engine.",
		    s.puts);
		one(&b, "shiplog_engine_gets_total", "counter", "Gets served by the engine.",
		    s.gets);
		one(&b, "shiplog_engine_deletes_total", "counter", "Deletes applied by the engine.",
		    s.deletes);
		one(&b, "shiplog_store_failed", "gauge",
		    "1 when an earlier write or fsync failed and the store refuses writes.",
		    s.failed != 0);
	}
	if (b.oom) {
		free(b.p);
		return SL_ENOMEM;
	}
	*out = b.p;
	*len = b.len;
	return SL_OK;
}
