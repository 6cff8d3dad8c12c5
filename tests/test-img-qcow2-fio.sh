#!/usr/bin/env bash
# Many requests in flight on one shared qcow2 image: fio's nbd engine writes and verifies (4k
# random writes at iodepth 16, then two jobs of 64k mixed I/O on two connections at once) on a
# fresh qcow2 image and on one over a backing file. The data verifies, `qemu-img check` is clean
# after the server is stopped with SIGTERM, and the backing file is unchanged.
# timeout: 240
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"

qemu-img create -q -f qcow2 fresh.qcow2 128M
qemu-img create -q -f raw base.raw 128M
qemu-io -f raw -c 'write -P 0x77 0 96M' base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw over.qcow2
before=$(md5sum base.raw)

fio_qcow2_check fresh.qcow2 over.qcow2
[ "$(md5sum base.raw)" = "$before" ] || fail "the backing file changed"
