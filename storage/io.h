/*
 * io.h — the one I/O seam (STYLE.md habit 10).  Every file, clock and sync
 * call the engine makes goes through a struct sl_io, so tests can inject EIO,
 * ENOSPC, short writes and crashes.  Each function follows the POSIX call it
 * replaces: -1 with errno set on failure.
 */
#ifndef SL_IO_H
#define SL_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct sl_io {
	int (*open)(const char *path, int flags, mode_t mode);
	int (*close)(int fd);
	ssize_t (*pread)(int fd, void *buf, size_t n, off_t off);
	ssize_t (*pwrite)(int fd, const void *buf, size_t n, off_t off);
	int (*fdatasync)(int fd);
	int (*fsync)(int fd);
	int (*ftruncate)(int fd, off_t len);
	int (*fallocate)(int fd, off_t off, off_t len); /* posix_fallocate semantics, -1/errno */
	int (*rename)(const char *from, const char *to);
	int (*unlink)(const char *path);
	uint64_t (*now_ms)(void); /* wall clock, ms since the epoch (TTL) */
};

/* The real system calls. */
extern const struct sl_io sl_io_default;

#endif
