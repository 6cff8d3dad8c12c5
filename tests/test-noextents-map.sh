#!/usr/bin/env bash
# The noextents filter: a sparse disk maps as one run of data, as with nbdkit; without the filter
# the same disk has holes (so the test can tell); the data is unchanged.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/data" 64K
truncate -s 4M "$tmp/disk.img"
dd if="$tmp/data" of="$tmp/disk.img" bs=64K seek=10 conv=notrunc status=none

start_server file "$tmp/disk.img"
nbdinfo --map "$uri" | grep -q hole || fail "the disk has no holes without the filter"

same_served_as_nbdkit --filter=noextents file "$tmp/disk.img"
same_file "$tmp/disk.img" "$tmp/ours.out"
nbdinfo --map "$uri" | tee "$tmp/ours.map"
nbdinfo --map "$peer_uri" > "$tmp/nbdkit.map"
same_file "$tmp/nbdkit.map" "$tmp/ours.map"
[ "$(wc -l < "$tmp/ours.map")" -eq 1 ] && grep -Eq '^ *0 +4194304 +0 +data' "$tmp/ours.map" ||
    fail "not a single run of data"
echo OK
