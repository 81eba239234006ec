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

say "stop a follower, write, start it: it catches up"
f=n2
[ "$p" = n2 ] && f=n3
cl stop "$f"
"$CLI" -a "$pu" put while-stopped yes >/dev/null
cl start "$f"
[ "$("$CLI" -a "$(node_url "$f")" get while-stopped)" = yes ] || fail "$f did not catch up"

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

say "down --wipe leaves no process, port or file"
cl down --wipe
no_leftovers "${ports[@]}"
[ ! -e "$D" ] || fail "$D still exists"

if [ "$FAILS" != 0 ]; then
	echo "test_cluster: $FAILS failure(s)"
	exit 1
fi
echo "test_cluster: ok"
