#!/usr/bin/python3
# The log filter's file, line by line, in nbdkit-log-filter(1)'s format: a UTC timestamp with
# microseconds, "connection=N" on a connection's lines, Ready, Preconnect, ListExports, Connect
# (with the export name shell-quoted and the capabilities of the layer below: -r turns off the
# writing ones), every request going in ("... " last) and coming out ("..." first, return=),
# paired by id, and Disconnect with the number of requests. Reads through the filter return the
# data written. Every line must match nbdkit's format exactly; then the same workload runs
# against nbdkit itself and the request lines, Connect and ListExports must be the same, line for
# line, once timestamps and connection numbers are set aside (the extents listed may differ: the
# two memory plugins allocate differently).
#
# The reference is nbdkit 1.32's output; nbdkit's manual shows the same format in the later
# releases checked (up to 1.42), and no change to it is known up to 1.46.
# Connection numbers are the server's connection ids: nbdkit counts opens of the export instead,
# so its numbers run ahead when a client opens twice (NBD_OPT_INFO, then NBD_OPT_GO).
import datetime
import os
import re
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from filterlogs import check_pairs, parse_log, peer_server, shape  # noqa: E402
from harness import Server, check, check_eq, nbd_handle, run, tmpdir  # noqa: E402

# What the workload below must log, timestamps and connection numbers aside.
EXPECTED = [
    "connection=N Write id=1 offset=0x0 count=0x1000 fua=1 ...",
    "connection=N ...Write id=1 return=0",
    "connection=N Write id=2 offset=0x2200 count=0x200 fua=0 ...",
    "connection=N ...Write id=2 return=0",
    "connection=N Read id=3 offset=0x400 count=0x200 ...",
    "connection=N ...Read id=3 return=0",
    "connection=N Read id=4 offset=0x0 count=0x3000 ...",
    "connection=N ...Read id=4 return=0",
    "connection=N Zero id=5 offset=0x4000 count=0x1000 trim=0 fua=0 fast=0 ...",
    "connection=N ...Zero id=5 return=0",
    "connection=N Zero id=6 offset=0x5000 count=0x1000 trim=1 fua=1 fast=1 ...",
    "connection=N ...Zero id=6 return=0",
    "connection=N Trim id=7 offset=0x10000 count=0x10000 fua=0 ...",
    "connection=N ...Trim id=7 return=0",
    "connection=N Flush id=8 ...",
    "connection=N ...Flush id=8 return=0",
    "connection=N Cache id=9 offset=0x0 count=0x1000 ...",
    "connection=N ...Cache id=9 return=0",
    "connection=N Extents id=10 offset=0x0 count=0x100000 req_one=0 ...",
    "connection=N ...Extents id=10 extents=(LIST) return=0",
    "connection=N Extents id=11 offset=0x8000 count=0x1000 req_one=1 ...",
    "connection=N ...Extents id=11 extents=(LIST) return=0",
]
CONNECT = ('connection=N Connect export="my disk" tls=0 size=0x100000 minsize=0x0 prefsize=0x0 '
           'maxsize=0x0 write=1 flush=1 rotational=0 trim=1 zero=2 fua=2 extents=1 cache=2 fast_zero=1')
CONNECT_RO = ('connection=N Connect export="" tls=0 size=0x100000 minsize=0x0 prefsize=0x0 '
              'maxsize=0x0 write=0 flush=1 rotational=0 trim=0 zero=0 fua=0 extents=1 cache=2 fast_zero=0')


def workload(srv):
    h = nbd_handle()
    h.set_export_name("my disk")
    h.connect_unix(srv.sock)
    data = bytes(range(256)) * 16
    h.pwrite(data, 0, nbd.CMD_FLAG_FUA)
    h.pwrite(b"x" * 512, 0x2200)
    check_eq(h.pread(512, 1024), data[1024:1536], "read through the filter")
    check_eq(h.pread(0x3000, 0), data + bytes(0x1200) + b"x" * 512 + bytes(0x3000 - 0x2400), "read of 12 KiB")
    h.zero(4096, 0x4000, nbd.CMD_FLAG_NO_HOLE)
    h.zero(4096, 0x5000, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
    h.trim(0x10000, 0x10000)
    h.flush()
    h.cache(4096, 0)
    h.block_status(1 << 20, 0, lambda *a: 0)
    h.block_status(4096, 0x8000, lambda *a: 0, nbd.CMD_FLAG_REQ_ONE)
    h.shutdown()
    # A client that only lists the exports.
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(srv.uri)
    names = []
    h.opt_list(lambda name, desc: names.append(name))
    h.opt_abort()
    check(names, "no exports listed")


def logged(args, options=(), peer=False):
    """Runs the workload (or only a plain read for -r) and returns the parsed log."""
    log = os.path.join(tmpdir(), "log")
    start = peer_server if peer else Server
    srv = start(["--filter=log", "memory", "1M", "logfile=" + log], options=options)
    with srv:
        if "-r" in options:
            h = nbd_handle(srv.uri)
            check_eq(h.pread(4096, 0), bytes(4096), "read-only read")
            h.shutdown()
        else:
            workload(srv)
    with open(log) as f:
        text = f.read()
    print("--- %s log ---\n%s" % ("nbdkit" if peer else "server", text))
    return check_pairs(parse_log(text))


def requests(entries):
    """The request lines of the connection that made requests, with the extents lists masked."""
    lines = [s for e, s in zip(entries, shape(entries)) if e["kind"] in ("enter", "leave") and "conn" in e]
    return [re.sub(r"extents=\([^)]*\)", "extents=(LIST)", s) for s in lines]


def main():
    entries = logged([])
    lines = shape(entries)
    check(re.fullmatch(r"Ready thread_model=3", lines[0]), "first line: %r" % lines[0])
    check_eq(requests(entries), EXPECTED, "request lines")
    connects = [s for e, s in zip(entries, lines) if e["kind"] == "connect"]
    check(connects and all(c == CONNECT for c in connects), "Connect lines: %r" % connects)
    check("ListExports id=1 readonly=0 tls=0 ..." in lines, "no ListExports entry")
    check('...ListExports id=1 exports=("") return=0' in lines, "ListExports reply")
    check("Preconnect id=2 readonly=0 ..." in lines, "second client's Preconnect")
    disconnects = [e for e in entries if e["kind"] == "disconnect"]
    check(any(e["transactions"] == "11" for e in disconnects), "Disconnect transactions=11: %r" % disconnects)
    extents = [e["extents"] for e in entries if e.get("act") == "Extents" and e["kind"] == "leave"]
    check(extents[0].startswith("0x0 ") and extents[1].startswith("0x8000 "), "extents start: %r" % extents)

    # Timestamps: UTC, now, in order (lines of threads running at once may swap by a little).
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    stamps = [datetime.datetime.strptime(e["ts"], "%Y-%m-%d %H:%M:%S.%f") for e in entries]
    check(all(abs((s - now).total_seconds()) < 300 for s in stamps), "timestamps not UTC now: %s" % stamps[0])
    check(all((b - a).total_seconds() > -0.5 for a, b in zip(stamps, stamps[1:])), "timestamps go back")

    # Read-only: Preconnect says so; Connect shows no writing capability.
    ro = logged([], options=["-r"])
    ro_lines = shape(ro)
    check("Preconnect id=1 readonly=1 ..." in ro_lines, "read-only Preconnect")
    check(all(s == CONNECT_RO for e, s in zip(ro, ro_lines) if e["kind"] == "connect"), "read-only Connect")

    # nbdkit, same workload: the same lines.
    peer = logged([], peer=True)
    check_eq(requests(entries), requests(peer), "request lines, against nbdkit's")
    peer_lines = shape(peer)
    for wanted in (CONNECT, "ListExports id=1 readonly=0 tls=0 ...", '...ListExports id=1 exports=("") return=0',
                   "Ready thread_model=3"):
        check(wanted in peer_lines, "nbdkit does not log %r: the expected lines are wrong" % wanted)
    peer_ro = shape(logged([], options=["-r"], peer=True))
    check(CONNECT_RO in peer_ro, "nbdkit's read-only Connect differs: %r" % peer_ro)


if __name__ == "__main__":
    run(main)
