#!/usr/bin/env bash
# test_cli.sh BUILD_DIR — the `shiplog` CLI against a real shiplogd.
#
# Starts BUILD_DIR/shiplogd on a free 127.0.0.1 port in a temporary directory,
# runs every command (plain and --json, exit statuses, binary round trips,
# TTL, the prompt through a pipe and through a pty) and stops the server by
# its pid on exit.  Each check prints "ok" or "FAIL"; the script exits 1 if
# any failed.
set -u
B=$(cd "${1:-$(dirname "$0")/../../build}" && pwd)
CLI=$B/shiplog
D=$B/test-tmp/test_cli.$$
mkdir -p "$D"
SRV_PID=
cleanup() {
	if [ -n "$SRV_PID" ]; then
		kill "$SRV_PID" 2>/dev/null
		wait "$SRV_PID" 2>/dev/null
	fi
	rm -rf "$D"
}
trap cleanup EXIT

fails=0 checks=0
ok() { checks=$((checks + 1)); echo "ok   $1"; }
bad() { checks=$((checks + 1)); fails=$((fails + 1)); echo "FAIL $1"; }

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# run ARGS... : runs the CLI, leaving stdout in $D/out, stderr in $D/err and
# the exit status in $rc.
run() {
	"$CLI" -a "$URL" "$@" >"$D/out" 2>"$D/err"
	rc=$?
}

# expect NAME STATUS STDOUT ARGS... : exit status and exact stdout.
expect() {
	local name=$1 want_rc=$2 want_out=$3
	shift 3
	run "$@"
	local got
	got=$(cat "$D/out"; echo x)
	got=${got%x}
	if [ "$rc" = "$want_rc" ] && [ "$got" = "$want_out" ]; then
		ok "$name"
	else
		bad "$name: status $rc (want $want_rc), stdout '$got' (want '$want_out'), stderr: $(cat "$D/err")"
	fi
}

# expect_rc NAME STATUS ARGS...
expect_rc() {
	local name=$1 want_rc=$2
	shift 2
	run "$@"
	if [ "$rc" = "$want_rc" ]; then ok "$name"; else bad "$name: status $rc (want $want_rc), stderr: $(cat "$D/err")"; fi
}

# json NAME PYTHON_EXPR : evaluates the expression with j = json of $D/out.
json() {
	if python3 -c '
import json, sys, base64
j = json.loads(open(sys.argv[1]).read())
if not ('"$2"'):
    print("  got:", j); sys.exit(1)
' "$D/out"; then ok "$1"; else bad "$1: $(cat "$D/out")"; fi
}

# contains NAME FILE TEXT
contains() {
	if grep -qF -- "$3" "$2"; then ok "$1"; else bad "$1: '$3' not in: $(cat "$2")"; fi
}

# ---- things that need no server ---------------------------------------------
URL=tcp://127.0.0.1:$(free_port) # nobody listens here yet

expect_rc "--help exits 0" 0 --help
contains "--help shows the usage line" "$D/out" "usage: shiplog [-a URL] [--json] [--timeout MS]"
contains "--help documents base64 in JSON" "$D/out" "value_base64"
for c in get put del mget scan stats compact ping help; do
	grep -qE "^  $c( |$)" "$D/out" || { bad "--help lists $c"; continue; }
	ok "--help lists $c"
done
expect_rc "help command exits 0" 0 help
contains "help lists scan" "$D/out" "scan [PREFIX] [--limit N]"
# under --json, help is one JSON object too (it was the plain text)
run --json help
if [ "$rc" = 0 ] && [ "$(wc -l <"$D/out")" = 1 ] && python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
names = [c["name"] for c in j["commands"]]
assert {"get", "put", "scan", "wait", "help", "quit"} <= set(names), names
assert all(c["usage"] and c["what"] for c in j["commands"]), j
' "$D/out"; then ok "--json help: one JSON object"; else bad "--json help: status $rc, $(cat "$D/out" "$D/err")"; fi
expect_rc "unknown command: 2" 2 frobnicate
contains "unknown command named" "$D/err" "frobnicate"
expect_rc "get without key: 2" 2 get
expect_rc "put without value: 2" 2 put k
expect_rc "get with two keys: 2" 2 get a b
expect_rc "bad --timeout: 2" 2 --timeout abc ping
expect_rc "unknown global option: 2" 2 --bogus ping
expect_rc "scan --limit without number: 2" 2 scan --limit
expect_rc "scan --limit 0: 2" 2 scan --limit 0
contains "scan --limit 0: says why" "$D/err" "--limit must be at least 1"
expect_rc "put --ttl not a number: 2" 2 put --ttl soon k v

# No server: exit 2 and the message names the address.
run --timeout 500 ping
if [ "$rc" = 2 ] && grep -qF "$URL" "$D/err"; then ok "no server: 2, names $URL"; else bad "no server: status $rc, stderr: $(cat "$D/err")"; fi

# why a connection failed, not only that it did ("invalid argument" for a
# name that does not resolve, "connection failed or lost" for port 99999)
run -a 127.0.0.1:1 --timeout 500 ping
if [ "$rc" = 2 ] && grep -q "Connection refused" "$D/err"; then ok "refused: says so"; else bad "refused: status $rc, $(cat "$D/err")"; fi
# an ipc:// path nobody listens on: nng's reason, not "connection failed or lost"
"$CLI" -a "ipc://$D/no-such-socket" --timeout 1000 ping >"$D/out" 2>"$D/err"
rc=$?
if [ "$rc" = 2 ] && grep -q "cannot connect to ipc://$D/no-such-socket: Connection refused" "$D/err"; then ok "ipc refused: says so"; else bad "ipc refused: status $rc, $(cat "$D/err")"; fi
run -a tcp://no-such-host.invalid:7420 --timeout 500 ping
if [ "$rc" = 2 ] && grep -q "cannot resolve 'no-such-host.invalid'" "$D/err"; then ok "unresolvable host: says so"; else bad "unresolvable host: status $rc, $(cat "$D/err")"; fi
run -a 127.0.0.1:99999 --timeout 500 ping
if [ "$rc" = 2 ] && grep -q "port 99999 is not in 1..65535" "$D/err"; then ok "port out of range: says so"; else bad "port 99999: status $rc, $(cat "$D/err")"; fi

run --timeout abc ping
if [ "$rc" = 2 ] && [ "$(wc -l <"$D/err")" = 1 ] && grep -q "bad value for --timeout: 'abc'" "$D/err"; then
	ok "--timeout abc: one message, 2"
else
	bad "--timeout abc: status $rc, stderr $(cat "$D/err")"
fi

# ---- the server -----------------------------------------------------------
start_server() {
	local i
	for i in 1 2 3 4 5; do
		PORT=$(free_port)
		URL=tcp://127.0.0.1:$PORT
		# its own replication port, not the default 7520 another test (or
		# a cluster on this machine) may hold
		"$B/shiplogd" --dir "$D/data" --listen "$URL" --repl-listen "tcp://127.0.0.1:$(free_port)" \
			--sync everysec --pidfile "$D/shiplogd.pid" \
			2>>"$D/shiplogd.log" &
		SRV_PID=$!
		for _ in $(seq 100); do
			if "$CLI" -a "$URL" --timeout 200 ping >/dev/null 2>&1; then
				return 0
			fi
			kill -0 "$SRV_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill "$SRV_PID" 2>/dev/null
		wait "$SRV_PID" 2>/dev/null
		SRV_PID=
	done
	echo "cannot start shiplogd; its log:"
	cat "$D/shiplogd.log"
	exit 1
}
start_server
echo "# shiplogd pid $SRV_PID on $URL"
if [ "$(cat "$D/shiplogd.pid" 2>/dev/null)" = "$SRV_PID" ]; then ok "pidfile holds the server's pid"; else bad "pidfile: '$(cat "$D/shiplogd.pid" 2>/dev/null)' vs $SRV_PID"; fi

# ping
expect "ping" 0 $'PONG\n' ping
run --json ping
json "ping --json" 'j["pong"] is True and isinstance(j["latency_us"], int)'

# put / get / del
run put k1 hello
if [ "$rc" = 0 ] && grep -qE '^OK \(seq [0-9]+\)$' "$D/out"; then ok "put: OK (seq N)"; else bad "put: $rc $(cat "$D/out" "$D/err")"; fi
expect "get: exact bytes, no newline when stdout is not a tty" 0 "hello" get k1
expect "get missing: 1, nothing on stdout" 1 "" get nosuchkey
run --json put k2 world
json "put --json: {seq}" 'isinstance(j["seq"], int) and j["seq"] > 0 and list(j) == ["seq"]'
seq1=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seq"])' "$D/out")
run --json put k2 world2
json "put --json: seq grows" "j['seq'] > $seq1"
run --json get k2
json "get --json: key, value, seq" 'j["key"] == "k2" and j["value"] == "world2" and j["seq"] > '"$seq1"
run --json get nosuchkey
if [ "$rc" = 1 ]; then ok "get --json missing: 1"; else bad "get --json missing: status $rc"; fi
json "get --json missing: value null" 'j["key"] == "nosuchkey" and j["value"] is None'
run del k1
if [ "$rc" = 0 ] && grep -qE '^OK \(seq [0-9]+\)$' "$D/out"; then ok "del: OK (seq N)"; else bad "del: $rc $(cat "$D/out" "$D/err")"; fi
expect_rc "get after del: 1" 1 get k1
expect_rc "del again: 1" 1 del k1
run --json del k2
json "del --json: {seq}" 'isinstance(j["seq"], int) and j["seq"] > '"$seq1"
run --json del k2
if [ "$rc" = 1 ]; then ok "del --json missing: 1"; else bad "del --json missing: status $rc"; fi
json "del --json missing: seq null" 'j["seq"] is None'
expect_rc "value that starts with dashes after --" 0 put -- dash --x--
expect "... reads back" 0 "--x--" get dash

# binary values through stdin and stdout
head -c 300000 /dev/urandom >"$D/bin"
printf 'a\0b\nc\n\n' >>"$D/bin"
"$CLI" -a "$URL" put binkey - <"$D/bin" >/dev/null
rc=$?
"$CLI" -a "$URL" get binkey >"$D/bin.out"
if [ "$rc" = 0 ] && cmp -s "$D/bin" "$D/bin.out"; then ok "binary value round-trips (put -, get >)"; else bad "binary round trip (put status $rc): $(cmp "$D/bin" "$D/bin.out" 2>&1)"; fi
printf 'x\377y' >"$D/small"
"$CLI" -a "$URL" put smallbin - <"$D/small" >/dev/null
run --json get smallbin
json "get --json binary: value_base64" '"value" not in j and base64.b64decode(j["value_base64"]) == b"x\xffy"'
"$CLI" -a "$URL" put nul - < <(printf 'a\0b') >/dev/null
run --json get nul
json "get --json: NUL is valid UTF-8, stays a string" 'j["value"] == "a\0b"'
"$CLI" -a "$URL" put empty - </dev/null >/dev/null
"$CLI" -a "$URL" get empty >"$D/empty.out"
rc=$?
if [ "$rc" = 0 ] && [ ! -s "$D/empty.out" ]; then ok "empty value: found, 0 bytes"; else bad "empty value: status $rc, $(wc -c <"$D/empty.out") bytes"; fi
run --json get empty
json "get --json empty value" 'j["value"] == ""'
run put utf8 "héllo wörld ✓"
run --json get utf8
json "get --json UTF-8 stays a string" 'j["value"] == "héllo wörld ✓"'
"$CLI" -a "$URL" get binkey >/dev/full 2>"$D/err"
rc=$?
if [ "$rc" = 2 ]; then ok "stdout write error: 2"; else bad "stdout write error: status $rc"; fi

# mget
"$CLI" -a "$URL" put m1 one >/dev/null
"$CLI" -a "$URL" put m2 $'two\nlines' >/dev/null
expect "mget: one line per key, escaped" 0 $'one\ntwo\\nlines\n' mget m1 m2
expect "mget with a missing key: 1, (nil)" 1 $'one\n(nil)\ntwo\\nlines\n' mget m1 nosuchkey m2
# a key the server refuses (empty) is an error (2, named on stderr), not a miss
expect "mget with an empty key: 2, (error)" 2 $'one\n(error)\n(nil)\n' mget m1 '' nosuchkey
if grep -q 'mget: key 2 (): invalid argument' "$D/err"; then ok "mget names the refused key"; else bad "mget error stderr: $(cat "$D/err")"; fi
run --json mget m1 '' nosuchkey
json "mget --json with an error" 'j["found"] == 1 and j["missing"] == 1 and j["errors"] == 1 and j["items"][1]["error"] == "invalid argument"'
run --json mget m1 nosuchkey smallbin
json "mget --json" 'j["found"] == 2 and j["missing"] == 1 and j["items"][0] == {"key": "m1", "value": "one", "seq": j["items"][0]["seq"]} and j["items"][1]["value"] is None and base64.b64decode(j["items"][2]["value_base64"]) == b"x\xffy"'

# scan
for k in s:3 s:1 s:2 t:1; do "$CLI" -a "$URL" put "$k" "v$k" >/dev/null; done
expect "scan PREFIX: keys in order" 0 $'s:1\ns:2\ns:3\n' scan s:
expect "scan --limit" 0 $'s:1\ns:2\n' scan s: --limit 2
expect "scan --limit before prefix" 0 $'s:1\n' scan --limit 1 s:
expect "scan --values" 0 $'s:1\tvs:1\ns:2\tvs:2\ns:3\tvs:3\n' scan --values s:
expect "scan no match" 0 "" scan zzz
run --json scan s: --values
json "scan --json" 'j["count"] == 3 and [e["key"] for e in j["items"]] == ["s:1","s:2","s:3"] and j["items"][2]["value"] == "vs:3"'
run scan
if [ "$rc" = 0 ] && grep -qx 't:1' "$D/out" && grep -qx 'm1' "$D/out"; then ok "scan without prefix lists every key"; else bad "scan all: $rc $(cat "$D/err")"; fi

# many keys through the prompt's pipe mode, then a scan across pages
for i in $(seq -w 1 2500); do echo "put many:$i v$i"; done | "$CLI" -a "$URL" >/dev/null 2>"$D/err"
rc=$?
if [ "$rc" = 0 ]; then ok "2500 puts through a pipe: 0"; else bad "2500 puts through a pipe: $rc $(head -3 "$D/err")"; fi
run scan many:
if [ "$rc" = 0 ] && [ "$(wc -l <"$D/out")" = 2500 ] && [ "$(head -1 "$D/out")" = many:0001 ] && [ "$(tail -1 "$D/out")" = many:2500 ] && sort -c "$D/out"; then ok "scan across pages: 2500 keys in order"; else bad "scan across pages: status $rc, $(wc -l <"$D/out") lines"; fi
run scan many: --limit 1500
if [ "$(wc -l <"$D/out")" = 1500 ] && [ "$(tail -1 "$D/out")" = many:1500 ]; then ok "scan --limit across pages"; else bad "scan --limit 1500: $(wc -l <"$D/out") lines"; fi
run --json scan many:
json "scan --json across pages" 'j["count"] == 2500 and len(j["items"]) == 2500'

# stats, compact
run stats
if [ "$rc" = 0 ] && grep -qE '^keys: [0-9]+$' "$D/out"; then ok "stats: name: value lines"; else bad "stats: $rc $(cat "$D/out" "$D/err")"; fi
run --json stats
json "stats --json" 'isinstance(j["keys"], int) and j["keys"] >= 2500 and isinstance(j["last_seq"], int)'
run compact
if [ "$rc" = 0 ] && grep -qE '^OK: reclaimed [0-9]+ bytes, segments [0-9]+ -> [0-9]+' "$D/out"; then ok "compact says what it did"; else bad "compact: $rc $(cat "$D/out" "$D/err")"; fi
run --json compact
json "compact --json" 'j["ok"] is True and isinstance(j["reclaimed_bytes"], int) and j["segments_after"] >= 1 and isinstance(j["dead_bytes_left"], int)'
expect "data intact after compact" 0 "v0042" get many:0042

# TTL
expect_rc "put --ttl" 0 put --ttl 4000 ttlkey short-lived
expect "ttl key readable at once" 0 "short-lived" get ttlkey
sleep 4.5
expect_rc "ttl key gone after its TTL: 1" 1 get ttlkey

# limits and server-side errors
run put "$(head -c 70000 /dev/zero | tr '\0' k)" v
if [ "$rc" = 2 ] && [ -s "$D/err" ]; then ok "key over the limit: 2 with a message"; else bad "oversized key: status $rc"; fi
expect_rc "empty key: 2" 2 put "" v
head -c $((16 * 1024 * 1024 + 1)) /dev/zero | "$CLI" -a "$URL" put huge - >/dev/null 2>"$D/err"
rc=$?
if [ "$rc" = 2 ] && grep -q "limit is" "$D/err"; then ok "value over the server's limit: 2, names the limit"; else bad "oversized value: status $rc, $(cat "$D/err")"; fi
# a value under 1 MiB but over a small limit, with a long key: the message
# passes the server's size limit (its value limit + 1 MiB) only without the
# key; the CLI checked the value alone, and the connection was dropped
SMALL_URL=tcp://127.0.0.1:$(free_port)
"$B/shiplogd" --dir "$D/smalldata" --listen "$SMALL_URL" --repl-listen none --max-value-bytes 1k 2>>"$D/shiplogd.log" &
SMALL_PID=$!
for _ in $(seq 100); do "$CLI" -a "$SMALL_URL" --timeout 200 ping >/dev/null 2>&1 && break; sleep 0.1; done
head -c 1048576 /dev/zero | "$CLI" -a "$SMALL_URL" put "$(head -c 2000 /dev/zero | tr '\0' k)" - >/dev/null 2>"$D/err"
rc=$?
if [ "$rc" = 2 ] && grep -q "the server's limit is 1024" "$D/err"; then ok "1 MiB value + long key over a 1k limit: names the limit"; else bad "1 MiB value + long key: status $rc, $(cat "$D/err"; tail -5 "$D/shiplogd.log")"; fi
# promote of a primary: OK, and says nothing changed
run -a "$SMALL_URL" promote
if [ "$rc" = 0 ] && grep -q "^OK (already the primary, nothing changed; history [0-9a-f]*)" "$D/out"; then ok "promote of a primary says nothing changed"; else bad "promote of a primary: status $rc, $(cat "$D/out" "$D/err")"; fi
run -a "$SMALL_URL" --json promote
if [ "$rc" = 0 ] && python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["ok"] and j["note"] == "already the primary, nothing changed", j' "$D/out"; then ok "promote --json of a primary: note"; else bad "promote --json: $(cat "$D/out")"; fi
# --min-seq holds for digest too (a read)
run -a "$SMALL_URL" --min-seq 999999 --timeout 1000 digest
if [ "$rc" = 2 ] && grep -q "applied" "$D/err"; then ok "--min-seq beyond: digest refused too"; else bad "digest --min-seq: status $rc, $(cat "$D/out" "$D/err")"; fi
kill "$SMALL_PID"
wait "$SMALL_PID" 2>/dev/null
# a follower started without --repl-listen (a follower's default), whose
# primary is not there: wait is refused at once (nothing follows it), and
# promote says that the new primary serves no fetches; metrics served at
# the path --metrics-listen names
LONE_URL=tcp://127.0.0.1:$(free_port)
MPORT=$(free_port)
"$B/shiplogd" --dir "$D/lonedata" --listen "$LONE_URL" --follow "tcp://127.0.0.1:$(free_port)" \
	--metrics-listen "http://127.0.0.1:$MPORT/custom/path" 2>>"$D/shiplogd.log" &
LONE_PID=$!
for _ in $(seq 100); do "$CLI" -a "$LONE_URL" --timeout 200 ping >/dev/null 2>&1 && break; sleep 0.1; done
t0=$(date +%s%N)
"$CLI" -a "$LONE_URL" wait 1 3000 >"$D/out" 2>"$D/err"
rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
if [ "$rc" = 2 ] && [ "$ms" -lt 2000 ] && grep -q "wait: read-only" "$D/err" && grep -q "replication address is" "$D/err"; then ok "wait on a follower refused at once"; else bad "wait on a follower: status $rc after $ms ms, $(cat "$D/out" "$D/err")"; fi
if python3 -c '
import sys, urllib.request, urllib.error
body = urllib.request.urlopen("http://127.0.0.1:%s/custom/path" % sys.argv[1], timeout=5).read().decode()
assert "shiplog_" in body, body[:200]
try:
    urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5)
    raise SystemExit("/metrics served too")
except urllib.error.HTTPError as e:
    assert e.code == 404, e.code
' "$MPORT"; then ok "--metrics-listen with a path serves that path"; else bad "--metrics-listen with a path: $(tail -3 "$D/shiplogd.log")"; fi
"$CLI" -a "$LONE_URL" promote >"$D/out" 2>"$D/err"
rc=$?
if [ "$rc" = 0 ] && grep -q "^OK (it serves no fetches (started without --repl-listen)" "$D/out"; then ok "promote of a node without --repl-listen says so"; else bad "promote without --repl-listen: status $rc, $(cat "$D/out" "$D/err")"; fi
kill "$LONE_PID"
wait "$LONE_PID" 2>/dev/null
# a value stored under a larger --max-value-bytes than the server's now:
# get refuses it, and a scan page leaves it out (SL_ETOOBIG on its key)
# instead of sending a response over the message limit; the scan goes on
SHRINK_URL=tcp://127.0.0.1:$(free_port)
start_shrink() {
	"$B/shiplogd" --dir "$D/shrinkdata" --listen "$SHRINK_URL" --repl-listen none "$@" 2>>"$D/shiplogd.log" &
	SHRINK_PID=$!
	for _ in $(seq 100); do "$CLI" -a "$SHRINK_URL" --timeout 200 ping >/dev/null 2>&1 && break; sleep 0.1; done
}
start_shrink
"$CLI" -a "$SHRINK_URL" put a 1 >/dev/null
head -c 2000000 /dev/zero | "$CLI" -a "$SHRINK_URL" put big - >/dev/null
"$CLI" -a "$SHRINK_URL" put c 3 >/dev/null
kill "$SHRINK_PID"
wait "$SHRINK_PID" 2>/dev/null
start_shrink --max-value-bytes 1k
run -a "$SHRINK_URL" scan --values
if [ "$rc" = 2 ] && [ "$(tr '\t\n' ':|' <"$D/out")" = "a:1|big:(error)|c:3|" ] && grep -q "scan: key big: " "$D/err"; then
	ok "scan --values past a value over the limit: the others, then 2"
else
	bad "scan --values over the limit: status $rc, stdout $(cat -A "$D/out"), stderr $(cat "$D/err")"
fi
run -a "$SHRINK_URL" --json scan --values
if [ "$rc" = 2 ] && python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
assert j["count"] == 3 and j["errors"] == 1, j
assert [i["key"] for i in j["items"]] == ["a", "big", "c"], j
assert "error" in j["items"][1] and "value" not in j["items"][1], j
assert j["items"][2]["value"] == "3", j' "$D/out"; then
	ok "scan --json --values: an error item for the value over the limit"
else
	bad "scan --json over the limit: status $rc, $(cat "$D/out" "$D/err")"
fi
expect "scan (keys) lists it" 0 "a
big
c
" -a "$SHRINK_URL" scan
# mget: the value over the limit is an error of its own, the others are
# read (the whole mget failed, and printed nothing)
run -a "$SHRINK_URL" mget a big c missing
if [ "$rc" = 2 ] && [ "$(tr '\n' '|' <"$D/out")" = "1|(error)|3|(nil)|" ] && grep -q "mget: key 2 (big): " "$D/err"; then
	ok "mget past a value over the limit: the others, then 2"
else
	bad "mget over the limit: status $rc, stdout $(cat -A "$D/out"), stderr $(cat "$D/err")"
fi
kill "$SHRINK_PID"
wait "$SHRINK_PID" 2>/dev/null
# values that fit one by one but not together: all read (asked again alone)
start_shrink --max-value-bytes 600k
for k in m1 m2 m3 m4; do head -c 500000 /dev/zero | tr '\0' "${k#m}" | "$CLI" -a "$SHRINK_URL" put "$k" - >/dev/null; done
"$CLI" -a "$SHRINK_URL" --json mget m1 m2 m3 m4 a >"$D/out" 2>"$D/err"
rc=$?
if [ "$rc" = 0 ] && python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
assert j["found"] == 5 and j["errors"] == 0, {k: v for k, v in j.items() if k != "items"}
for n, i in zip("1234", j["items"][:4]):
    assert i["value"] == n * 500000, (i["key"], len(i.get("value") or ""))
' "$D/out"; then ok "mget of values over the limit together: all read"; else bad "mget of 4 x 500 KB over a 1.6 MB limit: status $rc, $(head -c 300 "$D/out"; cat "$D/err")"; fi
kill "$SHRINK_PID"
wait "$SHRINK_PID" 2>/dev/null
# --repl-listen none keeps no replication backlog: compaction reclaims the
# overwritten log at once (it held back the last 256 MiB: "reclaimed 0")
rm -rf "$D/shrinkdata"
start_shrink --segment-bytes 1m
for r in 1 2 3 4; do
	for i in $(seq 0 99); do printf 'put k%d %s\n' "$i" "$(head -c 20000 /dev/zero | tr '\0' "$r")"; done
done | "$CLI" -a "$SHRINK_URL" >/dev/null
run -a "$SHRINK_URL" --json compact
if [ "$rc" = 0 ] && python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
assert j["dead_bytes_left"] < 1000000 and j["segments_after"] <= 4, j' "$D/out"; then
	ok "--repl-listen none: no backlog, compaction reclaims the overwritten log"
else
	bad "--repl-listen none, compact: status $rc, $(cat "$D/out" "$D/err")"
fi
expect "after the compaction, the latest value" 0 "$(head -c 20000 /dev/zero | tr '\0' 4)" -a "$SHRINK_URL" get k7
kill "$SHRINK_PID"
wait "$SHRINK_PID" 2>/dev/null
if "$CLI" -a "127.0.0.1:$PORT" ping >/dev/null 2>&1; then ok "-a HOST:PORT means tcp://"; else bad "-a HOST:PORT"; fi
# stdout that cannot be written: the reason is the write's (a big value's
# error used to name isatty's ENOTTY instead)
head -c 3000000 /dev/urandom >"$D/bigval"
"$CLI" -a "$URL" put bigval - <"$D/bigval" >/dev/null 2>&1
"$CLI" -a "$URL" put smallval x >/dev/null 2>&1
for k in bigval smallval; do
	"$CLI" -a "$URL" get "$k" >/dev/full 2>"$D/err"
	rc=$?
	if [ "$rc" = 2 ] && grep -q "writing to stdout: No space left on device" "$D/err"; then
		ok "get $k >/dev/full: 2, says why"
	else
		bad "get $k >/dev/full: status $rc, stderr $(cat "$D/err")"
	fi
done

# replication options: passed through (a server without replication ignores
# --acks and answers a --min-seq it has not reached with an error)
expect_rc "--acks 0 put" 0 --acks 0 put acked v
# a write made with fewer acks than asked (no follower here) still prints its
# JSON object, seq included, for scripts (exit 2 with replication, whose wait
# times out; 0 without)
for cmd in "put ackshort v" "del ackshort"; do
	# shellcheck disable=SC2086
	run --json --acks 1 --timeout 300 $cmd
	if { [ "$rc" = 2 ] || [ "$rc" = 0 ]; } && grep -Eq '^\{"seq":[0-9]+,"acks":0\}$' "$D/out"; then
		ok "--json --acks 1 ${cmd%% *} short of acks: the object with its seq"
	else
		bad "--json --acks 1 ${cmd%% *}: status $rc, stdout '$(cat "$D/out")', stderr $(cat "$D/err")"
	fi
done
expect_rc "--min-seq 1 get" 0 --min-seq 1 get acked
run --min-seq 999999999 --timeout 1000 get acked
if [ "$rc" = 2 ] && [ -s "$D/err" ]; then ok "--min-seq beyond the server: 2"; else bad "--min-seq beyond: status $rc, $(cat "$D/err")"; fi

# ---- the prompt -------------------------------------------------------------
# Pipe mode: one command a line, quoting, errors do not stop it.
printf '%s\n' 'put "a b" "x y"' "put 'c d' 'it''s'" 'put "e\x41\tf" "1\n2"' 'frob' 'get "a b"' | "$CLI" -a "$URL" >"$D/pipe.out" 2>"$D/pipe.err"
expect "double-quoted key with a space" 0 "x y" get "a b"
expect "single quotes, adjacent parts" 0 "its" get "c d"
expect "double-quote escapes" 0 $'1\n2' get $'eA\tf'
contains "prompt goes on after an unknown command" "$D/pipe.out" "x y"
# piped, stdout unwritable: exit 2 and the reason on stderr (it said nothing)
printf '%s\n' 'get pa' | "$CLI" -a "$URL" >/dev/full 2>"$D/full.err"
rc=$?
if [ "$rc" = 2 ] && grep -q "writing to stdout: No space left on device" "$D/full.err"; then ok "pipe mode: stdout full, says so"; else bad "pipe mode, /dev/full: status $rc, $(cat "$D/full.err")"; fi
# piped: one reply a line, gets included (values ran into the next reply)
printf '%s\n' 'put pa 1' 'put pb 2' 'get pa' 'get pb' 'get nosuchkey' 'del nosuchkey' 'ping' | "$CLI" -a "$URL" >"$D/pipe.out" 2>&1
if [ "$(sed -n '3,7p' "$D/pipe.out" | tr '\n' '|')" = "1|2|(nil)|(not found)|PONG|" ]; then
	ok "pipe mode: one reply a line"
else
	bad "pipe mode replies: $(cat -A "$D/pipe.out")"
fi
contains "unknown command reported" "$D/pipe.err" "frob"
# stdout closed before the reply is written: a failed write (2, a message),
# not a death by SIGPIPE (141)
(sleep 0.3; "$CLI" -a "$URL" get pa 2>"$D/err") | true
rc=${PIPESTATUS[0]}
if [ "$rc" = 2 ] && grep -q "Broken pipe" "$D/err"; then ok "closed stdout: 2 with a message"; else bad "closed stdout: status $rc, stderr: $(cat "$D/err")"; fi
printf 'get "a b\n' | "$CLI" -a "$URL" >/dev/null 2>"$D/err"
contains "unterminated quote reported" "$D/err" "unterminated"
printf 'get nosuchkey\n' | "$CLI" -a "$URL" >/dev/null 2>&1
rc=$?
if [ "$rc" = 1 ]; then ok "pipe mode: last command's status"; else bad "pipe mode status: $rc"; fi
printf 'ping\nquit\nput afterquit x\n' | "$CLI" -a "$URL" >"$D/out" 2>&1
expect_rc "quit stops reading" 1 get afterquit
# --json: a failed command prints an error object (it printed nothing)
json_err() { # NAME WANT-IN-ERROR ARGS...
	local name=$1 want=$2
	shift 2
	run "$@"
	if [ "$rc" = 2 ] && python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert sys.argv[2] in j["error"] and len(j) == 1, j' "$D/out" "$want" &&
		[ "$(wc -l <"$D/out")" = 1 ] && grep -qF -- "$want" "$D/err"; then
		ok "--json $name: an error object, and the message on stderr"
	else
		bad "--json $name: status $rc, stdout $(cat "$D/out"), stderr $(cat "$D/err")"
	fi
}
json_err "empty key" "empty key" --json get ""
# a bad global option: an object too, whether --json comes before it or after
json_err "bad --timeout" "bad value for --timeout: 'abc'" --json --timeout abc ping
json_err "bad --timeout, --json after it" "bad value for --timeout: 'abc'" --timeout abc --json ping
json_err "unknown option" "unknown option '--bogus'" --json --bogus ping
json_err "option without its value" "option '--timeout' needs a value" --json --timeout
json_err "an unknown letter in a cluster" "unknown option '-j'" --json -jx ping
json_err "an abbreviated option's bad value" "bad value for --timeout: 'abc'" --time abc --json ping
json_err "-a without a port" "no port" --json -a 127.0.0.1 ping
# --ttl 0 meant "no TTL" on the wire: the key never expired
json_err "put --ttl 0" "--ttl must be at least 1 ms" --json put --ttl 0 ttl0 v
expect_rc "put --ttl 0 stored nothing" 1 get ttl0
json_err "unknown command" "unknown command 'bogus'" --json bogus
json_err "server down" "Connection refused" -a 127.0.0.1:1 --json ping
# a message quoting bytes that are not UTF-8 (it came out as {})
json_err "non-UTF-8 in the message" "unknown command 'bogus" --json "bogus$(printf '\377')"
grep -q "unknown command 'bogus?'" "$D/out" || bad "--json non-UTF-8: the byte not replaced: $(cat "$D/out")"
# piped: one object a line, a line refused before it ran included
printf 'ping\nput j1 a\0b\nbogus\nget "x\n' | "$CLI" -a "$URL" --json >"$D/out" 2>/dev/null
if python3 -c '
import json, sys
ls = open(sys.argv[1]).read().splitlines()
assert len(ls) == 4, ls
js = [json.loads(l) for l in ls]
assert js[0]["pong"] is True, js
assert "NUL byte" in js[1]["error"] and "bogus" in js[2]["error"] and "unterminated" in js[3]["error"], js' "$D/out"; then
	ok "pipe mode --json: one object a line, refused lines included"
else
	bad "pipe mode --json: $(cat "$D/out")"
fi
# a raw NUL in a piped line: refused with the line's number, not cut short
# (it stored "ab" and said OK); the \0 escape in double quotes stores it
printf 'put nul1 ab\0cd\n' | "$CLI" -a "$URL" >/dev/null 2>"$D/err"
rc=$?
if [ "$rc" = 2 ] && grep -q "line 1: a NUL byte in the line; not run" "$D/err"; then
	ok "pipe mode: a raw NUL refused"
else
	bad "pipe mode, raw NUL: status $rc, stderr $(cat "$D/err")"
fi
expect_rc "pipe mode: nothing stored for the NUL line" 1 get nul1
printf 'put nul2 "ab\\0cd"\n' | "$CLI" -a "$URL" >/dev/null 2>&1
"$CLI" -a "$URL" get nul2 >"$D/out"
if [ "$(od -An -c "$D/out" | tr -d ' ')" = 'ab\0cd' ]; then ok "pipe mode: \\0 stores a NUL"; else bad "nul2: $(od -An -c "$D/out")"; fi

# A real terminal (script(1) gives a pty, so libedit runs): "pi<TAB>"
# completes to ping; quoted keys; quit.
if command -v script >/dev/null; then
	{
		sleep 0.5
		printf 'pi\t\r'
		sleep 0.5
		printf "get 'a b'\r"
		sleep 0.5
		printf 'quit\r'
		sleep 0.5
	} | HOME=$D TERM=xterm script -qfec "$CLI -a $URL" /dev/null >"$D/tty" 2>&1
	contains "tty prompt shows the address" "$D/tty" "127.0.0.1:$PORT> "
	contains "tab completes pi to ping (PONG)" "$D/tty" "PONG"
	contains "tty: quoted key read" "$D/tty" "x y"
	script -qfec "$CLI -a $URL get dash" /dev/null </dev/null >"$D/tty.get" 2>&1
	if [ "$(cat "$D/tty.get")" = $'--x--\r' ]; then ok "get on a terminal adds a newline"; else bad "get on a tty: '$(cat -v "$D/tty.get")'"; fi
	if [ -s "$D/.shiplog_history" ] && grep -qF "get\\040'a\\040b'" "$D/.shiplog_history"; then ok "history saved"; else bad "history file: $(cat "$D/.shiplog_history" 2>&1)"; fi
else
	bad "script(1) missing: cannot test the tty prompt"
fi

# ---- shiplog-bench --url (smoke: it runs, its JSON has the fields) -----------
if [ -x "$B/shiplog-bench" ]; then
	for eng_pl in epoll:1 epoll:8 async:1 async:8 threads:1 threads:8; do
		eng=${eng_pl%:*} pl=${eng_pl#*:}
		"$B/shiplog-bench" --url "$URL" -t put,get,ping -c 4 -n 2000 -d 100 -r 500 -P $pl --engine $eng --json >"$D/out" 2>"$D/err"
		rc=$?
		if [ "$rc" = 0 ] && python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [r["benchmark"] for r in rows] == ["put", "get", "ping"], rows
for r in rows:
    assert r["ops_per_sec"] > 0 and 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] and r["requests"] == 2000 and r["errors"] == 0, r
assert rows[1]["hits"] > 0
' "$D/out"; then ok "shiplog-bench --url -P $pl --engine $eng --json"; else bad "shiplog-bench -P $pl --engine $eng: status $rc: $(cat "$D/out" "$D/err")"; fi
	done
	# The epoll engine speaks nng's SP framing itself: tcp:// only, and it
	# refuses a peer that is not an SP REP socket.
	"$B/shiplog-bench" --url "ipc://$D/x.ipc" -t ping -n 10 >/dev/null 2>"$D/err"
	rc=$?
	if [ "$rc" = 2 ] && grep -q "needs a tcp://" "$D/err"; then ok "epoll engine refuses an ipc:// URL"; else bad "epoll engine, ipc://: status $rc: $(cat "$D/err")"; fi
	python3 -c '
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.recv(8); c.sendall(b"-ERR not SP\r\n"); c.close()
' >"$D/fakeport" &
	FAKE=$!
	for _ in $(seq 50); do [ -s "$D/fakeport" ] && break; sleep 0.1; done
	"$B/shiplog-bench" --url "tcp://127.0.0.1:$(cat "$D/fakeport")" -t ping -c 1 -n 10 --timeout 2000 >/dev/null 2>"$D/err"
	rc=$?
	kill "$FAKE" 2>/dev/null; wait "$FAKE" 2>/dev/null
	if [ "$rc" = 2 ] && grep -q "not an SP REP socket" "$D/err"; then ok "epoll engine refuses a peer that is not SP"; else bad "epoll engine, non-SP peer: status $rc: $(cat "$D/err")"; fi
	# A request over the server's size limit: nng closes the connection
	# while the request is still being written (EPIPE, not a SIGPIPE that
	# kills the benchmark); the next test reconnects.
	"$B/shiplog-bench" --url "$URL" -t put,ping -c 2 -n 6 -d 20000000 --timeout 3000 >"$D/out" 2>"$D/err"
	rc=$?
	if [ "$rc" = 1 ] && grep -q "^put.*2 ERRORS" "$D/out" && grep -q "^ping.*(6 ops" "$D/out"; then ok "epoll engine: a connection closed mid-request is an error, not a signal"; else bad "epoll engine, oversized request: status $rc: $(cat "$D/out" "$D/err")"; fi
	# A server that stops answering mid-test: the clients time out, the
	# test reports them failed (exit 1), the next test reconnects.
	"$B/shiplog-bench" --url "$URL" -t put,ping -c 2 -n 50000 --timeout 300 >"$D/out" 2>"$D/err" &
	BP=$!
	sleep 0.2
	kill -STOP "$SRV_PID"
	sleep 0.8
	kill -CONT "$SRV_PID"
	wait "$BP"
	rc=$?
	if [ "$rc" = 1 ] && grep -q "no response within 300 ms" "$D/err" && grep -q "^ping.*(50000 ops" "$D/out"; then ok "epoll engine: timeouts counted, next test reconnects"; else bad "epoll engine, stopped server: status $rc: $(cat "$D/out" "$D/err")"; fi
	# shiplog-bench repl (smoke): its own primary and two followers, the
	# write -> visible probe through either client, both catch-ups.
	for probe in raw lib; do
		"$B/shiplog-bench" repl --dir "$D/rb" --figures lag,catchup --lag-writes 50 --load-clients 4 --catchup-mb 2 --probe $probe --json >"$D/out" 2>"$D/err"
		rc=$?
		if [ "$rc" = 0 ] && [ ! -e "$D/rb" ] && python3 -c '
import json, sys
rows = {r["benchmark"]: r for r in map(json.loads, open(sys.argv[1]))}
assert sorted(rows) == ["repl_catchup", "repl_catchup_live", "repl_visible_idle", "repl_visible_load"], rows
for b in ("repl_visible_idle", "repl_visible_load"):
    r = rows[b]
    assert r["n"] == 50 and r["probe"] == sys.argv[2] and 0 < r["put_rtt_p50_us"] <= r["p50_us"] <= r["p99_us"] <= r["max_us"], r
    assert r["read"] == "poll" and r["gets_per_write"] >= 1 and r["gets_waited"] == 0, r  # the default: as the anchor reads
for b in ("repl_catchup", "repl_catchup_live"):
    r = rows[b]
    assert r["records"] == 13888 and r["bytes"] >= 13888 * 144 and r["resyncs_full"] == 0 and r["MBps"] > 0 and isinstance(r["minor_faults"], int), r
assert rows["repl_catchup_live"]["reconnects"] == 0, rows
assert rows["repl_catchup"]["minor_faults"] > 0, rows  # from exec: a process start faults
' "$D/out" $probe; then ok "shiplog-bench repl --probe $probe --json"; else bad "shiplog-bench repl --probe $probe: status $rc: $(cat "$D/out" "$D/err")"; fi
	done
	# one get carrying the put's seq (read-your-writes), the probe spinning
	"$B/shiplog-bench" repl --dir "$D/rb" --figures lag --lag-writes 50 --load-clients 4 --lag-read park --probe-spin --json >"$D/out" 2>"$D/err"
	rc=$?
	if [ "$rc" = 0 ] && python3 -c '
import json, sys
rows = {r["benchmark"]: r for r in map(json.loads, open(sys.argv[1]))}
assert sorted(rows) == ["repl_visible_idle", "repl_visible_load"], rows
for r in rows.values():
    assert r["n"] == 50 and r["read"] == "park" and r["probe_spin"] is True and r["gets_per_write"] == 1, r
    assert 0 < r["put_rtt_p50_us"] <= r["p50_us"] <= r["p99_us"] <= r["max_us"], r
' "$D/out"; then ok "shiplog-bench repl --lag-read park --probe-spin --json"; else bad "shiplog-bench repl --lag-read park: status $rc: $(cat "$D/out" "$D/err")"; fi
	if "$B/shiplog-bench" repl --dir "$D/rb2" --figures lag --probe nng >/dev/null 2>"$D/err"; then bad "repl --probe nng accepted"; elif grep -q "bad --probe" "$D/err"; then ok "repl --probe nng refused"; else bad "repl --probe nng: $(cat "$D/err")"; fi
	"$B/shiplog-bench" floor -n 200 --dir "$D/floor" --json >"$D/out" 2>"$D/err"
	rc=$?
	if [ "$rc" = 0 ] && [ ! -e "$D/floor" ] && python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [r["benchmark"] for r in rows] == ["floor_nng_rtt", "floor_tcp_rtt", "floor_fdatasync"], rows
assert [r["n"] for r in rows] == [200, 200, 100], rows
for r in rows:
    assert 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"], r
' "$D/out"; then ok "shiplog-bench floor --json (and its file removed)"; else bad "shiplog-bench floor: status $rc: $(cat "$D/out" "$D/err")"; fi
	if "$B/shiplog-bench" floor -n 0 >/dev/null 2>"$D/err"; then bad "floor -n 0 accepted"; elif grep -q "bad -n" "$D/err"; then ok "floor -n 0 refused"; else bad "floor -n 0: $(cat "$D/err")"; fi
fi

# A server that accepts and never answers (stopped): --timeout holds (nng's
# own dial waits 10 s for the handshake whatever the timeout).
kill -STOP "$SRV_PID"
t0=$(date +%s%N)
run --timeout 300 ping
t1=$(date +%s%N)
kill -CONT "$SRV_PID"
ms=$(((t1 - t0) / 1000000))
if [ "$rc" = 2 ] && [ "$ms" -lt 3000 ] && grep -q "did not answer within 300 ms" "$D/err"; then
	ok "a hung server: 2 after the --timeout (${ms} ms), says so"
else
	bad "a hung server: status $rc after $ms ms: $(cat "$D/err")"
fi
# Something that is not a shiplog node on the port: said at once.
python3 -c '
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.recv(8); c.sendall(b"HTTP/1.1 400 Bad\r\n\r\n")
try:
    c.recv(100)
except OSError:
    pass  # the client resets the connection
c.close()
' >"$D/fakeport2" &
FAKE=$!
for _ in $(seq 50); do [ -s "$D/fakeport2" ] && break; sleep 0.1; done
run -a "127.0.0.1:$(cat "$D/fakeport2")" --timeout 3000 ping
kill "$FAKE" 2>/dev/null
wait "$FAKE" 2>/dev/null
if [ "$rc" = 2 ] && grep -q "not a shiplog node" "$D/err"; then ok "a peer that is not shiplog: says so"; else bad "a non-shiplog peer: status $rc: $(cat "$D/err")"; fi

# ---- server gone --------------------------------------------------------------
# A prompt fed through a pipe whose server goes away: each later command
# fails at once, "Connection refused", not after the whole timeout.
mkfifo "$D/fifo"
"$CLI" -a "$URL" --timeout 5000 <"$D/fifo" >"$D/pipe.out" 2>"$D/pipe.err" &
CP=$!
exec 7>"$D/fifo"
echo ping >&7
for _ in $(seq 50); do grep -q PONG "$D/pipe.out" && break; sleep 0.1; done
kill "$SRV_PID"
wait "$SRV_PID" 2>/dev/null
SRV_PID=
t0=$(date +%s%N)
echo ping >&7
echo ping >&7
exec 7>&-
wait "$CP"
rc=$?
t1=$(date +%s%N)
ms=$(((t1 - t0) / 1000000))
if [ "$rc" = 2 ] && [ "$ms" -lt 2500 ] && [ "$(grep -c PONG "$D/pipe.out")" = 1 ] &&
	[ "$(grep -c "Connection refused" "$D/pipe.err")" = 2 ]; then
	ok "pipe mode, server gone: each command refused at once (${ms} ms for two)"
else
	bad "pipe mode, server gone: status $rc after $ms ms: $(cat "$D/pipe.out" "$D/pipe.err")"
fi
run --timeout 500 get k1
if [ "$rc" = 2 ] && grep -qF "$URL" "$D/err"; then ok "server stopped: 2, names $URL"; else bad "server stopped: status $rc, stderr: $(cat "$D/err")"; fi

echo "# $checks checks, $fails failed"
[ "$fails" = 0 ]
