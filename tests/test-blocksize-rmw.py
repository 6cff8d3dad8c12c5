#!/usr/bin/python3
# The blocksize filter in front of swab (which refuses requests not aligned to its 8-byte words):
# unaligned reads, writes and zeroes of any size work and read back right, as with nbdkit serving
# the same stack; many unaligned writes into the same block at once, from parallel requests on one
# connection, each keep their bytes (the read-modify-write cycles do not lose each other's
# changes); requests longer than maxdata are split; the size is rounded down to minblock.
import errno
import os
import random
import subprocess
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import Server, check, check_eq, expect_errno, nbd_handle, run, tmpdir  # noqa: E402


def exercise(uri, seed):
    """Unaligned requests against a fresh 1 MiB + 100 byte disk; returns the final contents."""
    rng = random.Random(seed)
    h = nbd_handle(uri, strict=False)
    check_eq(h.get_size(), 1 << 20, "size rounded down to minblock")
    model = bytearray(1 << 20)
    for _ in range(200):
        off = rng.randrange(0, (1 << 20) - 70000)
        n = rng.randrange(1, 70000)
        if rng.random() < 0.7:
            data = rng.randbytes(n)
            h.pwrite(data, off)
            model[off:off + n] = data
        else:
            h.zero(n, off)
            model[off:off + n] = bytes(n)
        a = rng.randrange(0, 1 << 20)
        b = rng.randrange(a, min(a + 100000, 1 << 20) + 1)
        if b > a:
            check(h.pread(b - a, a) == bytes(model[a:b]), "read %d+%d after writes" % (a, b - a))
    contents = h.pread(1 << 20, 0)
    check(contents == bytes(model), "whole disk")
    h.shutdown()
    return contents


def parallel_rmw(uri):
    """64 one-byte writes into the same 4 KiB block, all in flight at once."""
    h = nbd_handle(uri)
    bufs = [nbd.Buffer.from_bytearray(bytearray([i + 1])) for i in range(64)]
    cookies = [h.aio_pwrite(bufs[i], 8192 + i * 37) for i in range(64)]
    pending = set(cookies)
    while pending:
        # A command is reported complete once, then retired.
        pending = {c for c in pending if not h.aio_command_completed(c)}
        if pending:
            h.poll(-1)
    block = h.pread(4096, 8192)
    for i in range(64):
        check_eq(block[i * 37], i + 1, "byte of parallel write %d" % i)
    h.shutdown()


def main():
    stack = ["--filter=blocksize", "--filter=swab", "memory", "size=%d" % ((1 << 20) + 100),
             "swab-bits=64", "minblock=4k", "maxdata=32k"]
    with Server(stack) as ours:
        mine = exercise(ours.uri, 1)
        parallel_rmw(ours.uri)
        # The disk below swab cannot take these without the filter.
    with Server(["--filter=swab", "memory", "size=1M", "swab-bits=64"]) as bare:
        h = nbd_handle(bare.uri, strict=False)
        expect_errno(errno.EINVAL, h.pwrite, b"x", 3, what="unaligned write without blocksize")
    # nbdkit, same stack, same requests: the same disk.
    d = tmpdir()
    sock = os.path.join(d, "nbdkit.sock")
    peer = subprocess.Popen(["nbdkit", "-f", "-U", sock] + stack)
    try:
        from wait_socket import wait_socket
        err = wait_socket(sock, peer.pid, 30)
        check(not err, "nbdkit did not start: %s" % err)
        theirs = exercise("nbd+unix:///?socket=" + sock, 1)
        check(mine == theirs, "nbdkit ends with different contents")
    finally:
        peer.terminate()
        peer.wait()


run(main)
