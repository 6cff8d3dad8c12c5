#!/usr/bin/env bash
# logscript=SCRIPT runs the script once per log entry with the entry as shell variables: $act,
# $type (ENTER, LEAVE, PRINT), $connection for a connection's entries, $id, $return and $error
# on the way out, and every other field ($offset, $count, $fua, $export...). With logfile too,
# both get every entry. A failing request gives $return=-1 and $error=ENOSPC (a write past
# RLIMIT_FSIZE in the file plugin). Usually passes against nbdkit 1.32 too: it sometimes runs
# a request's two scripts in the wrong order or not at all.
source "$(dirname "$0")/lib/functions.sh"

truncate -s 4M "$tmp/disk.img"
trap '' XFSZ
ulimit -f 1024

out="$tmp/script.out"
start_server --filter=log file "$tmp/disk.img" logfile="$tmp/log" \
    logscript='echo "$type ${connection:--} ${id:--} $act ${offset:--} ${count:--} ${return:--} ${error:--} ${export--}" >> '"$out"
nbdsh -u "$uri" -c '
h.pwrite(b"s" * 512, 512)
assert h.pread(512, 512) == b"s" * 512
try:
    h.pwrite(b"x" * 512, 2 << 20)
except nbd.Error:
    pass
else:
    raise SystemExit("write past the limit succeeded")
'
stop_server "$server_pid"
# nbdkit 1.32 may return before its scripts finish: give them a moment to write.
for _ in $(seq 50); do [ "$(wc -l < "$out")" -ge 11 ] && break; sleep 0.1; done
cat "$out"

conn=$(sed -n 's/^.* connection=\([0-9]*\) Connect .*/\1/p' "$tmp/log" | tail -n1)
[ -n "$conn" ] || fail "no Connect in the log file"
expected="PRINT - - Ready - - - - -
ENTER - 1 Preconnect - - - - -
LEAVE - 1 Preconnect - - 0 - -
PRINT $conn - Connect - - - - 
ENTER $conn 1 Write 0x200 0x200 - - -
LEAVE $conn 1 Write - - 0 - -
ENTER $conn 2 Read 0x200 0x200 - - -
LEAVE $conn 2 Read - - 0 - -
ENTER $conn 3 Write 0x200000 0x200 - - -
LEAVE $conn 3 Write - - -1 ENOSPC -
PRINT $conn - Disconnect - - - - -"
# Connections other than the client's (a probe of the socket) may add Preconnect lines, so
# those are only looked for.
# Compared sorted: nbdkit 1.32 sometimes runs a request's two scripts in the wrong order.
grep -v "Preconnect" "$out" | sort > "$tmp/got"
grep -v "Preconnect" <<< "$expected" | sort > "$tmp/want"
diff -u "$tmp/want" "$tmp/got" || fail "script entries differ"
grep -qx "ENTER - 1 Preconnect - - - - -" "$out" || fail "no Preconnect entry"
grep -qx "LEAVE - 1 Preconnect - - 0 - -" "$out" || fail "no Preconnect reply"
# The log file got the same entries.
[ "$(grep -c ' \.\.\.Write id=3 return=-1 error=ENOSPC$' "$tmp/log")" -eq 1 ] || fail "log file: failed write"
[ "$(grep -Ec ' (Read|Write) id=[0-9]+ .* \.\.\.$' "$tmp/log")" -eq 3 ] || fail "log file: requests"
echo OK
