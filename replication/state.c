/*
 * state.c — the node's persistent replication state, DIR/REPL.
 *
 * It lives inside the data directory so that a full resync, which builds a
 * whole new directory and swaps it in with one rename, changes data and
 * state together: there is no moment where the store and the history id
 * disagree.  Text, one field a line, ending with "end" (a file without it is
 * refused rather than half-read):
 *
 *   shiplog-repl 1
 *   node 0123456789abcdef
 *   history <32 hex>
 *   role primary|follower
 *   primary <url>|-
 *   floor <seq>
 *   link <32 hex> <seq>        (zero or more, oldest first)
 *   end
 *
 * Invariant: the file is replaced only by write temp → fsync → rename →
 * fsync directory.  The engine deletes stray *.tmp files at open.
 *
 * On a full disk the temp file could not be written, and a primary that
 * starts again must record its new history before it serves anything: it
 * would refuse to start, its reads gone with its writes.  So each save
 * leaves DIR/REPL.spare behind, SPARE_BYTES already written (allocated),
 * and the next save writes into it in place (no new block), truncates it
 * to its text, fsyncs and renames it over REPL; the old REPL's blocks are
 * then free for the next spare.  Without a spare (the disk filled up
 * before one could be made) a save takes the temp file's path, as it does
 * where writing in place takes new blocks too (copy-on-write filesystems:
 * btrfs, ZFS; the spare helps on ext4, xfs, tmpfs).  The spare's contents
 * are never read.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "repl_int.h"

void repl_hex(const uint8_t *b, size_t n, char *out)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = d[b[i] >> 4];
		out[2 * i + 1] = d[b[i] & 15];
	}
	out[2 * n] = '\0';
}

static int unhex(const char *s, uint8_t *out, size_t n)
{
	if (strlen(s) != 2 * n) {
		return -1;
	}
	for (size_t i = 0; i < 2 * n; i++) {
		char c = s[i];
		int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (v < 0) {
			return -1;
		}
		if (i % 2 == 0) {
			out[i / 2] = (uint8_t)(v << 4);
		} else {
			out[i / 2] |= (uint8_t)v;
		}
	}
	return 0;
}

int repl_random(void *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t k = getrandom((uint8_t *)buf + got, n - got, 0);
		if (k < 0) {
			if (errno == EINTR) {
				continue;
			}
			return SL_EIO;
		}
		got += (size_t)k;
	}
	return SL_OK;
}

/* A whole unsigned decimal number (no sign, no trailing bytes). */
static int parse_u64(const char *s, uint64_t *v)
{
	if (*s < '0' || *s > '9') {
		return -1;
	}
	char *e;
	errno = 0;
	unsigned long long x = strtoull(s, &e, 10);
	if (errno != 0 || *e != '\0') {
		return -1;
	}
	*v = x;
	return 0;
}

int sl_repl_url_ok(const char *url)
{
	size_t n = url != NULL ? strlen(url) : 0;
	if (n == 0 || n >= sizeof(((repl_state *)0)->primary) || strstr(url, "://") == NULL) {
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)url[i];
		if (c <= ' ' || c == 0x7f) {
			return 0; /* no whitespace or control bytes: REPL is line-based */
		}
	}
	return 1;
}

/* Each line is checked whole: a REPL that does not read exactly as
 * repl_state_save writes it is refused (*bad_line set), never half-used —
 * a typo in `role` once made a follower come up writable. */
int repl_state_load(const char *dir, repl_state *st, int *bad_line)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/REPL", dir);
	*bad_line = 0;
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		return errno == ENOENT ? SL_ENOTFOUND : SL_EIO;
	}
	memset(st, 0, sizeof(*st));
	char line[512];
	int ok = 0, have_hid = 0, have_node = 0, have_role = 0, lineno = 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		size_t len = strcspn(line, "\n");
		if (line[len] != '\n' && !feof(f)) {
			break; /* longer than any line we write */
		}
		line[len] = '\0';
		const char *sp = strchr(line, ' ');
		const char *arg = sp != NULL ? sp + 1 : "";
		size_t kl = sp != NULL ? (size_t)(sp - line) : len;
		uint64_t v;
		if (lineno == 1) {
			if (strcmp(line, "shiplog-repl 1") != 0) {
				break;
			}
			continue;
		}
		if (strcmp(line, "end") == 0) {
			ok = 1;
			break;
		}
#define KEY(k) (kl == sizeof(k) - 1 && memcmp(line, k, kl) == 0)
		uint8_t nid[8];
		if (KEY("node") && unhex(arg, nid, sizeof(nid)) == 0) {
			memcpy(st->node_id, arg, 17);
			have_node = 1;
		} else if (KEY("history") && unhex(arg, st->hid, SL_HID_BYTES) == 0) {
			have_hid = 1;
		} else if (KEY("role") &&
		           (strcmp(arg, "follower") == 0 || strcmp(arg, "primary") == 0)) {
			st->role = strcmp(arg, "follower") == 0 ? ROLE_FOLLOWER : ROLE_PRIMARY;
			have_role = 1;
		} else if (KEY("primary") && (strcmp(arg, "-") == 0 || sl_repl_url_ok(arg))) {
			snprintf(st->primary, sizeof(st->primary), "%s",
			         strcmp(arg, "-") ? arg : "");
		} else if (KEY("floor") && parse_u64(arg, &v) == 0) {
			st->floor = v;
		} else if (KEY("link") && st->nlinks < SL_MAX_LINKS &&
		           strlen(arg) > 2 * SL_HID_BYTES && arg[2 * SL_HID_BYTES] == ' ' &&
		           parse_u64(arg + 2 * SL_HID_BYTES + 1, &v) == 0) {
			char h[2 * SL_HID_BYTES + 1];
			memcpy(h, arg, 2 * SL_HID_BYTES);
			h[2 * SL_HID_BYTES] = '\0';
			if (unhex(h, st->links[st->nlinks].id, SL_HID_BYTES) != 0) {
				break;
			}
			st->links[st->nlinks++].last_seq = v;
		} else {
			break;
		}
#undef KEY
	}
	fclose(f);
	if (ok && have_hid && have_node && have_role) {
		return SL_OK;
	}
	*bad_line = lineno;
	return SL_ECORRUPT;
}

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	if (fd < 0) {
		return -1;
	}
	int rc = fsync(fd);
	close(fd);
	return rc;
}

#define SPARE_BYTES 8192 /* what one save writes at most (buf below) */

static int write_all(int fd, const char *buf, size_t n)
{
	for (size_t off = 0; off < n;) {
		ssize_t k = pwrite(fd, buf + off, n - off, (off_t)off);
		if (k < 0 && errno == EINTR) {
			continue;
		}
		if (k <= 0) {
			return k < 0 && errno != ENOSPC && errno != EDQUOT ? SL_EIO : SL_ENOSPC;
		}
		off += (size_t)k;
	}
	return SL_OK;
}

/* Makes DIR/REPL.spare (SPARE_BYTES written and synced) unless it is
 * there; best effort: without it the next save takes the temp path. */
static void spare_make(const char *dir)
{
	char spare[4200];
	snprintf(spare, sizeof(spare), "%s/REPL.spare", dir);
	struct stat sb;
	if (stat(spare, &sb) == 0 && sb.st_size >= SPARE_BYTES) {
		return;
	}
	int fd = open(spare, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) {
		return;
	}
	static const char zeros[SPARE_BYTES];
	int ok = write_all(fd, zeros, sizeof(zeros)) == SL_OK && fsync(fd) == 0;
	close(fd);
	if (!ok) {
		unlink(spare); /* a part of it would pass for a whole one */
	}
}

/* Writes n bytes of buf as DIR/REPL's next contents into the spare and
 * renames it over REPL: SL_ENOTFOUND when there is no whole spare. */
static int save_in_spare(const char *dir, const char *path, const char *buf, size_t n)
{
	char spare[4200];
	snprintf(spare, sizeof(spare), "%s/REPL.spare", dir);
	int fd = open(spare, O_WRONLY);
	struct stat sb;
	if (fd < 0 || fstat(fd, &sb) != 0 || sb.st_size < SPARE_BYTES || (size_t)sb.st_size < n) {
		if (fd >= 0) {
			close(fd);
		}
		return SL_ENOTFOUND;
	}
	int rc = write_all(fd, buf, n);
	if (rc == SL_OK && (ftruncate(fd, (off_t)n) != 0 || fsync(fd) != 0)) {
		rc = SL_EIO;
	}
	close(fd);
	if (rc == SL_OK && rename(spare, path) != 0) {
		rc = SL_EIO;
	}
	if (rc != SL_OK) {
		unlink(spare); /* half written: no longer a spare */
	}
	return rc;
}

/* Makes n bytes of buf DIR/REPL's contents (path): into the spare, else
 * through the temp file (tmp), synced and renamed over it.  The directory
 * is not synced. */
static int put_file(const char *dir, const char *path, const char *tmp, const char *buf, size_t n)
{
	int rc = save_in_spare(dir, path, buf, n);
	if (rc == SL_ENOTFOUND || rc == SL_ENOSPC) {
		/* no spare, or one that an overwrite in place does not fit (a
		 * copy-on-write filesystem allocates anew): the temp file */
		int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0) {
			return errno == ENOSPC || errno == EDQUOT ? SL_ENOSPC : SL_EIO;
		}
		rc = write_all(fd, buf, n);
		if (rc == SL_OK && fsync(fd) != 0) {
			rc = SL_EIO;
		}
		close(fd);
		if (rc == SL_OK && rename(tmp, path) != 0) {
			rc = SL_EIO;
		}
		if (rc != SL_OK) {
			unlink(tmp);
		}
	}
	return rc;
}

int repl_state_save(const char *dir, const repl_state *st)
{
	char path[4200], tmp[4200], hid[33];
	snprintf(path, sizeof(path), "%s/REPL", dir);
	snprintf(tmp, sizeof(tmp), "%s/REPL.tmp", dir);
	char buf[SPARE_BYTES];
	size_t n = 0;
	repl_hex(st->hid, SL_HID_BYTES, hid);
	n += (size_t)snprintf(buf + n, sizeof(buf) - n,
	                      "shiplog-repl 1\nnode %s\nhistory %s\nrole %s\nprimary %s\nfloor "
	                      "%llu\n",
	                      st->node_id, hid, st->role == ROLE_FOLLOWER ? "follower" : "primary",
	                      st->primary[0] ? st->primary : "-", (unsigned long long)st->floor);
	for (size_t i = 0; i < st->nlinks && n < sizeof(buf) - 80; i++) {
		repl_hex(st->links[i].id, SL_HID_BYTES, hid);
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "link %s %llu\n", hid,
		                      (unsigned long long)st->links[i].last_seq);
	}
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "end\n");
	/* what REPL holds now: put back if the new one cannot be made
	 * durable (below) */
	char old[SPARE_BYTES];
	ssize_t oldn = -1;
	int ofd = open(path, O_RDONLY);
	if (ofd >= 0) {
		oldn = pread(ofd, old, sizeof(old), 0);
		close(ofd);
	}
	int rc = put_file(dir, path, tmp, buf, n);
	if (rc == SL_OK && fsync_dir(dir) != 0) {
		/* Renamed, but not durable.  The callers keep the state they
		 * had (a promotion that cannot be recorded stays a follower), so
		 * REPL goes back to it too: left as written, the next start took
		 * a state the node never ran with (a second primary, a review
		 * in the twenty-seventh session). */
		if (oldn > 0) {
			(void)put_file(dir, path, tmp, old, (size_t)oldn);
		}
		rc = SL_EIO;
	}
	if (rc == SL_OK) {
		spare_make(dir); /* in the old REPL's room, when the disk is full */
	}
	return rc;
}

int repl_rm_rf(const char *path)
{
	struct stat sb;
	if (lstat(path, &sb) != 0) {
		return errno == ENOENT ? 0 : -1;
	}
	if (!S_ISDIR(sb.st_mode)) {
		return unlink(path);
	}
	DIR *d = opendir(path);
	if (d == NULL) {
		return -1;
	}
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
			continue;
		}
		char sub[4400];
		snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
		if (repl_rm_rf(sub) != 0) {
			rc = -1;
		}
	}
	closedir(d);
	if (rmdir(path) != 0) {
		rc = -1;
	}
	return rc;
}
