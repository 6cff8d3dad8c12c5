#!/usr/bin/python3
# With structured replies, a failed request is answered with an NBD_REPLY_TYPE_ERROR chunk that
# carries the errno and a human-readable message (the spec's "message length" field), so a
# client can show the user why, e.g. which offset was out of range.
#
# Fails against nbdkit 1.32: its error chunks always have an empty message.
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run  # noqa: E402
from nbdwire import CMD_READ, CMD_TRIM, EINVAL, ENOSPC, Client  # noqa: E402

SIZE = 1 << 20


def main():
    with Server(["memory", "size=%d" % SIZE]) as srv:
        with Client(srv.sock) as c:
            c.connect_go(structured=True)
            for cmd, offset, payload, want in ((CMD_READ, SIZE, b"", EINVAL),
                                               (CMD_TRIM, SIZE + 4096, b"", EINVAL),
                                               (1, SIZE, b"\0" * 512, ENOSPC)):
                reply = c.command(cmd, offset, 512, payload=payload)
                check_eq(reply.error, want, "errno for command %d at %d" % (cmd, offset))
                errors = [ch for ch in reply.chunks if ch.is_error]
                check(errors, "error must be an error chunk, got %r" % reply.chunks)
                errno_, message = errors[0].error_fields()
                check(message.strip(), "error chunk for command %d has an empty message" % cmd)
                check(len(message.encode()) <= 4096, "message over 4096 bytes")
                print("command %d: errno %d: %s" % (cmd, errno_, message))
            c.disconnect()


run(main)
