#!/usr/bin/python3
# A WRITE whose announced payload is over the 64 MiB maximum is refused with EINVAL, and the
# server does not let the client make it read an unbounded amount: a client that announces a
# huge payload and keeps sending zero bytes is disconnected after a bounded drain.  The bound
# this test enforces: the server has closed the connection before the client has sent 256 MiB
# (the client gives up at 512 MiB).  Cases:
# - extended headers: a WRITE with NBD_CMD_FLAG_PAYLOAD_LEN and a payload length of 2^40;
# - compact header: a WRITE of 4 GiB - 4 KiB (the largest 32-bit length, block aligned);
# both must get an EINVAL error reply (for the write's cookie) and then EOF before 256 MiB.
# - compact header, 100 MiB announced and 100 MiB sent: refused with EINVAL; the server may
#   drain it (then the connection must still be in sync: a READ works and returns the old data)
#   or close the connection; either way it must not have written anything.
# After each case the server still serves new clients.
#
# Fails against nbdkit 1.32: it has no extended headers (NBD_OPT_EXTENDED_HEADERS is refused).
import os
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, nbd_handle, run  # noqa: E402
from nbdwire import CMD_WRITE, EINVAL, Client, ProtocolError  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
BOUND = 256 * MiB       # the server must have hung up before the client sent this much
GIVE_UP = 512 * MiB     # the client stops sending here, whatever the server does


class Watcher(threading.Thread):
    """Reads the reply to `cookie`, then waits for EOF; notes how much the client had sent."""

    def __init__(self, client, cookie, progress):
        super().__init__(daemon=True)
        self.client, self.cookie, self.progress = client, cookie, progress
        self.reply = None
        self.reply_error = None
        self.closed_at = None   # bytes the client had sent when the server hung up

    def run(self):
        c = self.client
        try:
            self.reply = c.read_reply(self.cookie)
        except (ProtocolError, OSError) as e:
            self.reply_error = e
            self.closed_at = self.progress[0]
            return
        try:
            while c.sock.recv(65536):
                pass
        except OSError:
            pass
        self.closed_at = self.progress[0]


def flood(srv, extended, announced, what):
    """Announces a WRITE of `announced` bytes and sends zeros until the server hangs up or
    GIVE_UP.  Returns (reply, bytes sent when the server hung up or None, bytes sent)."""
    c = Client(srv.sock, timeout=60)
    try:
        try:
            c.connect_go(extended=extended)
        except ProtocolError as e:
            return None, None, "negotiation failed: %s" % e
        header, cookie = c.request_bytes(CMD_WRITE, 0, announced)
        progress = [0]
        watcher = Watcher(c, cookie, progress)
        watcher.start()
        c.send(header)
        zeros = memoryview(bytes(MiB))
        start = time.monotonic()
        try:
            while progress[0] < min(GIVE_UP, announced) and watcher.closed_at is None:
                c.sock.sendall(zeros)
                progress[0] += MiB
        except (BrokenPipeError, ConnectionResetError):
            pass
        watcher.join(2)   # a moment for the reply and EOF to arrive
        hung_up = watcher.closed_at
        print("%s: sent %d MiB in %.1f s; server %s; reply: %s%s"
              % (what, progress[0] // MiB, time.monotonic() - start,
                 "hung up after %d MiB" % (hung_up // MiB) if hung_up is not None
                 else "did not hang up", describe(watcher.reply),
                 " (%s)" % watcher.reply_error if watcher.reply_error else ""))
        return watcher.reply, hung_up, progress[0]
    finally:
        try:
            c.sock.shutdown(socket.SHUT_RDWR)   # wakes the watcher if it still waits
        except OSError:
            pass
        c.close()


def describe(reply):
    if reply is None:
        return "none"
    return "error %d %r" % (reply.error, reply.message)


def still_serving(srv, what):
    h = nbd_handle(srv.uri)
    check(h.pread(4096, 0) == b"\x11" * 4096, "%s: data changed or server not serving" % what)
    h.shutdown()


def main():
    with Server(["memory", "8G"]) as srv:
        h = nbd_handle(srv.uri)
        h.pwrite(b"\x11" * 4096, 0)
        h.shutdown()
        problems = []

        for extended, announced, what in ((True, 1 << 40, "extended WRITE of 2^40 bytes"),
                                          (False, 4 * GiB - 4096, "compact WRITE of 4 GiB - 4 KiB")):
            reply, hung_up, sent = flood(srv, extended, announced, what)
            if isinstance(sent, str):
                problems.append("%s: %s" % (what, sent))
                continue
            if reply is None or reply.error != EINVAL:
                problems.append("%s: reply %s, want an EINVAL error" % (what, describe(reply)))
            if hung_up is None:
                problems.append("%s: server still reading after the client sent %d MiB"
                                % (what, sent // MiB))
            elif hung_up >= BOUND:
                problems.append("%s: server hung up only after %d MiB (bound %d MiB)"
                                % (what, hung_up // MiB, BOUND // MiB))
            check(srv.alive(), "%s: server died" % what)
            still_serving(srv, what)

        # 100 MiB announced and sent in full: refused; drained in sync, or the connection closed.
        what = "compact WRITE of 100 MiB"
        c = Client(srv.sock, timeout=20)
        with c:
            c.connect_go()
            cookie = c.send_request(CMD_WRITE, 0, 100 * MiB)
            payload = memoryview(b"\x22" * MiB)
            closed = False
            try:
                for _ in range(100):
                    c.sock.sendall(payload)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            except socket.timeout:
                problems.append("%s: the server neither read the payload nor closed" % what)
                closed = True
            try:
                reply = c.read_reply(cookie)
                print("%s: reply %s" % (what, describe(reply)))
                if reply.error != EINVAL:
                    problems.append("%s: error %d, want EINVAL" % (what, reply.error))
                if not closed:
                    try:
                        err, data, _ = c.read(0, 4096)
                        if err or data != b"\x11" * 4096:
                            problems.append("%s: READ after it: error %d or wrong data"
                                            % (what, err))
                    except (ProtocolError, OSError) as e:
                        print("%s: connection closed after the reply (%s)" % (what, e))
            except (ProtocolError, OSError) as e:
                problems.append("%s: no reply before the connection ended: %s" % (what, e))
        check(srv.alive(), "%s: server died" % what)
        still_serving(srv, what)
        check(not problems, "; ".join(problems))


run(main)
