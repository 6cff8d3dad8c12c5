#!/usr/bin/env bash
# `qemu-img map --output=json` over a sparse memory export shows the written ranges as data and
# the rest as zero holes (from NBD_CMD_BLOCK_STATUS base:allocation).
source "$(dirname "$0")/lib/functions.sh"

start_server memory 64M
qemu-io -f raw "$uri" -c 'write -P 1 1M 1M' -c 'write -P 2 10M 64k' >/dev/null
qemu-img map --output=json -f raw "$uri" > "$tmp/map.json"
cat "$tmp/map.json"

python3 - "$tmp/map.json" <<'PY' || fail "map is wrong"
import json, sys
M = 1 << 20
extents = json.load(open(sys.argv[1]))
pos = 0
for e in extents:
    assert e["start"] == pos, "gap or overlap at %d" % pos
    pos += e["length"]
assert pos == 64 * M, "map covers %d bytes" % pos

def at(offset):
    return next(e for e in extents if e["start"] <= offset < e["start"] + e["length"])

for off in (1 * M, 2 * M - 1, 10 * M, 10 * M + 65535):
    assert at(off)["data"] is True, "offset %d should be data: %r" % (off, at(off))
for off in (0, 2 * M, 5 * M, 10 * M + 65536, 64 * M - 1):
    e = at(off)
    assert e["data"] is False and e["zero"] is True, "offset %d should be a hole: %r" % (off, e)
PY
echo OK
