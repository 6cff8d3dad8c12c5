#!/usr/bin/python3
# -s serves one client on stdin/stdout and exits when it leaves.  Logging never touches stdout:
# with -v (debug messages for every request) and with --log=stderr the protocol stream stays
# clean, and the messages arrive on stderr.  -s is not a daemon: it stays the client's child.
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import check, check_eq, run, server_command, tmpdir  # noqa: E402


def exercise(h, size):
    check_eq(h.get_size(), size, "size over stdio")
    h.pwrite(b"\x5a" * 65536, 4096)
    check_eq(h.pread(65536, 4096), b"\x5a" * 65536, "read back over stdio")
    h.flush()


def main():
    d = tmpdir()
    # libnbd runs the command with a socket on stdin/stdout and our stderr; send stderr to a
    # file so the debug output can be checked.
    err = os.path.join(d, "stderr")
    saved = os.dup(2)
    with open(err, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        for extra in (["-v"], ["--log=stderr", "-v", "-v"], ["-f", "--verbose"]):
            h = nbd.NBD()
            h.connect_command(server_command() + ["-s"] + extra + ["memory", "2M"])
            exercise(h, 2 << 20)
            h.shutdown()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    with open(err, "rb") as f:
        text = f.read().decode(errors="replace")
    check("debug" in text, "-v debug messages did not reach stderr: %r" % text[:500])

    # Over a pipe pair, without libnbd: the server answers the greeting and nothing else comes
    # out of stdout before it; it exits 0 when stdin closes.
    p = subprocess.Popen(server_command() + ["-s", "-v", "memory", "1M"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    greeting = p.stdout.read(18)
    check_eq(greeting[:16], b"NBDMAGICIHAVEOPT", "first bytes on stdout")
    p.stdin.close()
    rest = p.stdout.read()
    status = p.wait(timeout=30)
    check_eq(status, 0, "exit status when the client leaves")
    check_eq(rest, b"", "bytes on stdout after the client left")
    check(b"debug" in p.stderr.read(), "-v with -s wrote no debug messages to stderr")


run(main)
