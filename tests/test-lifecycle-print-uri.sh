#!/usr/bin/env bash
# --print-uri prints the NBD URI of the server on stdout once it listens: with -p 0 the port the
# kernel chose, with -U the socket, with -e the export name; the URI works.  A foreground server
# prints it before serving, so a script can read the first line and connect.
source "$(dirname "$0")/lib/functions.sh"

# first_line CMD...: starts CMD in the background with stdout to a file; waits for one line.
first_line() {
    local out="$tmp/out$RANDOM"
    "$@" </dev/null >"$out" 2>>"$tmp/err" &
    server_pids+=("$!")
    last_pid=$!
    for ((i = 0; i < 300; i++)); do
        [ -s "$out" ] && [ "$(tail -c1 "$out" | od -An -c | tr -d ' ')" = '\n' ] && break
        sleep 0.1
    done
    line=$(head -n1 "$out")
}

first_line "${server_cmd[@]}" -f -i 127.0.0.1 -p 0 --print-uri memory 1M
[[ $line =~ ^nbd://127\.0\.0\.1:([0-9]+)$ ]] || fail "-p 0: printed '$line'"
[ "${BASH_REMATCH[1]}" -ne 0 ] || fail "-p 0: port 0 printed"
[ "$(nbdinfo --size "$line")" -eq 1048576 ] || fail "printed TCP URI does not work"
stop_server "$last_pid"

first_line "${server_cmd[@]}" -f -U "$tmp/s.sock" -e 'disk one' --print-uri memory 2M
[ "$line" = "nbd+unix:///disk%20one?socket=$tmp/s.sock" ] || fail "-U -e: printed '$line'"
[ "$(nbdinfo --size "$line")" -eq 2097152 ] || fail "printed Unix URI does not work"
stop_server "$last_pid"

first_line "${server_cmd[@]}" -f -U - --print-uri memory 3M
[[ $line == nbd+unix:///\?socket=/* ]] || fail "-U -: printed '$line'"
[ "$(nbdinfo --size "$line")" -eq 3145728 ] || fail "printed private-socket URI does not work"
stop_server "$last_pid"
echo OK
