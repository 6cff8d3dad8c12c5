#!/usr/bin/env bash
# The tls-fallback filter with --tls=on (nbdkit's command line; NBDFORGE=nbdkit runs it there):
# a plaintext client sees a read-only 512-byte disk holding the default message, whatever export
# it asks for; a TLS client sees the real 1 MiB disk and can write it; tlsreadme= changes the
# message.
source "$(dirname "$0")/lib/functions.sh"

pki="$tmp/pki"
client="$tmp/client"
server_pki "$pki" "$client"

start_server --tls=on --tls-certificates="$pki" --filter=tls-fallback memory 1M
plain="nbd+unix:///?socket=$sock"
plain_named="nbd+unix:///other?socket=$sock"
tls_uri="nbds+unix:///?socket=$sock&tls-certificates=$client"

[ "$(nbdinfo --size "$plain")" -eq 512 ] || fail "plaintext size"
[ "$(nbdinfo --size "$plain_named")" -eq 512 ] || fail "plaintext size of another export name"
nbdsh -u "$plain" -c '
data = h.pread(512, 0)
assert data.startswith(b"This NBD server requires TLS authentication before it will serve useful data."), data
assert data.rstrip(b"\0\n").endswith(b"data."), data
assert h.is_read_only()
'
nbdsh -c "h.set_uri_allow_local_file(True)" -c "h.connect_uri('$tls_uri')" -c '
assert h.get_size() == 1 << 20
h.pwrite(b"secret" * 10, 0)
assert h.pread(60, 0) == b"secret" * 10
'
# The plaintext disk is not the real one.
nbdsh -u "$plain" -c 'assert b"secret" not in h.pread(512, 0)'

start_server --tls=on --tls-certificates="$pki" --filter=tls-fallback memory 1M 'tlsreadme=Use TLS, please'
nbdsh -u "nbd+unix:///?socket=$sock" -c '
assert h.pread(512, 0) == b"Use TLS, please" + bytes(512 - 15)
'
echo OK
