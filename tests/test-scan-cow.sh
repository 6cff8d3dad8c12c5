#!/usr/bin/env bash
# The scan filter in front of cow with cow-on-cache=true: soon after a client connects, the whole
# disk has been prefetched into the overlay, so a later change to the file below does not show;
# data read through it is the file's, as with nbdkit serving the same stack.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/disk.img" 8M
same_served_as_nbdkit --filter=scan --filter=cow file "$tmp/disk.img" cow-on-cache=true
same_file "$tmp/disk.img" "$tmp/ours.out"

cp "$tmp/disk.img" "$tmp/orig.img"
start_server --filter=scan --filter=cow file "$tmp/disk.img" cow-on-cache=true scan-size=1M
# The first client holds its connection while the scan runs, then the file changes below.
nbdsh -u "$uri" -c 'import time; time.sleep(2)'
dd if=/dev/zero of="$tmp/disk.img" bs=1M seek=6 count=2 conv=notrunc status=none
rm -f "$tmp/back"
nbdcopy "$uri" "$tmp/back"
same_file "$tmp/orig.img" "$tmp/back"
bad_args --filter=scan memory 1M scan-size=3M -- scan-size=3M
echo OK
