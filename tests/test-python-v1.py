#!/usr/bin/python3
# The python plugin's API_VERSION 1 (a script that declares no version), under nbdforge and under
# nbdkit's python plugin: pread(h, count, offset) returns the data (bytes, a bytearray, anything
# with the buffer protocol, at least count long), pwrite(h, buf, offset), flush(h),
# trim(h, count, offset) and zero(h, count, offset, may_trim) take no flags, FUA is emulated by a
# flush after the write. Both servers serve the same bytes before and after the same writes, and
# the script sees the same calls.
import errno
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

import pyplugin  # noqa: E402
from harness import check, check_eq, expect_errno, run, tmpdir  # noqa: E402
from pyplugin import RECORDER, calls, wait_for_call  # noqa: E402

SCRIPT = RECORDER + r'''
disk = bytearray(i % 251 for i in range(1 << 20))


def config(key, value):
    global log_path
    log_path = value


def open(readonly):
    return {}


def get_size(h):
    return len(disk)


def pread(h, count, offset):
    if offset == 65536 * 15:
        return bytes(count - 1)                   # too short: an error
    if offset % 8192 == 4096:
        return bytes(disk[offset:offset + count])
    return disk[offset:offset + count + 7]       # longer than asked: the start is used


def pwrite(h, buf, offset):
    record("pwrite", len(buf), offset, type(buf).__name__, buf.readonly)
    disk[offset:offset + len(buf)] = buf


def flush(h):
    record("flush")


def trim(h, count, offset):
    record("trim", count, offset)
    disk[offset:offset + count] = bytearray(count)


def zero(h, count, offset, may_trim):
    record("zero", count, offset, may_trim)
    disk[offset:offset + count] = bytearray(count)
'''


def session(srv, out):
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    check(h.can_fua() and h.can_flush() and h.can_trim() and h.can_zero(), "v1 capabilities")
    first = h.pread(16384, 0)
    check_eq(first[:8], bytes(range(8)), "start of the disk")
    h.pwrite(b"a" * 4096, 8192, nbd.CMD_FLAG_FUA)
    h.trim(4096, 16384)
    h.zero(4096, 20480, nbd.CMD_FLAG_NO_HOLE)
    h.zero(4096, 24576)
    h.flush()
    expect_errno(errno.EIO, h.pread, 512, 65536 * 15)
    with open(out, "wb") as f:
        for offset in range(0, 1 << 20, 65536):
            if offset != 65536 * 15:
                f.write(h.pread(65536, offset))
    h.shutdown()
    wait_for_call(srv, ("flush",))
    srv.stop()
    return calls(srv)


def main():
    dir = tmpdir()
    script = os.path.join(dir, "v1.py")
    with open(script, "w") as f:
        f.write(SCRIPT)
    theirs = session(pyplugin.serve(script, os.path.join(dir, "nbdkit.log"), peer=True),
                     os.path.join(dir, "nbdkit.img"))
    ours = session(pyplugin.serve(script, os.path.join(dir, "ours.log")), os.path.join(dir, "ours.img"))
    for line in ours:
        print(*line)
    check_eq(ours, theirs, "the calls the script saw")
    check_eq(ours[:2], [("pwrite", 4096, 8192, "memoryview", True), ("flush",)], "FUA emulated by a flush")
    check(("zero", 4096, 20480, False) in ours and ("zero", 4096, 24576, True) in ours, "may_trim")
    with open(os.path.join(dir, "nbdkit.img"), "rb") as a, open(os.path.join(dir, "ours.img"), "rb") as b:
        check(a.read() == b.read(), "the disks differ")


run(main)
