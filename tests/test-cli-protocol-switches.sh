#!/usr/bin/env bash
# Switches that change what the handshake offers, as nbdkit has them: --no-sr (no structured
# replies, so no meta contexts or extended headers either), --no-meta-contexts, --mask-handshake
# (fewer global handshake flags, for testing old clients) and --keepalive (SO_KEEPALIVE on TCP).
source "$(dirname "$0")/lib/functions.sh"

start_server --no-sr memory 1M
nbdsh --base-allocation -u "$uri" -c '
assert not h.get_structured_replies_negotiated(), "structured replies with --no-sr"
assert not h.can_meta_context("base:allocation")
h.pwrite(b"x" * 512, 0)
assert h.pread(512, 0) == b"x" * 512
' || fail "--no-sr"

start_server --no-meta-contexts memory 1M
nbdsh --base-allocation -u "$uri" -c '
assert h.get_structured_replies_negotiated()
assert not h.can_meta_context("base:allocation"), "base:allocation with --no-meta-contexts"
' || fail "--no-meta-contexts"

# Without NBD_FLAG_FIXED_NEWSTYLE the client falls back to plain newstyle; without NO_ZEROES the
# server sends the 124 zero bytes. Both still serve data.
for mask in 0 1 2; do
    start_server --mask-handshake=$mask memory 1M
    out=$(nbdinfo "$uri")
    case $mask in
        0|2) grep -q "protocol: newstyle without" <<<"$out" || fail "--mask-handshake=$mask: $out" ;;
        1) grep -q "protocol: newstyle-fixed" <<<"$out" || fail "--mask-handshake=$mask: $out" ;;
    esac
    nbdsh -u "$uri" -c 'h.pwrite(b"y" * 512, 512); assert h.pread(512, 512) == b"y" * 512' ||
        fail "--mask-handshake=$mask: data"
done

# --keepalive: the server's end of a TCP connection has the keepalive timer running.
"${server_cmd[@]}" -f -i 127.0.0.1 -p 0 --print-uri --keepalive memory 1M >"$tmp/uri" 2>"$tmp/err" &
pid=$!
server_pids+=("$pid")
for _ in $(seq 100); do [ -s "$tmp/uri" ] && break; sleep 0.1; done
tcp_uri=$(head -1 "$tmp/uri")
port=${tcp_uri##*:}; port=${port%%/*}
nbdsh -u "$tcp_uri" -c "
import subprocess, time
# ss shows the keepalive timer once no other timer (retransmission) runs: let the line go idle.
for _ in range(30):
    out = subprocess.run(['ss', '-tno', 'state', 'established', '( sport = :$port )'],
                         capture_output=True, text=True).stdout
    if 'keepalive' in out:
        break
    time.sleep(0.1)
assert 'keepalive' in out, out
" || fail "--keepalive: no keepalive timer on port $port"
echo OK
