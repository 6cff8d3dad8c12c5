#!/usr/bin/python3
# The exitlast filter (nbdkit's command line; NBDFORGE=nbdkit runs it there):
# - before any client the server keeps running (and a bare connection that never reaches the
#   handshake, as the readiness probe makes, is no client);
# - with two clients, the first leaving does not stop it;
# - when the last one leaves, the server exits by itself, with status 0, within a few seconds.
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, nbd_handle, run  # noqa: E402


def exited_within(srv, seconds):
    try:
        srv.proc.wait(seconds)
        return True
    except Exception:
        return False


def main():
    srv = Server(["--filter=exitlast", "memory", "1M"])
    time.sleep(1.5)
    check(srv.alive(), "the server exited before its first client")
    a = nbd_handle(srv.uri)
    b = nbd_handle(srv.uri)
    a.pwrite(b"x" * 512, 0)
    a.shutdown()
    del a
    check(not exited_within(srv, 1.5), "the server exited while a client was still connected")
    check_eq(b.pread(512, 0), b"x" * 512, "the remaining client is served")
    b.shutdown()
    del b
    check(exited_within(srv, 10), "the server did not exit after its last client left")
    check_eq(srv.proc.returncode, 0, "exit status")
    srv.stop()


run(main)
