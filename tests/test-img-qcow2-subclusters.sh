#!/usr/bin/env bash
# qcow2 images with extended L2 entries (extended_l2=on: 32 subclusters a cluster, which imago
# refuses and nbdforge-img reads with its own driver), over a raw and over a qcow2 backing file,
# with 64k and 32k clusters: qemu-io writes partial clusters and write-zeroes at subcluster
# granularity (2k and 1k subclusters), and compresses a cluster. nbdforge-img and qemu-nbd
# serve each image with -r -A and with -s -A (after the same qemu-io session on both):
# `qemu-img compare` finds the exports identical, `nbdinfo --map` and
# `--map=qemu:allocation-depth` agree with qemu-nbd's. An image with an internal snapshot is
# refused for writing, clearly.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"

qemu-img create -q -f raw base.raw 16M
qemu-io -f raw -c 'write -P 0x11 0 6M' -c 'write -P 0x12 12M 1M' base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2
qemu-io -c 'write -P 0x21 5M 2M' mid.qcow2 >/dev/null

writes=(
    -c 'write -P 0x31 4k 8k'         # subclusters 2-5 of cluster 0
    -c 'write -P 0x32 70000 3000'    # inside cluster 1, across a subcluster boundary
    -c 'write -z 36k 4k'             # zero subclusters in an allocated cluster
    -c 'write -z 2M 6k'              # zero subclusters of an unallocated cluster
    -c 'write -P 0x33 1M 100k'       # whole clusters and a partial one
    -c 'write -z 1064k 2k'           # zero inside the partial one
    -c 'write -P 0x34 5M 2k'         # over mid.qcow2's data
    -c 'write -z 6M 1M'              # zero whole clusters over the backing data
    -c 'write -c -P 0x35 8M 64k'     # a compressed cluster (64k clusters only)
    -c 'write -P 0x36 15M 1k'
)
for cs in 64k 32k; do
    for backing in base.raw:raw mid.qcow2:qcow2; do
        image=sub-$cs-${backing%%.*}.qcow2
        qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs -b "${backing%%:*}" -F "${backing##*:}" "$image"
        if [ "$cs" = 64k ]; then
            qemu-io "${writes[@]}" "$image" >/dev/null
        else
            qemu-io "${writes[@]:0:16}" -c 'write -P 0x36 15M 1k' "$image" >/dev/null
        fi
        qemu-img info "$image" | grep -q 'extended l2: true' || fail "$image: no extended L2 entries"
    done
done

# The writes of the -s sessions.
session=(-c 'write -P 0xa1 1000 3000' -c 'write -z 5M 100k' -c 'write -P 0xa2 9M 4k')

for image in sub-*.qcow2; do
    same_image_as_qemu_nbd "$image" -r -A
done
same_image_as_qemu_nbd sub-64k-mid.qcow2 -s -A
# The subcluster runs are there: a 2k zero run and a depth-3 run (mid.qcow2's raw backing).
grep -q '^ *2097152 *6144 ' ours.map || fail "no 6k zero run at 2M in the map"
grep -q 'backing depth 3' ours.depth || fail "no run from the raw file under mid.qcow2"
# With an internal snapshot the image is not writable: a clear message naming the file and
# the way out, exit 1 before listening; -r serves it.
cp sub-64k-base.qcow2 snap.qcow2
qemu-img snapshot -c s1 snap.qcow2
expect_fail "$NBDFORGE_IMG" -k "$tmp/w.sock" -f qcow2 snap.qcow2 2> write.err
grep -q 'snap.qcow2: .*internal snapshots.*-r' write.err || fail "unclear refusal: $(cat write.err)"
same_image_as_qemu_nbd snap.qcow2 -r -A
