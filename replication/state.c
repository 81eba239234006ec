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

int repl_state_load(const char *dir, repl_state *st)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/REPL", dir);
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		return errno == ENOENT ? SL_ENOTFOUND : SL_EIO;
	}
	memset(st, 0, sizeof(*st));
	char line[512];
	int ok = 0, have_hid = 0, have_node = 0, lineno = 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		char a[300], b[300];
		unsigned long long v;
		lineno++;
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
		if (sscanf(line, "node %16s", a) == 1 && strlen(a) == 16) {
			memcpy(st->node_id, a, 17);
			have_node = 1;
		} else if (sscanf(line, "history %299s", a) == 1) {
			if (unhex(a, st->hid, SL_HID_BYTES) != 0) {
				break;
			}
			have_hid = 1;
		} else if (sscanf(line, "role %299s", a) == 1) {
			st->role = strcmp(a, "follower") == 0 ? ROLE_FOLLOWER : ROLE_PRIMARY;
		} else if (sscanf(line, "primary %255s", a) == 1) {
			snprintf(st->primary, sizeof(st->primary), "%s", strcmp(a, "-") ? a : "");
		} else if (sscanf(line, "floor %llu", &v) == 1) {
			st->floor = v;
		} else if (sscanf(line, "link %299s %llu", b, &v) == 2 &&
		           st->nlinks < SL_MAX_LINKS) {
			if (unhex(b, st->links[st->nlinks].id, SL_HID_BYTES) != 0) {
				break;
			}
			st->links[st->nlinks++].last_seq = v;
		} else {
			break;
		}
	}
	fclose(f);
	return ok && have_hid && have_node ? SL_OK : SL_ECORRUPT;
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

int repl_state_save(const char *dir, const repl_state *st)
{
	char path[4200], tmp[4200], hid[33];
	snprintf(path, sizeof(path), "%s/REPL", dir);
	snprintf(tmp, sizeof(tmp), "%s/REPL.tmp", dir);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) {
		return SL_EIO;
	}
	char buf[8192];
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
	int rc = SL_OK;
	if (write(fd, buf, n) != (ssize_t)n) {
		rc = errno == ENOSPC ? SL_ENOSPC : SL_EIO;
	}
	if (rc == SL_OK && fsync(fd) != 0) {
		rc = SL_EIO;
	}
	close(fd);
	if (rc == SL_OK && rename(tmp, path) != 0) {
		rc = SL_EIO;
	}
	if (rc == SL_OK && fsync_dir(dir) != 0) {
		rc = SL_EIO;
	}
	if (rc != SL_OK) {
		unlink(tmp);
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
