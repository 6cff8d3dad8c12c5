#!/usr/bin/env bash
# TLS without --tls, as nbdkit-tls(1) describes it: offered (not required) when credentials load,
# off when none do. TLS on -s (stdin/stdout). --timeout bounds a handshake that stalls after
# STARTTLS, not only before it.
source "$(dirname "$0")/lib/functions.sh"

pki="$tmp/pki"
client="$tmp/client"
server_pki "$pki" "$client"

nbdsh_uri() {   # nbdsh_uri URI SCRIPT: nbdsh -u refuses URIs naming local files
    nbdsh -c "h.set_uri_allow_local_file(True)" -c "h.connect_uri('$1')" -c "$2"
}

# Credentials given, no --tls: TLS clients and plain clients are both served.
start_server --tls-certificates="$pki" memory 1M
nbdinfo "nbds+unix:///?socket=$sock&tls-certificates=$client" | grep -q "with TLS" ||
    fail "no --tls, --tls-certificates: TLS is not offered"
nbdinfo "$uri" | grep -q "without TLS" || fail "no --tls: a plain client is refused"

# No credentials anywhere (HOME without .pki), no --tls: TLS is off, plain clients are served.
HOME="$tmp/empty-home" start_server memory 1M
nbdinfo "$uri" >/dev/null || fail "no credentials: plain client refused"
if nbdinfo "nbds+unix:///?socket=$sock&tls-certificates=$client" >/dev/null 2>&1; then
    fail "no credentials: a client requiring TLS was served"
fi

# -s: TLS over stdin/stdout, with libnbd running the server as its command.
nbdsh -c "
h.set_tls(nbd.TLS_REQUIRE)
h.set_tls_certificates('$client')
h.connect_command(['$NBDFORGE', '-s', '--tls=require', '--tls-certificates=$pki', 'memory', '1M'])
assert h.get_tls_negotiated()
h.pwrite(b'z' * 65536, 0)
assert h.pread(65536, 0) == b'z' * 65536
" || fail "-s --tls=require"

# --timeout=1: a client that completes STARTTLS and the TLS handshake, then says nothing, is
# dropped after about a second.
start_server --tls=require --tls-certificates="$pki" --timeout=1 memory 1M
/usr/bin/python3 - "$sock" "$client/ca-cert.pem" <<'PY' || fail "stalled TLS client was not dropped"
import socket, ssl, struct, sys, time
sock_path, ca = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.connect(sock_path)
def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b
recv(18)
s.sendall(struct.pack(">I", 3))                       # FIXED_NEWSTYLE | NO_ZEROES
s.sendall(struct.pack(">QII", 0x49484156454F5054, 5, 0))  # NBD_OPT_STARTTLS
magic, opt, rep, length = struct.unpack(">QIII", recv(20))
assert rep == 1, "STARTTLS not acknowledged: %#x" % rep
ctx = ssl.create_default_context(cafile=ca)
t = ctx.wrap_socket(s, server_hostname="localhost")
start = time.monotonic()
t.settimeout(10)
try:
    data = t.recv(1)
except (ssl.SSLError, OSError):
    data = b""
waited = time.monotonic() - start
assert data == b"", "server sent %r to an idle client" % data
assert waited < 5, "dropped only after %.1f s" % waited
print("dropped after %.1f s" % waited)
PY
echo OK
