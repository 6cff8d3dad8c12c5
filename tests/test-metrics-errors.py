#!/usr/bin/python3
# --metrics counts error replies by operation and errno, as the client saw them:
# - reads failing at random through --filter=error (error-pread-rate=25%, EIO): the EIO count is
#   exactly the number of reads libnbd saw fail, and only the reads that succeeded count bytes;
# - writes that always fail with ENOSPC (error-pwrite-rate=100%) count no bytes;
# - a read past the end of the disk, refused by the server itself, counts as EINVAL;
# - every failed request is still a request, with a latency in its histogram.
import errno
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import check, check_eq, expect_errno, nbd_handle, run  # noqa: E402
from metrics import check_histograms, eventually, metrics_server, value  # noqa: E402

N = 1000


def main():
    import nbd

    with metrics_server(["--filter=error", "memory", "1M", "error-pread-rate=25%",
                         "error=ENOSPC", "error-pread=EIO", "error-pwrite-rate=100%"]) as srv:
        h = nbd_handle(srv.uri, strict=False)
        failed = 0
        for i in range(N):
            try:
                h.pread(512, (i % 2048) * 512)
            except nbd.Error as e:
                check_eq(e.errnum, errno.EIO, "errno of an injected read error")
                failed += 1
        check(100 < failed < 400, "%d of %d reads failed at 25%%" % (failed, N))
        for _ in range(20):
            expect_errno(errno.ENOSPC, h.pwrite, b"x" * 4096, 0)
        expect_errno(errno.EINVAL, h.pread, 512, 1 << 20)
        h.flush()
        h.shutdown()

        samples = eventually(srv.metrics_url, [(("nbdforge_connections_open", {}), 0)], "the client left")
        e = {"export": ""}
        check_eq(value(samples, "nbdforge_errors_total", op="read", errno="EIO", **e), failed, "read EIO errors")
        check_eq(value(samples, "nbdforge_errors_total", op="read", errno="EINVAL", **e), 1, "read EINVAL errors")
        check_eq(value(samples, "nbdforge_errors_total", op="write", errno="ENOSPC", **e), 20, "write ENOSPC")
        errors = sorted((dict(k[1])["op"], dict(k[1])["errno"]) for k in samples if k[0] == "nbdforge_errors_total")
        check_eq(errors, [("read", "EINVAL"), ("read", "EIO"), ("write", "ENOSPC")], "error series")
        check_eq(value(samples, "nbdforge_requests_total", op="read", **e), N + 1, "read requests")
        check_eq(value(samples, "nbdforge_bytes_total", op="read", **e), (N - failed) * 512, "read bytes")
        check_eq(value(samples, "nbdforge_requests_total", op="write", **e), 20, "write requests")
        check_eq(value(samples, "nbdforge_bytes_total", op="write", **e), 0, "write bytes")
        check_eq(value(samples, "nbdforge_requests_total", op="flush", **e), 1, "flush requests")
        check_eq(check_histograms(samples), 3, "histograms (read, write, flush)")


if __name__ == "__main__":
    run(main)
