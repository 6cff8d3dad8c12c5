#!/usr/bin/env bash
# -B/--bitmap: persistent dirty bitmaps as qemu:dirty-bitmap:NAME meta contexts, beside qemu-nbd.
# Bitmaps are added with `qemu-img bitmap --add` (the default 64 KiB granularity, 4 KiB and 512
# bytes; one disabled), then qemu-io writes, zeroes and discards at scattered, unaligned offsets
# (one across a 1 GiB boundary, so the 512-byte bitmap spans several clusters of bits, and one at
# the very end). For each bitmap `nbdinfo --map=qemu:dirty-bitmap:NAME` from nbdforge-img equals
# qemu-nbd -B's, on a read-only export (-r) and on a writable one after the same writes through
# both servers (enabled bitmaps count them, disabled ones do not). Both list the contexts.
# An unknown bitmap, one left in use by a qemu that was killed, and -B on a raw image are errors
# before listening, as with qemu-nbd; after a writable session, qemu considers the bitmaps
# inconsistent (nbdforge-img does not store them back) and qemu-nbd -B refuses them too; after a
# writable session without writes, the bitmaps are still valid (same map from qemu-nbd -B). A zstd
# image (served by the own driver, which updates bitmaps) is written without a warning, and
# qemu-nbd -B then shows the write.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"

qemu-img create -q -f qcow2 disk.qcow2 3G
qemu-io -c 'write -P 1 0 8M' disk.qcow2 >/dev/null
qemu-img bitmap --add disk.qcow2 b0
qemu-img bitmap --add --granularity 4096 disk.qcow2 b4k
qemu-img bitmap --add --granularity 512 disk.qcow2 b512
qemu-img bitmap --add disk.qcow2 off
qemu-img bitmap --disable disk.qcow2 off
qemu-io -c 'write 1000 10' -c 'write 5M 70k' -c 'write -z 40M 1M' -c 'discard 6M 64k' \
    -c 'write 1073741000 2000' -c 'write 2G 512' -c 'write 3221224448 1024' disk.qcow2 >/dev/null
qemu-img info disk.qcow2 | grep -A30 bitmaps:
cp disk.qcow2 theirs.qcow2

maps() {   # maps WHAT OURS THEIRS: every bitmap's map, the same from both
    local b
    for b in b0 b4k b512 off; do
        nbdinfo --map="qemu:dirty-bitmap:$b" "$2" > ours.map
        nbdinfo --map="qemu:dirty-bitmap:$b" "$3" > theirs.map
        diff -u theirs.map ours.map || fail "$1: qemu:dirty-bitmap:$b differs from qemu-nbd's"
        [ "$b" = off ] || grep -q dirty ours.map || fail "$1: $b: nothing dirty"
        echo "$1: qemu:dirty-bitmap:$b: $(grep -c dirty ours.map) dirty runs, as qemu-nbd"
    done
}

bitmaps=(-B b0 -B b4k --bitmap=b512 --bitmap off)
start_img -t -e 0 -r "${bitmaps[@]}" disk.qcow2
ours=$uri ours_pid=$server_pid
start_qemu_nbd -t -e 0 -r "${bitmaps[@]}" disk.qcow2
theirs=$uri theirs_pid=$server_pid
maps read-only "$ours" "$theirs"
nbdinfo --list "$ours" | grep 'qemu:dirty-bitmap:' | sort > contexts.ours
nbdinfo --list "$theirs" | grep 'qemu:dirty-bitmap:' | sort > contexts.theirs
diff -u contexts.theirs contexts.ours || fail "the listed contexts differ"
[ "$(wc -l < contexts.ours)" = 4 ] || fail "contexts: $(cat contexts.ours)"

# Served writable but only read, the image keeps valid bitmaps: qemu still trusts them.
nbdinfo --map=qemu:dirty-bitmap:b4k "$theirs" > before.map
stop_server "$ours_pid"
stop_server "$theirs_pid"
start_img -t -e 0 disk.qcow2
nbdcopy "$uri" copy.raw
stop_server "$server_pid"
qemu-img compare -q -F raw disk.qcow2 copy.raw || fail "nbdcopy from a writable export"
qemu-img info disk.qcow2 > info.out 2>&1
grep -q 'considered inconsistent' info.out && fail "after a session without writes, qemu drops the bitmaps"
start_qemu_nbd -r -B b4k disk.qcow2
nbdinfo --map=qemu:dirty-bitmap:b4k "$uri" > after.map
diff -u before.map after.map || fail "the bitmap changed in a session without writes"
qemu-img check -q disk.qcow2 || fail "qemu-img check after a session without writes"
echo "a writable session without writes keeps the bitmaps valid"

# Writable: the writes served are counted in the enabled bitmaps.
start_img -t -e 0 "${bitmaps[@]}" disk.qcow2
ours=$uri ours_pid=$server_pid
start_qemu_nbd -t -e 0 "${bitmaps[@]}" theirs.qcow2
theirs=$uri theirs_pid=$server_pid
for u in "$ours" "$theirs"; do
    qemu-io -f raw -c 'write 20M 1k' -c 'write -z 30M 200k' -c 'write 1073741823 2' \
        -c 'discard 50M 1M' -c 'write -z 2500M 3M' "$u" >/dev/null
done
maps writable "$ours" "$theirs"
stop_server "$ours_pid"
stop_server "$theirs_pid"
qemu-img compare -q disk.qcow2 theirs.qcow2 || fail "the two images differ after the same writes"

# After a writable session, the bitmaps on disk are stale: qemu must not trust them.
qemu-img info disk.qcow2 > info.out 2>&1
grep -q 'considered inconsistent' info.out || fail "qemu still trusts the bitmaps: $(cat info.out)"
status=0
qemu-nbd -k "$tmp/q.sock" -B b0 disk.qcow2 2>err.out || status=$?
[ "$status" = 1 ] && grep -q "Bitmap 'b0' is not found" err.out || fail "qemu-nbd -B b0 afterwards: $(cat err.out)"
echo "after a writable session qemu drops the bitmaps: $(grep -m1 warning info.out)"

# An image of the own driver (zstd) keeps its bitmaps up to date: a writable session neither
# warns that they become inconsistent nor leaves them so, and qemu-nbd -B shows the writes.
qemu-img create -q -f qcow2 -o compression_type=zstd zstd.qcow2 64M
qemu-img bitmap --add zstd.qcow2 b0
start_img -t -e 0 zstd.qcow2
qemu-io -f raw -c 'write 1M 64k' "$uri" >/dev/null
stop_server "$server_pid"
grep -i 'inconsistent\|does not update' "$server_log" && fail "zstd.qcow2: a warning about the bitmaps"
start_qemu_nbd -t -r -B b0 zstd.qcow2
nbdinfo --map=qemu:dirty-bitmap:b0 "$uri" > zstd.map
grep -Eq '^ *1048576 +65536 +1 +dirty' zstd.map || fail "zstd.qcow2: the write is not in b0: $(cat zstd.map)"
stop_server "$server_pid"
echo "zstd.qcow2: bitmaps kept up to date, without a warning"

img_refuses --both-say -r -B nosuch theirs.qcow2 -- "Bitmap 'nosuch' is not found"
img_refuses --both-say -B b0 -B nosuch theirs.qcow2 -- "Bitmap 'nosuch' is not found"
cp theirs.qcow2 killed.qcow2
(qemu-io -c 'write 0 64k' -c 'sigraise 9' killed.qcow2 >/dev/null 2>&1 || :) 2>/dev/null
img_refuses --both-say -r -B b4k killed.qcow2 -- "Bitmap 'b4k' is inconsistent and cannot be used"
qemu-img create -q -f raw disk.raw 1M
img_refuses --both-say -f raw -B b0 disk.raw -- "Bitmap 'b0' is not found"
