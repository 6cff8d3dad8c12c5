#!/usr/bin/env bash
# --image-opts as qemu-nbd users write it: driver=raw with offset= and size= (a window of a file)
# and driver=qcow2,file.driver=file,file.filename=...: qemu-img compare of each export against the
# same command line served by qemu-nbd, writes landing inside the window only, and the refusals
# (--image-opts with -f; offset+size past the end) exiting 1 as qemu-nbd does. --object secret is
# accepted with data= and file=.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"
random_file whole.raw 4M
qemu-img convert -q -f raw -O qcow2 whole.raw disk.qcow2

compare() {   # compare WHAT IMAGE-OPTS: both servers serve the same bytes and size
    start_qemu_nbd -r --image-opts "$2"
    local theirs=$uri
    start_img -r --image-opts "$2"
    [ "$(nbdinfo --size "$uri")" = "$(nbdinfo --size "$theirs")" ] || fail "$1: sizes differ"
    qemu-img compare -q "$theirs" "$uri" || fail "$1: contents differ"
    echo "$1: same ($(nbdinfo --size "$uri") bytes)"
}
compare "raw window" "driver=raw,file.driver=file,file.filename=$tmp/whole.raw,offset=1M,size=512k"
compare "raw offset" "driver=raw,file.filename=$tmp/whole.raw,offset=65536"
compare "qcow2" "driver=qcow2,file.driver=file,file.filename=$tmp/disk.qcow2"

# Writes through a window land inside it, at the window's offset.
cp whole.raw before.raw
start_img --image-opts "driver=raw,file.driver=file,file.filename=$tmp/whole.raw,offset=1M,size=64k" \
    --object secret,id=s0,data=unused --object secret,id=s1,file="$tmp/before.raw"
qemu-io -f raw "$uri" -c "write -P 0xab 0 64k" >/dev/null || fail "write into the window"
qemu-io -f raw "$uri" -c "write -P 0xab 64k 512" 2>&1 | grep -qi "error\|out of range\|Input/output\|Invalid" \
    || fail "a write past the window's end succeeded"
stop_server "$server_pid"
cmp -n 1048576 whole.raw before.raw || fail "bytes before the window changed"
cmp -i 1114112 whole.raw before.raw || fail "bytes after the window changed"
qemu-io -f raw -c "read -P 0xab 1M 64k" whole.raw | grep -q "read 65536" || fail "the window's bytes"

# Refusals, exit 1 before listening, as qemu-nbd.
for args in "-f raw --image-opts driver=raw,file.filename=$tmp/whole.raw" \
    "--image-opts driver=raw,file.filename=$tmp/whole.raw,offset=4M,size=1" \
    "--image-opts driver=vmdk,file.filename=$tmp/whole.raw"; do
    for cmd in qemu-nbd "$NBDFORGE_IMG"; do
        # shellcheck disable=SC2086
        timeout 20 "$cmd" -k "$tmp/bad.sock" $args 2>err </dev/null && fail "$cmd $args: accepted"
        rm -f "$tmp/bad.sock"
    done
    echo "$args: $(head -1 err)"
done
"$NBDFORGE_IMG" -f raw --image-opts x 2>err && fail "-f with --image-opts"
grep -q -- "--image-opts and --format are mutually exclusive" err || fail "message: $(cat err)"
