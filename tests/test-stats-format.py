#!/usr/bin/python3
# The stats filter's summary, written when the server exits, in nbdkit-stats-filter(1)'s format:
# a total line, then one line per kind of request that happened (read, write, trim, zero,
# extents, flush) with its count, seconds, bytes and rates, each but flush followed by the
# request size and alignment breakdown and a blank line. Every line must match nbdkit's format;
# the counts and bytes are exactly those of the workload (libnbd), and reads return the data
# written. Then the same workload runs against nbdkit itself and the summaries must be the
# same line for line once seconds and rates are set aside, except the byte count of an "other
# sizes" line (nbdkit 1.32 prints the total of all sizes there; see test-stats-histogram.py).
#
# The reference is nbdkit 1.32's output; nbdkit's manual shows the same example output in the
# later releases checked, and no change to the format is known up to 1.46.
import os
import re
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from filterlogs import parse_stats, peer_server, stats_shape  # noqa: E402
from harness import Server, check, check_eq, nbd_handle, run, tmpdir  # noqa: E402


def workload(uri):
    h = nbd_handle(uri)
    for i in range(1, 31):
        h.pwrite(bytes([i]) * 4096, i * 4096)
    h.pwrite(b"z" * 65536, 1 << 20)
    for i in range(20):
        check_eq(h.pread(4096, i * 4096), bytes([i]) * 4096 if i else bytes(4096), "read %d" % i)
    h.zero(65536, 2 << 20)
    h.zero(65536, 3 << 20, nbd.CMD_FLAG_NO_HOLE)
    h.trim(1 << 20, 4 << 20)
    for _ in range(3):
        h.flush()
    h.block_status(1 << 20, 0, lambda *a: 0)
    h.block_status(1 << 20, 1 << 20, lambda *a: 0)
    h.shutdown()


def summary(peer=False, threshold=None):
    path = os.path.join(tmpdir(), "stats.txt")
    args = ["--filter=stats", "memory", "8M", "statsfile=" + path]
    if threshold is not None:
        args.append("statsthreshold=%d" % threshold)
    srv = (peer_server if peer else Server)(args)
    with srv:
        workload(srv.uri)
    with open(path) as f:
        text = f.read()
    print("--- %s ---\n%s" % ("nbdkit" if peer else "server", text))
    return text


def comparable(text):
    return re.sub(r"(other sizes: .*reqs, ).*( total\))", r"\1B\2", stats_shape(text))


def main():
    text = summary()
    s = parse_stats(text)
    check_eq(s["order"], ["read", "write", "trim", "zero", "extents", "flush"], "kinds listed")
    expect = {
        "total": ("59", "1.38 MiB"),
        "read": ("20", "80.00 KiB"),
        "write": ("31", "184.00 KiB"),
        "trim": ("1", "1.00 MiB"),
        "zero": ("2", "128.00 KiB"),
        "extents": ("2", "2.00 MiB"),
        "flush": ("3", "0 bytes"),
    }
    for kind, (ops, size) in expect.items():
        check_eq((s[kind]["ops"], s[kind]["bytes"]), (ops, size), kind)
    check(float(s["total"]["secs"]) > 0, "elapsed time")
    check_eq(s["flush"]["sizes"], [], "flush has no breakdown")
    write = s["write"]["sizes"]
    check_eq([(c["kind"], c.get("bits"), c["reqs"]) for c in write], [("size", "12", "30"), ("other", None, "1")],
             "write size classes")
    check_eq([(a["kind"], a["bits"].strip(), a["reqs"]) for a in write[0]["alignments"]],
             [("aligned", "12", "30"), ("aligned", "13", "15"), ("aligned", "14", "7"), ("aligned", "15", "3"),
              ("aligned", "16", "1")], "write alignments")
    read = s["read"]["sizes"]
    check_eq((read[0]["bits"], read[0]["pct"], read[0]["reqs"], read[0]["bytes"]), ("12", "100.0%", "20", "80.00 KiB"),
             "read size class")
    check_eq([a["bits"] for a in s["zero"]["sizes"][0]["alignments"]], ["20", "21"], "zero alignments")

    # Histograms off: the same lines without any breakdown.
    off = summary(threshold=0)
    check("breakdown" not in off and "\n\n" not in off, "statsthreshold=0 still prints histograms")
    check_eq(parse_stats(off)["write"]["ops"], "31", "write ops without histograms")

    # nbdkit: the same summary, timings aside.
    check_eq(comparable(text).splitlines(), comparable(summary(peer=True)).splitlines(), "summary against nbdkit's")
    check_eq(stats_shape(off).splitlines(), stats_shape(summary(peer=True, threshold=0)).splitlines(),
             "summary without histograms against nbdkit's")


if __name__ == "__main__":
    run(main)
