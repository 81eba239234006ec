/*
 * movein.c — replacing a store's files with a complete store loaded in
 * DIR/.resync, for a data directory that is itself a mount point (where
 * DIR.resync beside it would be on another filesystem and the atomic
 * directory exchange of sl_swap_dir fails with EXDEV).
 *
 * Invariants:
 *  1. The files move only once DIR/.resync/SWAP exists (durable): before
 *     it, DIR holds the old store untouched and an interrupted load is
 *     just a directory to discard.
 *  2. SWAP: DIR's store files (segments, hints, *.tmp, REPL; nothing else
 *     an operator may keep there) are being removed (repeatable).
 *     Then SWAP is renamed MOVING (durable).  MOVING: .resync's files are
 *     being renamed into DIR (repeatable: what was moved is gone from
 *     .resync).  DIR's old files are never removed once one new file may
 *     be among them.
 *  3. sl_open finishes a move interrupted at either mark before it reads
 *     the directory (with DIR/LOCK held), so a crash at any point leaves
 *     either the old store or the new one, never a mix.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db.h"

#define STAGING ".resync"

int sl_staging_dir(const char *dir, char *out, size_t cap, int *nested)
{
	if (dir == NULL || out == NULL || nested == NULL) {
		return SL_EINVAL;
	}
	size_t n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/') {
		n--;
	}
	char *parent = sl_db_parent_dir(dir);
	if (parent == NULL) {
		return SL_ENOMEM;
	}
	/* A mount point cannot be renamed (EBUSY), whatever is mounted there
	 * (a bind mount of the same filesystem too); another filesystem
	 * under the parent could not be exchanged with (EXDEV). */
	struct stat sd, sp;
	struct statx sx;
	int root = statx(AT_FDCWD, dir, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &sx) == 0 &&
	           (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) &&
	           (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
	*nested = root || (stat(dir, &sd) == 0 && stat(parent, &sp) == 0 && sd.st_dev != sp.st_dev);
	free(parent);
	int w = *nested ? snprintf(out, cap, "%.*s/" STAGING, (int)n, dir)
	                : snprintf(out, cap, "%.*s.resync", (int)n, dir);
	return w < 0 || (size_t)w >= cap ? SL_EINVAL : SL_OK;
}

static int exists_at(int dfd, const char *name)
{
	struct stat st;
	return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* A file of a store (or of the node's state beside it): what the old
 * store's removal may delete.  Anything else in DIR is left alone. */
static int store_file(const char *name)
{
	size_t n = strlen(name);
	return (n >= 10 && sl_db_is_digits(name, 10) &&
	        (strcmp(name + 10, ".seg") == 0 || strcmp(name + 10, ".hint") == 0)) ||
	       (n > 4 && strcmp(name + n - 4, ".tmp") == 0) || strcmp(name, "REPL") == 0 ||
	       strcmp(name, "DROPPING") == 0;
}

/* Calls fn(dfd, name, arg) for each regular file of dfd but LOCK and the
 * marks (with only_store, each store_file); stops at the first error.  A
 * directory that cannot be read to its end is an error, never a shorter
 * list (invariant 2: an old file left behind would mix the stores). */
static int each_file(int dfd, int only_store, int (*fn)(int, const char *, void *), void *arg)
{
	int fd = dup(dfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (d == NULL) {
		if (fd >= 0) {
			close(fd);
		}
		return SL_EIO;
	}
	rewinddir(d);
	int rc = SL_OK;
	for (;;) {
		errno = 0;
		struct dirent *e = readdir(d);
		if (e == NULL) {
			if (errno != 0) {
				rc = SL_EIO;
			}
			break;
		}
		if (strcmp(e->d_name, "LOCK") == 0 || strcmp(e->d_name, "SWAP") == 0 ||
		    strcmp(e->d_name, "MOVING") == 0 || (only_store && !store_file(e->d_name))) {
			continue;
		}
		struct stat st;
		if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
			if (errno == ENOENT) {
				continue;
			}
			rc = SL_EIO;
			break;
		}
		if (S_ISREG(st.st_mode) && (rc = fn(dfd, e->d_name, arg)) != SL_OK) {
			break;
		}
	}
	closedir(d);
	return rc;
}

static int remove_one(int dfd, const char *name, void *arg)
{
	(void)arg;
	return unlinkat(dfd, name, 0) == 0 || errno == ENOENT ? SL_OK : SL_EIO;
}

static int move_one(int rfd, const char *name, void *arg)
{
	int dirfd = *(int *)arg;
	return renameat(rfd, name, dirfd, name) == 0 ? SL_OK : SL_EIO;
}

enum { MARK_NONE, MARK_SWAP, MARK_MOVING };

/* Opens dirfd's .resync into *rfd and says which mark it carries (none:
 * *rfd < 0 when it does not exist, SL_EIO when it cannot be opened). */
static int staging_mark(int dirfd, int *rfd)
{
	*rfd = openat(dirfd, STAGING, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*rfd < 0) {
		return errno == ENOENT ? MARK_NONE : SL_EIO;
	}
	return exists_at(*rfd, "MOVING") ? MARK_MOVING
	       : exists_at(*rfd, "SWAP") ? MARK_SWAP
	                                 : MARK_NONE;
}

/* Steps 2-3 from whichever mark .resync carries; SL_ENOTFOUND when it
 * carries none (or does not exist). */
static int finish(int dirfd)
{
	int rfd;
	int mark = staging_mark(dirfd, &rfd);
	if (mark < 0 || mark == MARK_NONE) {
		if (rfd >= 0) {
			close(rfd);
		}
		return mark < 0 ? mark : SL_ENOTFOUND; /* invariant 1: not complete */
	}
	int rc = SL_OK;
	if (mark == MARK_SWAP) {
		if ((rc = each_file(dirfd, 1, remove_one, NULL)) != SL_OK || fsync(dirfd) != 0 ||
		    renameat(rfd, "SWAP", rfd, "MOVING") != 0 || fsync(rfd) != 0) {
			close(rfd);
			return rc != SL_OK ? rc : SL_EIO;
		}
	}
	if ((rc = each_file(rfd, 0, move_one, &dirfd)) != SL_OK || fsync(dirfd) != 0) {
		close(rfd);
		return rc != SL_OK ? rc : SL_EIO;
	}
	unlinkat(rfd, "LOCK", 0);
	unlinkat(rfd, "MOVING", 0);
	close(rfd);
	if (unlinkat(dirfd, STAGING, AT_REMOVEDIR) != 0 || fsync(dirfd) != 0) {
		return SL_EIO;
	}
	return SL_OK;
}

int sl_move_in_finish(int dirfd)
{
	int rc = finish(dirfd);
	return rc == SL_ENOTFOUND ? SL_OK : rc;
}

int sl_move_in_pending(int dirfd)
{
	int rfd;
	int mark = staging_mark(dirfd, &rfd);
	if (rfd >= 0) {
		close(rfd);
	}
	return mark == MARK_SWAP || mark == MARK_MOVING;
}

int sl_move_in(const char *dir)
{
	if (dir == NULL) {
		return SL_EINVAL;
	}
	int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		return errno == ENOENT ? SL_ENOTFOUND : SL_EIO;
	}
	int lockfd = openat(dirfd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (lockfd < 0 || flock(lockfd, LOCK_EX | LOCK_NB) != 0) {
		int busy = lockfd >= 0 && errno == EWOULDBLOCK;
		if (lockfd >= 0) {
			close(lockfd);
		}
		close(dirfd);
		return busy ? SL_EBUSY : SL_EIO;
	}
	int rc = SL_OK;
	int rfd = openat(dirfd, STAGING, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rfd < 0) {
		rc = errno == ENOENT ? SL_ENOTFOUND : SL_EIO;
	} else {
		/* The loaded store must be closed: its LOCK is free. */
		int sfd = openat(rfd, "LOCK", O_RDWR | O_CLOEXEC);
		if (sfd >= 0 && flock(sfd, LOCK_EX | LOCK_NB) != 0) {
			close(sfd);
			close(rfd);
			close(lockfd);
			close(dirfd);
			return SL_EBUSY;
		}
		/* invariant 1: the mark, durable (and .resync's own entry in DIR),
		 * before anything moves */
		int mfd = openat(rfd, "SWAP", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (mfd < 0 || fsync(mfd) != 0 || fsync(rfd) != 0 || fsync(dirfd) != 0) {
			rc = mfd < 0 && (errno == ENOSPC || errno == EDQUOT) ? SL_ENOSPC : SL_EIO;
			if (mfd >= 0 || exists_at(rfd, "SWAP")) {
				unlinkat(rfd, "SWAP", 0); /* not marked: nothing moved */
			}
		}
		if (mfd >= 0) {
			close(mfd);
		}
		if (sfd >= 0) {
			close(sfd);
		}
		close(rfd);
		if (rc == SL_OK) {
			rc = finish(dirfd);
		}
	}
	close(lockfd);
	close(dirfd);
	return rc;
}
