#!/usr/bin/env bash
# The swab filter: the pattern plugin's 64-bit big-endian offsets read as little-endian ones
# with swab-bits=64, the same bytes as nbdkit serves for every swab-bits; writes are swapped on
# the way down; unaligned requests fail with EINVAL; bad values name the parameter.
source "$(dirname "$0")/lib/functions.sh"

for bits in 8 16 32 64; do
    same_served_as_nbdkit --filter=swab pattern 1M swab-bits=$bits
done
python3 -c '
import struct, sys
data = open(sys.argv[1], "rb").read()
for i in range(0, len(data), 8):
    assert struct.unpack("<Q", data[i:i + 8])[0] == i, i
' "$tmp/ours.out" || fail "swab-bits=64 does not make the pattern little-endian"

start_server --filter=swab memory 1M swab-bits=32
nbdsh -u "$uri" -c '
import errno, nbd
h.pwrite(b"abcdefgh", 8)
assert h.pread(8, 8) == b"abcdefgh"
h2 = nbd.NBD()
h2.set_strict_mode(0)
h2.connect_uri(h.get_uri())
try:
    h2.pread(4, 2)
    assert False, "unaligned read succeeded"
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
'
# Writes reach the file swapped.
truncate -s 1M "$tmp/disk.img"
start_server --filter=swab file "$tmp/disk.img" swab-bits=32
nbdsh -u "$uri" -c 'h.pwrite(b"abcdefgh", 0)'
[ "$(head -c 8 "$tmp/disk.img")" = "dcbahgfe" ] || fail "the file holds $(head -c 8 "$tmp/disk.img")"
bad_args --filter=swab memory 1M swab-bits=24 -- swab-bits=24
echo OK
