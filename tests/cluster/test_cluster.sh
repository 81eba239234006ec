#!/usr/bin/env bash
# End to end with the cluster scripts on 127.0.0.1: up, writes, reads on every
# follower, status --json, kill the primary during --acks 1 writes, failover,
# no acknowledged write lost, old primary back as a follower, down.
#   tests/cluster/test_cluster.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
# shellcheck source=tests/cluster/common.sh
. "$(dirname "$0")/common.sh"

base=$(free_base 3)
ports=()
for i in 0 1 2; do ports+=($((base + i)) $((base + 100 + i)) $((base + 200 + i))); done

say "up (3 nodes, base port $base)"
cl up -n 3 --base-port "$base" --no-build --bin "$BLD"
remember_pids
jq_py "len(j['nodes'])" | grep -qx 3 || fail "status: not 3 nodes"

say "up again: idempotent"
before=$(jq_py "[n['pid'] for n in j['nodes']]")
out=$(cl up --no-build --bin "$BLD")
grep -q "already running" <<<"$out" || fail "second up did not say the cluster runs: $out"
[ "$(jq_py "[n['pid'] for n in j['nodes']]")" = "$before" ] || fail "second up changed pids"

n1=$(node_url n1) n2=$(node_url n2) n3=$(node_url n3)
say "writes through the CLI on the primary"
last=0
for i in $(seq 1 100); do
	out=$("$CLI" -a "$n1" put "k$i" "v$i")
	last=$(sed -n 's/^OK (seq \([0-9]*\).*/\1/p' <<<"$out")
done
"$CLI" -a "$n1" --acks 2 put acked2 yes | grep -q "acks 2" || fail "--acks 2 not acknowledged by 2"
last=$((last + 1))
"$CLI" -a "$n2" put nope x 2>/dev/null && fail "a follower accepted a write"

say "reads on every follower (read-your-writes with --min-seq $last)"
for u in "$n2" "$n3"; do
	[ "$("$CLI" -a "$u" --min-seq "$last" get k100)" = v100 ] || fail "k100 on $u"
	[ "$("$CLI" -a "$u" get acked2)" = yes ] || fail "acked2 on $u"
	[ "$("$CLI" -a "$u" scan k | wc -l)" = 100 ] || fail "scan on $u"
done

say "failover --to the primary is refused, nothing changed"
if cl failover --to n1 >"$T/fo.out" 2>&1; then fail "failover --to n1 (the primary) succeeded: $(cat "$T/fo.out")"; fi
grep -q "n1 is the primary already" "$T/fo.out" || fail "failover --to the primary: $(cat "$T/fo.out")"
[ "$(primary_name)" = n1 ] || fail "failover --to n1 changed the primary"

say "status --json"
status_json | python3 -c '
import json, sys
j = json.load(sys.stdin)
ns = j["nodes"]
assert [n["name"] for n in ns] == ["n1", "n2", "n3"], ns
assert [n["role"] for n in ns] == ["primary", "follower", "follower"], ns
for n in ns:
    assert n["alive"] is True and isinstance(n["pid"], int), n
    for k in ("url", "repl_url", "metrics_url"):
        assert isinstance(n[k], str) and "://" in n[k], n
    assert n["applied_seq"] == 101 and n["lag"] == 0, n
print("  status JSON ok:", ", ".join("%s %s seq %d" % (n["name"], n["role"], n["applied_seq"]) for n in ns))
' || fail "status --json"
cl status
metrics=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1] + "/metrics", timeout=5).read().decode())' \
	"$(jq_py "j['nodes'][1]['metrics_url']")") || metrics=''
grep -q '^shiplog_' <<<"$metrics" || fail "no shiplog_ metrics from n2"

say "kill the primary during --acks 1 writes, failover"
rm -f "$T/stop"
writer "$n1" w "$T/acked" &
wpid=$!
sleep 2
cl kill n1
wait "$wpid" || true
echo "  $(wc -l <"$T/acked") writes acknowledged before the kill"
[ -s "$T/acked" ] || fail "no write acknowledged"
cl status
# a bad option is refused before anything changes (--timeout 10s used to
# promote and re-point, then fail on the number)
cl failover --timeout 10s 2>/dev/null && fail "failover --timeout 10s succeeded"
roles=$(jq_py "' '.join(n['name'] + ':' + n['configured_role'] for n in j['nodes'])")
[ "$roles" = "n1:primary n2:follower n3:follower" ] || fail "a refused failover changed roles: $roles"
cl failover
p=$(primary_name)
[ "$p" != n1 ] || fail "n1 still primary"
pu=$(node_url "$p")
check_acked "$pu" "$T/acked"
"$CLI" -a "$pu" put after-failover yes >/dev/null || fail "write on the new primary $p"
for u in "$n1" "$n2" "$n3"; do
	[ "$u" = "$n1" ] && continue
	[ "$("$CLI" -a "$u" --min-seq 1 get k50)" = v50 ] || fail "k50 lost on $u"
done

say "old primary restarted as follower"
cl start n1
remember_pids
[ "$(jq_py "[n['role'] for n in j['nodes'] if n['name']=='n1'][0]")" = follower ] || fail "n1 not a follower"
digests_equal n1 n2 n3
check_acked "$n1" "$T/acked"
"$CLI" -a "$n1" put x y 2>/dev/null && fail "n1 (follower) accepted a write"

say "failover with the primary alive, during --acks 1 writes: none lost"
# the old primary's writes are paused first (pause-writes): the seq it
# pauses at is final, and the follower promoted holds it
rm -f "$T/stop"
writer "$pu" live "$T/acked-live" &
wpid=$!
sleep 1
if ! cl failover >"$T/fo.out" 2>&1; then
	touch "$T/stop"
	wait "$wpid" || true
	fail "failover with a live primary: $(cat "$T/fo.out")"
fi
touch "$T/stop"
wait "$wpid" || true
grep -q "writes paused" "$T/fo.out" || fail "the old primary's writes were not paused: $(cat "$T/fo.out")"
echo "  $(wc -l <"$T/acked-live") writes acknowledged, some during the failover"
[ -s "$T/acked-live" ] || fail "no write acknowledged"
old_p=$p
p=$(primary_name)
[ "$p" != "$old_p" ] || fail "$old_p still primary"
pu=$(node_url "$p")
check_acked "$pu" "$T/acked-live"
digests_equal n1 n2 n3
[ "$("$CLI" -a "$(node_url "$old_p")" stats | sed -n 's/^writes_paused_ms: //p')" = 0 ] || fail "$old_p still pauses writes"

say "stop a follower, write, start it: it catches up"
f=n2
[ "$p" = n2 ] && f=n3
cl stop "$f"
"$CLI" -a "$pu" put while-stopped yes >/dev/null
cl start "$f"
[ "$("$CLI" -a "$(node_url "$f")" get while-stopped)" = yes ] || fail "$f did not catch up"

say "failover refuses when no follower reaches a live primary's seq"
# both followers pointed at nothing (stuck, as a follower that cannot
# reach the primary is), then writes only the primary holds
others=()
for n in n1 n2 n3; do [ "$n" = "$p" ] || others+=("$n"); done
for n in "${others[@]}"; do "$CLI" -a "$(node_url "$n")" follow tcp://127.0.0.1:1 >/dev/null; done
cl status >"$T/st.out"
[ "$(grep -c "follows tcp://127.0.0.1:1, not $p" "$T/st.out")" = 2 ] || fail "status did not flag the followers pointed elsewhere: $(cat "$T/st.out")"
for i in 1 2 3; do "$CLI" -a "$pu" put "only-on-$p-$i" v >/dev/null; done
if cl failover >"$T/fo.out" 2>&1; then fail "failover promoted a follower short of the primary: $(cat "$T/fo.out")"; fi
grep -q "nothing promoted" "$T/fo.out" || fail "failover did not say why: $(cat "$T/fo.out")"
[ "$(primary_name)" = "$p" ] || fail "a refused failover changed the primary"
# shellcheck disable=SC1090,SC1091
prepl=$(. "$D/$p/node.conf" && echo "$REPL_URL")
for n in "${others[@]}"; do "$CLI" -a "$(node_url "$n")" follow "$prepl" >/dev/null; done
digests_equal n1 n2 n3

say "failover passes over a node on an older history"
# P takes writes no follower has, dies; Q is promoted and takes an --acks 1
# write R holds; Q dies; P comes back (old history, highest seq): R must win
P=$p A=${others[0]} B=${others[1]}
cl stop "$A" >/dev/null
cl stop "$B" >/dev/null
for i in 1 2 3 4 5; do "$CLI" -a "$pu" put "p-only-$i" v >/dev/null; done
cl kill "$P" >/dev/null
cl start --no-wait "$A" >/dev/null
cl start --no-wait "$B" >/dev/null
cl failover >/dev/null
Q=$(primary_name)
R=$A
[ "$Q" = "$A" ] && R=$B
"$CLI" -a "$(node_url "$Q")" --acks 1 put important yes | grep -q "acks 1" || fail "--acks 1 on $Q not acknowledged"
cl kill "$Q" >/dev/null
cl start --no-wait "$P" >/dev/null
cl failover >"$T/fo.out" 2>&1 || fail "failover: $(cat "$T/fo.out")"
[ "$(primary_name)" = "$R" ] || fail "promoted $(primary_name), not $R (on the newest history): $(cat "$T/fo.out")"
[ "$("$CLI" -a "$(node_url "$R")" get important)" = yes ] || fail "the acknowledged write was lost"
cl start "$Q" >/dev/null
p=$R pu=$(node_url "$R")
check_acked "$pu" "$T/acked"
digests_equal n1 n2 n3
[ "$("$CLI" -a "$(node_url "$P")" get important)" = yes ] || fail "$P did not come back to the new history"

say "a primary that cannot answer during a failover is re-pointed by start once it can"
# SIGSTOP: running, but silent; failover promotes another and cannot tell
# the old primary, which then comes back still a primary (two primaries
# taking writes) until cluster/start re-points it
old=$p
opid=$(jq_py "[n['pid'] for n in j['nodes'] if n['name']=='$old'][0]")
kill -STOP "$opid"
cl failover >"$T/fo.out" 2>&1 || { kill -CONT "$opid"; fail "failover with $old stopped: $(cat "$T/fo.out")"; }
kill -CONT "$opid"
grep -q "$old: unreachable; once it answers, cluster/start $old re-points it" "$T/fo.out" ||
	fail "failover did not say how $old is re-pointed: $(cat "$T/fo.out")"
p=$(primary_name) pu=$(node_url "$p")
[ "$p" != "$old" ] || fail "$old still the configured primary"
cl start "$old" >"$T/start.out" 2>&1 || fail "start of the running $old: $(cat "$T/start.out")"
grep -q "$old: was primary; now follows $p" "$T/start.out" || fail "start did not re-point $old: $(cat "$T/start.out")"
[ "$(jq_py "[n['role'] for n in j['nodes'] if n['name']=='$old'][0]")" = follower ] || fail "$old not a follower"
"$CLI" -a "$(node_url "$old")" put split x 2>/dev/null && fail "$old (re-pointed) accepted a write"
"$CLI" -a "$pu" put after-stop yes >/dev/null || fail "write on the new primary $p"
digests_equal n1 n2 n3
check_acked "$pu" "$T/acked"
out=$(cl start "$old")
if ! grep -q "already running" <<<"$out" || grep -q "now follows" <<<"$out"; then
	fail "a second start of $old: $out"
fi

say "failover --to a follower behind another is refused; without --to the write survives"
# F is paused while G acknowledges an --acks 1 write; the primary dies; F
# comes back behind G: promoting F would drop the acknowledged write
others=()
for n in n1 n2 n3; do [ "$n" = "$p" ] || others+=("$n"); done
F=${others[0]} G=${others[1]}
fpid=$(jq_py "[n['pid'] for n in j['nodes'] if n['name']=='$F'][0]")
kill -STOP "$fpid"
# the first write may still reach F: its fetch was parked on the primary,
# and the reply waits in F's socket; the second is G's alone
"$CLI" -a "$pu" --acks 1 put acked-by-g-first yes | grep -q "acks 1" || { kill -CONT "$fpid"; fail "--acks 1 not acknowledged by $G"; }
"$CLI" -a "$pu" --acks 1 put only-acked-by-g yes | grep -q "acks 1" || { kill -CONT "$fpid"; fail "--acks 1 not acknowledged by $G"; }
cl kill "$p" >/dev/null
kill -CONT "$fpid"
if cl failover --to "$F" >"$T/fo.out" 2>&1; then fail "failover --to $F (behind $G) succeeded: $(cat "$T/fo.out")"; fi
grep -q "$F (seq [0-9]*) is behind $G" "$T/fo.out" && grep -q "nothing promoted" "$T/fo.out" ||
	fail "failover --to $F did not say why: $(cat "$T/fo.out")"
[ "$(jq_py "[n['name'] for n in j['nodes'] if n['configured_role']=='primary'][0]")" = "$p" ] ||
	fail "a refused failover --to changed the primary"
cl failover >"$T/fo.out" 2>&1 || fail "failover: $(cat "$T/fo.out")"
[ "$(primary_name)" = "$G" ] || fail "promoted $(primary_name), not $G (the most advanced): $(cat "$T/fo.out")"
dead=$p p=$G pu=$(node_url "$G")
[ "$("$CLI" -a "$pu" get only-acked-by-g)" = yes ] || fail "the write $G acknowledged was lost"
cl start "$dead" >/dev/null
remember_pids
digests_equal n1 n2 n3
check_acked "$pu" "$T/acked"

say "down, then up restarts the cluster with its data and roles"
cl down
no_leftovers "${ports[@]}"
cl up --no-build --bin "$BLD" >/dev/null
remember_pids
[ "$(primary_name)" = "$p" ] || fail "primary changed across down/up"
check_acked "$(node_url n1)" "$T/acked"
digests_equal n1 n2 n3

say "up refuses when another server holds the primary's addresses"
cl down
# shellcheck disable=SC1090,SC1091
pc=$(. "$D/$p/node.conf" && echo "$CLIENT_URL")
# shellcheck disable=SC1090,SC1091
pr=$(. "$D/$p/node.conf" && echo "$REPL_URL")
"$BLD/shiplogd" --dir "$T/foreign" --listen "$pc" --repl-listen "$pr" \
	--pidfile "$T/foreign.pid" 2>"$T/foreign.log" &
fpid=$!
for _ in $(seq 100); do [ -s "$T/foreign.pid" ] && break; sleep 0.1; done
if cl up --no-build --bin "$BLD" >"$T/up.out" 2>&1; then
	fail "up reported success while $pc belonged to another server: $(cat "$T/up.out")"
fi
grep -q "$p: shiplogd exited at start" "$T/up.out" || fail "up did not name $p: $(cat "$T/up.out")"
kill "$fpid"
wait "$fpid" || true
cl down >/dev/null

say "up refuses a new cluster on a busy port, and leaves no directory behind"
b2=$(free_base 3)
python3 -c '
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT ends
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1)
open(sys.argv[2], "w").write("x"); time.sleep(60)
' "$((b2 + 201))" "$T/busy.ready" &
bpid=$!
for _ in $(seq 100); do [ -s "$T/busy.ready" ] && break; sleep 0.1; done
[ -s "$T/busy.ready" ] || fail "could not hold port $((b2 + 201)) for the test"
if "$SRC/cluster/up" -n 3 --base-port "$b2" --dir "$T/other" --no-build --bin "$BLD" >"$T/up2.out" 2>&1; then
	fail "up started a cluster with port $((b2 + 201)) taken: $(cat "$T/up2.out")"
	"$SRC/cluster/down" --dir "$T/other" --wipe >/dev/null 2>&1 || true
fi
kill "$bpid"
wait "$bpid" 2>/dev/null || true
grep -q "port $((b2 + 201)) is in use" "$T/up2.out" || fail "up did not name the busy port: $(cat "$T/up2.out")"
[ ! -e "$T/other" ] || fail "up left $T/other behind: $(ls -la "$T/other")"

say "down --wipe leaves no process, port or file"
cl down --wipe
no_leftovers "${ports[@]}"
[ ! -e "$D" ] || fail "$D still exists"

if [ "$FAILS" != 0 ]; then
	echo "test_cluster: $FAILS failure(s)"
	exit 1
fi
echo "test_cluster: ok"
