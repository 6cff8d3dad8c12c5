#!/usr/bin/env bash
# The noparallel filter: serialize=connections serves one client at a time (a second client
# waits until the first leaves) and no longer offers multi-conn, as nbdkit does; the other modes
# keep multi-conn and serve clients at once; each mode still serves correct data.
source "$(dirname "$0")/lib/functions.sh"

for mode in "" serialize=requests serialize=all-requests serialize=connections; do
    # shellcheck disable=SC2086
    same_flags_as_nbdkit can_multi_conn -- --filter=noparallel memory 1M $mode
done
[ "$(export_flags "$uri" can_multi_conn)" = "can_multi_conn=False" ] || fail "multi-conn with connections"

# One client holds the connection for 3 s; a second one only gets in after it leaves.
hold_and_time() {
    nbdsh -u "$uri" -c 'import time; h.pwrite(b"first", 0); time.sleep(3)' &
    local holder=$! start=$SECONDS
    sleep 1
    nbdsh -u "$uri" -c 'assert h.pread(5, 0) == b"first"'
    waited=$((SECONDS - start))
    wait "$holder"
}
start_server --filter=noparallel memory 1M serialize=connections
hold_and_time
[ "$waited" -ge 3 ] || fail "second client served after ${waited}s while the first was connected"
start_server --filter=noparallel memory 1M serialize=all-requests
hold_and_time
[ "$waited" -le 2 ] || fail "second client waited ${waited}s with serialize=all-requests"

start_server --filter=noparallel memory 64M
fio_verify
bad_args --filter=noparallel memory 1M serialize=never -- serialize=never
echo OK
