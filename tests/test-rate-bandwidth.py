#!/usr/bin/python3
# The rate filter (nbdkit's command line; NBDFORGE=nbdkit runs it there): rate=8M is 8 Mibit/s,
# 1 MiB/s of data, with 2 s of burst. Reading 5 MiB then takes about 3 s (at least 2.5, not 15);
# writing 5 MiB likewise, reads and writes having buckets of their own; zeroing 32 MiB carries
# no data and is not slowed; the data read back is what was written.
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, nbd_handle, run  # noqa: E402

MIB = 1 << 20
CHUNK = 256 << 10


def main():
    with Server(["--filter=rate", "memory", "64M", "rate=8M"]) as srv:
        h = nbd_handle(srv.uri)
        data = os.urandom(5 * MIB)
        start = time.monotonic()
        for off in range(0, len(data), CHUNK):
            h.pwrite(data[off:off + CHUNK], off)
        took = time.monotonic() - start
        print("wrote 5 MiB in %.1f s" % took)
        check(2.5 <= took < 15, "writing 5 MiB at 1 MiB/s took %.1f s" % took)

        start = time.monotonic()
        back = b"".join(h.pread(CHUNK, off) for off in range(0, len(data), CHUNK))
        took = time.monotonic() - start
        print("read 5 MiB in %.1f s" % took)
        check(2.5 <= took < 15, "reading 5 MiB at 1 MiB/s took %.1f s" % took)
        check_eq(back == data, True, "data read back equals data written")

        start = time.monotonic()
        h.zero(32 * MIB, 16 * MIB)
        check(time.monotonic() - start < 1, "zeroing was slowed down")
        h.shutdown()


run(main)
