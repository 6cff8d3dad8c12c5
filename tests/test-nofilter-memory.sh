#!/usr/bin/env bash
# The nofilter filter passes everything through: with --filter=nofilter (and the two-word
# --filter nofilter, and stacked twice) the memory export behaves as without it.
source "$(dirname "$0")/lib/functions.sh"

check_export() {
    nbdsh --base-allocation -u "$uri" -c '
import nbd
assert h.get_size() == 1 << 20, h.get_size()
assert h.can_trim() and h.can_zero() and h.can_fua() and h.can_flush() and h.can_multi_conn()
h.pwrite(b"nofilter" * 512, 8192, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 8192) == b"nofilter" * 512
h.zero(4096, 8192)
assert h.pread(4096, 8192) == bytes(4096)
h.trim(4096, 0)
entries = []
h.block_status(1 << 20, 0, lambda ctx, off, e, err: entries.extend(e))
assert entries and entries[1] == nbd.STATE_HOLE | nbd.STATE_ZERO, entries
'
}

start_server --filter=nofilter memory 1M
check_export
start_server --filter nofilter memory size=1M
check_export
start_server --filter=nofilter --filter=nofilter memory 1M
check_export
echo OK
