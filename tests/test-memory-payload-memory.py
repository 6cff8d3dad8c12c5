#!/usr/bin/python3
# A WRITE header announcing the maximum payload (64 MiB) must not make the server allocate the
# whole payload before it arrives: 20 clients (raw sockets) each send a 64 MiB WRITE header and
# only 8 KiB of its payload, then stall.  While they stall:
# - the server's resident memory stays under 256 MiB (its peak, VmHWM, once RSS has settled;
#   20 x 64 MiB would be 1.25 GiB);
# - a 21st client, nbdsh, is served: it connects, reads, writes and reads back within 10 s.
# Then the stalled clients hang up; the server stays up, its RSS drops back under 256 MiB, and
# the stalled writes changed nothing (nbdsh reads the old data).
#
# Fails against nbdkit 1.32 too: it also allocates each announced payload at once (~1.25 GiB).
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, nbdsh_within, run, status_field  # noqa: E402
from nbdwire import CMD_WRITE, Client  # noqa: E402

MiB = 1 << 20
CLIENTS = 20
PAYLOAD = 64 * MiB
SENT = 8 << 10
RSS_LIMIT = 256 * MiB


def rss(pid):
    return int(status_field(pid, "VmRSS")) * 1024


def nbdsh_client(srv, what):
    """A real client on a new connection; must finish within 10 s."""
    script = ("h.pwrite(b'n' * 4096, 1 << 20)\n"
              "assert h.pread(4096, 1 << 20) == b'n' * 4096\n"
              "assert h.pread(4096, 0) == b'\\x33' * 4096, 'stalled writes changed the data'\n")
    print("%s: nbdsh served in %.2f s" % (what, nbdsh_within(srv.uri, script, what)))


def main():
    with Server(["memory", "1G"]) as srv:
        subprocess.run(["nbdsh", "-u", srv.uri, "-c", "h.pwrite(b'\\x33' * 4096, 0)"],
                       check=True, timeout=30)
        base = rss(srv.pid)
        print("server RSS at start: %d MiB" % (base // MiB))

        stalled = []
        try:
            for _ in range(CLIENTS):
                c = Client(srv.sock)
                stalled.append(c)
                c.connect_go()
                c.send_request(CMD_WRITE, 0, PAYLOAD)
                c.send(b"\xee" * SENT)
            # Time for a server that allocates on the header to do so: until RSS stops growing.
            time.sleep(1.0)
            last = rss(srv.pid)
            for _ in range(20):
                time.sleep(0.25)
                now = rss(srv.pid)
                if now - last < MiB:
                    break
                last = now
            during = int(status_field(srv.pid, "VmHWM")) * 1024   # the peak, spikes included
            print("server with %d stalled 64 MiB writes: VmRSS %d MiB, VmHWM %d MiB, %s threads"
                  % (CLIENTS, rss(srv.pid) // MiB, during // MiB, status_field(srv.pid, "Threads")))
            check(srv.alive(), "server died with stalled writers")
            nbdsh_client(srv, "while %d writers stall" % CLIENTS)
            check(during < RSS_LIMIT, "server peak RSS %d MiB with %d stalled 64 MiB writes; want "
                  "under %d MiB" % (during // MiB, CLIENTS, RSS_LIMIT // MiB))
        finally:
            for c in stalled:
                c.close()

        time.sleep(1.0)
        check(srv.alive(), "server died after the stalled writers hung up")
        nbdsh_client(srv, "after the stalled writers hung up")
        after = rss(srv.pid)
        print("server RSS after they hung up: %d MiB" % (after // MiB))
        check(after < RSS_LIMIT, "server RSS %d MiB after the writers left" % (after // MiB))


run(main)
