/*
 * node.c — the small shared pieces of node.h: clocks and operation names.
 */
#include "node.h"

#include <time.h>

const char *const sl_op_names[SL_OP_COUNT] = {
    "get",   "put",     "del",    "mget", "scan",   "stats",        "compact", "ping",
    "batch", "promote", "follow", "wait", "digest", "pause_writes", "invalid",
};

uint64_t sl_node_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t sl_node_mono_ms(void)
{
	return sl_node_mono_ns() / 1000000u;
}
