#!/usr/bin/python3
# Running out of memory is an error for one request, not the end of the server.  `memory 1G` runs
# under `prlimit --as=LIMIT`, where LIMIT is the server's own peak address-space size after one
# client has connected and written (measured first, without a limit) plus 256 MiB: enough to
# start and serve, too little to hold 1 GiB of data.  A client (libnbd) writes 1 MiB blocks until
# one fails:
# - a write fails before 1 GiB, after at least 16 MiB, and the failure is ENOMEM;
# - the server is still running and did not print a panic or an allocation failure;
# - on the same connection, reads return the data already written;
# - a trim of the first half of it frees memory, and then the write that failed succeeds and
#   reads back.
# The server runs with MALLOC_ARENA_MAX=1: glibc's per-thread arenas reserve 64 MiB of address
# space each, as many as threads happen to race for them, which would make the headroom left for
# data a matter of scheduling.
import errno
import os
import sys
import time

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import Server, check, check_eq, nbd_handle, run  # noqa: E402

MiB = 1 << 20
HEADROOM = 256 * MiB


def status_kib(pid, field):
    """A field of /proc/PID/status in KiB, or None (the process is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return None


def block(i):
    return bytes([i % 251 + 1]) * MiB


def main():
    # The server's address space with a client connected and some data written, unlimited.
    os.environ["MALLOC_ARENA_MAX"] = "1"
    with Server(["memory", "1G"]) as probe:
        h = nbd_handle(probe.uri)
        for i in range(4):
            h.pwrite(block(i), i * MiB)
        peak = status_kib(probe.pid, "VmPeak") * 1024
        h.shutdown()
    limit = peak + HEADROOM
    print("server VmPeak with one client: %d MiB; running it with --as=%d (%d MiB)"
          % (peak // MiB, limit, limit // MiB))

    with Server(["memory", "1G"], wrapper=["prlimit", "--as=%d" % limit, "--"]) as srv:
        h = nbd_handle(srv.uri)
        failed_at = None
        error = None
        for i in range(1024):
            try:
                h.pwrite(block(i), i * MiB)
            except nbd.Error as e:
                failed_at, error = i, e
                break
        check(failed_at is not None, "1 GiB written under --as=%d: the limit did not bite" % limit)
        time.sleep(0.5)   # a server that is aborting has time to finish
        print("write %d (at %d MiB) failed: errno %s (%s); server VmSize %s KiB"
              % (failed_at, failed_at, error.errnum, error.string,
                 status_kib(srv.pid, "VmSize")))
        check(srv.alive(), "server died when memory ran out: %s" % srv.stderr()[-800:])
        check_eq(error.errnum, errno.ENOMEM, "errno of the write that ran out of memory")
        check(failed_at >= 16, "only %d MiB written before ENOMEM" % failed_at)

        # Still serving: the data written so far reads back.
        for i in (0, failed_at // 2, failed_at - 1):
            check(h.pread(MiB, i * MiB) == block(i), "data at %d MiB after ENOMEM" % i)
        check(h.pread(MiB, failed_at * MiB) != block(failed_at) or failed_at == 0,
              "the failed write was stored anyway")

        # Trim frees memory: the failed write then succeeds.
        half = failed_at // 2
        h.trim(half * MiB, 0)
        check_eq(h.pread(MiB, 0), bytes(MiB), "trimmed data reads as zeroes")
        h.pwrite(block(failed_at), failed_at * MiB)
        check(h.pread(MiB, failed_at * MiB) == block(failed_at), "write after trim reads back")
        check(h.pread(MiB, half * MiB) == block(half), "data after the trimmed range")
        h.shutdown()

        text = srv.stderr()
        check("panicked" not in text and "memory allocation of" not in text,
              "server stderr: %s" % text[-800:])
        check(srv.alive(), "server died")


run(main)
