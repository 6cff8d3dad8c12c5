#!/usr/bin/python3
# The exitwhen filter (nbdkit's command lines; NBDFORGE=nbdkit runs it there):
# - exit-when-file-created with exit-when-poll=1: the server runs until the file appears; with a
#   client connected it then refuses new clients but keeps serving the one it has, and exits
#   (status 0) once that client leaves;
# - the same event when idle: exit within a couple of poll intervals;
# - exit-when-file-deleted, exit-when-process-exits (a sleep killed), exit-when-pipe-closed
#   (the write end held by this test, then closed) and exit-when-script (exit 88 once a file
#   exists): each stops an idle server, which had kept running until then;
# - a file that already exists at start-up stops the server at once.
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, nbd_handle, run, server_command, tmpdir  # noqa: E402


def exited_within(srv, seconds):
    try:
        srv.proc.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def connect_fails(uri):
    import nbd
    try:
        nbd_handle(uri).shutdown()
        return False
    except nbd.Error:
        return True


def idle_event(params, fire):
    """A server with one exit-when-* event: still running after 1.5 s, then fire(), then gone."""
    srv = Server(["--filter=exitwhen", "memory", "1M", "exit-when-poll=1"] + params)
    check(not exited_within(srv, 1.5), "%s: exited before the event" % params)
    fire()
    check(exited_within(srv, 10), "%s: still running after the event" % params)
    check_eq(srv.proc.returncode, 0, "%s: exit status" % params)
    srv.stop()


def main():
    d = tmpdir()
    stop = os.path.join(d, "stop")

    srv = Server(["--filter=exitwhen", "memory", "1M", "exit-when-poll=1", "exit-when-file-created=" + stop])
    h = nbd_handle(srv.uri)
    open(stop, "w").close()
    time.sleep(2)
    check(srv.alive(), "exited with a client connected")
    h.pwrite(b"y" * 512, 0)
    check_eq(h.pread(512, 0), b"y" * 512, "the connected client is served")
    check(connect_fails(srv.uri), "a new client was let in after the event")
    h.shutdown()
    del h
    check(exited_within(srv, 10), "did not exit after the last client left")
    check_eq(srv.proc.returncode, 0, "exit status")
    srv.stop()

    os.unlink(stop)
    idle_event(["exit-when-file-created=" + stop], lambda: open(stop, "w").close())
    idle_event(["exit-when-file-deleted=" + stop], lambda: os.unlink(stop))

    sleeper = subprocess.Popen(["sleep", "600"])
    idle_event(["exit-when-process-exits=%d" % sleeper.pid], lambda: (sleeper.kill(), sleeper.wait()))

    flag = os.path.join(d, "flag")
    idle_event(["exit-when-script=test -e %s && exit 88; exit 0" % flag], lambda: open(flag, "w").close())

    r, w = os.pipe()
    os.set_inheritable(r, True)
    argv = server_command() + ["-f", "-U", os.path.join(d, "pipe.sock"), "--filter=exitwhen", "memory", "1M",
                               "exit-when-poll=1", "exit-when-pipe-closed=%d" % r]
    proc = subprocess.Popen(argv, pass_fds=[r])
    os.close(r)
    try:
        proc.wait(2)
        check(False, "exit-when-pipe-closed: exited before the pipe was closed")
    except subprocess.TimeoutExpired:
        pass
    os.close(w)
    check_eq(proc.wait(10), 0, "exit-when-pipe-closed: exit status")

    open(stop, "w").close()
    proc = subprocess.Popen(server_command() + ["-f", "-U", os.path.join(d, "early.sock"), "--filter=exitwhen",
                                                "memory", "1M", "exit-when-file-created=" + stop])
    check_eq(proc.wait(10), 0, "a file there at start-up: exit status")


run(main)
