#!/usr/bin/python3
# --metrics counts connections and keeps each export's counts apart:
# - the file plugin serving a directory (exports a and b): two libnbd connections to a and an
#   nbdsh session on b are three connections open, and as many more in the total;
# - each connection's reads and writes appear under its own export's label;
# - as clients leave, the open count falls and the total does not; the counts of connections that
#   closed stay (counters never go down);
# - an export name with a quote and a backslash comes out escaped, and prometheus_client reads it
#   back as it was.
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import check_eq, nbd_handle, run, tmpdir  # noqa: E402
from metrics import eventually, metrics_server, scrape, value  # noqa: E402

ODD = 'x"y\\z'


def main():
    d = tmpdir()
    for name in ("a", "b", ODD):
        with open(os.path.join(d, name), "wb") as f:
            f.truncate(1 << 20)
    with metrics_server(["file", "dir=" + d]) as srv:
        base = value(scrape(srv.metrics_url)[0], "nbdforge_connections_total")
        a1, a2 = nbd_handle(srv.uri_for("a")), nbd_handle(srv.uri_for("a"))
        session = subprocess.Popen(
            ["nbdsh", "-u", srv.uri_for("b"), "-c",
             "h.pwrite(b'b' * 8192, 0)\nh.pread(4096, 0)\nimport sys\nprint('ready', flush=True)\n"
             "sys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        check_eq(session.stdout.readline().strip(), "ready", "nbdsh session on b")
        a1.pread(65536, 0)
        a2.pread(65536, 65536)
        a2.pwrite(b"a" * 512, 0)

        s = eventually(srv.metrics_url, [
            (("nbdforge_connections_open", {}), 3),
            (("nbdforge_connections_total", {}), base + 3),
            (("nbdforge_bytes_total", {"op": "read", "export": "a"}), 131072),
            (("nbdforge_requests_total", {"op": "read", "export": "a"}), 2),
            (("nbdforge_bytes_total", {"op": "write", "export": "a"}), 512),
            (("nbdforge_bytes_total", {"op": "read", "export": "b"}), 4096),
            (("nbdforge_bytes_total", {"op": "write", "export": "b"}), 8192),
        ], "three clients")
        exports = {dict(k[1])["export"] for k in s if k[0] == "nbdforge_requests_total"}
        check_eq(exports, {"a", "b"}, "exports with requests")

        a1.shutdown()
        session.stdin.close()
        check_eq(session.wait(10), 0, "nbdsh's exit status")
        eventually(srv.metrics_url, [
            (("nbdforge_connections_open", {}), 1),
            (("nbdforge_connections_total", {}), base + 3),
            (("nbdforge_bytes_total", {"op": "read", "export": "a"}), 131072),
            (("nbdforge_bytes_total", {"op": "write", "export": "b"}), 8192),
        ], "two clients left; their counts stay")

        odd = nbd_handle(srv.uri_for(ODD.replace("\\", "%5C").replace('"', "%22")))
        odd.pread(1024, 0)
        odd.shutdown()
        a2.shutdown()
        eventually(srv.metrics_url, [
            (("nbdforge_connections_open", {}), 0),
            (("nbdforge_connections_total", {}), base + 4),
            (("nbdforge_bytes_total", {"op": "read", "export": ODD}), 1024),
            (("nbdforge_bytes_total", {"op": "read", "export": "a"}), 131072),
        ], "everyone left")


if __name__ == "__main__":
    run(main)
