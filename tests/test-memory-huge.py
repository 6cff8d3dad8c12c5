#!/usr/bin/python3
# Sparse memory disks at the limits of the protocol: `memory 4E` (4 EiB) and
# `memory 9223372036854775807` (2^63-1 bytes, the largest size).  The size is reported exactly,
# the last sector can be written and read back, the start is still zero, and block status and
# requests past the end behave.
# (Passes against nbdkit 1.32 too.)
import errno
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import (  # noqa: E402
    Server, check, check_eq, expect_errno, extents, nbd_handle, run)

EiB = 1 << 60


def exercise(size_arg, size):
    with Server(["memory", size_arg]) as srv:
        h = nbd_handle(srv.uri)
        check_eq(h.get_size(), size, "size of memory %s" % size_arg)
        last = size - 512
        sector = os.urandom(512)
        h.pwrite(sector, last)
        check_eq(h.pread(512, last), sector, "last sector of memory %s" % size_arg)
        h.pwrite(b"middle", size // 2)
        check_eq(h.pread(6, size // 2), b"middle", "middle of memory %s" % size_arg)
        check_eq(h.pread(4096, 0), bytes(4096), "start of memory %s" % size_arg)
        h.zero(512, last)
        check_eq(h.pread(512, last), bytes(512), "zeroed last sector")
        h.pwrite(sector, last, nbd.CMD_FLAG_FUA)
        ext = extents(h, 1 << 31, 1 << 40)
        check(ext and ext[0][1] == nbd.STATE_HOLE | nbd.STATE_ZERO, "far hole: %r" % ext)
        h.trim(1 << 30, last - (1 << 30) + 512)
        check_eq(h.pread(512, last), bytes(512), "trimmed last sector")
        h.shutdown()
        bad = nbd_handle(srv.uri, strict=False)
        expect_errno(errno.EINVAL, bad.pread, 1024, last, what="read across the end")
        expect_errno(errno.ENOSPC, bad.pwrite, bytes(1024), last, what="write across the end")
        bad.shutdown()


def main():
    exercise("4E", 4 * EiB)
    exercise("9223372036854775807", (1 << 63) - 1)


run(main)
