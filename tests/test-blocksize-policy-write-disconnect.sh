#!/usr/bin/env bash
# blocksize-write-disconnect=64K (nbdkit 1.34 and later; 1.32 does not have it): a write of up
# to 64K is served; a longer one drops the client, under either error policy (the client gets an
# error, then its handle is dead), writes nothing, and other and later clients are served.
# The advertised maximum is 64K; longer zeroes pass, longer reads pass under allow and get
# EINVAL under error.
source "$(dirname "$0")/lib/functions.sh"

for policy in allow error; do
    start_server --filter=blocksize-policy memory 1M blocksize-write-disconnect=64K \
        blocksize-error-policy=$policy
    POLICY=$policy nbdsh -u "$uri" -c '
import errno, nbd, os
h.set_strict_mode(0)
other = nbd.NBD()
other.connect_uri(h.get_uri())
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 65536, h.get_block_size(nbd.SIZE_MAXIMUM)
h.pwrite(b"a" * 65536, 0)
h.zero(128 << 10, 65536)
try:
    assert len(h.pread(128 << 10, 0)) == 128 << 10
    assert os.environ["POLICY"] == "allow", "a read over the maximum passed"
except nbd.Error as e:
    assert os.environ["POLICY"] == "error" and e.errnum == errno.EINVAL, e
try:
    h.pwrite(b"b" * (65536 + 512), 0)
    assert False, "the oversize write succeeded"
except nbd.Error as e:
    print("oversize write:", e)
try:
    h.pread(512, 0)
    assert False, "the client was not dropped"
except nbd.Error as e:
    print("after it:", e)
assert other.pread(65536, 0) == b"a" * 65536, "the oversize write changed the disk"
'
    nbdsh -u "$uri" -c 'assert h.pread(4, 65532) == b"aaaa"'
    echo "policy $policy: dropped the client, served the others"
done
echo OK
