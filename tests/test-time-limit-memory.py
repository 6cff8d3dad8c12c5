#!/usr/bin/python3
# The time-limit filter: with time-limit=2 a client is served normally for two seconds; its
# first request after that fails with ESHUTDOWN and the server drops it; a new client is
# served again. A bad value stops the server, naming parameter and value.
import errno
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, nbd_handle, run, server_command, tmpdir  # noqa: E402


def main():
    import nbd

    with Server(["--filter=time-limit", "memory", "1M", "time-limit=2"]) as srv:
        h = nbd_handle(srv.uri)
        h.pwrite(b"t" * 512, 0)
        check_eq(h.pread(512, 0), b"t" * 512, "read within the limit")
        time.sleep(2.5)
        try:
            h.pread(512, 0)
            check(False, "a read past the time limit succeeded")
        except nbd.Error as e:
            # ESHUTDOWN in the reply, or the connection already closed under the request.
            check(e.errnum in (errno.ESHUTDOWN, errno.ENOTCONN, errno.ECONNRESET, None),
                  "errno past the limit: %s (%s)" % (e.errnum, e.string))
        try:
            h.pread(512, 0)
            dropped = False
        except nbd.Error:
            dropped = True
        check(dropped, "the client was not dropped after its time")
        fresh = nbd_handle(srv.uri)
        check_eq(fresh.pread(512, 0), b"t" * 512, "a new client is served")
        fresh.shutdown()

    p = subprocess.run(server_command() + ["-f", "-U", os.path.join(tmpdir(), "s"), "--filter=time-limit",
                                           "memory", "1M", "time-limit=forever"], capture_output=True, text=True,
                       timeout=30)
    check(p.returncode != 0 and "time-limit=forever" in p.stderr, "bad value: %r" % p.stderr)


run(main)
