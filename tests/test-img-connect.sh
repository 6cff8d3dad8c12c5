#!/usr/bin/env bash
# -c/--connect and -d/--disconnect (the kernel's NBD client), beside qemu-nbd. This machine has no
# nbd kernel module, so each command line runs up to where the device is missing or refuses the
# NBD ioctls, and must end there as qemu-nbd's does: the same exit status, qemu-nbd's message, the
# same standard output, no server left running and no socket left behind. A character device
# (/dev/null) and a regular file get as far as NBD_SET_SOCK: the server ran and the kernel's side
# negotiated with it first. -d on a device that is not an NBD device succeeds, as in qemu-nbd.
# Argument handling: -d wins over -c, -c refuses TLS, -L and socket activation.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"
qemu-img create -q -f qcow2 disk.qcow2 1M
: > plain.file
echo "qemu:00112233445566778899aabbccddeeff" > keys.psk   # for a tls-creds-psk object
absent="$tmp/nbd-absent0"

both() {   # both STATUS ARGS... -- EXPECTED...: both exit STATUS with the same stdout; ours says EXPECTED
    local want=$1 args=() cmd status s
    shift
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    shift
    for cmd in qemu-nbd "$NBDFORGE_IMG"; do
        status=0
        timeout 30 "$cmd" "${args[@]}" >out 2>err </dev/null || status=$?
        [ "$status" -eq "$want" ] || fail "$cmd ${args[*]}: exit status $status, want $want: $(cat err)"
        if [ "$cmd" = qemu-nbd ]; then cp out theirs.out; cp err theirs.err; fi
    done
    cmp out theirs.out || fail "${args[*]}: stdout '$(cat out)', qemu-nbd's '$(cat theirs.out)'"
    for s in "$@"; do
        grep -qF -- "$s" err || fail "${args[*]}: our message does not say '$s': $(cat err)"
        grep -qF -- "$s" theirs.err || fail "${args[*]}: (test) qemu-nbd does not say '$s': $(cat theirs.err)"
    done
    echo "${args[*]}: exit $status: $(head -1 err) / $(head -1 theirs.err)"
}

no_leftovers() {   # no_leftovers PATTERN SOCKET: no process whose command line has PATTERN, no SOCKET
    local i
    for ((i = 0; i < 50; i++)); do
        pgrep -f -- "$1" >/dev/null || break
        sleep 0.1
    done
    ! pgrep -af -- "$1" || fail "a server for $1 is still running"
    [ ! -e "$2" ] || fail "$2 was left behind"
}

# The device is missing: the image opens, the server listens, then opening the device fails.
both 1 -c "$absent" -k "$tmp/c.sock" -f qcow2 disk.qcow2 -- "Failed to open $absent: No such file or directory"
no_leftovers "$absent" "$tmp/c.sock"
both 1 -v -c "$absent" -k "$tmp/c.sock" -f qcow2 disk.qcow2 -- "Failed to open $absent: No such file or directory"
no_leftovers "$absent" "$tmp/c.sock"
# Without -k, on qemu-nbd's socket in /var/lock, removed again.
both 1 -c "$absent" -f qcow2 disk.qcow2 -- "Failed to open $absent"
no_leftovers "$absent" /var/lock/qemu-nbd-nbd-absent0
# A stale socket there (qemu-nbd leaves one when the image does not open) is replaced.
python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' /var/lock/qemu-nbd-nbd-absent0
status=0
timeout 30 "$NBDFORGE_IMG" -c "$absent" -f qcow2 disk.qcow2 2>err </dev/null || status=$?
[ "$status" -eq 1 ] && grep -qF "Failed to open $absent" err || fail "-c over a stale socket: $status: $(cat err)"
no_leftovers "$absent" /var/lock/qemu-nbd-nbd-absent0
echo "-c over a stale socket: replaced, then $(cat err)"
# A device that is not an NBD device refuses the first ioctl.
both 1 -c /dev/null -k "$tmp/c.sock" -r -f qcow2 disk.qcow2 -- "Failed to set NBD socket"
no_leftovers "$tmp/c.sock" "$tmp/c.sock"
both 1 -c "$tmp/plain.file" -k "$tmp/c.sock" -f qcow2 disk.qcow2 -- "Failed to set NBD socket"
no_leftovers "$tmp/plain.file" "$tmp/c.sock"
# The image is opened before the device: its error comes first.
both 1 -c "$absent" -k "$tmp/c.sock" no-such.qcow2 -- no-such.qcow2 "No such file or directory"
rm -f "$tmp/c.sock"   # (qemu-nbd leaves it behind)

# -d: FILE is the device.
both 1 -d "$absent" -- "Cannot open $absent: No such file or directory"
both 0 -d /dev/null --
grep -qx "/dev/null disconnected" out || fail "-d: stdout '$(cat out)'"
both 0 -c "$absent" -d /dev/null --
both 1 -c /dev/null -d "$absent" -- "Cannot open $absent"

# Refused command lines.
both 1 -c "$absent" -- "Invalid number of arguments"
both 1 -d -- "Invalid number of arguments"
both 1 -c "$absent" -L -- "List mode is incompatible with per-device settings"
both 1 -d -L -- "List mode is incompatible with per-device settings"
both 1 --object tls-creds-psk,id=t,dir="$tmp",endpoint=server --tls-creds t -c "$absent" disk.qcow2 -- \
    "TLS is not supported with a host device"

# Socket activation: an inherited listening socket on fd 3, LISTEN_PID the server's own.
for cmd in qemu-nbd "$NBDFORGE_IMG"; do
    status=0
    python3 - "$cmd" "$absent" "$tmp/act.sock" 2>err <<'EOF' || status=$?
import os, socket, sys
cmd, device, path = sys.argv[1:]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen()
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execvp(cmd, [cmd, "-c", device, "-f", "qcow2", "disk.qcow2"])
EOF
    rm -f "$tmp/act.sock"
    [ "$status" -eq 1 ] || fail "$cmd: -c with socket activation: exit status $status: $(cat err)"
    grep -qF "NBD device can't be set when using socket activation" err || fail "$cmd: $(cat err)"
done
echo "socket activation with -c: refused by both"

# Before NBD_SET_SOCK failed, the kernel's side had connected to the server and negotiated.
status=0
timeout 30 "$NBDFORGE_IMG" -v -c /dev/null -k "$tmp/c.sock" -r -f qcow2 disk.qcow2 2>err </dev/null || status=$?
[ "$status" -eq 1 ] || fail "-v -c /dev/null: exit status $status"
grep -q "accepted unix" err || fail "-v -c /dev/null: the server never saw the kernel's side: $(cat err)"
grep -q "Failed to set NBD socket" err || fail "-v -c /dev/null: $(cat err)"
no_leftovers "$tmp/c.sock" "$tmp/c.sock"
echo "-v -c /dev/null: negotiated, then NBD_SET_SOCK refused"
