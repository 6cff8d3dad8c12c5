#!/usr/bin/python3
# The limit filter (nbdkit's command lines; NBDFORGE=nbdkit runs it there):
# - default limit=1: while one client is connected a second is refused, and served again once
#   the first has gone;
# - limit=2: two at once, not three;
# - limit=0: no limit (five at once);
# - limit=many stops the server before it listens, naming the parameter and the value.
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, nbd_handle, run, server_command, tmpdir  # noqa: E402


def can_connect(uri):
    import nbd
    try:
        h = nbd_handle(uri)
    except nbd.Error:
        return None
    h.pread(1, 0)
    return h


def main():
    with Server(["--filter=limit", "memory", "1M"]) as srv:
        first = can_connect(srv.uri)
        check(first is not None, "the first client was refused")
        check(can_connect(srv.uri) is None, "a second client was let in at limit=1")
        first.shutdown()
        del first
        time.sleep(0.5)   # the server notices the first client has gone
        again = can_connect(srv.uri)
        check(again is not None, "not served again after the first client left")
        again.shutdown()

    with Server(["--filter=limit", "memory", "1M", "limit=2"]) as srv:
        two = [can_connect(srv.uri), can_connect(srv.uri)]
        check(None not in two, "two clients at limit=2")
        check(can_connect(srv.uri) is None, "a third client was let in at limit=2")
        for h in two:
            h.shutdown()

    with Server(["--filter=limit", "memory", "1M", "limit=0"]) as srv:
        five = [can_connect(srv.uri) for _ in range(5)]
        check(None not in five, "limit=0 refused a client")
        for h in five:
            h.shutdown()

    p = subprocess.run(server_command() + ["-f", "-U", os.path.join(tmpdir(), "s"), "--filter=limit", "memory",
                                           "1M", "limit=many"], capture_output=True, text=True, timeout=30)
    check(p.returncode != 0 and "limit" in p.stderr, "limit=many: %r" % p.stderr)
    if os.path.basename(server_command()[0]) != "nbdkit":   # nbdkit 1.32 does not name the value
        check("limit=many" in p.stderr, "the error does not name the value: %r" % p.stderr)


run(main)
