#!/usr/bin/env bash
# `qemu-img map --output=json` over a sparse file served by the file plugin agrees with the
# file's own map (data written with dd, holes elsewhere), as the file plugin reports extents
# with SEEK_DATA/SEEK_HOLE.
source "$(dirname "$0")/lib/functions.sh"

disk="$tmp/disk.img"
truncate -s 64M "$disk"
dd if=/dev/urandom of="$disk" bs=1M seek=3 count=2 conv=notrunc status=none
dd if=/dev/urandom of="$disk" bs=1M seek=40 count=1 conv=notrunc status=none

start_server -r file "$disk"
qemu-img map --output=json -f raw "$uri" > "$tmp/map.json"
cat "$tmp/map.json"

python3 - "$tmp/map.json" <<'PY' || fail "map is wrong"
import json, sys
M = 1 << 20
extents = json.load(open(sys.argv[1]))
assert sum(e["length"] for e in extents) == 64 * M

def at(offset):
    return next(e for e in extents if e["start"] <= offset < e["start"] + e["length"])

for off in (3 * M, 5 * M - 1, 40 * M, 41 * M - 1):
    assert at(off)["data"] is True, "offset %d should be data: %r" % (off, at(off))
for off in (0, 2 * M, 6 * M, 30 * M, 41 * M, 64 * M - 1):
    e = at(off)
    assert e["data"] is False and e["zero"] is True, "offset %d should be a hole: %r" % (off, e)
PY
echo OK
