#!/usr/bin/env bash
# systemd socket activation (sd_listen_fds(3)), done here the way systemd does it: the sockets
# are descriptors 3.. and LISTEN_PID/LISTEN_FDS name them.  With listening sockets (Accept=no)
# the server serves them (Unix and TCP, several at once, many connections in turn), stays in the
# foreground, and refuses -p, -U, -i, -s and --run, which would contradict the sockets it was
# given.  With one accepted connection (Accept=yes) it serves that client and exits 0.
# LISTEN_FDS meant for another process (LISTEN_PID not ours) is ignored.  Also through libnbd's
# "[ CMD ]" syntax.
source "$(dirname "$0")/lib/functions.sh"

# activate LOG SOCKET-SPEC... -- SERVER-ARGS...: binds each spec ("unix:PATH" or
# "tcp:127.0.0.1:0"), prints the bound addresses, and execs the server with the sockets as fds
# 3.., LISTEN_PID set to its own pid (kept across exec).  The spec "accept:PATH" listens on a
# Unix socket and passes the first connection instead, as Accept=yes does.  Runs in the
# background; sets act_pid.
activate() {
    local log=$1 nspecs=0 a
    shift
    for a in "$@"; do [ "$a" = -- ] && break; nspecs=$((nspecs + 1)); done
    : > "$tmp/addrs"
    python3 - "$@" >"$tmp/addrs" 2>"$log" <<'EOF' &
import os, socket, sys
args = sys.argv[1:]
split = args.index("--")
specs, server = args[:split], args[split + 1:]
socks = []
for spec in specs:
    kind, _, where = spec.partition(":")
    if kind == "accept":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(where)
        listener.listen(1)
        print(where, flush=True)
        s, _ = listener.accept()
        listener.close()
        socks.append(s)
        continue
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(where)
        print(where, flush=True)
    else:
        host, _, port = where.rpartition(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((host, int(port)))
        print("%s:%d" % s.getsockname(), flush=True)
    s.listen(16)
    socks.append(s)
# Out of the way first, so that dup2 never lands on a socket not yet moved.
high = [os.dup2(s.fileno(), 100 + i) for i, s in enumerate(socks)]
for i, h in enumerate(high):
    os.dup2(h, 3 + i, inheritable=True)
    os.set_inheritable(3 + i, True)
env = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(socks)))
sys.stdout.flush()
os.execvpe(server[0], server, env)
EOF
    act_pid=$!
    server_pids+=("$act_pid")
    server_logs+=("$log")
    for ((i = 0; i < 100; i++)); do [ "$(wc -l < "$tmp/addrs")" -ge "$nspecs" ] && break; sleep 0.05; done
}

# Two sockets, Unix and TCP, served by one activated server; several clients in turn.
activate "$tmp/act.log" "unix:$tmp/act.sock" "tcp:127.0.0.1:0" -- "${server_cmd[@]}" memory 3M
sleep 0.2
tcp=$(sed -n 2p "$tmp/addrs")
for i in 1 2 3; do
    [ "$(nbdinfo --size "nbd+unix:///?socket=$tmp/act.sock")" -eq 3145728 ] || fail "unix client $i"
    [ "$(nbdinfo --size "nbd://$tcp")" -eq 3145728 ] || fail "tcp client $i ($tcp)"
done
nbdsh -u "nbd+unix:///?socket=$tmp/act.sock" -c 'h.pwrite(b"\x55" * 512, 4096)'
nbdsh -u "nbd://$tcp" -c 'assert h.pread(512, 4096) == b"\x55" * 512'
# It stayed in the foreground (same pid as the activator exec'd) and stops cleanly.
kill -0 "$act_pid" || fail "activated server is not the process started"
stop_server "$act_pid" TERM
[ "$stop_status" -eq 0 ] || fail "exit status $stop_status after SIGTERM"

# Accept=yes: one process per connection, serving the connection it was given, then exiting 0.
activate "$tmp/acc.log" "accept:$tmp/acc.sock" -- "${server_cmd[@]}" memory 4M
nbdsh -u "nbd+unix:///?socket=$tmp/acc.sock" \
    -c 'assert h.get_size() == 4 << 20' -c 'h.pwrite(b"\x11" * 4096, 0)' \
    -c 'assert h.pread(4096, 0) == b"\x11" * 4096'
status=0
for ((i = 0; i < 100; i++)); do kill -0 "$act_pid" 2>/dev/null || break; sleep 0.1; done
wait "$act_pid" || status=$?
[ "$status" -eq 0 ] || fail "Accept=yes server exited $status after its client left"

# Flags that contradict the inherited sockets.
for flags in "-p 10809" "-U $tmp/x.sock" "-i 127.0.0.1" "-s" "--run true"; do
    rm -f "$tmp/act2.sock"
    activate "$tmp/act2.log" "unix:$tmp/act2.sock" -- "${server_cmd[@]}" $flags memory 1M
    status=0
    wait "$act_pid" || status=$?
    [ "$status" -eq 1 ] || fail "activation with $flags: exit $status, want 1"
    grep -q "socket activation" "$tmp/act2.log" || fail "activation with $flags: $(cat "$tmp/act2.log")"
    grep -qF -- "${flags%% *}" "$tmp/act2.log" || fail "message does not name ${flags%% *}"
done
[ ! -e "$tmp/x.sock" ] || fail "-U socket created under socket activation"

# LISTEN_PID naming another process: not activation; the server binds what it is told.
LISTEN_PID=1 LISTEN_FDS=1 "${server_cmd[@]}" -f -U "$tmp/own.sock" memory 1M \
    </dev/null >"$tmp/own.log" 2>&1 &
pid=$!
server_pids+=("$pid")
server_logs+=("$tmp/own.log")
wait_for_socket "$tmp/own.sock" "$pid"
stop_server "$pid" TERM

# libnbd's own socket activation.
[ "$(nbdinfo --size -- [ "${server_cmd[@]}" memory 5M ])" -eq 5242880 ] || fail "libnbd [ CMD ]"
echo OK
