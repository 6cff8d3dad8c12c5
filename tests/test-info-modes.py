#!/usr/bin/python3
# The info plugin: a disk made of the export name (plain or base64-decoded), of the client's
# address ("unix" on a Unix socket, ADDR:PORT over TCP) or of a clock (12 bytes: seconds and
# microseconds, big-endian).
import base64
import os
import socket
import struct
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import Server, check, check_eq, nbd_handle, run, server_command  # noqa: E402


def contents(uri):
    h = nbd_handle(uri)
    data = h.pread(h.get_size(), 0) if h.get_size() else b""
    multi = h.can_multi_conn()
    h.shutdown()
    return data, multi


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    with Server(["info"]) as srv:
        check_eq(contents(srv.uri_for("hello")), (b"hello", True), "export name")
        check_eq(contents(srv.uri_for(""))[0], b"", "empty export name")

    blob = bytes(range(256)) * 2
    with Server(["info", "mode=base64exportname"]) as srv:
        h = nbd.NBD()
        h.set_export_name(base64.b64encode(blob).decode())
        h.connect_unix(srv.sock)
        check_eq(h.pread(h.get_size(), 0), blob, "base64 export name")
        h.shutdown()
        h = nbd.NBD()
        h.set_export_name("not base64!")
        try:
            h.connect_unix(srv.sock)
            raise AssertionError("an export name that is not base64 was accepted")
        except nbd.Error:
            pass

    with Server(["info", "address"]) as srv:
        check_eq(contents(srv.uri), (b"unix", False), "address over a Unix socket")
    port = free_port()
    tcp = subprocess.Popen(server_command() + ["-f", "-i", "127.0.0.1", "-p", str(port), "info", "mode=address"],
                           stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                h = nbd_handle("nbd://127.0.0.1:%d/" % port)
                break
            except nbd.Error:
                check(time.time() < deadline and tcp.poll() is None, "the TCP server did not start")
                time.sleep(0.1)
        text = h.pread(h.get_size(), 0).decode()
        host, client_port = text.rsplit(":", 1)
        check_eq(host, "127.0.0.1", "address host")
        check(0 < int(client_port) < 65536 and int(client_port) != port, "client port: %s" % text)
        h.shutdown()
    finally:
        tcp.terminate()
        tcp.wait(30)

    with Server(["info", "time"]) as srv:
        data, multi = contents(srv.uri)
        check_eq(len(data), 12, "time size")
        secs, usecs = struct.unpack(">qi", data)
        check(abs(secs - time.time()) < 5 and 0 <= usecs < 1000000, "time: %d %d" % (secs, usecs))
        check(not multi, "no multi-conn for a clock")

    with Server(["info", "conntime"]) as srv:
        secs, usecs = struct.unpack(">qi", contents(srv.uri)[0])
        check(secs == 0 and usecs < 1000000, "conntime: %d %d" % (secs, usecs))

    with Server(["info", "uptime"]) as srv:
        time.sleep(1.1)
        secs, usecs = struct.unpack(">qi", contents(srv.uri)[0])
        check(1 <= secs < 60, "uptime: %d %d" % (secs, usecs))


run(main)
