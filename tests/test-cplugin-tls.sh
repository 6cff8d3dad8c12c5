#!/usr/bin/env bash
# What a C plugin learns of a TLS client through nbdkit's ABI: nbdkit_is_tls is 1, and
# nbdkit_peer_tls_dn and nbdkit_peer_tls_issuer_dn name the client certificate's subject and its
# CA (tests/cplugin/abitest.c serves them as text at offset 0, read here with nbdsh).
source "$(dirname "$0")/lib/functions.sh"

gcc -Wall -Werror -Wno-unused-parameter -fPIC -shared -o "$tmp/abitest.so" \
    "$repo/tests/cplugin/abitest.c"

client_info='organization = nbdforge test\ncn = client.example.com\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n'
server_pki "$tmp/pki" "$tmp/client"
gen_cert client pki-ca "$client_info"
cp "$tmp/client-cert.pem" "$tmp/client/client-cert.pem"
cp "$tmp/client-key.pem" "$tmp/client/client-key.pem"

start_server --tls=require --tls-certificates="$tmp/pki" --tls-verify-peer "$tmp/abitest.so" 64K
info=$(nbdsh -c "h.set_uri_allow_local_file(True)" \
    -c "h.connect_uri('nbds+unix:///?socket=$sock&tls-certificates=$tmp/client')" \
    -c 'print(h.pread(512, 0).rstrip(b"\0").decode())')
echo "$info"
case "$info" in *" tls=1 "*) ;; *) fail "nbdkit_is_tls is not 1: $info" ;; esac
case "$info" in *"dn=["*"CN=client.example.com"*"]"*) ;; *) fail "nbdkit_peer_tls_dn: $info" ;; esac
case "$info" in *"issuer=["*"CN=nbdforge test CA"*"]"*) ;; *) fail "nbdkit_peer_tls_issuer_dn: $info" ;; esac
echo "PASS: $(basename "$0")"
