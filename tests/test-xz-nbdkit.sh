#!/usr/bin/env bash
# The xz filter: the decompressed disk is byte for byte nbdkit's and the original (whole and at
# random offsets, reads crossing blocks), for one block, many blocks, and several streams with
# stream padding; nbdkit refuses a block over xz-max-block= as we do; then the checks every
# block filter passes (lib/decoders.sh): xz-max-depth=1, xz-max-block=, a corrupt block failing
# with EIO while the others read, truncated and foreign files refused, bad parameters.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/decoders.sh"

decoders_image "$tmp/disk.img"
xz -c "$tmp/disk.img" > "$tmp/one.xz"
xz -c --block-size=1000000 "$tmp/disk.img" > "$tmp/blocks.xz"
for f in one blocks; do
    same_served_as_nbdkit --filter=xz file "$tmp/$f.xz"
    served_is "$tmp/disk.img"
done

# Several streams, with stream padding after the first (xz -d accepts both).
{ xz -c --block-size=300000 "$tmp/random.bin"; head -c 8 /dev/zero; cat "$tmp/blocks.xz"; } > "$tmp/streams.xz"
cat "$tmp/random.bin" "$tmp/disk.img" > "$tmp/streams.img"
xz -dc "$tmp/streams.xz" | cmp - "$tmp/streams.img"
same_served_as_nbdkit --filter=xz file "$tmp/streams.xz"
served_is "$tmp/streams.img"

start_nbdkit --filter=xz file "$tmp/blocks.xz" xz-max-block=512K
if nbdinfo --size "$uri" 2>/dev/null; then fail "nbdkit serves blocks over xz-max-block"; fi

block_checks xz "$tmp/blocks.xz"
echo OK
