#!/usr/bin/env bash
# -L/--list: nbdforge-img as a client prints what qemu-nbd -L prints, byte for byte, for servers
# of every kind (nbdkit, qemu-nbd, nbdforge, nbdforge-img; several exports with descriptions,
# meta contexts in the qemu: namespace, read-only), over Unix sockets, TCP and TLS (X.509 and PSK
# with --object tls-creds-*,endpoint=client); and both fail alike when nothing listens.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"
for d in disk tls psk; do qemu-img create -q -f qcow2 $d.qcow2 1M; done

same_list() {   # same_list WHAT ARGS...: both clients' -L output agrees
    local what=$1
    shift
    qemu-nbd -L "$@" >want 2>want.err || fail "$what: qemu-nbd -L failed: $(cat want.err)"
    "$NBDFORGE_IMG" -L "$@" >got 2>got.err || fail "$what: nbdforge-img -L failed: $(cat got.err)"
    grep -q "exports available" got || fail "$what: no listing: $(cat got)"
    diff -u want got || fail "$what: the listings differ"
    echo "$what: same ($(head -1 got))"
}

for s in kit kit-info; do
    if [ $s = kit ]; then nbdkit -f -U "$tmp/$s.sock" memory 1M & else nbdkit -f -U "$tmp/$s.sock" -r info & fi
    server_pids+=($!)
    wait_for_socket "$tmp/$s.sock" $!
done
start_server memory 1M --filter=exportname exportname=a exportname=b exportname-list=explicit \
    exportdesc=fixed:described
forge_sock=$sock
port=$(free_tcp_port)
"${server_cmd[@]}" -f -p "$port" -i 127.0.0.1 memory 2M &
server_pids+=($!)
for _ in $(seq 50); do nbdinfo --size "nbd://127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
start_qemu_nbd -t -x disk -D "a description" -A disk.qcow2
qemu_sock=$sock
start_img -t -x disk -D "a description" -A -r disk.qcow2

same_list "nbdkit memory" -k "$tmp/kit.sock"
same_list "nbdkit info -r" -k "$tmp/kit-info.sock"
same_list "nbdforge, two exports" -k "$forge_sock"
grep -q "exports available: 2" got || fail "nbdforge: two exports expected"
same_list "qemu-nbd -A -D" -k "$qemu_sock"
grep -q "qemu:allocation-depth" got || fail "qemu-nbd: the qemu: context is missing"
same_list "nbdforge-img -A -D -r" -k "$sock"
grep -q "readonly" got || fail "nbdforge-img -r: not listed read-only"
same_list "TCP" -b 127.0.0.1 -p "$port"

# Nothing listening: the same message, exit 1.
for cmd in qemu-nbd "$NBDFORGE_IMG"; do
    status=0
    "$cmd" -L -k "$tmp/none.sock" 2>err || status=$?
    [ $status -eq 1 ] || fail "$cmd -L on no server: exit $status"
    grep -q "Failed to connect to '$tmp/none.sock': No such file or directory" err || fail "$cmd: $(cat err)"
done

# TLS: a qemu-nbd server with X.509 credentials, listed with client credentials.
server_pki "$tmp/pki" "$tmp/client-pki"
start_qemu_nbd -t --object tls-creds-x509,id=tls0,dir="$tmp/pki",endpoint=server,verify-peer=off \
    --tls-creds tls0 tls.qcow2
client=(--object tls-creds-x509,id=c0,dir="$tmp/client-pki",endpoint=client --tls-creds c0 --tls-hostname localhost)
same_list "TLS X.509" -k "$sock" "${client[@]}"
# Without TLS the server refuses to list; both clients fail.
"$NBDFORGE_IMG" -L -k "$sock" >/dev/null 2>err && fail "listed a TLS-only server without TLS"
grep -qi "TLS" err || fail "the refusal does not mention TLS: $(cat err)"
# Server credentials are not client credentials.
"$NBDFORGE_IMG" -L -k "$sock" --object tls-creds-x509,id=c1,dir="$tmp/client-pki",endpoint=server \
    --tls-creds c1 2>err && fail "server credentials accepted for -L"
grep -q "Expected TLS credentials for a client endpoint" err || fail "endpoint: $(cat err)"

# TLS with PSK (qemu's keys.psk in dir=).
mkdir -p "$tmp/psk"
psktool -u alice -p "$tmp/psk/keys.psk" >/dev/null
start_qemu_nbd -t --object tls-creds-psk,id=tls0,dir="$tmp/psk",endpoint=server --tls-creds tls0 psk.qcow2
same_list "TLS PSK" -k "$sock" --object tls-creds-psk,id=p0,dir="$tmp/psk",endpoint=client,username=alice \
    --tls-creds p0
