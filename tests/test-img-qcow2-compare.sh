#!/usr/bin/env bash
# nbdforge-img and qemu-nbd serve the same images side by side: raw, qcow2 v2 and v3, a qcow2
# image with zlib-compressed clusters, and a chain of three (raw <- qcow2 <- qcow2) with zero
# clusters and unallocated ranges. For each, `qemu-img compare` finds the two exports identical,
# and `nbdinfo --map` (base:allocation) agrees; for the chain, with -A, so does
# `nbdinfo --map=qemu:allocation-depth`. So is -o (an offset into the disk) on a raw image; on a
# chain qemu-nbd reports the data under its offset node as absent, holes without zeroes, so
# the maps are not compared there.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"

qemu-img create -q -f raw base.raw 64M
qemu-io -f raw -c 'write -P 0x11 0 8M' -c 'write -P 0x12 40M 1M' base.raw >/dev/null
cp base.raw plain.raw
qemu-img convert -f raw -O qcow2 -o compat=0.10 base.raw v2.qcow2
qemu-img convert -f raw -O qcow2 -o compat=1.1 base.raw v3.qcow2
qemu-img convert -c -f raw -O qcow2 base.raw zlib.qcow2
qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2
qemu-io -c 'write -P 0x22 4M 8M' -c 'write -z 20M 1M' -c 'write -P 0x23 60M 64k' mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 0x33 10M 4M' -c 'write -c -P 0x44 30M 1M' -c 'write -z 5M 64k' top.qcow2 >/dev/null
[ "$(qemu-img info --output=json zlib.qcow2 | grep -c '"compression-type": "zlib"')" -eq 1 ] ||
    fail "zlib.qcow2 is not compressed with zlib"

compare() {   # compare FORMAT FILE [OPTIONS...]
    local format=$1 file=$2
    shift 2
    start_img -t -e 0 -f "$format" "$@" "$file"
    local ours=$uri ours_pid=$server_pid
    start_qemu_nbd -t -e 0 -r -f "$format" "$@" "$file"
    local theirs=$uri theirs_pid=$server_pid
    qemu-img compare -f raw -F raw "$ours" "$theirs" || fail "$file: the disks differ"
    nbdinfo --map "$ours" > ours.map
    nbdinfo --map "$theirs" > theirs.map
    diff -u theirs.map ours.map || fail "$file: base:allocation differs from qemu-nbd's"
    if [ "${1:-}" = -A ]; then
        nbdinfo --map=qemu:allocation-depth "$ours" > ours.depth
        nbdinfo --map=qemu:allocation-depth "$theirs" > theirs.depth
        diff -u theirs.depth ours.depth || fail "$file: qemu:allocation-depth differs from qemu-nbd's"
        if [ "$file" = top.qcow2 ]; then
            grep -q 'backing depth 3' ours.depth || fail "$file: no run in the third layer"
            cat ours.depth
        fi
    fi
    stop_server "$ours_pid"
    stop_server "$theirs_pid"
    echo "same as qemu-nbd: $file $*"
}

compare raw plain.raw
compare raw plain.raw -A
compare qcow2 v2.qcow2
compare qcow2 v3.qcow2
compare qcow2 zlib.qcow2
compare qcow2 top.qcow2 -A
compare raw plain.raw -o 1048576

