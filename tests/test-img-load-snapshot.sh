#!/usr/bin/env bash
# -l/--load-snapshot: internal qcow2 snapshots, beside qemu-nbd. Snapshots are taken with
# `qemu-img snapshot -c`, each followed by more writes through qemu-io (over a backing file, with a
# compressed cluster). Served by id, by name, bare (an id first, then a name) and by both fields,
# the old contents come back: `qemu-img compare` finds nbdforge-img's export identical to a raw
# copy taken at snapshot time and to qemu-nbd -l's, and `nbdinfo --map` (base:allocation, and
# qemu:allocation-depth with -A) agrees with qemu-nbd's. The export is read-only without -r (a write
# fails with EPERM, as from qemu-nbd), the image file is unchanged, and `qemu-img check` passes.
# A snapshot taken before the disk grew is served at its own size (qemu-nbd would serve the
# active layer's: it is not compared there). Images that imago refuses and nbdforge-img's own
# driver serves (zstd compression; zstd with extended L2 entries over a backing file) are
# compared in the same way, with snapshots taken before and after more writes. An unknown snapshot, bad -l syntax, and -l with -s
# are errors before listening, as with qemu-nbd.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"

qemu-img create -q -f raw base.raw 16M
qemu-io -f raw -c 'write -P 0x11 0 16M' base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw disk.qcow2 16M
qemu-io -c 'write -P 0x22 1M 2M' -c 'write -c -P 0x23 8M 64k' -c 'write -z 12M 1M' disk.qcow2 >/dev/null
qemu-img convert -O raw disk.qcow2 at-first.raw
qemu-img snapshot -c first disk.qcow2
qemu-io -c 'write -P 0x33 2M 4M' -c 'write -z 0 64k' -c 'write -P 0x34 8M 64k' disk.qcow2 >/dev/null
qemu-img convert -O raw disk.qcow2 at-second.raw
qemu-img snapshot -c second disk.qcow2
# A snapshot whose name is another one's id: a bare "1" is the id.
qemu-io -c 'write -P 0x44 10M 1M' disk.qcow2 >/dev/null
qemu-img convert -O raw disk.qcow2 at-third.raw
qemu-img snapshot -c 1 disk.qcow2
qemu-io -c 'write -P 0x55 0 1M' disk.qcow2 >/dev/null
qemu-img convert -O raw disk.qcow2 active.raw
qemu-img snapshot -l disk.qcow2
before=$(md5sum disk.qcow2 base.raw)

image=disk.qcow2
check() {   # check RAW OPTION...: nbdforge-img OPTION... $image serves RAW, as qemu-nbd's does
    local raw=$1
    shift
    start_img -t -e 0 "$@" "$image"
    local ours=$uri ours_pid=$server_pid
    start_qemu_nbd -t -e 0 "$@" "$image"
    local theirs=$uri theirs_pid=$server_pid
    qemu-img compare -q -f raw -F raw "$ours" "$raw" || fail "$*: not the contents of $raw"
    qemu-img compare -q -f raw -F raw "$ours" "$theirs" || fail "$*: differs from qemu-nbd"
    local context
    for context in base:allocation $([[ " $* " = *" -A "* ]] && echo qemu:allocation-depth); do
        nbdinfo --map="$context" "$ours" > ours.map
        nbdinfo --map="$context" "$theirs" > theirs.map
        diff -u theirs.map ours.map || fail "$*: $context differs from qemu-nbd's"
    done
    for u in "$ours" "$theirs"; do
        status=0
        nbdsh -u "$u" -c 'assert h.is_read_only()' -c 'h.pwrite(b"x" * 512, 0)' 2>err.out || status=$?
        [ "$status" -ne 0 ] && grep -q 'Operation not permitted' err.out ||
            fail "$* ($u): a write was not refused: $(cat err.out)"
    done
    stop_server "$ours_pid"
    stop_server "$theirs_pid"
    echo "$*: the contents of $raw, read-only, as qemu-nbd"
}

check at-first.raw -l 1
check at-first.raw -l first
check at-second.raw -l snapshot.id=2
check at-second.raw -l snapshot.name=second
check at-first.raw -l snapshot.id=1,snapshot.name=first
check at-third.raw -l snapshot.name=1
check at-third.raw -l 3
check at-second.raw --load-snapshot=second -r
check at-first.raw --load-snapshot first -A
[ "$(md5sum disk.qcow2 base.raw)" = "$before" ] || fail "serving snapshots changed the image"
qemu-img check -q disk.qcow2 || fail "qemu-img check"
start_img -t disk.qcow2
qemu-img compare -q -f raw -F raw "$uri" active.raw || fail "the active layer changed"
stop_server "$server_pid"

# Images only the own driver reads: zstd, then zstd with extended L2 entries over base.raw.
qemu-img create -q -f qcow2 -o compression_type=zstd zstd.qcow2 16M
qemu-img create -q -f qcow2 -o compression_type=zstd,extended_l2=on -b base.raw -F raw sub.qcow2 16M
for image in zstd.qcow2 sub.qcow2; do
    qemu-io -c 'write -P 0x61 1M 2M' -c 'write -c -P 0x62 8M 128k' -c 'write -z 12M 1M' \
        -c 'write -P 0x63 5000 3000' "$image" >/dev/null
    qemu-img convert -O raw "$image" "$image.first.raw"
    qemu-img snapshot -c first "$image"
    qemu-io -c 'write -P 0x71 2M 2M' -c 'write -c -P 0x72 10M 64k' -c 'write -P 0x73 8M 4k' -c 'write -z 1M 64k' "$image" >/dev/null
    qemu-img convert -O raw "$image" "$image.second.raw"
    qemu-img snapshot -c second "$image"
    qemu-io -c 'write -P 0x81 0 4M' "$image" >/dev/null
    qemu-img info "$image" | grep -qE 'compression type: zstd' || fail "$image: not zstd"
    before=$(md5sum "$image")
    check "$image.first.raw" -l first
    check "$image.second.raw" -l snapshot.id=2 -A
    [ "$(md5sum "$image")" = "$before" ] || fail "serving snapshots of $image changed it"
    qemu-img check -q "$image" || fail "qemu-img check $image"
done
image=disk.qcow2

# A snapshot of a smaller disk is served at its size (the active layer's beyond is not shown).
qemu-img create -q -f qcow2 grow.qcow2 4M
qemu-io -c 'write -P 0x66 3M 1M' grow.qcow2 >/dev/null
qemu-img convert -O raw grow.qcow2 grow-small.raw
qemu-img snapshot -c small grow.qcow2
qemu-img resize -q grow.qcow2 8M
qemu-io -c 'write -P 0x77 3M 4M' grow.qcow2 >/dev/null
start_img -t -e 0 -l small grow.qcow2
[ "$(nbdinfo --size "$uri")" = 4194304 ] || fail "-l small: size $(nbdinfo --size "$uri"), want 4194304"
qemu-img compare -q -f raw -F raw "$uri" grow-small.raw || fail "-l small: not the 4M disk at snapshot time"
stop_server "$server_pid"
echo "-l small: a 4M snapshot of a disk grown to 8M is served at 4M"

img_refuses -l nope disk.qcow2 -- "Can't find snapshot 'nope'"
img_refuses -l snapshot.id=2,snapshot.name=first disk.qcow2 -- "Can't find snapshot with id '2' and name 'first'"
img_refuses -l snapshot.id=9 disk.qcow2 -- "Can't find snapshot"
img_refuses -l snapshot.size=1 disk.qcow2 -- "Invalid parameter 'snapshot.size'"
img_refuses -s -l first disk.qcow2 -- "Can't find snapshot"
img_refuses -f raw -l first base.raw -- "Failed to load snapshot"
