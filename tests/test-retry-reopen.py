#!/usr/bin/python3
# The retry filter over a backend that fails for a while: the error filter below it fails every
# request while a trigger file exists (nbdkit's command lines; NBDFORGE=nbdkit runs it there).
# - the trigger is removed 1.5 s into a read: the read is retried (after 1 s, then 2 s) on a
#   reopened layer below and succeeds with the right data, taking at least 1.5 s;
# - retries=1 retry-exponential=no and a trigger that stays: the read fails with EIO after one
#   retry, about 1 s;
# - retry-readonly=yes: after the first retry the layer below is reopened read-only, so the
#   read succeeds but a later write fails with EPERM (EROFS on the wire), which proves the reopen.
import errno
import os
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, expect_errno, nbd_handle, run, tmpdir  # noqa: E402


def stack(trigger, *params):
    return ["--filter=retry", "--filter=error", "memory", "1M", "error-rate=100%",
            "error-file=" + trigger, "retry-delay=1"] + list(params)


def remove_later(path, seconds):
    t = threading.Timer(seconds, os.unlink, [path])
    t.start()
    return t


def main():
    trigger = os.path.join(tmpdir(), "trigger")

    with Server(stack(trigger)) as srv:
        h = nbd_handle(srv.uri)
        h.pwrite(b"retry me" * 64, 4096)
        open(trigger, "w").close()
        timer = remove_later(trigger, 1.5)
        start = time.monotonic()
        check_eq(h.pread(512, 4096), b"retry me" * 64, "data read after retries")
        took = time.monotonic() - start
        timer.join()
        check(1.5 <= took < 20, "the read took %.1f s; it should have waited for the trigger" % took)
        h.shutdown()

    with Server(stack(trigger, "retries=1", "retry-exponential=no")) as srv:
        h = nbd_handle(srv.uri)
        open(trigger, "w").close()
        start = time.monotonic()
        expect_errno(errno.EIO, h.pread, 512, 0)
        took = time.monotonic() - start
        check(0.9 <= took < 5, "one retry after 1 s, took %.1f s" % took)
        os.unlink(trigger)
        h.shutdown()

    with Server(stack(trigger, "retry-readonly=yes")) as srv:
        h = nbd_handle(srv.uri)
        h.pwrite(b"w" * 512, 0)
        open(trigger, "w").close()
        timer = remove_later(trigger, 0.5)
        check_eq(h.pread(512, 0), b"w" * 512, "read after a read-only reopen")
        timer.join()
        expect_errno(errno.EPERM, h.pwrite, b"v" * 512, 0)
        h.shutdown()


run(main)
