#!/usr/bin/env bash
# A file the server may not write (mode 0444, server running as an unprivileged user, because
# root ignores file permissions) is served read-only: the server says so on stderr but starts,
# clients see a read-only export, and writes fail with EPERM while reads work.  The same file
# with an explicit -r is served without complaint.
#
# Fails against nbdkit 1.32: it falls back to read-only silently (no message at start-up).
source "$(dirname "$0")/lib/functions.sh"

chmod 755 "$tmp"
mkdir -m 1777 "$tmp/run"
mkdir -m 755 "$tmp/data"
disk="$tmp/data/disk.img"
random_file "$disk" 1M
chmod 444 "$disk"

as_user=()
if [ "$(id -u)" -eq 0 ]; then
    as_user=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups --)
    # The server binary must be reachable by that user; a checkout under /root is not, so
    # run a copy from $tmp then.
    if ! "${as_user[@]}" "${server_cmd[@]}" --version >/dev/null 2>&1; then
        mkdir -m 755 "$tmp/bin"
        cp "$(command -v "${server_cmd[0]}")" "$tmp/bin/"
        server_cmd[0]="$tmp/bin/$(basename "${server_cmd[0]}")"
        chmod 755 "${server_cmd[0]}"
    fi
    "${as_user[@]}" "${server_cmd[@]}" --version >/dev/null ||
        fail "the server cannot be run as user nobody"
fi

sock="$tmp/run/ro.sock"
uri="nbd+unix:///?socket=$sock"
log="$tmp/ro.log"
"${as_user[@]}" "${server_cmd[@]}" -f -U "$sock" file "$disk" </dev/null >"$log" 2>&1 &
pid=$!
server_pids+=("$pid")
server_logs+=("$log")
wait_for_socket "$sock" "$pid"

nbdinfo --json "$uri" > "$tmp/info.json"
python3 -c "import json; d = json.load(open('$tmp/info.json')); assert d['exports'][0]['is_read_only'] is True, d" ||
    fail "export is not read-only"
cat "$log"
grep -Eiq 'read-only|readonly|read only' "$log" || fail "no message about serving read-only"
grep -qF "$disk" "$log" || fail "the message does not name the file"

nbdsh -u "$uri" -c "
import nbd, errno
assert h.is_read_only()
assert h.pread(1 << 20, 0) == open('$disk', 'rb').read()
h.set_strict_mode(0)
try:
    h.pwrite(b'x' * 512, 0)
    raise SystemExit('write to a read-only file succeeded')
except nbd.Error as e:
    assert e.errnum == errno.EPERM, e
"
kill -0 "$pid" || fail "server died"

# With -r the same file is served read-only and there is nothing to warn about.
start_server -r file "$disk"
nbdsh -u "$uri" -c 'assert h.is_read_only()'
grep -Eiq 'warn|error' "$server_log" && fail "unexpected message with -r: $(cat "$server_log")"
echo OK
