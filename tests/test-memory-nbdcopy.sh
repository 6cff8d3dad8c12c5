#!/usr/bin/env bash
# nbdcopy 64 MiB of random data into a memory export and back out, then compare byte for byte;
# also copy with several connections and requests in flight, and copy a sparse file (nbdcopy
# skips zeroes, so the copy must still read back as zeroes there).
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/in.img" 64M
start_server memory 64M

nbdcopy "$tmp/in.img" "$uri"
nbdcopy "$uri" "$tmp/out.img"
same_file "$tmp/in.img" "$tmp/out.img"

nbdcopy --connections=4 --requests=16 --request-size=1048576 "$uri" "$tmp/out2.img"
same_file "$tmp/in.img" "$tmp/out2.img"

# A sparse source over the old data: the zeroes must replace it.
truncate -s 64M "$tmp/sparse.img"
dd if=/dev/urandom of="$tmp/sparse.img" bs=1M seek=7 count=3 conv=notrunc status=none
nbdcopy "$tmp/sparse.img" "$uri"
nbdcopy "$uri" "$tmp/out3.img"
same_file "$tmp/sparse.img" "$tmp/out3.img"
echo OK
