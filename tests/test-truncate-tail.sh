#!/usr/bin/env bash
# The truncate filter: sizes from truncate=, round-up= and round-down= match nbdkit's; the part
# past the layer below reads as zeroes (same bytes as nbdkit), is a hole in block status, takes
# writes of zeroes and refuses anything else with ENOSPC; bad values name the parameter.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/disk.img" 1000
# (nbdkit 1.32 aborts on block status with "truncate=5000 round-up=4k", so ours is checked alone.)
for params in truncate=3000 truncate=600 round-up=512 round-down=512; do
    # shellcheck disable=SC2086
    same_served_as_nbdkit --filter=truncate file "$tmp/disk.img" $params
done

start_server --filter=truncate file "$tmp/disk.img" truncate=5000 round-up=4k
rm -f "$tmp/ours.out"
nbdcopy "$uri" "$tmp/ours.out"
{ cat "$tmp/disk.img"; head -c 7192 /dev/zero; } | cmp - "$tmp/ours.out" || fail "truncate=5000 round-up=4k"

start_server --filter=truncate file "$tmp/disk.img" truncate=8192
nbdsh -u "$uri" -c '
import errno, nbd
assert h.get_size() == 8192, h.get_size()
assert h.pread(4000, 1000) == bytes(4000)
h.pwrite(bytes(100), 5000)               # zeroes past the end: accepted
try:
    h.pwrite(b"x" * 100, 950)           # straddles the end with data: refused
    assert False, "write past the end succeeded"
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, e
h.zero(8192, 0)
'
[ "$(stat -c %s "$tmp/disk.img")" -eq 1000 ] || fail "the file grew"
cmp -n 1000 "$tmp/disk.img" /dev/zero || fail "zero did not reach the file"
nbdinfo --map "$uri" | tee "$tmp/map"
tail -n 1 "$tmp/map" | grep -Eq ' 3 +hole,zero' || fail "the tail is not a hole"

bad_args --filter=truncate memory 1M round-up=3 -- round-up=3 "power of 2"
bad_args --filter=truncate memory 1M truncate=1Q -- truncate=1Q
echo OK
