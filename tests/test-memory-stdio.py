#!/usr/bin/python3
# -s: serve one client on stdin/stdout.  libnbd's connect_command runs the server with a socket
# as its stdin and stdout; the server must not print anything else to stdout.
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import check, check_eq, run, server_command  # noqa: E402


def main():
    h = nbd.NBD()
    h.connect_command(server_command() + ["-s", "memory", "64M"])
    check_eq(h.get_size(), 64 << 20, "size over stdio")
    check(not h.is_read_only(), "writable over stdio")
    h.pwrite(b"\x42" * 65536, 1 << 20)
    check_eq(h.pread(65536, 1 << 20), b"\x42" * 65536, "read back over stdio")
    h.flush()
    h.shutdown()

    h = nbd.NBD()
    h.connect_command(server_command() + ["-s", "-r", "file", os.path.abspath(__file__)])
    check(h.is_read_only(), "-s -r read-only")
    with open(os.path.abspath(__file__), "rb") as f:
        mine = f.read()
    check_eq(h.get_size(), len(mine), "size of the file over stdio")
    check_eq(h.pread(len(mine), 0), mine, "file contents over stdio")
    h.shutdown()


run(main)
