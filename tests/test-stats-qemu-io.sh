#!/usr/bin/env bash
# The stats filter counts what qemu-io sends, exactly, and only what succeeds: 16 writes of
# 64 KiB, 16 reads of 64 KiB that return the pattern written, 4 write-zeroes of 1 MiB and two
# writes past the file size limit (RLIMIT_FSIZE: they fail with ENOSPC and are not counted), over
# the file plugin. Passes against nbdkit 1.32 too.
source "$(dirname "$0")/lib/functions.sh"

truncate -s 8M "$tmp/disk.img"
trap '' XFSZ
ulimit -f 6144

start_server --filter=stats file "$tmp/disk.img" statsfile="$tmp/stats.txt"
cmds=()
for i in $(seq 0 15); do cmds+=(-c "write -P 0x$((i + 16)) $((i * 64))k 64k"); done
for i in $(seq 0 15); do cmds+=(-c "read -P 0x$((i + 16)) $((i * 64))k 64k"); done
for i in 1 2 3 4; do cmds+=(-c "write -z ${i}M 1M"); done
qemu-io -f raw "$uri" "${cmds[@]}" > "$tmp/qemu-io.out"
[ "$(grep -c '^read 65536/65536 bytes' "$tmp/qemu-io.out")" -eq 16 ] || fail "qemu-io reads: $(cat "$tmp/qemu-io.out")"
qemu-io -f raw "$uri" -c 'write 7M 64k' -c 'write 7680k 4k' > "$tmp/fail.out" 2>&1 || :
[ "$(grep -c 'write failed: No space left on device' "$tmp/fail.out")" -eq 2 ] ||
    fail "the writes past the limit did not fail: $(cat "$tmp/fail.out")"
stop_server "$server_pid"
cat "$tmp/stats.txt"

s="$tmp/stats.txt"
grep -Eq '^write: 16 ops, [0-9.]+ s, 1\.00 MiB, ' "$s" || fail "writes"
grep -Eq '^read: 16 ops, [0-9.]+ s, 1\.00 MiB, ' "$s" || fail "reads"
grep -Eq '^zero: 4 ops, [0-9.]+ s, 4\.00 MiB, ' "$s" || fail "zeroes"
grep -Eq '^    16 bits: 100\.0% \(16 reqs, 1\.00 MiB total\)$' "$s" || fail "64 KiB size class"
grep -Eq '^    20 bits: 100\.0% \(4 reqs, 4\.00 MiB total\)$' "$s" || fail "1 MiB size class"
PYTHONPATH="$repo/tests/lib" python3 -c '
import sys
from filterlogs import parse_stats
s = parse_stats(open(sys.argv[1]).read())
ops = sum(int(s[k]["ops"]) for k in s["order"] if k != "cache")
assert int(s["total"]["ops"]) == ops, (s["total"], ops)
assert s["total"]["bytes"] == "6.00 MiB", s["total"]
' "$s" || fail "the summary is not well formed"
echo OK
