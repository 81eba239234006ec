#!/usr/bin/env bash
# Runs shiplog-bench beside the reference engines (LevelDB, RocksDB, LMDB via
# ../shared/anchors/embedded_bench) in one run, RUNS times, and prints every
# JSON line; then the medians and the ratios the storage issue quotes.
#   tests/bench/embedded_vs_anchors.sh [BUILD_DIR] [RUNS] [NUM]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build} runs=${2:-3} num=${3:-1000000}
anchors=../shared/anchors
eb=/tmp/embedded_bench
[ -x "$eb" ] || "$anchors/build.sh" "$eb" >/dev/null
out=$(mktemp)
trap 'rm -f "$out"; rm -rf /tmp/sl-anchor-*' EXIT
for r in $(seq "$runs"); do
	for e in leveldb rocksdb lmdb; do
		"$eb" --engine "$e" --benchmarks fillrandom,readrandom --num "$num" --dir "/tmp/sl-anchor-$e" --json | sed "s/^{/{\"run\":$r,/" >>"$out"
		rm -rf "/tmp/sl-anchor-$e"
		"$eb" --engine "$e" --benchmarks fillrandom,readrandom --threads 2 --num "$num" --dir "/tmp/sl-anchor-$e" --json | grep '"readrandom"' | sed "s/^{/{\"run\":$r,/" >>"$out"
		rm -rf "/tmp/sl-anchor-$e"
		"$eb" --engine "$e" --benchmarks fillsync --threads 32 --num "$num" --dir "/tmp/sl-anchor-$e" --json | sed "s/^{/{\"run\":$r,/" >>"$out"
		rm -rf "/tmp/sl-anchor-$e"
	done
	"$build/shiplog-bench" --benchmarks=fillrandom,readrandom --threads 1,2 --num "$num" --dir /tmp/sl-anchor-shiplog --json | sed "s/^{/{\"run\":$r,/" >>"$out"
	"$build/shiplog-bench" --benchmarks=fillsync --threads 32 --num "$num" --dir /tmp/sl-anchor-shiplog --json | sed "s/^{/{\"run\":$r,/" >>"$out"
done
cat "$out"
python3 - "$out" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(engine, bench, threads):
    v = [r["ops_per_sec"] for r in rows if r.get("engine") == engine and r["benchmark"] == bench
         and int(r.get("threads", 1)) == threads]
    return st.median(v) if v else float("nan")
print("\nmedians (ops/s):")
for b, t in [("fillrandom", 1), ("readrandom", 1), ("readrandom", 2), ("fillsync", 32)]:
    line = {e: med(e, b, t) for e in ["shiplog", "leveldb", "rocksdb", "lmdb"]}
    print(f"  {b:11s} T{t:<2d} " + "  ".join(f"{e} {v:,.0f}" for e, v in line.items()))
s, l, m = med("shiplog", "fillrandom", 1), med("leveldb", "fillrandom", 1), None
print("\nratios:")
print(f"  fillrandom  shiplog/leveldb       {s / l:.2f}  (goal >= 3)")
for t in (1, 2):
    s = med("shiplog", "readrandom", t)
    print(f"  readrandom  T{t} shiplog/leveldb    {s / med('leveldb', 'readrandom', t):.2f}  (goal >= 2)")
    print(f"  readrandom  T{t} shiplog/lmdb       {s / med('lmdb', 'readrandom', t):.2f}  (goal >= 1)")
print(f"  fillsync    T32 shiplog/leveldb   {med('shiplog', 'fillsync', 32) / med('leveldb', 'fillsync', 32):.2f}  (goal >= 2)")
PY
