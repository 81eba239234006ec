/*
 * main.c — shiplogd: flags, startup, signals, shutdown.
 *
 * Startup refuses (message on stderr, exit status 1) rather than limping:
 * a bad flag, a data directory already in use, an address already in use.
 * Shutdown on SIGTERM/SIGINT: the server stops taking requests and finishes
 * the ones it has (server.c), then the store is synced and closed; exit 0.
 * Signals are blocked in every thread and taken synchronously by the main
 * thread with sigwait(), so no work happens in a signal handler.
 */
#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "io.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "repl.h"
#include "server.h"
#include "shiplog.h"
#include "slice.h"

typedef struct config {
	const char *dir;
	const char *listen;
	const char *metrics;
	const char *pidfile;
	sl_sync sync;
	const char *sync_name;
	uint64_t segment_bytes;
	double dead_ratio;
	uint64_t max_value;
	uint64_t max_key;
	int log_level;
	int workers;
	int contexts;
	int transport; /* SL_SERVER_AUTO, _NNG or _EPOLL */
	int io_threads;
	uint64_t frame_timeout_ms;
	const char *repl_listen; /* NULL: default (see usage) */
	const char *follow;
	uint64_t backlog_bytes;
	int backlog_set; /* --repl-backlog-bytes given */
	uint64_t min_replicas;
	uint64_t repl_timeout_ms;
	uint64_t min_seq_wait_ms;
	uint64_t repl_batch_us;
	uint64_t io_slice_us;
	int repl_sched_batch; /* --repl-sched batch */
	int repl_sched_fifo;  /* --repl-sched fifo */
} config;

static void usage(FILE *f)
{
	fprintf(
	    f, "usage: shiplogd [options]\n"
	       "\n"
	       "  --dir DIR                   data directory (default ./shiplog-data)\n"
	       "  --listen URL                client URL (default tcp://127.0.0.1:7420)\n"
	       "  --sync always|everysec|no   when writes reach the disk (default everysec)\n"
	       "  --segment-bytes N           rotate segments past N bytes (default 64m,\n"
	       "                              4k..3070m; from 17m, up to 1.06m early)\n"
	       "  --compact-dead-ratio R      compact a segment at this dead share, 0<R<=1\n"
	       "                              (default 0.5)\n"
	       "  --metrics-listen URL        serve metrics at http://HOST:PORT/metrics, or\n"
	       "                              at the URL's own path (default off)\n"
	       "  --log-level LEVEL           debug|info|warn|error (default info)\n"
	       "  --max-value-bytes N         largest value a put may write (default 16m,\n"
	       "                              max 1g); replication carries any stored one\n"
	       "  --max-key-bytes N           largest key a put may write (default 65535);\n"
	       "                              gets and deletes take any stored one\n"
	       "  --pidfile PATH              write the pid here while running (default none)\n"
	       "  --workers N                 worker threads for requests (default 64); at\n"
	       "                              most 2 per core run at once, the others cover\n"
	       "                              requests that wait (WAIT, compaction)\n"
	       "  --contexts N                requests in flight at once, --transport nng\n"
	       "                              (default 256)\n"
	       "  --transport auto|nng|epoll  epoll: tcp:// only, connections owned by event-\n"
	       "                              loop threads; nng: an nng REP socket, any nng\n"
	       "                              URL (ipc://, ws://, ...); same wire format, same\n"
	       "                              clients (default auto: epoll for tcp://).  With\n"
	       "                              epoll a tcp:// --repl-listen is served by the same\n"
	       "                              loops; unless nng, --follow tcp:// dials a plain\n"
	       "                              socket speaking that wire format\n"
	       "  --io-threads N              event loops for --transport epoll (default 1)\n"
	       "  --frame-timeout-ms MS       a connection that sent part of a message and\n"
	       "                              nothing more for MS is closed, with what it\n"
	       "                              held (--transport epoll; default 30000; 0: never)\n"
	       "  --io-slice-us US            the scheduler slice the event loops and the\n"
	       "                              follower's fetch threads ask for (Linux 6.12+\n"
	       "                              EEVDF; shorter: a wakeup preempts a busy thread\n"
	       "                              sooner, same CPU share); 0: the kernel's own\n"
	       "                              (default 100, the shortest it takes)\n"
	       "  --repl-listen URL|none      serve followers' fetches here (default\n"
	       "                              " SL_REPL_DEFAULT_URL "; none on a follower, by\n"
	       "                              --follow or by the role in DIR/REPL)\n"
	       "  --follow URL                be a follower of the primary whose --repl-listen\n"
	       "                              is URL (remembered in DIR/REPL across restarts)\n"
	       "  --repl-backlog-bytes N      log kept for followers to catch up from\n"
	       "                              (default 256m; 0 with --repl-listen none on a\n"
	       "                              primary); more is kept while a connected\n"
	       "                              follower still needs it, unless it is behind\n"
	       "                              and applied nothing for 10x --repl-timeout-ms\n"
	       "  --min-replicas N            refuse writes while fewer than N followers are\n"
	       "                              connected (default 0)\n"
	       "  --repl-timeout-ms MS        a follower silent this long counts as\n"
	       "                              disconnected, 10x as long: forgotten (default 5000)\n"
	       "  --min-seq-wait-ms MS        a read with --min-seq waits this long on a\n"
	       "                              follower before answering behind (default 1000)\n"
	       "  --repl-batch-us US          a follower that finds records already waiting at\n"
	       "                              each fetch pauses this long between fetches, so\n"
	       "                              each carries more (default 0: no pause)\n"
	       "  --repl-sched normal|batch|fifo  a follower's fetch and reader threads;\n"
	       "                              batch: SCHED_BATCH, never preempting a running\n"
	       "                              thread when woken, for a follower that shares its\n"
	       "                              cores with a busy primary: the primary keeps more\n"
	       "                              of its throughput, writes show later on this node\n"
	       "                              under load; fifo: the fetch thread runs SCHED_FIFO\n"
	       "                              while caught up, taking a busy core at once when\n"
	       "                              records arrive: writes show sooner here under\n"
	       "                              load, the cores' other work waits (needs root or\n"
	       "                              CAP_SYS_NICE; else normal) (default normal)\n"
	       "  --version                   print the version and exit\n"
	       "  -h, --help                  this text\n"
	       "\n"
	       "Sizes (--segment-bytes, --max-value-bytes, --max-key-bytes,\n"
	       "--repl-backlog-bytes) take k, m, g suffixes (powers of 1024); counts and\n"
	       "times are plain numbers.  SIGTERM or SIGINT stops the server cleanly\n"
	       "(in-flight requests finish, data is synced).\n");
}

/* "64m" → 67108864.  0 on success, -1 on a bad or overflowing number. */
static int parse_size(const char *s, uint64_t *out)
{
	char *end = NULL;
	errno = 0;
	if (s == NULL || *s < '0' || *s > '9') { /* strtoull takes " -1" */
		return -1;
	}
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || end == s) {
		return -1;
	}
	unsigned shift = 0;
	if (*end != '\0') {
		switch (*end) {
		case 'k':
		case 'K':
			shift = 10;
			break;
		case 'm':
		case 'M':
			shift = 20;
			break;
		case 'g':
		case 'G':
			shift = 30;
			break;
		default:
			return -1;
		}
		end++;
		if (*end == 'b' || *end == 'B') {
			end++;
		}
		if (*end != '\0') {
			return -1;
		}
	}
	if (shift && v > (UINT64_MAX >> shift)) {
		return -1;
	}
	*out = (uint64_t)v << shift;
	return 0;
}

/* A count or a time: a plain decimal number, no suffix ("1m" of
 * milliseconds would have meant 1,048,576 ms). */
static int parse_count(const char *s, uint64_t *out)
{
	for (const char *p = s; p != NULL && *p != '\0'; p++) {
		if (*p < '0' || *p > '9') {
			return -1;
		}
	}
	return parse_size(s, out);
}

/* URLs are checked with the flags, before the data directory is made (a
 * typo in a scheme was found only at listen, after the directory and its
 * REPL file had been created).  nng itself says whether it has the
 * transport, as sl_repl_url_dialable asks it for a --follow URL: a listener
 * is created, not started (nothing is bound).  NULL, or nng's reason. */
static const char *url_unlistenable(const char *url)
{
	nng_socket s;
	if (nng_rep0_open(&s) != 0) {
		return NULL; /* cannot tell: the listen will say */
	}
	nng_listener l;
	int rv = nng_listener_create(&l, s, url);
	nng_close(s);
	return rv == 0 ? NULL : nng_strerror(rv);
}

/* --metrics-listen: nng's HTTP server takes http:// only */
static int url_is_http(const char *url)
{
	nng_url *u = NULL;
	int ok = nng_url_parse(&u, url) == 0 && strcmp(u->u_scheme, "http") == 0;
	if (u != NULL) {
		nng_url_free(u);
	}
	return ok;
}

static int bad_flag(const char *flag, const char *val, const char *why)
{
	fprintf(stderr, "shiplogd: bad value '%s' for %s: %s (see --help)\n", val, flag, why);
	return -1;
}

/* A listen URL nng can use: 0, or bad_flag's -1 with nng's reason between
 * before and after. */
static int check_listen(const char *flag, const char *url, const char *before, const char *after)
{
	const char *why = url_unlistenable(url);
	if (why == NULL) {
		return 0;
	}
	char w[160];
	snprintf(w, sizeof(w), "%s%s%s", before, why, after);
	return bad_flag(flag, url, w);
}

enum {
	O_DIR = 256,
	O_LISTEN,
	O_SYNC,
	O_SEGMENT,
	O_RATIO,
	O_METRICS,
	O_LOGLEVEL,
	O_MAXVAL,
	O_MAXKEY,
	O_PIDFILE,
	O_WORKERS,
	O_CONTEXTS,
	O_REPL_LISTEN,
	O_FOLLOW,
	O_BACKLOG,
	O_MIN_REPLICAS,
	O_REPL_TIMEOUT,
	O_MIN_SEQ_WAIT,
	O_REPL_BATCH,
	O_IO_SLICE,
	O_REPL_SCHED,
	O_TRANSPORT,
	O_IO_THREADS,
	O_FRAME_TIMEOUT,
	O_VERSION,
	O_HELP,
};

static const struct option long_opts[] = {
    {"dir", required_argument, NULL, O_DIR},
    {"listen", required_argument, NULL, O_LISTEN},
    {"sync", required_argument, NULL, O_SYNC},
    {"segment-bytes", required_argument, NULL, O_SEGMENT},
    {"compact-dead-ratio", required_argument, NULL, O_RATIO},
    {"metrics-listen", required_argument, NULL, O_METRICS},
    {"log-level", required_argument, NULL, O_LOGLEVEL},
    {"max-value-bytes", required_argument, NULL, O_MAXVAL},
    {"max-key-bytes", required_argument, NULL, O_MAXKEY},
    {"pidfile", required_argument, NULL, O_PIDFILE},
    {"workers", required_argument, NULL, O_WORKERS},
    {"contexts", required_argument, NULL, O_CONTEXTS},
    {"repl-listen", required_argument, NULL, O_REPL_LISTEN},
    {"follow", required_argument, NULL, O_FOLLOW},
    {"repl-backlog-bytes", required_argument, NULL, O_BACKLOG},
    {"min-replicas", required_argument, NULL, O_MIN_REPLICAS},
    {"repl-timeout-ms", required_argument, NULL, O_REPL_TIMEOUT},
    {"min-seq-wait-ms", required_argument, NULL, O_MIN_SEQ_WAIT},
    {"repl-batch-us", required_argument, NULL, O_REPL_BATCH},
    {"io-slice-us", required_argument, NULL, O_IO_SLICE},
    {"repl-sched", required_argument, NULL, O_REPL_SCHED},
    {"transport", required_argument, NULL, O_TRANSPORT},
    {"io-threads", required_argument, NULL, O_IO_THREADS},
    {"frame-timeout-ms", required_argument, NULL, O_FRAME_TIMEOUT},
    {"version", no_argument, NULL, O_VERSION},
    {"help", no_argument, NULL, O_HELP},
    {NULL, 0, NULL, 0},
};

/* 0: run; 1: exit 0 (help/version); -1: exit 1 (message printed). */
static int parse_flags(int argc, char **argv, config *c)
{
	*c = (config){
	    .dir = "shiplog-data",
	    .listen = "tcp://127.0.0.1:7420",
	    .sync = SL_SYNC_EVERYSEC,
	    .sync_name = "everysec",
	    .segment_bytes = 64ull << 20,
	    .dead_ratio = 0.5,
	    .max_value = 16ull << 20,
	    .max_key = SL_MAX_KEY_BYTES,
	    .log_level = SL_LOG_INFO,
	    .workers = 0, /* auto, see default_workers() */
	    .contexts = 256,
	    .transport = SL_SERVER_AUTO,
	    .io_threads = 1,
	    .frame_timeout_ms = 30000,
	    .backlog_bytes = 256ull << 20,
	    .repl_timeout_ms = 5000,
	    .min_seq_wait_ms = 1000,
	    .io_slice_us = SL_SLICE_DEFAULT_US,
	};
	int ch;
	uint64_t v;
	opterr = 0; /* our own messages */
	while ((ch = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1) {
		switch (ch) {
		case O_DIR:
			c->dir = optarg;
			break;
		case O_LISTEN:
			if (check_listen(
			        "--listen", optarg, "",
			        "; want a URL like tcp://HOST:PORT (or ipc://PATH, ...)") != 0) {
				return -1;
			}
			c->listen = optarg;
			break;
		case O_SYNC:
			if (strcmp(optarg, "always") == 0) {
				c->sync = SL_SYNC_ALWAYS;
			} else if (strcmp(optarg, "everysec") == 0) {
				c->sync = SL_SYNC_EVERYSEC;
			} else if (strcmp(optarg, "no") == 0) {
				c->sync = SL_SYNC_NO;
			} else {
				return bad_flag("--sync", optarg, "want always, everysec or no");
			}
			c->sync_name = optarg;
			break;
		case O_SEGMENT:
			if (parse_size(optarg, &c->segment_bytes) != 0 || c->segment_bytes < 4096 ||
			    c->segment_bytes > SL_MAX_SEGMENT_BYTES) {
				return bad_flag(
				    "--segment-bytes", optarg,
				    "want a size from 4k to 3070m (offsets in a segment "
				    "are 32-bit)");
			}
			break;
		case O_RATIO: {
			char *end = NULL;
			c->dead_ratio = strtod(optarg, &end);
			if (end == optarg || *end != '\0' || !(c->dead_ratio > 0.0) ||
			    c->dead_ratio > 1.0) {
				return bad_flag("--compact-dead-ratio", optarg, "want 0 < R <= 1");
			}
			break;
		}
		case O_METRICS:
			if (!url_is_http(optarg)) {
				return bad_flag("--metrics-listen", optarg,
				                "want a URL like http://HOST:PORT");
			}
			c->metrics = optarg;
			break;
		case O_LOGLEVEL:
			c->log_level = sl_log_parse_level(optarg);
			if (c->log_level < 0) {
				return bad_flag("--log-level", optarg,
				                "want debug, info, warn or error");
			}
			break;
		case O_MAXVAL:
			if (parse_size(optarg, &c->max_value) != 0 || c->max_value > (1ull << 30)) {
				return bad_flag("--max-value-bytes", optarg, "want a size <= 1g");
			}
			break;
		case O_MAXKEY:
			if (parse_size(optarg, &c->max_key) != 0 || c->max_key == 0 ||
			    c->max_key > SL_MAX_KEY_BYTES) {
				return bad_flag("--max-key-bytes", optarg, "want 1..65535");
			}
			break;
		case O_PIDFILE:
			c->pidfile = optarg;
			break;
		case O_WORKERS:
			if (parse_count(optarg, &v) != 0 || v < 1 || v > 1024) {
				return bad_flag("--workers", optarg, "want 1..1024");
			}
			c->workers = (int)v;
			break;
		case O_TRANSPORT:
			if (strcmp(optarg, "auto") == 0) {
				c->transport = SL_SERVER_AUTO;
			} else if (strcmp(optarg, "nng") == 0) {
				c->transport = SL_SERVER_NNG;
			} else if (strcmp(optarg, "epoll") == 0) {
				c->transport = SL_SERVER_EPOLL;
			} else {
				return bad_flag("--transport", optarg, "want auto, nng or epoll");
			}
			break;
		case O_IO_THREADS:
			if (parse_count(optarg, &v) != 0 || v < 1 || v > 64) {
				return bad_flag("--io-threads", optarg, "want 1..64");
			}
			c->io_threads = (int)v;
			break;
		case O_CONTEXTS:
			if (parse_count(optarg, &v) != 0 || v < 1 || v > 65536) {
				return bad_flag("--contexts", optarg, "want 1..65536");
			}
			c->contexts = (int)v;
			break;
		case O_REPL_LISTEN:
			if (strcmp(optarg, "none") != 0 &&
			    check_listen("--repl-listen", optarg,
			                 "cannot listen for replication there: ", "") != 0) {
				return -1;
			}
			c->repl_listen = optarg;
			break;
		case O_FOLLOW:
			if (!sl_repl_url_ok(optarg)) {
				return bad_flag(
				    "--follow", optarg,
				    "want a URL like tcp://HOST:PORT (under 256 bytes, no "
				    "spaces or control characters)");
			}
			char why[64];
			if (!sl_repl_url_dialable(optarg, why, sizeof(why))) {
				return bad_flag("--follow", optarg, why);
			}
			c->follow = optarg;
			break;
		case O_BACKLOG:
			if (parse_size(optarg, &c->backlog_bytes) != 0) {
				return bad_flag("--repl-backlog-bytes", optarg, "want a size");
			}
			c->backlog_set = 1;
			break;
		case O_MIN_REPLICAS:
			if (parse_count(optarg, &c->min_replicas) != 0 || c->min_replicas > 64) {
				return bad_flag("--min-replicas", optarg, "want 0..64");
			}
			break;
		case O_REPL_TIMEOUT:
			if (parse_count(optarg, &c->repl_timeout_ms) != 0 ||
			    c->repl_timeout_ms < 100 || c->repl_timeout_ms > 3600000) {
				return bad_flag("--repl-timeout-ms", optarg, "want 100..3600000");
			}
			break;
		case O_REPL_BATCH:
			if (parse_count(optarg, &c->repl_batch_us) != 0 ||
			    c->repl_batch_us > 100000) {
				return bad_flag("--repl-batch-us", optarg, "want 0..100000");
			}
			break;
		case O_REPL_SCHED:
			if (strcmp(optarg, "normal") != 0 && strcmp(optarg, "batch") != 0 &&
			    strcmp(optarg, "fifo") != 0) {
				return bad_flag("--repl-sched", optarg,
				                "want normal, batch or fifo");
			}
			c->repl_sched_batch = strcmp(optarg, "batch") == 0;
			c->repl_sched_fifo = strcmp(optarg, "fifo") == 0;
			break;
		case O_IO_SLICE:
			if (parse_count(optarg, &c->io_slice_us) != 0 ||
			    (c->io_slice_us != 0 &&
			     (c->io_slice_us < 100 || c->io_slice_us > 100000))) {
				return bad_flag("--io-slice-us", optarg, "want 0 or 100..100000");
			}
			break;
		case O_FRAME_TIMEOUT:
			if (parse_count(optarg, &c->frame_timeout_ms) != 0 ||
			    (c->frame_timeout_ms != 0 &&
			     (c->frame_timeout_ms < 1000 || c->frame_timeout_ms > 86400000))) {
				return bad_flag("--frame-timeout-ms", optarg,
				                "want 0 or 1000..86400000");
			}
			break;
		case O_MIN_SEQ_WAIT:
			if (parse_count(optarg, &c->min_seq_wait_ms) != 0 ||
			    c->min_seq_wait_ms > 600000) {
				return bad_flag("--min-seq-wait-ms", optarg, "want 0..600000");
			}
			break;
		case O_VERSION:
			printf("shiplogd %s\n", SL_NODE_VERSION);
			return 1;
		case 'h':
		case O_HELP:
			usage(stdout);
			return 1;
		case ':':
			fprintf(stderr, "shiplogd: %s needs a value (see --help)\n",
			        argv[optind - 1]);
			return -1;
		default:
			fprintf(stderr, "shiplogd: unknown option '%s' (see --help)\n",
			        argv[optind - 1]);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "shiplogd: unexpected argument '%s' (see --help)\n", argv[optind]);
		return -1;
	}
	if (c->follow != NULL && c->repl_listen != NULL && strcmp(c->repl_listen, "none") != 0 &&
	    sl_repl_same_endpoint(c->follow, c->repl_listen)) {
		return bad_flag(
		    "--follow", c->follow,
		    "that is this node's own --repl-listen: a node cannot follow itself");
	}
	if (c->follow != NULL && sl_repl_same_endpoint(c->follow, c->listen)) {
		return bad_flag("--follow", c->follow,
		                "that is this node's own --listen; --follow takes the primary's "
		                "replication URL (its --repl-listen)");
	}
	return 0;
}

static void engine_log(void *arg, const char *level, const char *msg)
{
	(void)arg;
	int l = sl_log_parse_level(level);
	sl_log(l < 0 ? SL_LOG_WARN : l, "storage: %s", msg);
}

static void repl_log(int level, const char *msg)
{
	sl_log(level, "repl: %s", msg);
}

static int write_pidfile(const char *path)
{
	char tmp[4096];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
		return -1;
	}
	FILE *f = fopen(tmp, "w");
	if (f == NULL) {
		return -1;
	}
	fprintf(f, "%d\n", (int)getpid());
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

/* Many worker threads, few running at once: each extra running thread is a
 * context switch per request on a small machine (measured on 2 cores: 16
 * running workers 35k puts/s, 2-4 workers 45-50k), while requests that wait
 * (--acks, --min-seq, compact) park their thread with sl_workq_blocking and
 * let another run.  Under --sync always no thread waits for the disk on a
 * plain write: the server's committer answers after the group commit. */
static int cpu_count(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 && n < 512 ? (int)n : 4;
}

/* Ends a shutdown that nng left hanging (see main).  It watches only the
 * closing of the sockets: the store was synced before they began to
 * close, so nothing acknowledged is lost, and the next start recovers the
 * active segment as after any stop.  Once the sockets are closed it lets
 * go, so it never cuts short sl_close (g_teardown_mu: it exits holding
 * the mutex, and main takes it before going on). */
#define TEARDOWN_LIMIT_S 3

/* sl_server_opts.ready: the pidfile (arg, or none) is written once the
 * addresses are bound and before the first request is answered, so a
 * client that got an answer finds it. */
static int pidfile_ready(void *arg, char *err, size_t cap)
{
	const char *path = arg;
	if (path != NULL && write_pidfile(path) != 0) {
		snprintf(err, cap, "cannot write pidfile %s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* Removes the pidfile at path if it holds this process's pid (a start
 * that failed after writing it; never another process's). */
static void pidfile_remove_own(const char *path)
{
	FILE *f = path != NULL ? fopen(path, "r") : NULL;
	if (f == NULL) {
		return;
	}
	long pid = 0;
	int ours = fscanf(f, "%ld", &pid) == 1 && pid == (long)getpid();
	fclose(f);
	if (ours) {
		unlink(path);
	}
}

static const char *g_pidfile;
static pthread_mutex_t g_teardown_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_teardown_done;
static int g_final_sync_ok = 1; /* the final sync's outcome, for the watchdog's exit */

static void *shutdown_watchdog(void *arg)
{
	(void)arg;
	sleep(TEARDOWN_LIMIT_S);
	pthread_mutex_lock(&g_teardown_mu);
	if (g_teardown_done) {
		pthread_mutex_unlock(&g_teardown_mu);
		return NULL;
	}
	sl_log_error("the network library did not close its sockets within %d s "
	             "(nanomsg/nng#1543); exiting %s",
	             TEARDOWN_LIMIT_S,
	             g_final_sync_ok ? "with the data synced"
	                             : "(status 1: the final sync failed)");
	if (g_pidfile != NULL) {
		unlink(g_pidfile);
	}
	_exit(g_final_sync_ok ? 0 : 1);
	return NULL;
}

/* SHIPLOGD_TEST_FSYNC_EIO_AFTER=N: fdatasync calls left before the one
 * that fails (-1: none). */
static _Atomic long g_fsync_fault = -1;
static struct sl_io g_fault_io;

static int fault_fdatasync(int fd)
{
	if (atomic_fetch_sub(&g_fsync_fault, 1) == 0) {
		errno = EIO;
		return -1;
	}
	return sl_io_default.fdatasync(fd);
}

/* glibc's allocator, told to keep what it has mapped.  By default a
 * thread's heap shrinks when its top is freed and grows again with
 * mprotect(), and a large buffer is an mmap() and a munmap(): each takes
 * the process's mmap lock for writing, so the event loop waited behind a
 * worker's MADV_POPULATE_WRITE of the next segment pages (which holds it
 * for reading).  perf of the loop under 50 clients' puts: 160 sleeps in
 * mprotect in 1.3 s; none with these settings (the put figures did not
 * move measurably, nor did their p99.9 of 2-5 ms).  Heaps now grow 8 MiB
 * at a time and give back only a free top over 64 MiB (untouched pages
 * cost no memory).  Setting these turns off glibc's sliding mmap
 * threshold, so it is set where that slides to after the first large free
 * (32 MiB, its ceiling): at 1 MiB every snapshot chunk a follower received
 * was a fresh mapping, and a full resync of 1 M keys took 0.725 s against
 * 0.683 s (medians of 4 alternating runs). */
static void malloc_keep(void)
{
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	mallopt(M_TRIM_THRESHOLD, 64 << 20);
	mallopt(M_TOP_PAD, 8 << 20);
}

int main(int argc, char **argv)
{
	malloc_keep();
	/* Every thread inherits this mask: blocked before anything can start
	 * one.  parse_flags asks nng about URLs, and nng's first socket starts
	 * its threads; with the mask set after it, one of those could take
	 * SIGTERM's default action (test_node_ops: a server SIGTERMed after a
	 * SIGSTOP and SIGCONT exited 143, unsynced, in 5 runs of 6). */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	config c;
	int pr = parse_flags(argc, argv, &c);
	int running = 2 * cpu_count();
	if (c.workers == 0) {
		c.workers = 64;
	}
	if (running > c.workers) {
		running = c.workers;
	}
	if (pr != 0) {
		return pr > 0 ? 0 : 1;
	}
	sl_log_set_level(c.log_level);
	sl_slice_set((uint32_t)c.io_slice_us);
	sl_slice_set_batch(c.repl_sched_batch);
	sl_slice_set_fifo(c.repl_sched_fifo);

	signal(SIGPIPE, SIG_IGN);

	sl_node n = {0};
	pthread_rwlockattr_t rwa;
	pthread_rwlockattr_init(&rwa);
	/* A full resync's swap must not starve behind a stream of reads. */
	pthread_rwlockattr_setkind_np(&rwa, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&n.db_lock, &rwa);
	pthread_rwlockattr_destroy(&rwa);
	n.min_seq_wait_ms = (uint32_t)c.min_seq_wait_ms;
	n.start_ms = sl_node_mono_ms();
	n.max_key_bytes = (uint32_t)c.max_key;
	n.max_value_bytes = (uint32_t)c.max_value;
	n.max_msg_bytes = (size_t)c.max_value + SL_MSG_SLACK;
	n.scan_default = 1000;
	n.scan_max = 100000;
	n.sync_name = c.sync_name;
	n.role = "primary";

	sl_options o;
	sl_options_init(&o);
	o.sync = c.sync;
	o.segment_bytes = c.segment_bytes;
	o.compact_dead_ratio = c.dead_ratio;
	o.max_key_bytes = (uint32_t)c.max_key;
	o.max_value_bytes = (uint32_t)c.max_value;
	o.log_fn = engine_log;
	const char *fault = getenv("SHIPLOGD_TEST_FSYNC_EIO_AFTER");
	char *fend = NULL;
	long fn = fault != NULL ? strtol(fault, &fend, 10) : -1;
	if (fault != NULL && (*fault == '\0' || *fend != '\0' || fn < 0)) {
		sl_log_error("SHIPLOGD_TEST_FSYNC_EIO_AFTER must be a number >= 0, not '%s'",
		             fault);
		return 1;
	}
	if (fault != NULL) {
		/* A test hook (tests/repl/test_repl_storefail.c): the one
		 * fdatasync after the first N fails with EIO, as a disk might. */
		atomic_store(&g_fsync_fault, fn);
		g_fault_io = sl_io_default;
		g_fault_io.fdatasync = fault_fdatasync;
		o.io = &g_fault_io;
		sl_log_warn("test hook: the fdatasync after the first %s will fail with EIO",
		            fault);
	}
	/* Nothing is compacted until replication has set the backlog limit. */
	o.compact_protect_seq = 1;

	uint64_t t0 = sl_node_mono_ms();
	int rc = sl_open(c.dir, &o, &n.db);
	if (rc != SL_OK) {
		if (rc == SL_EBUSY) {
			sl_log_error(
			    "data directory %s is in use by another process; refusing to start",
			    c.dir);
		} else {
			/* say what the engine's code cannot: the usual reasons */
			struct stat sb;
			const char *why = sl_strerror(rc);
			if (stat(c.dir, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
				why = "it exists and is not a directory";
			} else if (access(c.dir, F_OK) == 0 && access(c.dir, W_OK | X_OK) != 0) {
				why = "no permission to write in it";
			}
			sl_log_error("cannot open data directory %s: %s", c.dir, why);
		}
		return 1;
	}
	sl_stats st;
	sl_stats_get(n.db, &st);
	sl_log_info("opened %s in %llu ms: %llu keys, last seq %llu, %llu segments "
	            "(%llu from hint files, %llu scanned)",
	            c.dir, (unsigned long long)(sl_node_mono_ms() - t0),
	            (unsigned long long)st.keys, (unsigned long long)st.last_seq,
	            (unsigned long long)st.segments, (unsigned long long)st.hints_loaded,
	            (unsigned long long)st.segments_scanned);

	int listen_default = c.repl_listen == NULL;
	const char *rl = c.repl_listen != NULL ? c.repl_listen
	                 : c.follow != NULL    ? NULL
	                                       : SL_REPL_DEFAULT_URL;
	if (rl != NULL && strcmp(rl, "none") == 0) {
		rl = NULL;
		/* A node that serves no followers keeps no log for them: the
		 * backlog held back compaction of its last 256 MiB for nothing */
		if (!c.backlog_set && c.follow == NULL) {
			c.backlog_bytes = 0;
		}
	}
	sl_repl_opts ro = {
	    .dir = c.dir,
	    .db_opts = &o,
	    .dbp = &n.db,
	    .db_lock = &n.db_lock,
	    .listen_url = rl,
	    .listen_is_default = listen_default && c.follow == NULL,
	    .follow_plain = c.transport != SL_SERVER_NNG,
	    /* a tcp:// one on the clients' epoll loops (server.h) */
	    .listen_front = rl != NULL &&
	                    sl_server_engine_for(c.transport, c.listen) == SL_SERVER_EPOLL &&
	                    sl_server_engine_for(SL_SERVER_AUTO, rl) == SL_SERVER_EPOLL,
	    .follow_url = c.follow,
	    .self_url = c.listen,
	    .backlog_bytes = c.backlog_bytes,
	    .min_replicas = (uint32_t)c.min_replicas,
	    .timeout_ms = (uint32_t)c.repl_timeout_ms,
	    .min_seq_wait_ms = (uint32_t)c.min_seq_wait_ms,
	    .batch_us = (uint32_t)c.repl_batch_us,
	    .max_record_bytes = 28 + (size_t)c.max_key + (size_t)c.max_value,
	    .log_fn = repl_log,
	};
	/* nng initialises itself on first use, and its check is not
	 * thread-safe (ThreadSanitizer saw the follower's fetch thread and main
	 * both doing it): make that first use here, before any thread starts. */
	nng_aio *warm = NULL;
	if (nng_aio_alloc(&warm, NULL, NULL) == 0) {
		nng_aio_free(warm);
	}
	char rerr[512];
	rc = sl_repl_start(&ro, &n.repl, rerr, sizeof(rerr));
	if (rc == SL_EBUSY && listen_default) {
		sl_log_warn("%s; serving no fetches (give --repl-listen)", rerr);
		ro.listen_url = NULL;
		rc = sl_repl_start(&ro, &n.repl, rerr, sizeof(rerr));
	}
	if (rc != SL_OK) {
		sl_log_error("%s; refusing to start", rerr);
		sl_close(n.db);
		return 1;
	}

	n.metrics = sl_metrics_new();
	sl_server_opts so = {
	    .listen_url = c.listen,
	    .metrics_url = c.metrics,
	    .contexts = c.contexts,
	    .engine = c.transport,
	    .io_threads = c.io_threads,
	    .frame_timeout_ms = (uint32_t)c.frame_timeout_ms,
	    .workers = c.workers,
	    .running = running,
	    .drain_ms = 30000,
	    .ready = pidfile_ready,
	    .ready_arg = (void *)c.pidfile,
	};
	sl_server *srv = NULL;
	char err[512];
	if (n.metrics == NULL || (rc = sl_server_start(&n, &so, &srv, err, sizeof(err))) != SL_OK) {
		sl_log_error("%s; refusing to start", n.metrics ? err : "out of memory");
		pidfile_remove_own(c.pidfile); /* written if the front failed after its ready */
		sl_repl_start_failed(n.repl);
		sl_repl_stop(n.repl);
		sl_close(n.db);
		sl_metrics_free(n.metrics);
		return 1;
	}
	sl_log_info("shiplogd %s ready: listening on %s (%s), sync %s, pid %d%s%s, %s%s%s",
	            SL_NODE_VERSION, c.listen, sl_server_transport(srv), c.sync_name, (int)getpid(),
	            c.metrics ? ", metrics on " : "", c.metrics ? c.metrics : "",
	            sl_repl_role(n.repl), sl_repl_listen_url(n.repl) ? ", replication on " : "",
	            sl_repl_listen_url(n.repl) ? sl_repl_listen_url(n.repl) : "");

	int sig = 0;
	for (;;) {
		if (sigwait(&sigs, &sig) != 0) {
			continue;
		}
		if (sig == SIGHUP) {
			sl_log_info("SIGHUP ignored (no configuration file to reload)");
			continue;
		}
		break;
	}
	sl_log_info("received %s; stopping: finishing in-flight requests",
	            sig == SIGTERM ? "SIGTERM" : "SIGINT");
	sl_server_drain(srv);
	/* Sync before any socket closes: nng 1.5.2 can hang for good in
	 * nng_close (nanomsg/nng#1543), and the watchdog below then ends the
	 * process with the data already on disk. */
	/* Under the store lock: replication still runs, and a follower
	 * finishing a full resync closes the store and swaps another in
	 * (n.db is NULL, or freed, meanwhile). */
	pthread_rwlock_rdlock(&n.db_lock);
	rc = n.db != NULL ? sl_sync_now(n.db) : SL_OK;
	pthread_rwlock_unlock(&n.db_lock);
	if (rc != SL_OK) {
		sl_log_error("final sync failed: %s", sl_strerror(rc));
	}
	pthread_t watchdog;
	g_pidfile = c.pidfile;
	g_final_sync_ok = rc == SL_OK;
	int wd = pthread_create(&watchdog, NULL, shutdown_watchdog, NULL) == 0;
	sl_server_stop(srv);
	sl_repl_stop(n.repl);
	pthread_mutex_lock(&g_teardown_mu);
	g_teardown_done = 1;
	pthread_mutex_unlock(&g_teardown_mu);
	if (wd) {
		pthread_detach(watchdog);
	}
	sl_close(n.db);
	sl_metrics_free(n.metrics);
	if (c.pidfile != NULL) {
		unlink(c.pidfile);
	}
	sl_log_info("stopped cleanly");
	return rc == SL_OK ? 0 : 1;
}
