#!/usr/bin/python3
"""Overlapping writes in flight together must not tear: python3 overlap.py URI [ROUNDS [WRITES]].

fio verifies what one job wrote where no other job writes; it cannot say what overlapping writes
in flight together must leave.  This does.  Each round sends WRITES writes at once over two
connections to the first SPAN bytes of the disk, at random 512-byte aligned offsets with random
lengths from 512 bytes to 64 KiB, so that most overlap others and many cover part of a block of
the filter under test.  Every 512-byte sector of a write holds the write's number.  NBD leaves the
order of writes in flight together open, so after the round each sector must hold the number of
one of that round's writes covering it, whole, or, where none covered it, what it held before
the round.  A filter that loses part of a write (a read-modify-write of a block racing a write of
the same block, say) leaves data of an earlier round where a write of this round should be; one
that mixes two writes within a sector leaves a torn sector.
"""

import random
import struct
import sys

import nbd

SECTOR = 512
SPAN = 1 << 20
WRITES = 96
MAX_LEN = 64 << 10


def sector_of(number):
    return struct.pack("<Q", number) * (SECTOR // 8)


def wait_all(handles):
    while any(h.aio_in_flight() > 0 for h in handles):
        for h in handles:
            if h.aio_in_flight() > 0:
                h.poll(1)


def main():
    uri = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    writes = int(sys.argv[3]) if len(sys.argv) > 3 else WRITES
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    handles = []
    for _ in range(2):
        h = nbd.NBD()
        h.connect_uri(uri)
        handles.append(h)
    before = handles[0].pread(SPAN, 0)
    sectors = SPAN // SECTOR
    for rnd in range(rounds):
        candidates = [set() for _ in range(sectors)]
        for i in range(writes):
            number = (rnd + 1) * 1000 + i
            first = rng.randrange(sectors)
            count = min(rng.randint(1, MAX_LEN // SECTOR), sectors - first)
            for s in range(first, first + count):
                candidates[s].add(number)
            buf = nbd.Buffer.from_bytearray(bytearray(sector_of(number) * count))
            handles[i % 2].aio_pwrite(buf, first * SECTOR)
        wait_all(handles)
        after = handles[rnd % 2].pread(SPAN, 0)
        for s in range(sectors):
            got = after[s * SECTOR:(s + 1) * SECTOR]
            if not candidates[s]:
                if got != before[s * SECTOR:(s + 1) * SECTOR]:
                    sys.exit("seed %d round %d: sector %d changed though no write covered it" % (seed, rnd, s))
                continue
            number = struct.unpack("<Q", got[:8])[0]
            if got != sector_of(number):
                sys.exit("seed %d round %d: sector %d is torn (starts with write %d)" % (seed, rnd, s, number))
            if number not in candidates[s]:
                sys.exit("seed %d round %d: sector %d holds write %d, not one of this round's %s"
                         % (seed, rnd, s, number, sorted(candidates[s])))
        before = after
    for h in handles:
        h.shutdown()
    print("overlapping writes: %d rounds of %d writes, no torn or lost sectors (seed %d)" % (rounds, writes, seed))


main()
