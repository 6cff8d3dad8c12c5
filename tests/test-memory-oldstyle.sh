#!/usr/bin/env bash
# -o: the oldstyle handshake (no options; size and flags straight away).  libnbd still speaks it.
source "$(dirname "$0")/lib/functions.sh"

start_server -o memory 1M
[ "$(nbdinfo --size "$uri")" -eq 1048576 ] || fail "wrong size over oldstyle"
nbdsh -u "$uri" -c '
assert h.get_protocol() == "oldstyle", h.get_protocol()
h.pwrite(b"old" * 1000, 4096)
assert h.pread(3000, 4096) == b"old" * 1000
assert not h.is_read_only()
'
# The greeting on the wire: NBDMAGIC, cliserv magic, size, flags, 124 zero bytes.
PYTHONPATH="$(dirname "$0")/lib" python3 - "$sock" <<'PY' || fail "oldstyle greeting"
import sys
from nbdwire import Client, FLAG_HAS_FLAGS
with Client(sys.argv[1]) as c:
    size, flags = c.oldstyle_greeting()
    assert size == 1 << 20, size
    assert flags & FLAG_HAS_FLAGS, flags
    err, data, _ = c.read(4096, 3000)
    assert err == 0 and data == b"old" * 1000, err
    c.disconnect()
PY
echo OK
