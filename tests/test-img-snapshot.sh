#!/usr/bin/env bash
# -s: writes go to a temporary overlay. Through nbdforge-img -s, raw and qcow2 images take
# writes that the same connection reads back, and afterwards the image files are unchanged
# (checksums), qcow2 ones still pass `qemu-img check`, and no overlay is left in $TMPDIR.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"

qemu-img create -q -f raw disk.raw 16M
qemu-io -f raw -c 'write -P 0x5a 0 4M' disk.raw >/dev/null
qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2
qemu-img create -q -f qcow2 -b disk.qcow2 -F qcow2 top.qcow2
mkdir overlays

for image in disk.raw disk.qcow2 top.qcow2; do
    before=$(md5sum disk.raw disk.qcow2 top.qcow2)
    TMPDIR=$tmp/overlays start_img -s "$image"
    qemu-io -f raw "$uri" \
        -c 'write -P 0xc3 1M 2M' -c 'write -z 0 64k' -c 'flush' \
        -c 'read -P 0xc3 1M 2M' -c 'read -P 0 0 64k' -c 'read -P 0x5a 64k 960k' > io.out ||
        fail "$image: the snapshot did not read back its writes: $(cat io.out)"
    grep -q 'Pattern verification failed' io.out && fail "$image: wrong data read back: $(cat io.out)"
    wait_exit "$server_pid" "$image: the server, its client gone,"
    [ "$exit_status" -eq 0 ] || fail "$image: exit status $exit_status"
    [ "$(md5sum disk.raw disk.qcow2 top.qcow2)" = "$before" ] || fail "$image: -s changed an image file"
    [ -z "$(ls -A overlays)" ] || fail "$image: overlay left behind: $(ls overlays)"
    echo "-s leaves $image untouched"
done
qemu-img check -q disk.qcow2 && qemu-img check -q top.qcow2 || fail "qemu-img check"

# -s with -r: read-only, writes refused.
start_img -s -r -t disk.qcow2
expect_fail qemu-io -f raw "$uri" -c 'write 0 512' 2>/dev/null
