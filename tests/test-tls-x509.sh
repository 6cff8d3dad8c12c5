#!/usr/bin/env bash
# TLS with X.509 certificates (--tls=require --tls-certificates=DIR): nbdinfo, nbdsh, nbdcopy and
# qemu-img/qemu-io (TLS 1.3, and TLS 1.2 through qemu's priority string) read and write over TLS;
# a plain client and a client trusting another CA are refused; a broken certificate directory
# stops the server with an error naming the file.
source "$(dirname "$0")/lib/functions.sh"

# The certificate layout of nbdkit-tls(1); the client trusts only the CA certificate.
pki="$tmp/pki"
client="$tmp/client"
server_pki "$pki" "$client"

start_server --tls=require --tls-certificates="$pki" memory 64M
tls_uri="nbds+unix:///?socket=$sock&tls-certificates=$client"

# nbdinfo says TLS is in use and sees the export.
nbdinfo "$tls_uri" > "$tmp/info"
cat "$tmp/info"
grep -q "with TLS" "$tmp/info" || fail "nbdinfo does not report TLS"
[ "$(nbdinfo --size "$tls_uri")" -eq $((64 << 20)) ] || fail "wrong size over TLS"

# nbdsh writes and reads back, in requests bigger than a TLS record.
# (nbdsh -u refuses URIs naming local files, hence connect_uri after allowing them.)
nbdsh_tls() {
    local uri=$1 script=$2
    nbdsh -c "h.set_uri_allow_local_file(True)" -c "h.connect_uri('$uri')" -c "$script"
}
nbdsh_tls "$tls_uri" '
import os
data = os.urandom(3 << 20)
h.pwrite(data, 1 << 20)
assert h.pread(3 << 20, 1 << 20) == data, "data read back differs"
assert h.pread(4096, 0) == bytes(4096), "unwritten area is not zero"
h.flush()
'

# nbdcopy moves a file in and out (several connections, many requests in flight).
random_file "$tmp/in" 32M
nbdcopy "$tmp/in" "$tls_uri"
nbdcopy "$tls_uri" "$tmp/out"
cmp -n $((32 << 20)) "$tmp/in" "$tmp/out" || fail "nbdcopy round trip over TLS differs"

# qemu: TLS 1.3, then TLS 1.2 forced by the GnuTLS priority string.
for priority in NORMAL NORMAL:-VERS-TLS1.3; do
    obj="tls-creds-x509,id=tls0,dir=$client,endpoint=client,priority=$priority"
    img="driver=nbd,path=$sock,tls-creds=tls0,tls-hostname=localhost"
    qemu-img info --object "$obj" --image-opts "$img" > "$tmp/qemu-info" 2>&1 ||
        { cat "$tmp/qemu-info"; fail "qemu-img info over TLS ($priority) failed"; }
    grep -q "virtual size: 64 MiB" "$tmp/qemu-info" || { cat "$tmp/qemu-info"; fail "qemu-img info: wrong size"; }
    qemu-io --object "$obj" --image-opts "$img" \
        -c 'write -P 0x5c 40M 1M' -c 'read -P 0x5c 40M 1M' -c 'write -z 41M 64k' -c 'read -P 0 41M 64k' \
        > "$tmp/qemu-io" 2>&1 || { cat "$tmp/qemu-io"; fail "qemu-io over TLS ($priority) failed"; }
    cat "$tmp/qemu-io"
    if grep -Eiq 'error|fail|mismatch' "$tmp/qemu-io"; then fail "qemu-io reported an error ($priority)"; fi
    [ "$(grep -c '^read ' "$tmp/qemu-io")" -eq 2 ] || fail "qemu-io did not read twice ($priority)"
done
# What qemu wrote is there for libnbd.
nbdsh_tls "$tls_uri" 'assert h.pread(1 << 20, 40 << 20) == b"\x5c" * (1 << 20)'

# --tls=require: a plain client gets nowhere.
expect_fail nbdinfo "nbd+unix:///?socket=$sock" 2>"$tmp/err"
# A client that trusts another CA refuses the server's certificate (qemu checks it; libnbd does
# not on Unix sockets, where it has no host name to check).
other="$tmp/other"
mkdir "$other"
certtool --generate-privkey --key-type=ecdsa --outfile "$tmp/other-key.pem" 2>/dev/null
printf 'cn = another CA\nca\ncert_signing_key\nexpiration_days = 2\n' > "$tmp/other.info"
certtool --generate-self-signed --load-privkey "$tmp/other-key.pem" --template "$tmp/other.info" \
    --outfile "$other/ca-cert.pem" 2>/dev/null
expect_fail qemu-img info --object "tls-creds-x509,id=tls0,dir=$other,endpoint=client" \
    --image-opts "driver=nbd,path=$sock,tls-creds=tls0,tls-hostname=localhost" 2>"$tmp/err"
cat "$tmp/err"
grep -qi "certificate" "$tmp/err" || fail "qemu-img did not fail on the certificate"
# The server is still fine after refusing them.
[ "$(nbdinfo --size "$tls_uri")" -eq $((64 << 20)) ] || fail "server unusable after refused clients"

# A certificate directory without its key, or with the wrong key, stops the server at startup.
is_nbdkit=
[ "$(basename "${server_cmd[0]}")" = nbdkit ] && is_nbdkit=1
broken="$tmp/broken"
mkdir "$broken"
cp "$pki/ca-cert.pem" "$pki/server-cert.pem" "$broken/"
for case in missing mismatched; do
    if [ $case = mismatched ]; then
        certtool --generate-privkey --key-type=ecdsa --outfile "$broken/server-key.pem" 2>/dev/null
    fi
    status=0
    timeout 20 "${server_cmd[@]}" -f -U "$tmp/broken.sock" --tls=require --tls-certificates="$broken" \
        memory 1M > "$tmp/broken.log" 2>&1 || status=$?
    cat "$tmp/broken.log"
    [ "$status" -ne 0 ] && [ "$status" -ne 124 ] || fail "server started with a $case key (status $status)"
    # nbdkit only says it could not load certificates; nbdforge names the file and the problem.
    if [ -z "$is_nbdkit" ]; then
        grep -q "$broken/server-key.pem" "$tmp/broken.log" || fail "error does not name server-key.pem"
        if [ $case = missing ]; then
            grep -q "No such file or directory" "$tmp/broken.log" || fail "error does not say the key is missing"
        else
            grep -q "does not match the certificate" "$tmp/broken.log" || fail "error does not say the key does not match"
        fi
    fi
done
echo OK
