#!/usr/bin/env bash
# The multi-host variant: cluster/up --netns (a namespace per node on a
# bridge), writes with --acks 1 while a follower is partitioned, then the
# primary partitioned (it takes a write nobody acknowledges), failover, heal:
# digests equal, no acknowledged write lost, the cut-off write gone; down
# removes every namespace, link and process.
#   tests/cluster/test_cluster_netns.sh SOURCE_DIR BUILD_DIR   (root; 77 = skipped)
set -euo pipefail
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
	echo "skipped: needs root and iproute2"
	exit 77
fi
probe=shiplog-probe-$$
if ! ip netns add "$probe" 2>/dev/null; then
	echo "skipped: cannot create network namespaces here"
	exit 77
fi
ip netns del "$probe"
# shellcheck source=tests/cluster/common.sh
. "$(dirname "$0")/common.sh"

say "up --netns"
cl up --netns -n 3 --no-build --bin "$BLD"
remember_pids
# shellcheck disable=SC1091
id=$(. "$D/cluster.conf" && echo "$NETNS_ID")
bridge=slbr$id
ip netns list | grep -q "shiplog-$id-n1" || fail "no namespace shiplog-$id-n1"
n1=$(node_url n1) n2=$(node_url n2)
grep -q '^tcp://10\.77\.' <<<"$n1" || fail "n1 not on 10.77.x.x: $n1"

say "writes with --acks 1 while follower n2 is partitioned"
rm -f "$T/stop"
writer "$n1" a "$T/acked-a" &
wpid=$!
sleep 1
echo "  [$SECONDS s]"; cl partition n2
sleep 2
st=$(status_json)
python3 -c 'import json,sys; j=json.loads(sys.argv[1]); n2=j["nodes"][1]; assert n2["alive"] and not n2["reachable"], n2' "$st" ||
	fail "partitioned n2 should be alive and unreachable"
# starting a node sets up the network again; it must leave n2's cut link down
cl stop n3 >/dev/null
cl start n3 >/dev/null
# and a partitioned node can be restarted (it says so, and stays cut off)
cl stop n2 >/dev/null
out=$(cl start n2) || fail "cluster/start of partitioned n2 failed: $out"
grep -q 'partitioned' <<<"$out" || fail "cluster/start n2 did not say it is partitioned: $out"
st=$(status_json)
python3 -c 'import json,sys; j=json.loads(sys.argv[1]); n2=j["nodes"][1]; assert n2["alive"] and not n2["reachable"], n2' "$st" ||
	fail "cluster/start n3 healed n2's partition"
sleep 1
echo "  [$SECONDS s]"; cl heal n2
sleep 1
touch "$T/stop"
wait "$wpid" || true
echo "  $(wc -l <"$T/acked-a") writes acknowledged"
digests_equal n1 n2 n3
check_acked "$n2" "$T/acked-a"

say "partition the primary n1; it takes a write nobody acknowledges; failover"
echo "  [$SECONDS s]"; cl partition n1
# made on n1 (a seq), acknowledged by no follower (acks 0, exit 2): any
# other failure (n1 not reached) would not show what the heal must undo
rc=0
ip netns exec "shiplog-$id-n1" "$CLI" -a "$n1" --json --acks 1 --timeout 1500 put cut-off x \
	>"$T/cutoff.json" 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "the write on the cut-off primary: exit $rc, want 2 (made, not acknowledged)"
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j.get("seq", 0) > 0 and j.get("acks") == 0 else 1)' \
	"$T/cutoff.json" || fail "the write on the cut-off primary: $(cat "$T/cutoff.json"), want a seq and acks 0"
echo "  [$SECONDS s]"; cl failover --timeout 30
p=$(primary_name)
[ "$p" != n1 ] || fail "n1 still primary"
pu=$(node_url "$p")
rm -f "$T/stop"
writer "$pu" b "$T/acked-b" &
wpid=$!
sleep 2
say "heal n1: it becomes a follower of $p"
echo "  [$SECONDS s]"; cl heal n1
touch "$T/stop"
wait "$wpid" || true
echo "  $(wc -l <"$T/acked-b") writes acknowledged on $p"
[ "$(jq_py "[n['role'] for n in j['nodes'] if n['name']=='n1'][0]")" = follower ] || fail "n1 not a follower after heal"
digests_equal n1 n2 n3
for n in n1 n2 n3; do
	u=$(node_url "$n")
	check_acked "$u" "$T/acked-a"
	check_acked "$u" "$T/acked-b"
	if "$CLI" -a "$u" get cut-off >/dev/null 2>&1; then fail "the cut-off write survives on $n"; fi
done
cl status

say "restart refuses a subnet another interface took meanwhile"
# shellcheck disable=SC1091
subnet=$(. "$D/cluster.conf" && echo "$SUBNET")
cl down >/dev/null
fake=slfake$$
ip link add "$fake" type bridge
ip addr add "$subnet.200/24" dev "$fake"
if cl up --no-build --bin "$BLD" >"$T/up.out" 2>&1; then fail "up took $subnet.0/24 while $fake held it"; fi
grep -q "in use by another interface" "$T/up.out" || fail "up did not say why: $(cat "$T/up.out")"
ip link del "$fake"
cl up --no-build --bin "$BLD" >/dev/null
remember_pids
digests_equal n1 n2 n3

say "down --wipe removes namespaces, links, bridge, processes"
cl down --wipe
no_leftovers "" # no ports to check: every node listened in its own namespace
if ip netns list | grep -q "shiplog-$id-"; then fail "namespaces left: $(ip netns list | grep "shiplog-$id-")"; fi
if ip link show "$bridge" >/dev/null 2>&1; then fail "bridge $bridge left"; fi
if ip -o link | grep -q "slv$id"; then fail "veths left"; fi

if [ "$FAILS" != 0 ]; then
	echo "test_cluster_netns: $FAILS failure(s)"
	exit 1
fi
echo "test_cluster_netns: ok"
