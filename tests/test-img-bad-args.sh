#!/usr/bin/env bash
# Bad command lines: nbdforge-img exits 1 before listening (no socket is created) with qemu-nbd's
# wording where qemu-nbd has one, and qemu-nbd refuses the same command lines (exit 1).
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"
qemu-img create -q -f qcow2 disk.qcow2 1M
echo "not an image" > text.raw

img_refuses -- "Invalid number of arguments"
img_refuses disk.qcow2 disk.qcow2 -- "Invalid number of arguments"
img_refuses -e x disk.qcow2 -- "Invalid shared device number 'x'"
img_refuses -e -1 disk.qcow2 -- "Invalid shared device number '-1'"
img_refuses --discard=maybe disk.qcow2 -- "Invalid discard mode" maybe
img_refuses --detect-zeroes=maybe disk.qcow2 -- "detect_zeroes" maybe
img_refuses --cache=fast disk.qcow2 -- "Invalid cache mode" fast
img_refuses --aio=magic disk.qcow2 -- "Invalid aio mode 'magic'"
img_refuses --handshake-limit=-1 disk.qcow2 -- "Invalid handshake limit '-1'"
img_refuses -o 1M disk.qcow2 -- "Invalid offset '1M'"
img_refuses --bogus disk.qcow2 -- "unrecognized option '--bogus'"
img_refuses -f vmdk-ish disk.qcow2 -- "Unknown driver 'vmdk-ish'"
img_refuses -f qcow2 text.raw -- text.raw
img_refuses no-such-file.qcow2 -- no-such-file.qcow2 "No such file or directory"
img_refuses -f qcow2 no-such-file.qcow2 -- no-such-file.qcow2
img_refuses -p 99999 -k "" disk.qcow2 -- "-k"

# Help and version answer at once.
"$NBDFORGE_IMG" --help | grep -q -- '--allocation-depth' || fail "--help"
"$NBDFORGE_IMG" -V | grep -q nbdforge-img || fail "-V"
