#!/usr/bin/python3
# SIGINT and SIGQUIT (SIGTERM has test-file-sigterm-inflight.py) with writes in flight from a
# real client: libnbd pipelines 48 writes of 1 MiB to a file export and the signal arrives once
# the first replies are in.  The server finishes what it is doing and exits 0; every write it
# acknowledged as done is in the file, and the writes acknowledged before the signal are too.
# Under --run, a signal to the server ends the command too, and the status is the command's.
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import Server, check, check_eq, run, server_command, tmpdir  # noqa: E402

MiB = 1 << 20
N = 48


def inflight(sig):
    disk = os.path.join(tmpdir(), "disk.img")
    with open(disk, "wb") as f:
        f.truncate(N * MiB)
    blocks = [os.urandom(64) * (MiB // 64) for _ in range(N)]
    srv = Server(["file", disk])
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b)), i * MiB)
               for i, b in enumerate(blocks)]
    done = set()
    while len(done) < 4:
        h.poll(-1)
        done |= {c for c in cookies if c not in done and h.aio_command_completed(c)}
    before = set(done)
    os.kill(srv.pid, sig)
    # The server may close the connection once it has answered what it read: then libnbd
    # fails the rest, which is allowed; what it acknowledged must be on disk.
    try:
        while h.aio_in_flight() > 0:
            h.poll(-1)
    except nbd.Error:
        pass
    acked = set(before)
    for c in cookies:
        if c in done:
            continue
        try:
            if h.aio_command_completed(c):
                acked.add(c)
        except nbd.Error:
            pass
    print("%s: %d writes acknowledged before the signal, %d in all" % (sig.name, len(before), len(acked)))
    try:
        h.shutdown()
    except nbd.Error:
        pass
    del h  # closes the socket: the server waits for its clients to leave
    status = srv.proc.wait(timeout=30)
    srv.stop()
    check_eq(status, 0, "exit status after %s" % sig.name)
    with open(disk, "rb") as f:
        data = f.read()
    for i, c in enumerate(cookies):
        if c in acked:
            check(data[i * MiB:(i + 1) * MiB] == blocks[i],
                  "acknowledged write %d is not in the file after %s" % (i, sig.name))


def under_run():
    d = tmpdir()
    marker = os.path.join(d, "cmd-started")
    p = subprocess.Popen(server_command() + ["memory", "1M", "--run",
                                             "touch %s; exec sleep 300" % marker],
                         stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(300):
        if os.path.exists(marker):
            break
        time.sleep(0.1)
    check(os.path.exists(marker), "--run command did not start")
    p.send_signal(signal.SIGTERM)
    status = p.wait(timeout=30)
    check_eq(status, 128 + signal.SIGTERM, "exit status of --run after SIGTERM to the server")


def main():
    for sig in (signal.SIGINT, signal.SIGQUIT):
        inflight(sig)
    under_run()


run(main)
