#!/usr/bin/python3
# Every NBD command and flag against the memory plugin, through libnbd: the advertised
# capabilities, reads and writes (aligned, unaligned, FUA, DF), flush, trim, write-zeroes with
# NO_HOLE and FAST_ZERO, cache, block status with and without REQ_ONE, errors past the end,
# and that a second connection sees the first one's writes (multi-conn).
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from cases import check_range_errors  # noqa: E402
from harness import Server, check, check_eq, extents, nbd_handle, run  # noqa: E402

SIZE = 1 << 20
HOLE_ZERO = nbd.STATE_HOLE | nbd.STATE_ZERO


def main():
    with Server(["memory", "size=%d" % SIZE]) as srv:
        h = nbd_handle(srv.uri)
        check_eq(h.get_size(), SIZE, "size")
        for cap in ("can_multi_conn", "can_trim", "can_zero", "can_fast_zero", "can_fua",
                    "can_cache", "can_df", "can_flush"):
            check(getattr(h, cap)(), "memory should report %s" % cap)
        check(not h.is_read_only(), "memory should be writable")
        check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation not negotiated")

        # A new disk reads as zeroes and is one hole.
        check_eq(h.pread(SIZE, 0), bytes(SIZE), "fresh disk contents")
        ext = extents(h, SIZE, 0)
        check(sum(n for n, _ in ext) >= SIZE, "extents cover the disk: %r" % ext)
        check(all(f == HOLE_ZERO for _, f in ext), "fresh disk is hole+zero: %r" % ext)

        # Writes round trip, including FUA and unaligned ones.
        data = bytes(range(256)) * 256  # 64 KiB
        h.pwrite(data, 0)
        h.pwrite(data, 128 << 10, nbd.CMD_FLAG_FUA)
        h.pwrite(b"xyz", 65535)  # straddles 64 KiB boundary
        check_eq(h.pread(65536, 0)[:-1], data[:-1], "written data")
        check_eq(h.pread(4, 65534), data[65534:65535] + b"xyz", "unaligned write")
        check_eq(h.pread(len(data), 128 << 10), data, "FUA write")
        check_eq(h.pread_structured(512, 4096, lambda *a: 0, nbd.CMD_FLAG_DF), data[4096:4608],
                 "read with DF")
        h.flush()

        # Block status: data where written, hole+zero elsewhere.
        ext = extents(h, SIZE, 0)
        check(ext[0][1] & nbd.STATE_HOLE == 0 and ext[0][0] >= 65536,
              "written range reported as data: %r" % ext)
        ext = extents(h, 65536, 512 << 10)
        check(ext and all(f == HOLE_ZERO for _, f in ext), "unwritten range is a hole: %r" % ext)
        one = extents(h, SIZE - 4096, 4096, nbd.CMD_FLAG_REQ_ONE)
        check(len(one) == 1, "REQ_ONE gives one extent: %r" % one)
        check(one[0][0] <= SIZE - 4096, "REQ_ONE extent within the request: %r" % one)
        check(one[0][1] & nbd.STATE_HOLE == 0, "REQ_ONE at written offset is data: %r" % one)

        # Trim: reads back zeroes (the memory plugin frees the pages).
        h.trim(65536, 0)
        check_eq(h.pread(65536, 0), bytes(65536), "trimmed range")
        ext = extents(h, 65536, 0)
        check(all(f & nbd.STATE_ZERO for _, f in ext), "trimmed range reads as zero: %r" % ext)

        # Write zeroes, plain, NO_HOLE, FAST_ZERO, FUA.
        for flags in (0, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FAST_ZERO, nbd.CMD_FLAG_FUA,
                      nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA):
            h.pwrite(data, 128 << 10)
            h.zero(8192, (128 << 10) + 1000, flags)
            got = h.pread(len(data), 128 << 10)
            want = data[:1000] + bytes(8192) + data[1000 + 8192:]
            check_eq(got, want, "contents after zero with flags %#x" % flags)

        # Cache is accepted and changes nothing.
        h.cache(SIZE, 0)
        check_eq(h.pread(len(data), 128 << 10)[:1000], data[:1000], "data after cache")

        # A second connection sees the first one's writes (the export advertises multi-conn).
        h.pwrite(b"\xc3" * 4096, SIZE - 4096)
        h2 = nbd_handle(srv.uri)
        check_eq(h2.pread(4096, SIZE - 4096), b"\xc3" * 4096, "second connection's view")
        h2.shutdown()

        # Errors past the end.
        bad = nbd_handle(srv.uri, strict=False)
        check_range_errors(bad, SIZE)
        bad.shutdown()
        h.shutdown()


run(main)
