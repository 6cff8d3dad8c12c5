#!/usr/bin/env bash
# fio's NBD engine (libnbd) on the file plugin: verified random writes, then verified mixed
# reads and writes from two connections (see fio_verify in lib/functions.sh).
source "$(dirname "$0")/lib/functions.sh"

truncate -s 64M "$tmp/disk.img"
start_server file "$tmp/disk.img"
fio_verify
echo OK
