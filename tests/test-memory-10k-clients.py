#!/usr/bin/python3
# Ten thousand clients on a bounded number of threads: 10,000 clients connect to `memory 1G`,
# each past the handshake (raw sockets, NBD_OPT_GO), and then sit idle. Once they have been
# idle long enough to be parked (a little over a second), the server must hold them all in
# under 100 threads and under 1 GiB of resident memory; meanwhile a busy client (nbdcopy of
# 64 MiB in and out) is served, and an idle client that wakes up is served again. Prints the
# figures. RLIMIT_NOFILE is raised to its hard limit (at least 10,500 needed) for the test and the
# server: the server needs one descriptor per connection, the test one per client.
#
# Fails against nbdkit 1.32: it keeps 17 threads per client.
# timeout: 240
import os
import resource
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, nbdsh_within, run, status_field, tmpdir  # noqa: E402
from nbdwire import CMD_READ, Client  # noqa: E402

CLIENTS = 10000
MAX_THREADS = 100
# The goal is under 1 GiB; the server holds about 86 MiB. A quarter of the goal catches memory a
# parked connection keeps by mistake (a 64 KiB read buffer each would be 640 MiB).
MAX_RSS_KIB = 256 << 10
NOFILE = 10500


def settle(pid, want_threads, seconds=15):
    """Waits until the server has at most `want_threads` threads; returns the count."""
    deadline = time.monotonic() + seconds
    while True:
        threads = status_field(pid, "Threads")
        if threads <= want_threads or time.monotonic() > deadline:
            return threads
        time.sleep(0.25)


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NOFILE:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        except (ValueError, OSError):
            raise AssertionError("RLIMIT_NOFILE hard limit %d is under %d and cannot be raised" % (hard, NOFILE))
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it
    work = tmpdir()
    with Server(["memory", "1G"]) as srv:
        clients = []
        try:
            start = time.monotonic()
            for i in range(CLIENTS):
                c = Client(srv.sock)
                clients.append(c)
                c.connect_go()
                if i % 1000 == 999:
                    # Let the handshake threads finish as they would with real clients.
                    settle(srv.pid, 2 * MAX_THREADS, seconds=5)
            print("%d clients connected in %.1f s" % (CLIENTS, time.monotonic() - start))
            threads = settle(srv.pid, 10)  # parking takes a second of silence per client
            rss = status_field(srv.pid, "VmRSS")
            print("with %d idle clients: %d threads, VmRSS %d MiB" % (CLIENTS, threads, rss // 1024))
            check(threads < MAX_THREADS, "%d threads for %d idle clients, want under %d"
                  % (threads, CLIENTS, MAX_THREADS))
            check(rss < MAX_RSS_KIB, "VmRSS %d KiB with %d idle clients, want under 256 MiB"
                  % (rss, CLIENTS))

            # A busy client among them.
            data = os.path.join(work, "in.img")
            with open(data, "wb") as f:
                f.write(os.urandom(64 << 20))
            start = time.monotonic()
            subprocess.run(["nbdcopy", data, srv.uri], check=True)
            subprocess.run(["nbdcopy", srv.uri + "", os.path.join(work, "out.img")], check=True)
            print("busy client: 64 MiB in and out in %.2f s" % (time.monotonic() - start))
            with open(data, "rb") as a, open(os.path.join(work, "out.img"), "rb") as b:
                check(a.read(64 << 20) == b.read(64 << 20), "the busy client's data came back changed")

            # Idle clients wake up and are served.
            for c in (clients[0], clients[CLIENTS // 2], clients[-1]):
                reply = c.command(CMD_READ, 0, 4096)
                check_eq(reply.error, 0, "a parked client's read")
            nbdsh_within(srv.uri, "assert h.get_size() == 1 << 30", "one more client")
        finally:
            for c in clients:
                c.close()
        check(srv.alive(), "server died")
        threads = settle(srv.pid, 10)
        print("after the clients left: %d threads" % threads)


run(main)
