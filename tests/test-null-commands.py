#!/usr/bin/python3
# The null plugin: a disk of the given size that reads as zeroes and discards writes.  Every
# command succeeds within range, block status says hole+zero everywhere, and requests past the
# end fail with the same errors as any other plugin.
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from cases import check_range_errors  # noqa: E402
from harness import Server, check, check_eq, extents, nbd_handle, run  # noqa: E402

SIZE = 1 << 20


def main():
    with Server(["null", "size=%d" % SIZE]) as srv:
        h = nbd_handle(srv.uri)
        check_eq(h.get_size(), SIZE, "size")
        check(not h.is_read_only(), "null accepts writes")
        for cap in ("can_trim", "can_zero", "can_flush", "can_fua", "can_multi_conn"):
            check(getattr(h, cap)(), "null should report %s" % cap)

        h.pwrite(b"\xff" * 65536, 0)
        h.pwrite(b"\xff" * 512, 4096, nbd.CMD_FLAG_FUA)
        check_eq(h.pread(65536, 0), bytes(65536), "null reads zeroes after a write")
        h.flush()
        h.trim(65536, 0)
        h.zero(65536, 0)
        h.zero(65536, 0, nbd.CMD_FLAG_NO_HOLE)
        if h.can_fast_zero():
            h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO)
        if h.can_cache():
            h.cache(SIZE, 0)
        ext = extents(h, SIZE, 0)
        check(sum(n for n, _ in ext) >= SIZE, "extents cover the disk: %r" % ext)
        check(all(f == nbd.STATE_HOLE | nbd.STATE_ZERO for _, f in ext),
              "null is all hole+zero: %r" % ext)
        check_eq(h.pread(SIZE, 0), bytes(SIZE), "whole disk")

        bad = nbd_handle(srv.uri, strict=False)
        check_range_errors(bad, SIZE)
        bad.shutdown()
        h.shutdown()

    # The magic parameter is the size, and size 0 is a valid empty disk.
    with Server(["null", "64M"]) as srv:
        h = nbd_handle(srv.uri)
        check_eq(h.get_size(), 64 << 20, "null 64M size")
        h.shutdown()


run(main)
