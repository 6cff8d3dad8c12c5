#!/usr/bin/env bash
# The partitioning plugin with GPT: the disk is nbdkit's for the same command line except for the
# unique partition GUIDs, which both make at random, and the CRCs that cover them (the images are
# compared byte for byte with those fields masked, after checking every CRC); sfdisk reads the
# same table from both, with the types, names, attributes and sizes nbdkit gives; each partition
# holds its file, through --filter=partition and qemu-img compare; past 128 files the entry array
# grows as nbdkit's does.
source "$(dirname "$0")/lib/functions.sh"

head -c 1000000 /dev/urandom > "$tmp/a"
random_file "$tmp/b" 2M
printf hello > "$tmp/c"

# same_gpt_as_nbdkit ARGS...: both images valid GPT, equal but for the unique GUIDs and CRCs.
same_gpt_as_nbdkit() {
    rm -f "$tmp/ours.img" "$tmp/theirs.img"
    start_server -r partitioning "$@"
    nbdcopy "$uri" "$tmp/ours.img"
    stop_server "$server_pid"
    start_reference -r partitioning "$@"
    nbdcopy "$uri" "$tmp/theirs.img"
    stop_server "$server_pid"
    python3 - "$tmp/ours.img" "$tmp/theirs.img" <<'PY' || fail "$*: the GPT disk differs from nbdkit's"
import struct, sys, zlib

def masked(path):
    d = bytearray(open(path, "rb").read())
    for lba in (1, len(d) // 512 - 1):
        assert d[lba * 512:lba * 512 + 8] == b"EFI PART", (path, lba)
        h = d[lba * 512:lba * 512 + struct.unpack_from("<I", d, lba * 512 + 12)[0]]
        entries_lba, count, size, array_crc = struct.unpack_from("<QIII", h, 72)
        crc = struct.unpack_from("<I", h, 16)[0]
        assert zlib.crc32(bytes(h[:16]) + b"\0" * 4 + bytes(h[20:])) == crc, (path, lba, "header CRC")
        array = entries_lba * 512
        assert zlib.crc32(bytes(d[array:array + count * size])) == array_crc, (path, lba, "array CRC")
        for i in range(count):
            d[array + i * size + 16:array + i * size + 32] = bytes(16)
        d[lba * 512 + 16:lba * 512 + 20] = bytes(4)
        d[lba * 512 + 88:lba * 512 + 92] = bytes(4)
    return d

ours, theirs = masked(sys.argv[1]), masked(sys.argv[2])
assert len(ours) == len(theirs), (len(ours), len(theirs))
if ours != theirs:
    first = next(i for i in range(len(ours)) if ours[i] != theirs[i])
    sys.exit("first difference at byte %d" % first)
PY
    sfdisk --dump "$tmp/ours.img" | sed 's/uuid=[^,]*, //; s|[^ ]*ours.img|X|' > "$tmp/ours.dump"
    sfdisk --dump "$tmp/theirs.img" | sed 's/uuid=[^,]*, //; s|[^ ]*theirs.img|X|' > "$tmp/theirs.dump"
    diff -u "$tmp/theirs.dump" "$tmp/ours.dump" || fail "$*: sfdisk reads another table"
    cat "$tmp/ours.dump"
    echo "same GPT as nbdkit ($(stat -c %s "$tmp/ours.img") bytes)"
}

same_gpt_as_nbdkit partition-type=gpt "$tmp/a" "$tmp/b" "$tmp/c"
grep -q '^label: gpt' "$tmp/ours.dump" || fail "not GPT"
grep -q '^X1 : start= *2048, size= *1954, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=".*/a", attrs="LegacyBIOSBootable"' \
    "$tmp/ours.dump" || fail "partition 1: not at 1 MiB, Linux, named after its file, bootable"
# Two reads of the same disk see the same GUIDs (they are made once).
start_server -r partitioning partition-type=gpt "$tmp/a" "$tmp/b" "$tmp/c"
[ "$(nbdcopy "$uri" - | sha1sum)" = "$(nbdcopy "$uri" - | sha1sum)" ] || fail "the GUIDs change between reads"
sfdisk --verify "$tmp/ours.img" 2>&1 | tee "$tmp/verify"
grep -qi "no errors detected" "$tmp/verify" || fail "sfdisk --verify finds errors"
stop_server "$server_pid"

for n in 1 2 3; do
    f=$tmp/$(echo a b c | cut -d' ' -f$n)
    start_server -r --filter=partition partitioning partition=$n partition-type=gpt "$tmp/a" "$tmp/b" "$tmp/c"
    [ "$(nbdinfo --size "$uri")" -eq $(( ($(stat -c %s "$f") + 511) / 512 * 512 )) ] || fail "partition $n: size"
    qemu-img compare -q -f raw -F raw "$uri" "$f" || fail "qemu-img: partition $n differs from $f"
    stop_server "$server_pid"
done

# More than four files is GPT by default; type-guid= and alignment= apply to the files after them.
for i in 1 2 3 4 5; do head -c $((i * 999)) /dev/urandom > "$tmp/p$i"; done
same_gpt_as_nbdkit "$tmp/p1" type-guid=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F "$tmp/p2" alignment=4k \
    "$tmp/p3" type-guid=default "$tmp/p4" type-guid={c12a7328-f81f-11d2-ba4b-00a0c93ec93b} "$tmp/p5"
grep -q 'X2 : .*type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F' "$tmp/ours.dump" || fail "type-guid not applied"
grep -q 'X4 : .*type=0FC63DAF-8483-4772-8E79-3D69D8477DE4' "$tmp/ours.dump" || fail "type-guid=default"
grep -q 'X5 : .*type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B' "$tmp/ours.dump" || fail "braced type-guid"

# 130 partitions: the entry array takes 256 entries (64 sectors) at each end.
files=()
for i in $(seq 1 130); do printf "partition %d\n" "$i" > "$tmp/q$i"; files+=("$tmp/q$i"); done
same_gpt_as_nbdkit alignment=512 "${files[@]}"
grep -q '^first-lba: 66$' "$tmp/ours.dump" || fail "the entry array did not grow to 64 sectors"
[ "$(grep -c '^X[0-9]' "$tmp/ours.dump")" -eq 130 ] || fail "want 130 partitions"
echo OK
