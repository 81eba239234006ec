/*
 * status.h — the protocol's status codes beyond the engine's.
 *
 * A Response's status is an int: SL_OK (0), SL_ENOTFOUND (1) or a negative
 * SL_E* code from storage/shiplog.h — or one of the codes below, which only
 * the network layers produce.  They start at -100 so the engine can grow its
 * own list without colliding.  docs/protocol.md lists every code.
 */
#ifndef SL_PROTO_STATUS_H
#define SL_PROTO_STATUS_H

enum {
	/* Client side: could not connect, or the connection dropped while a
	 * request was outstanding.  For a write the outcome is unknown. */
	SL_ECONN = -100,
	/* The server is shutting down and did not execute the request. */
	SL_ESHUTDOWN = -101,
	/* The request names an operation this server does not know (or a
	 * batch holds one that cannot be batched). */
	SL_EBADOP = -102,
	/* Known operation, not implemented by this server yet (promote,
	 * follow, wait before replication lands). */
	SL_ENOTIMPL = -103,
};

/* A static description of any status code (engine or protocol).  Never NULL. */
const char *sl_status_str(int status);

/* A short stable lowercase name ("ok", "not_found", "too_big", …) for
 * metrics labels and JSON output.  Never NULL; unknown codes give "unknown". */
const char *sl_status_name(int status);

#endif
