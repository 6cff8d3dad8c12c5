#!/usr/bin/env bash
# The fua filter: in each mode the export offers FUA and flush as nbdkit does with the same
# command line; writes with FUA, flushes, trims and zeroes succeed where offered and the data is
# right; modes needing FUA or flush from a layer that lacks them refuse the client.
source "$(dirname "$0")/lib/functions.sh"

# nbdkit 1.32 refuses fuamode=none (a bug in its parser), so that mode is checked alone below.
for mode in "" fuamode=emulate fuamode=native fuamode=force fuamode=pass fuamode=discard; do
    # shellcheck disable=SC2086
    same_flags_as_nbdkit can_fua can_flush -- --filter=fua memory 1M $mode
    nbdsh -u "$uri" -c '
import nbd
fua = nbd.CMD_FLAG_FUA if h.can_fua() else 0
h.pwrite(b"durable" * 100, 4096, fua)
h.zero(4096, 8192, fua)
h.trim(4096, 12288, fua)
if h.can_flush():
    h.flush()
assert h.pread(700, 4096) == b"durable" * 100
assert h.pread(4096, 8192) == bytes(4096)
'
done

start_server --filter=fua memory 1M fuamode=none
[ "$(export_flags "$uri" can_fua can_flush)" = "can_fua=False can_flush=True" ] || fail "fuamode=none"

# A second fua filter in its default mode takes FUA away below the first: native and force
# have nothing to pass FUA to, so clients are refused; discard needs nothing.
for mode in native force; do
    start_server --filter=fua --filter=fua memory 1M fuamode=$mode
    expect_fail nbdinfo "$uri"
done
start_server --filter=fua --filter=fua memory 1M fuamode=discard
[ "$(export_flags "$uri" can_fua can_flush)" = "can_fua=True can_flush=True" ] || fail "discard over no FUA"

bad_args --filter=fua memory 1M fuamode=often -- fuamode=often
echo OK
