#!/usr/bin/env bash
# The bzip2 filter (nbdkit 1.32 has none; nbdkit 1.46's decompresses to a temporary file as ours
# does): the checks every whole-stream filter passes (lib/decoders.sh): the original disk whole
# and at random offsets, read-only, the zeroes as a hole, two streams, several clients,
# bzip2-max-size=, corrupt and foreign input failing with EIO or a refused open while the server
# stays up, a bad parameter.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/decoders.sh"

decoders_image "$tmp/disk.img"
bzip2 -c "$tmp/disk.img" > "$tmp/disk.bzip2"
whole_stream_checks bzip2
echo OK
