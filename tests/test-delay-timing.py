#!/usr/bin/python3
# The delay filter, with nbdkit's command lines (NBDFORGE=nbdkit runs it there):
# - rdelay=300ms delays reads by at least 0.3 s, wdelay=500ms writes, zeroes and trims by at
#   least 0.5 s; flush is not delayed; delay-open=300ms delays the connection;
# - delay-zero=10 delay-fast-zero=false: a fast zero fails at once with ENOTSUP (and fast zero
#   is advertised), an ordinary zero would wait;
# - a long delay does not hold up shutdown: with rdelay=60 and a read waiting, SIGTERM ends the
#   read (with an error) in a few seconds, not a minute, and once the client has gone the server
#   exits with status 0.
import errno
import os
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, expect_errno, nbd_handle, run  # noqa: E402


def timed(fn, *args):
    start = time.monotonic()
    fn(*args)
    return time.monotonic() - start


def main():
    import nbd

    with Server(["--filter=delay", "memory", "1M", "rdelay=300ms", "wdelay=500ms", "delay-open=300ms"]) as srv:
        start = time.monotonic()
        h = nbd_handle(srv.uri)
        opened = time.monotonic() - start
        check(opened >= 0.3, "connecting took %.2f s, want at least 0.3 s" % opened)
        for what, fn, args, least in [("read", h.pread, (512, 0), 0.3),
                                      ("write", h.pwrite, (b"x" * 512, 0), 0.5),
                                      ("zero", h.zero, (512, 0), 0.5),
                                      ("trim", h.trim, (512, 0), 0.5)]:
            took = timed(fn, *args)
            check(least <= took < least + 5, "%s took %.2f s, want %.1f s" % (what, took, least))
        took = timed(h.flush)
        check(took < 0.3, "flush took %.2f s: it has no delay" % took)
        h.shutdown()

    with Server(["--filter=delay", "memory", "1M", "delay-zero=10", "delay-fast-zero=false"]) as srv:
        h = nbd_handle(srv.uri)
        check(h.can_fast_zero(), "fast zero is advertised")
        start = time.monotonic()
        expect_errno(errno.ENOTSUP, h.zero, 512, 0, nbd.CMD_FLAG_FAST_ZERO)
        check(time.monotonic() - start < 3, "the fast zero waited for the delay")
        h.shutdown()

    srv = Server(["--filter=delay", "memory", "1M", "rdelay=60"])
    h = nbd_handle(srv.uri)
    cookie = h.aio_pread(nbd.Buffer(512), 0)
    time.sleep(0.5)
    start = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    ended = None
    while ended is None and time.monotonic() - start < 20:
        try:
            h.poll(1)
            if h.aio_command_completed(cookie):
                ended = "succeeded"
        except nbd.Error as e:
            ended = "failed: %s" % e.string
    took = time.monotonic() - start
    check(ended is not None and ended != "succeeded", "the delayed read %s" % ended)
    check(took < 10, "the delayed read ended %.1f s after SIGTERM" % took)
    del h   # closes the connection
    check_eq(srv.proc.wait(30), 0, "exit status after SIGTERM")
    srv.stop()


run(main)
