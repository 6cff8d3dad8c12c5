#!/usr/bin/python3
# nbdkit's plugin ABI, checked by a C plugin written for this test (tests/cplugin/abitest.c,
# built here with gcc against Debian's nbdkit-plugin.h): it calls every nbdkit_* function the
# server exports. The connection-free ones are checked inside the plugin while it configures (a
# failed check stops the server, naming the line); what depends on the connection (export name,
# peer pid/uid/gid/address, TLS) the plugin serves as text at offset 0, compared here with what
# the client knows; errors set with nbdkit_set_error or errno reach the client; capabilities,
# block size, export description, extents and the export list reach the client; -D sets the
# plugin's debug variable; nbdkit_disconnect drops the client and nbdkit_shutdown stops the
# server, after which cleanup and unload run.
import errno
import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import nbd  # noqa: E402

from harness import (Server, check, check_eq, expect_errno, extents, nbd_handle, run,  # noqa: E402
                     server_command, tmpdir)

HERE = os.path.dirname(os.path.abspath(__file__))


def build(d):
    so = os.path.join(d, "abitest.so")
    subprocess.run(["gcc", "-Wall", "-Werror", "-Wno-unused-parameter", "-fPIC", "-shared", "-o", so,
                    os.path.join(HERE, "cplugin", "abitest.c")], check=True)
    return so


def refused(args, want):
    r = subprocess.run(server_command() + ["-f", "-U", "/nonexistent/sock"] + args,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=20, text=True)
    check_eq(r.returncode, 1, "exit status of %r" % args)
    check(want in r.stderr, "%r: the message names %r: %r" % (args, want, r.stderr))


def main():
    d = tmpdir()
    so = build(d)
    pw = os.path.join(d, "pw")
    with open(pw, "w") as f:
        f.write("sekret\n")
    marker = os.path.join(d, "marker")

    # Probing: the plugin's own metadata and dump_plugin output.
    out = subprocess.run(server_command() + [so, "--dump-plugin"], capture_output=True, text=True,
                         check=True).stdout
    for line in ["name=abitest", "version=1.0", "magic_config_key=size", "so=" + so, "abitest_dump=yes",
                 "has_extents=1", "has_block_size=1", "has_list_exports=1", "has_zero=1"]:
        check(line in out.splitlines(), "--dump-plugin has %r: %r" % (line, out))
    out = subprocess.run(server_command() + [so, "--help"], capture_output=True, text=True,
                         check=True).stdout
    check("size=<SIZE>  Size of the disk" in out, "--help has the config_help: %r" % out)

    # Configuration errors, from the plugin's nbdkit_error, stop the server before it listens.
    refused([so, "2M"], "abitest: size=2M: at most 1048576 bytes")
    refused([so, "colour=red"], "abitest: unknown parameter 'colour'")
    refused([so, "password=+/nonexistent/pw"], "/nonexistent/pw")
    refused([so, "verror=x"], "abitest: verror says x (42)")
    # -D abitest.level=N sets the plugin's `int abitest_debug_level` before config_complete.
    refused(["-D", "abitest.level=2", so, "expect_level=3"], "check failed at abitest.c")

    args = [so, "64K", "password=+" + pw, "expect_level=3", "marker=" + marker]
    with Server(args, options=["-v", "-D", "abitest.level=3"]) as srv:
        # Every check in config_complete passed, and the debug messages reached the log.
        log = srv.stderr()
        check("abitest: errno is Device or resource busy, level 3" in log, "nbdkit_debug with %m: " + log)
        check("hexdump: " in log and "|abitest|" in log, "nbdkit_debug_hexdump: " + log)
        check("abitest: vdebug says hello 99" in log, "nbdkit_vdebug: " + log)

        h = nbd.NBD()
        h.set_full_info(True)
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_uri(srv.uri)
        info = h.pread(512, 0).rstrip(b"\0").decode()
        want = ("export=beta pid=%d uid=%d gid=%d preconnect_pid=%d tls=0 family=1 dn=[] issuer=[] "
                "secctx=none readonly=0\n" % (os.getpid(), os.getuid(), os.getgid(), os.getpid()))
        check_eq(info, want, "what the plugin saw of the connection")
        check_eq(h.get_size(), 65536, "size from the magic key")
        check_eq(h.get_export_description(), "abitest export beta", "interned description")
        check_eq(h.get_block_size(nbd.SIZE_PREFERRED), 4096, "preferred block size")
        check_eq(h.get_block_size(nbd.SIZE_MAXIMUM), 8 << 20, "maximum block size")
        for cap in ["can_flush", "can_trim", "can_zero", "can_fast_zero", "can_fua", "can_multi_conn",
                    "can_cache", "is_rotational"]:
            check(getattr(h, cap)(), cap)
        check(not h.is_read_only(), "writable")

        h.pwrite(b"hello", 4096, nbd.CMD_FLAG_FUA)
        check_eq(h.pread(5, 4096), b"hello", "read back")
        expect_errno(errno.ENOSPC, h.pwrite, b"E", 8192, what="nbdkit_set_error(ENOSPC)")
        expect_errno(errno.EPERM, h.pwrite, b"P", 8192, what="errno EPERM, errno_is_preserved")
        check_eq(h.pread(1, 8192), b"\0", "failed writes stored nothing")
        expect_errno(errno.ENOTSUP, h.zero, 4096, 4096, nbd.CMD_FLAG_FAST_ZERO, what="fast zero")
        h.zero(4096, 4096)
        check_eq(h.pread(5, 4096), bytes(5), "zeroed")
        h.trim(4096, 8192)
        h.cache(4096, 0)
        h.flush()
        check_eq(extents(h, 65536, 0), [(512, 0), (65024, nbd.STATE_HOLE | nbd.STATE_ZERO)], "extents")
        check_eq(extents(h, 65536, 0, nbd.CMD_FLAG_REQ_ONE), [(512, 0)], "extents, one")
        h.shutdown()

        # The export list: an export with a description, then the default export's name.
        out = subprocess.run(["nbdinfo", "--list", "--json", srv.uri], capture_output=True, text=True,
                             check=True).stdout
        names = [(e["export-name"], e.get("description")) for e in json.loads(out)["exports"]]
        check_eq(names, [("alpha", "the first export"), ("beta", None)], "export list")
        h = nbd_handle(srv.uri_for("alpha"))
        check(h.pread(512, 0).startswith(b"export=alpha "), "nbdkit_export_name")
        h.shutdown()
        # open failing with nbdkit_set_error(EACCES): the client is refused.
        try:
            nbd_handle(srv.uri_for("refuse"))
            check(False, "export 'refuse' was served")
        except nbd.Error:
            pass

        # Read-only connections: the plugin is opened read-only.
        with Server(args[:2], options=["-r"]) as ro:
            h = nbd_handle(ro.uri)
            check(h.pread(512, 0).rstrip(b"\0").endswith(b"readonly=1\n"), "open(readonly=1)")
            check(h.is_read_only(), "read-only export")
            h.shutdown()

        # nbdkit_disconnect(1) from a write: this client is dropped, the server goes on.
        h = nbd_handle(srv.uri)
        try:
            h.pwrite(b"D", 8192)
            h.pread(1, 0)
            check(False, "the connection survived nbdkit_disconnect")
        except nbd.Error:
            pass
        h = nbd_handle(srv.uri)
        check_eq(h.pread(1, 8192), b"D", "still served after a disconnect")

        # nbdkit_shutdown: the server exits by itself, running cleanup then unload.
        h.pwrite(b"S", 8192)
        deadline = time.monotonic() + 20
        while srv.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        check(not srv.alive(), "nbdkit_shutdown stopped the server")
        check_eq(srv.stop(), 0, "exit status after nbdkit_shutdown")
    with open(marker) as f:
        check_eq(f.read(), "cleanup\nunload\n", "cleanup and unload ran, in that order")


run(main)
