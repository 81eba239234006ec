/*
 * status.c — names and descriptions for every status code a Response can
 * carry.  The engine's codes are repeated here rather than taken from
 * sl_strerror() so that the protocol library does not link the storage
 * engine (DESIGN.md §1: proto depends on protobuf-c only); shiplog.h is read
 * for the constants alone.
 */
#include "status.h"

#include "shiplog.h"

static const struct {
	int code;
	const char *name;
	const char *desc;
} codes[] = {
    {SL_OK, "ok", "ok"},
    {SL_ENOTFOUND, "not_found", "not found"},
    {SL_EINVAL, "invalid", "invalid argument"},
    {SL_ETOOBIG, "too_big", "key, value or message too large"},
    {SL_ECORRUPT, "corrupt", "data corrupted (checksum mismatch)"},
    {SL_EIO, "io", "I/O error"},
    {SL_ENOSPC, "no_space", "no space left on device"},
    {SL_EBUSY, "busy", "data directory in use by another process or handle"},
    {SL_EREADONLY, "read_only", "read-only: writes are not accepted here"},
    {SL_ENOMEM, "no_memory", "out of memory"},
    {SL_EFAILED, "failed", "an earlier write or fsync failed; the store refuses writes"},
    {SL_ENOTSUP, "not_supported", "not supported"},
    {SL_ESTALE, "stale", "sequence number no longer in the log"},
    {SL_EBEHIND, "behind", "node has not applied the requested sequence number yet"},
    {SL_ETIMEDOUT, "timed_out", "timed out"},
    {SL_EPROTO, "protocol", "malformed message"},
    {SL_ECONN, "connection", "connection failed or lost"},
    {SL_ESHUTDOWN, "shutdown", "server is shutting down"},
    {SL_EBADOP, "bad_op", "unknown operation"},
    {SL_ENOTIMPL, "not_implemented", "operation not implemented by this server"},
};

const char *sl_status_str(int status)
{
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		if (codes[i].code == status) {
			return codes[i].desc;
		}
	}
	return "unknown status";
}

const char *sl_status_name(int status)
{
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		if (codes[i].code == status) {
			return codes[i].name;
		}
	}
	return "unknown";
}
