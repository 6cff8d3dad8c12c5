#!/usr/bin/env bash
# nbdforge-img serving over TLS with qemu-nbd's --object tls-creds-x509 / tls-creds-psk and
# --tls-creds: qemu-img and nbdinfo as clients read and write; plain-text clients are refused;
# --tls-authz with authz-simple and authz-list-file lets the listed certificate in and refuses a
# certificate of the same CA that is not listed; bad objects exit 1 with qemu-nbd's wording.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"
client_info='organization = nbdforge test\ncn = %s\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n'
gen_ca ca "nbdforge test CA"
gen_cert server ca "$server_info"
gen_cert alice ca "$(printf "$client_info" alice.example.com)"
gen_cert mallory ca "$(printf "$client_info" mallory.example.com)"
mkdir -m 0700 pki
cp ca-cert.pem pki/ca-cert.pem
cp server-cert.pem pki/server-cert.pem
cp server-key.pem pki/server-key.pem
client_dir() {   # client_dir NAME: what qemu and libnbd read (ca-cert.pem, client-*.pem)
    mkdir -p "c-$1"
    cp ca-cert.pem "c-$1/ca-cert.pem"
    cp "$1-cert.pem" "c-$1/client-cert.pem"
    cp "$1-key.pem" "c-$1/client-key.pem"
}
client_dir alice
client_dir mallory
qemu-img create -q -f qcow2 disk.qcow2 4M
x509=(--object tls-creds-x509,id=tls0,dir="$tmp/pki",endpoint=server,verify-peer=off --tls-creds tls0)

# qemu-img over TLS (verify-peer=off: no client certificate needed): write, read back.
start_img -t "${x509[@]}" disk.qcow2
qimg() {   # qimg CLIENT_DIR ARGS...: qemu-io on the export over TLS
    local dir=$1
    shift
    qemu-io --object tls-creds-x509,id=c,dir="$tmp/$dir",endpoint=client \
        --image-opts "driver=nbd,server.type=unix,server.path=$sock,tls-creds=c,tls-hostname=localhost" "$@"
}
qimg c-alice -c "write -P 0x5a 0 64k" >/dev/null || fail "qemu-io write over TLS"
qimg c-alice -c "read -P 0x5a 0 64k" | grep -q "read 65536" || fail "qemu-io read over TLS"
[ "$(nbdinfo --size "nbds+unix:///?socket=$sock&tls-certificates=$tmp/c-alice")" = 4194304 ] || fail "nbdinfo size"
# Plain text is refused.
nbdinfo --size "nbd+unix:///?socket=$sock" 2>err && fail "a plain-text client was served"
stop_server "$server_pid"

# PSK: keys.psk in dir=; nbdinfo with the key file.
mkdir -m 0700 psk
psktool -u alice -p psk/keys.psk >/dev/null
start_img -t --object tls-creds-psk,id=p,dir="$tmp/psk",endpoint=server --tls-creds p disk.qcow2
nbdcopy -C 1 "nbds+unix://alice@/?socket=$sock&tls-psk-file=$tmp/psk/keys.psk" copy.raw
head -c 65536 copy.raw | tr -d '\132' | cmp -s - /dev/null \
    || fail "PSK: the data written over X.509 does not read back"
nbdinfo --size "nbds+unix://bob@/?socket=$sock&tls-psk-file=$tmp/psk/keys.psk" 2>/dev/null && fail "PSK: unknown user served"
stop_server "$server_pid"

# authz-simple: only alice's certificate (verify-peer=on) gets in.
# The identity is the DN as qemu prints it (certificate order), with ',' doubled for --object.
alice_dn="O=nbdforge test,,CN=alice.example.com"
x509v=(--object tls-creds-x509,id=tls0,dir="$tmp/pki",endpoint=server,verify-peer=on --tls-creds tls0)
start_img -t "${x509v[@]}" --object "authz-simple,id=auth0,identity=$alice_dn" --tls-authz auth0 disk.qcow2
qimg c-alice -c "read -P 0x5a 0 4k" | grep -q "read 4096" || fail "authz-simple: alice refused: $(cat "$server_log")"
qimg c-mallory -c "read 0 4k" >out 2>&1 && fail "authz-simple: mallory was served"
grep -q "not authorized" "$server_log" || fail "authz-simple: the log does not say why: $(cat "$server_log")"
stop_server "$server_pid"

# The same with qemu-nbd, for the record: it refuses mallory as well.
start_qemu_nbd -t "${x509v[@]}" --object "authz-simple,id=auth0,identity=$alice_dn" --tls-authz auth0 disk.qcow2
qimg c-mallory -c "read 0 4k" >/dev/null 2>&1 && fail "qemu-nbd authz-simple: mallory was served"
qimg c-alice -c "read -P 0x5a 0 4k" | grep -q "read 4096" || fail "qemu-nbd authz-simple: alice refused (DN form?)"
stop_server "$server_pid"

# authz-list-file (qemu's JSON), re-read with refresh=on: alice by glob, then removed.
cat > authz.json <<'JSON'
{ "rules": [ { "match": "*CN=mallory*", "policy": "deny", "format": "glob" },
             { "match": "O=nbdforge test,CN=*.example.com", "policy": "allow", "format": "glob" } ],
  "policy": "deny" }
JSON
start_img -t "${x509v[@]}" --object authz-list-file,id=auth0,filename="$tmp/authz.json",refresh=on \
    --tls-authz auth0 disk.qcow2
qimg c-alice -c "read 0 4k" | grep -q "read 4096" || fail "authz-list-file: alice refused"
qimg c-mallory -c "read 0 4k" >/dev/null 2>&1 && fail "authz-list-file: mallory was served"
echo '{ "rules": [], "policy": "deny" }' > authz.json
qimg c-alice -c "read 0 4k" >/dev/null 2>&1 && fail "authz-list-file refresh=on: the new rules were not read"
stop_server "$server_pid"

# Bad objects: exit 1 before listening, as qemu-nbd.
for args in "--tls-creds nope" "--object tls-creds-x509,id=t,dir=$tmp/c-alice,endpoint=client --tls-creds t" \
    "--object frob,id=x" "--object secret,id=s" "--tls-authz a"; do
    for cmd in qemu-nbd "$NBDFORGE_IMG"; do
        # shellcheck disable=SC2086
        timeout 20 "$cmd" -k "$tmp/bad.sock" $args disk.qcow2 2>err </dev/null && fail "$cmd $args: accepted"
        rm -f "$tmp/bad.sock"
    done
    echo "$args: $(head -1 err)"
done
"$NBDFORGE_IMG" -k bad.sock --tls-creds nope disk.qcow2 2>err && fail "--tls-creds nope: accepted"
grep -q "No TLS credentials with id 'nope'" err || fail "--tls-creds nope: $(cat err)"

# Secrets are accepted, inline or from a file, by both servers, which then serve the image.
printf 'letmein' > "$tmp/secret.txt"
for secret in "secret,id=s0,data=letmein" "secret,id=s1,file=$tmp/secret.txt"; do
    for start in start_qemu_nbd start_img; do
        "$start" -t -r --object "$secret" -f qcow2 disk.qcow2
        nbdinfo --size "$uri" >/dev/null || fail "$start --object $secret: not served"
        stop_server "$server_pid"
    done
done
