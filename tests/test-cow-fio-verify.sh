#!/usr/bin/env bash
# The cow filter under concurrency, over a file of random data: fio with 32 requests in flight,
# 512-byte aligned requests of 512 bytes to 64 KiB (so most change part of a 64K overlay block,
# a read-modify-write), verified with crc32c (fio_unaligned_verify); then overlapping writes in
# flight together from two connections (overlapping_writes): none tears, none is lost; the
# source file is untouched throughout.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/src.img" 32M
cp "$tmp/src.img" "$tmp/orig.img"
start_server --filter=cow file "$tmp/src.img"
fio_unaligned_verify 32M
overlapping_writes 100
stop_server "$server_pid"
same_file "$tmp/src.img" "$tmp/orig.img"

start_server --filter=cow file "$tmp/src.img" cow-block-size=4K
overlapping_writes 100
echo OK
