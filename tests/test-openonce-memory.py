#!/usr/bin/python3
# The openonce filter, over the tally example filter, which logs each open of the layer below
# (-v) when its handle is finalized: three clients of the default export share one open of the
# layer below; data written by one client is read by another; when the server exits the shared
# handle is finalized once.
import os
import re
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, nbd_handle, run  # noqa: E402


def main():
    srv = Server(["-v", "--filter=openonce", "--filter=tally", "memory", "1M"])
    a, b = nbd_handle(srv.uri), nbd_handle(srv.uri)
    a.pwrite(b"once" * 128, 0)
    check_eq(b.pread(512, 0), b"once" * 128, "data shared between clients")
    a.shutdown()
    b.shutdown()
    c = nbd_handle(srv.uri)
    check_eq(c.pread(512, 0), b"once" * 128, "a later client sees the same data")
    c.shutdown()
    check_eq(srv.stop(), 0, "exit status")
    log = srv.stderr()
    opens = log.count("openonce: opening the layer below")
    check_eq(opens, 1, "opens of the layer below for three clients")
    # tally logs its counts when its handle is finalized (whatever layer name prefixes it).
    finalized = re.findall(r"connection \d+: \d+ reads", log)
    check_eq(len(finalized), 1, "the shared handle is finalized once, at exit: %r" % finalized)


run(main)
