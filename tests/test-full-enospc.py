#!/usr/bin/python3
# The full plugin: reads as zeroes, block status says hole+zero, and everything that would store
# data fails as on a full disk: writes, trims and zeroes with ENOSPC, fast zeroes at once with
# ENOTSUP. Its size is required.
import errno
import os
import subprocess
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import (Server, check, check_eq, expect_errno, extents, nbd_handle, run,  # noqa: E402
                     server_command)

SIZE = 1 << 20


def main():
    with Server(["full", "1M"]) as srv:
        h = nbd_handle(srv.uri)
        check_eq(h.get_size(), SIZE, "size")
        check(not h.is_read_only(), "full is writable, in name")
        check(h.can_trim() and h.can_zero() and h.can_fast_zero(), "trim, zero and fast zero offered")
        check_eq(h.pread(SIZE, 0), bytes(SIZE), "full reads zeroes")
        ext = extents(h, SIZE, 0)
        check(ext and all(f == nbd.STATE_HOLE | nbd.STATE_ZERO for _, f in ext), "hole+zero: %r" % ext)
        expect_errno(errno.ENOSPC, h.pwrite, b"x" * 512, 0, what="write")
        expect_errno(errno.ENOSPC, h.trim, 512, 4096, what="trim")
        expect_errno(errno.ENOSPC, h.zero, 512, 4096, what="zero")
        expect_errno(errno.ENOTSUP, h.zero, 512, 4096, nbd.CMD_FLAG_FAST_ZERO, what="fast zero")
        # Still usable after the errors, and nothing was stored.
        check_eq(h.pread(512, 0), bytes(512), "still zeroes")
        h.shutdown()

    # Without a size, the server refuses to start.
    r = subprocess.run(server_command() + ["-f", "-U", "/nonexistent/sock", "full"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    check_eq(r.returncode, 1, "exit status without size")
    check(b"size" in r.stderr, "the message names size: %r" % r.stderr)


run(main)
