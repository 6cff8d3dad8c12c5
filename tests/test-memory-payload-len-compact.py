#!/usr/bin/python3
# NBD_CMD_FLAG_PAYLOAD_LEN (1 << 5) belongs to extended headers only.  After a handshake WITHOUT
# extended headers (structured replies and base:allocation negotiated), a compact 28-byte READ,
# and then a compact BLOCK_STATUS, carrying that flag and a length of 4096, with nothing sent
# after the header, must be answered at once with an EINVAL error for that cookie (the reply
# arrives within 2 s although no payload follows): the server must not wait for a payload the
# compact header cannot announce.  The connection then stays in sync: normal READ, WRITE and
# BLOCK_STATUS requests afterwards work.
import os
import socket
import sys
import time

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run  # noqa: E402
from nbdwire import (  # noqa: E402
    CMD_BLOCK_STATUS, CMD_FLAG_PAYLOAD_LEN, CMD_READ, EINVAL, Client)

REPLY_WAIT = 2.0


def refused_at_once(c, cmd, what):
    cookie = c.send_request(cmd, 0, 4096, CMD_FLAG_PAYLOAD_LEN)
    start = time.monotonic()
    c.sock.settimeout(REPLY_WAIT)
    try:
        reply = c.read_reply(cookie)
    except socket.timeout:
        raise AssertionError("%s with NBD_CMD_FLAG_PAYLOAD_LEN in a compact header: no reply "
                             "within %.0f s (the server waits for a payload)" % (what, REPLY_WAIT))
    finally:
        c.sock.settimeout(30)
    took = time.monotonic() - start
    print("%s with PAYLOAD_LEN: error %d after %.3f s (%r)" % (what, reply.error, took,
                                                                reply.message))
    check_eq(reply.error, EINVAL, "%s with NBD_CMD_FLAG_PAYLOAD_LEN: error" % what)


def main():
    with Server(["memory", "1M"]) as srv:
        # Each command on its own connection, so both are reported.
        failures = []
        for cmd, what in ((CMD_READ, "READ"), (CMD_BLOCK_STATUS, "BLOCK_STATUS")):
            with Client(srv.sock) as c:
                c.connect_go(structured=True, meta=["base:allocation"])
                check(not c.extended, "extended headers must not be negotiated here")
                check_eq(c.write(0, b"\xa5" * 4096), 0, "write before the bad request")
                try:
                    refused_at_once(c, cmd, what)
                except AssertionError as e:
                    print("FAILED: %s" % e)
                    failures.append(str(e))
                    continue
                err, data, _ = c.read(0, 4096)
                check(err == 0 and data == b"\xa5" * 4096,
                      "READ after the refused %s (error %d)" % (what, err))
                reply = c.command(CMD_BLOCK_STATUS, 0, 1 << 20)
                check_eq(reply.error, 0, "BLOCK_STATUS after the refused %s" % what)
                check_eq(c.write(8192, b"ok" * 256), 0, "WRITE after the refused %s" % what)
                err, data, _ = c.read(8192, 512)
                check(err == 0 and data == b"ok" * 256, "READ back after the refused %s" % what)
                c.disconnect()
        check(srv.alive(), "server died")
        check(not failures, "; ".join(failures))


run(main)
