/*
 * test_powerloss.c — simulated power loss: every write the store
 * acknowledged as durable survives a machine crash, not just a process kill.
 *
 * test_crash_kill.c kills the process, and the page cache survives that, so
 * it cannot see a missing fsync.  Here the store runs on a recording sl_io
 * (io.h) that keeps a model of what a power loss would leave:
 *
 *   - a file's durable content is its bytes as they were when the last
 *     fsync/fdatasync of it that succeeded was called (read just before the
 *     call: what was written by then is what the call promises).  The store
 *     appends through a shared mapping the seam never sees, so content is
 *     read back from the file at each sync rather than tracked write by write;
 *   - the durable directory is the listing (name -> file) as it was when the
 *     last fsync of the directory that succeeded was called: a name created,
 *     renamed or removed since is not durable.  A file is an inode here, so
 *     a rename moves its name and its content goes with it;
 *   - a file never synced is empty.
 *
 * Every successful sync, rename and unlink in the store directory is a crash
 * point.  There the recorder copies two images of what a power loss would
 * leave:
 *
 *   strict   the durable directory, each name holding its file's durable
 *            content;
 *   partial  as if some of the rest had reached the disk too: a prefix (as
 *            a journal commits them in order) or a random subset (as POSIX
 *            allows) of the directory operations since the last directory
 *            fsync, and each file at its durable or current length with
 *            none, all, a random subset or a prefix of the 4 KiB pages that
 *            its current content has beyond its durable one.
 *
 * The hooks only read files and copy bytes, never calling the store (which
 * may hold its locks there); the test thread opens each image between two
 * operations, in a scratch directory with the real system calls (skipping
 * an image identical to one already checked), and checks:
 *
 *   - sl_open succeeds;
 *   - every key holds the value of its last write acknowledged before the
 *     crash point, or of a later write that had started by then (not
 *     acknowledged: it may be there or not); it is absent only if one of
 *     those is a delete, or a TTL among them may have run out, or no write
 *     of it was acknowledged;
 *   - never an older value, never bytes no write of that key had, and no
 *     read error (SL_ECORRUPT: a record the store lists but the disk lost);
 *   - last_seq is at least every acknowledged seq (open.c invariant 2: no
 *     acknowledged seq is handed out again).
 *
 * Acknowledged durable: under SL_SYNC_ALWAYS a put or delete that returned
 * SL_OK (an SL_NOWAIT batch once sl_sync_wait returned); under everysec a
 * write whose seq is at most the synced_seq the test last read from
 * sl_stats_get, or one before a returned sl_sync_now or sl_close.
 *
 * Cases (4 KiB segments: a rotation every few writes, a hint at every seal):
 *
 *   always_compact       SL_SYNC_ALWAYS: overwrites, deletes, TTLs (an hour,
 *                        and 10-150 ms so that compaction meets expired
 *                        records), values bigger than a segment, SL_NOWAIT
 *                        batches, sl_compact every few dozen writes
 *                        (outputs, their hints, DROPPING, input removal).
 *   always_slow_flusher  the same with every hint rename held 5 ms, so the
 *                        flusher (which seals: sync, trim, hint) falls
 *                        behind, and SL_NOWAIT batches of up to 20 segments:
 *                        the group commit alone must sync every segment
 *                        written since the last one (sync.c, flush_all).
 *   everysec_background  SL_SYNC_EVERYSEC (5 ms) with background compaction
 *                        (20 ms, dead ratio 0.2) besides sl_compact, and
 *                        sl_sync_now now and then.
 *   everysec_slow_sync   syncs 150 ms apart, compaction in the background
 *                        and called often: it meets keys whose newest
 *                        version is only in the page cache (compact.c, 4b).
 *
 * Both close and reopen the store a third of the way in (crash points inside
 * sl_close and sl_open), and two thirds in take a partial image between two
 * writes as the power loss the workload carries on from: that image becomes
 * the store directory, its recovery runs under the recorder (crash points
 * inside recovery) and later crashes are checked against what it recovered.
 * At the end, after sl_close, the strict image must hold every write.
 *
 * What the model cannot see: calls that bypass the seam.  sl_open's mkdir,
 * its opens of the directory and of LOCK, and its removal of *.tmp files and
 * orphaned hints (unlinkat in list_segments) are not logged: the listing at
 * the next directory fsync includes their effect, and until then a partial
 * image keeps those names (which the next open removes again).  sl_move_in
 * (movein.c: openat, renameat, unlinkat and fsync outside the seam) and
 * sl_swap_dir (renameat2, and fsyncs of the parent directories) are not
 * exercised.  Nothing checks the device below the page cache: a sync is
 * taken to make durable exactly what it promises.
 *
 * SL_TEST_SEED (default 1) seeds the workloads and the partial images;
 * SL_TEST_SEEDS (default 1) runs each case with that many seeds from there.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "io.h"
#include "shiplog.h"
#include "testutil.h"

#define SEG_BYTES 4096u /* the smallest segment: rotations, seals, hints */
#define NKEYS     48
#define KEYMAX    256
#define PL_NAME   64   /* the store's longest name is "NNNNNNNNNN.hint.tmp" */
#define PL_FDS    8192 /* descriptors the recorder can follow */
#define PL_PAGE   4096u
#define PL_SEEN   1024 /* images remembered to skip exact repeats */
#define PL_REPORT 20   /* problems printed in full */

static uint64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static size_t min_sz(size_t a, size_t b)
{
	return a < b ? a : b;
}

/* strlcpy: src cut to fit cap - 1 bytes. */
static void str_copy(char *dst, size_t cap, const char *src)
{
	size_t n = min_sz(strlen(src), cap - 1);
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* Makes room for `need` elements of `size` bytes in *(void **)pp. */
static int grow(void *pp, size_t *cap, size_t need, size_t size)
{
	void **p = pp;
	if (need <= *cap) {
		return 0;
	}
	size_t c = *cap ? *cap * 2 : 16;
	while (c < need) {
		c *= 2;
	}
	void *q = realloc(*p, c * size);
	if (q == NULL) {
		return -1;
	}
	*p = q;
	*cap = c;
	return 0;
}

/* All of path as it is now (malloc'd, caller frees; non-NULL even when
 * empty), read to its end: the store may be appending to it or cutting it
 * meanwhile, which tu_read_file, reading fstat's size, would take for an
 * error.  0, or -1. */
static int read_all(const char *path, uint8_t **out, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		return -1;
	}
	size_t cap = 16384, n = 0;
	uint8_t *p = malloc(cap);
	for (;;) {
		if (p == NULL) {
			close(fd);
			return -1;
		}
		if (n == cap) {
			uint8_t *q = realloc(p, cap * 2);
			if (q == NULL) {
				free(p);
				close(fd);
				return -1;
			}
			p = q;
			cap *= 2;
		}
		ssize_t r = pread(fd, p + n, cap - n, (off_t)n);
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r < 0) {
			free(p);
			close(fd);
			return -1;
		}
		if (r == 0) {
			break;
		}
		n += (size_t)r;
	}
	close(fd);
	*out = p;
	*len = n;
	return 0;
}

/* ---- the recorder: what a power loss would leave ----------------------- */

/* A file the store has had in its directory (an inode: names come and go). */
typedef struct pl_obj {
	ino_t ino;
	uint8_t *dur; /* content when its last successful sync was called; NULL: none */
	size_t dur_len;
	uint64_t dur_ver; /* g.ver when dur was read: an older read never replaces it */
} pl_obj;

typedef struct pl_ent {
	char name[PL_NAME];
	int obj;
} pl_ent;

enum { NS_CREATE, NS_RENAME, NS_UNLINK };

/* A directory operation through the seam, in the order they happened. */
typedef struct pl_nsop {
	int kind;
	char from[PL_NAME]; /* the name created, renamed or removed */
	char to[PL_NAME];   /* NS_RENAME's new name */
	int obj;
} pl_nsop;

typedef struct pl_file {
	char name[PL_NAME];
	uint8_t *data;
	size_t len;
} pl_file;

/* One crash point's image: the files a power loss there would leave. */
typedef struct pl_image {
	struct pl_image *next;
	unsigned id; /* crash point number, from 0 in each test */
	int partial;
	char what[200]; /* the event it follows */
	pl_file *files;
	size_t nfiles, capfiles;
	size_t acked;  /* writes [0, acked) of the op log were acknowledged durable */
	size_t issued; /* writes [0, issued) had started */
} pl_image;

/* One recorder per process: the seam's functions take no context.  Under
 * mu: everything but acked and issued, which the test thread publishes. */
static struct {
	pthread_mutex_t mu;
	int on; /* crash points are captured */
	char dir[TU_PATH];
	dev_t dev;
	ino_t ino;
	uint64_t seed;
	pl_obj *objs;
	size_t nobjs, capobjs;
	int fd_obj[PL_FDS]; /* obj + 1 of the file open on fd; 0: none */
	int maxfd;
	pl_ent *durdir; /* the durable directory */
	size_t ndurdir;
	size_t durdir_ops; /* ns ops [0, durdir_ops) are in it */
	uint64_t durdir_ver;
	pl_nsop *ns;
	size_t nns, capns;
	uint64_t ver;
	unsigned events;
	unsigned n_fsync_file, n_fsync_dir, n_rename, n_unlink; /* crash points by kind */
	pl_image *head, *tail;                                  /* captured, not yet checked */
	int err;
	char errmsg[300];
	_Atomic size_t acked, issued;
	_Atomic uint32_t hint_delay_ms; /* see rec_rename */
} g = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* A failure of the recorder itself, reported by the test thread.  Under mu. */
static void rec_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void rec_fail(const char *fmt, ...)
{
	if (g.err) {
		return;
	}
	g.err = 1;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(g.errmsg, sizeof(g.errmsg), fmt, ap);
	va_end(ap);
}

static const char *base_name(const char *path)
{
	const char *b = strrchr(path, '/');
	return b != NULL ? b + 1 : path;
}

/* Is path a file right in the store directory?  (The store always names
 * its files dir + "/" + name.) */
static int in_store(const char *path)
{
	size_t n = strlen(g.dir);
	return strncmp(path, g.dir, n) == 0 && path[n] == '/' &&
	       strchr(path + n + 1, '/') == NULL && strlen(path + n + 1) < PL_NAME;
}

static int obj_new(ino_t ino)
{
	if (grow(&g.objs, &g.capobjs, g.nobjs + 1, sizeof(*g.objs)) != 0) {
		rec_fail("out of memory");
		return -1;
	}
	g.objs[g.nobjs] = (pl_obj){.ino = ino};
	return (int)g.nobjs++;
}

/* The newest file with inode number ino (a number freed by an unlink may
 * be given to a later create, which obj_new records after the old one), or
 * a new one with no durable content: a file made outside the seam. */
static int obj_of_ino(ino_t ino)
{
	for (size_t i = g.nobjs; i > 0; i--) {
		if (g.objs[i - 1].ino == ino) {
			return (int)(i - 1);
		}
	}
	return obj_new(ino);
}

static void ns_add(int kind, const char *from, const char *to, int obj)
{
	if (grow(&g.ns, &g.capns, g.nns + 1, sizeof(*g.ns)) != 0) {
		rec_fail("out of memory");
		return;
	}
	pl_nsop *op = &g.ns[g.nns++];
	memset(op, 0, sizeof(*op));
	op->kind = kind;
	op->obj = obj;
	snprintf(op->from, sizeof(op->from), "%s", from);
	snprintf(op->to, sizeof(op->to), "%s", to != NULL ? to : "");
}

/* The store directory's regular files now, each with its file. */
static int list_now(pl_ent **out, size_t *n_out)
{
	*out = NULL;
	*n_out = 0;
	DIR *d = opendir(g.dir);
	if (d == NULL) {
		return -1;
	}
	pl_ent *v = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		struct stat st;
		if (strlen(e->d_name) >= PL_NAME ||
		    fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
		    !S_ISREG(st.st_mode)) {
			continue;
		}
		int o = obj_of_ino(st.st_ino);
		if (o < 0 || grow(&v, &cap, n + 1, sizeof(*v)) != 0) {
			rc = -1;
			break;
		}
		str_copy(v[n].name, sizeof(v[n].name), e->d_name); /* the store's names are short */
		v[n].obj = o;
		n++;
	}
	closedir(d);
	if (rc != 0) {
		free(v);
		return -1;
	}
	*out = v;
	*n_out = n;
	return 0;
}

static pl_image *image_new(unsigned id, int partial, const char *what)
{
	pl_image *im = calloc(1, sizeof(*im));
	if (im != NULL) {
		im->id = id;
		im->partial = partial;
		snprintf(im->what, sizeof(im->what), "%s", what);
	}
	return im;
}

/* Adds a file holding data (taken over: the image frees it). */
static int image_take(pl_image *im, const char *name, uint8_t *data, size_t len)
{
	if (grow(&im->files, &im->capfiles, im->nfiles + 1, sizeof(*im->files)) != 0) {
		free(data);
		return -1;
	}
	pl_file *f = &im->files[im->nfiles++];
	snprintf(f->name, sizeof(f->name), "%s", name);
	f->data = data;
	f->len = len;
	return 0;
}

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
	uint8_t *q = malloc(n ? n : 1);
	if (q != NULL && n > 0) {
		memcpy(q, p, n);
	}
	return q;
}

static void image_free(pl_image *im)
{
	if (im == NULL) {
		return;
	}
	for (size_t i = 0; i < im->nfiles; i++) {
		free(im->files[i].data);
	}
	free(im->files);
	free(im);
}

/* The durable directory, each name holding its file's durable content. */
static pl_image *image_strict(unsigned id, const char *what)
{
	pl_image *im = image_new(id, 0, what);
	for (size_t i = 0; im != NULL && i < g.ndurdir; i++) {
		const pl_obj *o = &g.objs[g.durdir[i].obj];
		uint8_t *d = dup_bytes(o->dur, o->dur_len);
		if (d == NULL || image_take(im, g.durdir[i].name, d, o->dur_len) != 0) {
			image_free(im);
			im = NULL;
		}
	}
	return im;
}

static void ent_remove(pl_ent *v, size_t *n, const char *name)
{
	for (size_t i = 0; i < *n; i++) {
		if (strcmp(v[i].name, name) == 0) {
			v[i] = v[--*n];
			return;
		}
	}
}

/* Replays one directory operation on a listing (v has room for one more). */
static void ns_apply(pl_ent *v, size_t *n, const pl_nsop *op)
{
	switch (op->kind) {
	case NS_UNLINK:
		ent_remove(v, n, op->from);
		break;
	case NS_CREATE:
		ent_remove(v, n, op->from);
		snprintf(v[*n].name, sizeof(v[*n].name), "%s", op->from);
		v[(*n)++].obj = op->obj;
		break;
	case NS_RENAME:
		ent_remove(v, n, op->to);
		ent_remove(v, n, op->from);
		snprintf(v[*n].name, sizeof(v[*n].name), "%s", op->to);
		v[(*n)++].obj = op->obj;
		break;
	}
}

/* Current bytes of file o: by a name it has now, or through a descriptor
 * still open on it (an unlinked file).  0, or -1 when it has neither. */
static int current_of(int o, const pl_ent *cur, size_t ncur, uint8_t **out, size_t *len)
{
	char p[TU_PATH + PL_NAME];
	for (size_t i = 0; i < ncur; i++) {
		if (cur[i].obj == o) {
			snprintf(p, sizeof(p), "%s/%s", g.dir, cur[i].name);
			if (read_all(p, out, len) == 0) {
				return 0;
			}
		}
	}
	for (int fd = 0; fd <= g.maxfd; fd++) {
		if (g.fd_obj[fd] == o + 1) {
			snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
			if (read_all(p, out, len) == 0) {
				return 0;
			}
		}
	}
	return -1;
}

/* One file as a power loss may leave it: its durable content d with none,
 * all, a random subset or a prefix of the pages of its current content c,
 * at the durable or the current length.  Past c's end the page keeps d's
 * bytes (a cut that did not reach the disk), past d's end zeros unless c's
 * page is taken (space allocated, data not written). */
static uint8_t *mix(tu_rng *r, const uint8_t *d, size_t dl, const uint8_t *c, size_t cl,
                    size_t *len_out)
{
	int mode = (int)tu_rng_below(r, 4);
	size_t len = mode == 0 ? dl : mode == 1 ? cl : tu_rng_below(r, 2) ? cl : dl;
	size_t pages = (len + PL_PAGE - 1) / PL_PAGE;
	size_t cut = tu_rng_below(r, pages + 1);
	uint8_t *p = calloc(len ? len : 1, 1);
	if (p == NULL) {
		return NULL;
	}
	for (size_t pg = 0; pg < pages; pg++) {
		size_t off = pg * PL_PAGE, end = min_sz(off + PL_PAGE, len);
		int cur = mode == 1 || (mode == 2 && tu_rng_below(r, 2)) || (mode == 3 && pg < cut);
		if (off < dl) {
			memcpy(p + off, d + off, min_sz(end, dl) - off);
		}
		if (cur && off < cl) {
			memcpy(p + off, c + off, min_sz(end, cl) - off);
		}
	}
	*len_out = len;
	return p;
}

/* The durable directory plus some of the directory operations since, in
 * their order: a prefix (what a journal that commits them in order leaves)
 * or any subset (POSIX orders none of them before the directory's fsync).
 * Each file mixed from its durable and current content (mix). */
static pl_image *image_partial(unsigned id, const char *what)
{
	tu_rng r;
	tu_rng_seed(&r, g.seed * 0x100000001b3ull + id);
	size_t later = g.nns - g.durdir_ops;
	int subset = (int)tu_rng_below(&r, 2);
	size_t take = tu_rng_below(&r, later + 1), applied = 0;
	pl_ent *v = malloc((g.ndurdir + later + 1) * sizeof(*v));
	pl_ent *cur = NULL;
	size_t n = g.ndurdir, ncur = 0;
	pl_image *im = NULL;
	if (v == NULL || list_now(&cur, &ncur) != 0) {
		goto fail;
	}
	if (n > 0) { /* g.durdir is NULL before the first directory fsync */
		memcpy(v, g.durdir, n * sizeof(*v));
	}
	for (size_t k = 0; k < later; k++) {
		if (subset ? tu_rng_below(&r, 2) == 1 : k < take) {
			ns_apply(v, &n, &g.ns[g.durdir_ops + k]);
			applied++;
		}
	}
	char w[sizeof(((pl_image *)0)->what)];
	snprintf(w, sizeof(w), "%s; %s %zu of the %zu directory ops since the last directory fsync",
	         what, subset ? "a random" : "the first", applied, later);
	if ((im = image_new(id, 1, w)) == NULL) {
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		const pl_obj *o = &g.objs[v[i].obj];
		uint8_t *c = NULL, *m;
		size_t cl = 0, ml = o->dur_len;
		if (current_of(v[i].obj, cur, ncur, &c, &cl) == 0) {
			m = mix(&r, o->dur, o->dur_len, c, cl, &ml);
		} else {
			m = dup_bytes(o->dur, o->dur_len);
		}
		free(c);
		if (m == NULL || image_take(im, v[i].name, m, ml) != 0) {
			goto fail;
		}
	}
	free(v);
	free(cur);
	return im;
fail:
	free(v);
	free(cur);
	image_free(im);
	return NULL;
}

static void enqueue(pl_image *im)
{
	if (g.tail != NULL) {
		g.tail->next = im;
	} else {
		g.head = im;
	}
	g.tail = im;
}

/* One crash point: a strict and a partial image, queued for the test
 * thread.  acked is read before the images are built (what was
 * acknowledged by then must be in them), issued after (whatever bytes they
 * hold were written by a write started by then).  Under mu. */
static void crash_point(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void crash_point(const char *fmt, ...)
{
	if (!g.on || g.err) {
		return;
	}
	char what[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	size_t acked = atomic_load(&g.acked);
	unsigned id = g.events++;
	pl_image *s = image_strict(id, what), *p = image_partial(id, what);
	size_t issued = atomic_load(&g.issued);
	if (s == NULL || p == NULL) {
		rec_fail("cannot build the images of crash point %u (%s)", id, what);
		image_free(s);
		image_free(p);
		return;
	}
	s->acked = p->acked = acked;
	s->issued = p->issued = issued;
	enqueue(s);
	enqueue(p);
}

/* ---- the recording seam ----------------------------------------------- */

static int rec_open(const char *path, int flags, mode_t mode)
{
	pthread_mutex_lock(&g.mu);
	struct stat st;
	int existed = lstat(path, &st) == 0;
	int fd = sl_io_default.open(path, flags, mode);
	int e = errno;
	if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
		int o = existed ? obj_of_ino(st.st_ino) : obj_new(st.st_ino);
		if (fd >= PL_FDS) {
			rec_fail("descriptor %d is past the recorder's table", fd);
		} else if (o >= 0) {
			g.fd_obj[fd] = o + 1;
			g.maxfd = fd > g.maxfd ? fd : g.maxfd;
		}
		if (!existed && o >= 0 && in_store(path)) {
			ns_add(NS_CREATE, base_name(path), NULL, o);
		}
	}
	pthread_mutex_unlock(&g.mu);
	errno = e;
	return fd;
}

static int rec_close(int fd)
{
	/* under mu, so that no open takes the number before its entry is gone */
	pthread_mutex_lock(&g.mu);
	if (fd >= 0 && fd < PL_FDS) {
		g.fd_obj[fd] = 0;
	}
	int rc = sl_io_default.close(fd);
	int e = errno;
	pthread_mutex_unlock(&g.mu);
	errno = e;
	return rc;
}

static void fd_name(int fd, char *out, size_t cap)
{
	char p[64], t[TU_PATH];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(p, t, sizeof(t) - 1);
	t[n > 0 ? n : 0] = '\0';
	str_copy(out, cap, n > 0 ? base_name(t) : "?");
}

/* fsync or fdatasync (real): of a file, its content read just before the
 * call becomes durable once it succeeds; of the store directory, the
 * listing read just before it.  Either is a crash point. */
static int rec_sync(int fd, int (*real)(int), const char *call)
{
	struct stat st;
	if (fstat(fd, &st) != 0) {
		return real(fd);
	}
	if (S_ISDIR(st.st_mode)) {
		if (st.st_dev != g.dev || st.st_ino != g.ino) {
			return real(fd); /* another directory (sl_swap_dir's parents) */
		}
		pthread_mutex_lock(&g.mu);
		pl_ent *v = NULL;
		size_t n = 0, ops_at = g.nns;
		uint64_t ver = ++g.ver;
		int ok = list_now(&v, &n) == 0;
		if (!ok) {
			rec_fail("cannot list %s before a directory fsync", g.dir);
		}
		pthread_mutex_unlock(&g.mu);
		int rc = real(fd);
		int e = errno;
		pthread_mutex_lock(&g.mu);
		if (rc == 0 && ok && ver > g.durdir_ver) {
			free(g.durdir);
			g.durdir = v;
			g.ndurdir = n;
			g.durdir_ops = ops_at;
			g.durdir_ver = ver;
			v = NULL;
		}
		free(v);
		if (rc == 0) {
			g.n_fsync_dir++;
			crash_point("%s(directory)", call);
		}
		pthread_mutex_unlock(&g.mu);
		errno = e;
		return rc;
	}
	char name[PL_NAME], p[64];
	fd_name(fd, name, sizeof(name));
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	pthread_mutex_lock(&g.mu);
	int o = fd < PL_FDS && g.fd_obj[fd] > 0 ? g.fd_obj[fd] - 1 : obj_of_ino(st.st_ino);
	uint64_t ver = ++g.ver;
	uint8_t *buf = NULL;
	size_t len = 0;
	int ok = o >= 0 && read_all(p, &buf, &len) == 0;
	if (!ok) {
		rec_fail("cannot read %s back before %s", name, call);
	}
	pthread_mutex_unlock(&g.mu);
	int rc = real(fd);
	int e = errno;
	pthread_mutex_lock(&g.mu);
	if (rc == 0 && ok && ver > g.objs[o].dur_ver) {
		free(g.objs[o].dur);
		g.objs[o].dur = buf;
		g.objs[o].dur_len = len;
		g.objs[o].dur_ver = ver;
		buf = NULL;
	}
	free(buf);
	if (rc == 0) {
		g.n_fsync_file++;
		crash_point("%s(%s)", call, name);
	}
	pthread_mutex_unlock(&g.mu);
	errno = e;
	return rc;
}

static int rec_fdatasync(int fd)
{
	return rec_sync(fd, sl_io_default.fdatasync, "fdatasync");
}

static int rec_fsync(int fd)
{
	return rec_sync(fd, sl_io_default.fsync, "fsync");
}

static int rec_rename(const char *from, const char *to)
{
	/* A slow hint holds the flusher (it seals under seal_mu: sync, trim,
	 * hint), so rotated segments pile up unsynced and the group commit's
	 * own sync has to cover every one of them. */
	size_t tl = strlen(to);
	uint32_t delay = atomic_load(&g.hint_delay_ms);
	if (delay > 0 && tl > 5 && strcmp(to + tl - 5, ".hint") == 0) {
		usleep(delay * 1000u);
	}
	pthread_mutex_lock(&g.mu);
	struct stat st;
	int o = lstat(from, &st) == 0 && S_ISREG(st.st_mode) ? obj_of_ino(st.st_ino) : -1;
	int rc = sl_io_default.rename(from, to);
	int e = errno;
	if (rc == 0 && o >= 0 && in_store(from) && in_store(to)) {
		ns_add(NS_RENAME, base_name(from), base_name(to), o);
		g.n_rename++;
		crash_point("rename(%s, %s)", base_name(from), base_name(to));
	}
	pthread_mutex_unlock(&g.mu);
	errno = e;
	return rc;
}

static int rec_unlink(const char *path)
{
	pthread_mutex_lock(&g.mu);
	struct stat st;
	int o = lstat(path, &st) == 0 && S_ISREG(st.st_mode) ? obj_of_ino(st.st_ino) : -1;
	int rc = sl_io_default.unlink(path);
	int e = errno;
	if (rc == 0 && o >= 0 && in_store(path)) {
		ns_add(NS_UNLINK, base_name(path), NULL, o);
		g.n_unlink++;
		crash_point("unlink(%s)", base_name(path));
	}
	pthread_mutex_unlock(&g.mu);
	errno = e;
	return rc;
}

/* Forgets every file and directory operation, and starts recording dir, whose
 * files as they are now count as durable (a fresh directory, or the image
 * a power loss left: what is on the disk after the reboot).  Recording
 * starts off (g.on). */
static int rec_start(const char *dir, uint64_t seed)
{
	pthread_mutex_lock(&g.mu);
	for (size_t i = 0; i < g.nobjs; i++) {
		free(g.objs[i].dur);
	}
	g.nobjs = 0;
	free(g.durdir);
	g.durdir = NULL;
	g.ndurdir = g.durdir_ops = g.nns = 0;
	g.durdir_ver = g.ver = 0;
	memset(g.fd_obj, 0, sizeof(g.fd_obj));
	g.maxfd = 0;
	g.on = 0;
	g.seed = seed;
	snprintf(g.dir, sizeof(g.dir), "%s", dir);
	struct stat st = {0};
	int rc = stat(dir, &st) == 0 && list_now(&g.durdir, &g.ndurdir) == 0 ? 0 : -1;
	g.dev = st.st_dev;
	g.ino = st.st_ino;
	for (size_t i = 0; rc == 0 && i < g.ndurdir; i++) {
		char p[TU_PATH];
		pl_obj *o = &g.objs[g.durdir[i].obj];
		snprintf(p, sizeof(p), "%s/%s", dir, g.durdir[i].name);
		rc = read_all(p, &o->dur, &o->dur_len);
	}
	pthread_mutex_unlock(&g.mu);
	return rc;
}

static void rec_on(int on)
{
	pthread_mutex_lock(&g.mu);
	g.on = on;
	pthread_mutex_unlock(&g.mu);
}

static pl_image *rec_pop(void)
{
	pthread_mutex_lock(&g.mu);
	pl_image *im = g.head;
	if (im != NULL) {
		g.head = im->next;
		if (g.head == NULL) {
			g.tail = NULL;
		}
		im->next = NULL;
	}
	pthread_mutex_unlock(&g.mu);
	return im;
}

/* A crash point now, from the test thread (no store call under way). */
static pl_image *rec_capture(int partial, const char *what)
{
	pthread_mutex_lock(&g.mu);
	size_t acked = atomic_load(&g.acked);
	unsigned id = g.events++;
	pl_image *im = partial ? image_partial(id, what) : image_strict(id, what);
	if (im != NULL) {
		im->acked = acked;
		im->issued = atomic_load(&g.issued);
	}
	pthread_mutex_unlock(&g.mu);
	return im;
}

/* ---- the workload and its op log --------------------------------------- */

enum { OP_PUT, OP_DEL, OP_NONE /* a delete that found nothing: no record */ };

typedef struct pl_op {
	int key;
	int kind;
	int base;      /* the value recovered after a power loss, carried over */
	uint32_t vlen; /* value: tu_fill_tagged(tag), vlen bytes */
	uint64_t tag;
	uint64_t seq; /* once the call returned */
	uint64_t ttl_ms;
	uint64_t t0; /* wall clock before the call: the TTL runs from after it */
} pl_op;

/* What an image held for a key: absent, or the value of op `op`. */
typedef struct pl_found {
	int present;
	size_t op;
} pl_found;

/* Under a sanitizer (tests/run's ASan and TSan stages) each image's open
 * runs many times slower: a third of the writes there, still some hundreds
 * of crash points a case. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PL_WRITES(n) ((n) / 3)
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define PL_WRITES(n) ((n) / 3)
#endif
#endif
#ifndef PL_WRITES
#define PL_WRITES(n) (n)
#endif

typedef struct pl_ctx {
	const char *name;
	sl_sync sync;
	uint32_t sync_interval_ms;
	int background;         /* background compaction: every 20 ms, dead ratio 0.2 */
	unsigned compact_pct;   /* steps that call sl_compact */
	unsigned batch_pct;     /* steps that write an SL_NOWAIT batch (always) or call
	                         * sl_sync_now (everysec) */
	unsigned batch_max;     /* puts in a batch: 2 .. batch_max */
	uint32_t batch_vlen;    /* their values: 0 .. batch_vlen - 1 bytes */
	uint32_t hint_delay_ms; /* every .hint rename waits this long */
	size_t nwrites;
	uint64_t seed;
	tu_rng rng;
	char *root;  /* scratch: the store directories and kept images */
	char *vroot; /* scratch: images are opened under it */
	char vdir[TU_PATH];
	unsigned epoch;
	sl_options opt;
	struct sl_io io;
	sl_db *db;
	pl_op *ops;
	size_t nops, capops;
	size_t *kops[NKEYS]; /* indices of each key's ops, ascending */
	size_t nk[NKEYS], capk[NKEYS];
	int live[NKEYS]; /* the latest write of the key is a put */
	uint64_t seen[PL_SEEN];
	size_t nseen;
	unsigned verified, skipped, problems, kept;
	uint64_t compactions;
	int bad; /* the image being checked has a problem */
	char first[1024];
} pl_ctx;

static size_t key_name(int k, char *buf)
{
	int n = snprintf(buf, KEYMAX, "key-%03d", k);
	if (k % 8 == 7) { /* every eighth key long: hint entries of another size */
		memset(buf + n, 'L', 180);
		n += 180;
		buf[n] = '\0';
	}
	return (size_t)n;
}

static uint8_t *value_of(const pl_op *op)
{
	uint8_t *v = malloc(op->vlen ? op->vlen : 1);
	assert_non_null(v);
	tu_fill_tagged(v, op->vlen, op->tag);
	return v;
}

static size_t op_add(pl_ctx *c, const pl_op *op)
{
	int k = op->key;
	assert_int_equal(grow(&c->ops, &c->capops, c->nops + 1, sizeof(*c->ops)), 0);
	assert_int_equal(grow(&c->kops[k], &c->capk[k], c->nk[k] + 1, sizeof(size_t)), 0);
	c->ops[c->nops] = *op;
	c->kops[k][c->nk[k]++] = c->nops;
	return c->nops++;
}

/* Logs a write about to be made and publishes it as started. */
static size_t op_begin(pl_ctx *c, int k, int kind, uint32_t vlen, uint64_t ttl_ms)
{
	pl_op op = {.key = k,
	            .kind = kind,
	            .vlen = vlen,
	            .tag = tu_rng_next(&c->rng),
	            .ttl_ms = ttl_ms,
	            .t0 = wall_ms()};
	size_t i = op_add(c, &op);
	atomic_store(&g.issued, c->nops);
	return i;
}

static void ack_all(pl_ctx *c)
{
	atomic_store(&g.acked, c->nops);
}

/* everysec: what the store says is durable. */
static void ack_synced(pl_ctx *c)
{
	sl_stats st;
	assert_int_equal(sl_stats_get(c->db, &st), SL_OK);
	size_t a = atomic_load(&g.acked);
	while (a < c->nops && (c->ops[a].kind == OP_NONE ||
	                       (c->ops[a].seq != 0 && c->ops[a].seq <= st.synced_seq))) {
		a++;
	}
	atomic_store(&g.acked, a);
}

static uint64_t do_put(pl_ctx *c, int k, uint32_t vlen, uint64_t ttl_ms, unsigned flags)
{
	char key[KEYMAX];
	size_t kl = key_name(k, key);
	size_t i = op_begin(c, k, OP_PUT, vlen, ttl_ms);
	uint8_t *v = value_of(&c->ops[i]);
	uint64_t seq = 0;
	int rc = sl_put_ex(c->db, key, kl, v, vlen, ttl_ms, flags, &seq);
	free(v);
	if (rc != SL_OK) {
		fail_msg("%s: put of %.12s (op %zu) = %d (%s)", c->name, key, i, rc,
		         sl_strerror(rc));
	}
	c->ops[i].seq = seq;
	c->live[k] = 1;
	if (c->sync == SL_SYNC_ALWAYS && !(flags & SL_NOWAIT)) {
		ack_all(c);
	}
	return seq;
}

static void do_delete(pl_ctx *c, int k)
{
	char key[KEYMAX];
	size_t kl = key_name(k, key);
	size_t i = op_begin(c, k, OP_DEL, 0, 0);
	uint64_t seq = 0;
	int rc = sl_delete(c->db, key, kl, &seq);
	if (rc == SL_ENOTFOUND) {
		c->ops[i].kind = OP_NONE; /* its TTL ran out: nothing written */
	} else if (rc != SL_OK) {
		fail_msg("%s: delete of %.12s (op %zu) = %d (%s)", c->name, key, i, rc,
		         sl_strerror(rc));
	}
	c->ops[i].seq = seq;
	c->live[k] = 0;
	if (c->sync == SL_SYNC_ALWAYS) {
		ack_all(c);
	}
}

/* One step of the workload. */
static void step(pl_ctx *c)
{
	tu_rng *r = &c->rng;
	unsigned x = (unsigned)tu_rng_below(r, 100);
	int k = (int)tu_rng_below(r, NKEYS);
	if (x < c->compact_pct) {
		int rc = sl_compact(c->db);
		if (rc != SL_OK) {
			fail_msg("%s: sl_compact = %d (%s)", c->name, rc, sl_strerror(rc));
		}
		return;
	}
	x -= c->compact_pct;
	if (x < c->batch_pct && c->sync == SL_SYNC_ALWAYS) {
		/* a batch sharing one group commit, acknowledged by sl_sync_wait;
		 * a big one spans several segments, which that sync must cover */
		uint64_t top = 0;
		for (unsigned b = 0, n = 2 + (unsigned)tu_rng_below(r, c->batch_max - 1); b < n;
		     b++) {
			uint64_t s = do_put(c, (int)tu_rng_below(r, NKEYS),
			                    (uint32_t)tu_rng_below(r, c->batch_vlen), 0, SL_NOWAIT);
			top = s > top ? s : top;
		}
		int rc = sl_sync_wait(c->db, top);
		if (rc != SL_OK) {
			fail_msg("%s: sl_sync_wait(%llu) = %d (%s)", c->name,
			         (unsigned long long)top, rc, sl_strerror(rc));
		}
		ack_all(c);
		return;
	}
	if (x < c->batch_pct) {
		int rc = sl_sync_now(c->db);
		if (rc != SL_OK) {
			fail_msg("%s: sl_sync_now = %d (%s)", c->name, rc, sl_strerror(rc));
		}
		ack_all(c);
		return;
	}
	if (x < c->batch_pct + 22 && c->live[k]) {
		do_delete(c, k);
		return;
	}
	unsigned y = (unsigned)tu_rng_below(r, 100), z = (unsigned)tu_rng_below(r, 100);
	uint32_t vlen = y < 1    ? 5000 /* bigger than a segment */
	                : y < 10 ? 400 + (uint32_t)tu_rng_below(r, 1100)
	                         : (uint32_t)tu_rng_below(r, 400);
	uint64_t ttl = z < 8 ? 3600000u : z < 13 ? 10 + tu_rng_below(r, 140) : 0;
	do_put(c, k, vlen, ttl, 0);
}

/* ---- checking an image -------------------------------------------------- */

typedef struct pl_log {
	pthread_mutex_t mu; /* the loader threads log too */
	char buf[1500];
	size_t len;
} pl_log;

static void log_keep(void *arg, const char *level, const char *msg)
{
	pl_log *l = arg;
	if (strcmp(level, "debug") == 0) {
		return;
	}
	pthread_mutex_lock(&l->mu);
	if (l->len < sizeof(l->buf) - 1) {
		int n = snprintf(l->buf + l->len, sizeof(l->buf) - l->len, "[%s] %s; ", level, msg);
		l->len = n < 0 ? l->len : min_sz(l->len + (size_t)n, sizeof(l->buf) - 1);
	}
	pthread_mutex_unlock(&l->mu);
}

static void problem(pl_ctx *c, const pl_image *im, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(pl_ctx *c, const pl_image *im, const char *fmt, ...)
{
	char msg[1200], line[2000];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(line, sizeof(line),
	         "%s seed %llu, crash point %u (%s image, after %s; writes [0, %zu) acknowledged "
	         "durable, [0, %zu) started): %s",
	         c->name, (unsigned long long)c->seed, im->id, im->partial ? "partial" : "strict",
	         im->what, im->acked, im->issued, msg);
	if (c->problems < PL_REPORT) {
		print_message("%s\n", line);
	}
	if (c->problems == 0) {
		str_copy(c->first, sizeof(c->first), line);
	}
	c->problems++;
	c->bad = 1;
}

static void materialize(const char *dir, const pl_image *im)
{
	tu_rm_rf(dir);
	assert_int_equal(tu_mkdir_p(dir), 0);
	for (size_t i = 0; i < im->nfiles; i++) {
		char p[TU_PATH];
		snprintf(p, sizeof(p), "%s/%s", dir, im->files[i].name);
		assert_int_equal(tu_write_file(p, im->files[i].data, im->files[i].len), 0);
	}
}

static const char *kind_name(const pl_op *op)
{
	if (op->base) {
		return op->kind == OP_DEL ? "absence recovered after the power loss"
		                          : "value recovered after the power loss";
	}
	return op->kind == OP_DEL ? "delete" : op->ttl_ms ? "put with TTL" : "put";
}

/* Checks key k in the store db opened on image im (see the top). */
static void check_key(pl_ctx *c, const pl_image *im, sl_db *db, int k, pl_found *f)
{
	char key[KEYMAX];
	size_t kl = key_name(k, key);
	void *v = NULL;
	size_t vl = 0;
	uint64_t seq = 0;
	int rc = sl_get_seq(db, key, kl, &v, &vl, &seq);
	/* read after the get: a TTL the store found run out has run out by then */
	uint64_t now = wall_ms();
	/* The key's ops that count: from its last acknowledged one (lo, if
	 * has_a) to the last one started (hi exclusive). */
	const size_t *l = c->kops[k];
	size_t hi = 0, lo = 0;
	int has_a = 0;
	while (hi < c->nk[k] && l[hi] < im->issued) {
		if (l[hi] < im->acked && c->ops[l[hi]].kind != OP_NONE) {
			lo = hi;
			has_a = 1;
		}
		hi++;
	}
	const pl_op *a = has_a ? &c->ops[l[lo]] : NULL;
	char want[200] = "nothing acknowledged";
	if (a != NULL) {
		snprintf(want, sizeof(want), "acknowledged %s (op %zu, seq %llu, %u bytes)",
		         kind_name(a), l[lo], (unsigned long long)a->seq, a->vlen);
	}
	if (f != NULL) {
		f->present = 0;
	}
	if (rc == SL_ENOTFOUND) {
		int ok = a == NULL;
		for (size_t j = lo; j < hi && !ok; j++) {
			const pl_op *op = &c->ops[l[j]];
			ok = op->kind == OP_DEL ||
			     (op->kind == OP_PUT && op->ttl_ms != 0 && now >= op->t0 + op->ttl_ms);
		}
		if (!ok) {
			problem(c, im, "key %.12s: %s is lost: the key is absent", key, want);
		}
	} else if (rc == SL_OK) {
		size_t m = SIZE_MAX;
		for (size_t j = hi; j > lo && m == SIZE_MAX; j--) {
			const pl_op *op = &c->ops[l[j - 1]];
			if (op->kind == OP_PUT && op->seq == seq) {
				m = l[j - 1];
			}
		}
		if (m == SIZE_MAX) {
			size_t old = SIZE_MAX;
			for (size_t j = 0; j < c->nk[k]; j++) {
				if (c->ops[l[j]].kind == OP_PUT && c->ops[l[j]].seq == seq) {
					old = l[j];
				}
			}
			if (old != SIZE_MAX && a != NULL && old < l[lo]) {
				problem(
				    c, im,
				    "key %.12s: %s is lost: found the older value of op %zu (seq "
				    "%llu, %zu bytes)",
				    key, want, old, (unsigned long long)seq, vl);
			} else {
				problem(
				    c, im,
				    "key %.12s: found seq %llu (%zu bytes), which no write of this "
				    "key started before the crash point had (%s)",
				    key, (unsigned long long)seq, vl, want);
			}
		} else {
			uint8_t *exp = value_of(&c->ops[m]);
			if (vl != c->ops[m].vlen || (vl > 0 && memcmp(v, exp, vl) != 0)) {
				problem(
				    c, im,
				    "key %.12s: seq %llu (op %zu) reads %zu bytes that differ from "
				    "the %u it wrote",
				    key, (unsigned long long)seq, m, vl, c->ops[m].vlen);
			} else if (f != NULL) {
				f->present = 1;
				f->op = m;
			}
			free(exp);
		}
	} else {
		problem(c, im, "key %.12s: sl_get = %d (%s); %s", key, rc, sl_strerror(rc), want);
	}
	free(v);
}

static uint64_t image_hash(const pl_image *im)
{
	uint64_t h = XXH3_64bits_withSeed(NULL, 0, im->acked * 0x9e3779b97f4a7c15ull + im->issued);
	for (size_t i = 0; i < im->nfiles; i++) {
		const pl_file *f = &im->files[i];
		h = XXH3_64bits_withSeed(f->name, strlen(f->name), h);
		h = XXH3_64bits_withSeed(f->data, f->len, h ^ f->len);
	}
	return h;
}

/* Opens image im with the real system calls and checks it.  found (may be
 * NULL) gets what each key held; then the image is checked even when an
 * identical one was. */
static void verify(pl_ctx *c, const pl_image *im, pl_found *found)
{
	uint64_t h = image_hash(im);
	if (found == NULL) {
		for (size_t i = 0; i < c->nseen && i < PL_SEEN; i++) {
			if (c->seen[i] == h) {
				c->skipped++;
				return;
			}
		}
		c->seen[c->nseen++ % PL_SEEN] = h;
	}
	materialize(c->vdir, im);
	pl_log lg = {.mu = PTHREAD_MUTEX_INITIALIZER};
	sl_options o;
	sl_options_init(&o);
	o.segment_bytes = SEG_BYTES;
	o.compact_background = 0;
	o.log_fn = log_keep;
	o.log_arg = &lg;
	c->bad = 0;
	c->verified++;
	for (int k = 0; found != NULL && k < NKEYS; k++) {
		found[k].present = 0;
	}
	sl_db *db = NULL;
	int rc = sl_open(c->vdir, &o, &db);
	if (rc != SL_OK) {
		problem(c, im, "sl_open = %d (%s); the store logged: %s", rc, sl_strerror(rc),
		        lg.buf);
	} else {
		for (int k = 0; k < NKEYS; k++) {
			check_key(c, im, db, k, found != NULL ? &found[k] : NULL);
		}
		uint64_t top = 0;
		size_t top_op = 0;
		for (size_t i = 0; i < im->acked; i++) {
			if (c->ops[i].kind != OP_NONE && c->ops[i].seq > top) {
				top = c->ops[i].seq;
				top_op = i;
			}
		}
		sl_stats st;
		assert_int_equal(sl_stats_get(db, &st), SL_OK);
		if (st.last_seq < top) {
			problem(
			    c, im,
			    "last_seq %llu after recovery is below the acknowledged seq %llu (op "
			    "%zu), which the next write would be given again",
			    (unsigned long long)st.last_seq, (unsigned long long)top, top_op);
		}
		sl_close(db);
	}
	if (c->bad && c->kept < 3) {
		/* the image as it was before recovery touched it */
		char keep[TU_PATH];
		snprintf(keep, sizeof(keep), "%s/failed-%s-seed%llu-%u-%s", c->root, c->name,
		         (unsigned long long)c->seed, im->id, im->partial ? "partial" : "strict");
		materialize(keep, im);
		print_message("  image kept in %s\n", keep);
		c->kept++;
	}
	pthread_mutex_destroy(&lg.mu);
}

/* Checks every image captured so far. */
static void drain(pl_ctx *c)
{
	pl_image *im;
	while ((im = rec_pop()) != NULL) {
		verify(c, im, NULL);
		image_free(im);
	}
	pthread_mutex_lock(&g.mu);
	int err = g.err;
	pthread_mutex_unlock(&g.mu);
	if (err) {
		fail_msg("%s: the recorder failed: %s", c->name, g.errmsg);
	}
}

/* Closes the recorded store (syncs under every policy), counting its
 * compactions for the summary. */
static void close_store(pl_ctx *c)
{
	sl_stats st;
	assert_int_equal(sl_stats_get(c->db, &st), SL_OK);
	c->compactions += st.compactions;
	sl_close(c->db);
	c->db = NULL;
}

static void open_store(pl_ctx *c, const char *dir)
{
	int rc = sl_open(dir, &c->opt, &c->db);
	if (rc != SL_OK) {
		fail_msg("%s: sl_open(%s) on the recorder = %d (%s)", c->name, dir, rc,
		         sl_strerror(rc));
	}
}

/* A power loss now: the partial image of this moment becomes the store
 * directory, recovered under the recorder; what it recovered becomes the
 * new op log's base, acknowledged, for the crashes still to come. */
static void power_loss(pl_ctx *c)
{
	pl_image *im = rec_capture(1, "a power loss between two writes");
	assert_non_null(im);
	/* The old store's last moments: its crash points still count. */
	close_store(c);
	drain(c);
	pl_found found[NKEYS];
	verify(c, im, found);
	rec_on(0);
	pl_op *old = c->ops;
	c->ops = NULL;
	c->nops = c->capops = 0;
	for (int k = 0; k < NKEYS; k++) {
		c->nk[k] = 0;
		pl_op op = {.key = k, .kind = OP_DEL};
		if (found[k].present) {
			op = old[found[k].op];
		}
		op.base = 1;
		op_add(c, &op);
		c->live[k] = found[k].present;
	}
	free(old);
	c->nseen = 0; /* a new op log: equal images may now check differently */
	atomic_store(&g.issued, c->nops);
	atomic_store(&g.acked, c->nops);
	char dir[TU_PATH];
	snprintf(dir, sizeof(dir), "%s/store%u", c->root, ++c->epoch);
	materialize(dir, im);
	image_free(im);
	assert_int_equal(rec_start(dir, c->seed + 1000u * c->epoch), 0);
	rec_on(1);
	open_store(c, dir);
	drain(c);
}

static void run_seed(pl_ctx *c)
{
	uint64_t t0 = tu_mono_ms();
	unsigned problems0 = c->problems, verified0 = c->verified, skipped0 = c->skipped;
	uint64_t compactions0 = c->compactions;
	tu_rng_seed(&c->rng, c->seed);
	c->nops = 0;
	for (int k = 0; k < NKEYS; k++) {
		c->nk[k] = 0;
		c->live[k] = 0;
	}
	c->nseen = 0;
	atomic_store(&g.issued, 0);
	atomic_store(&g.acked, 0);
	char dir[TU_PATH];
	snprintf(dir, sizeof(dir), "%s/store%u", c->root, ++c->epoch);
	assert_int_equal(tu_mkdir_p(dir), 0);
	assert_int_equal(rec_start(dir, c->seed), 0);
	rec_on(1);
	open_store(c, dir);
	drain(c);
	for (size_t i = 0; i < c->nwrites; i++) {
		if (i == c->nwrites / 3) {
			close_store(c);
			ack_all(c);
			open_store(c, g.dir);
		}
		if (i == 2 * c->nwrites / 3) {
			power_loss(c);
		}
		step(c);
		if (c->sync == SL_SYNC_EVERYSEC) {
			ack_synced(c);
		}
		drain(c);
	}
	close_store(c);
	ack_all(c);
	drain(c);
	pl_image *im = rec_capture(0, "sl_close");
	assert_non_null(im);
	verify(c, im, NULL);
	image_free(im);
	rec_on(0);
	pthread_mutex_lock(&g.mu);
	print_message("%s seed %llu: %u crash points (file syncs %u, directory fsyncs %u, renames "
	              "%u, unlinks %u), %llu compactions; %u images opened (%u repeats "
	              "skipped), %u problems, %.1f s\n",
	              c->name, (unsigned long long)c->seed, g.events, g.n_fsync_file, g.n_fsync_dir,
	              g.n_rename, g.n_unlink, (unsigned long long)(c->compactions - compactions0),
	              c->verified - verified0, c->skipped - skipped0, c->problems - problems0,
	              (double)(tu_mono_ms() - t0) / 1000.0);
	pthread_mutex_unlock(&g.mu);
}

/* Where images are opened: on tmpfs when there is one.  Thousands of opens,
 * each with fsyncs of its own that prove nothing here (the image is what
 * the disk holds after the reboot), took twice as long on the test VM's
 * ext4; the recorded store itself stays under SL_TEST_TMP. */
static char *images_root(void)
{
	char *p = strdup("/dev/shm/powerloss-open-XXXXXX");
	if (p != NULL && access("/dev/shm", W_OK) == 0 && mkdtemp(p) != NULL) {
		return p;
	}
	free(p);
	return tu_mkdtemp("powerloss-open");
}

static void run_case(pl_ctx *c)
{
	uint64_t seed0 = tu_env_u64("SL_TEST_SEED", 1), seeds = tu_env_u64("SL_TEST_SEEDS", 1);
	c->root = tu_mkdtemp("powerloss");
	c->vroot = images_root();
	assert_non_null(c->root);
	assert_non_null(c->vroot);
	snprintf(c->vdir, sizeof(c->vdir), "%s/image", c->vroot);
	/* The writes themselves (pwrite, ftruncate, fallocate, and the
	 * mapping) need no wrapper: content is read back at each sync. */
	c->io = sl_io_default;
	c->io.open = rec_open;
	c->io.close = rec_close;
	c->io.fdatasync = rec_fdatasync;
	c->io.fsync = rec_fsync;
	c->io.rename = rec_rename;
	c->io.unlink = rec_unlink;
	sl_options_init(&c->opt);
	c->opt.sync = c->sync;
	if (c->sync_interval_ms != 0) {
		c->opt.sync_interval_ms = c->sync_interval_ms;
	}
	c->opt.segment_bytes = SEG_BYTES;
	c->opt.compact_background = c->background;
	c->opt.compact_interval_ms = 20;
	c->opt.compact_dead_ratio = 0.2;
	c->opt.quiet = tu_quiet();
	c->opt.io = &c->io;
	atomic_store(&g.hint_delay_ms, c->hint_delay_ms);
	for (uint64_t s = 0; s < seeds; s++) {
		pthread_mutex_lock(&g.mu);
		g.events = g.n_fsync_file = g.n_fsync_dir = g.n_rename = g.n_unlink = 0;
		pthread_mutex_unlock(&g.mu);
		c->seed = seed0 + s;
		run_seed(c);
	}
	if (c->problems > 0) {
		fail_msg("%s: %u problems in %u images (scratch kept in %s); the first: %s",
		         c->name, c->problems, c->verified, c->root, c->first);
	}
}

/* ---- cases -------------------------------------------------------------- */

static int setup(void **state)
{
	pl_ctx *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		return -1;
	}
	*state = c;
	return 0;
}

/* Runs after a failed assertion too: the store's threads must stop before
 * the next case resets the recorder. */
static int teardown(void **state)
{
	pl_ctx *c = *state;
	rec_on(0);
	if (c->db != NULL) {
		sl_close(c->db);
	}
	pl_image *im;
	while ((im = rec_pop()) != NULL) {
		image_free(im);
	}
	pthread_mutex_lock(&g.mu);
	g.err = 0;
	pthread_mutex_unlock(&g.mu);
	atomic_store(&g.hint_delay_ms, 0);
	if (c->vroot != NULL) {
		tu_rm_rf(c->vroot);
	}
	if (c->root != NULL && c->problems == 0) {
		tu_rm_rf(c->root);
	}
	for (int k = 0; k < NKEYS; k++) {
		free(c->kops[k]);
	}
	free(c->ops);
	free(c->root);
	free(c->vroot);
	free(c);
	return 0;
}

static void test_always_compact(void **state)
{
	pl_ctx *c = *state;
	c->name = "always_compact";
	c->sync = SL_SYNC_ALWAYS;
	c->compact_pct = 3;
	c->batch_pct = 3;
	c->batch_max = 8;
	c->batch_vlen = 300;
	c->nwrites = PL_WRITES(360);
	run_case(c);
}

static void test_always_slow_flusher(void **state)
{
	pl_ctx *c = *state;
	c->name = "always_slow_flusher";
	c->sync = SL_SYNC_ALWAYS;
	c->compact_pct = 2;
	c->batch_pct = 12;
	c->batch_max =
	    48; /* up to 20 segments of 4 KiB in one batch: more than flush_all's 8 at a time */
	c->batch_vlen = 1600;
	c->hint_delay_ms = 5;
	c->nwrites = PL_WRITES(150);
	run_case(c);
}

static void test_everysec_background(void **state)
{
	pl_ctx *c = *state;
	c->name = "everysec_background";
	c->sync = SL_SYNC_EVERYSEC;
	c->sync_interval_ms = 5;
	c->background = 1;
	c->compact_pct = 3;
	c->batch_pct = 3;
	c->nwrites = PL_WRITES(360);
	run_case(c);
}

/* Syncs far apart: compaction, in the background and called, meets keys
 * whose newest version is still only in the page cache (compact.c, 4b). */
static void test_everysec_slow_sync(void **state)
{
	pl_ctx *c = *state;
	c->name = "everysec_slow_sync";
	c->sync = SL_SYNC_EVERYSEC;
	c->sync_interval_ms = 150;
	c->background = 1;
	c->compact_pct = 8;
	c->batch_pct = 1;
	c->nwrites = PL_WRITES(300);
	run_case(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_always_compact, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_always_slow_flusher, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_everysec_background, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_everysec_slow_sync, setup, teardown),
	};
	const char *filter = getenv("SL_TEST_FILTER"); /* e.g. "test_always*" */
	if (filter != NULL) {
		cmocka_set_test_filter(filter);
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
