/*
 * scan.c — a sorted, bounded scan page over the engine's unordered sl_scan
 * (see scan.h for why).
 *
 * A max-heap keeps the smallest keys seen so far.  When the heap is full (by
 * count or by bytes) its largest key is evicted and becomes the *ceiling*:
 * no key at or above the ceiling can be on this page any more, so later
 * candidates at or above it are rejected without copying.  Every eviction or
 * rejection means keys remain after the page (`more`).
 */
#include "scan.h"

#include <stdlib.h>
#include <string.h>

#define ENTRY_OVERHEAD 16 /* protobuf framing per entry, roughly */

typedef struct scan_state {
	const uint8_t *after;
	size_t alen;
	uint32_t limit;
	size_t budget;
	int keys_only;
	sl_scan_entry *heap;
	size_t n, cap;
	size_t bytes;
	uint8_t *ceil; /* smallest evicted key, malloc'd; NULL: none yet */
	size_t ceil_len;
	int has_ceil;
	int more;
} scan_state;

static int key_cmp(const void *a, size_t al, const void *b, size_t bl)
{
	size_t m = al < bl ? al : bl;
	int c = m ? memcmp(a, b, m) : 0;
	if (c != 0) {
		return c;
	}
	return al < bl ? -1 : al > bl;
}

static int ent_cmp(const sl_scan_entry *a, const sl_scan_entry *b)
{
	return key_cmp(a->k, a->kl, b->k, b->kl);
}

static int ent_qsort_cmp(const void *a, const void *b)
{
	return ent_cmp(a, b);
}

static void sift_up(sl_scan_entry *h, size_t i)
{
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (ent_cmp(&h[p], &h[i]) >= 0) {
			break;
		}
		sl_scan_entry t = h[p];
		h[p] = h[i];
		h[i] = t;
		i = p;
	}
}

static void sift_down(sl_scan_entry *h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && ent_cmp(&h[l], &h[m]) > 0) {
			m = l;
		}
		if (r < n && ent_cmp(&h[r], &h[m]) > 0) {
			m = r;
		}
		if (m == i) {
			return;
		}
		sl_scan_entry t = h[m];
		h[m] = h[i];
		h[i] = t;
		i = m;
	}
}

/* Removes the largest entry; its key becomes the ceiling. */
static void evict_top(scan_state *s)
{
	sl_scan_entry top = s->heap[0];
	s->heap[0] = s->heap[--s->n];
	sift_down(s->heap, s->n, 0);
	s->bytes -= top.kl + top.vl + ENTRY_OVERHEAD;
	free(top.v);
	free(s->ceil);
	s->ceil = top.k; /* top is the largest kept key, so below any old ceiling */
	s->ceil_len = top.kl;
	s->has_ceil = 1;
	s->more = 1;
}

static int visit(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	scan_state *s = arg;
	if (s->after != NULL && key_cmp(k, kl, s->after, s->alen) <= 0) {
		return 0;
	}
	if (s->has_ceil && key_cmp(k, kl, s->ceil, s->ceil_len) >= 0) {
		s->more = 1;
		return 0;
	}
	if (s->n == s->limit) {
		if (key_cmp(k, kl, s->heap[0].k, s->heap[0].kl) > 0) {
			s->more = 1;
			return 0;
		}
		evict_top(s);
	}
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		if (cap > s->limit) {
			cap = s->limit;
		}
		sl_scan_entry *h = realloc(s->heap, cap * sizeof(*h));
		if (h == NULL) {
			return SL_ENOMEM;
		}
		s->heap = h;
		s->cap = cap;
	}
	sl_scan_entry e = {.k = malloc(kl ? kl : 1), .kl = kl, .v = NULL, .vl = 0};
	if (e.k == NULL) {
		return SL_ENOMEM;
	}
	memcpy(e.k, k, kl);
	if (!s->keys_only && kl + vl + ENTRY_OVERHEAD > s->budget) {
		e.toobig = 1; /* alone over the budget: the key only (scan.h) */
		e.vfull = vl;
	} else if (!s->keys_only) {
		e.v = malloc(vl ? vl : 1);
		if (e.v == NULL) {
			free(e.k);
			return SL_ENOMEM;
		}
		if (vl) {
			memcpy(e.v, v, vl);
		}
		e.vl = vl;
	}
	s->heap[s->n] = e;
	sift_up(s->heap, s->n);
	s->n++;
	s->bytes += e.kl + e.vl + ENTRY_OVERHEAD;
	while (s->bytes > s->budget && s->n > 1) {
		evict_top(s);
	}
	return 0;
}

int sl_scan_page_run(sl_db *db, const void *prefix, size_t plen, const void *after, size_t alen,
                     uint32_t limit, size_t budget, int keys_only, sl_scan_page *out)
{
	memset(out, 0, sizeof(*out));
	scan_state s = {
	    .after = alen ? after : NULL,
	    .alen = alen,
	    .limit = limit ? limit : 1,
	    .budget = budget,
	    .keys_only = keys_only,
	};
	int rc = sl_scan(db, prefix, plen, visit, &s);
	free(s.ceil);
	if (rc != SL_OK) {
		sl_scan_page pg = {.e = s.heap, .n = s.n};
		sl_scan_page_free(&pg);
		return rc;
	}
	if (s.n > 1) {
		qsort(s.heap, s.n, sizeof(*s.heap), ent_qsort_cmp);
	}
	out->e = s.heap;
	out->n = s.n;
	out->more = s.more;
	return SL_OK;
}

void sl_scan_page_free(sl_scan_page *pg)
{
	if (pg == NULL) {
		return;
	}
	for (size_t i = 0; i < pg->n; i++) {
		free(pg->e[i].k);
		free(pg->e[i].v);
	}
	free(pg->e);
	pg->e = NULL;
	pg->n = 0;
}
