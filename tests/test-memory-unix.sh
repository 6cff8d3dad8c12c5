#!/usr/bin/env bash
# -U PATH: serve on a Unix socket at a given path, to several clients one after the other and
# at the same time.
source "$(dirname "$0")/lib/functions.sh"

start_server memory 1M
[ -S "$sock" ] || fail "$sock is not a socket"
[ "$(nbdinfo --size "$uri")" -eq 1048576 ] || fail "wrong size"
nbdinfo "$uri" > "$tmp/info"
cat "$tmp/info"
grep -q 'can_multi_conn: true' "$tmp/info" || fail "nbdinfo: multi-conn not reported"

# Ten clients at once, each writing its own sector and reading it back.
for i in 0 1 2 3 4 5 6 7 8 9; do
    nbdsh -u "$uri" -c "
h.pwrite(bytes([$i + 1]) * 512, $i * 512)
assert h.pread(512, $i * 512) == bytes([$i + 1]) * 512
" &
done
wait_status=0
for job in $(jobs -p); do
    [ "$job" = "$server_pid" ] && continue
    wait "$job" || wait_status=$?
done
[ "$wait_status" -eq 0 ] || fail "a concurrent client failed"
nbdsh -u "$uri" -c '
for i in range(10):
    assert h.pread(512, i * 512) == bytes([i + 1]) * 512, i
'
echo OK
