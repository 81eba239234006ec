/*
 * cli_repl.c — the `shiplog` prompt: what runs when no command is given.
 *
 * On a terminal it uses libedit (through its readline-compatible API): line
 * editing, history (kept in ~/.shiplog_history between sessions) and tab
 * completion of command names.  When stdin is not a terminal it reads one
 * command per line without prompting, so a file of commands can be piped in.
 * Either way a line is split by cli_split() — the same quoting rules as
 * redis-cli: "a b" with C escapes, 'a b' literal — and run by cli_command().
 * A failing command prints its error and the prompt goes on.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <editline/readline.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HISTORY_MAX 1000

/* ---- splitting a line into arguments ----------------------------------- */

typedef struct buf {
	char *p;
	size_t n, cap;
} buf;

static int buf_put(buf *b, char ch)
{
	if (b->n + 1 >= b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 64;
		char *p = realloc(b->p, cap);
		if (!p) {
			return -1;
		}
		b->p = p;
		b->cap = cap;
	}
	b->p[b->n++] = ch;
	b->p[b->n] = 0;
	return 0;
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9') {
		return ch - '0';
	}
	if (ch >= 'a' && ch <= 'f') {
		return ch - 'a' + 10;
	}
	if (ch >= 'A' && ch <= 'F') {
		return ch - 'A' + 10;
	}
	return -1;
}

static int args_push(cli_args *a, buf *b)
{
	char **v = realloc(a->v, (size_t)(a->n + 1) * sizeof *v);
	if (!v) {
		return -1;
	}
	a->v = v;
	size_t *len = realloc(a->len, (size_t)(a->n + 1) * sizeof *len);
	if (!len) {
		return -1;
	}
	a->len = len;
	if (!b->p && buf_put(b, 0) == 0) {
		b->n = 0; /* an empty "" argument: a valid, empty string */
	}
	if (!b->p) {
		return -1;
	}
	a->v[a->n] = b->p;
	a->len[a->n] = b->n;
	a->n++;
	*b = (buf){0};
	return 0;
}

void cli_args_free(cli_args *a)
{
	for (int i = 0; i < a->n; i++) {
		free(a->v[i]);
	}
	free(a->v);
	free(a->len);
	*a = (cli_args){0};
}

int cli_split(const char *line, cli_args *out, const char **err)
{
	cli_args a = {0};
	buf b = {0};
	const char *s = line;
	*err = NULL;
	for (;;) {
		while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') {
			s++;
		}
		if (!*s) {
			break;
		}
		/* One argument: a run of bare, "double" and 'single' quoted parts
		 * ("a"'b'c is the single argument abc). */
		int started = 0;
		while (*s && *s != ' ' && *s != '\t' && *s != '\n' && *s != '\r') {
			started = 1;
			if (*s == '"') {
				for (s++; *s != '"'; s++) {
					char ch = *s;
					if (!ch) {
						*err = "unterminated \"quote\"";
						goto fail;
					}
					if (ch == '\\') {
						s++;
						switch (*s) {
						case 'n':
							ch = '\n';
							break;
						case 'r':
							ch = '\r';
							break;
						case 't':
							ch = '\t';
							break;
						case '0':
							ch = 0;
							break;
						case 'x':
							if (hexval(s[1]) < 0 || hexval(s[2]) < 0) {
								*err = "\\x needs two hex digits";
								goto fail;
							}
							ch = (char)(hexval(s[1]) * 16 +
							            hexval(s[2]));
							s += 2;
							break;
						case '\0':
							*err = "unterminated \"quote\"";
							goto fail;
						default:
							ch = *s; /* \" \\ and any other: the char */
						}
					}
					if (buf_put(&b, ch)) {
						goto nomem;
					}
				}
				s++;
			} else if (*s == '\'') {
				for (s++; *s != '\''; s++) {
					if (!*s) {
						*err = "unterminated 'quote'";
						goto fail;
					}
					if (*s == '\\' && (s[1] == '\'' || s[1] == '\\')) {
						s++;
					}
					if (buf_put(&b, *s)) {
						goto nomem;
					}
				}
				s++;
			} else {
				if (buf_put(&b, *s)) {
					goto nomem;
				}
				s++;
			}
		}
		if (started && args_push(&a, &b)) {
			goto nomem;
		}
	}
	*out = a;
	return 0;
nomem:
	*err = "out of memory";
fail:
	free(b.p);
	cli_args_free(&a);
	return -1;
}

/* ---- completion --------------------------------------------------------- */

static char *command_generator(const char *text, int state)
{
	static size_t i, len;
	if (!state) {
		i = 0;
		len = strlen(text);
	}
	while (cli_command_names[i]) {
		const char *name = cli_command_names[i++];
		if (!strncmp(name, text, len)) {
			return strdup(name);
		}
	}
	return NULL;
}

static char **complete(const char *text, int start, int end)
{
	(void)end;
	rl_attempted_completion_over = 1; /* never fall back to file names */
	/* Only the first word is a command name. */
	for (int i = 0; i < start; i++) {
		if (rl_line_buffer[i] != ' ' && rl_line_buffer[i] != '\t') {
			return NULL;
		}
	}
	return rl_completion_matches(text, command_generator);
}

/* ---- the loop ----------------------------------------------------------- */

/* Runs one line; returns 1 when it asks to leave. */
static int run_line(cli *c, const char *line, int *status)
{
	cli_args a;
	const char *err;
	if (cli_split(line, &a, &err)) {
		cli_line_error(c, "%s", err);
		*status = CLI_ERROR;
		return 0;
	}
	int leave = 0;
	if (a.n > 0) {
		if (!strcmp(a.v[0], "quit") || !strcmp(a.v[0], "exit")) {
			leave = 1;
		} else {
			*status = cli_command(c, &a);
		}
	}
	cli_args_free(&a);
	return leave;
}

static char *history_path(void)
{
	const char *home = getenv("HOME");
	char *p = NULL;
	if (home && *home && asprintf(&p, "%s/.shiplog_history", home) < 0) {
		p = NULL;
	}
	return p;
}

int cli_repl(cli *c)
{
	c->interactive = 1;
	int status = CLI_OK;
	if (!isatty(STDIN_FILENO)) {
		char *line = NULL;
		size_t cap = 0;
		ssize_t len;
		unsigned long no = 0;
		while ((len = getline(&line, &cap, stdin)) >= 0) {
			no++;
			/* A raw NUL would end the line early as a C string: the
			 * rest of the value, or arguments after it, silently gone. */
			if (memchr(line, '\0', (size_t)len) != NULL) {
				cli_line_error(
				    c,
				    "line %lu: a NUL byte in the line; not run "
				    "(write it as \\0 inside double quotes, or use put KEY -)",
				    no);
				status = CLI_ERROR;
				continue;
			}
			if (run_line(c, line, &status)) {
				break;
			}
		}
		free(line);
		return status;
	}

	rl_readline_name = "shiplog";
	rl_attempted_completion_function = complete;
	char *hist = history_path();
	using_history();
	if (hist) {
		read_history(hist);
	}
	const char *host = strstr(c->url, "://");
	char prompt[256];
	snprintf(prompt, sizeof prompt, "%s> ", host ? host + 3 : c->url);
	char *line;
	while ((line = readline(prompt)) != NULL) {
		if (line[strspn(line, " \t")]) {
			add_history(line);
		}
		int leave = run_line(c, line, &status);
		free(line);
		if (leave) {
			break;
		}
	}
	if (!line) {
		putchar('\n'); /* EOF (Ctrl-D) leaves the cursor after the prompt */
	}
	if (hist) {
		write_history(hist);
		history_truncate_file(hist, HISTORY_MAX);
		free(hist);
	}
	return CLI_OK;
}
