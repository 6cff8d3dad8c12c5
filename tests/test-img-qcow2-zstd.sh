#!/usr/bin/env bash
# qcow2 images with zstd-compressed clusters (compression_type=zstd, which imago refuses and
# nbdforge-img reads with its own driver): `qemu-img convert -c -o compression_type=zstd` of
# random data, zero runs and holes, alone and as the backing file of an ordinary qcow2 image.
# nbdforge-img and qemu-nbd serve each on the same command line (-r, then -s with a write
# session through qemu-io); `qemu-img compare` finds the exports identical and `nbdinfo --map`
# (base:allocation) and, with -A, `--map=qemu:allocation-depth` agree. A hostile header is
# refused before listening, naming the field.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"

qemu-img create -q -f raw data.raw 48M
head -c 6M /dev/urandom > random.bin
dd if=random.bin of=data.raw bs=1M seek=2 conv=notrunc status=none
qemu-io -f raw -c 'write -P 0x11 16M 3M' -c 'write -P 0 20M 2M' -c 'write -P 0x12 47M 1000' data.raw >/dev/null
qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd data.raw zstd.qcow2
qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd,cluster_size=4k data.raw zstd4k.qcow2
qemu-img info --output=json zstd.qcow2 | grep -q '"compression-type": "zstd"' || fail "zstd.qcow2 is not zstd"
# An ordinary qcow2 image (imago's) over the zstd one: the chain is read by the own driver.
qemu-img create -q -f qcow2 -b zstd.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 0x33 3M 1M' -c 'write -z 17M 64k' top.qcow2 >/dev/null

# The writes of the -s sessions.
session=(-c 'write -P 0xa1 1000 70000' -c 'write -z 2M 100k' -c 'write -P 0xa2 33M 4k')

same_image_as_qemu_nbd zstd.qcow2 -r -A
same_image_as_qemu_nbd zstd4k.qcow2 -r -A
same_image_as_qemu_nbd top.qcow2 -r -A
same_image_as_qemu_nbd zstd.qcow2 -s -A
# The data is the data converted: the raw file itself.
start_img -t -e 0 -f qcow2 -r zstd.qcow2
qemu-img compare -f raw -F raw data.raw "$uri" || fail "zstd.qcow2 does not read as data.raw"
grep -q 'HOLE\|hole' ours.map || fail "no hole in the map: the test data has none"
# A hostile header (an L1 table too small for the disk): exit 1 before listening, naming the
# file and the field.
cp zstd.qcow2 bad.qcow2
printf '\0\0\0\0' | dd of=bad.qcow2 bs=1 seek=36 conv=notrunc status=none
expect_fail "$NBDFORGE_IMG" -r -k "$tmp/bad.sock" -f qcow2 bad.qcow2 2> bad.err
grep -q 'bad.qcow2: qcow2: l1_size 0 is too small' bad.err || fail "unclear error: $(cat bad.err)"
