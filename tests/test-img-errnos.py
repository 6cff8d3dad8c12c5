#!/usr/bin/python3
# nbdforge-img answers with the errnos the NBD spec asks for where qemu-nbd says EINVAL, and
# serves writes up to 64 MiB where qemu-nbd drops the client. The same qcow2 image is served by
# both on the same command line (-t -f qcow2), and the same requests sent (libnbd's strict mode off,
# so that it sends what it is told):
# - a write or write-zeroes past the end: ENOSPC (qemu-nbd: EINVAL);
# - a read or trim past the end: EINVAL, as qemu-nbd;
# - a 64 MiB write (over the advertised 32 MiB maximum, as qemu-nbd advertises): served and read
#   back (qemu-nbd drops the connection).
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402
from harness import check, check_eq, run, tmpdir  # noqa: E402

IMG = os.environ.get("NBDFORGE_IMG") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "release", "nbdforge-img")
SIZE = 128 << 20


def serve(cmd, image, sock):
    proc = subprocess.Popen([cmd, "-t", "-f", "qcow2", "-k", sock, image],
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.1)
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_uri("nbd+unix:///?socket=" + sock)
    return proc, h


def errno_of(call):
    """0, the errno's name (libnbd gives names), or "dropped" when the server gave none."""
    try:
        call()
        return 0
    except nbd.Error as e:
        return e.errno or "dropped"


def main():
    d = tmpdir()
    got = {}
    for name, cmd in (("nbdforge-img", IMG), ("qemu-nbd", "qemu-nbd")):
        image = os.path.join(d, name + ".qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, str(SIZE)], check=True)
        proc, h = serve(cmd, image, os.path.join(d, name + ".sock"))
        try:
            check_eq(h.get_block_size(nbd.SIZE_MAXIMUM), 32 << 20, f"{name}: advertised maximum")
            got[name] = {
                "write": errno_of(lambda: h.pwrite(b"x" * 4096, SIZE)),
                "zero": errno_of(lambda: h.zero(4096, SIZE)),
                "read": errno_of(lambda: h.pread(4096, SIZE)),
                "trim": errno_of(lambda: h.trim(4096, SIZE)),
            }
            big = os.urandom(1 << 20) * 64
            got[name]["64M"] = errno_of(lambda: h.pwrite(big, 4096))
            if got[name]["64M"] == 0:
                check(h.pread(64 << 20, 4096) == big, f"{name}: the 64 MiB write did not read back")
        finally:
            proc.kill()
            proc.wait()
    ours, theirs = got["nbdforge-img"], got["qemu-nbd"]
    check_eq((ours["write"], ours["zero"]), ("ENOSPC", "ENOSPC"), "nbdforge-img: writes past the end")
    check_eq((ours["read"], ours["trim"]), ("EINVAL", "EINVAL"), "nbdforge-img: read and trim past the end")
    check_eq(ours["64M"], 0, "nbdforge-img: a 64 MiB write")
    # What qemu-nbd does, so the test shows the difference it claims.
    check_eq((theirs["write"], theirs["zero"]), ("EINVAL", "EINVAL"), "qemu-nbd: writes past the end")
    check(theirs["64M"] != 0, "qemu-nbd served the 64 MiB write: the comparison is out of date")
    print(got)


run(main)
