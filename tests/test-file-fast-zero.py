#!/usr/bin/python3
# NBD_CMD_FLAG_FAST_ZERO on the file plugin.  A writable file export advertises fast zero (as
# qemu-nbd does); a fast zero request then either zeroes the range or fails quickly with ENOTSUP
# leaving the data alone (the NBD spec's only allowed failure), and a plain zero always works.
# On a regular file on ext4/xfs/tmpfs zeroing is a fallocate call, so here it must succeed.
#
# Fails against nbdkit 1.32: its file plugin does not advertise fast zero (can_fast_zero false).
import errno
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import Server, check, check_eq, nbd_handle, run, tmpdir  # noqa: E402


def main():
    disk = os.path.join(tmpdir(), "disk.img")
    data = os.urandom(1 << 20)
    with open(disk, "wb") as f:
        f.write(data)

    with Server(["file", disk]) as srv:
        h = nbd_handle(srv.uri)
        check(h.can_fast_zero(), "a writable file export should advertise fast zero")
        try:
            h.zero(65536, 65536, nbd.CMD_FLAG_FAST_ZERO)
            want = data[:65536] + bytes(65536) + data[131072:]
        except nbd.Error as e:
            check_eq(e.errnum, errno.ENOTSUP, "errno of a failed fast zero")
            want = data
        check_eq(h.pread(1 << 20, 0), want, "contents after fast zero")
        with open(disk, "rb") as f:
            check_eq(f.read(), want, "file after fast zero")
        check_eq(want[65536:131072], bytes(65536), "fast zero of a regular file succeeded")
        h.shutdown()


run(main)
