#!/usr/bin/env bash
# The partitioning plugin with an MBR: the disk is byte for byte nbdkit's for the same command
# line (nbdkit's MBR has a zero disk signature, so it is deterministic), sfdisk sees one
# partition per file (logical ones behind an extended partition past four files), and each
# partition holds its file: read from a copy of the whole disk at the offsets sfdisk reports, and
# through --filter=partition with nbdcopy and qemu-img compare.
source "$(dirname "$0")/lib/functions.sh"

head -c 1000000 /dev/urandom > "$tmp/a"      # not a whole number of sectors: padded
random_file "$tmp/b" 2M
printf hello > "$tmp/c"
for i in 1 2 3 4 5 6; do head -c $((i * 1000 + 7)) /dev/urandom > "$tmp/p$i"; done

# partition_data IMAGE N: partition N's bytes as sfdisk places them in IMAGE.
partition_data() {
    local line start size
    line=$(sfdisk --dump "$1" | grep "^$1$2 :")
    start=$(sed 's/.*start= *\([0-9]*\).*/\1/' <<< "$line")
    size=$(sed 's/.*size= *\([0-9]*\).*/\1/' <<< "$line")
    dd if="$1" bs=512 skip="$start" count="$size" status=none
}

# check_partitions FILE...: in $tmp/ours.img, partition k (logical ones from 5) holds FILE k,
# padded with zeroes to a whole sector; and --filter=partition partition=k serves the same (the
# disk served with partition-type=mbr).
check_partitions() {
    local files=("$@") n=0 number f
    for f in "${files[@]}"; do
        n=$((n + 1))
        number=$n
        if [ ${#files[@]} -gt 4 ] && [ "$n" -ge 4 ]; then number=$((n + 1)); fi
        cp "$f" "$tmp/padded"
        truncate -s %512 "$tmp/padded"
        partition_data "$tmp/ours.img" "$number" > "$tmp/part"
        cmp "$tmp/part" "$tmp/padded" || fail "partition $number is not $f"
        start_server -r --filter=partition partitioning partition="$number" partition-type=mbr "${files[@]}"
        [ "$(nbdinfo --size "$uri")" -eq "$(stat -c %s "$tmp/padded")" ] || fail "partition $number: size"
        rm -f "$tmp/filtered"
        nbdcopy "$uri" "$tmp/filtered"
        cmp "$tmp/filtered" "$tmp/padded" || fail "partition=$number over our plugin is not $f"
        qemu-img compare -q -f raw -F raw "$uri" "$f" || fail "qemu-img: partition $number differs from $f"
        stop_server "$server_pid"
    done
}

same_as_nbdkit partitioning "$tmp/a" "$tmp/b" "$tmp/c"
sfdisk --dump "$tmp/ours.img"
[ "$(sfdisk --dump "$tmp/ours.img" | grep -c "^$tmp/ours.img[0-9]")" -eq 3 ] || fail "want 3 partitions"
sfdisk --dump "$tmp/ours.img" | grep -q '^label: dos' || fail "not an MBR disk"
sfdisk --dump "$tmp/ours.img" | grep -q "ours.img1 : start= *2048, size= *1954, type=83, bootable" ||
    fail "partition 1 is not at 1 MiB, 1954 sectors, type 83, bootable"
check_partitions "$tmp/a" "$tmp/b" "$tmp/c"

# Types and alignment per file; the settings apply to the files after them.
same_as_nbdkit partitioning mbr-id=0x82 "$tmp/c" alignment=4096 "$tmp/a" mbr-id=default "$tmp/p1" mbr-id=7 "$tmp/p2"
sfdisk --dump "$tmp/ours.img"
sfdisk --dump "$tmp/ours.img" | grep -q "ours.img1 : .*type=82" || fail "mbr-id=0x82 not applied"
sfdisk --dump "$tmp/ours.img" | grep -q "ours.img2 : start= *2056, .*type=82" || fail "alignment=4096 not applied"
sfdisk --dump "$tmp/ours.img" | grep -q "ours.img3 : .*type=83" || fail "mbr-id=default not applied"
sfdisk --dump "$tmp/ours.img" | grep -q "ours.img4 : .*type=7" || fail "mbr-id=7 not applied"

# More than four files: three primary partitions, an extended one, logical partitions 5 and up.
files=("$tmp/p1" "$tmp/p2" "$tmp/p3" "$tmp/p4" "$tmp/p5" "$tmp/p6")
same_as_nbdkit partitioning partition-type=mbr "${files[@]}"
sfdisk --dump "$tmp/ours.img"
sfdisk --dump "$tmp/ours.img" | grep -q "ours.img4 : .*type=f" || fail "no extended partition"
[ "$(sfdisk --dump "$tmp/ours.img" | grep -c "^$tmp/ours.img[0-9]")" -eq 7 ] || fail "want 7 partitions"
check_partitions "${files[@]}"
same_as_nbdkit partitioning partition-type=dos alignment=512 "${files[@]}" "$tmp/a"
echo OK
