#!/usr/bin/python3
# The ip filter, with nbdkit's command lines (NBDFORGE=nbdkit runs it there): clients over TCP on
# 127.0.0.1 and ::1 (one server listening on both) and over a Unix socket, as root and as
# nobody (setpriv), let in or turned away by the allow and deny lists:
# - allow=127.0.0.1 deny=all: IPv4 loopback in, IPv6 loopback out;
# - allow=::1 deny=anyipv4: the reverse; deny=127.0.0.0/8 alone: IPv4 out, IPv6 in;
# - allow=uid:0 deny=all on a Unix socket: root in, nobody out; deny=uid:65534: the reverse;
#   allow=gid:0 deny=anyunix: root in, nobody out;
# - a refused client gets no export (nbdinfo fails), an allowed one sees the 1 MiB disk;
# - a bad rule stops the server before it listens, naming the parameter and the item.
import os
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, run, server_command, tmpdir  # noqa: E402

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class TcpServer:
    """The server under test listening on every address (127.0.0.1 and ::1 included)."""

    def __init__(self, params):
        self.port = free_port()
        self.log = open(os.path.join(tmpdir(), "server.log"), "w+")
        self.proc = subprocess.Popen(server_command() + ["-f", "-p", str(self.port), "--filter=ip", "memory",
                                                         "1M"] + params, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        for family, host in [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]:
            while True:
                check(self.proc.poll() is None and time.monotonic() < deadline, "server did not start")
                try:
                    socket.create_connection((host, self.port), 1).close()
                    break
                except OSError:
                    time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def serves(uri, as_user=()):
    p = subprocess.run(list(as_user) + ["nbdinfo", "--size", uri], capture_output=True, text=True, timeout=30)
    return p.returncode == 0 and p.stdout.strip() == "1048576"


def tcp_case(params, v4, v6):
    srv = TcpServer(params)
    try:
        got = (serves("nbd://127.0.0.1:%d" % srv.port), serves("nbd://[::1]:%d" % srv.port))
        check(got == (v4, v6), "%s: 127.0.0.1, ::1 let in: %s, want %s" % (params, got, (v4, v6)))
    finally:
        srv.stop()


def unix_case(params, root, nobody):
    with Server(["--filter=ip", "memory", "1M"] + params) as srv:
        # Let nobody reach the socket, so that only the filter decides.
        os.chmod(srv.dir, 0o755)
        os.chmod(srv.sock, 0o777)
        got = (serves(srv.uri), serves(srv.uri, NOBODY))
        check(got == (root, nobody), "%s: root, nobody let in: %s, want %s" % (params, got, (root, nobody)))


def main():
    check(os.getuid() == 0, "this test needs root, to connect as nobody too")
    tcp_case(["allow=127.0.0.1", "deny=all"], True, False)
    tcp_case(["allow=::1", "deny=anyipv4"], False, True)
    tcp_case(["deny=127.0.0.0/8"], False, True)
    tcp_case(["allow=anyipv6,127.0.0.1/32", "deny=all"], True, True)
    unix_case(["allow=uid:0", "deny=all"], True, False)
    unix_case(["deny=uid:65534"], True, False)
    unix_case(["allow=uid:65534", "deny=all"], False, True)
    unix_case(["allow=gid:0", "deny=anyunix"], True, False)
    p = subprocess.run(server_command() + ["-f", "-U", os.path.join(tmpdir(), "s"), "--filter=ip", "memory",
                                           "1M", "allow=127.0.0.1,nonsense"], capture_output=True, text=True,
                       timeout=30)
    check(p.returncode != 0 and "nonsense" in p.stderr, "bad rule: %r" % p.stderr)


run(main)
