#!/usr/bin/env bash
# --vsock [-p PORT]: AF_VSOCK.  What this machine allows: binding and listening on an AF_VSOCK
# port works (the vsock module is loaded), but nothing can connect to it locally (no loopback
# transport), so a client test is impossible here; a bound port is seen by another bind failing.
#
# The server has no AF_VSOCK listener yet (nbdforge_server::Listener is TCP or Unix), so today
# --vsock must fail with a clear "not supported yet" before anything listens, and leave the
# port free.  When Listener::Vsock exists, this test changes to: the server starts, the port is
# taken, --print-uri prints nbd+vsock://1:PORT, SIGTERM exits 0.
source "$(dirname "$0")/lib/functions.sh"

if ! python3 -c 'import socket; socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)' 2>/dev/null; then
    # Without the module the error must say so as well.
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
status=0
timeout 20 "${server_cmd[@]}" -f --vsock -p "$port" --print-uri memory 1M </dev/null \
    >"$tmp/out" 2>"$tmp/err" || status=$?
echo "exit $status: $(cat "$tmp/err")"
[ "$status" -eq 1 ] || fail "--vsock: exit $status (want 1 until the server can serve vsock)"
grep -q -- '--vsock' "$tmp/err" && grep -q 'not supported yet' "$tmp/err" ||
    fail "--vsock: unclear message: $(cat "$tmp/err")"
[ ! -s "$tmp/out" ] || fail "--vsock printed a URI although it is not serving"
python3 -c '
import socket, sys
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.bind((socket.VMADDR_CID_ANY, int(sys.argv[1])))' "$port" || fail "port $port left bound"
# A bad vsock port names the option and the value.
status=0
"${server_cmd[@]}" -f --vsock -p notaport memory 1M </dev/null 2>"$tmp/err" || status=$?
[ "$status" -eq 1 ] && grep -q 'notaport' "$tmp/err" || fail "bad vsock port: $(cat "$tmp/err")"
echo OK
