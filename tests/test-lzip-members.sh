#!/usr/bin/env bash
# The lzip filter (nbdkit 1.32 has none; nbdkit 1.46's seeks by member as ours does): the
# decompressed disk is the original (whole and at random offsets) for a file of one member (lzip)
# and of many (plzip -B); then the checks every block filter passes (lib/decoders.sh):
# lzip-max-depth=1, lzip-max-block=, a corrupt member failing with EIO while the others read,
# truncated and foreign files refused, bad parameters.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/decoders.sh"

decoders_image "$tmp/disk.img"
lzip -c "$tmp/disk.img" > "$tmp/one.lz"
plzip -c -B 1MiB "$tmp/disk.img" > "$tmp/members.lz"
lzip -l "$tmp/members.lz" | awk 'NR == 2 { if ($2 < 6) exit 1 }' || fail "plzip wrote too few members"
for f in one members; do
    start_server --filter=lzip file "$tmp/$f.lz"
    served_is "$tmp/disk.img"
done
block_checks lzip "$tmp/members.lz"
echo OK
