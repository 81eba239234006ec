#!/usr/bin/env bash
# Compiles and runs the C example in README.md against the built library, so
# the README's code stays true.   usage: readme_example.sh SRC_DIR BUILD_DIR
set -euo pipefail
src=$1 build=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk '/^```c$/{on=1; next} /^```$/{on=0} on' "$src/README.md" | sed "s|/tmp/shiplog-demo|$tmp/db|" >"$tmp/demo.c"
cc -std=gnu11 -Wall -Wextra -Werror -I"$src/storage" "$tmp/demo.c" "$build/libshiplog-storage.a" \
	-lxxhash -lisal -lpthread -o "$tmp/demo"
out=$("$tmp/demo")
echo "$out"
[ "$out" = "world (seq 1)" ]
