#!/usr/bin/env bash
# The gzip filter: the decompressed disk is byte for byte nbdkit's and the original (whole and at
# random offsets), read-only; then the checks every whole-stream filter passes (lib/decoders.sh):
# the zeroes as a hole, two members, several clients, gzip-max-size=, corrupt and foreign input
# failing with EIO or a refused open while the server stays up, a bad parameter.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/decoders.sh"

decoders_image "$tmp/disk.img"
gzip -c "$tmp/disk.img" > "$tmp/disk.gzip"
same_served_as_nbdkit --filter=gzip file "$tmp/disk.gzip"
same_file "$tmp/disk.img" "$tmp/ours.out"
whole_stream_checks gzip
echo OK
