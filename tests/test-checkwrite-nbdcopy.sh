#!/usr/bin/env bash
# The checkwrite filter: copying an export onto itself with nbdcopy and qemu-img succeeds (as with
# nbdkit), the file is never written, and a write of different data fails with EIO.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/data" 1M
truncate -s 8M "$tmp/disk.img"
dd if="$tmp/data" of="$tmp/disk.img" bs=1M seek=3 conv=notrunc status=none
cp "$tmp/disk.img" "$tmp/orig.img"
chmod a-w "$tmp/disk.img"

start_nbdkit --filter=checkwrite file "$tmp/disk.img"
nbdcopy "$peer_uri" "$peer_uri"
start_server --filter=checkwrite file "$tmp/disk.img"
nbdcopy "$uri" "$uri"
qemu-img convert -n -f raw -O raw "$uri" "$uri"
nbdsh -u "$uri" -c '
import errno, nbd
h.pwrite(h.pread(4096, 3 << 20), 3 << 20)
h.zero(1 << 20, 0)
for call in (lambda: h.pwrite(b"different", 3 << 20), lambda: h.zero(4096, 3 << 20)):
    try:
        call()
        assert False, "a change succeeded"
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
'
same_file "$tmp/orig.img" "$tmp/disk.img"
echo OK
