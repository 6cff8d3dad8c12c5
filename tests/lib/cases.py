"""Checks shared by the per-plugin command tests (test-memory-commands.py, test-file-commands.py,
test-null-commands.py): error codes for requests outside the export, and for writes to a
read-only export.  Each takes a connected libnbd handle made with strict mode off, so libnbd
sends the bad request instead of refusing it locally.
"""

import errno

import nbd

from harness import check, check_eq, expect_errno, extents


def check_range_errors(h, size):
    """Requests past the end: reads, trims, cache and block status fail with EINVAL;
    writes and write-zeroes fail with ENOSPC (the disk is full, as the NBD spec asks)."""
    for offset, count in ((size, 512), (size - 512, 1024), (size + (1 << 30), 512)):
        where = "[%d, +%d) on a %d byte export" % (offset, count, size)
        expect_errno(errno.EINVAL, h.pread, count, offset, what="read " + where)
        expect_errno(errno.EINVAL, h.trim, count, offset, what="trim " + where)
        expect_errno(errno.EINVAL, h.cache, count, offset, what="cache " + where)
        expect_errno(errno.EINVAL, lambda: extents(h, count, offset),
                     what="block status " + where)
        expect_errno(errno.ENOSPC, h.pwrite, b"\x5a" * count, offset, what="write " + where)
        expect_errno(errno.ENOSPC, h.zero, count, offset, what="zero " + where)
        expect_errno(errno.ENOSPC, h.pwrite, b"\x5a" * count, offset, nbd.CMD_FLAG_FUA,
                     what="FUA write " + where)
    # Offset + count overflowing 64 bits is also past the end, not a wrap to the start.
    expect_errno(errno.EINVAL, h.pread, 512, (1 << 64) - 256, what="read wrapping 2^64")
    # The connection is still in sync and usable after all those errors.
    h.pread(512, 0)
    h.pread(512, size - 512)


def check_readonly_errors(h):
    """Writes, write-zeroes and trims on a read-only export fail with EPERM; reads work."""
    check(h.is_read_only(), "export should be read-only")
    check(not h.can_trim(), "read-only export must not advertise trim")
    check(not h.can_zero(), "read-only export must not advertise write zeroes")
    before = h.pread(4096, 0)
    expect_errno(errno.EPERM, h.pwrite, b"\xee" * 4096, 0, what="write on read-only export")
    expect_errno(errno.EPERM, h.zero, 4096, 0, what="zero on read-only export")
    expect_errno(errno.EPERM, h.trim, 4096, 0, what="trim on read-only export")
    check_eq(h.pread(4096, 0), before, "data after refused writes")
