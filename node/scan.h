/*
 * scan.h — one page of a prefix scan, in key order, resumable by cursor.
 *
 * The engine's sl_scan visits keys in no order and keeps no state between
 * calls; the protocol wants pages that can be resumed.  A page is "the
 * smallest `limit` keys with the prefix that sort after the cursor", so the
 * cursor is simply the last key returned and the server keeps no state.
 * Each page walks the whole keydir (O(keys)); memory is bounded by the page.
 */
#ifndef SL_NODE_SCAN_H
#define SL_NODE_SCAN_H

#include <stddef.h>
#include <stdint.h>

#include "shiplog.h"

typedef struct sl_scan_entry {
	uint8_t *k; /* malloc'd */
	size_t kl;
	uint8_t *v; /* malloc'd; NULL when keys_only or toobig */
	size_t vl;
	/* the value alone is over the page's byte budget (stored under a larger
	 * --max-value-bytes than the server's now): the entry comes without
	 * it, so the page stays within the message limit and the scan goes on
	 * past the key; vfull is the value's length */
	int toobig;
	size_t vfull;
} sl_scan_entry;

typedef struct sl_scan_page {
	sl_scan_entry *e; /* ascending by key (bytewise, shorter first on ties) */
	size_t n;
	int more; /* 1: keys after e[n-1] exist (continue from it) */
} sl_scan_page;

/* Collects the page: keys starting with prefix (plen 0: all), strictly
 * after `after` (NULL/0: from the start), at most limit (>= 1) entries and
 * about budget bytes of keys and values (always at least one entry).
 * SL_OK with *out filled (free with sl_scan_page_free), or SL_ENOMEM / an
 * engine error (out empty). */
int sl_scan_page_run(sl_db *db, const void *prefix, size_t plen, const void *after, size_t alen,
                     uint32_t limit, size_t budget, int keys_only, sl_scan_page *out);

/* Frees every entry still set (NULL pointers are skipped) and the array. */
void sl_scan_page_free(sl_scan_page *pg);

#endif
