#!/usr/bin/env bash
# nbdforge-img's serving options, each beside qemu-nbd where both can run:
# - -x and -D: the export's name and description as `nbdinfo --list` shows them; another name is
#   refused;
# - probing: a qcow2 image is found without -f; a probed raw image refuses a write that would
#   put a qcow2 header at its start (EPERM), and accepts it with -f raw;
# - -r refuses writes; -o past the end of the image is an error before listening; -b and -p;
# - --fork and --pid-file: the parent exits 0 once the server listens, the pid file names the
#   server; socket activation (LISTEN_PID/LISTEN_FDS) serves on the inherited socket.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"
qemu-img create -q -f raw disk.raw 1M
qemu-img create -q -f qcow2 disk.qcow2 2M

for start in start_img start_qemu_nbd; do
    "$start" -t -x foo -D "a test disk" disk.raw
    nbdinfo --list "$uri" > list.out
    grep -q 'export="foo":' list.out || fail "$start: -x: $(cat list.out)"
    grep -q 'description: a test disk' list.out || fail "$start: -D: $(cat list.out)"
    expect_fail nbdinfo --size "nbd+unix:///bar?socket=$sock" 2>/dev/null
    [ "$(nbdinfo --size "nbd+unix:///foo?socket=$sock")" = 1048576 ] || fail "$start: -x: size"
    # Probed raw: no qcow2 header may be written at offset 0.
    status=0
    nbdsh -u "nbd+unix:///foo?socket=$sock" -c 'h.pwrite(b"QFI\xfb\0\0\0\3" + bytes(504), 0)' 2>err.out || status=$?
    [ "$status" -ne 0 ] && grep -q 'Operation not permitted' err.out ||
        fail "$start: a probed raw image took a qcow2 header: $(cat err.out)"
    nbdsh -u "nbd+unix:///foo?socket=$sock" -c 'h.pwrite(b"RAW!" + bytes(508), 0)' ||
        fail "$start: a probed raw image refused an ordinary write"
    stop_server "$server_pid"

    "$start" -t -f raw disk.raw
    nbdsh -u "$uri" -c 'h.pwrite(b"QFI\xfb\0\0\0\3" + bytes(504), 0)' || fail "$start -f raw: the write was refused"
    stop_server "$server_pid"
    truncate -s 0 disk.raw && truncate -s 1M disk.raw

    "$start" -t disk.qcow2
    [ "$(nbdinfo --size "$uri")" = 2097152 ] || fail "$start: disk.qcow2 was not probed as qcow2"
    stop_server "$server_pid"

    "$start" -t -r -f qcow2 disk.qcow2
    expect_fail nbdsh -u "$uri" -c 'h.pwrite(bytes(512), 0)' 2>/dev/null
    stop_server "$server_pid"
    echo "$start: -x, -D, probing, -r"
done

# -o past the end.
status=0
"$NBDFORGE_IMG" -k "$tmp/o.sock" -f raw -o 2000000 disk.raw 2>err.out || status=$?
[ "$status" -eq 1 ] && grep -q -- '-o 2000000' err.out || fail "-o past the end: status $status: $(cat err.out)"
[ ! -e "$tmp/o.sock" ] || fail "-o past the end: the socket was created"

# TCP: -b and -p.
port=$(free_tcp_port)
"$NBDFORGE_IMG" -b 127.0.0.1 -p "$port" -f qcow2 disk.qcow2 2>tcp.err &
tcp_pid=$!
server_pids+=("$tcp_pid")
for ((i = 0; i < 50; i++)); do
    size=$(nbdinfo --size "nbd://127.0.0.1:$port" 2>/dev/null) && break
    sleep 0.1
done
[ "${size:-}" = 2097152 ] || fail "-b 127.0.0.1 -p $port: not serving: $(cat tcp.err)"
wait "$tcp_pid" || fail "-b -p: exit status $? after its client left"
echo "-b and -p"

# --fork and --pid-file.
"$NBDFORGE_IMG" --fork --pid-file="$tmp/pid" -t -k "$tmp/fork.sock" -f qcow2 disk.qcow2 ||
    fail "--fork: the parent failed"
pid=$(cat "$tmp/pid")
server_pids+=("$pid")
[ "$(nbdinfo --size "nbd+unix:///?socket=$tmp/fork.sock")" = 2097152 ] || fail "--fork: not serving"
kill "$pid"
echo "--fork and --pid-file"

# Socket activation: systemd-socket-activate hands over a listening socket.
python3 - "$tmp/act.sock" "$NBDFORGE_IMG" "$tmp/disk.qcow2" "$tmp/act.pid" <<'PY' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(4)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
env = dict(os.environ, LISTEN_FDS="1")
pid = os.fork()
if pid == 0:
    env["LISTEN_PID"] = str(os.getpid())
    os.execve(sys.argv[2], [sys.argv[2], "-t", "-f", "qcow2", sys.argv[3]], env)
with open(sys.argv[4], "w") as f:
    f.write(str(pid))
os.waitpid(pid, 0)
PY
activator=$!
server_pids+=("$activator")
for ((i = 0; i < 50; i++)); do
    size=$(nbdinfo --size "nbd+unix:///?socket=$tmp/act.sock" 2>/dev/null) && break
    sleep 0.1
done
[ "${size:-}" = 2097152 ] || fail "socket activation: not serving on the inherited socket"
kill "$(cat "$tmp/act.pid")"
wait "$activator"
echo "socket activation"
