#!/usr/bin/env bash
# The count filter: with -v the server logs, when it exits, the bytes read, written, zeroed and
# trimmed by all its clients together (nbdcopy in, nbdsh for the rest); a failing request (a
# write past the end is refused before it reaches the filter) adds nothing.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/in.img" 1M
start_server -v --filter=count memory 1M
nbdcopy "$tmp/in.img" "$uri"
nbdsh -u "$uri" -c '
h.pread(4096, 0)
h.pread(512, 8192)
h.zero(65536, 0)
h.trim(131072, 131072)
'
stop_server "$server_pid"
[ "$stop_status" -eq 0 ] || fail "exit status $stop_status"
grep -q 'count: count bytes: read 4608, written 1048576, zeroed 65536, trimmed 131072' "$server_log" ||
    fail "no totals, or wrong ones: $(grep 'count bytes' "$server_log" || echo none)"
echo OK
