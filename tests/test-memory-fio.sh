#!/usr/bin/env bash
# fio's NBD engine (libnbd) on the memory plugin: verified random writes, then verified mixed
# reads and writes from two connections (see fio_verify in lib/functions.sh).
source "$(dirname "$0")/lib/functions.sh"

start_server memory 64M
fio_verify
echo OK
