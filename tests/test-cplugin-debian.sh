#!/usr/bin/env bash
# nbdkit's own C plugins, as Debian's nbdkit package installs them, loaded unchanged by path or
# by name: each serves, through nbdforge, the same bytes as under nbdkit (copied out with nbdcopy,
# compared with cmp); a few are also checked with nbdsh and qemu-img. Plugins whose disks hold
# fresh UUIDs or timestamps (tmpdisk, linuxdisk) are checked by what the filesystem holds; iso is told a date.
# Plugins that need a remote (ssh, torrent, cdi) are not run; curl reads a file:// URL, nbd a
# local server.
# timeout: 300
source "$(dirname "$0")/lib/functions.sh"

D=/usr/lib/x86_64-linux-gnu/nbdkit/plugins
so() { echo "$D/nbdkit-$1-plugin.so"; }
[ -e "$(so memory)" ] || fail "nbdkit's plugins are not installed in $D"

cd "$tmp"
random_file f1 3M
random_file f2 1M
mkdir dir od
echo hello > dir/a.txt
cp f2 dir/b.bin
touch -d 2020-01-01 dir/* dir
# floppy and iso record access times, which the first read updates (relatime): read them now.
cat dir/* > /dev/null
ls dir > /dev/null
cat > s.sh <<'SH'
#!/bin/bash
case "$1" in
    get_size) echo 1048576 ;;
    pread) dd if="$(dirname "$0")/f1" skip="$4" count="$3" iflag=skip_bytes,count_bytes status=none ;;
    *) exit 2 ;;
esac
SH
chmod +x s.sh

# A path to an existing .so is that plugin, not the built-in of the same name.
"${server_cmd[@]}" "$(so memory)" --dump-plugin > dump
grep -qx "so=$(so memory)" dump || fail "--dump-plugin does not name the .so: $(cat dump)"
grep -qx "mlock=yes" dump || fail "the plugin's own dump_plugin lines are missing: $(cat dump)"

same_as_nbdkit "$(so memory)" size=1M
same_as_nbdkit "$(so file)" file="$tmp/f1"
same_as_nbdkit "$(so null)" size=1M
same_as_nbdkit "$(so pattern)" size=1M
same_as_nbdkit "$(so data)" "data=1 2 3 @512 4 5 * 100 @^4096 (0x55 0xaa) * 16" size=1M
same_as_nbdkit "$(so partitioning)" "$tmp/f1" "$tmp/f2"
same_as_nbdkit "$(so partitioning)" "$tmp/f1" "$tmp/f2" partition-type=mbr
same_as_nbdkit "$(so floppy)" "$tmp/dir"
# (xorriso stamps the image with the time, unless told a date)
same_as_nbdkit "$(so iso)" "$tmp/dir" params=--modification-date=2020010100000000
same_as_nbdkit "$(so random)" size=1M seed=5
same_as_nbdkit "$(so sparse-random)" size=10M seed=5
same_as_nbdkit "$(so zero)"
same_as_nbdkit "$(so full)" size=1M
same_as_nbdkit "$(so split)" "$tmp/f1" "$tmp/f2"
same_as_nbdkit "$(so ondemand)" dir="$tmp/od" size=1M
same_as_nbdkit "$(so sh)" "$tmp/s.sh"
same_as_nbdkit "$(so eval)" get_size='echo 1048576' \
    pread='dd if='"$tmp"'/f1 skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none'
same_as_nbdkit "$(so curl)" url="file://$tmp/f1"
cmp "$tmp/ours.img" f1 || fail "curl: not the file's bytes"

# nbd: a client of another server (here, nbdforge's built-in file plugin).
start_server file "$tmp/f1"
back=$sock
same_as_nbdkit "$(so nbd)" socket="$back"
cmp "$tmp/ours.img" f1 || fail "nbd: not the file's bytes"

# By name: a plugin nbdforge has no built-in for (torrent: probed only, it needs a remote) is
# found in nbdkit's directory...
"${server_cmd[@]}" --dump-config | grep >/dev/null "^plugin_search_path=.*$D" ||
    fail "--dump-config does not name $D"
"${server_cmd[@]}" torrent --dump-plugin | grep -x >/dev/null "so=$(so torrent)" || fail "torrent not found by name"
# ...and a built-in wins over nbdkit's .so of the same name.
"${server_cmd[@]}" memory --dump-plugin | grep >/dev/null "^so=" && fail "memory: the .so was loaded, not the built-in"

# Writes through nbdkit's memory plugin, with qemu-img and nbdsh.
start_server "$(so memory)" size=3M
qemu-img convert -n -f raw -O raw f1 "$uri"
qemu-img compare -f raw -F raw f1 "$uri" || fail "memory.so: qemu-img compare"
nbdsh -u "$uri" -c '
h.zero(65536, 0)
assert h.pread(65536, 0) == bytes(65536)
h.pwrite(b"written by nbdsh", 100)
assert h.pread(16, 100) == b"written by nbdsh"
assert h.can_zero() and h.can_trim() and h.can_fua() and h.can_multi_conn()
'
stop_server "$server_pid"

# info: nbdkit_export_name reaches the plugin.
start_server "$(so info)" mode=exportname
[ "$(nbdsh -u "nbd+unix:///hello-there?socket=$sock" -c 'print(h.pread(h.get_size(), 0).decode())')" = hello-there ] ||
    fail "info: the export name did not reach the plugin"
stop_server "$server_pid"

# tmpdisk and linuxdisk make filesystems with fresh UUIDs: check what they hold.
start_server "$(so tmpdisk)" size=16M
nbdcopy "$uri" tmpdisk.img
stop_server "$server_pid"
[ "$(stat -c %s tmpdisk.img)" -eq $((16 << 20)) ] || fail "tmpdisk: wrong size"
/usr/sbin/blkid -p tmpdisk.img | grep >/dev/null 'TYPE="ext4"' || fail "tmpdisk: no ext4: $(/usr/sbin/blkid -p tmpdisk.img)"

start_server "$(so linuxdisk)" "$tmp/dir"
nbdcopy "$uri" linuxdisk.img
stop_server "$server_pid"
start=$(sfdisk -J linuxdisk.img | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][0]["start"])')
dd if=linuxdisk.img of=part.img bs=512 skip="$start" status=none
[ "$(/usr/sbin/debugfs -R 'cat /a.txt' part.img 2>/dev/null)" = hello ] || fail "linuxdisk: a.txt is not in the filesystem"
/usr/sbin/debugfs -R 'dump /b.bin b.out' part.img 2>/dev/null
cmp b.out f2 || fail "linuxdisk: b.bin differs"

echo "PASS: $(basename "$0")"
