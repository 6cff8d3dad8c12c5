#!/usr/bin/python3
# The ones plugin: every byte reads as 0xff, or as byte=; writes, trims and zeroes succeed and
# change nothing; block status says data. Its size defaults to 0.
#
# Fails against nbdkit 1.32, which has no ones plugin (it appeared in nbdkit 1.36).
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import Server, check, check_eq, extents, nbd_handle, run  # noqa: E402


def main():
    with Server(["ones"]) as srv:
        h = nbd_handle(srv.uri)
        check_eq(h.get_size(), 0, "default size")
        h.shutdown()

    with Server(["ones", "1M"]) as srv:
        h = nbd_handle(srv.uri)
        check_eq(h.get_size(), 1 << 20, "size")
        check_eq(h.pread(1 << 20, 0), b"\xff" * (1 << 20), "all ones")
        h.pwrite(b"\0" * 4096, 0, nbd.CMD_FLAG_FUA)
        h.zero(65536, 0)
        h.trim(65536, 65536)
        if h.can_fast_zero():
            h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)
        h.flush()
        check_eq(h.pread(4096, 0), b"\xff" * 4096, "writes are discarded")
        ext = extents(h, 1 << 20, 0)
        check(ext and all(f == 0 for _, f in ext), "all data: %r" % ext)
        h.shutdown()

    for text, byte in (("0x55", 0x55), ("0252", 0o252), ("7", 7)):
        with Server(["ones", "size=4096", "byte=" + text]) as srv:
            h = nbd_handle(srv.uri)
            check_eq(h.pread(4096, 0), bytes([byte]) * 4096, "byte=" + text)
            h.shutdown()


run(main)
