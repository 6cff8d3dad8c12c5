#!/usr/bin/python3
# Running out of threads refuses connections, it does not kill the server.  RLIMIT_NPROC is not
# enforced for root, so the server runs as nobody (setpriv --reuid=65534 --regid=65534
# --clear-groups, on a socket in a directory nobody may write) under `prlimit --nproc=64`, with
# `-t 16` (16 worker threads per connection, which reads slowed by the delay filter make it use):
# a handful of connections use up the threads.  Then
# 20 libnbd clients in one process connect at once, each with 8 reads in flight:
# - every client is either served (its reads return the data) or refused or disconnected with an
#   error it sees; none hangs (each finishes within 20 s);
# - at least one client is served, and the server is still running and printed no panic;
# - the clients that were served are still served (another read works on each);
# - once they have all gone, a new client is served (nbdsh writes and reads).
#
# Fails against nbdkit 1.32: when it cannot start threads it either drops connections it has
# already served (their next read gets ENOTCONN) or dies on an assertion
# (connections.c: raw_send_socket: Assertion `sock >= 0' failed).
#
# RLIMIT_NPROC counts every process and thread of the user, so this test assumes nothing else
# runs as nobody (65534) meanwhile.
import os
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import Server, check, run, tmpdir  # noqa: E402

NOBODY = 65534
NPROC = 64
CLIENTS = 20
IN_FLIGHT = 8
DEADLINE = 20.0


class Attempt(threading.Thread):
    """One client: connect, then IN_FLIGHT reads at once, waiting for all of them."""

    def __init__(self, uri, index):
        super().__init__(daemon=True)
        self.uri, self.index = uri, index
        self.handle = None
        self.outcome = None   # "served", or a description of the error

    def run(self):
        try:
            h = nbd.NBD()
            h.connect_uri(self.uri)
            self.handle = h
            reads = []
            for i in range(IN_FLIGHT):
                buf = nbd.Buffer(4096)
                reads.append((buf, h.aio_pread(buf, i * 4096)))
            while h.aio_in_flight() > 0:
                h.poll(1000)
            for buf, cookie in reads:
                h.aio_command_completed(cookie)   # raises nbd.Error if the read failed
                if buf.to_bytearray() != b"\xc3" * 4096:
                    self.outcome = "wrong data"
                    return
            self.outcome = "served"
        except nbd.Error as e:
            self.outcome = "error: %s" % e.string


def main():
    d = tmpdir()
    os.chmod(d, 0o711)   # nobody must reach the socket directory inside
    sockdir = os.path.join(d, "sockets")
    os.mkdir(sockdir)
    os.chown(sockdir, NOBODY, NOBODY)
    wrapper = ["prlimit", "--nproc=%d" % NPROC, "setpriv", "--reuid=%d" % NOBODY,
               "--regid=%d" % NOBODY, "--clear-groups", "--"]
    # Reads slowed to 20 ms each, so that each connection grows to its 16 workers (a fast backend
    # is served by one worker per connection).
    with Server(["--filter=delay", "memory", "64M", "delay-read=20ms"], options=["-t", "16"], wrapper=wrapper,
                socket_path=os.path.join(sockdir, "nbd.sock")) as srv:
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        h.pwrite(b"\xc3" * 65536, 0)
        h.shutdown()
        del h

        attempts = [Attempt(srv.uri, i) for i in range(CLIENTS)]
        for a in attempts:
            a.start()
        deadline = time.monotonic() + DEADLINE
        for a in attempts:
            a.join(max(0.0, deadline - time.monotonic()))
        with open("/proc/%d/status" % srv.pid) as f:
            threads = [line.split()[1] for line in f if line.startswith("Threads:")]
        print("server threads with %d clients: %s" % (CLIENTS, threads[0] if threads else "?"))
        for a in attempts:
            print("client %2d: %s" % (a.index, a.outcome or "HUNG"))
        hung = [a.index for a in attempts if a.is_alive() or a.outcome is None]
        served = [a for a in attempts if a.outcome == "served"]
        time.sleep(0.5)
        check(srv.alive(), "server died: %s" % srv.stderr()[-800:])
        check("panicked" not in srv.stderr(), "server panicked: %s" % srv.stderr()[-800:])
        check(not hung, "clients %s neither served nor refused within %.0f s" % (hung, DEADLINE))
        check(served, "no client was served")
        print("%d of %d clients served" % (len(served), CLIENTS))

        dropped = []
        for a in served:
            try:
                check(a.handle.pread(4096, 0) == b"\xc3" * 4096,
                      "client %d: second read: wrong data" % a.index)
            except nbd.Error as e:
                dropped.append("client %d: %s" % (a.index, e.string))
        check(not dropped, "served clients dropped afterwards: %s" % "; ".join(dropped))
        for a in attempts:
            if a.handle is not None:
                try:
                    a.handle.shutdown()
                except nbd.Error:
                    pass
                a.handle = None   # libnbd closes the connection when the handle goes
        time.sleep(0.5)

        p = subprocess.run(["nbdsh", "-u", srv.uri, "-c",
                            "h.pwrite(b'z' * 4096, 8192); assert h.pread(4096, 8192) == b'z' * 4096"],
                           capture_output=True, text=True, timeout=20)
        check(p.returncode == 0, "new client after the others left: %s" % p.stderr.strip())
        check(srv.alive(), "server died")
        check("panicked" not in srv.stderr(), "server panicked: %s" % srv.stderr()[-800:])


run(main)
