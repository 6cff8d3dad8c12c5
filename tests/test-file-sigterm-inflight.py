#!/usr/bin/python3
# SIGTERM with writes in flight: 64 pipelined 1 MiB writes to a file export, SIGTERM after the
# first replies arrive.  The server exits with status 0, and every write it acknowledged as
# successful is in the file afterwards (nothing acknowledged is lost).
import os
import signal
import socket
import sys
import threading

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run, tmpdir  # noqa: E402
from nbdwire import CMD_WRITE, Client, Closed  # noqa: E402

MiB = 1 << 20
N = 64


def main():
    disk = os.path.join(tmpdir(), "disk.img")
    with open(disk, "wb") as f:
        f.truncate(N * MiB)
    blocks = [os.urandom(16) * (MiB // 16) for _ in range(N)]

    srv = Server(["file", disk])
    c = Client(srv.sock)
    c.connect_go()
    cookie_to_block = {}
    blob = b""
    for i, block in enumerate(blocks):
        req, ck = c.request_bytes(CMD_WRITE, i * MiB, MiB, payload=block)
        blob += req
        cookie_to_block[ck] = i
    # Send from a thread, so that SIGTERM can arrive while requests are still on the way.
    def sender():
        try:
            c.send(blob)
        except OSError:
            pass  # the server closed the connection: the rest was never sent

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    acked = set()
    while len(acked) < 4:
        chunk = c.read_chunk()
        check(chunk.error == 0 and not chunk.is_error, "write reply: %r" % chunk)
        acked.add(cookie_to_block[chunk.cookie])
    srv.proc.send_signal(signal.SIGTERM)
    try:
        while len(acked) < N:
            chunk = c.read_chunk()
            # A structured error chunk (ESHUTDOWN for writes read after the signal) has error 0
            # in its header: only a reply that is no error acknowledges the write.
            if chunk.error == 0 and not chunk.is_error:
                acked.add(cookie_to_block[chunk.cookie])
    except (Closed, ConnectionResetError, OSError):
        pass
    print("%d of %d writes acknowledged" % (len(acked), N))
    c.sock.shutdown(socket.SHUT_RDWR)
    thread.join(30)
    c.close()
    status = srv.stop(timeout=30)
    check_eq(status, 0, "server exit status after SIGTERM with writes in flight")
    with open(disk, "rb") as f:
        for i in sorted(acked):
            f.seek(i * MiB)
            check(f.read(MiB) == blocks[i], "acknowledged write %d is not in the file" % i)


run(main)
