#!/usr/bin/env bash
# The tmpdisk plugin: each connection gets a fresh disk of its own, deleted when it leaves. Two
# connections at once write different data and each reads back its own; the disk is the file
# system asked for (blkid, e2fsck), the same type, label and size nbdkit serves; command= runs
# with nbdkit's variables and a failing command fails the open with its message in the log;
# disk= gives every client a copy of an image; nothing is left in $TMPDIR.
#
# Fails against nbdkit 1.32 (NBDFORGE=nbdkit) at type=vfat with a label: its mkfs command passes
# -L, which mkfs.vfat does not take (-n is its label option); and it has no disk=.
source "$(dirname "$0")/lib/functions.sh"

mkdir -p "$tmp/images"
export TMPDIR="$tmp/images"
no_leftovers() { [ -z "$(ls -A "$tmp/images")" ] || fail "$1: left in \$TMPDIR: $(ls -A "$tmp/images")"; }

# Two connections at once, each with its own disk.
start_server tmpdisk 16M label=SCRATCH
export uri
nbdsh -c '
import nbd, os, subprocess
uri = os.environ["uri"]
one, two = nbd.NBD(), nbd.NBD()
one.connect_uri(uri)
two.connect_uri(uri)
assert one.get_size() == two.get_size() == 16 << 20
assert not one.can_multi_conn()
one.pwrite(b"first client " * 100, 8 << 20)
two.pwrite(b"second client " * 100, 8 << 20)
assert one.pread(1300, 8 << 20) == b"first client " * 100
assert two.pread(1400, 8 << 20) == b"second client " * 100
# The disks have no names left while in use.
assert os.listdir(os.environ["TMPDIR"]) == [], os.listdir(os.environ["TMPDIR"])
one.trim(1 << 20, 12 << 20)
one.flush()
one.shutdown(); two.shutdown()
# A new connection starts afresh.
three = nbd.NBD()
three.connect_uri(uri)
assert three.pread(13, 8 << 20) != b"first client "
'
nbdcopy "$uri" "$tmp/ours.img"
stop_server "$server_pid"
no_leftovers "tmpdisk 16M"
blkid -p "$tmp/ours.img" | tee "$tmp/ours.blkid"
grep -q 'TYPE="ext4"' "$tmp/ours.blkid" || fail "not ext4 by default"
grep -q 'LABEL="SCRATCH"' "$tmp/ours.blkid" || fail "label= not set"
e2fsck -fn "$tmp/ours.img" || fail "e2fsck found errors"
start_reference tmpdisk 16M label=SCRATCH
nbdcopy "$uri" "$tmp/theirs.img"
stop_server "$server_pid"
[ "$(stat -c %s "$tmp/theirs.img")" -eq "$(stat -c %s "$tmp/ours.img")" ] || fail "size differs from nbdkit's"
[ "$(blkid -p -o value -s TYPE -s LABEL "$tmp/theirs.img")" = "$(blkid -p -o value -s TYPE -s LABEL "$tmp/ours.img")" ] ||
    fail "type or label differ from nbdkit's"

# type=: another mkfs, with its own label option.
start_server tmpdisk 8M type=vfat label=FATDISK
nbdcopy "$uri" "$tmp/fat.img"
stop_server "$server_pid"
blkid -p "$tmp/fat.img" | grep 'TYPE="vfat"' | grep -q 'LABEL="FATDISK"' || fail "vfat: $(blkid -p "$tmp/fat.img")"

# command=: the variables nbdkit gives it, the same values as nbdkit's but for $disk's path.
show='truncate -s "$size" "$disk"; printf "%s|%s|%s|%s|%s" "$size" "$type" "$label" "$os" "$disk" | dd of="$disk" conv=notrunc status=none'
read_vars() { nbdsh -u "$uri" -c 'print(h.pread(200, 0).rstrip(b"\0").decode())'; }
start_server tmpdisk 1M os="fedora 31" label="it's" command="$show"
ours=$(read_vars)
stop_server "$server_pid"
start_reference tmpdisk 1M os="fedora 31" label="it's" command="$show"
theirs=$(read_vars)
stop_server "$server_pid"
echo "ours:   $ours"
echo "nbdkit: $theirs"
[ "${ours%|*}" = "1048576||it's|fedora 31" ] || fail "command= variables: $ours"
[ "${ours%|*}" = "${theirs%|*}" ] || fail "command= variables differ from nbdkit's"
case "${ours##*|}" in "$tmp/images/"*/disk) ;; *) fail "\$disk is not in \$TMPDIR: ${ours##*|}" ;; esac

# The size is whatever the command makes (size=0 is only a hint), here a copy of a base image.
truncate -s 3M "$tmp/base.img"
printf 'base image' | dd of="$tmp/base.img" conv=notrunc status=none
start_server tmpdisk size=0 base="$tmp/base.img" command='cp --sparse=always "$base" "$disk"'
[ "$(nbdinfo --size "$uri")" -eq $((3 << 20)) ] || fail "the size is not the command's disk's"
stop_server "$server_pid"

# disk=: every client gets its own copy of the image; the image itself is not written.
start_server tmpdisk disk="$tmp/base.img"
nbdsh -u "$uri" -c '
assert h.get_size() == 3 << 20
assert h.pread(10, 0) == b"base image"
h.pwrite(b"CHANGED!!!", 0)
assert h.pread(10, 0) == b"CHANGED!!!"
'
nbdsh -u "$uri" -c 'assert h.pread(10, 0) == b"base image", "the second client sees the first one'"'"'s write"'
stop_server "$server_pid"
[ "$(head -c 10 "$tmp/base.img")" = "base image" ] || fail "disk=: the image was written"

# -r: read-only disks.
start_server -r tmpdisk 4M
[ "$(nbdinfo --is read_only "$uri"; echo $?)" = 0 ] || fail "-r: the disk is writable"
stop_server "$server_pid"

# A failing command fails the open; its message is in the log; the server goes on.
start_server tmpdisk 1M command='echo "mkfs is unhappy" >&2; exit 3'
expect_fail nbdinfo --size "$uri"
grep -q 'tmpdisk: command: exited with status 3: mkfs is unhappy' "$server_log" ||
    fail "the failure is not logged: $(cat "$server_log")"
expect_fail nbdinfo --size "$uri"
kill -0 "$server_pid" || fail "the server stopped"
stop_server "$server_pid"
no_leftovers "failed commands"

bad_args tmpdisk -- "size=<SIZE>"
bad_args tmpdisk size=1Q -- "size=1Q"
bad_args tmpdisk 1M a-b=c -- "a-b=c"
bad_args tmpdisk disk="$tmp/nonexistent" -- "disk=$tmp/nonexistent"
bad_args tmpdisk disk="$tmp/base.img" command=true -- "disk=$tmp/base.img" "command="
# --help describes the parameters; --dump-plugin names the plugin and its magic key.
"${server_cmd[@]}" tmpdisk --help > "$tmp/help"
grep -q -- 'command=' "$tmp/help" || fail "tmpdisk --help does not describe command="
"${server_cmd[@]}" tmpdisk --dump-plugin > "$tmp/dump"
grep -qx 'name=tmpdisk' "$tmp/dump" || fail "tmpdisk --dump-plugin"
grep -qx 'magic_config_key=size' "$tmp/dump" || fail "tmpdisk --dump-plugin: the magic key is not size"
echo OK
