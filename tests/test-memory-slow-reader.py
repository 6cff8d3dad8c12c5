#!/usr/bin/python3
# A client that stops reading its replies must hold up nobody else. One client pipelines 64 reads
# of 256 KiB (16 MiB of replies, far more than a socket buffers) and then reads nothing for 2 s;
# meanwhile a second client's writes, to pages that share the memory plugin's locks with those
# reads, must finish at once. Then the first client's replies must all arrive with the right data.
# (The memory plugin lends its pages to the server for reads; the server must never wait on a
# socket while it holds them.)
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run  # noqa: E402
from nbdwire import CMD_READ, Client  # noqa: E402

KiB = 1024
MiB = 1 << 20
N = 64


def main():
    srv = Server(["memory", "64M"])
    data = os.urandom(16 * MiB)
    w = Client(srv.sock)
    w.connect_go()
    for off in range(0, len(data), 4 * MiB):
        check_eq(w.write(off, data[off:off + 4 * MiB]), 0, "fill")

    slow = Client(srv.sock)
    slow.connect_go()
    cookies = {}
    blob = b""
    for i in range(N):
        req, cookie = slow.request_bytes(CMD_READ, i * 256 * KiB, 256 * KiB)
        cookies[cookie] = i
        blob += req
    slow.send(blob)
    time.sleep(0.5)  # the server fills the slow client's socket and has replies waiting

    start = time.monotonic()
    for i in range(16):
        # 32 MiB on: other bytes, but the same lock stripes as the stalled reads.
        check_eq(w.write(32 * MiB + i * 256 * KiB, b"\x5a" * (256 * KiB)), 0, "write beside a stalled reader")
    took = time.monotonic() - start
    print("16 writes while a reader stalls: %.3f s" % took)
    check(took < 1.0, "writes waited %.1f s for a client that does not read" % took)
    time.sleep(1.5)

    seen = set()
    while len(seen) < N:
        reply = slow.read_reply()
        i = cookies[reply.chunks[0].cookie]
        check_eq(reply.error, 0, "read %d" % i)
        got = reply.read_data(i * 256 * KiB, 256 * KiB)
        check(got == data[i * 256 * KiB:(i + 1) * 256 * KiB], "read %d returned the wrong data" % i)
        seen.add(i)
    check_eq(w.read(32 * MiB, 256 * KiB)[1], b"\x5a" * (256 * KiB), "the writes landed")


run(main)
