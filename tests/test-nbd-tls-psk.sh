#!/usr/bin/env bash
# The nbd plugin over TLS with pre-shared keys to the server below: nbdforge and nbdkit (GnuTLS)
# below with --tls=require --tls-psk, the proxy with tls=require tls-psk= tls-username= or an
# nbds+unix:// URI naming the user and key file; data written through the proxy is read back
# from the server below over its own TLS connection. An unknown user stops the proxy before it
# listens; a proxy without TLS cannot open the export of a server that requires it.
source "$(dirname "$0")/lib/functions.sh"

keys="$tmp/keys"
mkdir -m 0700 "$keys"
psktool -u alice -p "$keys/keys.psk" >/dev/null
below_uri() { echo "nbds+unix://alice@/?socket=$1&tls-psk-file=$keys/keys.psk"; }

through_proxy() {   # through_proxy BELOW_SOCK PROXY-ARGS...
    local below_sock=$1
    shift
    start_server nbd "$@"
    nbdinfo --json "$uri" | grep -q '"TLS": false' || fail "the client side should be plain"
    nbdsh -u "$uri" -c '
import os
data = os.urandom(3 << 20)
h.pwrite(data, 1 << 20)
assert h.pread(3 << 20, 1 << 20) == data
open(os.environ["tmp"] + "/written", "wb").write(data)'
    # The server below holds what was written, read over its own TLS connection.
    nbdsh -c "h.set_uri_allow_local_file(True)" -c "h.connect_uri('$(below_uri "$below_sock")')" -c '
import os
assert h.pread(3 << 20, 1 << 20) == open(os.environ["tmp"] + "/written", "rb").read(), "not below"
'
    echo "PSK through the proxy: $*"
}
export tmp

start_server --tls=require --tls-psk="$keys/keys.psk" memory 16M
ours_below=$sock
through_proxy "$ours_below" socket="$ours_below" tls=require tls-psk="$keys/keys.psk" tls-username=alice
through_proxy "$ours_below" "$(below_uri "$ours_below")"

start_nbdkit --tls=require --tls-psk="$keys/keys.psk" memory 16M
nbdkit_below=$sock
through_proxy "$nbdkit_below" socket="$nbdkit_below" tls=on tls-psk="$keys/keys.psk" tls-username=alice
# The same command line works with nbdkit's nbd plugin.
start_nbdkit nbd socket="$nbdkit_below" tls=require tls-psk="$keys/keys.psk" tls-username=alice
[ "$(nbdinfo --size "$peer_uri")" = $((16 << 20)) ] || fail "nbdkit's proxy does not see the export"

bad_args nbd socket="$ours_below" tls-psk="$keys/keys.psk" tls-username=bob -- \
    "nbd: tls-psk: $keys/keys.psk: no key for user 'bob'"
bad_args nbd socket="$ours_below" tls=require tls-psk="$tmp/missing.psk" -- "$tmp/missing.psk"

# Without TLS the server below refuses the proxy: the client cannot open the export, and the
# proxy's log says why.
start_server nbd socket="$ours_below"
expect_fail nbdinfo "$uri" 2>/dev/null
grep -q "requires TLS" "$server_log" || fail "no reason in the log: $(cat "$server_log")"
kill -0 "$server_pid" || fail "the proxy died"
echo OK
