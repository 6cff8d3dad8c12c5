#!/usr/bin/python3
# --timeout bounds the whole handshake, not each read: with --timeout=3, a client that sends
# its client flags and an option header announcing 200 bytes of option data, and then trickles
# that data one byte per second (so the connection is never idle for long), must be dropped
# about 3 s after it connected: the server closes the connection after 2.5 s at the earliest and
# before 6 s at the latest.  A client that sends nothing at all after the greeting is dropped in
# the same window.  Real clients that negotiate promptly are not affected, and the server keeps
# serving.
#
# Fails against nbdkit 1.32: it has no --timeout option (exits with a usage error).
import os
import select
import struct
import sys
import time

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, nbd_handle, run  # noqa: E402
from nbdwire import IHAVEOPT, OPT_INFO, Client  # noqa: E402

TIMEOUT = 3
EARLIEST = 2.5
LATEST = 6.0
GIVE_UP = 12.0   # stop trickling after this long, whatever the server does


def closed_now(sock, wait):
    """Waits up to `wait` seconds; True if the server closed the connection (EOF or reset)."""
    ready, _, _ = select.select([sock], [], [], wait)
    if not ready:
        return False
    try:
        data = sock.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return True
    if data:
        raise AssertionError("server sent %r in the middle of an option" % data[:32])
    return True


def dropped_after(srv, trickle):
    """Connects, reads the greeting, and then either trickles an option (trickle=True) or stays
    silent.  Returns seconds from connect until the server closed, or None after GIVE_UP."""
    c = Client(srv.sock)
    start = time.monotonic()
    try:
        c.handshake()
        if trickle:
            c.send(struct.pack(">QII", IHAVEOPT, OPT_INFO, 200))
        sent = 0
        while time.monotonic() - start < GIVE_UP:
            if closed_now(c.sock, 1.0):
                print("%s client: closed after %.2f s (%d option bytes sent)"
                      % ("trickling" if trickle else "idle", time.monotonic() - start, sent))
                return time.monotonic() - start
            if trickle:
                try:
                    c.send(b"\0")
                    sent += 1
                except (BrokenPipeError, ConnectionResetError):
                    return time.monotonic() - start
        print("%s client: still connected after %.0f s (%d option bytes sent)"
              % ("trickling" if trickle else "idle", GIVE_UP, sent))
        return None
    finally:
        c.close()


def still_serving(srv):
    h = nbd_handle(srv.uri)
    h.pwrite(b"t" * 4096, 0)
    check(h.pread(4096, 0) == b"t" * 4096, "read back on a new connection")
    h.shutdown()


def within_window(took, who):
    if took is None:
        return "--timeout=%d: %s client still connected after %.0f s" % (TIMEOUT, who, GIVE_UP)
    if not EARLIEST <= took < LATEST:
        return ("--timeout=%d: %s client dropped after %.2f s, want %.1f to %.1f s"
                % (TIMEOUT, who, took, EARLIEST, LATEST))
    return None


def main():
    with Server(["memory", "1M"], options=["--timeout=%d" % TIMEOUT]) as srv:
        still_serving(srv)
        # Both cases run before checking, so a failure reports both.
        problems = [within_window(dropped_after(srv, trickle=True), "trickling (1 byte/s)"),
                    within_window(dropped_after(srv, trickle=False), "idle")]
        still_serving(srv)
        check(srv.alive(), "server died")
        problems = [p for p in problems if p]
        check(not problems, "; ".join(problems))


run(main)
