#!/usr/bin/python3
# BLOCK_STATUS on a badly fragmented file is bounded.  The file (`file file=...`, 20 GiB) has
# 2,621,440 separate 4 KiB data extents, one every 8 KiB (5,242,880 extents in all, five times
# nbdkit's cap of 1,048,576 descriptors in one reply).  One BLOCK_STATUS request over the whole
# file, sent (raw sockets) as a 64-bit extended-header request, and one over 4 GiB - 4 KiB as a
# compact 32-bit request, must each be answered within 20 s with at most 1,048,576 descriptors,
# all with lengths > 0, together not running past the request, and the first 4096 of them
# matching the file's layout from offset 0 (data 4096 bytes with flags 0, then a hole of 4096
# bytes with HOLE|ZERO, alternating).  Afterwards nbdsh's block_status on a small range still
# works on a new connection.
#
# How the file is made: writing 2.5 million 4 KiB blocks is 10 GiB of data, and on this
# machine's ext4 (mounted with `discard`) deleting them took 4 minutes.  Instead the file is one
# fallocate'd range (unwritten extents) in which every other 4 KiB page is read once with
# readahead off: SEEK_DATA/SEEK_HOLE report unwritten extents as data exactly where the page
# cache holds pages, so the file has the same layout for the server, is made in a few seconds,
# costs 10 GiB of (reclaimable) page cache while the test runs, and is deleted at once.  This
# needs an extent-based file system with unwritten extents in $TMPDIR (ext4, xfs; /tmp here is
# ext4); tmpfs will not do (the file plugin samples holes there instead of finding them exactly).
#
# Fails against nbdkit 1.32 for the 64-bit request: it has no extended headers.
# timeout: 180
import os
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import harness  # noqa: E402
from harness import Server, check, check_eq, extents, nbd_handle, run  # noqa: E402
from nbdwire import (  # noqa: E402
    CMD_BLOCK_STATUS, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_BLOCK_STATUS_EXT, STATE_HOLE, STATE_ZERO,
    Client, ProtocolError)

BLOCK = 4096
DATA_EXTENTS = 2621440
SIZE = DATA_EXTENTS * 2 * BLOCK          # 20 GiB: data, hole, data, hole, ...
CAP = 1 << 20                            # nbdkit's limit on descriptors in one reply
LAYOUT_CHECKED = 4096                    # descriptors compared with the layout
REPLY_WITHIN = 20.0


def touch_data_pages(fd, count):
    """Reads the data pages of the first `count` data extents (the page cache makes them data)."""
    for i in range(count):
        os.pread(fd, BLOCK, i * 2 * BLOCK)


def make_file():
    d = harness.tmpdir()
    fstype = subprocess.run(["stat", "-f", "-c", "%T", d], capture_output=True, text=True,
                            check=True).stdout.strip()
    check(fstype not in ("tmpfs", "ramfs"), "%s is on %s: this test needs an extent-based file "
          "system with unwritten extents (set TMPDIR)" % (d, fstype))
    path = os.path.join(d, "fragmented.img")
    start = time.monotonic()
    # fallocate(1) fails rather than write zeros where the file system cannot preallocate.
    subprocess.run(["fallocate", "-l", str(SIZE), path], check=True)
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)   # no readahead: only the pages read
    touch_data_pages(fd, DATA_EXTENTS)
    # SEEK_DATA/SEEK_HOLE must see the layout, or the test proves nothing.
    check_eq([os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 0, os.SEEK_HOLE),
              os.lseek(fd, BLOCK, os.SEEK_DATA), os.lseek(fd, SIZE - 2 * BLOCK, os.SEEK_HOLE)],
             [0, BLOCK, 2 * BLOCK, SIZE - BLOCK], "SEEK_DATA/SEEK_HOLE on %s (%s)" % (d, fstype))
    print("made %s on %s: %d data extents in a %d byte file, in %.1f s"
          % (path, fstype, DATA_EXTENTS, SIZE, time.monotonic() - start))
    return path, fd


def check_descriptors(descs, length, what):
    """descs: the reply's (length, flags) pairs."""
    check(len(descs) > 0, "%s: no descriptors" % what)
    for i, (n, flags) in enumerate(descs[:LAYOUT_CHECKED]):
        want = (BLOCK, STATE_HOLE | STATE_ZERO if i % 2 else 0)
        if (n, flags) != want:
            raise AssertionError("%s: descriptor %d at offset %d is %r, want %r: not the "
                                 "file's layout" % (what, i, i * BLOCK, (n, flags), want))
    check(all(n > 0 for n, _ in descs), "%s: a descriptor has length 0" % what)
    total = sum(n for n, _ in descs)
    check(total <= length, "%s: descriptors cover %d bytes, past the request's %d"
          % (what, total, length))
    return total


def count_descriptors(chunk):
    """Number of descriptors in a block status chunk, from its length (without parsing)."""
    if chunk.type == REPLY_TYPE_BLOCK_STATUS_EXT:
        return (len(chunk.payload) - 8) // 16
    return (len(chunk.payload) - 4) // 8


def one_request(srv, extended, length, what):
    """Returns a problem description, or None."""
    with Client(srv.sock, timeout=REPLY_WITHIN) as c:
        try:
            c.connect_go(extended=extended, meta=["base:allocation"])
        except ProtocolError as e:
            return "%s: negotiation failed: %s" % (what, e)
        start = time.monotonic()
        try:
            reply = c.command(CMD_BLOCK_STATUS, 0, length)
        except socket.timeout:
            return "%s: no complete reply within %.0f s" % (what, REPLY_WITHIN)
        except ProtocolError as e:
            return "%s: %s" % (what, e)
        took = time.monotonic() - start
        if reply.error:
            return "%s: error %d %r" % (what, reply.error, reply.message)
        status = [ch for ch in reply.chunks
                  if ch.type in (REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_BLOCK_STATUS_EXT)]
        if len(status) != 1:
            return "%s: %d block status chunks in the reply, want 1" % (what, len(status))
        count = count_descriptors(status[0])
        print("%s: %d descriptors in %.1f s" % (what, count, took))
        if took > REPLY_WITHIN:
            return "%s: reply took %.1f s" % (what, took)
        if count > CAP:
            return "%s: %d descriptors in one reply, over the cap of %d" % (what, count, CAP)
        ext, _ = reply.extents()
        descs = ext.get(c.contexts["base:allocation"], [])
        try:
            covered = check_descriptors(descs, length, what)
        except AssertionError as e:
            return str(e)
        print("%s: descriptors cover [0, %d)" % (what, covered))
        c.disconnect()
    return None


def main():
    path, fd = make_file()
    with Server(["file", "file=" + path]) as srv:
        problems = []
        for extended, length, what in (
                (True, SIZE, "extended BLOCK_STATUS over %d bytes" % SIZE),
                (False, (1 << 32) - BLOCK, "compact BLOCK_STATUS over 4 GiB - 4 KiB")):
            touch_data_pages(fd, LAYOUT_CHECKED)   # keep the checked pages cached
            problems.append(one_request(srv, extended, length, what))
        check(srv.alive(), "server died")
        touch_data_pages(fd, 16)
        h = nbd_handle(srv.uri)
        small = extents(h, 16 * BLOCK, 6 * BLOCK)
        check_eq(small, [(BLOCK, 0), (BLOCK, STATE_HOLE | STATE_ZERO)] * 8,
                 "nbdsh block_status of [24 KiB, +64 KiB)")
        h.shutdown()
        os.close(fd)
        problems = [p for p in problems if p]
        check(not problems, "; ".join(problems))


run(main)
