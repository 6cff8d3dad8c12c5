#!/usr/bin/env bash
# The nbd plugin in front of real servers below (nbdforge memory, nbdkit memory and data, nbdforge
# oldstyle, qemu-nbd on a raw file), compared with nbdkit's nbd plugin on the same command line: the same
# bytes (nbdcopy | cmp), the same map as the server below (nbdinfo --map), the same flags
# (nbdinfo --json), writes and zeroes landing below (qemu-io, then qemu-img compare), and fio
# with many requests in flight through the proxy. Extended headers are used with the servers that
# have them (nbdforge, qemu-nbd 10 here), structured replies with nbdkit 1.32.
source "$(dirname "$0")/lib/functions.sh"

# proxy_matches BELOW_URI BELOW_SOCK HEADERS: starts both proxies over BELOW_SOCK and compares;
# ours must have negotiated HEADERS ("extended headers" or, with a server that lacks them, the
# fallback "structured replies") with the server below.
proxy_matches() {
    local below=$1 below_sock=$2 headers=$3
    start_nbdkit nbd socket="$below_sock"
    start_server -v nbd socket="$below_sock"
    nbdcopy "$peer_uri" - | cmp - <(nbdcopy "$uri" -) || fail "data through the proxies differ"
    nbdcopy "$below" - | cmp - <(nbdcopy "$uri" -) || fail "data through our proxy differs from below"
    nbdinfo --map "$below" > "$tmp/below.map"
    nbdinfo --map "$uri" > "$tmp/ours.map"
    diff -u "$tmp/below.map" "$tmp/ours.map" || fail "the map differs from the server below's"
    # nbdkit 1.32's nbd plugin does not pass block sizes on (1.46's does): compare those with
    # the server below instead, when it sends them.
    nbdinfo --json "$peer_uri" | grep -v -e '"uri"' -e block_size > "$tmp/theirs.json"
    nbdinfo --json "$uri" | grep -v -e '"uri"' -e block_size > "$tmp/ours.json"
    diff -u "$tmp/theirs.json" "$tmp/ours.json" || fail "flags differ from nbdkit's nbd plugin"
    if nbdinfo --json "$below" | grep -q block_size; then
        diff <(nbdinfo --json "$below" | grep block_size) <(nbdinfo --json "$uri" | grep block_size) ||
            fail "block sizes are not those of the server below"
    fi
    grep -q "connected: .*, $headers, base:allocation" "$server_log" ||
        fail "not $headers: $(grep connected "$server_log")"
    echo "proxy matches over $below: $(grep -c . "$tmp/ours.map") extents, $headers"
}

# writes_land_below BELOW_URI: writes, zeroes and trims through the proxy, then the proxy and the
# server below hold the same disk.
writes_land_below() {
    qemu-io -f raw -c "write -P 0x5a 1M 192k" -c "write -z 2M 1M" -c "discard 3M 64k" \
        -c "write -f -P 0xa5 4M 4k" "$uri" >/dev/null
    qemu-img compare -f raw -F raw "$uri" "$1" || fail "the proxy and the server below differ"
    qemu-io -f raw -c "read -P 0x5a 1M 192k" -c "read -P 0 2M 1M" -c "read -P 0xa5 4M 4k" "$1" |
        grep -q "read 4096/4096" || fail "writes through the proxy did not land below"
}

# nbdforge's memory plugin below.
start_server memory 64M
below=$uri below_sock=$sock
nbdsh -u "$below" -c 'h.pwrite(b"\x01" * 65536, 1 << 20); h.pwrite(b"\x02" * 4096, 40 << 20)'
proxy_matches "$below" "$below_sock" "extended headers"
writes_land_below "$below"
fio_verify
qemu-img compare -f raw -F raw "$uri" "$below" || fail "after fio the proxy and below differ"

# nbdkit's memory and data plugins below.
start_nbdkit memory 32M
proxy_matches "$peer_uri" "$sock" "structured replies"
writes_land_below "$peer_uri"
start_nbdkit data '1 2 3 @1048576 "hello" @4194304 (0x55)*8192 @8388608 7' size=16M
proxy_matches "$peer_uri" "$sock" "structured replies"
grep -q hole "$tmp/ours.map" || fail "no holes from nbdkit data: $(cat "$tmp/ours.map")"
# Reads with holes come back as hole chunks through the proxy too.
nbdsh -u "$uri" -c '
chunks = []
def chunk(subbuf, offset, status, err):
    chunks.append(status)
    return 0
h.pread_structured(2 << 20, 0, chunk)
assert nbd.READ_HOLE in chunks and nbd.READ_DATA in chunks, chunks
print("read chunks:", chunks)'

# An oldstyle server below (nbdforge -o; nbdkit 1.32 -o refuses the FUA, flush and trim it
# advertises): no options, simple replies; the proxy serves it newstyle.
start_server -o memory 8M
old_uri=$uri old_sock=$sock
nbdsh -u "$old_uri" -c 'h.pwrite(b"old" * 1000, 65536)'
start_server -v nbd socket="$old_sock"
nbdcopy "$old_uri" - | cmp - <(nbdcopy "$uri" -) || fail "oldstyle: data differs"
grep -q "connected: .*, simple replies" "$server_log" || fail "oldstyle: $(grep connected "$server_log")"
writes_land_below "$old_uri"
nbdinfo "$uri" | grep -q newstyle-fixed || fail "the proxy should serve newstyle"

# qemu-nbd on a raw file below.
truncate -s 32M "$tmp/disk.raw"
printf 'qemu data' | dd of="$tmp/disk.raw" bs=1 seek=5242880 conv=notrunc status=none
qemu-nbd -t -e 8 -f raw --cache=none --aio=threads -k "$tmp/qemu.sock" "$tmp/disk.raw" &
server_pids+=($!)
wait_for_socket "$tmp/qemu.sock" "$!"
qemu_uri="nbd+unix:///?socket=$tmp/qemu.sock"
proxy_matches "$qemu_uri" "$tmp/qemu.sock" "extended headers"
writes_land_below "$qemu_uri"
qemu-img compare -f raw -F raw "$uri" "$tmp/disk.raw" || fail "the file under qemu-nbd differs"
echo "OK"
