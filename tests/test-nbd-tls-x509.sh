#!/usr/bin/env bash
# The nbd plugin over TLS with X.509 certificates to the server below (nbdforge --tls=require
# with a certificate for localhost): tls-certificates=DIR with the CA verifies the server over
# TCP by host name; a CA that did not sign the server's certificate, or a host name the
# certificate does not name, stops the proxy (shared=true connects at start-up) unless
# tls-verify=false.
source "$(dirname "$0")/lib/functions.sh"

server_pki "$tmp/server-pki" "$tmp/client-pki"
port=$(free_tcp_port)
"${server_cmd[@]}" -f -p "$port" -i 127.0.0.1 --tls=require --tls-certificates="$tmp/server-pki" \
    memory 16M </dev/null >"$tmp/below.log" 2>&1 &
server_pids+=($!)
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port)).close()" 2>/dev/null && break
    sleep 0.1
done

start_server nbd hostname=localhost port="$port" tls=require tls-certificates="$tmp/client-pki"
nbdsh -u "$uri" -c 'h.pwrite(b"tls" * 1000, 4096); assert h.pread(3000, 4096) == b"tls" * 1000'
nbdinfo --json "$uri" | grep -q '"TLS": false' || fail "the client side should be plain"
start_server nbd "nbds://localhost:$port/" tls-certificates="$tmp/client-pki"
[ "$(nbdsh -u "$uri" -c 'print(h.pread(3, 4096).decode())')" = tls ] || fail "nbds:// URI"

# Another CA: the server's certificate is not trusted.
gen_ca other-ca "another CA"
mkdir -m 0700 "$tmp/other"
cp "$tmp/other-ca-cert.pem" "$tmp/other/ca-cert.pem"
bad_args nbd hostname=localhost port="$port" tls=require tls-certificates="$tmp/other" shared=true -- \
    "nbd:" "localhost:$port" "the server's certificate was refused"
# The certificate names localhost, not 127.0.0.1.
bad_args nbd hostname=127.0.0.1 port="$port" tls=require tls-certificates="$tmp/client-pki" shared=true -- \
    "nbd:" "127.0.0.1:$port" "hostname mismatch"
start_server nbd hostname=127.0.0.1 port="$port" tls=require tls-certificates="$tmp/other" tls-verify=false \
    shared=true
[ "$(nbdinfo --size "$uri")" = $((16 << 20)) ] || fail "tls-verify=false"
echo OK
