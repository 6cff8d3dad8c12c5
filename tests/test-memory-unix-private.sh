#!/usr/bin/env bash
# -U -: the server makes a private Unix socket in a new temporary directory, serves on it, and
# removes the directory when it exits.  The socket's path is found through /proc.
source "$(dirname "$0")/lib/functions.sh"

"${server_cmd[@]}" -f -U - memory 1M </dev/null >"$tmp/server.log" 2>&1 &
pid=$!
server_pids+=("$pid")
server_logs+=("$tmp/server.log")

path=
for ((i = 0; i < 300; i++)); do
    path=$(unix_socket_paths "$pid" | head -n1)
    [ -n "$path" ] && break
    kill -0 "$pid" 2>/dev/null || fail "server exited"
    sleep 0.1
done
[ -n "$path" ] || fail "no private socket found for pid $pid"
wait_for_socket "$path" "$pid"
echo "private socket: $path"
dir=$(dirname "$path")
[ "$dir" != "/tmp" ] && [ "$dir" != "${TMPDIR:-/tmp}" ] || fail "socket not in a private directory"
[ "$(stat -c %a "$dir")" = 700 ] || fail "private directory $dir is not mode 700"

[ "$(nbdinfo --size "nbd+unix:///?socket=$path")" -eq 1048576 ] || fail "wrong size"

stop_server "$pid" TERM
[ "$stop_status" -eq 0 ] || fail "exit status $stop_status after SIGTERM"
[ ! -e "$dir" ] || fail "private directory $dir left behind"
echo OK
