#!/usr/bin/python3
# -r serves a writable plugin read-only: the export says so, writes, zeroes and trims fail with
# EPERM (sent with libnbd's strict mode off, so the server's check is what is tested), and the
# data is untouched.  Reads, cache, flush and block status still work.
import errno
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from cases import check_readonly_errors  # noqa: E402
from harness import Server, check, check_eq, expect_errno, extents, nbd_handle, run  # noqa: E402


def main():
    with Server(["memory", "1M"], options=["-r"]) as srv:
        strict = nbd_handle(srv.uri)
        check(strict.is_read_only(), "is_read_only with -r")
        # libnbd itself refuses to write to a read-only export.
        expect_errno(errno.EPERM, strict.pwrite, b"x" * 512, 0, what="strict libnbd write")
        strict.shutdown()

        h = nbd_handle(srv.uri, strict=False)
        check_readonly_errors(h)
        expect_errno(errno.EPERM, h.pwrite, b"x" * 512, 0, nbd.CMD_FLAG_FUA, what="FUA write")
        expect_errno(errno.EPERM, h.zero, 512, 0, nbd.CMD_FLAG_NO_HOLE, what="NO_HOLE zero")
        check_eq(h.pread(1 << 20, 0), bytes(1 << 20), "contents")
        if h.can_cache():
            h.cache(1 << 20, 0)
        if h.can_flush():
            h.flush()
        ext = extents(h, 1 << 20, 0)
        check(sum(n for n, _ in ext) >= 1 << 20, "block status on read-only export: %r" % ext)
        h.shutdown()


run(main)
