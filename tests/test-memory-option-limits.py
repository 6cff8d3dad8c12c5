#!/usr/bin/python3
# Hostile option haggling must not hurt the server:
# - an option declaring 1 GiB of data: the server may answer with an error, close the
#   connection, or read and discard what arrives, but must not buffer it (its peak RSS may not
#   grow by the 64 MiB we send) and must keep serving other clients;
# - 10000 NBD_OPT_LIST in a row: each is answered until the server decides the client is
#   abusive and closes; either way the server stays up;
# - a client flag the server did not offer (bit 5) closes the connection (the spec says MUST).
import os
import socket
import struct
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run  # noqa: E402
from nbdwire import (  # noqa: E402
    FLAG_C_FIXED_NEWSTYLE, IHAVEOPT, OPT_INFO, OPT_LIST, REP_ACK, REP_SERVER, Client,
    ProtocolError)


def peak_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM for pid %d" % pid)


def still_serving(srv):
    with Client(srv.sock) as c:
        c.connect_go()
        check_eq(c.write(0, b"alive" * 100), 0, "write on a new connection")
        check_eq(c.read(0, 500)[1], b"alive" * 100, "read on a new connection")
        c.disconnect()


def main():
    with Server(["memory", "64M"]) as srv:
        still_serving(srv)
        rss_before = peak_rss_kib(srv.pid)

        # 1 GiB declared option length, followed by 64 MiB of actual data.
        with Client(srv.sock) as c:
            c.handshake()
            c.send(struct.pack(">QII", IHAVEOPT, OPT_INFO, 1 << 30))
            chunk = bytes(1 << 20)
            try:
                for _ in range(64):
                    c.sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                pass  # the server closed on us or stopped reading: both fine
        still_serving(srv)
        growth = peak_rss_kib(srv.pid) - rss_before
        check(growth < 48 << 10, "server peak RSS grew by %d KiB for a 1 GiB option" % growth)

        # 10000 LIST options in a row.  Each gets a well-formed final reply (the server may
        # refuse repeats with an error, as nbdkit does) until the server may hang up.
        with Client(srv.sock) as c:
            c.handshake()
            check_eq(c.opt_list(), [""], "first LIST")
            answered = 1
            try:
                for _ in range(9999):
                    c.send_option(OPT_LIST)
                    r = c.read_option_reply()
                    while r.type == REP_SERVER:
                        r = c.read_option_reply()
                    check(r.option == OPT_LIST and (r.type == REP_ACK or r.is_error),
                          "reply to LIST number %d: %r" % (answered + 1, r))
                    answered += 1
            except (ProtocolError, ConnectionResetError, BrokenPipeError):
                pass
            check(answered >= 16, "only %d LIST options answered before a cut-off" % answered)
        still_serving(srv)

        # A client flag that was not offered: the server must close the connection.
        with Client(srv.sock) as c:
            c.handshake(FLAG_C_FIXED_NEWSTYLE | (1 << 5))
            try:
                c.send_option(OPT_LIST)
            except (BrokenPipeError, ConnectionResetError):
                pass
            check(c.is_closed_by_server(10), "server kept a connection with unknown client flags")
        still_serving(srv)
        check(srv.alive(), "server died")


run(main)
