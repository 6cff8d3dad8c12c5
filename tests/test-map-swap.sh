#!/usr/bin/env bash
# The map filter (nbdkit 1.32 has none to compare with): swapping two 64 KiB ranges of a file
# serves exactly what dd puts together, writes land where the mapping says, block status follows
# the mapping, and a mapping past the end of the file fails reads there with EIO.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/disk.img" 1M
truncate -s 2M "$tmp/disk.img"   # the second MiB is a hole
{
    dd if="$tmp/disk.img" bs=64K skip=1 count=1 status=none
    dd if="$tmp/disk.img" bs=64K skip=0 count=1 status=none
    dd if="$tmp/disk.img" bs=64K skip=2 status=none
} > "$tmp/want"
start_server --filter=map file "$tmp/disk.img" map=0-65535:65536 map=65536-131071:0
rm -f "$tmp/ours.out"
nbdcopy "$uri" "$tmp/ours.out"
same_file "$tmp/want" "$tmp/ours.out"

nbdsh -u "$uri" -c 'h.pwrite(b"moved", 65536 - 2)'
[ "$(dd if="$tmp/disk.img" bs=1 skip=$((131072 - 2)) count=2 status=none)" = "mo" ] || fail "first half of the write"
[ "$(dd if="$tmp/disk.img" bs=1 skip=0 count=3 status=none)" = "ved" ] || fail "second half of the write"

# The hole moved to the start: block status follows the mapping.
start_server --filter=map file "$tmp/disk.img" map=0-1048575:1M map=1M-2097151:0 map-size=2M
nbdinfo --map "$uri" | tee "$tmp/map"
grep -Eq '^ *0 +1048576 +3 +hole,zero' "$tmp/map" || fail "the hole is not at the start"

start_server --filter=map file "$tmp/disk.img" map=0-4095:2M
nbdsh -u "$uri" -c '
import errno, nbd
assert h.pread(4096, 4096) == h.pread(4096, 4096)
try:
    h.pread(512, 0)
    assert False, "read past the end of the file succeeded"
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
'
bad_args --filter=map memory 1M map=5-4:0 -- map=5-4:0
echo OK
