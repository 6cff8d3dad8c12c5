#!/usr/bin/env bash
# The multi-conn filter: each mode offers multi-conn as nbdkit does with the same command line,
# also over a layer serving one connection at a time; in emulate mode a write and flush on one
# connection is seen by another, and nbdcopy with several connections copies correctly.
source "$(dirname "$0")/lib/functions.sh"

for mode in "" multi-conn-mode=auto multi-conn-mode=emulate multi-conn-mode=plugin \
    multi-conn-mode=disable multi-conn-mode=unsafe "multi-conn-mode=emulate multi-conn-track-dirty=fast"; do
    # shellcheck disable=SC2086
    same_flags_as_nbdkit can_multi_conn can_flush can_fua -- --filter=multi-conn memory 1M $mode
done
same_flags_as_nbdkit can_multi_conn -- --filter=multi-conn --filter=noparallel memory 1M serialize=connections
[ "$(export_flags "$uri" can_multi_conn)" = "can_multi_conn=False" ] || fail "auto over one connection at a time"

random_file "$tmp/data" 4M
for track in connection fast off; do
    start_server --filter=multi-conn memory 4M multi-conn-mode=emulate multi-conn-track-dirty=$track
    URI=$uri nbdsh -n -c '
import nbd, os
uri = os.environ["URI"]
a, b = nbd.NBD(), nbd.NBD()
a.connect_uri(uri)
b.connect_uri(uri)
assert b.pread(5, 0) == bytes(5)
a.pwrite(b"hello", 0)
a.flush()
assert b.pread(5, 0) == b"hello"
b.pwrite(b"world", 0, nbd.CMD_FLAG_FUA)
assert a.pread(5, 0) == b"world"
'
    nbdcopy --connections=4 "$tmp/data" "$uri"
    rm -f "$tmp/back"
    nbdcopy "$uri" "$tmp/back"
    same_file "$tmp/data" "$tmp/back"
done
bad_args --filter=multi-conn memory 1M multi-conn-mode=often -- multi-conn-mode=often
echo OK
