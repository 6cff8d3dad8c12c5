#!/usr/bin/env bash
# --image-opts and json: file names as qemu-nbd users write them, served by nbdforge-img and by
# qemu-nbd with the same arguments: the disk each serves is copied out with nbdcopy and compared
# with cmp, and the size and multi-conn nbdinfo reports must be equal (raw windows with offset= and
# size=, -o on top of a window, driver=file, qcow2 with its backing file from the header, replaced
# through backing.*, or removed with backing=/null; multi-conn with -e 1 and -e 2). Writes through a window land inside it only. Option
# strings qemu-nbd refuses are refused by both (exit 1, ours before listening) with qemu's words.
# timeout: 300
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"
random_file whole.raw 4M
random_file other.raw 4M
qemu-img convert -q -f raw -O qcow2 whole.raw disk.qcow2
qemu-img convert -q -f raw -O qcow2 other.raw other.qcow2
# top.qcow2: its own data in the first 64 KiB, the rest from disk.qcow2 (named in its header).
qemu-img create -q -f qcow2 -b "$tmp/disk.qcow2" -F qcow2 top.qcow2
qemu-io -f qcow2 -c "write -P 0x5a 0 64k" top.qcow2 >/dev/null

same() {   # same WHAT ARGS...: both servers serve the same bytes and size for ARGS
    local what=$1
    shift
    rm -f ours.img theirs.img
    start_qemu_nbd -t "$@"
    local theirs=$uri qpid=$server_pid
    start_img -t "$@"
    local size theirs_size
    size=$(nbdinfo --size "$uri")
    theirs_size=$(nbdinfo --size "$theirs")
    [ "$size" = "$theirs_size" ] || fail "$what: size $size, qemu-nbd's $theirs_size"
    local mc=0 theirs_mc=0
    nbdinfo --can multi-conn "$uri" || mc=$?
    nbdinfo --can multi-conn "$theirs" || theirs_mc=$?
    [ "$mc" = "$theirs_mc" ] || fail "$what: multi-conn: nbdinfo --can says $mc, $theirs_mc for qemu-nbd"
    nbdcopy "$uri" ours.img
    nbdcopy "$theirs" theirs.img
    cmp ours.img theirs.img || fail "$what: the disk differs from qemu-nbd's"
    stop_server "$server_pid"
    stop_server "$qpid"
    echo "$what: same as qemu-nbd ($size bytes)"
}

raw="file.driver=file,file.filename=$tmp/whole.raw"
same "raw" --image-opts "driver=raw,$raw"
same "raw window" --image-opts "driver=raw,$raw,offset=1M,size=512k"
same "raw offset" --image-opts "driver=raw,file.filename=$tmp/whole.raw,offset=65536"
same "raw window, -e 2" -e 2 --image-opts "driver=raw,$raw,offset=1M,size=512k"
same "raw window, -o" -o 4096 --image-opts "driver=raw,$raw,offset=1M,size=1M"
same "driver=file" --image-opts "driver=file,filename=$tmp/whole.raw"
same "probed" -r --image-opts "file.filename=$tmp/whole.raw,read-only=on"
same "qcow2" --image-opts "driver=qcow2,file.filename=$tmp/disk.qcow2"
same "qcow2, file.driver" --image-opts "driver=qcow2,file.driver=file,file.filename=$tmp/disk.qcow2,cache.direct=on"
same "backing from the header" --image-opts "driver=qcow2,file.driver=file,file.filename=$tmp/top.qcow2"
same "backing.* replaced" --image-opts \
    "driver=qcow2,file.driver=file,file.filename=$tmp/top.qcow2,backing.driver=qcow2,backing.file.driver=file,backing.file.filename=$tmp/other.qcow2"
same "backing raw" --image-opts \
    "driver=qcow2,file.filename=$tmp/top.qcow2,backing.driver=raw,backing.file.filename=$tmp/other.raw"
same "backing=" --image-opts "driver=qcow2,file.filename=$tmp/top.qcow2,backing="
same "json: raw window" \
    "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$tmp/whole.raw\"},\"offset\":1048576,\"size\":\"1M\"}"
same "json: backing null" \
    "json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"$tmp/top.qcow2\"},\"backing\":null}"

# With a replaced backing file, base:allocation and qemu:allocation-depth map the chain as
# qemu-nbd's do (nbdinfo --map of each context, diffed).
qemu-img create -q -f qcow2 sparse.qcow2 4M
qemu-io -f qcow2 -c "write -P 2 2M 64k" sparse.qcow2 >/dev/null
qemu-io -f qcow2 -c "write -P 1 1M 64k" top.qcow2 >/dev/null
chain="driver=qcow2,file.filename=$tmp/top.qcow2,backing.driver=qcow2,backing.file.filename=$tmp/sparse.qcow2"
for cmd in start_qemu_nbd start_img; do
    "$cmd" -t -r -A --image-opts "$chain"
    { nbdinfo --map "$uri"; nbdinfo --map=qemu:allocation-depth "$uri"; } > "map.$cmd"
    stop_server "$server_pid"
done
diff map.start_qemu_nbd map.start_img || fail "the maps of a replaced backing chain differ from qemu-nbd's"
grep -q "backing depth 2" map.start_img || fail "the replaced backing file is not in the map: $(cat map.start_img)"
echo "replaced backing chain: the same maps as qemu-nbd"

# The replaced backing file really is read: top's own data, then other.raw's.
start_img -t -r --image-opts \
    "driver=qcow2,file.filename=$tmp/top.qcow2,backing.driver=raw,backing.file.filename=$tmp/other.raw"
nbdcopy "$uri" got.img
stop_server "$server_pid"
cmp -n 65536 got.img <(head -c 64k /dev/zero | tr '\0' '\132') || fail "top's own data"
cmp -i 65536 -n 983040 got.img other.raw || fail "the rest is not other.raw"
cmp -i 1114112 got.img other.raw || fail "the rest is not other.raw"

# Writes through a window land inside it, at the window's offset, and not past its end.
cp whole.raw before.raw
start_img -t --image-opts "driver=raw,$raw,offset=1M,size=64k"
qemu-io -f raw "$uri" -c "write -P 0xab 0 64k" >/dev/null || fail "write into the window"
if qemu-io -f raw "$uri" -c "write -P 0xab 64k 512" 2>&1 | grep -q "wrote"; then
    fail "a write past the window's end succeeded"
fi
stop_server "$server_pid"
cmp -n 1048576 whole.raw before.raw || fail "bytes before the window changed"
cmp -i 1114112:1114112 whole.raw before.raw || fail "bytes after the window changed"
qemu-io -f raw -c "read -P 0xab 1M 64k" whole.raw | grep -q "read 65536" || fail "the window's bytes"

# Refusals: both exit 1; ours before listening, saying what qemu-nbd says.
img_refuses -f raw --image-opts "driver=raw,$raw" -- "--image-opts and --format are mutually exclusive"
img_refuses --image-opts "driver=raw,$raw,bogus=1" -- "Block format 'raw' does not support the option 'bogus'"
img_refuses --image-opts "driver=raw,$raw,foo" -- "Block format 'raw' does not support the option 'foo'"
img_refuses --image-opts "driver=raw,$raw,file.bogus=1" -- "Block protocol 'file' doesn't support the option 'bogus'"
img_refuses --image-opts "driver=qcow2,file.filename=$tmp/disk.qcow2,offset=1" -- "'qcow2' does not support the option 'offset'"
img_refuses --image-opts "driver=file,filename=$tmp/whole.raw,offset=1" -- "doesn't support the option 'offset'"
img_refuses --image-opts "driver=raw" -- "A block device must be specified for \"file\""
img_refuses --image-opts "filename=$tmp/whole.raw" -- "Must specify either driver or file"
img_refuses --image-opts "$tmp/whole.raw" -- "Cannot find device='$tmp/whole.raw' nor node-name"
img_refuses --image-opts "driver=raw,$raw,offset=4M,size=512" -- "has to be smaller or equal to the actual size"
img_refuses --image-opts "driver=raw,$raw,size=1000" -- "Specified size is not multiple of 512"
img_refuses --image-opts "driver=raw,$raw,offset=-1" -- "out of range for parameter 'offset'"
img_refuses --image-opts "driver=raw,$raw,offset=1x" -- "Parameter 'offset' expects a non-negative number"
img_refuses --image-opts "driver=raw,$raw,read-only=maybe" -- "Parameter 'read-only' expects 'on' or 'off'"
img_refuses --image-opts "driver=raw,$raw,read-only=on" -- "Block node is read-only"
img_refuses --image-opts "driver=raw,$raw,force-share=on" -- "force-share=on can only be used with read-only images"
img_refuses --image-opts "driver=raw,$raw,file.aio=bad" -- "invalid parameter value: bad"
img_refuses --image-opts "driver=raw,$raw,discard=bad" -- "Invalid discard option"
img_refuses --image-opts "driver=qcow2,file.filename=$tmp/whole.raw" -- "$tmp/whole.raw"
img_refuses --image-opts "driver=raw,file.filename=$tmp/a,,b.raw" -- "$tmp/a,b.raw"
img_refuses --image-opts "driver=qcow2,file.filename=$tmp/top.qcow2,backing=nothing" -- "Cannot find device='nothing'"
img_refuses --image-opts "driver=qcow2,file.filename=$tmp/top.qcow2,backing.bogus=1" -- "Could not open backing file"
img_refuses --image-opts "driver=qcow2,file.filename=$tmp/top.qcow2,backing.driver=qcow2,backing.file.filename=$tmp/whole.raw" -- \
    "$tmp/whole.raw"
img_refuses --image-opts 'json:{"driver":"raw"}' -- "Cannot find device='json:{\"driver\":\"raw\"}'"
img_refuses "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$tmp/whole.raw\"},\"bogus\":1}" -- \
    "Block format 'raw' does not support the option 'bogus'"
img_refuses 'json:[1]' -- "Invalid JSON object given"
