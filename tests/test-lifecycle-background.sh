#!/usr/bin/env bash
# Without -f the server goes into the background, and the command returns only once the server
# accepts connections: a client run right after it connects at the first try, and the pid file
# (written before the command returns, replacing an old one) names the server, which runs in a
# session of its own with stdin/stdout/stderr on /dev/null.  If the server cannot start, the
# command exits 1 with the reason on stderr and leaves no socket and no pid file behind.
# SIGTERM stops the background server with its socket removed.
source "$(dirname "$0")/lib/functions.sh"

# gone PID: the process has exited (a zombie counts: nothing may reap it in a container).
gone() {
    [ ! -e "/proc/$1/stat" ] || [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" = Z ]
}
# wait_gone PID: up to 30 s.
wait_gone() {
    local i
    for ((i = 0; i < 300; i++)); do gone "$1" && return 0; sleep 0.1; done
    fail "process $1 still running"
}

for round in 1 2 3; do
    sock="$tmp/bg$round.sock"
    pidfile="$tmp/bg$round.pid"
    echo "stale junk" > "$pidfile"
    status=0
    "${server_cmd[@]}" -U "$sock" -P "$pidfile" memory 1M </dev/null >"$tmp/bg.out" 2>"$tmp/bg.err" ||
        status=$?
    [ "$status" -eq 0 ] || fail "background start exited $status: $(cat "$tmp/bg.err")"
    # No waiting: the socket must work as soon as the command has returned.
    [ "$(nbdinfo --size "nbd+unix:///?socket=$sock")" -eq 1048576 ] || fail "round $round: no server"
    pid=$(cat "$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || fail "pid file holds '$pid'"
    server_pids+=("$pid")
    grep -q nbdforge "/proc/$pid/cmdline" 2>/dev/null ||
        grep -q "$(basename "${server_cmd[0]}")" "/proc/$pid/cmdline" || fail "pid $pid is not the server"
    [ ! -s "$tmp/bg.out" ] || fail "the background start printed: $(cat "$tmp/bg.out")"
done

# The server is detached: its own session, standard descriptors on /dev/null.
sid=$(awk '{print $6}' "/proc/$pid/stat")
[ "$sid" -eq "$pid" ] || fail "server $pid is in session $sid, not its own"
for fd in 0 1 2; do
    [ "$(readlink "/proc/$pid/fd/$fd")" = /dev/null ] || fail "fd $fd of the server is $(readlink "/proc/$pid/fd/$fd")"
done

# SIGTERM: exits, socket removed.
kill -TERM "$pid"
wait_gone "$pid"
[ ! -e "$sock" ] || fail "socket left behind after SIGTERM"

# --print-uri with -p 0: the URI, with the port the kernel chose, is on stdout when the command
# returns, and it works.
uri=$("${server_cmd[@]}" -i 127.0.0.1 -p 0 --print-uri -P "$tmp/tcp.pid" memory 2M </dev/null)
server_pids+=("$(cat "$tmp/tcp.pid")")
echo "printed: $uri"
[[ $uri =~ ^nbd://127\.0\.0\.1:[0-9]+$ ]] || fail "--print-uri printed '$uri'"
[ "${uri##*:}" -ne 0 ] || fail "--print-uri reported port 0"
[ "$(nbdinfo --size "$uri")" -eq 2097152 ] || fail "printed URI does not work"
kill -TERM "$(cat "$tmp/tcp.pid")"
wait_gone "$(cat "$tmp/tcp.pid")"

# Failures before the server is ready: exit 1, the reason on stderr, nothing left behind.
start_fails() {
    local status=0
    "${server_cmd[@]}" "$@" </dev/null >"$tmp/fail.out" 2>"$tmp/fail.err" || status=$?
    echo "$*: exit $status: $(cat "$tmp/fail.err")"
    [ "$status" -eq 1 ] || fail "$*: exit status $status, want 1"
    [ -s "$tmp/fail.err" ] || fail "$*: no message"
}
start_fails -U "$tmp/bad.sock" -P "$tmp/bad.pid" memory 12Q
grep -q '12Q' "$tmp/fail.err" || fail "message does not name the bad value"
[ ! -e "$tmp/bad.sock" ] || fail "socket created by a failed start"
[ ! -e "$tmp/bad.pid" ] || fail "pid file written by a failed start"
start_fails -U "$tmp/no-such-dir/s.sock" memory 1M
grep -q 'no-such-dir' "$tmp/fail.err" || fail "bind error does not name the path"
echo OK
