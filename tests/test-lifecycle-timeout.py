#!/usr/bin/python3
# --timeout SECS: a client that connects and does not finish the handshake in time is dropped,
# so idle connections cannot pile up.  Without --timeout the limit is 10 seconds (as qemu-nbd);
# --timeout=0 means no limit.  Clients that do negotiate are not affected.
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, nbd_handle, run  # noqa: E402


def idle_client(path, wait=20):
    """Connects, reads the greeting, then says nothing. Returns seconds until the server hangs
    up, or None if it did not within `wait` seconds."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    start = time.monotonic()
    s.settimeout(wait)
    greeting = b""
    while len(greeting) < 18:
        chunk = s.recv(18 - len(greeting))
        check(chunk, "server closed before the greeting")
        greeting += chunk
    check_eq(greeting[:16], b"NBDMAGICIHAVEOPT", "greeting")
    try:
        rest = s.recv(1)
    except socket.timeout:
        return None
    finally:
        s.close()
    check_eq(rest, b"", "server sent something to an idle client")
    return time.monotonic() - start


def main():
    with Server(["memory", "1M"], options=["--timeout=1"]) as srv:
        took = idle_client(srv.sock)
        check(took is not None, "--timeout=1: idle client not dropped within 20 s")
        check(0.5 <= took <= 5, "--timeout=1: dropped after %.1f s" % took)
        # A real client, after waiting longer than the limit between connections, is fine.
        h = nbd_handle(srv.uri)
        time.sleep(1.5)
        check_eq(h.get_size(), 1 << 20, "negotiated client after the handshake limit")
        h.pwrite(b"x" * 512, 0)
        h.shutdown()

    with Server(["memory", "1M"], options=["--timeout", "500ms"]) as srv:
        took = idle_client(srv.sock)
        check(took is not None and took <= 4, "--timeout 500ms: dropped after %r s" % took)

    with Server(["memory", "1M"]) as srv:
        took = idle_client(srv.sock)
        check(took is not None, "default: idle client not dropped within 20 s")
        check(8 <= took <= 15, "default limit should be 10 s, was %.1f s" % took)

    with Server(["memory", "1M"], options=["--timeout=0"]) as srv:
        # Longer than the default limit.
        check(idle_client(srv.sock, wait=12) is None, "--timeout=0 should not drop idle clients")


run(main)
