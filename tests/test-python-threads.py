#!/usr/bin/python3
# The thread model a Python script chooses is the one the server keeps: with
# THREAD_MODEL_PARALLEL eight reads in flight on one connection, each sleeping 0.3 s in Python
# (time.sleep lets go of the GIL), overlap and run on several server threads; with the default
# (SERIALIZE_ALL_REQUESTS) they run one after the other. nbdkit's python plugin does the same.
import os
import sys
import time

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

import pyplugin  # noqa: E402
from harness import check, run, tmpdir  # noqa: E402
from pyplugin import RECORDER, calls  # noqa: E402

SCRIPT = RECORDER + r'''
import threading
import time
import nbdkit

API_VERSION = 2
model = None


def config(key, value):
    global log_path, model
    if key == "log":
        log_path = value
    elif key == "model":
        model = value


def thread_model():
    if model == "parallel":
        return nbdkit.THREAD_MODEL_PARALLEL
    return nbdkit.THREAD_MODEL_SERIALIZE_ALL_REQUESTS


def open(readonly):
    return 1


def get_size(h):
    return 1 << 20


def pread(h, buf, offset, flags):
    time.sleep(0.3)
    record("pread", threading.get_ident())
    buf[:] = bytes(len(buf))
'''

READS = 8


def timed_reads(srv):
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    start = time.monotonic()
    for i in range(READS):
        h.aio_pread(nbd.Buffer(512), i * 4096)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    took = time.monotonic() - start
    h.shutdown()
    srv.stop()
    threads = {line[1] for line in calls(srv) if line[0] == "pread"}
    return took, len(threads)


def main():
    dir = tmpdir()
    script = os.path.join(dir, "sleepy.py")
    with open(script, "w") as f:
        f.write(SCRIPT)
    for peer in (True, False):
        server = "nbdkit" if peer else "nbdforge"
        took, threads = timed_reads(pyplugin.serve(script, os.path.join(dir, "p%s.log" % peer),
                                                   ["model=parallel"], peer=peer))
        print("%s, parallel: %d reads in %.2f s on %d threads" % (server, READS, took, threads))
        check(took < READS * 0.3 / 2, "%s: parallel reads did not overlap (%.2f s)" % (server, took))
        check(threads > 1, "%s: parallel reads all ran on one thread" % server)
        took, threads = timed_reads(pyplugin.serve(script, os.path.join(dir, "s%s.log" % peer),
                                                   peer=peer))
        print("%s, serialized: %d reads in %.2f s" % (server, READS, took))
        check(took >= READS * 0.3 * 0.95, "%s: serialized reads overlapped (%.2f s)" % (server, took))


run(main)
