#!/usr/bin/env bash
# Where and when the summary is written: the stats file is created (or truncated) when the
# server starts and the summary is written once, when it exits (SIGTERM), also from a server in
# the background, where a relative statsfile= is the file in the directory it was started from;
# statsappend=true adds the new summary after what the file held; statsthreshold=0 leaves out
# the breakdowns. Clients: qemu-io. Passes against nbdkit 1.32 too.
source "$(dirname "$0")/lib/functions.sh"

f="$tmp/stats.txt"
echo "old summary" > "$f"
start_server --filter=stats memory 1M statsfile="$f"
[ ! -s "$f" ] || fail "the stats file was not truncated at start: $(cat "$f")"
qemu-io -f raw "$uri" -c 'write -P 0x33 0 64k' -c 'read -P 0x33 0 64k' >/dev/null
stop_server "$server_pid"
cat "$f"
grep -Eq '^total: [0-9]+ ops, [0-9]+\.[0-9]{6} s, ' "$f" || fail "no total line"
grep -Eq '^write: 1 ops, [0-9]+\.[0-9]{6} s, 64\.00 KiB, ' "$f" || fail "no write line"
grep -Eq '^read: 1 ops, [0-9]+\.[0-9]{6} s, 64\.00 KiB, ' "$f" || fail "no read line"
grep -q '^  Request size and alignment breakdown:$' "$f" || fail "no breakdown"
first=$(cat "$f")

start_server --filter=stats memory 1M statsfile="$f" statsappend=true statsthreshold=0
qemu-io -f raw "$uri" -c 'write 0 4k' -c 'write 4k 4k' >/dev/null
stop_server "$server_pid"
cat "$f"
[ "$(head -c ${#first} "$f")" = "$first" ] || fail "appending changed the first summary"
[ "$(grep -c '^total: ' "$f")" -eq 2 ] || fail "expected two summaries"
tail -n +"$(($(printf '%s\n' "$first" | wc -l) + 1))" "$f" > "$tmp/second"
grep -Eq '^write: 2 ops, ' "$tmp/second" || fail "second summary: writes"
! grep -q 'breakdown' "$tmp/second" || fail "statsthreshold=0 printed a breakdown"

# In the background, relative to where the server started; written when it is killed.
mkdir "$tmp/here"
(cd "$tmp/here" && "${server_cmd[@]}" -U "$tmp/bg.sock" -P "$tmp/bg.pid" --filter=stats memory 1M \
    statsfile=rel.txt </dev/null >"$tmp/bg.out" 2>&1) || fail "background start: $(cat "$tmp/bg.out")"
pid=$(cat "$tmp/bg.pid")
server_pids+=("$pid")
nbdsh -u "nbd+unix:///?socket=$tmp/bg.sock" -c 'h.trim(65536, 0); h.flush()'
kill "$pid"
for _ in $(seq 100); do [ -s "$tmp/here/rel.txt" ] && ! kill -0 "$pid" 2>/dev/null && break; sleep 0.1; done
cat "$tmp/here/rel.txt"
grep -Eq '^trim: 1 ops, [0-9.]+ s, 64\.00 KiB, ' "$tmp/here/rel.txt" || fail "background server's trim"
grep -Eq '^flush: 1 ops, [0-9.]+ s, 0 bytes, ' "$tmp/here/rel.txt" || fail "background server's flush"
echo OK
