/*
 * bench.c — shiplog-bench, the storage engine's benchmark.
 *
 * shiplog's speed is quoted as a ratio against LevelDB, RocksDB and LMDB run
 * on the same machine by /work/shared/anchors/embedded_bench.c, so this
 * program mirrors that one: db_bench's default workload (N = 1,000,000 ops,
 * 16-byte keys "key-%012llu" over a fixed random permutation, 100-byte
 * incompressible values), the same readrandom split of N among T threads, the
 * same fillsync of N/50 synced puts, and the same JSON fields (engine,
 * benchmark, ops_per_sec, p50_us, p99_us, p999_us, rss_bytes_per_key).
 *
 *   shiplog-bench [--benchmarks=LIST] [--num=N] [--value-size=B] [--threads=T1,T2,...]
 *                 [--dir=D] [--sync=no|everysec|always] [--json] [--segment-bytes=B]
 *                 [--keep] [--help]
 *
 * Workloads (the table `benches` below; add compact, readwhilecompacting there):
 *   fillseq           N puts of keys 0..N-1 in order into an empty dir
 *   fillrandom        N puts of the permuted keys into an empty dir
 *   overwrite         N puts of random existing keys (with replacement)
 *   readrandom        N gets of random existing keys, split among T threads
 *   readmissing       N gets of keys never written (i >= N), split among T threads
 *   readwhilewriting  readrandom on T threads while one more thread overwrites
 *                     random keys non-stop; the readers' figures are reported
 *   fillsync          N/50 puts split among T threads into an empty dir, sync=always
 *   reopen            sl_open time with hint files, then with them deleted
 *
 * --threads is a comma list; each workload that takes threads (readrandom,
 * readmissing, readwhilewriting, fillsync) runs once per count.  The fills and
 * overwrite are single-threaded, as in embedded_bench.  Fills and fillsync
 * wipe the dir first; every other workload reuses the db a fill in this
 * invocation left, or fills it first (untimed) when there is none.
 *
 * Figures: wall time over all threads gives ops/s; MB/s counts key + value
 * bytes that crossed the API (a miss moves its key only).  Every op's latency
 * (clock_gettime, CLOCK_MONOTONIC) goes into a per-thread log-linear histogram
 * (fixed 58 KiB, relative error under 0.4 %), merged for p50/p99/p99.9.  After
 * a write workload: keydir bytes per key (sl_stats), RssAnon growth per key
 * since before sl_open, and the dir's bytes on disk (sum of st_size, which
 * includes the active segment's preallocation; disk_alloc_bytes is st_blocks,
 * engine_disk_bytes the engine's written bytes).
 *
 * Exit status: 0; 1 on any sl_* error or a failed correctness check (a read
 * finding the wrong number of keys or a value of the wrong size); 2 on bad
 * arguments.
 */
#define _GNU_SOURCE
#include "shiplog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KEY_SIZE    16
#define MAX_THREADS 1024

/* ---- options and shared state ------------------------------------------ */

#define DEFAULT_BENCHMARKS                                                                         \
	"fillseq,fillrandom,overwrite,readrandom,readmissing,readwhilewriting,reopen,fillsync"
static const char *opt_benchmarks = DEFAULT_BENCHMARKS;
static uint64_t opt_num = 1000000;
static size_t opt_value_size = 100;
static int opt_threads[64] = {1};
static int opt_nthreads = 1;
static const char *opt_dir = "/tmp/shiplog-bench";
static sl_sync opt_sync = SL_SYNC_NO;
static uint64_t opt_segment_bytes; /* 0: the engine's default */
static int opt_json, opt_keep;

static uint64_t *perm; /* perm[i]: the key index of the i-th fill put */

/* The db the workloads share.  FULL: keys perm[0..num) all present, as after
 * fillseq/fillrandom.  PARTIAL: something else (fillsync's N/50 keys). */
static sl_db *db;
static sl_sync db_sync;
static int db_compact_bg = 1; /* background compaction on (the engine's default) */
static enum { DB_NONE, DB_PARTIAL, DB_FULL } db_state;
static long db_rss0_kb; /* RssAnon before the db was opened on an empty dir */

static const char *sync_name(sl_sync s)
{
	return s == SL_SYNC_ALWAYS ? "always" : s == SL_SYNC_EVERYSEC ? "everysec" : "no";
}

static void die(const char *what, int rc)
{
	fprintf(stderr, "shiplog-bench: %s: %s\n", what, sl_strerror(rc));
	exit(1);
}

static void die_sys(const char *what, const char *path)
{
	fprintf(stderr, "shiplog-bench: %s %s: %s\n", what, path, strerror(errno));
	exit(1);
}

static void die_check(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("shiplog-bench: CHECK FAILED: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);
	if (!p) {
		die("calloc", SL_ENOMEM);
	}
	return p;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void key_of(uint64_t i, char *k)
{
	char buf[32];
	snprintf(buf, sizeof buf, "key-%012llu", (unsigned long long)i);
	memcpy(k, buf, KEY_SIZE);
}

static void fill_value(char *v, uint64_t *s)
{
	for (size_t i = 0; i < opt_value_size; i += 8) {
		uint64_t r = rng(s);
		memcpy(v + i, &r, opt_value_size - i < 8 ? opt_value_size - i : 8);
	}
}

/* ---- latency histogram -------------------------------------------------- */

/* Log-linear buckets over nanoseconds, as HdrHistogram does: values below
 * 2*SUB are exact; above, each power of two is split into SUB equal buckets,
 * so a bucket's midpoint is within 1/(2*SUB) of any value in it. */
#define HIST_SUB_BITS 7
#define HIST_SUB      (1u << HIST_SUB_BITS)
#define HIST_BUCKETS  ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

struct hist {
	uint64_t count, min, max;
	double sum;
	uint64_t b[HIST_BUCKETS];
};

static struct hist *hist_new(void)
{
	struct hist *h = xcalloc(1, sizeof *h);
	h->min = UINT64_MAX;
	return h;
}

static void hist_add(struct hist *h, uint64_t ns)
{
	unsigned idx;
	if (ns < 2 * HIST_SUB) {
		idx = (unsigned)ns;
	} else {
		unsigned shift = (unsigned)(63 - __builtin_clzll(ns)) - HIST_SUB_BITS;
		idx = shift * HIST_SUB + (unsigned)(ns >> shift);
	}
	h->b[idx]++;
	h->count++;
	h->sum += (double)ns;
	if (ns < h->min) {
		h->min = ns;
	}
	if (ns > h->max) {
		h->max = ns;
	}
}

static void hist_merge(struct hist *dst, const struct hist *src)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		dst->b[i] += src->b[i];
	}
	dst->count += src->count;
	dst->sum += src->sum;
	if (src->min < dst->min) {
		dst->min = src->min;
	}
	if (src->max > dst->max) {
		dst->max = src->max;
	}
}

/* The q-quantile (0 < q <= 1) in microseconds. */
static double hist_us(const struct hist *h, double q)
{
	if (h->count == 0) {
		return 0;
	}
	uint64_t rank = (uint64_t)ceil(q * (double)h->count), seen = 0;
	if (rank < 1) {
		rank = 1;
	}
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->b[i];
		if (seen < rank) {
			continue;
		}
		double mid = i;
		if (i >= 2 * HIST_SUB) {
			unsigned shift = i / HIST_SUB - 1;
			double lo = (double)((uint64_t)(i % HIST_SUB + HIST_SUB) << shift);
			mid = lo + (double)(1ull << shift) / 2;
		}
		mid = fmax(mid, (double)h->min);
		mid = fmin(mid, (double)h->max);
		return mid / 1000;
	}
	return (double)h->max / 1000;
}

/* ---- the data directory -------------------------------------------------- */

static long rss_anon_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = 0;
	while (f && fgets(line, sizeof line, f)) {
		if (!strncmp(line, "RssAnon:", 8)) {
			kb = atol(line + 8);
		}
	}
	if (f) {
		fclose(f);
	}
	return kb;
}

static int is_store_file(const char *name)
{
	static const char *const suffixes[] = {".seg", ".hint", ".tmp"};
	size_t len = strlen(name);
	if (!strcmp(name, "LOCK")) {
		return 1;
	}
	for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
		size_t sl = strlen(suffixes[i]);
		if (len > sl && !strcmp(name + len - sl, suffixes[i])) {
			return 1;
		}
	}
	return 0;
}

/* Empties the data dir, creating it if missing.  It must hold only the
 * engine's files (LOCK, *.seg, *.hint, *.tmp), so a mistyped --dir loses
 * nothing, and no other handle may hold it: the engine's flock on dir/LOCK
 * (open.c invariant 1) is checked first, as deleting LOCK would defeat it. */
static void dir_wipe(void)
{
	char path[4096];
	DIR *d = opendir(opt_dir);
	struct dirent *e;
	if (!d) {
		if (errno != ENOENT) {
			die_sys("opendir", opt_dir);
		}
		if (mkdir(opt_dir, 0755) != 0 && errno != EEXIST) {
			die_sys("mkdir", opt_dir);
		}
		return;
	}
	while ((e = readdir(d)) != NULL) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) {
			continue;
		}
		if (!is_store_file(e->d_name)) {
			fprintf(stderr, "shiplog-bench: refusing to wipe %s: it holds '%s'\n",
			        opt_dir, e->d_name);
			exit(2);
		}
	}
	snprintf(path, sizeof path, "%s/LOCK", opt_dir);
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
			fprintf(stderr, "shiplog-bench: not wiping %s: %s\n", opt_dir,
			        errno == EWOULDBLOCK ? sl_strerror(SL_EBUSY) : strerror(errno));
			exit(1);
		}
		close(fd);
	}
	rewinddir(d);
	while ((e = readdir(d)) != NULL) {
		if (is_store_file(e->d_name)) {
			snprintf(path, sizeof path, "%s/%s", opt_dir, e->d_name);
			if (unlink(path) != 0) {
				die_sys("unlink", path);
			}
		}
	}
	closedir(d);
}

static uint64_t du_size, du_alloc;

static int du_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)path;
	(void)ftw;
	if (flag == FTW_F) {
		du_size += (uint64_t)st->st_size;
		du_alloc += (uint64_t)st->st_blocks * 512;
	}
	return 0;
}

static void dir_usage(uint64_t *size, uint64_t *alloc)
{
	du_size = du_alloc = 0;
	if (nftw(opt_dir, du_entry, 16, FTW_PHYS) != 0) {
		die_sys("nftw", opt_dir);
	}
	*size = du_size;
	*alloc = du_alloc;
}

/* Drops the dir's files from the page cache (they are clean after
 * sl_close), so the next open reads from the disk as after a reboot. */
static void dir_drop_cache(void)
{
	DIR *d = opendir(opt_dir);
	struct dirent *e;
	char path[4096];
	if (!d) {
		die_sys("opendir", opt_dir);
	}
	while ((e = readdir(d)) != NULL) {
		snprintf(path, sizeof path, "%s/%s", opt_dir, e->d_name);
		int fd = open(path, O_RDONLY);
		if (fd >= 0) {
			fdatasync(fd);
			posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
			close(fd);
		}
	}
	closedir(d);
}

static int dir_remove_hints(void)
{
	DIR *d = opendir(opt_dir);
	struct dirent *e;
	char path[4096];
	int n = 0;
	if (!d) {
		die_sys("opendir", opt_dir);
	}
	while ((e = readdir(d)) != NULL) {
		size_t len = strlen(e->d_name);
		if (len > 5 && !strcmp(e->d_name + len - 5, ".hint")) {
			snprintf(path, sizeof path, "%s/%s", opt_dir, e->d_name);
			if (unlink(path) != 0) {
				die_sys("unlink", path);
			}
			n++;
		}
	}
	closedir(d);
	return n;
}

/* ---- opening and filling the db ------------------------------------------ */

static void db_open(sl_sync sync)
{
	sl_options o;
	sl_options_init(&o);
	o.sync = sync;
	o.compact_background = db_compact_bg;
	if (opt_segment_bytes) {
		o.segment_bytes = opt_segment_bytes;
	}
	int rc = sl_open(opt_dir, &o, &db);
	if (rc != SL_OK) {
		die("sl_open", rc);
	}
	db_sync = sync;
}

static void db_close(void)
{
	sl_close(db);
	db = NULL;
}

/* Closes any db, empties the dir and opens it afresh with `sync`. */
static void db_fresh(sl_sync sync)
{
	db_close();
	dir_wipe();
	malloc_trim(0); /* so the baseline is not inflated by the last db's freed keydir */
	db_rss0_kb = rss_anon_kb();
	db_open(sync);
	db_state = DB_PARTIAL;
}

static sl_stats db_stats(void)
{
	sl_stats st;
	int rc = sl_stats_get(db, &st);
	if (rc != SL_OK) {
		die("sl_stats_get", rc);
	}
	return st;
}

/* ---- workers ------------------------------------------------------------- */

enum op { OP_PUT_SEQ, OP_PUT_PERM, OP_PUT_RANDOM, OP_GET, OP_GET_MISSING, OP_WRITER };

struct worker {
	pthread_t th;
	enum op op;
	uint64_t from, to; /* puts: op indices [from, to); gets and OP_PUT_RANDOM: to - from ops */
	uint64_t seed;
	pthread_barrier_t *start;
	atomic_int *stop; /* OP_WRITER runs until *stop */
	struct hist *h;
	uint64_t ops, found, bytes;
};

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	char k[KEY_SIZE];
	char *v = xcalloc(1, opt_value_size);
	uint64_t vseed = w->seed ^ 0x9e3779b97f4a7c15ull;
	if (w->start) {
		pthread_barrier_wait(w->start);
	}
	for (uint64_t i = w->from; w->op == OP_WRITER ? !atomic_load(w->stop) : i < w->to; i++) {
		uint64_t t0, t1;
		int rc;
		if (w->op == OP_GET || w->op == OP_GET_MISSING) {
			uint64_t ki = rng(&w->seed) % opt_num;
			key_of(w->op == OP_GET ? perm[ki] : opt_num + ki, k);
			void *val = NULL;
			size_t vlen = 0;
			t0 = now_ns();
			rc = sl_get(db, k, KEY_SIZE, &val, &vlen);
			free(val);
			t1 = now_ns();
			if (rc == SL_OK) {
				if (vlen != opt_value_size) {
					die_check("sl_get(%.16s) returned %zu bytes, expected %zu",
					          k, vlen, opt_value_size);
				}
				w->found++;
				w->bytes += KEY_SIZE + vlen;
			} else if (rc == SL_ENOTFOUND) {
				w->bytes += KEY_SIZE;
			} else {
				die("sl_get", rc);
			}
		} else {
			uint64_t ki = w->op == OP_PUT_SEQ    ? i
			              : w->op == OP_PUT_PERM ? perm[i]
			                                     : perm[rng(&w->seed) % opt_num];
			key_of(ki, k);
			fill_value(v, &vseed);
			t0 = now_ns();
			rc = sl_put(db, k, KEY_SIZE, v, opt_value_size, NULL);
			t1 = now_ns();
			if (rc != SL_OK) {
				die("sl_put", rc);
			}
			w->bytes += KEY_SIZE + opt_value_size;
		}
		hist_add(w->h, t1 - t0);
		w->ops++;
	}
	free(v);
	return NULL;
}

static void worker_init(struct worker *w, enum op op, uint64_t from, uint64_t to, uint64_t seed)
{
	memset(w, 0, sizeof *w);
	w->op = op;
	w->from = from;
	w->to = to;
	w->seed = seed ? seed : 1;
	w->h = hist_new();
}

/* Starts n workers together and returns the wall time until the last ends. */
static double workers_run(struct worker *ws, int n)
{
	pthread_barrier_t bar;
	pthread_barrier_init(&bar, NULL, (unsigned)n + 1);
	for (int t = 0; t < n; t++) {
		ws[t].start = &bar;
		int rc = pthread_create(&ws[t].th, NULL, worker_run, &ws[t]);
		if (rc != 0) {
			errno = rc;
			die_sys("pthread_create", "");
		}
	}
	/* The clock starts before the release: taken after it, a worker of a
	 * short run could finish before this thread ran again (2 cores), and
	 * the run reported billions of ops/s over 0.0 s. */
	uint64_t t0 = now_ns();
	pthread_barrier_wait(&bar);
	for (int t = 0; t < n; t++) {
		pthread_join(ws[t].th, NULL);
	}
	double secs = (double)(now_ns() - t0) / 1e9;
	pthread_barrier_destroy(&bar);
	return secs;
}

/* Fills the db with keys perm[0..num) unless a fill already did (untimed). */
static void ensure_full(void)
{
	if (db_state == DB_FULL && db) {
		return;
	}
	if (!opt_json) {
		fprintf(stderr, "(filling %llu keys first, untimed)\n",
		        (unsigned long long)opt_num);
	}
	/* Under sync=always an untimed fill would take minutes; fill without
	 * syncs, then reopen with the policy the workloads are to run under. */
	db_fresh(opt_sync == SL_SYNC_ALWAYS ? SL_SYNC_NO : opt_sync);
	struct worker w;
	worker_init(&w, OP_PUT_PERM, 0, opt_num, 1);
	worker_run(&w);
	free(w.h);
	if (db_sync != opt_sync) {
		db_close();
		db_open(opt_sync);
	}
	db_state = DB_FULL;
}

/* ---- reporting ----------------------------------------------------------- */

struct result {
	const char *name;
	int threads;
	uint64_t ops, bytes;
	double secs;
	struct hist h;
	char text[1024], json[1024];
};

static void result_init(struct result *r, const char *name, int threads)
{
	memset(r, 0, sizeof *r);
	r->name = name;
	r->threads = threads;
	r->h.min = UINT64_MAX;
}

static void result_add_workers(struct result *r, struct worker *ws, int n)
{
	for (int t = 0; t < n; t++) {
		r->ops += ws[t].ops;
		r->bytes += ws[t].bytes;
		hist_merge(&r->h, ws[t].h);
	}
}

/* Appends one extra figure: ,"key":value to the JSON and "  label value" to
 * the text line.  str: the value is a string (quoted in JSON only). */
static void extra(struct result *r, int str, const char *key, const char *label, const char *fmt,
                  ...)
{
	char val[128];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(val, sizeof val, fmt, ap);
	va_end(ap);
	size_t tl = strlen(r->text), jl = strlen(r->json);
	snprintf(r->text + tl, sizeof r->text - tl, "  %s %s", label, val);
	snprintf(r->json + jl, sizeof r->json - jl, str ? ",\"%s\":\"%s\"" : ",\"%s\":%s", key,
	         val);
}

/* The figures reported after a write workload. */
static void extra_fill(struct result *r)
{
	sl_stats st = db_stats();
	uint64_t size, alloc;
	double keys = st.keys ? (double)st.keys : 1;
	dir_usage(&size, &alloc);
	extra(r, 0, "keys", "keys", "%llu", (unsigned long long)st.keys);
	extra(r, 0, "keydir_bytes_per_key", "keydir B/key", "%.1f", (double)st.keydir_bytes / keys);
	extra(r, 0, "rss_bytes_per_key", "rss B/key", "%.1f",
	      (double)(rss_anon_kb() - db_rss0_kb) * 1024.0 / keys);
	extra(r, 0, "disk_bytes", "disk", "%llu", (unsigned long long)size);
	extra(r, 0, "disk_alloc_bytes", "disk alloc", "%llu", (unsigned long long)alloc);
	extra(r, 0, "engine_disk_bytes", "written", "%llu", (unsigned long long)st.disk_bytes);
	extra(r, 0, "segments", "segments", "%llu", (unsigned long long)st.segments);
}

static void report(struct result *r)
{
	double secs = r->secs > 0 ? r->secs : 1e-9;
	double ops_s = (double)r->ops / secs, mb_s = (double)r->bytes / 1048576.0 / secs;
	double p50 = hist_us(&r->h, 0.5), p99 = hist_us(&r->h, 0.99), p999 = hist_us(&r->h, 0.999);
	if (opt_json) {
		printf("{\"engine\":\"shiplog\",\"benchmark\":\"%s\",\"num\":%llu,\"ops\":%llu,"
		       "\"threads\":%d,\"value_size\":%zu,\"sync\":\"%s\",\"ops_per_sec\":%.0f,"
		       "\"mb_per_sec\":%.2f,\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,"
		       "\"max_us\":%.2f,\"secs\":%.3f%s}\n",
		       r->name, (unsigned long long)opt_num, (unsigned long long)r->ops, r->threads,
		       opt_value_size, sync_name(db_sync), ops_s, mb_s, p50, p99, p999,
		       r->h.count ? (double)r->h.max / 1000 : 0.0, r->secs, r->json);
	} else {
		printf("shiplog  %-16s T%-3d %10.0f ops/s %8.1f MB/s  p50 %8.2f us  p99 %8.2f us  "
		       "p99.9 %9.2f us%s\n",
		       r->name, r->threads, ops_s, mb_s, p50, p99, p999, r->text);
	}
	fflush(stdout);
}

/* ---- workloads ----------------------------------------------------------- */

static void run_fill(const char *name, enum op op)
{
	struct result r;
	struct worker w;
	result_init(&r, name, 1);
	db_fresh(opt_sync);
	worker_init(&w, op, 0, opt_num, 1);
	r.secs = workers_run(&w, 1);
	db_state = DB_FULL;
	result_add_workers(&r, &w, 1);
	free(w.h);
	extra_fill(&r);
	report(&r);
}

static void bench_fillseq(int threads)
{
	(void)threads;
	run_fill("fillseq", OP_PUT_SEQ);
}

static void bench_fillrandom(int threads)
{
	(void)threads;
	run_fill("fillrandom", OP_PUT_PERM);
}

static void bench_overwrite(int threads)
{
	struct result r;
	struct worker w;
	(void)threads;
	ensure_full();
	result_init(&r, "overwrite", 1);
	worker_init(&w, OP_PUT_RANDOM, 0, opt_num, 0x5eed);
	r.secs = workers_run(&w, 1);
	result_add_workers(&r, &w, 1);
	free(w.h);
	extra_fill(&r);
	report(&r);
}

/* T readers of `op`, N split among them; with_writer adds one thread that
 * overwrites random keys until the readers are done (not counted in r). */
static void *compact_thread(void *arg)
{
	double *secs = arg;
	uint64_t t0 = now_ns();
	int rc = sl_compact(db);
	if (rc != SL_OK) {
		die("sl_compact", rc);
	}
	*secs = (double)(now_ns() - t0) / 1e9;
	return NULL;
}

/* with_writer: 1 an overwriting writer thread alongside, 2 a full sl_compact */
static void run_reads(const char *name, enum op op, int threads, int with_writer)
{
	struct result r;
	pthread_t cth;
	double csecs = 0;
	struct worker *ws = xcalloc((size_t)threads, sizeof *ws), wr;
	uint64_t per = opt_num / (uint64_t)threads, found = 0;
	atomic_int stop = 0;
	if (per == 0) {
		fprintf(stderr, "shiplog-bench: %s: --num %llu is below --threads %d\n", name,
		        (unsigned long long)opt_num, threads);
		exit(2);
	}
	ensure_full();
	result_init(&r, name, threads);
	for (int t = 0; t < threads; t++) {
		worker_init(&ws[t], op, 0, per, 1234567 + (uint64_t)t * 7919);
	}
	if (with_writer == 2) {
		int rc = pthread_create(&cth, NULL, compact_thread, &csecs);
		if (rc != 0) {
			errno = rc;
			die_sys("pthread_create", "");
		}
	} else if (with_writer) {
		worker_init(&wr, OP_WRITER, 0, 0, 0xabcdef);
		wr.stop = &stop;
		int rc = pthread_create(&wr.th, NULL, worker_run, &wr);
		if (rc != 0) {
			errno = rc;
			die_sys("pthread_create", "");
		}
	}
	r.secs = workers_run(ws, threads);
	if (with_writer == 2) {
		pthread_join(cth, NULL);
	} else if (with_writer) {
		atomic_store(&stop, 1);
		pthread_join(wr.th, NULL);
	}
	result_add_workers(&r, ws, threads);
	for (int t = 0; t < threads; t++) {
		found += ws[t].found;
		free(ws[t].h);
	}
	free(ws);
	uint64_t expected = op == OP_GET ? per * (uint64_t)threads : 0;
	extra(&r, 0, "found", "found", "%llu", (unsigned long long)found);
	if (with_writer == 2) {
		extra(&r, 0, "compact_secs", "compaction s", "%.3f", csecs);
		extra(&r, 0, "read_secs", "reads s", "%.3f", r.secs);
	} else if (with_writer) {
		extra(&r, 0, "writer_ops", "writer ops", "%llu", (unsigned long long)wr.ops);
		extra(&r, 0, "writer_ops_per_sec", "writer ops/s", "%.0f",
		      (double)wr.ops / (r.secs > 0 ? r.secs : 1e-9));
		extra(&r, 0, "writer_p99_us", "writer p99 us", "%.2f", hist_us(wr.h, 0.99));
		free(wr.h);
	}
	report(&r);
	if (found != expected) {
		die_check("%s: found %llu keys, expected %llu", name, (unsigned long long)found,
		          (unsigned long long)expected);
	}
}

static void bench_readrandom(int threads)
{
	run_reads("readrandom", OP_GET, threads, 0);
}

static void bench_readmissing(int threads)
{
	run_reads("readmissing", OP_GET_MISSING, threads, 0);
}

static void bench_readwhilewriting(int threads)
{
	run_reads("readwhilewriting", OP_GET, threads, 1);
}

/* A db whose keys were all written 5 times (fill + 4 overwrites of every key),
 * background compaction off, so 80% of the log is dead. */
static uint64_t prepare_overwritten(void)
{
	struct worker w;
	db_compact_bg = 0;
	db_fresh(SL_SYNC_NO);
	for (int round = 0; round < 5; round++) {
		worker_init(&w, OP_PUT_PERM, 0, opt_num, 0x1000 + (uint64_t)round);
		workers_run(&w, 1);
		free(w.h);
	}
	db_state = DB_FULL;
	return 5 * opt_num * (uint64_t)(28 + KEY_SIZE + opt_value_size);
}

static void bench_compact(int threads)
{
	struct result r;
	(void)threads;
	uint64_t user_bytes = prepare_overwritten();
	sl_stats a = db_stats();
	result_init(&r, "compact", 1);
	uint64_t t0 = now_ns();
	int rc = sl_compact(db);
	if (rc != SL_OK) {
		die("sl_compact", rc);
	}
	r.secs = (double)(now_ns() - t0) / 1e9;
	sl_stats b = db_stats();
	r.ops = a.keys;
	hist_add(&r.h, (uint64_t)(r.secs * 1e9));
	double rd = (double)(b.compact_bytes_read - a.compact_bytes_read);
	double wr = (double)(b.compact_bytes_written - a.compact_bytes_written);
	double in = (double)(b.compact_bytes_reclaimed - a.compact_bytes_reclaimed) + wr;
	extra(&r, 0, "input_mb_per_sec", "input MB/s", "%.1f", in / 1e6 / r.secs);
	extra(&r, 0, "read_mb_per_sec", "read MB/s", "%.1f", rd / 1e6 / r.secs);
	extra(&r, 0, "write_mb_per_sec", "written MB/s", "%.1f", wr / 1e6 / r.secs);
	extra(&r, 0, "space_before_bytes", "space before", "%llu",
	      (unsigned long long)a.disk_bytes);
	extra(&r, 0, "space_after_bytes", "after", "%llu", (unsigned long long)b.disk_bytes);
	extra(&r, 0, "live_bytes", "live", "%llu", (unsigned long long)b.live_bytes);
	extra(&r, 0, "space_over_live", "after/live", "%.3f",
	      (double)b.disk_bytes / (double)(b.live_bytes ? b.live_bytes : 1));
	extra(&r, 0, "write_amplification", "write amp", "%.3f",
	      ((double)user_bytes + wr) / (double)user_bytes);
	report(&r);
	db_compact_bg = 1;
	if (b.keys != a.keys) {
		die_check("compact: %llu keys after, %llu before", (unsigned long long)b.keys,
		          (unsigned long long)a.keys);
	}
}

/* readrandom on the overwritten db, first with no compaction, then while a
 * full sl_compact runs, in the same run. */
static void bench_readwhilecompacting(int threads)
{
	prepare_overwritten();
	run_reads("readrandom_nocompact", OP_GET, threads, 0);
	run_reads("readwhilecompacting", OP_GET, threads, 2);
	db_compact_bg = 1;
}

static void bench_fillsync(int threads)
{
	struct result r;
	struct worker *ws = xcalloc((size_t)threads, sizeof *ws);
	uint64_t n = opt_num / 50, per = n / (uint64_t)threads;
	if (per == 0) {
		fprintf(stderr, "shiplog-bench: fillsync: --num/50 = %llu is below --threads %d\n",
		        (unsigned long long)n, threads);
		exit(2);
	}
	result_init(&r, "fillsync", threads);
	db_fresh(SL_SYNC_ALWAYS);
	uint64_t fsyncs0 = db_stats().fsyncs;
	for (int t = 0; t < threads; t++) {
		worker_init(&ws[t], OP_PUT_PERM, (uint64_t)t * per, (uint64_t)(t + 1) * per,
		            (uint64_t)t + 1);
	}
	r.secs = workers_run(ws, threads);
	result_add_workers(&r, ws, threads);
	for (int t = 0; t < threads; t++) {
		free(ws[t].h);
	}
	free(ws);
	extra(&r, 0, "fsyncs_per_put", "fsyncs/put", "%.3f",
	      (double)(db_stats().fsyncs - fsyncs0) / (double)(r.ops ? r.ops : 1));
	extra_fill(&r);
	report(&r);
}

/* Times sl_open on the db as it is; checks the keys survived. */
static double timed_open(uint64_t keys, sl_stats *st)
{
	uint64_t t0 = now_ns();
	db_open(db_sync);
	double us = (double)(now_ns() - t0) / 1000;
	*st = db_stats();
	if (st->keys != keys) {
		die_check("reopen: %llu keys after sl_open, %llu before close",
		          (unsigned long long)st->keys, (unsigned long long)keys);
	}
	return us;
}

static void bench_reopen(int threads)
{
	struct result r;
	sl_stats a, b;
	(void)threads;
	if (db_state == DB_NONE || !db) {
		ensure_full();
	}
	uint64_t keys = db_stats().keys;
	result_init(&r, "reopen", 1);
	db_close();
	double us_hint = timed_open(keys, &a);
	db_close();
	dir_drop_cache();
	double us_hint_cold = timed_open(keys, &a);
	db_close();
	int removed = dir_remove_hints();
	dir_drop_cache();
	double us_nohint_cold = timed_open(keys, &b);
	db_close();
	dir_remove_hints(); /* the scan wrote them back */
	double us_nohint = timed_open(keys, &b);
	/* One op: sl_open with hints.  ops/s is keys recovered per second. */
	r.ops = keys;
	r.secs = us_hint / 1e6;
	hist_add(&r.h, (uint64_t)(us_hint * 1000));
	extra(&r, 0, "open_hint_ms", "open with hints ms", "%.1f", us_hint / 1000);
	extra(&r, 0, "open_nohint_ms", "without ms", "%.1f", us_nohint / 1000);
	extra(&r, 0, "nohint_hint_ratio", "ratio", "%.2f", us_nohint / (us_hint > 0 ? us_hint : 1));
	extra(&r, 0, "open_hint_cold_ms", "cold: with hints ms", "%.1f", us_hint_cold / 1000);
	extra(&r, 0, "open_nohint_cold_ms", "without ms", "%.1f", us_nohint_cold / 1000);
	extra(&r, 0, "nohint_hint_cold_ratio", "ratio", "%.2f",
	      us_nohint_cold / (us_hint_cold > 0 ? us_hint_cold : 1));
	extra(&r, 0, "recovery_ms_hint", "engine recovery ms", "%llu",
	      (unsigned long long)a.recovery_ms);
	extra(&r, 0, "recovery_ms_nohint", "without", "%llu", (unsigned long long)b.recovery_ms);
	extra(&r, 0, "keys", "keys", "%llu", (unsigned long long)keys);
	extra(&r, 0, "hints_loaded", "hints loaded", "%llu", (unsigned long long)a.hints_loaded);
	extra(&r, 0, "hints_removed", "hints removed", "%d", removed);
	extra(&r, 0, "segments_scanned_hint", "scanned", "%llu",
	      (unsigned long long)a.segments_scanned);
	extra(&r, 0, "segments_scanned_nohint", "scanned without", "%llu",
	      (unsigned long long)b.segments_scanned);
	report(&r);
}

/* name → workload.  per_thread_count: run once for each --threads value.
 * compact and readwhilecompacting go here once the engine exposes compaction. */
static const struct bench {
	const char *name;
	void (*run)(int threads);
	int per_thread_count;
} benches[] = {
    {"fillseq", bench_fillseq, 0},         {"fillrandom", bench_fillrandom, 0},
    {"overwrite", bench_overwrite, 0},     {"readrandom", bench_readrandom, 1},
    {"readmissing", bench_readmissing, 1}, {"readwhilewriting", bench_readwhilewriting, 1},
    {"fillsync", bench_fillsync, 1},       {"reopen", bench_reopen, 0},
    {"compact", bench_compact, 0},         {"readwhilecompacting", bench_readwhilecompacting, 1},
};

static const struct bench *bench_find(const char *name)
{
	for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++) {
		if (!strcmp(benches[i].name, name)) {
			return &benches[i];
		}
	}
	return NULL;
}

/* ---- main ---------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: shiplog-bench [options]\n"
	    "  --benchmarks=LIST    comma list of workloads, run in order (default\n"
	    "                       %s)\n"
	    "                       fillseq fillrandom overwrite readrandom readmissing\n"
	    "                       readwhilewriting fillsync reopen compact\n"
	    "                       readwhilecompacting (not in the default list)\n"
	    "  --num=N              ops per workload (default 1000000; fillsync does N/50)\n"
	    "  --value-size=B       value bytes (default 100)\n"
	    "  --threads=T1,T2,...  thread counts for readrandom, readmissing,\n"
	    "                       readwhilewriting (readers) and fillsync; each\n"
	    "                       count is a separate run (default 1)\n"
	    "  --dir=D              data directory, wiped by fills (default /tmp/shiplog-bench)\n"
	    "  --sync=no|everysec|always  sync policy except fillsync's always (default no)\n"
	    "  --json               one JSON object per workload per line\n"
	    "  --segment-bytes=B    segment size (default: the engine's, 64 MiB); smaller\n"
	    "                       makes reopen load hint files at a small --num\n"
	    "  --keep               leave the data directory behind (default: removed at exit)\n"
	    "  --help               this text\n"
#ifdef SL_HAVE_NETBENCH
	    "With --url URL it benchmarks a shiplogd server instead (redis-benchmark's\n"
	    "options: -t -c -n -d -r -P); shiplog-bench --url URL --help lists them.\n"
	    "shiplog-bench repl: the replication benchmark (shiplog-bench repl --help).\n"
	    "shiplog-bench floor: this machine's floors: an nng round trip, a TCP\n"
	    "round trip, an fdatasync (shiplog-bench floor --help).\n"
#endif
	    ,
	    DEFAULT_BENCHMARKS); /* not opt_benchmarks: a bad --benchmarks is in it by now */
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-') {
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_threads(const char *s)
{
	char buf[512], *save = NULL;
	snprintf(buf, sizeof buf, "%s", s);
	opt_nthreads = 0;
	for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		uint64_t v;
		if (parse_u64(t, &v) || v < 1 || v > MAX_THREADS ||
		    opt_nthreads == (int)(sizeof opt_threads / sizeof opt_threads[0])) {
			return -1;
		}
		opt_threads[opt_nthreads++] = (int)v;
	}
	return opt_nthreads ? 0 : -1;
}

static void bad_arg(const char *opt, const char *val)
{
	fprintf(stderr, "shiplog-bench: bad value for --%s: '%s'\n", opt, val);
	usage(stderr);
	exit(2);
}

#ifdef SL_HAVE_NETBENCH
/* tests/bench/netbench.c: the server benchmark, `shiplog-bench --url URL`. */
int sl_netbench_main(int argc, char **argv);
/* tests/bench/replbench.c: the replication benchmark, `shiplog-bench repl`. */
int sl_replbench_main(int argc, char **argv);
/* tests/bench/floorbench.c: this machine's floors, `shiplog-bench floor`. */
int sl_floorbench_main(int argc, char **argv);
#endif

int main(int argc, char **argv)
{
#ifdef SL_HAVE_NETBENCH
	if (argc > 1 && !strcmp(argv[1], "repl")) {
		return sl_replbench_main(argc - 1, argv + 1);
	}
	if (argc > 1 && !strcmp(argv[1], "floor")) {
		return sl_floorbench_main(argc - 1, argv + 1);
	}
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--url") || !strncmp(argv[i], "--url=", 6)) {
			return sl_netbench_main(argc, argv);
		}
	}
#endif
	static const struct option longopts[] = {
	    {"benchmarks", required_argument, NULL, 'b'},
	    {"num", required_argument, NULL, 'n'},
	    {"value-size", required_argument, NULL, 'v'},
	    {"threads", required_argument, NULL, 't'},
	    {"dir", required_argument, NULL, 'd'},
	    {"sync", required_argument, NULL, 's'},
	    {"json", no_argument, NULL, 'j'},
	    {"keep", no_argument, NULL, 'k'},
	    {"segment-bytes", required_argument, NULL, 'S'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int c;
	uint64_t v;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'b':
			opt_benchmarks = optarg;
			break;
		case 'n':
			/* keys are "key-" and 12 digits; readmissing uses indices up to 2N */
			if (parse_u64(optarg, &v) || v < 1 || v > 100000000000ull) {
				bad_arg("num", optarg);
			}
			opt_num = v;
			break;
		case 'v':
			if (parse_u64(optarg, &v) || v < 1 || v > (16u << 20)) {
				bad_arg("value-size", optarg);
			}
			opt_value_size = (size_t)v;
			break;
		case 't':
			if (parse_threads(optarg)) {
				bad_arg("threads", optarg);
			}
			break;
		case 'd':
			if (!optarg[0] || !strcmp(optarg, "/")) {
				bad_arg("dir", optarg);
			}
			opt_dir = optarg;
			break;
		case 's':
			if (!strcmp(optarg, "no")) {
				opt_sync = SL_SYNC_NO;
			} else if (!strcmp(optarg, "everysec")) {
				opt_sync = SL_SYNC_EVERYSEC;
			} else if (!strcmp(optarg, "always")) {
				opt_sync = SL_SYNC_ALWAYS;
			} else {
				bad_arg("sync", optarg);
			}
			break;
		case 'j':
			opt_json = 1;
			break;
		case 'k':
			opt_keep = 1;
			break;
		case 'S':
			if (parse_u64(optarg, &v) || v < 4096) {
				bad_arg("segment-bytes", optarg);
			}
			opt_segment_bytes = v;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "shiplog-bench: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}

	/* Check the whole list before running anything. */
	char *list = strdup(opt_benchmarks), *save = NULL;
	const struct bench *plan[64];
	int nplan = 0;
	for (char *b = strtok_r(list, ",", &save); b; b = strtok_r(NULL, ",", &save)) {
		if (!(plan[nplan] = bench_find(b)) || nplan == 63) {
			fprintf(stderr, "shiplog-bench: unknown benchmark '%s' (or too many)\n", b);
			usage(stderr);
			return 2;
		}
		nplan++;
	}
	free(list);

	perm = xcalloc(opt_num, sizeof *perm);
	uint64_t s = 42;
	for (uint64_t i = 0; i < opt_num; i++) {
		perm[i] = i;
	}
	for (uint64_t i = opt_num - 1; i > 0; i--) {
		uint64_t j = rng(&s) % (i + 1), x = perm[i];
		perm[i] = perm[j];
		perm[j] = x;
	}
	if (!opt_json) {
		printf("shiplog-bench: num %llu, keys %d B, values %zu B, sync %s, dir %s\n",
		       (unsigned long long)opt_num, KEY_SIZE, opt_value_size, sync_name(opt_sync),
		       opt_dir);
	}
	for (int i = 0; i < nplan; i++) {
		int runs = plan[i]->per_thread_count ? opt_nthreads : 1;
		for (int t = 0; t < runs; t++) {
			plan[i]->run(plan[i]->per_thread_count ? opt_threads[t] : 1);
		}
	}
	db_close();
	if (!opt_keep) {
		dir_wipe();
		rmdir(opt_dir);
	}
	free(perm);
	return 0;
}
