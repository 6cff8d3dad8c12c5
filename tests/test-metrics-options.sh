#!/usr/bin/env bash
# --metrics=ADDR:PORT: the accepted forms serve the page (IPv4, IPv6 in brackets, a host name,
# a port alone), and a bad address, a missing port, a port out of range or a port already in use
# stop the server with exit 1 before it listens, naming --metrics and the value.
source "$(dirname "$0")/lib/functions.sh"

scrape() {   # scrape URL: the page must come back and carry the connection counter
    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
        "$1" > "$tmp/page" || fail "no page at $1"
    grep -q '^nbdforge_connections_total ' "$tmp/page" || fail "$1: no nbdforge_connections_total"
}

# Each form, and the addresses it must answer on ("4": 127.0.0.1, "6": ::1).
for case in "127.0.0.1:PORT 4" "[::1]:PORT 6" ":PORT 4 6" "PORT 4 6" "localhost:PORT"; do
    read -r spec families <<< "$case"
    port=$(free_tcp_port)
    start_server "--metrics=${spec/PORT/$port}" memory 1M
    for f in $families; do
        if [ "$f" = 4 ]; then scrape "http://127.0.0.1:$port/metrics"; else scrape "http://[::1]:$port/metrics"; fi
    done
    # localhost is whichever loopback address it resolves to first.
    [ -n "$families" ] || scrape "http://localhost:$port/metrics"
    stop_server "$server_pid"
    echo "--metrics=$spec: served"
done

bad_args --metrics=127.0.0.1 memory 1M -- "--metrics=127.0.0.1:" "ADDR:PORT"
bad_args --metrics=127.0.0.1:99999 memory 1M -- "--metrics=127.0.0.1:99999:" "0 to 65535"
bad_args --metrics=70000 memory 1M -- "--metrics=70000:" "0 to 65535"
bad_args --metrics=no-such-host.invalid:9100 memory 1M -- "--metrics=no-such-host.invalid:9100:"
bad_args --metrics=192.0.2.1:9100 memory 1M -- "--metrics=192.0.2.1:9100:" "address"

# A port in use: held by a listener of our own for the length of the check.
port=$(free_tcp_port)
python3 -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); print("held", flush=True); time.sleep(30)' "$port" > "$tmp/held" &
holder=$!
for _ in $(seq 100); do grep -q held "$tmp/held" && break; sleep 0.1; done
bad_args "--metrics=127.0.0.1:$port" memory 1M -- "--metrics=127.0.0.1:$port:" "in use"
kill "$holder"
echo OK
