#!/usr/bin/python3
# The pause filter's control socket (nbdkit's command line; NBDFORGE=nbdkit runs it there):
# - 'p' is answered 'P' only once the request already running has finished (a read delayed 2 s
#   by the delay filter below);
# - while paused a new read does not complete; 'r' is answered 'R' and the read then completes
#   with the right data;
# - an unknown command is answered 'X'.
import os
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, nbd_handle, run, tmpdir  # noqa: E402


def command(ctl, byte):
    ctl.sendall(byte)
    return ctl.recv(1)


def in_thread(fn, *args):
    result = {}

    def body():
        result["value"] = fn(*args)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, result


def main():
    control = os.path.join(tmpdir(), "ctl")
    with Server(["--filter=pause", "--filter=delay", "memory", "1M", "pause-control=" + control,
                 "rdelay=2"]) as srv:
        h = nbd_handle(srv.uri)
        h.pwrite(b"p" * 512, 0)
        ctl = socket.socket(socket.AF_UNIX)
        ctl.connect(control)

        slow, _ = in_thread(h.pread, 512, 0)
        time.sleep(0.3)
        start = time.monotonic()
        check_eq(command(ctl, b"p"), b"P", "answer to pause")
        waited = time.monotonic() - start
        check(waited >= 1.0, "P came after %.2f s, before the running read finished" % waited)
        slow.join(10)

        other = nbd_handle(srv.uri)
        held, result = in_thread(other.pread, 512, 0)
        held.join(3.5)
        check(held.is_alive(), "a read completed while paused")
        check_eq(command(ctl, b"r"), b"R", "answer to resume")
        held.join(10)
        check(not held.is_alive(), "the held read did not complete after the resume")
        check_eq(result.get("value"), b"p" * 512, "data of the held read")
        check_eq(command(ctl, b"z"), b"X", "answer to an unknown command")
        ctl.close()
        h.shutdown()
        other.shutdown()


run(main)
