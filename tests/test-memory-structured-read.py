#!/usr/bin/python3
# Structured replies to NBD_CMD_READ on the memory plugin: unwritten ranges come back as
# NBD_REPLY_TYPE_OFFSET_HOLE chunks (no zero bytes on the wire), written ranges as OFFSET_DATA,
# and the chunks exactly cover the request.  Checked with libnbd's pread_structured, which
# reports each chunk with its offset and type.
#
# Fails against nbdkit 1.32: it always replies with OFFSET_DATA chunks, never holes.
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import Server, check, check_eq, nbd_handle, read_chunks, run  # noqa: E402


def covers(chunks, offset, length):
    pos = offset
    for off, n, _ in chunks:
        if off != pos:
            return False
        pos += n
    return pos == offset + length


def main():
    with Server(["memory", "64M"]) as srv:
        h = nbd_handle(srv.uri)
        check(h.get_structured_replies_negotiated(), "structured replies negotiated")

        # Entirely unwritten: holes only.
        data, chunks = read_chunks(h, 1 << 20, 8 << 20)
        check_eq(data, bytes(1 << 20), "unwritten data")
        check(covers(chunks, 8 << 20, 1 << 20), "chunks cover the request: %r" % chunks)
        check(all(s == nbd.READ_HOLE for _, _, s in chunks),
              "unwritten range must be hole chunks: %r" % chunks)

        # Data in the middle of a hole: hole, data, hole.
        payload = b"\xab" * 65536
        h.pwrite(payload, (16 << 20) + 65536)
        data, chunks = read_chunks(h, 3 * 65536, 16 << 20)
        check_eq(data, bytes(65536) + payload + bytes(65536), "mixed read")
        check(covers(chunks, 16 << 20, 3 * 65536), "chunks cover the request: %r" % chunks)
        data_chunks = [(o, n) for o, n, s in chunks if s == nbd.READ_DATA]
        hole_chunks = [(o, n) for o, n, s in chunks if s == nbd.READ_HOLE]
        check(data_chunks and hole_chunks, "mixed read has data and hole chunks: %r" % chunks)
        start, end = (16 << 20) + 65536, (16 << 20) + 131072
        in_data = sum(min(o + n, end) - max(o, start) for o, n in data_chunks
                      if o < end and o + n > start)
        check_eq(in_data, 65536, "bytes of the written range sent as data")
        hole_bytes = sum(n for _, n in hole_chunks)
        check(hole_bytes >= 65536, "at least the unwritten 128 KiB minus alignment is holes: %r"
              % chunks)

        # Written then trimmed: a hole again.
        h.trim(65536, (16 << 20) + 65536)
        data, chunks = read_chunks(h, 65536, (16 << 20) + 65536)
        check_eq(data, bytes(65536), "trimmed data")
        check(all(s == nbd.READ_HOLE for _, _, s in chunks), "trimmed range is a hole: %r" % chunks)

        # Fully written: data only.
        h.pwrite(b"\x01" * (1 << 20), 32 << 20)
        data, chunks = read_chunks(h, 1 << 20, 32 << 20)
        check_eq(data, b"\x01" * (1 << 20), "written data")
        check(all(s == nbd.READ_DATA for _, _, s in chunks), "written range is data: %r" % chunks)
        h.shutdown()


run(main)
