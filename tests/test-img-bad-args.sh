#!/usr/bin/env bash
# Bad command lines: nbdforge-img exits 1 before listening (no socket is created) with qemu-nbd's
# wording where qemu-nbd has one, and qemu-nbd refuses the same command lines (exit 1).
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"
qemu-img create -q -f qcow2 disk.qcow2 1M
echo "not an image" > text.raw

bad() {   # bad WORDS... -- EXPECTED...: both servers refuse WORDS; ours says every EXPECTED
    local args=() s status
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    shift
    for cmd in "$NBDFORGE_IMG" qemu-nbd; do
        status=0
        timeout 20 "$cmd" -k "$tmp/bad.sock" "${args[@]}" >out 2>err </dev/null || status=$?
        [ "$status" -eq 1 ] || fail "$cmd ${args[*]}: exit status $status, want 1: $(cat err)"
        # (qemu-nbd leaves its socket behind when the image does not open; ours never binds.)
        [ "$cmd" = qemu-nbd ] || [ ! -e "$tmp/bad.sock" ] || fail "$cmd ${args[*]}: the socket was created"
        rm -f "$tmp/bad.sock"
    done
    echo "${args[*]}: $(head -1 err | tr -d '\n') / ours: $(timeout 20 "$NBDFORGE_IMG" -k "$tmp/bad.sock" "${args[@]}" 2>&1 | head -1)"
    "$NBDFORGE_IMG" -k "$tmp/bad.sock" "${args[@]}" 2>err </dev/null || :
    for s in "$@"; do
        grep -qF -- "$s" err || fail "${args[*]}: the message does not say '$s': $(cat err)"
    done
}

bad -- "Invalid number of arguments"
bad disk.qcow2 disk.qcow2 -- "Invalid number of arguments"
bad -e x disk.qcow2 -- "Invalid shared device number 'x'"
bad -e -1 disk.qcow2 -- "Invalid shared device number '-1'"
bad --discard=maybe disk.qcow2 -- "Invalid discard mode" maybe
bad --detect-zeroes=maybe disk.qcow2 -- "detect_zeroes" maybe
bad --cache=fast disk.qcow2 -- "Invalid cache mode" fast
bad --aio=magic disk.qcow2 -- "Invalid aio mode 'magic'"
bad --handshake-limit=-1 disk.qcow2 -- "Invalid handshake limit '-1'"
bad -o 1M disk.qcow2 -- "Invalid offset '1M'"
bad --bogus disk.qcow2 -- "unrecognized option '--bogus'"
bad -f vmdk-ish disk.qcow2 -- "Unknown driver 'vmdk-ish'"
bad -f qcow2 text.raw -- text.raw
bad no-such-file.qcow2 -- no-such-file.qcow2 "No such file or directory"
bad -f qcow2 no-such-file.qcow2 -- no-such-file.qcow2
bad -p 99999 -k "" disk.qcow2 -- "-k"

# Help and version answer at once.
"$NBDFORGE_IMG" --help | grep -q -- '--allocation-depth' || fail "--help"
"$NBDFORGE_IMG" -V | grep -q nbdforge-img || fail "-V"
