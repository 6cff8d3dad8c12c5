#!/usr/bin/python3
# The spinning filter over a 64 MiB memory disk: the export is rotational; 64 sequential 64 KiB
# reads take well under a second, while alternating reads between the two ends of the disk each
# pay a long seek (max-seek-time=0.2: 8 of them take at least 1.2 s); with heads=2 and
# separate-heads=true, alternating between the two halves costs nothing, as each head stays
# in its half.
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, nbd_handle, run  # noqa: E402

MIB = 1 << 20


def timed(fn):
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def main():
    with Server(["--filter=spinning", "memory", "64M", "half-seek-time=0.1", "max-seek-time=0.2"]) as srv:
        h = nbd_handle(srv.uri)
        check(h.is_rotational(), "the export is not rotational")
        took = timed(lambda: [h.pread(65536, i * 65536) for i in range(64)])
        check(took < 1.0, "sequential reads took %.2f s" % took)
        took = timed(lambda: [h.pread(4096, (i % 2) * (64 * MIB - 4096)) for i in range(8)])
        check(took >= 1.2, "8 seeks across the disk took only %.2f s" % took)
        h.shutdown()

    with Server(["--filter=spinning", "memory", "64M", "heads=2", "separate-heads=true",
                 "max-seek-time=0.2"]) as srv:
        h = nbd_handle(srv.uri)
        h.pread(4096, 0)
        h.pread(4096, 32 * MIB)
        took = timed(lambda: [h.pread(4096, (i % 2) * 32 * MIB + (i // 2 + 1) * 4096) for i in range(8)])
        check(took < 0.5, "separate heads still seeked: %.2f s" % took)
        h.shutdown()


run(main)
