#!/usr/bin/env bash
# qemu-io write sessions through nbdforge-img on qcow2 images (v2 and v3, compressed, over a
# backing chain, with --discard=unmap and --detect-zeroes=unmap): afterwards `qemu-img check`
# finds each image clean, and the image equals (qemu-img compare) a copy that went through the
# same session served by qemu-nbd. A write of zeroes (--detect-zeroes) is not stored as data
# in a v3 image.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"

qemu-img create -q -f raw base.raw 32M
qemu-io -f raw -c 'write -P 0x11 0 8M' base.raw >/dev/null
qemu-img convert -f raw -O qcow2 -o compat=0.10 base.raw v2.qcow2
qemu-img convert -f raw -O qcow2 -o compat=1.1 base.raw v3.qcow2
qemu-img convert -c -f raw -O qcow2 base.raw zlib.qcow2
qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2
qemu-io -c 'write -P 0x22 4M 8M' mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
before=$(md5sum base.raw mid.qcow2)

session=(
    -c 'write -P 0xa1 0 64k'
    -c 'write -P 0xa2 1000 3000'
    -c 'write -P 0xa3 6M 4M'
    -c 'write -z 2M 1M'
    -c 'write -z -u 9M 128k'
    -c 'discard 5M 512k'
    -c 'write -P 0xa5 5M 512k'   # what a discarded range reads is unspecified: write it over
    -c 'write -P 0 20M 1M'
    -c 'write -P 0xa4 32767k 1k'
    -c 'flush'
    -c 'read -P 0xa1 0 1000'
    -c 'read -P 0xa3 6M 1M'
    -c 'discard 24M 1M'
)

for image in v2.qcow2 v3.qcow2 zlib.qcow2 top.qcow2; do
    if [ "$image" = top.qcow2 ]; then
        # The chain's lower layers are read only; a fresh top for qemu-nbd's run.
        qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 theirs-$image
    else
        cp "$image" "theirs-$image"
    fi
    img_session start_img "$image" --discard=unmap --detect-zeroes=unmap
    qemu-img check -q "$image" || fail "$image: qemu-img check is not clean after nbdforge-img"
    # --detect-zeroes: the 1M of zeroes written at 20M was not stored as data (qcow2 v3: imago
    # has no way to free clusters of a v2 image, where they stay data that reads as zeroes).
    [ "$image" = v2.qcow2 ] || qemu-img map --output=json "$image" | python3 -c '
import json, sys
at = 20 << 20
for e in json.load(sys.stdin):
    if e["start"] <= at < e["start"] + e["length"] and e["data"] and e["depth"] == 0:
        sys.exit("the zeroes were written as data: %r" % e)
' || fail "$image: --detect-zeroes"
    img_session start_qemu_nbd "theirs-$image" --discard=unmap --detect-zeroes=unmap
    qemu-img compare -q "$image" "theirs-$image" || fail "$image: differs from qemu-nbd's result"
    echo "clean and same as qemu-nbd: $image"
done
# The backing files were only read.
[ "$(md5sum base.raw mid.qcow2)" = "$before" ] || fail "a backing file of top.qcow2 changed"
