#!/usr/bin/env python3
"""The nbd plugin over a hostile server below: a small NBD server in this test that negotiates
properly and then breaks the protocol in the way the export name asks for (the proxy runs with
dynamic-export=true, so each client picks one): a reply with a cookie nobody sent, a bad magic,
data cut short, a structured chunk announcing 4 GiB, a chunk outside its read, no reply at all
(with timeout=1). Each request through the proxy fails with EIO, the proxy neither dies nor
balloons in memory, and a well-behaved export of the same server is served afterwards."""

import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run, status_field, tmpdir  # noqa: E402

NBDMAGIC, IHAVEOPT, REPLY_MAGIC = 0x4E42444D41474943, 0x49484156454F5054, 0x3E889045565A9
SIZE = 1 << 20


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        got = s.recv(n - len(buf))
        if not got:
            raise EOFError
        buf += got
    return buf


def option_reply(s, opt, reply, data=b""):
    s.sendall(struct.pack(">QIII", REPLY_MAGIC, opt, reply, len(data)) + data)


def serve(conn, structured):
    conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
    recv_exact(conn, 4)
    mode = None
    while mode is None:
        _, opt, length = struct.unpack(">QII", recv_exact(conn, 16))
        data = recv_exact(conn, length)
        if opt == 8 and structured:
            option_reply(conn, opt, 1)
        elif opt == 7:
            (n,) = struct.unpack(">I", data[:4])
            mode = data[4:4 + n].decode()
            option_reply(conn, opt, 3, struct.pack(">HQH", 0, SIZE, 1 | 4))
            option_reply(conn, opt, 1)
        else:
            option_reply(conn, opt, 0x80000001)
    while True:
        magic, flags, kind, cookie, offset, length = struct.unpack(">IHHQQI", recv_exact(conn, 28))
        if kind == 1:
            recv_exact(conn, length)
        if kind == 2:
            return
        if mode == "good":
            if structured and kind == 0:
                conn.sendall(struct.pack(">IHHQIQ", 0x668E33EF, 1, 1, cookie, 8 + length, offset)
                             + bytes(length))
            else:
                conn.sendall(struct.pack(">IIQ", 0x67446698, 0, cookie)
                             + (bytes(length) if kind == 0 else b""))
        elif mode == "wrong-cookie":
            conn.sendall(struct.pack(">IIQ", 0x67446698, 0, cookie + 1000) + bytes(length))
        elif mode == "bad-magic":
            conn.sendall(b"\xde\xad\xbe\xef" * 8)
        elif mode == "cut-short":
            conn.sendall(struct.pack(">IIQ", 0x67446698, 0, cookie) + bytes(length // 2))
            return
        elif mode == "huge-chunk":
            conn.sendall(struct.pack(">IHHQI", 0x668E33EF, 1, 1, cookie, 0xFFFFFFFF) + bytes(65536))
        elif mode == "silent":
            pass
        elif mode == "outside":
            conn.sendall(struct.pack(">IHHQIQ", 0x668E33EF, 1, 1, cookie, 8 + length, offset + 4096)
                         + bytes(length))


def listen(path, structured):
    ls = socket.socket(socket.AF_UNIX)
    ls.bind(path)
    ls.listen(16)

    def accept():
        while True:
            conn, _ = ls.accept()

            def one(c=conn):
                try:
                    serve(c, structured)
                except (EOFError, OSError):
                    pass
                finally:
                    c.close()
            threading.Thread(target=one, daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()


def main():
    import nbd
    d = tmpdir()
    for structured, modes in ((False, ["wrong-cookie", "bad-magic", "cut-short"]),
                              (True, ["huge-chunk", "outside", "bad-magic"])):
        below = os.path.join(d, "hostile-%d.sock" % structured)
        listen(below, structured)
        proxy = Server(["nbd", "socket=" + below, "dynamic-export=true"])
        for mode in modes + ["good"]:
            h = nbd.NBD()
            h.connect_uri(proxy.uri_for(mode))
            try:
                data = h.pread(65536, 8192)
                check(mode == "good", "%s: the read succeeded" % mode)
                check_eq(data, bytes(65536), "good: data")
            except nbd.Error as e:
                check(mode != "good", "good: %s" % e)
                check_eq(e.errno, "EIO", "%s: errno" % mode)
            h.shutdown()
            check(proxy.alive(), "%s: the proxy died" % mode)
        rss = status_field(proxy.pid, "VmHWM")
        check(rss < 200 * 1024, "the proxy's memory peaked at %d kB" % rss)
        log = proxy.stderr()
        for what in ("which no request in flight has", "bad reply magic"):
            if not structured or what != "which no request in flight has":
                check(what in log, "the log does not say '%s':\n%s" % (what, log))
        proxy.stop()
        print("structured=%s: %s all failed with EIO; peak RSS %d kB" % (structured, modes, rss))

    # A server that takes requests and never answers: with timeout=1 the request fails with EIO
    # after about a second and the connection is given up; a new client gets a new one.
    proxy = Server(["nbd", "socket=" + below, "dynamic-export=true", "timeout=1"])
    for mode in ("silent", "good"):
        h = nbd.NBD()
        h.connect_uri(proxy.uri_for(mode))
        start = time.monotonic()
        try:
            h.pread(512, 0)
            check(mode == "good", "silent: the read succeeded")
        except nbd.Error as e:
            took = time.monotonic() - start
            check(mode == "silent", "good: %s" % e)
            check_eq(e.errno, "EIO", "silent: errno")
            check(0.9 < took < 5, "silent: failed after %.1f s with timeout=1" % took)
            print("silent server: EIO after %.1f s" % took)
        h.shutdown()
    check("no reply within 1 s (timeout=)" in proxy.stderr(), "no timeout in the log:\n" + proxy.stderr())
    proxy.stop()


run(main)
