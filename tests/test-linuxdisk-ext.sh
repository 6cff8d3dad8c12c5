#!/usr/bin/env bash
# The linuxdisk plugin: a GPT disk whose one partition, 1 MiB in, holds an ext2/3/4 file system
# made from a directory. sfdisk verifies the table; e2fsck finds the file system clean; debugfs
# lists the directory and reads the files back; blkid sees the type and label. The disk's size
# for each size= form is nbdkit's, and the disk is read-only, as nbdkit serves it.
#
# Fails against nbdkit 1.32 (NBDFORGE=nbdkit) at the partition type: nbdkit writes its type GUID
# as text (type 36434630-...), not the Linux file system type; the sizes are compared with it.
source "$(dirname "$0")/lib/functions.sh"

mkdir -p "$tmp/root/etc" "$tmp/root/empty" "$tmp/images"
echo "hello from linuxdisk" > "$tmp/root/hello.txt"
random_file "$tmp/root/etc/random.bin" 200K
ln -s hello.txt "$tmp/root/link"
ln "$tmp/root/hello.txt" "$tmp/root/etc/hardlink"
export TMPDIR="$tmp/images"

# check_disk IMAGE TYPE LABEL: the partition table, the file system and the files.
check_disk() {
    local img=$1 type=$2 label=$3
    sfdisk --verify "$img" || fail "$img: sfdisk finds the partition table broken"
    sfdisk -d "$img" > "$img.table"
    grep -q "start= *2048, .*type=0FC63DAF-8483-4772-8E79-3D69D8477DE4" "$img.table" ||
        fail "$img: no Linux partition at sector 2048: $(cat "$img.table")"
    local sectors
    sectors=$(sed -n 's/.*start= *2048, size= *\([0-9]*\),.*/\1/p' "$img.table")
    dd if="$img" of="$img.fs" bs=512 skip=2048 count="$sectors" status=none
    blkid -p "$img.fs" > "$img.blkid"
    grep -q "TYPE=\"$type\"" "$img.blkid" || fail "$img: not $type: $(cat "$img.blkid")"
    grep -q "LABEL=\"$label\"" "$img.blkid" || fail "$img: label is not $label: $(cat "$img.blkid")"
    e2fsck -fn "$img.fs" || fail "$img: e2fsck found errors"
    debugfs -R 'ls -l /' "$img.fs" > "$img.ls" 2>/dev/null
    for f in hello.txt etc empty link lost+found; do
        grep -qw -- "$f" "$img.ls" || fail "$img: / lacks $f: $(cat "$img.ls")"
    done
    [ "$(debugfs -R 'cat /hello.txt' "$img.fs" 2>/dev/null)" = "hello from linuxdisk" ] || fail "$img: hello.txt"
    debugfs -R 'dump /etc/random.bin '"$img.random" "$img.fs" 2>/dev/null
    same_file "$img.random" "$tmp/root/etc/random.bin"
    [ "$(debugfs -R 'stat /link' "$img.fs" 2>/dev/null | grep -c 'Fast link dest: "hello.txt"')" = 1 ] ||
        fail "$img: the symbolic link is lost"
    local inode1 inode2
    inode1=$(debugfs -R 'ls -l /' "$img.fs" 2>/dev/null | awk '$NF == "hello.txt" { print $1 }')
    inode2=$(debugfs -R 'ls -l /etc' "$img.fs" 2>/dev/null | awk '$NF == "hardlink" { print $1 }')
    [ -n "$inode1" ] && [ "$inode1" = "$inode2" ] || fail "$img: the hard link is lost ($inode1, $inode2)"
}

start_server linuxdisk "$tmp/root" label=ROOTFS
[ "$(nbdinfo --is read_only "$uri"; echo $?)" = 0 ] || fail "the disk is not read-only"
expect_fail nbdsh -u "$uri" -c 'h.pwrite(b"x", 0)'
nbdcopy "$uri" "$tmp/ext2.img"
stop_server "$server_pid"
[ -z "$(ls "$tmp/images")" ] || fail "the temporary image was left behind"
check_disk "$tmp/ext2.img" ext2 ROOTFS

for type in ext3 ext4; do
    start_server linuxdisk dir="$tmp/root" type=$type label=L-$type
    nbdcopy "$uri" "$tmp/$type.img"
    stop_server "$server_pid"
    check_disk "$tmp/$type.img" $type L-$type
done

# The disk's size: the estimate, size=, size=+: the same as nbdkit's.
for args in "" "type=ext4" "size=20M" "size=+5M" "type=ext3 size=+1M" "size=3000001"; do
    # shellcheck disable=SC2086
    start_server linuxdisk "$tmp/root" $args
    ours=$(nbdinfo --size "$uri")
    stop_server "$server_pid"
    # shellcheck disable=SC2086
    start_reference linuxdisk "$tmp/root" $args
    theirs=$(nbdinfo --size "$uri")
    stop_server "$server_pid"
    echo "linuxdisk $args: $ours bytes"
    [ "$ours" = "$theirs" ] || fail "linuxdisk $args: size $ours, nbdkit's $theirs"
done
[ "$ours" -eq $((1048576 + 3000320 + 33 * 512)) ] || fail "size=3000001: $ours"

bad_args linuxdisk -- "dir=<DIRECTORY>"
bad_args linuxdisk "$tmp/nonexistent" -- "dir=$tmp/nonexistent"
bad_args linuxdisk "$tmp/root" type=xfs -- "type=xfs"
bad_args linuxdisk "$tmp/root" size=12Q -- "size=12Q"
bad_args linuxdisk "$tmp/root" size=10K -- "size=10K" mke2fs
bad_args linuxdisk "$tmp/root" label=seventeen-letters -- "label=seventeen-letters"
[ -z "$(ls "$tmp/images")" ] || fail "a failed start left an image behind"
# --help describes the parameters; --dump-plugin names the plugin and its magic key.
"${server_cmd[@]}" linuxdisk --help > "$tmp/help"
grep -q -- 'label=' "$tmp/help" || fail "linuxdisk --help does not describe label="
"${server_cmd[@]}" linuxdisk --dump-plugin > "$tmp/dump"
grep -qx 'name=linuxdisk' "$tmp/dump" || fail "linuxdisk --dump-plugin"
grep -qx 'magic_config_key=dir' "$tmp/dump" || fail "linuxdisk --dump-plugin: the magic key is not dir"
echo OK
