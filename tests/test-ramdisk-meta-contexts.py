#!/usr/bin/python3
# Meta contexts are a table, from the wire to the handle: the example ramdisk plugin offers
# ramdisk:dirty next to base:allocation.
# - nbdsh (libnbd): LIST_META_CONTEXT with no query lists both, "ramdisk:" only the second;
#   after add_meta_context of both, one block_status call reaches a callback once per context,
#   each with its own extents (data/hole for base:allocation, written-since-flush for dirty);
#   a flush clears the dirty context and leaves the data;
# - raw 32-bit requests: one BLOCK_STATUS reply carries one chunk per selected context, the last
#   with the DONE flag; with only ramdisk:dirty selected, only that chunk comes;
# - raw 64-bit (extended headers) requests: BLOCK_STATUS_EXT chunks for both contexts, and a
#   BLOCK_STATUS with NBD_CMD_FLAG_PAYLOAD_LEN naming one context id gets only that context;
#   an id that was not negotiated gets EINVAL.
#
# nbdkit has no ramdisk plugin: nbdforge only.
import os
import struct
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402
from harness import Server, check, check_eq, run  # noqa: E402
from nbdwire import (  # noqa: E402
    CMD_BLOCK_STATUS, CMD_FLAG_PAYLOAD_LEN, CMD_FLUSH, CMD_WRITE, EINVAL, OPT_LIST_META_CONTEXT,
    REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_BLOCK_STATUS_EXT, STATE_HOLE, STATE_ZERO,
    Client)

DIRTY = "ramdisk:dirty"
BASE = "base:allocation"
SIZE = 1 << 20


def with_nbdsh(sock):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(sock)
    listed = []
    h.opt_list_meta_context(lambda name: listed.append(name) or 0)
    check_eq(sorted(listed), [BASE, DIRTY], "LIST_META_CONTEXT with no query")
    listed.clear()
    h.add_meta_context("ramdisk:")
    h.opt_list_meta_context(lambda name: listed.append(name) or 0)
    check_eq(listed, [DIRTY], "LIST_META_CONTEXT for the ramdisk: namespace")
    h.clear_meta_contexts()
    h.add_meta_context(BASE)
    h.add_meta_context(DIRTY)
    h.opt_go()
    check(h.can_meta_context(BASE) and h.can_meta_context(DIRTY), "both contexts negotiated")

    h.pwrite(b"\xab" * 4096, 8192)
    seen = {}

    def callback(context, offset, entries, err):
        seen[context] = (offset, list(entries))
        return 0

    h.block_status(65536, 0, callback)
    check_eq(sorted(seen), [BASE, DIRTY], "contexts the callback saw")
    check_eq(seen[BASE][1][:6], [8192, STATE_HOLE | STATE_ZERO, 4096, 0, 65536 - 12288, STATE_HOLE | STATE_ZERO],
             "base:allocation extents")
    check_eq(seen[DIRTY][1][:6], [8192, 0, 4096, 1, 65536 - 12288, 0], "ramdisk:dirty extents")

    h.flush()
    seen.clear()
    h.block_status(65536, 0, callback)
    check_eq(seen[DIRTY][1], [65536, 0], "dirty after a flush")
    check_eq(seen[BASE][1][2:4], [4096, 0], "a flush keeps the data")
    h.shutdown()


def raw_compact(sock):
    with Client(sock) as c:
        c.connect_go(meta=[BASE, DIRTY])
        check_eq(sorted(c.contexts), [BASE, DIRTY], "SET_META_CONTEXT selected both")
        check_eq(c.contexts[BASE], 1, "base:allocation has id 1")
        # The disk is shared: the nbdsh client's write at 8192 is there, and was flushed.
        check_eq(c.command(CMD_WRITE, 4096, payload=b"x" * 4096).error, 0, "write")
        reply = c.command(CMD_BLOCK_STATUS, 0, 16384)
        check_eq(reply.error, 0, "compact block status")
        kinds = [ch.type for ch in reply.chunks]
        check_eq(kinds, [REPLY_TYPE_BLOCK_STATUS] * 2, "one chunk per context")
        check_eq([bool(ch.flags & REPLY_FLAG_DONE) for ch in reply.chunks], [False, True], "DONE on the last")
        ext, _ = reply.extents()
        check_eq(ext[c.contexts[BASE]], [(4096, STATE_HOLE | STATE_ZERO), (8192, 0), (4096, STATE_HOLE | STATE_ZERO)],
                 "base:allocation")
        check_eq(ext[c.contexts[DIRTY]], [(4096, 0), (4096, 1), (8192, 0)], "ramdisk:dirty")
        check_eq(c.command(CMD_FLUSH).error, 0, "flush")

    with Client(sock) as c:
        c.connect_go(meta=[DIRTY])
        check_eq(list(c.contexts), [DIRTY], "only the dirty context")
        reply = c.command(CMD_BLOCK_STATUS, 0, 16384)
        ext, _ = reply.extents()
        check_eq(list(ext), [c.contexts[DIRTY]], "one chunk, for the one context selected")
        check_eq(ext[c.contexts[DIRTY]], [(16384, 0)], "nothing dirty after the flush")


def raw_extended(sock):
    with Client(sock) as c:
        c.connect_go(extended=True, meta=[BASE, DIRTY])
        check_eq(c.command(CMD_WRITE, 0, payload=b"y" * 4096).error, 0, "write")
        reply = c.command(CMD_BLOCK_STATUS, 0, SIZE)
        check_eq([ch.type for ch in reply.chunks], [REPLY_TYPE_BLOCK_STATUS_EXT] * 2, "BLOCK_STATUS_EXT chunks")
        ext, _ = reply.extents()
        check_eq(ext[c.contexts[DIRTY]][0], (4096, 1), "dirty block at 0")
        check_eq(ext[c.contexts[BASE]][0], (12288, 0), "data from 0 to the end of the earlier writes")

        # PAYLOAD_LEN: an effect length and the ids wanted.
        payload = struct.pack(">QI", 8192, c.contexts[DIRTY])
        reply = c.command(CMD_BLOCK_STATUS, 0, len(payload), flags=CMD_FLAG_PAYLOAD_LEN, payload=payload)
        check_eq(reply.error, 0, "block status with a payload")
        ext, _ = reply.extents()
        check_eq(list(ext), [c.contexts[DIRTY]], "only the context asked for")
        check_eq(ext[c.contexts[DIRTY]], [(4096, 1), (4096, 0)], "its extents over the effect length")

        payload = struct.pack(">QI", 8192, 99)
        reply = c.command(CMD_BLOCK_STATUS, 0, len(payload), flags=CMD_FLAG_PAYLOAD_LEN, payload=payload)
        check_eq(reply.error, EINVAL, "a context id that was not negotiated")
        check(c.command(CMD_FLUSH).error == 0, "the connection goes on")

    with Client(sock) as c:
        c.handshake()
        c.opt_structured_reply()
        final, listed = c.meta_context(OPT_LIST_META_CONTEXT, "", ["base:", "ramdisk:dirty", "qemu:"])
        check_eq(sorted(n for _, n in listed), [BASE, DIRTY], "namespace and full-name queries together")


def main():
    with Server(["ramdisk", str(SIZE)]) as srv:
        with_nbdsh(srv.sock)
        raw_compact(srv.sock)
        raw_extended(srv.sock)


run(main)
