#!/usr/bin/env bash
# The qcow2dec filter (nbdkit 1.32 has none): a qcow2 image served by the file plugin, plain,
# compressed (zlib) and v2 (compat=0.10), gives the bytes qemu-img convert -O raw gives (whole
# and at random offsets), read-only, and the same block status as qemu-nbd serving the image
# (holes for unallocated and zero clusters); it also works under the gzip filter; an image
# with a backing file, a truncated image and a file that is not qcow2 are refused.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/decoders.sh"

decoders_image "$tmp/disk.img"
qemu-img convert -f raw -O qcow2 "$tmp/disk.img" "$tmp/plain.qcow2"
qemu-img convert -c -f raw -O qcow2 "$tmp/disk.img" "$tmp/zlib.qcow2"
qemu-img convert -f raw -O qcow2 -o compat=0.10 "$tmp/disk.img" "$tmp/v2.qcow2"
# Zero clusters (v3) in the middle of data.
cp "$tmp/plain.qcow2" "$tmp/zero.qcow2"
qemu-io -f qcow2 -c 'write -z 64k 128k' -c 'write -z -u 1M 64k' "$tmp/zero.qcow2" >/dev/null
for q in plain zlib v2 zero; do
    qemu-img convert -f qcow2 -O raw "$tmp/$q.qcow2" "$tmp/$q.raw"
    start_server --filter=qcow2dec file "$tmp/$q.qcow2"
    served_is "$tmp/$q.raw"
    nbdinfo --map "$uri" > "$tmp/ours.map"
    start_qemu_nbd -r -f qcow2 "$tmp/$q.qcow2"
    nbdinfo --map "$uri" > "$tmp/qemu.map"
    diff -u "$tmp/qemu.map" "$tmp/ours.map" || fail "$q: block status differs from qemu-nbd's"
    echo "$q: same bytes as qemu-img convert, same map as qemu-nbd"
done
grep -q 'hole,zero' "$tmp/ours.map" || fail "no hole in the map"

gzip -c "$tmp/zlib.qcow2" > "$tmp/zlib.qcow2.gz"
start_server --filter=qcow2dec --filter=gzip file "$tmp/zlib.qcow2.gz"
served_is "$tmp/zlib.raw"

qemu-img create -f qcow2 -F qcow2 -b "$tmp/plain.qcow2" "$tmp/over.qcow2" >/dev/null
head -c 100000 "$tmp/plain.qcow2" > "$tmp/short.qcow2"
for bad in "$tmp/over.qcow2" "$tmp/short.qcow2" "$tmp/disk.img"; do
    start_server --filter=qcow2dec file "$bad"
    if nbdcopy "$uri" "$tmp/bad.out" 2>/dev/null; then fail "$bad: served"; fi
    grep -q 'qcow2dec' "$server_log" || fail "$bad: no message naming the filter"
    kill -0 "$server_pid" || fail "$bad: the server died"
done
"${server_cmd[@]}" null --filter=qcow2dec --dump-plugin > "$tmp/dump"
grep -qx 'qcow2dec_deflate=yes' "$tmp/dump" || fail "--dump-plugin: no qcow2dec_deflate=yes"
grep -q 'qcow2dec_zstd' "$tmp/dump" && fail "--dump-plugin: zstd claimed"
echo OK
