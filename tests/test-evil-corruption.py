#!/usr/bin/python3
# The evil filter over a memory disk whose first 2 MiB hold 0x55 bytes; corruption is counted as
# the bits that differ from 0x55:
# - cosmic-rays at 1%: about 1% of the bits read differ, and two reads of the same range differ;
# - stuck-bits with a seed: two reads give the same corruption, and two servers with the same
#   seed give the same corruption;
# - stuck-wires: reads at different offsets are corrupted at the same positions;
# - holes are corrupted like data (nbdkit's filter does not look for them);
# - the bytes read are exactly those of nbdkit's method (see nbdkit_model below: the same seed
#   corrupts the same bits as nbdkit 1.46) for all three modes, at several probabilities,
#   including reads across blocks of stuck bits and probabilities over 1/8;
# - a bad mode stops the server, naming parameter and value.
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, nbd_handle, run, server_command, tmpdir  # noqa: E402

MIB = 1 << 20
M64 = (1 << 64) - 1


class Xoshiro256:
    """nbdkit's generator: xoshiro256** 1.0, its state from splitmix64 started at the seed."""

    def __init__(self, seed):
        self.s = []
        for _ in range(4):
            seed = (seed + 0x9E3779B97F4A7C15) & M64
            z = seed
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    def next(self):
        s = self.s
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & M64  # noqa: E731
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result


def nbdkit_model(data, offset, mode, p, seed, stuck_p=1.0, cosmic=None):
    """What nbdkit's evil filter makes of `data` read at `offset`: walks of random steps (a
    step of next() % floor(2/P) bits, then a draw deciding the hit), as nbdkit-evil-filter's
    source describes them. `cosmic` is the server-wide generator of cosmic-rays mode."""
    buf = bytearray(data)

    def hit(i, bit, draw):
        if mode == "cosmic-rays":
            buf[i] ^= 1 << bit
        elif stuck_p * 2 ** 32 > (draw & 0xFFFFFFFF):
            if draw & 1:
                buf[i] |= 1 << bit
            else:
                buf[i] &= ~(1 << bit) & 0xFF

    def walk(start, length, skip, g):
        if p < 1e-12:
            return
        if p > 1 / 8:
            for i in range(start, start + length):
                for bit in range(8):
                    hit(i, bit, g.next())
            return
        span, at = int(2 / p), 0
        while at < skip + length:
            step, draw = g.next() % span, g.next()
            at += step // 8
            if at >= skip + length:
                break
            if at >= skip:
                hit(start + at - skip, step & 7, draw)

    if mode == "cosmic-rays":
        walk(0, len(buf), 0, cosmic)
    elif mode == "stuck-wires":
        walk(0, len(buf), 0, Xoshiro256(seed))
    else:
        size = 1 << 20
        if 1e-12 <= p <= 1 / 8:
            size = 1 << max(0, (int(100 / p) // 8 - 1).bit_length())
        block, done = offset & ~(size - 1), 0
        while done < len(buf):
            n = min(len(buf) - done, block + size - (offset + done))
            walk(done, n, offset + done - block, Xoshiro256((seed + block) & M64))
            block += size
            done += n
    return bytes(buf)


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
    # nbdkit's walk rounds its steps down to whole bytes (at 1%: 96 bits on average, not 100), so
    # a little over 1% of the bits are hit; the exact bits are checked against the model below.
    n = 8 * MIB
    check(0.95 * n * 0.01 < bits(a) < 1.1 * n * 0.01, "%d bits set of %d at 1%%" % (bits(a), n))
    check(h.pread(MIB, 0) != a, "cosmic rays hit the same bits twice")
    check(bits(h.pread(MIB, 3 * MIB)) != bits(bytes(MIB)), "a hole was not corrupted")
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

    # Byte for byte as nbdkit's method: each mode, a few seeds and probabilities, reads that
    # start and end inside blocks of stuck bits (1:1000 makes 16 KiB blocks), and P over 1/8.
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(256)) * 1024
    cases = [
        ("stuck-bits", "1:1000", 0.001, 1234, 1.0, [(0, 65536), (12345, 40000), (3 * MIB + 100, 9000)]),
        ("stuck-bits", "1e-5", 1e-5, 4294967295, 0.5, [(0, 262144), (MIB - 5000, 10000)]),
        ("stuck-bits", "0.5", 0.5, 7, 1.0, [(100, 1000)]),
        ("stuck-wires", "1:300", 1 / 300, 99, 0.3, [(0, 4096), (777, 20000)]),
        ("cosmic-rays", "1:500", 1 / 500, 5, 1.0, [(0, 8192), (4096, 100), (MIB, 30000)]),
        ("cosmic-rays", "20%", 0.2, 6, 1.0, [(0, 64)]),
    ]
    for mode, given, prob, seed, stuck_p, reads in cases:
        srv = Server(["--filter=evil", "memory", "4M", "evil=" + mode, "evil-probability=" + given,
                      "evil-seed=%d" % seed, "evil-stuck-probability=%s" % stuck_p])
        h = nbd_handle(srv.uri)
        for at in range(0, 4 * MIB, len(pattern)):
            h.pwrite(pattern, at)
        cosmic = Xoshiro256(seed)
        for offset, length in reads:
            stored = bytes(pattern[(offset + i) % len(pattern)] for i in range(length))
            want = nbdkit_model(stored, offset, mode, prob, seed, stuck_p, cosmic)
            got = h.pread(length, offset)
            differ = [i for i in range(length) if got[i] != want[i]]
            check(not differ, "evil=%s evil-probability=%s evil-seed=%d: read of %d at %d differs from "
                  "nbdkit's method at %d bytes, first at %s" % (mode, given, seed, length, offset,
                                                                 len(differ), differ[:1]))
            check(got != stored or length * 8 * prob < 20, "%s: nothing corrupted in %d bytes" % (mode, length))
        print("evil=%s evil-probability=%s: %d reads as nbdkit's method" % (mode, given, len(reads)))
        h.shutdown()
        srv.stop()

    p = subprocess.run(server_command() + ["-f", "-U", os.path.join(tmpdir(), "s"), "--filter=evil", "memory",
                                           "1M", "evil=gamma-rays"], capture_output=True, text=True, timeout=30)
    check(p.returncode != 0 and "evil=gamma-rays" in p.stderr, "bad mode: %r" % p.stderr)


run(main)
