#!/usr/bin/env bash
# qemu-io against a memory export: patterned writes and verified reads, write-zeroes, discard,
# FUA writes, unaligned I/O, and reads at the end of the disk.  qemu-io exits 0 even when a
# command fails, so its output is checked for errors too.
source "$(dirname "$0")/lib/functions.sh"

start_server memory 64M

out="$tmp/qemu-io.out"
qemu-io -f raw "$uri" \
    -c 'write -P 0xab 0 1M' \
    -c 'read -P 0xab 0 1M' \
    -c 'write -z 1M 1M' \
    -c 'read -P 0 1M 1M' \
    -c 'write -P 0x11 2M 64k' \
    -c 'discard 2M 64k' \
    -c 'read -P 0 2M 64k' \
    -c 'write -f -P 0x22 3M 4k' \
    -c 'read -P 0x22 3M 4k' \
    -c 'write -P 0x33 12345 777' \
    -c 'read -P 0x33 12345 777' \
    -c 'read -P 0xab 0 12345' \
    -c 'write -P 0x44 63M 1M' \
    -c 'read -P 0x44 63M 1M' \
    -c 'aio_write -P 0x55 8M 256k' -c 'aio_write -P 0x66 9M 256k' -c 'aio_flush' \
    -c 'read -P 0x55 8M 256k' -c 'read -P 0x66 9M 256k' \
    -c 'flush' \
    >"$out" 2>&1 || { status=$?; cat "$out"; fail "qemu-io exited with status $status"; }
cat "$out"
if grep -Eiq 'error|fail|mismatch|verification' "$out"; then
    fail "qemu-io reported an error"
fi
[ "$(grep -c '^wrote ' "$out")" -eq 8 ] || fail "expected 8 'wrote' lines"
[ "$(grep -c '^read ' "$out")" -eq 9 ] || fail "expected 9 'read' lines"
[ "$(grep -c '^discard ' "$out")" -eq 1 ] || fail "expected 1 'discard' line"

# A read past the end fails: qemu-io says so on stderr.
qemu-io -f raw "$uri" -c 'read 64M 512' >"$out" 2>&1 || :
grep -Eiq 'error|invalid|out of|beyond|past' "$out" || { cat "$out"; fail "read past the end did not fail"; }

# The data written above is still there for a new client.
qemu-io -f raw -r "$uri" -c 'read -P 0x22 3M 4k' -c 'read -P 0x44 63M 1M' >"$out" 2>&1
grep -Eiq 'error|fail|verification' "$out" && { cat "$out"; fail "data did not persist"; }
echo OK
