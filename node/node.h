/*
 * node.h — what every part of shiplogd shares: the open store, the limits
 * that bound every request, and the counters.  One sl_node per process,
 * filled by main.c before the server starts and read-only afterwards
 * (except the atomic counters).
 */
#ifndef SL_NODE_H
#define SL_NODE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "shiplog.h"

#define SL_NODE_VERSION "0.1.0"

/* Room for everything in a message besides one value: the key (≤ 64 KiB),
 * protobuf framing and, in a batch, many small operations. */
#define SL_MSG_SLACK (1u << 20)

/* Operations as counted in metrics (index into sl_metrics arrays). */
enum {
	SL_OP_GET,
	SL_OP_PUT,
	SL_OP_DEL,
	SL_OP_MGET,
	SL_OP_SCAN,
	SL_OP_STATS,
	SL_OP_COMPACT,
	SL_OP_PING,
	SL_OP_BATCH,
	SL_OP_PROMOTE,
	SL_OP_FOLLOW,
	SL_OP_WAIT,
	SL_OP_DIGEST,
	SL_OP_PAUSE_WRITES,
	SL_OP_INVALID, /* malformed or unknown: no operation could be read */
	SL_OP_COUNT
};

/* Names used as the metrics "op" label. */
extern const char *const sl_op_names[SL_OP_COUNT];

struct sl_metrics;
struct sl_repl;

typedef struct sl_node {
	sl_db *db; /* use under db_lock (read): a full resync swaps it */
	pthread_rwlock_t db_lock;
	struct sl_repl *repl;     /* NULL: no replication (a lone primary) */
	uint32_t min_seq_wait_ms; /* longest a read with min_seq waits on a follower */
	uint32_t max_key_bytes;
	uint32_t max_value_bytes;
	size_t max_msg_bytes;             /* bound on a request and on a response */
	uint32_t scan_default;            /* scan page size when the request gives none */
	uint32_t scan_max;                /* upper bound on a scan page */
	const char *sync_name;            /* "always", "everysec", "no" */
	const char *role;                 /* without replication: "primary" */
	uint64_t start_ms;                /* CLOCK_MONOTONIC at start */
	atomic_uint_fast64_t compactions; /* manual compactions run by this node */
	struct sl_metrics *metrics;       /* NULL: not counted */
} sl_node;

/* Milliseconds / nanoseconds on CLOCK_MONOTONIC. */
uint64_t sl_node_mono_ms(void);
uint64_t sl_node_mono_ns(void);

#endif
