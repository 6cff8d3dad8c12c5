#!/usr/bin/python3
# Idle connections must be cheap: 1,000 clients connected to `memory 1G`, each past the handshake
# (structured replies and NBD_OPT_GO done, raw sockets) and then idle, may cost the server at
# most 150 KiB of resident memory each (VmRSS over its idle baseline, divided by 1,000).
# While the 1,000 are connected, one more client (nbdsh) is served.  Prints the per-connection
# cost and the server's thread count (for information).  RLIMIT_NOFILE is raised to 4096 for the
# test and the server.
#
# Fails against nbdkit 1.32 too: on this test it needs about 156 KiB per idle connection
# (17 threads per connection: 16 workers and a reader).
import os
import resource
import sys
import time

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, nbdsh_within, run, status_field  # noqa: E402
from nbdwire import Client  # noqa: E402

CLIENTS = 1000
LIMIT_KIB = 150
NOFILE = 4096


def settled_rss_kib(pid):
    """VmRSS once it stops moving (threads may still be starting or parking)."""
    last = status_field(pid, "VmRSS")
    for _ in range(20):
        time.sleep(0.25)
        now = status_field(pid, "VmRSS")
        if abs(now - last) < 256:
            return now
        last = now
    return last


def nbdsh(srv, what):
    script = ("h.pwrite(b'i' * 65536, 0)\n"
              "assert h.pread(65536, 0) == b'i' * 65536\n")
    nbdsh_within(srv.uri, script, what)


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < NOFILE:   # the server inherits it
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, max(hard, NOFILE)))
    with Server(["memory", "1G"]) as srv:
        nbdsh(srv, "before")
        base = settled_rss_kib(srv.pid)
        print("idle server: VmRSS %d KiB, %d threads" % (base, status_field(srv.pid, "Threads")))

        clients = []
        try:
            start = time.monotonic()
            for _ in range(CLIENTS):
                c = Client(srv.sock)
                clients.append(c)
                c.connect_go()
            print("%d clients connected in %.1f s" % (CLIENTS, time.monotonic() - start))
            loaded = settled_rss_kib(srv.pid)
            threads = status_field(srv.pid, "Threads")
            per = (loaded - base) / CLIENTS
            print("with %d idle clients: VmRSS %d KiB (+%d KiB), %d threads" %
                  (CLIENTS, loaded, loaded - base, threads))
            print("per idle connection: %.1f KiB (limit %d KiB)" % (per, LIMIT_KIB))
            nbdsh(srv, "with %d idle clients" % CLIENTS)
            check(per < LIMIT_KIB, "%.1f KiB of server memory per idle connection, want under "
                  "%d KiB" % (per, LIMIT_KIB))
        finally:
            for c in clients:
                c.close()
        time.sleep(0.5)
        check(srv.alive(), "server died")
        nbdsh(srv, "after the idle clients left")


run(main)
