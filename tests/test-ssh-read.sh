#!/usr/bin/env bash
# The ssh plugin reads a file through a real OpenSSH server (started here on a loopback port with
# throwaway keys): the disk is the file byte for byte, the same disk nbdkit serves for the same
# command line, with nbdkit's capabilities (flush, FUA and multi-conn from fsync@openssh.com);
# under -r it is read-only; a relative path is opened where the SFTP server starts.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/sshd.sh"
start_sshd

random_file "$tmp/disk.img" 6M
printf 'an odd tail' >> "$tmp/disk.img"       # a size that is no multiple of anything

same_as_nbdkit ssh "${ssh_args[@]}" "$tmp/disk.img"
same_file "$tmp/ours.img" "$tmp/disk.img"
same_as_nbdkit ssh "${ssh_args[@]}" path="$tmp/disk.img" compression=true timeout=10
# A relative path starts where the SFTP server starts (the home directory; $tmp here).
same_as_nbdkit ssh "${ssh_args[@]}" disk.img
same_file "$tmp/ours.img" "$tmp/disk.img"

# What the client is told, as nbdkit tells it.
start_server ssh "${ssh_args[@]}" "$tmp/disk.img"
nbdinfo --json "$uri" > "$tmp/ours.json"
stop_server "$server_pid"
start_reference ssh "${ssh_args[@]}" "$tmp/disk.img"
nbdinfo --json "$uri" > "$tmp/theirs.json"
stop_server "$server_pid"
python3 - "$tmp/ours.json" "$tmp/theirs.json" <<'PY'
import json, sys
ours, theirs = (json.load(open(f))["exports"][0] for f in sys.argv[1:])
keys = ["export-size", "is_read_only", "can_flush", "can_fua", "can_multi_conn", "can_trim", "can_zero"]
for k in keys:
    assert ours[k] == theirs[k], f"{k}: ours {ours[k]}, nbdkit {theirs[k]}"
assert ours["can_flush"] and ours["can_multi_conn"], ours
print("same capabilities as nbdkit:", {k: ours[k] for k in keys})
PY

# -r: read-only, and reads still match.
export tmp
start_server -r ssh "${ssh_args[@]}" "$tmp/disk.img"
[ "$(nbdinfo --json "$uri" | python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["is_read_only"])')" = True ] ||
    fail "-r: the export is not read-only"
nbdsh -u "$uri" -c '
import os
want = open(os.environ["tmp"] + "/disk.img", "rb").read()
for off, n in [(0, 1), (4095, 2), (1 << 20, 65536), (len(want) - 11, 11)]:
    assert h.pread(n, off) == want[off:off + n], (off, n)
try:
    h.pwrite(b"x", 0)
    raise SystemExit("a write to a read-only export succeeded")
except nbd.Error:
    pass
' || fail "-r: reads or the refused write"
stop_server "$server_pid"

