#!/usr/bin/env bash
# TLS with pre-shared keys (--tls=require --tls-psk=FILE, a psktool file): nbdinfo, nbdsh and
# qemu-img/qemu-io (TLS 1.3, and TLS 1.2 through qemu's priority string) read and write; a wrong
# key and an unknown username are refused; a user added to the file while the server runs can
# connect; a malformed or missing key file stops the server with an error naming file and line.
source "$(dirname "$0")/lib/functions.sh"

keys="$tmp/keys"
mkdir -m 0700 "$keys"
psktool -u alice -p "$keys/keys.psk" >/dev/null
grep -Eq '^alice:[0-9a-f]{64}$' "$keys/keys.psk" || fail "unexpected psktool output: $(cat "$keys/keys.psk")"

start_server --tls=require --tls-psk="$keys/keys.psk" memory 64M
psk_uri() { echo "nbds+unix://$1@/?socket=$sock&tls-psk-file=$2"; }
alice=$(psk_uri alice "$keys/keys.psk")

nbdinfo "$alice" > "$tmp/info"
grep -q "with TLS" "$tmp/info" || { cat "$tmp/info"; fail "nbdinfo does not report TLS"; }
[ "$(nbdinfo --size "$alice")" -eq $((64 << 20)) ] || fail "wrong size over TLS-PSK"

# (nbdsh -u refuses URIs naming local files, hence connect_uri after allowing them.)
nbdsh -c "h.set_uri_allow_local_file(True)" -c "h.connect_uri('$alice')" -c '
import os
data = os.urandom(5 << 20)
h.pwrite(data, 3 << 20)
assert h.pread(5 << 20, 3 << 20) == data, "data read back differs"
h.zero(1 << 20, 4 << 20)
assert h.pread(1 << 20, 4 << 20) == bytes(1 << 20), "zeroed range is not zero"
'

# qemu's PSK credentials: a directory holding keys.psk, and the username.
for priority in NORMAL NORMAL:-VERS-TLS1.3; do
    obj="tls-creds-psk,id=tls0,dir=$keys,username=alice,endpoint=client,priority=$priority"
    img="driver=nbd,path=$sock,tls-creds=tls0"
    qemu-img info --object "$obj" --image-opts "$img" > "$tmp/qemu-info" 2>&1 ||
        { cat "$tmp/qemu-info"; fail "qemu-img info over TLS-PSK ($priority) failed"; }
    grep -q "virtual size: 64 MiB" "$tmp/qemu-info" || { cat "$tmp/qemu-info"; fail "qemu-img info: wrong size"; }
    qemu-io --object "$obj" --image-opts "$img" \
        -c 'write -P 0xa7 20M 2M' -c 'read -P 0xa7 20M 2M' -c 'read -P 0 19M 1M' \
        > "$tmp/qemu-io" 2>&1 || { cat "$tmp/qemu-io"; fail "qemu-io over TLS-PSK ($priority) failed"; }
    cat "$tmp/qemu-io"
    if grep -Eiq 'error|fail|mismatch' "$tmp/qemu-io"; then fail "qemu-io reported an error ($priority)"; fi
    [ "$(grep -c '^read ' "$tmp/qemu-io")" -eq 2 ] || fail "qemu-io did not read twice ($priority)"
done

# The right username with the wrong key is refused.
mkdir "$tmp/wrong"
sed 's/^alice:.*/alice:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff/' \
    "$keys/keys.psk" > "$tmp/wrong/keys.psk"
expect_fail nbdinfo --size "$(psk_uri alice "$tmp/wrong/keys.psk")" 2>"$tmp/err"
cat "$tmp/err"
expect_fail qemu-img info --object "tls-creds-psk,id=tls0,dir=$tmp/wrong,username=alice,endpoint=client" \
    --image-opts "driver=nbd,path=$sock,tls-creds=tls0" 2>"$tmp/err"
cat "$tmp/err"
# A username the server does not know is refused, whatever the key.
mkdir "$tmp/bob"
psktool -u bob -p "$tmp/bob/keys.psk" >/dev/null
expect_fail nbdinfo --size "$(psk_uri bob "$tmp/bob/keys.psk")" 2>"$tmp/err"
cat "$tmp/err"
# Without TLS, nothing.
expect_fail nbdinfo --size "nbd+unix:///?socket=$sock" 2>"$tmp/err"
[ "$(nbdinfo --size "$alice")" -eq $((64 << 20)) ] || fail "server unusable after refused clients"

# Keys added to the file while the server runs are used (GnuTLS, and so nbdkit, reads the file at
# every handshake).
cat "$tmp/bob/keys.psk" >> "$keys/keys.psk"
[ "$(nbdinfo --size "$(psk_uri bob "$tmp/bob/keys.psk")")" -eq $((64 << 20)) ] || fail "new user refused"

# A key file that cannot be used stops the server at startup, naming the file and the line.
is_nbdkit=
[ "$(basename "${server_cmd[0]}")" = nbdkit ] && is_nbdkit=1
check_refused() {
    local file=$1 want=$2 status=0
    timeout 20 "${server_cmd[@]}" -f -U "$tmp/bad.sock" --tls=require --tls-psk="$file" \
        memory 1M > "$tmp/bad.log" 2>&1 || status=$?
    cat "$tmp/bad.log"
    [ "$status" -ne 0 ] && [ "$status" -ne 124 ] || fail "server started with $file (status $status)"
    if [ -z "$is_nbdkit" ]; then
        grep -qF "$want" "$tmp/bad.log" || fail "error does not say: $want"
    fi
}
check_refused "$tmp/nonexistent.psk" "$tmp/nonexistent.psk: No such file or directory"
if [ -z "$is_nbdkit" ]; then
    # nbdkit only finds out at the first handshake; nbdforge reads the file at startup.
    printf 'alice:00ff\n\nbob 1234\n' > "$tmp/bad.psk"
    check_refused "$tmp/bad.psk" "tls-psk: $tmp/bad.psk: line 3: expected username:hexkey"
    printf 'alice:00ff\ncarol:xyz1\n' > "$tmp/bad.psk"
    check_refused "$tmp/bad.psk" "tls-psk: $tmp/bad.psk: line 2: the key of 'carol' is not hexadecimal"
fi
echo OK
