#!/usr/bin/env bash
# The tally example filter, and through it the SDK's connection hooks:
# - reads and writes pass through unchanged (nbdcopy round trip over memory), and at the end of
#   each connection the filter logs its counts with debug!, prefixed with its name (-v);
# - tally-max-clients=1: while one client is connected, preconnect refuses a second (the client
#   sees the connection fail before any export), and serves it again once the first leaves;
# - a bad parameter value names the parameter and the value;
# - the connection context knows a Unix client's pid and uid (logged at accept with -v).
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/in.img" 4M
start_server -v --filter=tally memory 4M
nbdcopy "$tmp/in.img" "$uri"
nbdcopy "$uri" "$tmp/out.img"
same_file "$tmp/in.img" "$tmp/out.img"
nbdsh -u "$uri" -c 'assert h.pread(4, 0) == open("'"$tmp"'/in.img", "rb").read(4)'
stop_server "$server_pid"
grep -Eq 'tally: connection [0-9]+: [0-9]+ reads \([0-9]+ bytes\), [1-9][0-9]* writes \(4194304 bytes\)' "$server_log" ||
    fail "no per-connection count for the writing connection in the log"
grep -q 'tally: connection [0-9]*: 1 reads (4 bytes), 0 writes (0 bytes)' "$server_log" ||
    fail "no count for the nbdsh connection"
grep -Eq 'tally: all connections: .* writes \(4194304 bytes\)' "$server_log" || fail "no totals at exit"
# The connection context carries the Unix socket peer's credentials (SO_PEERCRED).
grep -Eq "accepted unix:pid=[0-9]+,uid=$(id -u)" "$server_log" || fail "no peer credentials for Unix clients"

start_server --filter=tally memory 1M tally-max-clients=1
mkfifo "$tmp/hold"
nbdsh -u "$uri" -c 'h.pread(1, 0); open("'"$tmp"'/in-use", "w").close(); open("'"$tmp"'/hold").read()' &
holder=$!
for _ in $(seq 100); do [ -e "$tmp/in-use" ] && break; sleep 0.1; done
[ -e "$tmp/in-use" ] || fail "the first client did not connect"
expect_fail nbdinfo --size "$uri"
echo > "$tmp/hold"
wait "$holder"
[ "$(nbdinfo --size "$uri")" -eq 1048576 ] || fail "not served again after the first client left"

expect_fail "${server_cmd[@]}" --filter=tally memory 1M tally-max-clients=lots 2>"$tmp/err"
grep -q "tally: tally-max-clients=lots: could not parse number" "$tmp/err" || fail "error: $(cat "$tmp/err")"
echo OK
