#!/usr/bin/env bash
# Writes through the ssh plugin land in the remote file: qemu-img convert onto the export, then
# nbdsh writes with flush and FUA; create=true makes the file with create-size= and create-mode=
# on the first connection only, replacing what was there, and nbdkit makes the same file.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/sshd.sh"
start_sshd
export tmp

# qemu-img writes a whole image over SFTP.
random_file "$tmp/source.img" 4M
truncate -s 4M "$tmp/disk.img"
start_server ssh "${ssh_args[@]}" "$tmp/disk.img"
qemu-img convert -n -f raw -O raw "$tmp/source.img" "$uri"
same_file "$tmp/source.img" "$tmp/disk.img"

# Unaligned writes, with flush and FUA, then a zero request (written as zeroes).
nbdsh -u "$uri" -c '
h.pwrite(b"hello over sftp", 12345)
h.flush()
h.pwrite(b"fua", 3 << 20, nbd.CMD_FLAG_FUA)
h.zero(4096, 65536)
' || fail "nbdsh writes"
stop_server "$server_pid"
python3 - <<'PY' || fail "the remote file does not hold the writes"
import os
tmp = os.environ["tmp"]
want = bytearray(open(tmp + "/source.img", "rb").read())
want[12345:12345 + 15] = b"hello over sftp"
want[3 << 20:(3 << 20) + 3] = b"fua"
want[65536:65536 + 4096] = bytes(4096)
assert open(tmp + "/disk.img", "rb").read() == want
PY

# create=true: a new file of create-size bytes with create-mode, made once.
start_server ssh "${ssh_args[@]}" "$tmp/new.img" create=true create-size=3M create-mode=0640
[ ! -e "$tmp/new.img" ] || fail "create=true made the file before the first connection"
nbdsh -u "$uri" -c 'assert h.get_size() == 3 << 20; h.pwrite(b"kept", 0)'
[ "$(stat -c '%s %a' "$tmp/new.img")" = "3145728 640" ] ||
    fail "create=true: $(stat -c '%s %a' "$tmp/new.img"), want 3145728 640"
nbdsh -u "$uri" -c 'assert h.pread(4, 0) == b"kept", "a second connection made the file again"'
stop_server "$server_pid"
[ "$(head -c 4 "$tmp/new.img")" = kept ] || fail "the write to the created file is not in it"

# An existing file is replaced, as nbdkit replaces it; the default mode is 0600.
random_file "$tmp/old.img" 1M
cp "$tmp/old.img" "$tmp/old2.img"
start_server ssh "${ssh_args[@]}" "$tmp/old.img" create=true create-size=2M
nbdinfo --size "$uri" > /dev/null
stop_server "$server_pid"
start_reference ssh "${ssh_args[@]}" "$tmp/old2.img" create=true create-size=2M
nbdinfo --size "$uri" > /dev/null
stop_server "$server_pid"
same_file "$tmp/old.img" "$tmp/old2.img"
cmp -s "$tmp/old.img" <(head -c 2M /dev/zero) || fail "create=true did not replace the old file with zeroes"
[ "$(stat -c '%s %a' "$tmp/old.img")" = "$(stat -c '%s %a' "$tmp/old2.img")" ] ||
    fail "created files differ from nbdkit's: $(stat -c '%s %a' "$tmp/old.img" "$tmp/old2.img")"
echo "created as nbdkit creates: $(stat -c '%s %a' "$tmp/old.img")"
