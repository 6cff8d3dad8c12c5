#!/usr/bin/env bash
# The floppy plugin against nbdkit's for the same directory: mtools copies the same tree with
# the same contents out of both disks, and the layout facts agree: an MBR with one type 0x0c
# partition at 1 MiB and a zero disk signature, a FAT32 volume with the same label, volume ID
# and OEM name, 32 reserved sectors, two FATs, media byte 0xf8, root directory in cluster 2.
# With size= both disks are exactly that size.
#
# Not compared byte for byte: nbdkit 1.32 writes 0 heads and sectors per track (mtools refuses
# the disk; the test patches its copy), gives an empty file the first cluster of the next file
# (fsck.fat truncates that file; the test has no empty file here, test-floppy-mtools.sh has),
# and without size= makes volumes of a few clusters, which mtools reads as FAT12. Our volumes
# have at least 65,536 clusters (smaller ones are FAT16 by definition), so size=1200M here.
source "$(dirname "$0")/lib/functions.sh"
export LC_ALL=C.UTF-8

src=$tmp/src
mkdir -p "$src/sub/deeper"
printf 'hello\n' > "$src/hello.txt"
random_file "$src/A long file name with spaces.bin" 300K
printf 'y\n' > "$src/sub/deeper/y.TXT"
for i in $(seq 1 40); do head -c $((i * 97)) /dev/urandom > "$src/sub/file number $i"; done

copy_out() {   # copy_out IMAGE: the disk served now, into IMAGE
    rm -f "$1"
    nbdcopy "$uri" "$1"
    stop_server "$server_pid"
}
start_server floppy "$src" size=1200M label=SAMELABEL
copy_out "$tmp/ours.img"
start_reference floppy "$src" size=1200M label=SAMELABEL
copy_out "$tmp/theirs.img"
[ "$(stat -c %s "$tmp/ours.img")" -eq "$(stat -c %s "$tmp/theirs.img")" ] || fail "sizes differ"
[ "$(stat -c %s "$tmp/ours.img")" -eq $((1200 * 1048576)) ] || fail "size=1200M not honoured"

python3 - "$tmp/ours.img" "$tmp/theirs.img" <<'PY' || fail "the layout facts differ"
import struct, sys

def facts(path):
    with open(path, "r+b") as f:
        mbr = f.read(512)
        f.seek(1048576)
        boot = f.read(512)
        if path.endswith("theirs.img"):     # nbdkit 1.32's 0 heads and sectors: patch for mtools
            f.seek(1048576 + 24)
            f.write(struct.pack("<HH", 63, 255))
    part = mbr[446:462]
    return {
        "disk signature": mbr[440:444], "mbr signature": mbr[510:],
        "partition type": part[4], "partition start": struct.unpack_from("<I", part, 8)[0],
        "other partitions": mbr[462:510],
        "oem": boot[3:11], "bytes per sector": boot[11:13], "reserved sectors": boot[14:16],
        "fats": boot[16], "root entries": boot[17:19], "media": boot[21],
        "root cluster": boot[44:48], "fsinfo sector": boot[48:50], "backup boot": boot[50:52],
        "ext signature": boot[66], "volume id": boot[67:71], "label": boot[71:82],
        "fs type": boot[82:90], "boot signature": boot[510:],
    }

ours, theirs = facts(sys.argv[1]), facts(sys.argv[2])
for k in ours:
    print("%-18s %r" % (k, ours[k]))
    assert ours[k] == theirs[k], (k, ours[k], theirs[k])
PY

for side in ours theirs; do
    mkdir "$tmp/$side"
    mcopy -s -n -m -i "$tmp/$side.img@@1M" '::/*' "$tmp/$side/" || fail "mcopy from $side"
    (cd "$tmp/$side" && find . | sort) > "$tmp/$side.list"
    blkid -p -O 1048576 -o export "$tmp/$side.img" | grep -E '^(LABEL|UUID|TYPE|VERSION)=' > "$tmp/$side.blkid"
done
diff -u "$tmp/theirs.list" "$tmp/ours.list" || fail "the file lists differ"
diff -r "$tmp/theirs" "$tmp/ours" || fail "the contents differ from nbdkit's"
diff -r "$src" "$tmp/ours" || fail "the contents differ from the originals"
diff -u "$tmp/theirs.blkid" "$tmp/ours.blkid" || fail "blkid sees different volumes"
cat "$tmp/ours.blkid"
echo "same files, contents and layout facts as nbdkit: $(wc -l < "$tmp/ours.list") names"
