#!/usr/bin/python3
# A fast backend is served by one worker per connection; a request that may wait on the disk
# (a FUA write, a flush) still gets a second worker, so the requests behind it are not held up.
# The delay filter makes writes take 2 s over the memory plugin; after enough fast reads for the
# connection to be down to one worker, a FUA write is sent, then reads: every read must be
# answered while the write is still running, as nbdkit (a thread per request in flight) does.
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402
from harness import Server, check, run  # noqa: E402


def reads_during_write(uri, flags):
    """Seconds the reads sent 0.1 s after a 2 s write took to be answered."""
    h = nbd.NBD()
    h.connect_uri(uri)
    for _ in range(100):  # the backend looks fast: one worker
        h.pread(4096, 0)
    write = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"\x55" * 4096)), 1 << 20, flags=flags)
    time.sleep(0.1)
    start = time.monotonic()
    pending = {h.aio_pread(nbd.Buffer(4096), i * 4096) for i in range(8)}
    while pending:
        h.poll(-1)
        # A cookie is retired once reported complete: ask about each only until then.
        pending = {c for c in pending if not h.aio_command_completed(c)}
    took = time.monotonic() - start
    while not h.aio_command_completed(write):
        h.poll(-1)
    h.shutdown()
    return took


def main():
    with Server(["--filter=delay", "memory", "16M", "delay-write=2"]) as s:
        took = reads_during_write(s.uri, nbd.CMD_FLAG_FUA)
        check(took < 1.0, f"reads behind a FUA write took {took:.2f} s")


run(main)
