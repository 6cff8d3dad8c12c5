#!/usr/bin/env bash
# The blocksize filter under concurrency: fio with 32 requests in flight, 512-byte aligned
# requests of 512 bytes to 64 KiB, verified with crc32c (fio_unaligned_verify), over a layer that
# refuses anything not aligned to 4K (blocksize-policy with the error policy), so that a request
# the filter failed to align fails fio; then overlapping writes in flight together from two
# connections (overlapping_writes), with blocks of 4K and of 64K: none tears, none is undone by a
# read-modify-write of its block.
source "$(dirname "$0")/lib/functions.sh"

start_server --filter=blocksize --filter=blocksize-policy memory 32M \
    blocksize-minimum=4K blocksize-error-policy=error
fio_unaligned_verify 32M
overlapping_writes 100
stop_server "$server_pid"

start_server --filter=blocksize memory 32M minblock=64K
fio_unaligned_verify 16M
overlapping_writes 100
echo OK
