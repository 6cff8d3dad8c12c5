#!/usr/bin/python3
# Reads of a sparse file (served with sendfile, kernel to kernel): the holes come back as
# OFFSET_HOLE chunks and the data as data, byte for byte; a file that shrank under the server
# gives EIO with a message, and the connection goes on.
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402
from harness import Server, check, check_eq, run, tmpdir  # noqa: E402

MiB = 1 << 20


def main():
    disk = os.path.join(tmpdir(), "sparse.img")
    with open(disk, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(3 * MiB)
        f.write(b"hello")
    srv = Server(["file", disk])
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    chunks = []

    def chunk(buf, offset, status, error):
        chunks.append((offset, len(buf), status))
        return 0

    data = h.pread_structured(8 * MiB, 0, chunk)
    check_eq(data[3 * MiB:3 * MiB + 5], b"hello", "data in the middle")
    check_eq(data.count(0), 8 * MiB - 5, "everything else reads as zero")
    holes = [c for c in chunks if c[2] == nbd.READ_HOLE]
    check(holes and holes[0][:2] == (0, 3 * MiB), "the first 3 MiB are a hole chunk: %r" % chunks)
    check(any(c[2] == nbd.READ_DATA and c[0] <= 3 * MiB < c[0] + c[1] for c in chunks), "data chunk: %r" % chunks)

    os.truncate(disk, MiB)
    try:
        h.pread(4096, 4 * MiB)
        check(False, "a read past the end of the shrunken file succeeded")
    except nbd.Error as e:
        check_eq(e.errno, "EIO", "read past the end of a shrunken file")
    check_eq(h.pread(5, 0), bytes(5), "the connection still serves reads")


run(main)
