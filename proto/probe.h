/*
 * probe.h — whether a tcp:// URL answers, and if not, why, within a
 * deadline.  nng's dial has no deadline of its own (against a cut link a
 * blocking dial waits minutes for the kernel to give up) and a non-blocking
 * one only retries in the background: the client library probes before it
 * dials (so that `shiplog` can say "Connection refused"), and a follower
 * probes its primary while the link is down (stats: repl_last_error).
 */
#ifndef SL_PROTO_PROBE_H
#define SL_PROTO_PROBE_H

#include <stddef.h>

/* For tcp://HOST:PORT: a TCP connect within timeout_ms, closed at once
 * with a reset.  SL_OK (it connected, or not a tcp URL: nothing to probe),
 * SL_EINVAL (a port out of range, a name that does not resolve), SL_ECONN
 * (refused, unreachable) or SL_ETIMEDOUT; why (cap bytes) says which. */
int sl_probe_tcp(const char *url, int timeout_ms, char *why, size_t cap);

#endif
