#!/usr/bin/python3
# The error filter, with the same command lines nbdkit takes (NBDFORGE=nbdkit runs it there):
# - error-pread-rate=25%: over 2000 reads the failures (EIO, the default) stay within six
#   standard deviations of 500, and every read that succeeds returns the data;
# - error=ENOSPC with error-pwrite-rate=100%: every write fails with ENOSPC; trims, flushes and
#   block status, which have no rate, always succeed;
# - error-file=: errors only while the trigger file exists (created, then removed);
# - a bad error name or rate stops the server before it listens, naming parameter and value.
import errno
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, expect_errno, nbd_handle, run, server_command, tmpdir  # noqa: E402

N = 2000
RATE = 0.25


def main():
    import nbd

    with Server(["--filter=error", "memory", "1M", "error-pread-rate=25%", "error=ENOSPC",
                 "error-pread=EIO", "error-pwrite-rate=100%"]) as srv:
        h = nbd_handle(srv.uri)
        failed = 0
        for i in range(N):
            try:
                check_eq(h.pread(512, (i % 2048) * 512), bytes(512), "data of a read that passed")
            except nbd.Error as e:
                check_eq(e.errnum, errno.EIO, "errno of an injected read error")
                failed += 1
        sd = (N * RATE * (1 - RATE)) ** 0.5
        print("%d of %d reads failed (expected %d +/- %.0f)" % (failed, N, N * RATE, sd))
        check(abs(failed - N * RATE) < 6 * sd, "failure count %d is far from %d" % (failed, N * RATE))
        for _ in range(20):
            expect_errno(errno.ENOSPC, h.pwrite, b"x" * 512, 0)
        h.trim(4096, 0)
        h.flush()
        h.block_status(4096, 0, lambda *a: 0)
        h.shutdown()

    trigger = os.path.join(tmpdir(), "trigger")
    with Server(["--filter=error", "memory", "1M", "error-rate=1", "error-file=" + trigger]) as srv:
        h = nbd_handle(srv.uri)
        h.pwrite(b"a" * 512, 0)
        open(trigger, "w").close()
        expect_errno(errno.EIO, h.pread, 512, 0)
        expect_errno(errno.EIO, h.pwrite, b"b" * 512, 0)
        expect_errno(errno.EIO, h.zero, 512, 0)
        os.unlink(trigger)
        check_eq(h.pread(512, 0), b"a" * 512, "read once the trigger file is gone")
        h.shutdown()

    for bad in ["error=EFOO", "error-zero-rate=150%", "error-rate=often"]:
        p = subprocess.run(server_command() + ["-f", "-U", os.path.join(tmpdir(), "s"), "--filter=error",
                                               "memory", "1M", bad], capture_output=True, text=True, timeout=30)
        check(p.returncode != 0, "%s: the server started" % bad)
        key, value = bad.split("=")
        check(key in p.stderr and value in p.stderr, "%s: error does not name it: %s" % (bad, p.stderr))


run(main)
