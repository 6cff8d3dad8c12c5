#!/usr/bin/env bash
# The shipped systemd units (contrib/nbdforge.socket, contrib/nbdforge@.service) work together:
# the socket unit accepts connections on port 10809 (Accept=yes) for the template service, and
# the service's ExecStart, with NBDFORGE_ARGS expanded as systemd splits it, serves the accepted
# connection it is handed (fd 3, LISTEN_FDS=1) and exits 0 when the client leaves.  The
# activation is done here as systemd does it, on a Unix socket instead of port 10809.
source "$(dirname "$0")/lib/functions.sh"

socket_unit="$repo/contrib/nbdforge.socket"
service_unit="$repo/contrib/nbdforge@.service"
grep -qx 'ListenStream=10809' "$socket_unit" || fail "socket unit does not listen on 10809"
grep -qx 'Accept=yes' "$socket_unit" || fail "socket unit is not Accept=yes (needed for a template service)"
grep -q '^ExecStart=/usr/bin/nbdforge \$NBDFORGE_ARGS$' "$service_unit" || fail "unexpected ExecStart"
grep -q '^EnvironmentFile=-/etc/default/nbdforge$' "$service_unit" || fail "no optional EnvironmentFile"
for word in -p -U -s --run; do
    grep '^Environment=' "$service_unit" | grep -q -- " $word " && fail "default NBDFORGE_ARGS uses $word"
done
if command -v systemd-analyze >/dev/null; then
    # Only the binary's absence may be reported (it is not installed at /usr/bin here).
    systemd-analyze verify --man=no "$socket_unit" "$service_unit" 2>&1 |
        grep -v 'is not executable' | grep . && fail "systemd-analyze verify complained"
fi

# ExecStart as systemd runs it: $NBDFORGE_ARGS split on whitespace, binary replaced by ours.
random_file "$tmp/disk.img" 2M
NBDFORGE_ARGS="--readonly file $tmp/disk.img"
exec_start=$(sed -n 's/^ExecStart=//p' "$service_unit")
read -r -a argv <<< "${exec_start//\$NBDFORGE_ARGS/$NBDFORGE_ARGS}"
argv=("${server_cmd[@]}" "${argv[@]:1}")

python3 - "$tmp/unit.sock" "${argv[@]}" >"$tmp/act.out" 2>"$tmp/act.log" <<'EOF' &
import os, socket, sys
path, argv = sys.argv[1], sys.argv[2:]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(1)
print("listening", flush=True)
conn, _ = listener.accept()
listener.close()
os.dup2(conn.fileno(), 3, inheritable=True)
os.set_inheritable(3, True)
os.execvpe(argv[0], argv, dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS="1"))
EOF
act_pid=$!
server_pids+=("$act_pid")
server_logs+=("$tmp/act.log")
for ((i = 0; i < 100; i++)); do [ -s "$tmp/act.out" ] && break; sleep 0.05; done
# One connection: this activator, unlike systemd, accepts only one.
nbdcopy --connections=1 "nbd+unix:///?socket=$tmp/unit.sock" "$tmp/copy.img"
same_file "$tmp/disk.img" "$tmp/copy.img"
status=0
for ((i = 0; i < 100; i++)); do kill -0 "$act_pid" 2>/dev/null || break; sleep 0.1; done
wait "$act_pid" || status=$?
[ "$status" -eq 0 ] || fail "the unit's server exited $status after its client left"
echo OK
