#!/usr/bin/env bash
# TCP: -i 127.0.0.1 -p PORT listens on loopback only, on that port.  The port is one the kernel
# just handed out; if another test grabs it first, try again with another.
source "$(dirname "$0")/lib/functions.sh"

started=
for attempt in 1 2 3 4 5; do
    port=$(free_tcp_port)
    log="$tmp/server-tcp$attempt.log"
    "${server_cmd[@]}" -f -i 127.0.0.1 -p "$port" memory 1M </dev/null >"$log" 2>&1 &
    pid=$!
    server_pids+=("$pid")
    server_logs+=("$log")
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then break; fi
        if nbdinfo --size "nbd://127.0.0.1:$port" >/dev/null 2>&1; then started=1; break; fi
        sleep 0.1
    done
    [ -n "$started" ] && break
    kill "$pid" 2>/dev/null || :
done
[ -n "$started" ] || fail "server did not start on TCP"
uri="nbd://127.0.0.1:$port"

[ "$(nbdinfo --size "$uri")" -eq 1048576 ] || fail "wrong size over TCP"
qemu-io -f raw "$uri" -c 'write -P 0x7e 0 64k' -c 'read -P 0x7e 0 64k' > "$tmp/out" 2>&1
cat "$tmp/out"
grep -Eiq 'error|fail|verification' "$tmp/out" && fail "qemu-io over TCP"

# Listening on 127.0.0.1 only: /proc/net/tcp shows 0100007F:PORT in LISTEN state (0A), and
# nothing on the wildcard address for that port.
hexport=$(printf '%04X' "$port")
grep -q " 0100007F:$hexport 00000000:0000 0A " /proc/net/tcp || fail "not listening on 127.0.0.1:$port"
grep -q " 00000000:$hexport 00000000:0000 0A " /proc/net/tcp && fail "listening on 0.0.0.0:$port"
if [ -e /proc/net/tcp6 ]; then
    grep -q ":$hexport 00000000000000000000000000000000:0000 0A " /proc/net/tcp6 &&
        fail "listening on an IPv6 address for port $port"
fi

stop_server "$pid" TERM
[ "$stop_status" -eq 0 ] || fail "exit status $stop_status"
echo OK
