/*
 * io.c — the real system calls behind the I/O seam (io.h).  Kept apart so
 * that nothing else in storage/ calls open/write/fsync directly: tests swap
 * the table to inject EIO, ENOSPC and crashes.
 */
#define _GNU_SOURCE
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int io_open(const char *path, int flags, mode_t mode)
{
	return open(path, flags | O_CLOEXEC, mode);
}

static int io_fallocate(int fd, off_t off, off_t len)
{
	int rc = posix_fallocate(fd, off, len);
	if (rc != 0) {
		errno = rc;
		return -1;
	}
	return 0;
}

static uint64_t io_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

const struct sl_io sl_io_default = {
    .open = io_open,
    .close = close,
    .pread = pread,
    .pwrite = pwrite,
    .fdatasync = fdatasync,
    .fsync = fsync,
    .ftruncate = ftruncate,
    .fallocate = io_fallocate,
    .rename = rename,
    .unlink = unlink,
    .now_ms = io_now_ms,
};
