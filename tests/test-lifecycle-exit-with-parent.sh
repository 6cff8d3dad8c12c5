#!/usr/bin/env bash
# --exit-with-parent: the server stays in the foreground (it is the parent's child, not a
# daemon) and exits when its parent dies, even by SIGKILL; its socket is removed.  Also with -u,
# which makes the kernel forget the parent-death signal unless it is set again (the socket then
# stays: as nobody, the server may not delete files in the test's private directory).
source "$(dirname "$0")/lib/functions.sh"

gone() {
    [ ! -e "/proc/$1/stat" ] || [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" = Z ]
}

# run_case NAME [OPTIONS...]: a parent shell starts the server with OPTIONS, then is killed.
run_case() {
    local name=$1 sock="$tmp/$1.sock" pidfile="$tmp/$1.pid" parent pid i
    shift
    # The parent: starts the server in the background and sleeps; it never waits for it.
    bash -c '"$@" & echo $! > "'"$pidfile"'"; exec sleep 600' _ \
        "${server_cmd[@]}" --exit-with-parent -U "$sock" "$@" memory 1M \
        </dev/null >"$tmp/$name.log" 2>&1 &
    parent=$!
    server_logs+=("$tmp/$name.log")
    for ((i = 0; i < 100; i++)); do [ -s "$pidfile" ] && break; sleep 0.1; done
    pid=$(cat "$pidfile")
    server_pids+=("$pid")
    wait_for_socket "$sock" "$pid"
    [ "$(nbdinfo --size "nbd+unix:///?socket=$sock")" -eq 1048576 ] || fail "$name: not serving"
    # Still the parent's child: --exit-with-parent implies -f.
    [ "$(awk '{print $4}' "/proc/$pid/stat")" -eq "$parent" ] || fail "$name: server forked away"

    kill -KILL "$parent"
    wait "$parent" 2>/dev/null || :
    for ((i = 0; i < 100; i++)); do gone "$pid" && break; sleep 0.1; done
    gone "$pid" || fail "$name: server $pid still running after its parent was killed"
    [ "$name" != plain ] || [ ! -e "$sock" ] || fail "$name: socket left behind"
    echo "$name: OK"
}

run_case plain
if [ "$(id -u)" -eq 0 ]; then
    run_case dropped -u nobody
fi
echo OK
