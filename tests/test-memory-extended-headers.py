#!/usr/bin/python3
# NBD_OPT_EXTENDED_HEADERS on the wire (raw socket): 32-byte requests and replies with 64-bit
# lengths.  On a 16 GiB memory disk:
# - the option is acknowledged, then base:allocation and GO work as usual;
# - a WRITE (with NBD_CMD_FLAG_PAYLOAD_LEN) and a READ round trip; every reply uses the
#   extended magic and echoes the request's offset; no simple replies are sent;
# - a BLOCK_STATUS over 8 GiB in one request returns NBD_REPLY_TYPE_BLOCK_STATUS_EXT with an
#   extent longer than 4 GiB (impossible in compact replies);
# - TRIM and WRITE_ZEROES with an effect length over 4 GiB succeed in one request;
# - errors come back as extended error chunks.
#
# Fails against nbdkit 1.32: it does not implement extended headers (answers NBD_REP_ERR_UNSUP).
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run  # noqa: E402
from nbdwire import (  # noqa: E402
    CMD_BLOCK_STATUS, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES, EINVAL, ENOSPC,
    REPLY_TYPE_BLOCK_STATUS_EXT, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, STATE_HOLE,
    STATE_ZERO, Client)

GiB = 1 << 30
SIZE = 16 * GiB


def check_offsets(reply, offset, what):
    for ch in reply.chunks:
        check_eq(ch.offset, offset, "%s: offset echoed in extended reply header" % what)


def block_status(c, offset, length, what):
    reply = c.command(CMD_BLOCK_STATUS, offset, length)
    check_eq(reply.error, 0, what)
    check_offsets(reply, offset, what)
    ext, kinds = reply.extents()
    ctx = c.contexts["base:allocation"]
    check_eq(list(ext), [ctx], "%s: context ids" % what)
    return ext[ctx], kinds[ctx]


def main():
    with Server(["memory", "16G"]) as srv:
        with Client(srv.sock) as c:
            infos = c.connect_go(extended=True, meta=["base:allocation"])
            check(c.extended, "extended headers negotiated")

            data = os.urandom(1 << 20)
            check_eq(c.write(5 * GiB, data), 0, "extended WRITE")
            err, got, reply = c.read(5 * GiB, 1 << 20)
            check(err == 0 and got == data, "extended READ round trip (error %d)" % err)
            check_offsets(reply, 5 * GiB, "READ")
            check(all(ch.type in (REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, 0)
                      for ch in reply.chunks), "READ chunk types %r" % reply.types())
            err, got, reply = c.read(GiB, 65536)
            check(err == 0 and got == bytes(65536), "extended READ of a hole")

            reply = c.command(CMD_FLUSH)
            check_eq(reply.error, 0, "FLUSH")
            check_offsets(reply, 0, "FLUSH")

            # 8 GiB of block status in one request: [0, 5G) is a hole.
            ext, kind = block_status(c, 0, 8 * GiB, "BLOCK_STATUS over 8 GiB")
            check_eq(kind, REPLY_TYPE_BLOCK_STATUS_EXT, "status chunk type for a 64-bit extent")
            check(ext[0][0] > 4 * GiB, "first extent longer than 4 GiB: %r" % ext[:4])
            check_eq(ext[0][0], 5 * GiB, "first extent ends at the data at 5 GiB")
            check_eq(ext[0][1], STATE_HOLE | STATE_ZERO, "first extent is a hole")
            check_eq(ext[1][1] & STATE_HOLE, 0, "then data: %r" % ext[:4])
            ext, kind = block_status(c, 6 * GiB, 8 * GiB, "BLOCK_STATUS 6G+8G")
            check(ext[0][0] > 4 * GiB and ext[0][1] == STATE_HOLE | STATE_ZERO,
                  "hole from 6 GiB longer than 4 GiB: %r" % ext[:4])

            # 64-bit effect lengths for TRIM and WRITE_ZEROES.
            reply = c.command(CMD_TRIM, 4 * GiB, 8 * GiB)
            check_eq(reply.error, 0, "TRIM of 8 GiB")
            check_offsets(reply, 4 * GiB, "TRIM")
            err, got, _ = c.read(5 * GiB, 1 << 20)
            check(err == 0 and got == bytes(1 << 20), "data trimmed by an 8 GiB TRIM")
            check_eq(c.write(10 * GiB, data), 0, "WRITE at 10 GiB")
            reply = c.command(CMD_WRITE_ZEROES, 6 * GiB, 6 * GiB)
            check_eq(reply.error, 0, "WRITE_ZEROES of 6 GiB")
            err, got, _ = c.read(10 * GiB, 1 << 20)
            check(err == 0 and got == bytes(1 << 20), "data zeroed by a 6 GiB WRITE_ZEROES")

            # Errors are extended error chunks.
            reply = c.command(CMD_TRIM, 12 * GiB, 8 * GiB)
            check_eq(reply.error, EINVAL, "TRIM past the end")
            check(reply.chunks[-1].is_error, "error chunk: %r" % reply.chunks)
            check_eq(c.write(SIZE - 512, b"x" * 1024), ENOSPC, "WRITE past the end")
            err, _, _ = c.read(SIZE, 512)
            check_eq(err, EINVAL, "READ past the end")
            c.disconnect()


run(main)
