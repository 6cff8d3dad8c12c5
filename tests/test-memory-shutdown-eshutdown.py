#!/usr/bin/python3
# Shutdown with requests queued: a client pipelines thousands of 4 KiB reads and stops reading
# replies, so the server blocks writing and requests pile up unread in the socket. SIGTERM then
# makes the server refuse the requests it reads afterwards with ESHUTDOWN (the spec's error for a
# server shutting down), answer everything it had read before normally, and exit 0.
import os
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run  # noqa: E402
from nbdwire import CMD_READ, Client, Closed  # noqa: E402

ESHUTDOWN = 108
N = 20000


def main():
    srv = Server(["memory", "64M"])
    c = Client(srv.sock)
    c.connect_go(structured=False)
    blob = b"".join(c.request_bytes(CMD_READ, (i % 1000) * 4096, 4096)[0] for i in range(N))

    def sender():
        try:
            c.send(blob)
        except OSError:
            pass  # the server closed the connection: the rest was never sent

    threading.Thread(target=sender, daemon=True).start()
    time.sleep(1)  # replies back up; requests queue in the socket
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    errors = {}
    ok = 0
    try:
        while True:
            chunk = c.read_chunk()
            if chunk.error:
                errors[chunk.error] = errors.get(chunk.error, 0) + 1
            else:
                ok += 1
    except (Closed, OSError):
        pass
    print("%d replies ok, errors %r" % (ok, errors))
    check(ok > 0, "requests read before the signal are answered")
    check(errors.get(ESHUTDOWN, 0) > 0, "requests read after the signal get ESHUTDOWN")
    check_eq(set(errors) - {ESHUTDOWN}, set(), "errors other than ESHUTDOWN")
    c.close()
    check_eq(srv.stop(), 0, "exit status after SIGTERM")


run(main)
