#!/usr/bin/python3
# The evil filter over a memory disk whose first 2 MiB hold 0x55 bytes (holes are never
# corrupted); corruption is counted as the bits that differ from 0x55:
# - cosmic-rays at 1%: about 1% of the bits read differ (within six standard deviations), and
#   two reads of the same range differ;
# - stuck-bits with a seed: two reads give the same corruption, and two servers with the same
#   seed give the same corruption;
# - stuck-wires: reads at different offsets are corrupted at the same positions;
# - holes stay zero;
# - a bad mode stops the server, naming parameter and value.
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, nbd_handle, run, server_command, tmpdir  # noqa: E402

MIB = 1 << 20


def bits(data):
    """How many bits of data differ from the pattern written."""
    return sum(bin(b ^ 0x55).count("1") for b in data)


def filled(params):
    """A server with the filter, its first 2 MiB written with 0x55 bytes."""
    srv = Server(["--filter=evil", "memory", "4M"] + params)
    h = nbd_handle(srv.uri)
    h.pwrite(b"\x55" * (2 * MIB), 0)
    return srv, h


def main():
    srv, h = filled(["evil=cosmic-rays", "evil-probability=1%"])
    a = h.pread(MIB, 0)
    n = 8 * MIB
    sd = (n * 0.01 * 0.99) ** 0.5
    check(abs(bits(a) - n * 0.01) < 6 * sd, "%d bits set of %d at 1%%" % (bits(a), n))
    check(h.pread(MIB, 0) != a, "cosmic rays hit the same bits twice")
    check_eq(h.pread(MIB, 3 * MIB), bytes(MIB), "a hole was corrupted")
    h.shutdown()
    srv.stop()

    reads = []
    for _ in range(2):
        srv, h = filled(["evil-probability=1:10000", "evil-seed=1234"])
        first = h.pread(MIB, 0)
        check(bits(first) > 0, "no stuck bit showed in 1 MiB")
        check_eq(h.pread(4096, 8192), first[8192:8192 + 4096], "stuck bits at the same place")
        reads.append(first)
        h.shutdown()
        srv.stop()
    check(reads[0] == reads[1], "the same seed gave different stuck bits")

    srv, h = filled(["evil=stuck-wires", "evil-probability=1:1000", "evil-seed=99"])
    a, b = h.pread(4096, 0), h.pread(4096, 65536 + 512)
    check(bits(a) > 0 and a == b, "stuck wires differ between reads")
    h.shutdown()
    srv.stop()

    p = subprocess.run(server_command() + ["-f", "-U", os.path.join(tmpdir(), "s"), "--filter=evil", "memory",
                                           "1M", "evil=gamma-rays"], capture_output=True, text=True, timeout=30)
    check(p.returncode != 0 and "evil=gamma-rays" in p.stderr, "bad mode: %r" % p.stderr)


run(main)
