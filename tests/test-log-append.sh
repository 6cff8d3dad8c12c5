#!/usr/bin/env bash
# logappend: by default the log file is truncated when the server starts; with logappend=true
# the new entries follow what the file held. The file is created if missing, and lines reach it
# while the server runs (a client's requests can be read before the server stops).
# Clients: qemu-io. Passes against nbdkit 1.32 too.
source "$(dirname "$0")/lib/functions.sh"

log="$tmp/disk.log"
echo "old line" > "$log"
start_server --filter=log memory 1M logfile="$log"
qemu-io -f raw "$uri" -c 'write -P 0x11 0 4k' -c 'read -P 0x11 0 4k' >/dev/null
# Before the server stops: the client's lines are there within moments.
for _ in $(seq 50); do grep -Eq 'connection=[0-9]+ \.\.\.Read id=[0-9]+ return=0$' "$log" && break; sleep 0.1; done
grep -Eq 'connection=[0-9]+ \.\.\.Read id=[0-9]+ return=0$' "$log" || fail "the read is not in the log 5 s later"
stop_server "$server_pid"
! grep -q "old line" "$log" || fail "the log was not truncated"
head -n1 "$log" | grep -Eq '^[0-9-]{10} [0-9:.]{15} Ready thread_model=3$' || fail "first line: $(head -n1 "$log")"
lines1=$(wc -l < "$log")

start_server --filter=log memory 1M logfile="$log" logappend=true
qemu-io -f raw "$uri" -c 'write -P 0x22 4k 4k' >/dev/null
stop_server "$server_pid"
head -n "$lines1" "$log" > "$tmp/first"
diff <(head -n "$lines1" "$log") "$tmp/first" >/dev/null || fail "appending changed the old entries"
[ "$(grep -c ' Ready thread_model=' "$log")" -eq 2 ] || fail "expected two Ready lines"
grep -q 'Write id=[0-9]* offset=0x1000 count=0x1000' "$log" || fail "the second run's write is missing"

rm -f "$log"
start_server --filter=log memory 1M logfile="$log" logappend=yes
stop_server "$server_pid"
[ "$(grep -c ' Ready thread_model=' "$log")" -eq 1 ] || fail "a new file with logappend: $(cat "$log")"
head -n1 "$log" | grep -q ' Ready thread_model=' || fail "a new file with logappend: $(cat "$log")"
echo OK
