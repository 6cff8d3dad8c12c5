#!/usr/bin/env bash
# The floppy plugin read with real tools, no mount: a directory tree with long, Unicode and
# clashing names (renamed as documented), subdirectories, empty and odd-sized files and a directory of several clusters is
# served as a disk with one FAT32 partition at 1 MiB; sfdisk sees it, blkid finds the label,
# fsck.fat -n finds nothing to fix, and mtools copies back every file and directory identical to
# the originals (from a copy of the whole disk and through --filter=partition). size= makes the
# disk that size with free space; label= is what blkid shows. The files are read when the client
# reads them (a change to a file after start-up is seen); the disk is read-only.
source "$(dirname "$0")/lib/functions.sh"
export LC_ALL=C.UTF-8

src=$tmp/src
mkdir -p "$src/sub/deeper/deepest" "$src/many" "$src/empty dir"
printf 'hello\n' > "$src/hello.txt"
printf 'upper\n' > "$src/README.TXT"
printf 'lower\n' > "$src/readme.txt"          # the same name but for case: renamed readme~1.txt
printf 'colon\n' > "$src/a:b"                  # a character FAT forbids: stored as a_b
printf 'x' > "$src/x"
: > "$src/empty"
head -c 511 /dev/urandom > "$src/sub/511"
head -c 512 /dev/urandom > "$src/sub/512"
head -c 513 /dev/urandom > "$src/sub/513"
random_file "$src/A long file name with spaces.bin" 1M
random_file "$src/sub/deeper/deepest/big.data" 5M
printf 'unicode\n' > "$src/héllo wörld ✓.txt"
printf 'dots\n' > "$src/archive.tar.gz"
printf 'hidden\n' > "$src/.hidden"
for i in $(seq 1 300); do printf '%d\n' "$i" > "$src/many/a file with a long name number $i.txt"; done
ln -s hello.txt "$src/a symlink"               # left out, as nbdkit does
mkfifo "$src/a fifo"

# check_image IMAGE LABEL: the partition, label, fsck and every file of $src, from IMAGE.
check_image() {
    local img=$1 label=$2
    sfdisk --dump "$img" | tee "$tmp/dump"
    grep -q "img1 : start= *2048, size= *[0-9]*, type=c$" "$tmp/dump" || fail "no FAT32 partition at 1 MiB"
    [ "$(grep -c 'img[0-9] :' "$tmp/dump")" -eq 1 ] || fail "more than one partition"
    blkid -p -O 1048576 "$img" | tee "$tmp/blkid"
    grep -q "LABEL=\"$label\"" "$tmp/blkid" || fail "blkid: label is not $label"
    grep -q 'TYPE="vfat"' "$tmp/blkid" && grep -q 'VERSION="FAT32"' "$tmp/blkid" || fail "blkid: not FAT32"
    rm -f "$tmp/part.img"
    dd if="$img" of="$tmp/part.img" bs=1M skip=1 status=none
    fsck.fat -n -v "$tmp/part.img" > "$tmp/fsck" 2>&1 || { cat "$tmp/fsck"; fail "fsck.fat -n failed"; }
    ! grep -qi "warning\|fix\|wrong\|invalid\|differ" "$tmp/fsck" || { cat "$tmp/fsck"; fail "fsck.fat complains"; }
    tail -1 "$tmp/fsck"
    mdir -i "$img@@1M" -/ :: > "$tmp/mdir" || fail "mdir failed"
    grep -q "A long file name with spaces.bin" "$tmp/mdir" || fail "mdir does not show the long name"
    rm -rf "$tmp/out"
    mkdir "$tmp/out"
    mcopy -s -n -m -i "$img@@1M" '::/*' '::/.hidden' "$tmp/out/" || fail "mcopy failed"
    [ "$(cat "$tmp/out/readme~1.txt")" = lower ] || fail "readme.txt is not readme~1.txt"
    [ "$(cat "$tmp/out/a_b")" = colon ] || fail "a:b is not a_b"
    mv "$tmp/out/readme~1.txt" "$tmp/out/readme.txt"
    mv "$tmp/out/a_b" "$tmp/out/a:b"
    [ ! -e "$tmp/out/a symlink" ] && [ ! -e "$tmp/out/a fifo" ] || fail "a symlink or FIFO is on the disk"
    diff -r -x 'a symlink' -x 'a fifo' "$src" "$tmp/out" || fail "the files copied back differ from the originals"
    echo "all files and directories identical"
}

start_server floppy "$src"
nbdsh -u "$uri" -c 'assert h.is_read_only() and h.can_multi_conn()' || fail "not read-only with multi-conn"
expect_fail nbdsh -u "$uri" -c 'h.pwrite(b"x", 0)'
nbdcopy "$uri" "$tmp/disk.img"
first_uri=$uri
check_image "$tmp/disk.img" NBDKITFLOPY
grep -q "^     65536 data clusters" "$tmp/fsck" || fail "want the smallest FAT32 size, 65536 clusters"

# Through the partition filter, the partition alone.
start_server -r --filter=partition floppy "$src" partition=1
rm -f "$tmp/p1.img"
nbdcopy "$uri" "$tmp/p1.img"
[ "$(mdir -i "$tmp/p1.img" -b ::/sub)" = "$(mdir -i "$tmp/disk.img@@1M" -b ::/sub)" ] || fail "partition=1 differs"
cmp "$tmp/p1.img" "$tmp/part.img" || fail "partition=1 is not the partition"
stop_server "$server_pid"

# The data is read from the files when asked for: rewrite a file (same size) and read it again.
printf 'HELLO\n' > "$src/hello.txt"
rm -f "$tmp/disk2.img"
nbdcopy "$first_uri" "$tmp/disk2.img"
[ "$(mtype -i "$tmp/disk2.img@@1M" ::/hello.txt)" = HELLO ] || fail "the file was not read again"
printf 'hello\n' > "$src/hello.txt"

# size= and label=.
start_server floppy "$src" size=100M label='My Disk 1'
[ "$(nbdinfo --size "$uri")" -eq 104857600 ] || fail "size=100M: $(nbdinfo --size "$uri")"
rm -f "$tmp/disk.img"
nbdcopy "$uri" "$tmp/disk.img"
stop_server "$server_pid"
check_image "$tmp/disk.img" 'My Disk 1'
free=$(mdir -i "$tmp/disk.img@@1M" :: | awk '/bytes free/ { gsub(/ /, ""); print $1 }' | tr -d 'bytesfre')
[ "$free" -gt 90000000 ] || fail "size=100M: only $free bytes free"
echo OK
