#!/usr/bin/env bash
# The partition filter on disks laid out by sfdisk: each MBR primary and logical partition and
# each GPT partition reads back exactly the bytes dd cuts from the image (and, where nbdkit 1.32
# supports it, the same as nbdkit); writes land inside the partition; a partition that does not
# exist refuses clients; partition= is required.
source "$(dirname "$0")/lib/functions.sh"

# A 16 MiB image with random data everywhere, so that offsets cannot be confused.
random_file "$tmp/mbr.img" 16M
cp "$tmp/mbr.img" "$tmp/gpt.img"
sfdisk -q "$tmp/mbr.img" <<'TABLE'
label: dos
start=2048, size=4096, type=83
start=8192, size=2048, type=83
start=12288, size=16384, type=5
start=14336, size=2048, type=83
start=18432, size=4096, type=83
TABLE
sfdisk -q "$tmp/gpt.img" <<'TABLE'
label: gpt
start=2048, size=2048
start=6144, size=4096
start=12288, size=8192
TABLE
sfdisk -d "$tmp/mbr.img"
sfdisk -d "$tmp/gpt.img"

# check IMAGE N: serves partition N and compares it with what sfdisk says it is.
check() {
    local img=$1 n=$2 start size
    read -r start size < <(sfdisk -d "$img" | sed -n "s|^$img$n : start= *\([0-9]*\), size= *\([0-9]*\).*|\1 \2|p")
    [ -n "$start" ] || fail "sfdisk does not list partition $n of $img"
    dd if="$img" bs=512 skip="$start" count="$size" status=none > "$tmp/want"
    start_server --filter=partition file "$img" partition="$n"
    rm -f "$tmp/ours.out"
    nbdcopy "$uri" "$tmp/ours.out"
    same_file "$tmp/want" "$tmp/ours.out"
    echo "$img partition $n: $size sectors at $start: ok"
}
for n in 1 2 5 6; do check "$tmp/mbr.img" "$n"; done
for n in 1 2 3; do check "$tmp/gpt.img" "$n"; done

# Where nbdkit 1.32 can (primary and GPT partitions), the same bytes as nbdkit.
same_served_as_nbdkit --filter=partition file "$tmp/mbr.img" partition=2
same_served_as_nbdkit --filter=partition file "$tmp/gpt.img" partition=3

# A write lands at the partition's start (sector 8192 of the MBR image).
start_server --filter=partition file "$tmp/mbr.img" partition=2
nbdsh -u "$uri" -c 'h.pwrite(b"partition two", 0)'
[ "$(dd if="$tmp/mbr.img" bs=512 skip=8192 count=1 status=none | head -c 13)" = "partition two" ] ||
    fail "write did not land at the partition's start"

for n in 3 4 7; do
    start_server --filter=partition file "$tmp/mbr.img" partition=$n
    expect_fail nbdinfo "$uri"
done
start_server --filter=partition file "$tmp/gpt.img" partition=4
expect_fail nbdinfo "$uri"
bad_args --filter=partition file "$tmp/mbr.img" -- partition
bad_args --filter=partition file "$tmp/mbr.img" partition=0 -- partition=0
bad_args --filter=partition file "$tmp/mbr.img" partition=1 partition-sectorsize=1000 -- partition-sectorsize=1000
echo OK
