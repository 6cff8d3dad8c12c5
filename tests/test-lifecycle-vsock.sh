#!/usr/bin/env bash
# --vsock -p PORT: AF_VSOCK. What this machine allows: binding and listening on an AF_VSOCK port
# works (the vsock module is loaded), but nothing can connect to it locally (no loopback
# transport), so no client can be tested here. What is tested: the server listens (a second bind
# of the port fails), --print-uri prints nbd+vsock://1:PORT, SIGTERM exits 0 and frees the port,
# and a bad port names the option and the value.
source "$(dirname "$0")/lib/functions.sh"

if ! python3 -c 'import socket; socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)' 2>/dev/null; then
    # Without the module the error must say so, naming the option.
    status=0
    "${server_cmd[@]}" -f --vsock -p 10809 memory 1M </dev/null 2>"$tmp/err" || status=$?
    [ "$status" -eq 1 ] || fail "--vsock without AF_VSOCK: exit $status"
    grep -q -- --vsock "$tmp/err" || fail "message does not name --vsock: $(cat "$tmp/err")"
    echo OK
    exit 0
fi

port=$(python3 -c '
import socket
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))
print(s.getsockname()[1])')
"${server_cmd[@]}" -f --vsock -p "$port" --print-uri memory 1M </dev/null >"$tmp/out" 2>"$tmp/err" &
pid=$!
bound() {
    ! python3 -c '
import socket, sys
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.bind((socket.VMADDR_CID_ANY, int(sys.argv[1])))' "$1" 2>/dev/null
}
for _ in $(seq 100); do bound "$port" && break; sleep 0.1; done
bound "$port" || fail "--vsock -p $port: the port is not bound: $(cat "$tmp/err")"
for _ in $(seq 50); do [ -s "$tmp/out" ] && break; sleep 0.1; done
grep -qx "nbd+vsock://1:$port" "$tmp/out" || fail "--print-uri printed: $(cat "$tmp/out")"
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
[ "$status" -eq 0 ] || fail "exit status $status after SIGTERM: $(cat "$tmp/err")"
bound "$port" && fail "port $port still bound after exit"
# A bad vsock port names the option and the value.
status=0
"${server_cmd[@]}" -f --vsock -p notaport memory 1M </dev/null 2>"$tmp/err" || status=$?
[ "$status" -eq 1 ] && grep -q 'notaport' "$tmp/err" || fail "bad vsock port: $(cat "$tmp/err")"
echo OK
