#!/usr/bin/env bash
# The server below going away: killed in the middle of a session, a request through the proxy
# fails with EIO and the proxy's log names the server below; the proxy stays up, refuses new
# clients while the server below is down, and serves them again once it is back (shared=true
# too: a new shared connection is made). With
# --filter=retry in front, a client whose server below is killed and restarted during a
# request sees the request succeed (retry reopens the plugin, which reconnects).
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/disk" 4M
below_sock="$tmp/below.sock"
start_below() {
    rm -f "$below_sock"
    "${server_cmd[@]}" -f -U "$below_sock" file "$tmp/disk" </dev/null >>"$tmp/below.log" 2>&1 &
    below_pid=$!
    server_pids+=("$below_pid")
    wait_for_socket "$below_sock" "$below_pid"
}

start_below
start_server nbd socket="$below_sock"
proxy_pid=$server_pid proxy_log=$server_log
export below_pid
nbdsh -u "$uri" -c '
import os, signal, time
h.pwrite(b"\x42" * 4096, 0)
os.kill(int(os.environ["below_pid"]), signal.SIGKILL)
time.sleep(0.3)
for what, call in (("read", lambda: h.pread(4096, 0)), ("write", lambda: h.pwrite(b"x" * 512, 0)),
                   ("flush", h.flush)):
    try:
        call()
        raise SystemExit("%s succeeded with the server below killed" % what)
    except nbd.Error as e:
        assert e.errno == "EIO", "%s: %s" % (what, e)
        print(what, "->", e.string)
'
kill -0 "$proxy_pid" || fail "the proxy died with the server below"
grep -q "nbd: socket $below_sock: the server closed the connection" "$proxy_log" ||
    fail "the proxy's log does not name the server below: $(cat "$proxy_log")"
expect_fail nbdinfo --size "$uri" 2>/dev/null
grep -q "nbd: socket $below_sock: connecting" "$proxy_log" || fail "no log of the refused connection"
start_below
[ "$(nbdinfo --size "$uri")" = $((4 << 20)) ] || fail "the proxy does not serve again"
cmp <(nbdcopy "$uri" -) "$tmp/disk" || fail "data differs after the server below came back"

# shared=true: the clients holding the broken shared connection get EIO; the next client (the
# server below being back) gets a new shared connection.
start_server nbd socket="$below_sock" shared=true
nbdsh -u "$uri" -c '
import os, signal, subprocess, time
h.pread(512, 0)
os.kill(int(os.environ["below_pid"]), signal.SIGKILL)
time.sleep(0.3)
try:
    h.pread(512, 0)
    raise SystemExit("a read on the broken shared connection succeeded")
except nbd.Error as e:
    assert e.errno == "EIO", e
'
start_below
cmp <(nbdcopy "$uri" -) "$tmp/disk" || fail "shared=true: no new connection after the server came back"

# With the retry filter: kill the server below, bring it back 1.5 s later, and the read issued
# in between succeeds.
start_server --filter=retry nbd socket="$below_sock" retries=6 retry-delay=0.5 retry-exponential=no
export below_sock NBDFORGE tmp
nbdsh -u "$uri" -c '
import os, signal, subprocess, time
expected = open(os.environ["tmp"] + "/disk", "rb").read(65536)
assert h.pread(65536, 0) == expected
os.kill(int(os.environ["below_pid"]), signal.SIGKILL)
time.sleep(0.2)
os.unlink(os.environ["below_sock"])
restart = subprocess.Popen(["sh", "-c", "sleep 1.5; exec $NBDFORGE -f -U $below_sock file $tmp/disk"])
open(os.environ["tmp"] + "/restart.pid", "w").write(str(restart.pid))
start = time.monotonic()
assert h.pread(65536, 0) == expected, "wrong data after the retry"
print("read succeeded after %.1f s" % (time.monotonic() - start))
h.pwrite(b"\x77" * 512, 8192)
'
server_pids+=("$(cat "$tmp/restart.pid")")
cmp -n 512 -i 8192:0 "$tmp/disk" <(head -c 512 /dev/zero | tr '\0' '\167') || fail "the write after the retry is not in the file"
echo OK
