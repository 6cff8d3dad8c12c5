#!/usr/bin/env bash
# qemu (10.0) as a client negotiates extended headers when the server offers them.  Its
# negotiation trace must show NBD_OPT_EXTENDED_HEADERS acknowledged, and I/O must work in that
# mode on a 16 GiB disk, including a 6 GiB fast write-zeroes (-z -n: no slow fallback, so qemu
# sends NBD_CMD_FLAG_FAST_ZERO) and a 1 GiB discard.
#
# Fails against nbdkit 1.32: it does not implement extended headers.
source "$(dirname "$0")/lib/functions.sh"

start_server memory 16G

out="$tmp/qemu-io.out"
qemu-io -f raw --trace 'nbd_receive_option_reply' "$uri" \
    -c 'write -P 0xab 5G 1M' \
    -c 'read -P 0xab 5G 1M' \
    -c 'write -z -n 4G 6G' \
    -c 'read -P 0 5G 1M' \
    -c 'write -P 0xcd 12G 64k' \
    -c 'discard 12G 1G' \
    -c 'read -P 0 12G 64k' \
    >"$out" 2>&1 || { status=$?; cat "$out"; fail "qemu-io exited with status $status"; }
cat "$out"
grep -q 'option reply 11 (extended headers), type 1 (ack)' "$out" ||
    fail "extended headers were not negotiated"
if grep -v '^nbd_receive_option_reply' "$out" | grep -Eiq 'error|fail|verification'; then
    fail "qemu-io reported an error"
fi
[ "$(grep -c '^read ' "$out")" -eq 3 ] || fail "expected 3 'read' lines"
echo OK
