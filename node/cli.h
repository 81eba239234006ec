/*
 * cli.h — what the `shiplog` CLI's two files share: cli.c (options, commands,
 * output) and cli_repl.c (the interactive prompt).  Not a public API.
 */
#ifndef SL_CLI_H
#define SL_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "client.h"

/* Exit statuses (and what one command returns). */
enum { CLI_OK = 0, CLI_NOTFOUND = 1, CLI_ERROR = 2 };

/* State for one invocation: the global options and the (lazily opened)
 * connection. */
typedef struct cli {
	const char *url;
	int json;
	int timeout_ms;  /* per request */
	int timeout_set; /* --timeout given: compact then uses it too */
	uint32_t acks;   /* --acks, 0 = none */
	uint64_t min_seq;
	int interactive; /* running inside the prompt: `put K -` refused, errors go on */
	sl_client *client;
} cli;

/* One command's arguments: n strings of the given lengths (binary-safe, each
 * also NUL-terminated), borrowed for the duration of the call. */
typedef struct cli_args {
	int n;
	char **v;
	size_t *len;
} cli_args;

/* A piped line refused before it became a command: the message on stderr
 * ("shiplog: " before it), and with --json an {"error": ...} object too. */
void cli_line_error(cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Runs one command (a.v[0] is its name) and returns CLI_OK, CLI_NOTFOUND or
 * CLI_ERROR; output on stdout, messages on stderr. */
int cli_command(cli *c, const cli_args *a);

/* The command names, NULL-terminated, for tab completion. */
extern const char *const cli_command_names[];

/* The command reference (`help`). */
void cli_help_commands(FILE *f);

/* The interactive prompt (libedit on a terminal, plain lines otherwise).
 * Returns the exit status: CLI_OK, or the last command's status when stdin
 * is not a terminal (so `echo 'get k' | shiplog` scripts still see it). */
int cli_repl(cli *c);

/* Splits line into arguments: whitespace separates; "..." understands the
 * escapes \" \\ \n \r \t \0 \xHH; '...' is literal except \' and \\.
 * On success returns 0 and fills *out (free with cli_args_free); on an
 * unterminated quote or a bad escape returns -1 and points *err at a static
 * message. */
int cli_split(const char *line, cli_args *out, const char **err);
void cli_args_free(cli_args *a);

#endif
