#!/usr/bin/python3
# Transmission-phase requests that libnbd will not send, on the wire (raw socket), with both
# simple and structured replies:
# - an unknown command (type 99) gets EINVAL and the connection stays usable;
# - an unknown command flag (bit 10) gets EINVAL;
# - NBD_CMD_FLAG_REQ_ONE on a READ is either refused with EINVAL or ignored;
# - a READ past the end gets EINVAL with no data; a WRITE past the end gets ENOSPC and its
#   payload is skipped (the next request is parsed correctly);
# - 32 pipelined requests in one send all get their own replies (cookies match).
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run  # noqa: E402
from nbdwire import (  # noqa: E402
    CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_WRITE, EINVAL, ENOSPC, Client)

SIZE = 1 << 20


def in_sync(c, tag):
    payload = (tag * 512)[:512]
    check_eq(c.write(8192, payload), 0, "write after %r" % tag)
    err, data, _ = c.read(8192, 512)
    check_eq((err, data), (0, payload), "read after %r" % tag)


def main():
    with Server(["memory", "size=%d" % SIZE]) as srv:
        for structured in (False, True):
            with Client(srv.sock) as c:
                c.connect_go(structured=structured)
                mode = "structured" if structured else "simple"

                r = c.command(99, 0, 512)
                check_eq(r.error, EINVAL, "unknown command (%s replies)" % mode)
                in_sync(c, b"after unknown command ")

                r = c.command(CMD_READ, 0, 512, flags=1 << 10)
                check_eq(r.error, EINVAL, "READ with unknown flag (%s)" % mode)
                in_sync(c, b"after unknown flag ")

                r = c.command(CMD_FLUSH, 0, 0, flags=1 << 10)
                check_eq(r.error, EINVAL, "FLUSH with unknown flag (%s)" % mode)

                err, data, _ = c.read(8192, 512, flags=CMD_FLAG_REQ_ONE)
                check(err == EINVAL or data == (b"after unknown flag " * 512)[:512],
                      "READ with REQ_ONE: error %d" % err)
                in_sync(c, b"after REQ_ONE read ")

                err, data, reply = c.read(SIZE, 512)
                check_eq((err, data), (EINVAL, None), "READ past the end (%s)" % mode)
                err, data, reply = c.read(SIZE - 512, 4096)
                check_eq((err, data), (EINVAL, None), "READ across the end (%s)" % mode)
                in_sync(c, b"after bad read ")

                check_eq(c.write(SIZE - 512, b"\x77" * 65536), ENOSPC, "WRITE past the end")
                in_sync(c, b"after bad write ")

                # Pipelining: many requests in one send, replies matched by cookie.
                blob, cookies = b"", {}
                for i in range(32):
                    data = bytes([i]) * 4096
                    req, ck = c.request_bytes(CMD_WRITE, i * 4096, 4096, payload=data)
                    blob += req
                    cookies[ck] = ("write", i)
                for i in range(32):
                    req, ck = c.request_bytes(CMD_READ, i * 4096 + 65536 * 4, 4096)
                    blob += req
                    cookies[ck] = ("read", i)
                c.send(blob)
                seen = set()
                while len(seen) < 64:
                    chunk = c.read_chunk()
                    check(chunk.cookie in cookies, "reply with unknown cookie %d" % chunk.cookie)
                    check(chunk.cookie not in seen, "chunk after the last for %d" % chunk.cookie)
                    check(not chunk.error and not chunk.is_error, "error in %r" % chunk)
                    if chunk.done:
                        seen.add(chunk.cookie)
                check_eq(len(seen), 64, "number of pipelined replies")
                for i in range(32):
                    check_eq(c.read(i * 4096, 4096)[1], bytes([i]) * 4096, "pipelined write %d" % i)
                c.disconnect()
                check(c.is_closed_by_server(10), "server should close after NBD_CMD_DISC")
        check(srv.alive(), "server died")


run(main)
