#!/usr/bin/env bash
# The readahead filter in front of cow with cow-on-cache=true: sequential reads prefetch what
# follows into the overlay, so that after reading the start of the disk, a change to the file
# below no longer shows in the prefetched part (it was copied before the change); the data read
# is the file's, as with nbdkit serving the same stack.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/disk.img" 8M
same_served_as_nbdkit --filter=readahead --filter=cow file "$tmp/disk.img" cow-on-cache=true
same_file "$tmp/disk.img" "$tmp/ours.out"

cp "$tmp/disk.img" "$tmp/orig.img"
start_server --filter=readahead --filter=cow file "$tmp/disk.img" cow-on-cache=true cow-block-size=64k
nbdsh -u "$uri" -c '
for off in range(0, 1 << 20, 65536):
    h.pread(65536, off)
'
sleep 1   # let the last prefetch finish
# Overwrite the next megabyte of the file behind the server's back.
dd if=/dev/zero of="$tmp/disk.img" bs=1M seek=1 count=1 conv=notrunc status=none
nbdsh -u "$uri" -c 'open("'"$tmp/after"'", "wb").write(h.pread(65536, 1 << 20))'
cmp -s "$tmp/after" <(dd if="$tmp/orig.img" bs=64k skip=16 count=1 status=none) ||
    fail "the data after the reads was not prefetched into the overlay"
echo OK
