/*
 * fuzz_handler.c — libFuzzer target for the request path: wire precheck,
 * protobuf decode, argument checks, the engine calls and the response
 * encoding (node/handler.c), plus the quick (ping) and reject paths the
 * server runs in nng callbacks.  Every input must produce a Response that
 * decodes again; ASan/UBSan catch the rest.
 *
 *   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug
 *   cmake --build build-fuzz --target fuzz_handler
 *   mkdir -p build-fuzz/corpus
 *   build-fuzz/fuzz_handler -max_total_time=20 -max_len=4096 build-fuzz/corpus \
 *       tests/node/fuzz-corpus
 */
#define _GNU_SOURCE /* nftw */
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handler.h"
#include "shiplog.h"
#include "status.h"

static sl_node node;
static char dir[64];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* libFuzzer ends with exit(): close the store and remove its directory. */
static void cleanup(void)
{
	sl_close(node.db);
	node.db = NULL;
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	snprintf(dir, sizeof(dir), "/tmp/shiplog-fuzz-XXXXXX");
	if (mkdtemp(dir) == NULL) {
		abort();
	}
	sl_options o;
	sl_options_init(&o);
	o.sync = SL_SYNC_NO;
	o.segment_bytes = 1 << 20;
	o.max_key_bytes = 1024;
	o.max_value_bytes = 64 << 10;
	o.compact_background = 0;
	o.quiet = 1;
	if (sl_open(dir, &o, &node.db) != SL_OK) {
		abort();
	}
	atexit(cleanup);
	node.max_key_bytes = o.max_key_bytes;
	node.max_value_bytes = o.max_value_bytes;
	node.max_msg_bytes = o.max_value_bytes + SL_MSG_SLACK;
	node.scan_default = 100;
	node.scan_max = 1000;
	node.sync_name = "no";
	node.role = "primary";
	node.start_ms = sl_node_mono_ms();
	fprintf(stderr, "fuzz_handler: store in %s\n", dir);
	return 0;
}

static void check(sl_reply *r)
{
	size_t n = sl_reply_size(r);
	uint8_t *out = malloc(n ? n : 1);
	if (out == NULL) {
		abort();
	}
	sl_reply_pack(r, out);
	Shiplog__Response *x = shiplog__response__unpack(NULL, n, out);
	if (x == NULL || !x->has_status) {
		abort(); /* the server must always send a decodable Response */
	}
	if (x->status < 0 && x->error == NULL) {
		abort(); /* every error carries a message */
	}
	shiplog__response__free_unpacked(x, NULL);
	free(out);
	sl_reply_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	sl_reply r;
	int op = sl_handle(&node, data, size, &r);
	if (op < 0 || op >= SL_OP_COUNT) {
		abort();
	}
	check(&r);
	uint64_t sync_seq = 0;
	op = sl_handle_inline(&node, data, size, &r, &sync_seq);
	if (op >= SL_OP_COUNT) {
		abort();
	}
	if (op >= 0) {
		check(&r); /* the same request a second time: a second write */
	}
	sl_handle_reject(data, size, SL_ESHUTDOWN, "shutting down", &r);
	check(&r);
	return 0;
}
