#!/usr/bin/python3
# NBD_CMD_DISC with requests in flight: 16 writes of 1 MiB followed by NBD_CMD_DISC in a single
# send.  The spec requires the server to complete outstanding requests before closing, so a
# new connection must read all 16 MiB back.  Also: the server closes the connection after DISC
# (and does not reply to DISC itself).
#
# Usually fails against nbdkit 1.32: it answers ESHUTDOWN to writes still queued when
# its DISC handling starts, so those writes are lost.
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run  # noqa: E402
from nbdwire import CMD_DISC, CMD_WRITE, Client, Closed  # noqa: E402

MiB = 1 << 20


def main():
    with Server(["memory", "64M"]) as srv:
        for structured in (False, True):
            blocks = [os.urandom(MiB) for _ in range(16)]
            with Client(srv.sock) as c:
                c.connect_go(structured=structured)
                blob = b""
                cookies = set()
                for i, block in enumerate(blocks):
                    req, ck = c.request_bytes(CMD_WRITE, i * MiB, MiB, payload=block)
                    blob += req
                    cookies.add(ck)
                blob += c.request_bytes(CMD_DISC, 0, 0)[0]
                c.send(blob)
                # Replies to the writes may or may not be sent; nothing else may be.
                try:
                    while True:
                        chunk = c.read_chunk()
                        check(chunk.cookie in cookies, "reply to DISC or unknown: %r" % chunk)
                        check_eq(chunk.error, 0, "write error")
                except Closed:
                    pass
            with Client(srv.sock) as c:
                c.connect_go()
                for i, block in enumerate(blocks):
                    err, data, _ = c.read(i * MiB, MiB)
                    check(err == 0 and data == block,
                          "write %d before DISC landed (structured=%s)" % (i, structured))
                c.disconnect()
        check(srv.alive(), "server died")


run(main)
