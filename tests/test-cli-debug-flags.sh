#!/usr/bin/env bash
# -D NAME.FLAG=N: debug flags that plugins declare. file.zero=1 makes the file plugin log (at
# debug level, -v) how it carried out each zero request; without the flag it says nothing of it.
# A flag the plugin does not have is warned about; one for a plugin not loaded is ignored.
source "$(dirname "$0")/lib/functions.sh"

disk="$tmp/disk.img"
truncate -s 1M "$disk"

start_server -v -D file.zero=1 -D memory.anything=1 file "$disk"
nbdsh -u "$uri" -c 'h.zero(65536, 0)'
stop_server "$server_pid"
log=$(cat "$server_log")
grep -q "zero 65536 bytes at 0 by" <<<"$log" || fail "-D file.zero=1: no zero message in: $log"

start_server -v -D file.nosuch=2 file "$disk"
nbdsh -u "$uri" -c 'h.zero(65536, 0)'
stop_server "$server_pid"
log=$(cat "$server_log")
grep -q "file has no debug flag called nosuch" <<<"$log" || fail "unknown flag not warned about: $log"
grep -q "zero 65536 bytes" <<<"$log" && fail "zero logged without -D file.zero=1"
echo OK
