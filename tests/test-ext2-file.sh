#!/usr/bin/env bash
# The ext2 filter: files inside ext2, ext3 and ext4 filesystems made by mke2fs -d (a random file,
# a sparse file, a file in a subdirectory, through a symlinked directory; one in a partition under
# the partition filter) are served byte for byte as the originals and as nbdkit --filter=ext2
# serves them, holes reported as holes; under ext2file=exportname the client's export name picks
# the file (nothing is listed, "" is refused, as in nbdkit); writes and zeroes through qemu-io and
# nbdcopy (into holes too) land in the file, as debugfs dumps it, the same as nbdkit's, and
# e2fsck -fn finds the filesystem clean; trim frees the whole blocks of extent-mapped files; a
# missing file, a directory and a symlink are refused as nbdkit refuses them; a filesystem whose
# journal needs recovery, or with a feature libext2fs cannot write, is served read-only; bad
# parameters stop the server before it listens.
# timeout: 300
source "$(dirname "$0")/lib/functions.sh"

export PATH="$PATH:/usr/sbin:/sbin"
mkdir -p "$tmp/tree/sub"
random_file "$tmp/tree/random" 3M
random_file "$tmp/tree/sub/inner" 100K
truncate -s 8M "$tmp/tree/sparse"
printf 'first' | dd of="$tmp/tree/sparse" bs=1 seek=2000000 conv=notrunc status=none
head -c 70000 /dev/urandom | dd of="$tmp/tree/sparse" bs=1 seek=6000000 conv=notrunc status=none
ln -s random "$tmp/tree/link"
ln -s sub "$tmp/tree/dir"

# ext2 and ext3 map files with indirect blocks (1 KiB blocks: up to triple indirect for 8M),
# ext4 with extents (4 KiB blocks).
mke2fs -q -F -t ext2 -d "$tmp/tree" "$tmp/ext2.img" 32M
mke2fs -q -F -t ext3 -d "$tmp/tree" "$tmp/ext3.img" 32M
mke2fs -q -F -t ext4 -b 4096 -d "$tmp/tree" "$tmp/ext4.img" 32M

# served_like_nbdkit ARGS...: our export (copied by nbdcopy, which follows our block status) is
# nbdkit's (copied with --no-extents: nbdkit 1.32's ext2 filter passes block status through to
# the plugin, so it reports the filesystem image's holes, not the file's, and nbdcopy would skip
# data). Leaves our server running and our copy in $tmp/ours.out.
served_like_nbdkit() {
    start_nbdkit "$@"
    start_server "$@"
    rm -f "$tmp/nbdkit.out" "$tmp/ours.out"
    nbdcopy --no-extents "$peer_uri" "$tmp/nbdkit.out"
    nbdcopy "$uri" "$tmp/ours.out"
    same_file "$tmp/nbdkit.out" "$tmp/ours.out"
}

for kind in ext2 ext3 ext4; do
    for file in /random /sparse /sub/inner /dir/inner; do
        served_like_nbdkit -r --filter=ext2 file "$tmp/$kind.img" ext2file=$file
        same_file "$tmp/tree${file/dir/sub}" "$tmp/ours.out"
        echo "$kind $file: the original, as nbdkit serves it"
    done
    # The sparse file's holes are holes (nbdkit 1.32 reports the filesystem image's extents here).
    start_server -r --filter=ext2 file "$tmp/$kind.img" ext2file=/sparse
    nbdinfo --map "$uri" | tee "$tmp/map"
    awk '$1 == 0 && $4 == "hole,zero" && $2 >= 1900000 { ok = 1 } END { exit !ok }' "$tmp/map" ||
        fail "$kind: /sparse does not start with a hole"
    grep -Eq '^ +[0-9]+ +[0-9]+ +0 +data' "$tmp/map" || fail "$kind: no data in /sparse"
done

# Under the partition filter: an ext4 filesystem in the first partition of a disk.
truncate -s 40M "$tmp/disk.img"
echo 'start=2048, type=83' | sfdisk -q "$tmp/disk.img"
mke2fs -q -F -t ext4 -E offset=1048576 -d "$tmp/tree" "$tmp/disk.img" 30M
served_like_nbdkit -r --filter=ext2 --filter=partition file "$tmp/disk.img" partition=1 ext2file=/dir/inner
same_file "$tmp/tree/sub/inner" "$tmp/ours.out"

# ext2file=exportname: the client names the file; nothing is listed; "" is refused.
for server in start_nbdkit start_server; do
    $server -r --filter=ext2 file "$tmp/ext4.img" ext2file=exportname
    nbdinfo --list "$uri" > "$tmp/list"
    ! grep -q '^export=' "$tmp/list" || fail "$server: exports listed under ext2file=exportname"
    nbdcopy "nbd+unix:///sub/inner?socket=$sock" "$tmp/inner.out"
    same_file "$tmp/tree/sub/inner" "$tmp/inner.out"
    TREE="$tmp/tree" SOCK="$sock" nbdsh -c '
import os
h.set_export_name("/random")
h.connect_unix(os.environ["SOCK"])
want = open(os.environ["TREE"] + "/random", "rb").read()
assert h.get_size() == len(want)
assert h.pread(65536, 1000000) == want[1000000:1065536]
' || fail "$server: export name /random"
    expect_fail nbdinfo --size "$uri" 2>/dev/null
done
grep -q 'default export' "$server_log" || fail "no message for the default export"

# Writes in place, into holes and over data, and zeroes over a hole and data, through qemu-io and
# nbdcopy; the same through nbdkit.
random_file "$tmp/new-inner" 100K
for kind in ext2 ext4; do
    for server in start_nbdkit start_server; do
        cp "$tmp/$kind.img" "$tmp/w.img"
        $server --filter=ext2 file "$tmp/w.img" ext2file=/sparse
        qemu-io -f raw "$uri" -c 'write -P 0x55 4096 65536' -c 'write -P 0xaa 1999998 4' \
            -c 'write -P 0x11 7000000 1M' -c 'write -z 5990000 18192' -c flush >/dev/null
        stop_server "$server_pid"
        $server --filter=ext2 file "$tmp/w.img" ext2file=/dir/inner
        nbdcopy "$tmp/new-inner" "$uri"
        stop_server "$server_pid"
        # Only ours is checked: nbdkit writes the bitmaps of blocks it allocated only when the
        # connection closes, and not always before it exits (e2fsck then finds differences).
        if [ $server = start_server ]; then
            e2fsck -fn "$tmp/w.img" > "$tmp/fsck" 2>&1 || { cat "$tmp/fsck"; fail "$kind: e2fsck"; }
        fi
        debugfs -R "dump /sparse $tmp/sparse.$server" "$tmp/w.img" 2>/dev/null
        debugfs -R "dump /sub/inner $tmp/inner.$server" "$tmp/w.img" 2>/dev/null
        same_file "$tmp/new-inner" "$tmp/inner.$server"
    done
    python3 - "$tmp/tree/sparse" "$tmp/sparse.expect" <<'PY'
import sys
d = bytearray(open(sys.argv[1], "rb").read())
d[4096:4096 + 65536] = b"\x55" * 65536
d[1999998:2000002] = b"\xaa" * 4
d[7000000:7000000 + (1 << 20)] = b"\x11" * (1 << 20)
d[5990000:6008192] = bytes(18192)
open(sys.argv[2], "wb").write(d)
PY
    same_file "$tmp/sparse.expect" "$tmp/sparse.start_server"
    same_file "$tmp/sparse.start_nbdkit" "$tmp/sparse.start_server"
    echo "$kind: writes in place and into holes, as nbdkit writes them; e2fsck clean"
done

# Trim deallocates the whole blocks of the range in extent-mapped files (nbdkit has no trim);
# files mapped by indirect blocks do not offer it.
cp "$tmp/ext4.img" "$tmp/t.img"
free() { dumpe2fs -h "$1" 2>/dev/null | awk '/^Free blocks:/ { print $3 }'; }
before=$(free "$tmp/t.img")
start_server --filter=ext2 file "$tmp/t.img" ext2file=/random
qemu-io -f raw "$uri" -c 'discard 1000000 1048576' -c flush >/dev/null
stop_server "$server_pid"
e2fsck -fn "$tmp/t.img" > "$tmp/fsck" 2>&1 || { cat "$tmp/fsck"; fail "e2fsck after trim"; }
[ "$(free "$tmp/t.img")" -eq $((before + 255)) ] || fail "trim freed $(($(free "$tmp/t.img") - before)) blocks, want 255"
debugfs -R "dump /random $tmp/trimmed" "$tmp/t.img" 2>/dev/null
python3 - "$tmp/tree/random" "$tmp/trimmed" <<'PY'
import sys
d = bytearray(open(sys.argv[1], "rb").read())
d[1003520:1003520 + (255 << 12)] = bytes(255 << 12)   # blocks 245..499, the whole ones
assert open(sys.argv[2], "rb").read() == d, "trimmed file differs"
PY
start_server --filter=ext2 file "$tmp/ext2.img" ext2file=/random
[ "$(nbdsh -u "$uri" -c 'print(h.can_trim())')" = False ] || fail "trim offered for an indirect-mapped file"

# What is not a regular file is refused when the client connects, by both servers.
for file in /missing /sub /link /random/x; do
    start_nbdkit -r --filter=ext2 file "$tmp/ext4.img" ext2file=$file
    expect_fail nbdinfo --size "$uri" 2>/dev/null
    start_server -r --filter=ext2 file "$tmp/ext4.img" ext2file=$file
    expect_fail nbdinfo --size "$uri" 2>/dev/null
    case $file in
        /missing) why='not found' ;;
        /sub) why='not a regular file (a directory)' ;;
        /link) why='not a regular file (a symbolic link' ;;
        *) why='not a directory' ;;
    esac
    grep -F "ext2: $file: " "$server_log" | grep -qF "$why" || fail "$file: no message saying '$why'"
done

# A journal needing recovery: served read-only, with a warning.
cp "$tmp/ext3.img" "$tmp/dirty.img"
debugfs -w -R "feature needs_recovery" "$tmp/dirty.img" 2>/dev/null
dumpe2fs -h "$tmp/dirty.img" 2>/dev/null | grep -q needs_recovery || fail "could not mark the journal"
start_server --filter=ext2 file "$tmp/dirty.img" ext2file=/random
[ "$(nbdsh -u "$uri" -c 'print(h.is_read_only())')" = True ] || fail "a dirty journal served writable"
nbdcopy "$uri" "$tmp/dirty.out"
same_file "$tmp/tree/random" "$tmp/dirty.out"
grep -q 'journal needs recovery' "$server_log" || fail "no warning about the journal"

# A read-only-compatible feature libext2fs does not know: served read-only (nbdkit refuses).
cp "$tmp/ext2.img" "$tmp/rocompat.img"
python3 - "$tmp/rocompat.img" <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(1024 + 100)
    flags = struct.unpack("<I", f.read(4))[0]
    f.seek(1024 + 100)
    f.write(struct.pack("<I", flags | 0x40000000))
PY
start_server --filter=ext2 file "$tmp/rocompat.img" ext2file=/random
[ "$(nbdsh -u "$uri" -c 'print(h.is_read_only())')" = True ] || fail "an unknown ro_compat feature served writable"
nbdcopy "$uri" "$tmp/rocompat.out"
same_file "$tmp/tree/random" "$tmp/rocompat.out"
grep -q 'unsupported read-only feature.*serving /random read-only' "$server_log" || fail "no warning about the feature"

bad_args --filter=ext2 file "$tmp/ext4.img" -- ext2file
bad_args --filter=ext2 file "$tmp/ext4.img" ext2file=random -- ext2file=random "absolute path"
bad_args --filter=ext2 file "$tmp/ext4.img" ext2file=/a ext2file=/b -- ext2file=/b
echo OK
