#!/usr/bin/env bash
# Writing the qcow2 images only nbdforge-img's own driver reads (zstd compression, extended L2
# entries): a qemu-io session (partial and whole clusters, writes over compressed clusters and
# over the backing file, write-zeroes with and without unmap at cluster and subcluster
# granularity, discard, flush) goes through nbdforge-img and, on a copy, through qemu-nbd, both
# with --discard=unmap. Afterwards `qemu-img check` finds each image clean and `qemu-img compare`
# finds it equal to qemu-nbd's, allocated alike (`qemu-img map`: data, zeroes, compressed,
# depth). The images: zstd-compressed data, extended L2 over a raw and a qcow2 backing file, an
# ordinary qcow2 image over a zstd one, small clusters with 64-bit and 1-bit refcounts (the
# refcount table fills up and moves), and an image with persistent dirty bitmaps, which record
# the writes as qemu-nbd's do (`qemu-nbd -B` reads them back). Then fio's nbd engine writes and
# verifies on a fresh zstd image, an extended-L2 image over a backing file and the zstd image
# written before, and the checks are clean again.
# timeout: 300
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"

qemu-img create -q -f raw base.raw 64M
head -c 8M /dev/urandom > random.bin
dd if=random.bin of=base.raw bs=1M seek=1 conv=notrunc status=none
qemu-io -f raw -c 'write -P 0x12 40M 1M' base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2
qemu-io -c 'write -P 0x21 5M 2M' mid.qcow2 >/dev/null
qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd base.raw zstd.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on -b base.raw -F raw sub-raw.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=32k -b mid.qcow2 -F qcow2 sub-mid.qcow2
qemu-io -c 'write -P 0x31 6M 100k' -c 'write -z 7M 6k' -c 'write -c -P 0x32 8M 64k' sub-mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compression_type=zstd,cluster_size=512,refcount_bits=64 small64.qcow2 64M
qemu-img create -q -f qcow2 -o compression_type=zstd,cluster_size=4k,refcount_bits=1 small1.qcow2 64M
# An ordinary qcow2 image over a zstd one: imago refuses the chain, the own driver writes it.
cp zstd.qcow2 zbase.qcow2
qemu-img create -q -f qcow2 -b zbase.qcow2 -F qcow2 over-zstd.qcow2
# Persistent dirty bitmaps: two enabled (64k and 512k granularity), one disabled.
qemu-img create -q -f qcow2 -o extended_l2=on,compression_type=zstd bitmaps.qcow2 64M
qemu-img bitmap --add bitmaps.qcow2 b0
qemu-img bitmap --add -g 512k bitmaps.qcow2 b1
qemu-img bitmap --add bitmaps.qcow2 b2
qemu-img bitmap --disable bitmaps.qcow2 b2
before=$(md5sum base.raw mid.qcow2 zbase.qcow2)

session=(
    -c 'write -P 0xb1 0 64k'
    -c 'write -P 0xb2 1000 3000'
    -c 'write -z 20001 5000'     # zeroes inside a cluster and across subclusters
    -c 'write -z -u 7M 3k'
    -c 'write -P 0xb3 6M 4M'     # over compressed clusters, over the backing file
    -c 'write -z 2M 1M'          # zero clusters, keeping their space
    -c 'write -z -u 9M 128k'     # zero clusters, freeing it
    -c 'discard 5M 512k'
    -c 'write -P 0xb5 5M 512k'   # what a discarded range reads is unspecified: write it over
    -c 'write -P 0 20M 1M'
    -c 'write -P 0xb4 63M 1k'
    -c 'write -P 0xb6 41M 700'
    -c 'write -P 0xb7 12M 9M'    # enough new clusters to move small64's refcount table
    -c 'flush'
    -c 'read -P 0xb1 0 1000'
    -c 'read -P 0xb3 6M 1M'
    -c 'discard 24M 1M'
)

allocation() {   # allocation FILE: qemu-img map without host offsets, neighbours merged
    qemu-img map --output=json "$1" | python3 -c '
import json, sys
runs = []
for e in json.load(sys.stdin):
    kind = (e["depth"], e["zero"], e["data"], e.get("compressed"))
    if runs and runs[-1][2] == kind and runs[-1][0] + runs[-1][1] == e["start"]:
        runs[-1][1] += e["length"]
    else:
        runs.append([e["start"], e["length"], kind])
for start, length, kind in runs:
    print(start, length, *kind)'
}

header_field() {   # header_field FILE OFFSET: a big-endian u64 of the qcow2 header
    python3 -c 'import sys, struct; f = open(sys.argv[1], "rb"); f.seek(int(sys.argv[2])); print(struct.unpack(">Q", f.read(8))[0])' "$@"
}

for image in zstd.qcow2 sub-raw.qcow2 sub-mid.qcow2 small64.qcow2 small1.qcow2 over-zstd.qcow2 bitmaps.qcow2; do
    cp "$image" "theirs-$image"
    reftable=$(header_field "$image" 48)
    img_session start_img "$image" --discard=unmap
    qemu-img check -q "$image" || fail "$image: qemu-img check is not clean after nbdforge-img"
    img_session start_qemu_nbd "theirs-$image" --discard=unmap
    qemu-img compare -q "$image" "theirs-$image" || fail "$image: differs from qemu-nbd's result"
    # The same allocation too: data, zeroes, compressed, depth (not where clusters are in the file).
    allocation "$image" > ours.alloc
    allocation "theirs-$image" > theirs.alloc
    diff -u theirs.alloc ours.alloc || fail "$image: allocated otherwise than by qemu-nbd"
    if [ "$image" = small64.qcow2 ]; then
        [ "$(header_field "$image" 48)" != "$reftable" ] || fail "$image: the refcount table did not move"
    fi
    echo "clean and same as qemu-nbd: $image"
done
# The bitmaps recorded the writes as qemu-nbd's did (read back by qemu-nbd -B).
for bitmap in b0 b1 b2; do
    for image in bitmaps.qcow2 theirs-bitmaps.qcow2; do
        start_qemu_nbd -t -r -B "$bitmap" "$image"
        nbdinfo --map="qemu:dirty-bitmap:$bitmap" "$uri" > "$image.$bitmap"
        stop_server "$server_pid"
    done
    diff -u "theirs-bitmaps.qcow2.$bitmap" "bitmaps.qcow2.$bitmap" || fail "bitmap $bitmap differs from qemu-nbd's"
    echo "bitmap $bitmap same as qemu-nbd's"
done
grep -q dirty bitmaps.qcow2.b0 || fail "b0 recorded nothing"
grep -q dirty bitmaps.qcow2.b2 && fail "the disabled bitmap b2 recorded writes"
# The zstd image is still zstd, and its untouched clusters still compressed.
qemu-img info --output=json zstd.qcow2 | grep -q '"compression-type": "zstd"' || fail "zstd.qcow2 lost zstd"
qemu-img check zstd.qcow2 | grep -q 'compressed clusters' || fail "zstd.qcow2: no compressed clusters left"

# fio: many requests in flight on one shared image, verified; then clean.
qemu-img create -q -f qcow2 -o compression_type=zstd fresh.qcow2 128M
qemu-img create -q -f raw big.raw 128M
qemu-io -f raw -c 'write -P 0x77 0 96M' big.raw >/dev/null
qemu-img create -q -f qcow2 -o extended_l2=on -b big.raw -F raw over.qcow2
fio_qcow2_check fresh.qcow2 over.qcow2 zstd.qcow2
[ "$(md5sum base.raw mid.qcow2 zbase.qcow2)" = "$before" ] || fail "a backing file changed"
