#!/usr/bin/env bash
# A Python plugin made executable with "#!/path/to/nbdforge python" on its first line runs as a
# command, as nbdkit's shebang scripts do ("#!/usr/sbin/nbdkit python"): the kernel runs
# `nbdforge python SCRIPT ARGS...`, server options after the script included. The same script
# served by nbdkit's python plugin gives the same bytes.
source "$(dirname "$0")/lib/functions.sh"

binary=$(command -v "${server_cmd[0]}")
cat > "$tmp/disk.py" <<SCRIPT
#!$binary python
API_VERSION = 2
disk = bytearray()

def config(key, value):
    global disk
    if key != "text":
        raise RuntimeError("unknown parameter " + key)
    disk = bytearray(value.encode() * 1000)

def open(readonly):
    return 1

def get_size(h):
    return len(disk)

def pread(h, buf, offset, flags):
    buf[:] = disk[offset:offset + len(buf)]
SCRIPT
chmod +x "$tmp/disk.py"

"$tmp/disk.py" -U "$tmp/sb.sock" text=shebang --run "nbdcopy \$uri $tmp/ours.img"
[ "$(head -c 14 "$tmp/ours.img")" = "shebangshebang" ] || fail "the script did not serve its disk"
[ "$(stat -c %s "$tmp/ours.img")" -eq 7000 ] || fail "wrong size"
nbdkit -U - python "$tmp/disk.py" text=shebang --run "nbdcopy \$uri $tmp/theirs.img"
same_file "$tmp/ours.img" "$tmp/theirs.img"

# Options after the script, and a bad parameter reported with the script's exception.
"$tmp/disk.py" -r -f -U "$tmp/sb2.sock" text=again </dev/null >"$tmp/log" 2>&1 &
pid=$!
server_pids+=("$pid")
wait_for_socket "$tmp/sb2.sock" "$pid"
nbdsh -u "nbd+unix:///?socket=$tmp/sb2.sock" -c 'assert h.is_read_only(); assert h.pread(5, 0) == b"again"'
stop_server "$pid"
status=0
"$tmp/disk.py" -U "$tmp/sb3.sock" colour=blue --run true 2>"$tmp/err" || status=$?
[ "$status" -eq 1 ] || fail "a bad parameter: exit status $status"
grep -q "colour=blue" "$tmp/err" && grep -q "unknown parameter colour" "$tmp/err" || fail "message: $(cat "$tmp/err")"
echo "shebang scripts run, same bytes as nbdkit"
