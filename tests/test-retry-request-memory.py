#!/usr/bin/python3
# The retry-request filter over the error filter, whose read errors come and go with a trigger
# file (nbdkit's command lines; NBDFORGE=nbdkit runs it there):
# - the trigger is removed 1.5 s into a read: the read is tried again each second and succeeds;
# - retry-request-retries=1 and a trigger that stays: the read fails with EIO after one retry;
# - writes, which the error filter leaves alone here, are not delayed.
import errno
import os
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, expect_errno, nbd_handle, run, tmpdir  # noqa: E402


def main():
    trigger = os.path.join(tmpdir(), "trigger")
    base = ["--filter=retry-request", "--filter=error", "memory", "1M", "error-pread-rate=1",
            "error-pread-file=" + trigger, "retry-request-delay=1"]

    with Server(base + ["retry-request-retries=5"]) as srv:
        h = nbd_handle(srv.uri)
        h.pwrite(b"again!" * 100 + b"..", 1024)
        open(trigger, "w").close()
        timer = threading.Timer(1.5, os.unlink, [trigger])
        timer.start()
        start = time.monotonic()
        check_eq(h.pread(602, 1024), b"again!" * 100 + b"..", "data after retries")
        took = time.monotonic() - start
        timer.join()
        check(1.5 <= took < 10, "the read took %.1f s" % took)
        h.shutdown()

    with Server(base + ["retry-request-retries=1"]) as srv:
        h = nbd_handle(srv.uri)
        open(trigger, "w").close()
        start = time.monotonic()
        expect_errno(errno.EIO, h.pread, 512, 0)
        check(0.9 <= time.monotonic() - start < 5, "one retry after 1 s")
        start = time.monotonic()
        h.pwrite(b"x" * 512, 0)
        check(time.monotonic() - start < 0.5, "a write that works is not delayed")
        os.unlink(trigger)
        h.shutdown()


run(main)
