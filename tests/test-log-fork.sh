#!/usr/bin/env bash
# A server going into the background (no -f) logs Ready, then Fork once it has forked, and its
# requests as any other; in the foreground there is no Fork line. A relative logfile= is the
# file in the directory the server was started from. Passes against nbdkit 1.32 too.
source "$(dirname "$0")/lib/functions.sh"

sock="$tmp/bg.sock"
mkdir "$tmp/here"
(cd "$tmp/here" && "${server_cmd[@]}" -U "$sock" -P "$tmp/bg.pid" --filter=log memory 1M logfile=rel.log \
    </dev/null >"$tmp/bg.out" 2>&1) || fail "background start failed: $(cat "$tmp/bg.out")"
pid=$(cat "$tmp/bg.pid")
server_pids+=("$pid")
nbdsh -u "nbd+unix:///?socket=$sock" -c 'h.pwrite(b"f" * 1024, 2048); assert h.pread(1024, 2048) == b"f" * 1024'
log="$tmp/here/rel.log"
[ -f "$log" ] || fail "no log file in the start directory"
for _ in $(seq 50); do grep -q ' \.\.\.Read id=2 ' "$log" && break; sleep 0.1; done
cat "$log"
sed -n 1p "$log" | grep -Eq ' Ready thread_model=3$' || fail "first line is not Ready"
sed -n 2p "$log" | grep -Eq '^[0-9-]{10} [0-9:.]{15} Fork$' || fail "second line is not Fork"
[ "$(grep -c ' Fork$' "$log")" -eq 1 ] || fail "Fork logged more than once"
grep -Eq 'connection=[0-9]+ \.\.\.Write id=1 return=0$' "$log" || fail "the background server's write"
kill "$pid"

start_server --filter=log memory 1M logfile="$tmp/fg.log"
nbdsh -u "$uri" -c 'h.flush()'
stop_server "$server_pid"
! grep -q ' Fork$' "$tmp/fg.log" || fail "Fork logged in the foreground"
grep -q 'Flush id=1 \.\.\.$' "$tmp/fg.log" || fail "no Flush line"
echo OK
