#!/usr/bin/env bash
# The file plugin serves a file faithfully: after a qemu-io write session through the export,
# `qemu-img compare` finds the export and the file identical, and the file holds exactly what
# was written.  Then the other direction: a memory export filled by nbdcopy from a file compares
# equal to that file.
source "$(dirname "$0")/lib/functions.sh"

disk="$tmp/disk.img"
random_file "$disk" 16M
cp "$disk" "$tmp/orig.img"

start_server file "$disk"
qemu-io -f raw "$uri" \
    -c 'write -P 0x5a 1M 1M' \
    -c 'write -z 4M 512k' \
    -c 'discard 8M 1M' \
    -c 'write -P 0xa5 16773120 4096' \
    -c 'flush' >"$tmp/qemu-io.out" 2>&1 || { cat "$tmp/qemu-io.out"; fail "qemu-io failed"; }
grep -Eiq 'error|fail' "$tmp/qemu-io.out" && { cat "$tmp/qemu-io.out"; fail "qemu-io error"; }

qemu-img compare -f raw -F raw "$uri" "$disk" || fail "export and file differ"

# The file holds what was written, and nothing else changed.
python3 - "$disk" "$tmp/orig.img" <<'PY' || fail "file contents wrong"
import sys
new = open(sys.argv[1], "rb").read()
old = bytearray(open(sys.argv[2], "rb").read())
M = 1 << 20
old[M:2 * M] = b"\x5a" * M
old[4 * M:4 * M + 512 * 1024] = bytes(512 * 1024)
old[8 * M:9 * M] = bytes(M)          # discard of a file reads back as zeroes
old[16773120:] = b"\xa5" * 4096
if new != old:
    first = next(i for i in range(len(new)) if new[i] != old[i])
    sys.exit("first difference at offset %d" % first)
PY

# Compare notices the writes against the original (so the check above means something).
expect_fail qemu-img compare -q -f raw -F raw "$uri" "$tmp/orig.img"

# A memory export filled with nbdcopy equals its source.
src="$tmp/src.img"
random_file "$src" 32M
start_server memory 32M
nbdcopy "$src" "$uri"
qemu-img compare -f raw -F raw "$uri" "$src" || fail "memory export differs from its source"
echo OK
