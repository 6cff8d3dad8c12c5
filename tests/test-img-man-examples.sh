#!/usr/bin/env bash
# Every example of qemu-nbd(8)'s EXAMPLES section (QEMU 10; the newest manual has the same five),
# run with nbdforge-img in qemu-nbd's place and, side by side, with qemu-nbd, each checked with real
# clients (nbdcopy, nbdinfo, nbdsh). The test runs in network and mount namespaces of its own
# (unshare -mn), so the examples keep their ports (10809, 10810) and the host name
# remote.example.com (127.0.0.1 in a private /etc/hosts); only placeholder paths (file.qcow2,
# /path/to/sock, /path/to/qemutls, /tmp/keys) become files in the test's directory.
#   1. qemu-nbd -f qcow2 file.qcow2: one-shot TCP server on 10809; nbdcopy gets the guest view.
#   2. X.509 + authz-simple (a DN with doubled commas), -t -x subset -p 10810, --image-opts raw
#      window: the allowed certificate reads the 1M window, another certificate of the same CA
#      and the empty export name are refused, and the server stays up.
#   3. --fork --persistent --shared=5 --socket --read-only --format=qcow2: returns once
#      listening; 5 simultaneous nbdsh readers see the image; writes are refused.
#   4. -c /dev/nbd0 then -d /dev/nbd0: without the nbd module (this machine), both end where the
#      device is missing, with the same status and message; with it, the device is read.
#   5. -L -b remote.example.com with PSK client credentials: the listing is byte for byte
#      qemu-nbd's, of a qemu-nbd server and of an nbdforge-img server.
if [ -z "${IMG_EXAMPLES_NS:-}" ]; then
    exec env IMG_EXAMPLES_NS=1 unshare -mn bash "$0" "$@"
fi
source "$(dirname "$0")/lib/functions.sh"
ip link set lo up
printf '127.0.0.1 localhost remote.example.com\n::1 localhost\n' > "$tmp/hosts"
mount --bind "$tmp/hosts" /etc/hosts
# The bind mount goes before $tmp is removed.
trap 'st=$?; umount /etc/hosts 2>/dev/null; (exit $st); cleanup' EXIT
cd "$tmp"

random_file guest.raw 4M
qemu-img convert -q -f raw -O qcow2 guest.raw file.qcow2
random_file file.raw 4M

wait_tcp() {   # wait_tcp PORT PID: until PID's server listens on TCP PORT (without connecting)
    local hex i
    hex=$(printf '%04X' "$1")
    for ((i = 0; i < 300; i++)); do
        awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp /proc/net/tcp6 &&
            return 0
        kill -0 "$2" 2>/dev/null || fail "server (pid $2) exited before listening on $1"
        sleep 0.1
    done
    fail "nothing listens on port $1 after 30 s"
}

servers=(qemu-nbd "$NBDFORGE_IMG")

# --- 1. A one-shot server of a qcow2 file's guest view on port 10809 ------------------------
for cmd in "${servers[@]}"; do
    "$cmd" -f qcow2 file.qcow2 2>ex1.err &
    pid=$!
    server_pids+=("$pid")
    wait_tcp 10809 "$pid"
    rm -f ex1.raw
    nbdcopy nbd://localhost ex1.raw
    cmp ex1.raw guest.raw || fail "example 1 ($cmd): the guest view differs"
    wait_exit "$pid" "example 1 ($cmd): the one-shot server, its client gone,"
    [ "$exit_status" -eq 0 ] || fail "example 1 ($cmd): exit status $exit_status: $(cat ex1.err)"
    echo "example 1 ($cmd): served the guest view to one client, then exited 0"
done

# --- 2. TLS with an authorized certificate, a 1 MiB window, export 'subset', port 10810 ------
client_info='dn = "%s"\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n'
gen_ca ca "example CA"
gen_cert server ca "$server_info"
# qemu prints the certificate's DN in its order: CN first, as the example's identity.
gen_cert laptop ca "$(printf "$client_info" "C=GB,ST=London,L=London,O=Example Org,CN=laptop.example.com")"
gen_cert other ca "$(printf "$client_info" "C=GB,ST=London,L=London,O=Example Org,CN=other.example.com")"
mkdir -p qemutls laptop other
cp ca-cert.pem server-cert.pem server-key.pem qemutls/
for who in laptop other; do
    cp ca-cert.pem "$who/ca-cert.pem"
    cp "$who-cert.pem" "$who/client-cert.pem"
    cp "$who-key.pem" "$who/client-key.pem"
done
head -c 2M file.raw | tail -c 1M > window.raw
for cmd in "${servers[@]}"; do
    "$cmd" \
        --object tls-creds-x509,id=tls0,endpoint=server,dir="$tmp/qemutls" \
        --object 'authz-simple,id=auth0,identity=CN=laptop.example.com,,O=Example Org,,L=London,,ST=London,,C=GB' \
        --tls-creds tls0 --tls-authz auth0 \
        -t -x subset -p 10810 \
        --image-opts driver=raw,offset=1M,size=1M,file.driver=file,file.filename=file.raw 2>ex2.err &
    pid=$!
    server_pids+=("$pid")
    wait_tcp 10810 "$pid"
    rm -f ex2.raw
    nbdcopy "nbds://localhost:10810/subset?tls-certificates=$tmp/laptop" ex2.raw
    cmp ex2.raw window.raw || fail "example 2 ($cmd): the window differs"
    nbdinfo --size "nbds://localhost:10810/subset?tls-certificates=$tmp/other" >/dev/null 2>&1 &&
        fail "example 2 ($cmd): a certificate the authz object does not list was served"
    nbdinfo --size "nbds://localhost:10810/?tls-certificates=$tmp/laptop" >/dev/null 2>&1 &&
        fail "example 2 ($cmd): the empty export name was served"
    nbdinfo --size "nbd://localhost:10810/subset" >/dev/null 2>&1 && fail "example 2 ($cmd): served without TLS"
    [ "$(nbdinfo --size "nbds://localhost:10810/subset?tls-certificates=$tmp/laptop")" = 1048576 ] ||
        fail "example 2 ($cmd): size"
    stop_server "$pid"
    echo "example 2 ($cmd): laptop read the 1M window; other certificate, other name, plain text refused"
done

# --- 3. A forked read-only server for 5 simultaneous readers on a Unix socket ----------------
for cmd in "${servers[@]}"; do
    rm -f "$tmp/sock"
    timeout 30 "$cmd" --fork --persistent --shared=5 --socket="$tmp/sock" \
        --read-only --format=qcow2 file.qcow2 || fail "example 3 ($cmd): exit status $?"
    [ -S "$tmp/sock" ] || fail "example 3 ($cmd): returned before listening"
    pid=$(pgrep -f -- "--socket=$tmp/sock") || fail "example 3 ($cmd): no server in the background"
    server_pids+=("$pid")
    nbdsh -c - <<EOF || fail "example 3 ($cmd): 5 readers"
import nbd
want = open("guest.raw", "rb").read()
handles = []
for i in range(5):
    h = nbd.NBD()
    h.connect_unix("$tmp/sock")
    handles.append(h)
# All five are connected at once; each reads its part.
part = len(want) // 5
for i, h in enumerate(handles):
    assert h.pread(part, i * part) == want[i * part:(i + 1) * part], "reader %d" % i
    assert h.is_read_only(), "writable"
try:
    handles[0].pwrite(b"x" * 512, 0)
    raise AssertionError("a write was accepted")
except nbd.Error:
    pass
for h in handles:
    h.shutdown()
EOF
    rm -f ex3.raw
    nbdcopy "nbd+unix:///?socket=$tmp/sock" ex3.raw
    cmp ex3.raw guest.raw || fail "example 3 ($cmd): nbdcopy"
    kill -0 "$pid" || fail "example 3 ($cmd): the persistent server left with its clients"
    kill "$pid"
    wait_exit "$pid" "example 3 ($cmd), sent SIGTERM,"
    echo "example 3 ($cmd): forked, 5 simultaneous readers and nbdcopy, read-only, persistent"
done

# --- 4. /dev/nbd0 ---------------------------------------------------------------------------
if [ ! -e /dev/nbd0 ]; then
    for args in "-c /dev/nbd0 -f qcow2 file.qcow2" "-d /dev/nbd0"; do
        # shellcheck disable=SC2086
        for cmd in "${servers[@]}"; do
            status=0
            timeout 30 "$cmd" $args >"ex4.out" 2>"ex4.err" </dev/null || status=$?
            echo "$status $(sed "s|^[^:]*: ||" ex4.err) $(cat ex4.out)" > "ex4.$(basename "$cmd")"
        done
        diff ex4.qemu-nbd ex4.nbdforge-img || fail "example 4: $args: not what qemu-nbd did"
        echo "example 4 (no nbd module): $args: as qemu-nbd: $(cat ex4.qemu-nbd)"
    done
    [ ! -e /var/lock/qemu-nbd-nbd0 ] || fail "example 4: /var/lock/qemu-nbd-nbd0 was left behind"
else
    # With the module loaded (not run where this test was written).
    "$NBDFORGE_IMG" -c /dev/nbd0 -f qcow2 file.qcow2 || fail "example 4: -c: exit status $?"
    cmp -n 4194304 /dev/nbd0 guest.raw || fail "example 4: /dev/nbd0 is not the guest view"
    "$NBDFORGE_IMG" -d /dev/nbd0 | grep -qx "/dev/nbd0 disconnected" || fail "example 4: -d"
    echo "example 4: /dev/nbd0 read the guest view, then was disconnected"
fi

# --- 5. Listing a TLS-PSK server's exports on remote.example.com -----------------------------
mkdir -m 0700 keys
psktool -u eblake -p keys/keys.psk >/dev/null
for server in "${servers[@]}"; do
    "$server" -t --object tls-creds-psk,id=tls0,dir="$tmp/keys",endpoint=server --tls-creds tls0 \
        -x disk -D "an example" -f qcow2 file.qcow2 2>ex5.err &
    pid=$!
    server_pids+=("$pid")
    wait_tcp 10809 "$pid"
    for cmd in "${servers[@]}"; do
        "$cmd" \
            --object tls-creds-psk,id=tls0,dir="$tmp/keys",username=eblake,endpoint=client \
            --tls-creds tls0 -L -b remote.example.com > "ex5.$(basename "$cmd")" ||
            fail "example 5: $cmd -L of $server: exit status $?"
    done
    diff ex5.qemu-nbd ex5.nbdforge-img || fail "example 5: the listing of $server differs from qemu-nbd's"
    grep -q "export: 'disk'" ex5.nbdforge-img || fail "example 5: $(cat ex5.nbdforge-img)"
    stop_server "$pid"
    echo "example 5 ($(basename "$server") serving): -L lists as qemu-nbd does: $(grep -c . ex5.qemu-nbd) lines"
done
