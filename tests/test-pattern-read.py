#!/usr/bin/python3
# The pattern plugin: a read-only disk where each 8-byte word holds its own offset, big-endian.
# Reads at aligned and unaligned offsets return exactly that; block status says data; writes are
# refused with EPERM.
import errno
import os
import struct
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, expect_errno, extents, nbd_handle, run  # noqa: E402

SIZE = 1 << 30


def expected(offset, length):
    start = offset & ~7
    words = b"".join(struct.pack(">Q", o) for o in range(start, offset + length + 8, 8))
    return words[offset - start:offset - start + length]


def main():
    with Server(["pattern", "1G"]) as srv:
        h = nbd_handle(srv.uri)
        check_eq(h.get_size(), SIZE, "size")
        check(h.is_read_only(), "pattern is read-only")
        for offset, length in ((0, 4096), (8, 8), (13, 100), (SIZE - 4096, 4096),
                               (123456789, 65536), (SIZE - 3, 3)):
            check_eq(h.pread(length, offset), expected(offset, length),
                     "pattern at %d+%d" % (offset, length))
        ext = extents(h, 1 << 20, 0)
        check(ext and ext[0][1] == 0, "pattern is data: %r" % ext)
        h.shutdown()
        bad = nbd_handle(srv.uri, strict=False)
        expect_errno(errno.EPERM, bad.pwrite, b"x" * 512, 0, what="write to pattern")
        expect_errno(errno.EINVAL, bad.pread, 512, SIZE, what="read past the end")
        bad.shutdown()


run(main)
