#!/usr/bin/env bash
# The ssh plugin when the remote fails: sshd killed (with its sessions) under a connected client
# fails reads, writes and flushes with EIO and a message naming the remote file; the server stays
# up, refuses new clients while sshd is down (naming the remote) and serves them again once it is
# back; a missing remote file is refused at open; with --filter=retry in front, a read and a
# write issued while sshd is down succeed once it returns.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/sshd.sh"
start_sshd
export tmp
random_file "$tmp/disk.img" 2M
remote="sftp://$ssh_user@127.0.0.1:$ssh_port$tmp/disk.img"

# client.py MODE: connects to $uri, reads, kills sshd and its sessions ($sshd_pid), writes
# $tmp/killed, then either expects EIO (MODE=fail) or success (MODE=retry) from what follows.
cat > "$tmp/client.py" <<'PY'
import errno, os, signal, subprocess, sys
import nbd

def kill_tree(pid):
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        kill_tree(int(child))
    os.kill(pid, signal.SIGKILL)

tmp, mode = os.environ["tmp"], sys.argv[1]
want = bytearray(open(tmp + "/disk.img", "rb").read())
h = nbd.NBD()
h.connect_uri(os.environ["uri"])
assert h.pread(4096, 0) == want[:4096]
kill_tree(int(os.environ["sshd_pid"]))
open(tmp + "/killed", "w").close()
if mode == "fail":
    for what, call in [("read", lambda: h.pread(4096, 8192)), ("write", lambda: h.pwrite(b"x" * 512, 0)),
                       ("flush", lambda: h.flush())]:
        try:
            call()
            sys.exit(what + " succeeded with sshd dead")
        except nbd.Error as e:
            assert e.errno in (errno.EIO, "EIO"), (what, e.errno, e.string)
            print(what, "failed with EIO:", e.string)
else:
    assert h.pread(65536, 1 << 20) == want[1 << 20:(1 << 20) + 65536], "read after the reopen"
    h.pwrite(b"written after sshd came back", 4096)
    h.flush()
    print("read and write succeeded after the retry filter reopened")
h.shutdown()
PY
export uri sshd_pid

# Without retry: EIO, and the server stays up.
start_server ssh "${ssh_args[@]}" "$tmp/disk.img"
export uri sshd_pid
timeout 25 python3 "$tmp/client.py" fail || fail "the client's requests with sshd killed"
wait "$sshd_pid" 2>/dev/null || :
grep -F "$remote" "$server_log" | grep -qi "read 4096 bytes at 8192" ||
    fail "the read's error does not name the remote: $(cat "$server_log")"
kill -0 "$server_pid" || fail "the server exited when sshd died"
expect_fail nbdinfo "$uri" 2>/dev/null
grep -F "$remote" "$server_log" | grep -q "cannot connect" ||
    fail "no 'cannot connect' naming the remote: $(cat "$server_log")"
start_sshd
nbdcopy "$uri" "$tmp/out.img"
same_file "$tmp/disk.img" "$tmp/out.img"
stop_server "$server_pid"
echo "server stayed up and serves again: $(grep -F "$remote" "$server_log" | head -2)"

# A missing remote file.
start_server ssh "${ssh_args[@]}" "$tmp/missing.img"
expect_fail nbdinfo "$uri" 2>/dev/null
stop_server "$server_pid"
grep -F "sftp://$ssh_user@127.0.0.1:$ssh_port$tmp/missing.img" "$server_log" | grep -q "cannot open the file" ||
    fail "missing file: $(cat "$server_log")"

# With --filter=retry: sshd comes back after a second and the requests succeed.
start_server --filter=retry ssh "${ssh_args[@]}" "$tmp/disk.img" retry-delay=0.5 retries=6
export uri sshd_pid
rm -f "$tmp/killed"
timeout 25 python3 "$tmp/client.py" retry > "$tmp/client.out" 2>&1 &
client=$!
for ((i = 0; i < 100; i++)); do [ -e "$tmp/killed" ] && break; sleep 0.1; done
[ -e "$tmp/killed" ] || fail "the client did not kill sshd: $(cat "$tmp/client.out")"
wait "$sshd_pid" 2>/dev/null || :
sleep 1
start_sshd
wait "$client" || fail "with --filter=retry: $(cat "$tmp/client.out")"
cat "$tmp/client.out"
stop_server "$server_pid"
[ "$(dd if="$tmp/disk.img" bs=1 skip=4096 count=28 status=none)" = "written after sshd came back" ] ||
    fail "the write after the reopen is not in the remote file"

# timeout=: a server that accepts and then says nothing fails the open within the timeout.
hung_port=$(free_tcp_port)
python3 -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(60)' "$hung_port" &
server_pids+=($!)
sleep 0.3
start_server ssh host=127.0.0.1 port="$hung_port" identity="$ssh_dir/user_key" verify-remote-host=false \
    timeout=1 "$tmp/disk.img"
start=$SECONDS
expect_fail timeout 20 nbdinfo "$uri" 2>/dev/null
[ $((SECONDS - start)) -le 10 ] || fail "timeout=1 took $((SECONDS - start)) s"
stop_server "$server_pid"
grep -F "127.0.0.1:$hung_port$tmp/disk.img" "$server_log" | grep -qi "handshake" ||
    fail "timeout: $(cat "$server_log")"
echo "hung server: $(head -1 "$server_log")"
