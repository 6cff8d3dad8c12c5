#!/usr/bin/python3
# Option haggling on the wire (raw socket), for what libnbd will not send:
# - an unknown option gets NBD_REP_ERR_UNSUP, its data is skipped and the session stays in sync;
# - NBD_OPT_GO whose name length runs past the option's data gets NBD_REP_ERR_INVALID;
# - STARTTLS on a server without TLS is refused, not acknowledged;
# - NBD_OPT_INFO and NBD_OPT_GO report the same size and flags;
# - NBD_OPT_LIST returns the export name(s);
# - LIST_META_CONTEXT and SET_META_CONTEXT with base:allocation and the "base:" wildcard;
# - the old NBD_OPT_EXPORT_NAME, with and without NO_ZEROES;
# - NBD_OPT_ABORT ends the session.
# After each session, a GO and a READ prove the server and the connection are still sane.
import os
import struct
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run  # noqa: E402
from nbdwire import (  # noqa: E402
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_HAS_FLAGS, FLAG_NO_ZEROES,
    INFO_BLOCK_SIZE, INFO_EXPORT, OPT_ABORT, OPT_GO, OPT_LIST, OPT_LIST_META_CONTEXT,
    OPT_SET_META_CONTEXT, OPT_STARTTLS, REP_ACK, REP_ERR_INVALID, REP_ERR_UNSUP, REP_SERVER,
    CMD_BLOCK_STATUS, STATE_HOLE, STATE_ZERO, Client)

SIZE = 1 << 20


def finish_with_read(c, name=""):
    """GO, then a write and a read that must round trip: the session is in sync."""
    infos = c.go(name)
    check_eq(infos[INFO_EXPORT][0], SIZE, "size from GO")
    check_eq(c.write(4096, b"sync" * 128), 0, "write after option haggling")
    err, data, _ = c.read(4096, 512)
    check_eq((err, data), (0, b"sync" * 128), "read after option haggling")
    c.disconnect()


def main():
    with Server(["memory", "size=%d" % SIZE]) as srv:
        # Greeting: fixed newstyle with NO_ZEROES.
        with Client(srv.sock) as c:
            flags = c.handshake()
            check(flags & FLAG_FIXED_NEWSTYLE, "server flags %#x lack FIXED_NEWSTYLE" % flags)
            check(flags & FLAG_NO_ZEROES, "server flags %#x lack NO_ZEROES" % flags)

            # Unknown option with data: ERR_UNSUP, data consumed, next option answered properly.
            c.send_option(0x7FFF, b"\x01\x02\x03" * 100)
            r = c.read_option_reply()
            check_eq((r.option, r.type), (0x7FFF, REP_ERR_UNSUP), "reply to unknown option")
            check_eq(c.opt_list(), [""], "LIST after an unknown option")

            # GO with a name length larger than the option: ERR_INVALID.
            c.send_option(OPT_GO, struct.pack(">I", 50) + b"ab")
            r = c.read_option_reply()
            check_eq((r.option, r.type), (OPT_GO, REP_ERR_INVALID), "reply to malformed GO")
            # GO with trailing garbage after the info requests: ERR_INVALID too.
            c.send_option(OPT_GO, c.export_data("") + b"junk")
            r = c.read_option_reply()
            check_eq((r.option, r.type), (OPT_GO, REP_ERR_INVALID), "reply to GO with junk")

            # STARTTLS without TLS configured is refused (UNSUP or POLICY), never ACKed.
            r = c.option(OPT_STARTTLS)[-1]
            check(r.is_error, "STARTTLS on a plain server should fail, got %r" % r)

            # LIST with data is invalid.
            r = c.option(OPT_LIST, b"x")[-1]
            check_eq(r.type, REP_ERR_INVALID, "LIST with data")

            check_eq(c.opt_structured_reply().type, REP_ACK, "STRUCTURED_REPLY")

            # Meta contexts: exact name, namespace wildcard, and everything.
            for queries in (["base:allocation"], ["base:"], []):
                final, contexts = c.meta_context(OPT_LIST_META_CONTEXT, "", queries)
                check_eq(final.type, REP_ACK, "LIST_META_CONTEXT %r" % queries)
                names = [n for _, n in contexts]
                check("base:allocation" in names,
                      "LIST_META_CONTEXT %r lists base:allocation: %r" % (queries, names))
            final, contexts = c.meta_context(OPT_LIST_META_CONTEXT, "", ["nosuch:context"])
            check_eq((final.type, contexts), (REP_ACK, []), "LIST of an unknown context")
            final, contexts = c.meta_context(OPT_SET_META_CONTEXT, "",
                                             ["nosuch:thing", "base:allocation"])
            check_eq(final.type, REP_ACK, "SET_META_CONTEXT")
            check_eq([n for _, n in contexts], ["base:allocation"], "contexts selected by SET")
            context_id = contexts[0][0]

            # INFO and GO agree.
            final, info = c.opt_info("", [INFO_BLOCK_SIZE])
            check_eq(final.type, REP_ACK, "INFO")
            size, tflags = info[INFO_EXPORT]
            check_eq(size, SIZE, "size from INFO")
            check(tflags & FLAG_HAS_FLAGS, "transmission flags %#x lack HAS_FLAGS" % tflags)
            go_info = c.go("", [INFO_BLOCK_SIZE])
            check_eq(go_info[INFO_EXPORT], (size, tflags), "GO reports what INFO reported")
            if INFO_BLOCK_SIZE in info or INFO_BLOCK_SIZE in go_info:
                check_eq(go_info.get(INFO_BLOCK_SIZE), info.get(INFO_BLOCK_SIZE), "block sizes")
                minimum, preferred, maximum = go_info[INFO_BLOCK_SIZE]
                check(minimum <= preferred <= maximum and minimum & (minimum - 1) == 0,
                      "block size constraints %r" % (go_info[INFO_BLOCK_SIZE],))

            # The context chosen with SET is the one block status answers with.
            reply = c.command(CMD_BLOCK_STATUS, 0, SIZE)
            check_eq(reply.error, 0, "block status error")
            ext, _ = reply.extents()
            check_eq(list(ext), [context_id], "block status context ids")
            check_eq(ext[context_id][0][1], STATE_HOLE | STATE_ZERO, "fresh memory is a hole")
            c.disconnect()

        # Unknown export names: INFO fails with an error, the session goes on.
        with Client(srv.sock) as c:
            c.handshake()
            final, _ = c.opt_info("no-such-export-" * 3)
            # nbdkit serves any name by default; a server with named exports says UNKNOWN.
            check(final.type == REP_ACK or final.is_error, "INFO for an unknown name: %r" % final)
            finish_with_read(c)

        # The old EXPORT_NAME option, with NO_ZEROES and without.
        for client_flags in (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES, FLAG_C_FIXED_NEWSTYLE):
            with Client(srv.sock) as c:
                c.handshake(client_flags)
                c.export_name("")
                check_eq(c.export_size, SIZE, "EXPORT_NAME size")
                err, data, _ = c.read(4096, 512)
                check_eq((err, data), (0, b"sync" * 128), "read after EXPORT_NAME")
                c.disconnect()

        # ABORT: the server acknowledges (or just closes) and ends the session.
        with Client(srv.sock) as c:
            c.handshake()
            c.send_option(OPT_ABORT)
            try:
                r = c.read_option_reply()
                check_eq((r.option, r.type), (OPT_ABORT, REP_ACK), "reply to ABORT")
            except Exception as e:  # a server may close without replying
                check("closed" in str(e), "ABORT: %s" % e)
            check(c.is_closed_by_server(10), "server keeps the connection after ABORT")

        check(srv.alive(), "server died")


run(main)
