#!/usr/bin/python3
# Every NBD command and flag against the file plugin, through libnbd: capabilities, writes that
# land in the file (checked by reading the file directly), reads of what was written to the file
# behind the server's back, FUA, flush, trim (punches a hole in a sparse file), write-zeroes with
# NO_HOLE (allocated zeroes) and without, cache, block status with and without REQ_ONE, and
# errors past the end of the file.
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from cases import check_range_errors  # noqa: E402
from harness import Server, check, check_eq, extents, nbd_handle, run, tmpdir  # noqa: E402

SIZE = 4 << 20


def file_bytes(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def main():
    disk = os.path.join(tmpdir(), "disk.img")
    with open(disk, "wb") as f:
        f.truncate(SIZE)  # sparse

    with Server(["file", disk]) as srv:
        h = nbd_handle(srv.uri)
        check_eq(h.get_size(), SIZE, "size")
        for cap in ("can_multi_conn", "can_trim", "can_zero", "can_fua", "can_cache",
                    "can_df", "can_flush"):
            check(getattr(h, cap)(), "file should report %s" % cap)
        check(not h.is_read_only(), "file should be writable")

        # A sparse file is reported as a hole that reads as zeroes.
        ext = extents(h, SIZE, 0)
        check(ext and all(f & nbd.STATE_ZERO for _, f in ext), "sparse file is zero: %r" % ext)

        # Writes land in the file.
        data = os.urandom(256 << 10)
        h.pwrite(data, 1 << 20)
        h.pwrite(b"tail", SIZE - 4, nbd.CMD_FLAG_FUA)
        h.flush()
        check_eq(file_bytes(disk, 1 << 20, len(data)), data, "file contents after write")
        check_eq(file_bytes(disk, SIZE - 4, 4), b"tail", "file contents after FUA write")
        check_eq(os.path.getsize(disk), SIZE, "file size unchanged by writes")

        # What is written to the file is served.
        note = b"written behind the server's back"
        with open(disk, "r+b") as f:
            f.seek(3 << 20)
            f.write(note)
        check_eq(h.pread(len(note), 3 << 20), note, "read of file data")
        check_eq(h.pread(len(data), 1 << 20), data, "read back")
        check_eq(h.pread_structured(4096, 1 << 20, lambda *a: 0, nbd.CMD_FLAG_DF), data[:4096],
                 "read with DF")

        # Block status: the written range is data; the start of the file is still a hole.
        ext = extents(h, 256 << 10, 1 << 20)
        check(ext[0][1] == 0 and ext[0][0] >= 4096, "written range is data: %r" % ext)
        ext = extents(h, 65536, 0)
        check(ext[0][1] & nbd.STATE_ZERO, "unwritten start of the file is zero: %r" % ext)
        one = extents(h, SIZE - (1 << 20), 1 << 20, nbd.CMD_FLAG_REQ_ONE)
        check(len(one) == 1 and one[0][0] <= SIZE - (1 << 20), "REQ_ONE: %r" % one)

        # Trim punches a hole: reads as zeroes and the file gets sparser.
        h.trim(256 << 10, 1 << 20)
        check_eq(h.pread(256 << 10, 1 << 20), bytes(256 << 10), "trimmed range")
        check_eq(file_bytes(disk, 1 << 20, 256 << 10), bytes(256 << 10), "trimmed file range")

        # Write zeroes with and without NO_HOLE, and with FUA.
        for flags in (0, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FUA):
            h.pwrite(data, 1 << 20)
            h.zero(65536, (1 << 20) + 4096, flags)
            want = data[:4096] + bytes(65536) + data[4096 + 65536:]
            check_eq(h.pread(len(data), 1 << 20), want, "export after zero flags=%#x" % flags)
            check_eq(file_bytes(disk, 1 << 20, len(data)), want, "file after zero flags=%#x" % flags)
            if flags & nbd.CMD_FLAG_NO_HOLE:
                ext = extents(h, 65536, (1 << 20) + 4096)
                check(all(f & nbd.STATE_HOLE == 0 for _, f in ext),
                      "NO_HOLE zeroes must not be a hole: %r" % ext)

        h.cache(SIZE, 0)

        bad = nbd_handle(srv.uri, strict=False)
        check_range_errors(bad, SIZE)
        bad.shutdown()
        check_eq(os.path.getsize(disk), SIZE, "file size after refused writes past the end")
        h.shutdown()


run(main)
