#!/usr/bin/env bash
# The cache filter under concurrency, over a file: fio with 32 requests in flight, 512-byte
# aligned requests of 512 bytes to 64 KiB (so most change part of a 64K cache block), verified
# with crc32c (fio_unaligned_verify), with a cache of 4M that keeps writing dirty blocks back and
# dropping them meanwhile; then overlapping writes in flight together from two connections
# (overlapping_writes): none tears, none is lost. After a flush the file holds exactly what the
# server serves.
source "$(dirname "$0")/lib/functions.sh"

truncate -s 32M "$tmp/disk.img"
start_server --filter=cache file "$tmp/disk.img" cache-max-size=4M
fio_unaligned_verify 32M
overlapping_writes 100
nbdsh -u "$uri" -c 'h.flush()'
nbdcopy "$uri" "$tmp/served.img"
same_file "$tmp/served.img" "$tmp/disk.img"
stop_server "$server_pid"

start_server --filter=cache file "$tmp/disk.img" cache=writethrough cache-min-block-size=4K
overlapping_writes 100
echo OK
