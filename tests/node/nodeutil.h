/*
 * nodeutil.h — helpers for the node's integration tests: free ports, start
 * a real shiplogd (path in $SHIPLOGD) on 127.0.0.1, wait until it answers,
 * stop it by pid.  Every test stops what it started; nothing here kills by
 * name.
 */
#ifndef SL_NODEUTIL_H
#define SL_NODEUTIL_H

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "testutil.h"

typedef struct nu_daemon {
	pid_t pid;
	int port;
	char url[64];
	char dir[TU_PATH];
	char log[TU_PATH];
} nu_daemon;

static inline void nu_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

/* 127.0.0.1:port */
static inline struct sockaddr_in nu_loopback(int port)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)port);
	return a;
}

/* A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks). */
static inline int nu_free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0) {
		return -1;
	}
	struct sockaddr_in a = nu_loopback(0);
	socklen_t len = sizeof(a);
	int port = -1;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0) {
		port = ntohs(a.sin_port);
	}
	close(fd);
	return port;
}

/* A TCP connection to 127.0.0.1:port (blocking), or -1. */
static inline int nu_tcp_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0) {
		return -1;
	}
	struct sockaddr_in a = nu_loopback(port);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static inline const char *nu_shiplogd(void)
{
	const char *p = getenv("SHIPLOGD");
	return p != NULL && *p ? p : "./shiplogd";
}

/* Forks and execs shiplogd with argv[1..] = args (NULL-terminated), stderr
 * (and stdout) appended to logpath.  Returns the pid or -1. */
static inline pid_t nu_spawn_args(const char *const *args, const char *logpath)
{
	const char *argv[64];
	size_t n = 0;
	argv[n++] = nu_shiplogd();
	/* SL_TEST_TRANSPORT=nng|epoll: the client front every daemon of the
	 * test runs (node/CMakeLists.txt runs the node's tests with both);
	 * first, so that a --transport in args wins */
	const char *tr = getenv("SL_TEST_TRANSPORT");
	if (tr != NULL && *tr) {
		argv[n++] = "--transport";
		argv[n++] = tr;
	}
	for (size_t i = 0; args != NULL && args[i] != NULL && n < 63; i++) {
		argv[n++] = args[i];
	}
	argv[n] = NULL;
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid == 0) {
		/* A test killed before it could stop its daemons takes them
		 * with it (they would keep ports, and a test's private tmpfs). */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent) {
			_exit(127);
		}
		if (logpath != NULL) {
			int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
			if (fd >= 0) {
				dup2(fd, 1);
				dup2(fd, 2);
				close(fd);
			}
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return pid;
}

/* Waits up to timeout_ms for pid to exit.  Returns its exit status (0-255),
 * 128+signal when killed by a signal, or -1 when it is still running. */
static inline int nu_wait_exit(pid_t pid, int timeout_ms)
{
	for (int waited = 0;; waited += 10) {
		int st = 0;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			if (WIFEXITED(st)) {
				return WEXITSTATUS(st);
			}
			if (WIFSIGNALED(st)) {
				return 128 + WTERMSIG(st);
			}
			return -1;
		}
		if (r < 0 || waited >= timeout_ms) {
			return -1;
		}
		nu_sleep_ms(10);
	}
}

/* Runs shiplogd with args to completion (it must exit by itself within
 * 15 s) and returns its exit status; its output goes to dir/<tag>.out. */
static inline int nu_run_to_exit(const char *dir, const char *tag, const char *const *args)
{
	char log[TU_PATH];
	snprintf(log, sizeof(log), "%s/%s.out", dir, tag);
	pid_t pid = nu_spawn_args(args, log);
	if (pid <= 0) {
		return -1;
	}
	int st = nu_wait_exit(pid, 15000);
	if (st < 0) {
		kill(pid, SIGKILL);
		nu_wait_exit(pid, 5000);
	}
	return st;
}

/* Whether the file at path holds needle; the file is printed when not. */
static inline int nu_file_contains(const char *path, const char *needle)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	if (tu_read_file(path, &buf, &len) != 0) {
		return 0;
	}
	buf[len] = '\0';
	int found = strstr((char *)buf, needle) != NULL;
	if (!found) {
		fprintf(stderr, "expected '%s' in:\n%s\n", needle, (char *)buf);
	}
	free(buf);
	return found;
}

/* Whether dir/<tag>.out (nu_run_to_exit) holds needle; printed when not. */
static inline int nu_out_contains(const char *dir, const char *tag, const char *needle)
{
	char log[TU_PATH];
	snprintf(log, sizeof(log), "%s/%s.out", dir, tag);
	return nu_file_contains(log, needle);
}

/* Starts shiplogd over dir listening on url (any URL it takes), with
 * extra flags, and waits until it answers a ping (up to 15 s).  0 on
 * success (d filled; d->port is not), -1 when it exited or never answered
 * (it is killed then). */
static inline int nu_start_url(nu_daemon *d, const char *dir, const char *url,
                               const char *const *extra)
{
	memset(d, 0, sizeof(*d));
	if (snprintf(d->dir, sizeof(d->dir), "%s", dir) >= (int)sizeof(d->dir) ||
	    snprintf(d->url, sizeof(d->url), "%s", url) >= (int)sizeof(d->url) ||
	    snprintf(d->log, sizeof(d->log), "%s.log", dir) >= (int)sizeof(d->log)) {
		return -1;
	}
	const char *args[48];
	size_t n = 0;
	args[n++] = "--dir";
	args[n++] = d->dir;
	args[n++] = "--listen";
	args[n++] = d->url;
	for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 46; i++) {
		args[n++] = extra[i];
	}
	args[n] = NULL;
	d->pid = nu_spawn_args(args, d->log);
	if (d->pid < 0) {
		return -1;
	}
	for (int waited = 0; waited < 15000; waited += 20) {
		if (nu_wait_exit(d->pid, 0) >= 0) {
			d->pid = -1;
			return -1; /* exited: maybe the port was taken meanwhile */
		}
		sl_client *c = NULL;
		if (sl_client_open(d->url, 1000, &c) == SL_OK) {
			int rc = sl_client_ping(c);
			sl_client_close(c);
			if (rc == SL_OK) {
				return 0;
			}
		}
		nu_sleep_ms(20);
	}
	kill(d->pid, SIGKILL);
	nu_wait_exit(d->pid, 5000);
	d->pid = -1;
	return -1;
}

/* Starts shiplogd on a fresh free port over dir, with extra flags, and
 * waits until it answers a ping (up to 15 s).  0 on success (d filled),
 * -1 when it exited or never answered (it is killed then). */
static inline int nu_start(nu_daemon *d, const char *dir, const char *const *extra)
{
	for (int attempt = 0; attempt < 5; attempt++) {
		int port = nu_free_port();
		char url[64];
		snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
		if (nu_start_url(d, dir, url, extra) == 0) {
			d->port = port;
			return 0;
		}
	}
	return -1;
}

/* Sends sig to the daemon and waits for it (up to 30 s, then SIGKILL).
 * Returns its exit status as nu_wait_exit does. */
static inline int nu_stop(nu_daemon *d, int sig)
{
	if (d->pid <= 0) {
		return -1;
	}
	kill(d->pid, sig);
	int st = nu_wait_exit(d->pid, 30000);
	if (st < 0) {
		kill(d->pid, SIGKILL);
		st = nu_wait_exit(d->pid, 5000);
		st = -1;
	}
	d->pid = -1;
	return st;
}

/* Sends SIGSTOP to pid and waits (up to 5 s) until it is stopped: the
 * signal lands asynchronously, and a request sent right after could still
 * be served.  0, or -1 when it never showed as stopped. */
static inline int nu_sigstop(pid_t pid)
{
	kill(pid, SIGSTOP);
	/* Every thread, not just the first: the stop starts when one thread
	 * takes the signal, and on a busy machine another thread (a
	 * follower's fetch thread) ran on, applying and acknowledging, for
	 * as long as that one waited for a CPU. */
	char dir[64];
	snprintf(dir, sizeof(dir), "/proc/%d/task", (int)pid);
	for (int waited = 0; waited < 5000; waited += 5) {
		DIR *d = opendir(dir);
		int all = d != NULL, seen = 0;
		struct dirent *e;
		while (all && (e = readdir(d)) != NULL) {
			if (e->d_name[0] == '.') {
				continue;
			}
			char path[360], buf[256];
			snprintf(path, sizeof(path), "%s/%s/stat", dir, e->d_name);
			FILE *f = fopen(path, "r");
			size_t n = f != NULL ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
			if (f != NULL) {
				fclose(f);
			}
			buf[n] = '\0';
			const char *rp = strrchr(buf, ')'); /* "tid (comm) S ..." */
			if (f != NULL && (rp == NULL || (rp[2] != 'T' && rp[2] != 't'))) {
				all = 0; /* a thread that exited meanwhile does not count */
			}
			seen += f != NULL;
		}
		if (d != NULL) {
			closedir(d);
		}
		if (all && seen > 0) {
			return 0;
		}
		nu_sleep_ms(5);
	}
	return -1;
}

/* A "NAME: N kB" line of /proc/PID/status (VmRSS, VmHWM, ...) in kB, -1
 * when unreadable. */
static inline long nu_status_kb(pid_t pid, const char *name)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	long kb = -1;
	size_t nl = strlen(name);
	while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, name, nl) == 0 && line[nl] == ':' &&
		    sscanf(line + nl + 1, " %ld kB", &kb) == 1) {
			break;
		}
	}
	if (f != NULL) {
		fclose(f);
	}
	return kb;
}

/* A writer thread for stop-under-load tests: puts load<id>-0, -1, ... to
 * url until a put fails; acked counts the acknowledged ones.  A failure a
 * stopping server may give (SL_ESHUTDOWN, SL_ECONN, SL_ETIMEDOUT: the
 * write counts as unacknowledged) ends it quietly; any other is bad_rc. */
typedef struct nu_load_arg {
	const char *url;
	int id;
	int acked;
	int bad_rc;
} nu_load_arg;

static inline void *nu_load_writer(void *p)
{
	nu_load_arg *a = p;
	sl_client *c = NULL;
	if (sl_client_open(a->url, 2000, &c) != SL_OK) {
		a->bad_rc = -1;
		return NULL;
	}
	char k[32];
	for (int i = 0; i < 10000000; i++) {
		snprintf(k, sizeof(k), "load%d-%d", a->id, i);
		int rc = sl_client_put(c, k, strlen(k), k, strlen(k), NULL);
		if (rc != SL_OK) {
			if (rc != SL_ESHUTDOWN && rc != SL_ECONN && rc != SL_ETIMEDOUT) {
				a->bad_rc = rc;
			}
			break;
		}
		a->acked = i + 1;
	}
	sl_client_close(c);
	return NULL;
}

/* The VmHWM (peak resident set) of process pid in kB, -1 when unreadable;
 * with reset, the peak is first set back to the current RSS (clear_refs
 * "5", root or the process's owner). */
static inline long nu_hwm_kb(pid_t pid, int reset)
{
	char path[64], line[256];
	if (reset) {
		snprintf(path, sizeof(path), "/proc/%d/clear_refs", (int)pid);
		FILE *c = fopen(path, "w");
		if (c != NULL) {
			fputs("5", c);
			fclose(c);
		}
	}
	(void)line;
	return nu_status_kb(pid, "VmHWM");
}

/* How many of pid's threads have a scheduler slice of ns nanoseconds
 * (the se.slice line of /proc/PID/task/TID/sched); -1 when the kernel
 * does not show it (before EEVDF). */
static inline int nu_threads_with_slice(pid_t pid, unsigned long long ns)
{
	char path[128];
	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	DIR *d = opendir(path);
	if (d == NULL) {
		return -1;
	}
	int n = 0, shown = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.') {
			continue;
		}
		char sp[512], line[256];
		snprintf(sp, sizeof(sp), "%s/%s/sched", path, e->d_name);
		FILE *f = fopen(sp, "r");
		if (f == NULL) {
			continue;
		}
		while (fgets(line, sizeof(line), f) != NULL) {
			unsigned long long v;
			if (strncmp(line, "se.slice", 8) == 0 &&
			    sscanf(strchr(line, ':') + 1, "%llu", &v) == 1) {
				shown = 1;
				n += v == ns;
			}
		}
		fclose(f);
	}
	closedir(d);
	return shown ? n : -1;
}

/* How many of pid's threads run under the scheduling policy `policy`
 * (SCHED_BATCH, ...; sched_getscheduler's reset-on-fork bit ignored). */
#ifndef SCHED_BATCH /* sched.h shows them under _GNU_SOURCE only */
#define SCHED_BATCH 3
#endif
#ifndef SCHED_RESET_ON_FORK
#define SCHED_RESET_ON_FORK 0x40000000
#endif
static inline int nu_threads_with_policy(pid_t pid, int policy)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	DIR *d = opendir(path);
	assert_non_null(d);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] != '.') {
			int p = sched_getscheduler((pid_t)atoi(e->d_name));
			n += p >= 0 && (p & ~SCHED_RESET_ON_FORK) == policy;
		}
	}
	closedir(d);
	return n;
}

/* Whether the daemon's log holds needle; printed when not. */
static inline int nu_log_contains(const nu_daemon *d, const char *needle)
{
	return nu_file_contains(d->log, needle);
}

/* Prints the daemon's log (for failures). */
static inline void nu_dump_log(const nu_daemon *d)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	if (tu_read_file(d->log, &buf, &len) == 0) {
		fprintf(stderr, "---- %s ----\n%.*s---- end ----\n", d->log, (int)len, (char *)buf);
		free(buf);
	}
}

/* Opens a client or returns NULL. */
static inline sl_client *nu_client(const nu_daemon *d)
{
	sl_client *c = NULL;
	if (sl_client_open(d->url, 10000, &c) != SL_OK) {
		return NULL;
	}
	return c;
}

#endif
