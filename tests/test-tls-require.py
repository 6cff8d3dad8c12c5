#!/usr/bin/python3
# The NBD spec's STARTTLS rules on the wire (raw socket; TLS from Python's ssl module, X.509):
# --tls=require ("FORCEDTLS"):
# - every option before STARTTLS except ABORT gets NBD_REP_ERR_TLS_REQD (2^31 + 5), and the
#   session stays in sync (the option's data is skipped);
# - NBD_OPT_EXPORT_NAME before TLS cannot be refused, so the server closes the connection;
# - STARTTLS with data gets NBD_REP_ERR_INVALID; NBD_OPT_ABORT is honoured;
# - after STARTTLS and the handshake: options work, a second STARTTLS gets NBD_REP_ERR_INVALID,
#   never ERR_TLS_REQD, and data moves in transmission;
# - a client that sends garbage instead of a TLS handshake is dropped, and the server carries on.
# --tls=on ("SELECTIVETLS"): plain and TLS clients are both served, and see the same disk.
# --tls=off: STARTTLS is refused with NBD_REP_ERR_POLICY or NBD_REP_ERR_UNSUP, never ERR_TLS_REQD.
import os
import ssl
import struct
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run, tmpdir  # noqa: E402
from nbdwire import (  # noqa: E402
    INFO_EXPORT, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST, OPT_LIST_META_CONTEXT,
    OPT_SET_META_CONTEXT, OPT_STARTTLS, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_INVALID,
    REP_ERR_POLICY, REP_ERR_TLS_REQD, REP_ERR_UNSUP, Client, Closed)

SIZE = 1 << 20
ERR_TLS_REQD = (1 << 31) + 5


def make_pki():
    """nbdkit-tls(1)'s layout, made with certtool: a CA and a server certificate for localhost."""
    d = tmpdir()

    def certtool(*args):
        subprocess.run(["certtool"] + list(args), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def write(name, text):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)

    p = lambda name: os.path.join(d, name)  # noqa: E731
    certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", p("ca-key.pem"))
    write("ca.info", "cn = nbdforge test CA\nca\ncert_signing_key\nexpiration_days = 2\n")
    certtool("--generate-self-signed", "--load-privkey", p("ca-key.pem"), "--template",
             p("ca.info"), "--outfile", p("ca-cert.pem"))
    certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", p("server-key.pem"))
    write("server.info", "cn = localhost\ndns_name = localhost\ntls_www_server\n"
          "encryption_key\nsigning_key\nexpiration_days = 2\n")
    certtool("--generate-certificate", "--load-ca-certificate", p("ca-cert.pem"),
             "--load-ca-privkey", p("ca-key.pem"), "--load-privkey", p("server-key.pem"),
             "--template", p("server.info"), "--outfile", p("server-cert.pem"))
    return d


def start_tls(c, pki):
    """STARTTLS, then the handshake; the Client's socket becomes the TLS socket."""
    r = c.option(OPT_STARTTLS)[-1]
    check_eq(r.type, REP_ACK, "reply to STARTTLS")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(pki, "ca-cert.pem"))
    c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
    check(c.sock.version() in ("TLSv1.2", "TLSv1.3"), "TLS version %s" % c.sock.version())


def read_write(c, offset, data):
    """GO, a write and a read back: the session works, over TLS or not."""
    infos = c.go("")
    check_eq(infos[INFO_EXPORT][0], SIZE, "size from GO")
    check_eq(c.write(offset, data), 0, "write")
    err, got, _ = c.read(offset, len(data))
    check_eq((err, got), (0, data), "read back")


def options_before_tls():
    """Every option but STARTTLS and ABORT, with valid data."""
    export = Client.export_data("")
    meta = Client.meta_data("", ["base:allocation"])
    return [
        (OPT_LIST, b""),
        (OPT_INFO, export),
        (OPT_GO, export),
        (OPT_STRUCTURED_REPLY, b""),
        (OPT_LIST_META_CONTEXT, meta),
        (OPT_SET_META_CONTEXT, meta),
        (0x7FFF, b"\x01\x02\x03" * 10),  # an option nobody knows
    ]


def check_require(srv, pki):
    # Before STARTTLS: TLS_REQD for everything, and the session stays in sync.
    with Client(srv.sock) as c:
        c.handshake()
        for option, data in options_before_tls():
            c.send_option(option, data)
            r = c.read_option_reply()
            check_eq((r.option, r.type), (option, ERR_TLS_REQD),
                     "reply to option %d before TLS" % option)
            check_eq(r.type, REP_ERR_TLS_REQD, "NBD_REP_ERR_TLS_REQD constant")
        # STARTTLS carrying data is invalid (and does not start TLS).
        c.send_option(OPT_STARTTLS, b"oops")
        r = c.read_option_reply()
        check_eq((r.option, r.type), (OPT_STARTTLS, REP_ERR_INVALID), "reply to STARTTLS with data")
        # Still in plain text: the same refusal as before.
        r = c.option(OPT_LIST)[-1]
        check_eq(r.type, ERR_TLS_REQD, "LIST after refused STARTTLS")

        start_tls(c, pki)
        # After TLS: no more TLS_REQD; options work; a second STARTTLS is invalid.
        check_eq(c.opt_list(), [""], "LIST over TLS")
        r = c.option(OPT_STARTTLS)[-1]
        check_eq(r.type, REP_ERR_INVALID, "second STARTTLS")
        final, infos = c.opt_info("")
        check_eq(final.type, REP_ACK, "INFO over TLS")
        check_eq(infos[INFO_EXPORT][0], SIZE, "size from INFO over TLS")
        check_eq(c.opt_structured_reply().type, REP_ACK, "STRUCTURED_REPLY over TLS")
        read_write(c, 4096, os.urandom(200000))   # more than a TLS record each way
        c.disconnect()

    # EXPORT_NAME before TLS cannot be answered with an error: the server hangs up.
    with Client(srv.sock) as c:
        c.handshake()
        c.send_option(OPT_EXPORT_NAME, b"")
        check(c.is_closed_by_server(), "server did not close after EXPORT_NAME before TLS")

    # ABORT before TLS is allowed: an ACK (or nothing), then the server closes.
    with Client(srv.sock) as c:
        c.handshake()
        c.send_option(OPT_ABORT)
        try:
            r = c.read_option_reply()
            check_eq((r.option, r.type), (OPT_ABORT, REP_ACK), "reply to ABORT before TLS")
        except (Closed, ConnectionResetError):
            pass
        check(c.is_closed_by_server(), "server did not close after ABORT")

    # Garbage where the TLS ClientHello should be: dropped, and the server is still fine.
    with Client(srv.sock) as c:
        c.handshake()
        check_eq(c.option(OPT_STARTTLS)[-1].type, REP_ACK, "STARTTLS")
        c.send(b"\x49\x48\x41\x56\x45\x4f\x50\x54" + bytes(200))
        check(c.is_closed_by_server(), "server did not drop a client that sent no TLS handshake")
    with Client(srv.sock) as c:
        c.handshake()
        start_tls(c, pki)
        c.go("")
        err, _, _ = c.read(4096, 16)
        check_eq(err, 0, "read after a failed handshake elsewhere")
        c.disconnect()


def check_on(srv, pki):
    data = os.urandom(65536)
    # A TLS client writes...
    with Client(srv.sock) as c:
        c.handshake()
        start_tls(c, pki)
        read_write(c, 8192, data)
        c.disconnect()
    # ...and a plain client, never told to use TLS, reads the same data.
    with Client(srv.sock) as c:
        c.handshake()
        check_eq(c.opt_list(), [""], "LIST without TLS under --tls=on")
        c.go("")
        err, got, _ = c.read(8192, len(data))
        check_eq((err, got), (0, data), "plain client reads what the TLS client wrote")
        c.disconnect()
    # Options before STARTTLS are fine under --tls=on, and TLS can start after them.
    with Client(srv.sock) as c:
        c.handshake()
        check_eq(c.opt_list(), [""], "LIST before STARTTLS under --tls=on")
        start_tls(c, pki)
        check_eq(c.option(OPT_STARTTLS)[-1].type, REP_ERR_INVALID, "second STARTTLS under --tls=on")
        read_write(c, 0, b"\xa5" * 4096)
        c.disconnect()


def check_off(srv):
    with Client(srv.sock) as c:
        c.handshake()
        r = c.option(OPT_STARTTLS)[-1]
        check(r.type in (REP_ERR_POLICY, REP_ERR_UNSUP),
              "STARTTLS under --tls=off: reply %#x, want ERR_POLICY or ERR_UNSUP" % r.type)
        read_write(c, 0, b"plain" * 100)
        c.disconnect()


def main():
    pki = make_pki()
    certs = "--tls-certificates=" + pki
    with Server(["memory", "size=%d" % SIZE], options=["--tls=require", certs]) as srv:
        check_require(srv, pki)
    with Server(["memory", "size=%d" % SIZE], options=["--tls=on", certs]) as srv:
        check_on(srv, pki)
    with Server(["memory", "size=%d" % SIZE], options=["--tls=off", certs]) as srv:
        check_off(srv)


run(main)
