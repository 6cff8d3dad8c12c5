#!/usr/bin/env bash
# --tls-verify-peer: clients must present a certificate signed by the CA in ca-cert.pem and not
# revoked by ca-crl.pem.  libnbd and qemu with a client certificate get in and move data; without
# one, with one from another CA, or with a revoked one, they are refused.
source "$(dirname "$0")/lib/functions.sh"

client_info='country = US\norganization = nbdforge test\ncn = %s\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n'

gen_ca ca "nbdforge test CA"
gen_ca rogue-ca "another CA"
gen_cert server ca "$server_info"
gen_cert client ca "$(printf "$client_info" client.example.com)"
gen_cert revoked ca "$(printf "$client_info" revoked.example.com)"
gen_cert rogue rogue-ca "$(printf "$client_info" client.example.com)"

# The server's directory.
pki="$tmp/pki"
mkdir -m 0700 "$pki"
cp "$tmp/ca-cert.pem" "$pki/ca-cert.pem"
cp "$tmp/server-cert.pem" "$pki/server-cert.pem"
cp "$tmp/server-key.pem" "$pki/server-key.pem"

# client_dir NAME [CERT]: what libnbd and qemu read: the CA, and client-cert.pem/client-key.pem.
client_dir() {
    local d="$tmp/dir-$1"
    mkdir -p "$d"
    cp "$tmp/ca-cert.pem" "$d/ca-cert.pem"
    if [ -n "${2:-}" ]; then
        cp "$tmp/$2-cert.pem" "$d/client-cert.pem"
        cp "$tmp/$2-key.pem" "$d/client-key.pem"
    fi
    echo "$d"
}
good=$(client_dir good client)
none=$(client_dir none)
rogue=$(client_dir rogue rogue)
# qemu checks its own certificate against the CAs it trusts, so the rogue client trusts both.
cat "$tmp/rogue-ca-cert.pem" >> "$rogue/ca-cert.pem"
revoked=$(client_dir revoked revoked)

start_server --tls=require --tls-certificates="$pki" --tls-verify-peer memory 64M
uri_with() { echo "nbds+unix:///?socket=$sock&tls-certificates=$1"; }

# A client with a good certificate gets in and moves data.
[ "$(nbdinfo --size "$(uri_with "$good")")" -eq $((64 << 20)) ] || fail "client certificate refused"
nbdsh -c "h.set_uri_allow_local_file(True)" -c "h.connect_uri('$(uri_with "$good")')" -c '
data = bytes(range(256)) * 8192
h.pwrite(data, 0)
assert h.pread(len(data), 0) == data
'
obj="tls-creds-x509,id=tls0,dir=$good,endpoint=client"
img="driver=nbd,path=$sock,tls-creds=tls0,tls-hostname=localhost"
qemu-io --object "$obj" --image-opts "$img" -c 'write -P 0x3c 8M 1M' -c 'read -P 0x3c 8M 1M' \
    > "$tmp/qemu-io" 2>&1 || { cat "$tmp/qemu-io"; fail "qemu-io with a client certificate failed"; }
cat "$tmp/qemu-io"
if grep -Eiq 'error|fail|mismatch' "$tmp/qemu-io"; then fail "qemu-io reported an error"; fi

# Refused: no certificate, a certificate from another CA.
for d in "$none" "$rogue"; do
    expect_fail nbdinfo --size "$(uri_with "$d")" 2>"$tmp/err"
    cat "$tmp/err"
    expect_fail qemu-img info --object "tls-creds-x509,id=tls0,dir=$d,endpoint=client" \
        --image-opts "driver=nbd,path=$sock,tls-creds=tls0,tls-hostname=localhost" 2>"$tmp/err"
    cat "$tmp/err"
done
[ "$(nbdinfo --size "$(uri_with "$good")")" -eq $((64 << 20)) ] || fail "server unusable after refusals"

# Without --tls-verify-peer the same server takes clients without a certificate.
start_server --tls=require --tls-certificates="$pki" memory 1M
[ "$(nbdinfo --size "$(uri_with "$none")")" -eq $((1 << 20)) ] || fail "no certificate needed without --tls-verify-peer"

# A revocation list in the directory (ca-crl.pem) shuts out the revoked certificate only.
printf 'crl_next_update = 2\ncrl_number = 1\n' > "$tmp/crl.info"
certtool --generate-crl --load-ca-privkey "$tmp/ca-key.pem" --load-ca-certificate "$tmp/ca-cert.pem" \
    --load-certificate "$tmp/revoked-cert.pem" --template "$tmp/crl.info" --outfile "$pki/ca-crl.pem" 2>/dev/null
start_server --tls=require --tls-certificates="$pki" --tls-verify-peer memory 1M
[ "$(nbdinfo --size "$(uri_with "$good")")" -eq $((1 << 20)) ] || fail "CRL shut out a good certificate"
expect_fail nbdinfo --size "$(uri_with "$revoked")" 2>"$tmp/err"
cat "$tmp/err"
echo OK
