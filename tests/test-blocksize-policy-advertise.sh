#!/usr/bin/env bash
# The blocksize-policy filter advertises the block sizes nbdkit advertises for the same command
# line (nbdinfo --json: minimum, preferred, maximum): each parameter alone over a layer that
# advertises nothing (the others get 1, 4096 and 4G - 1), all three, a layer that advertises its
# own (eval's block_size: the parameters replace its values one by one), and the manual's stack
# with the blocksize filter.  A maximum over the server's own 64M is advertised as it is.
# blocksize-write-disconnect (not in nbdkit 1.32) makes the default maximum, rounded down to the
# minimum.
source "$(dirname "$0")/lib/functions.sh"

# block_sizes URI: "minimum preferred maximum" as nbdinfo --json reports them.
block_sizes() {
    nbdinfo --json "$1" | python3 -c '
import json, sys
d = json.load(sys.stdin)["exports"][0]
print(d["block_size_minimum"], d["block_size_preferred"], d["block_size_maximum"])'
}

# same_block_sizes_as_nbdkit ARGS...: nbdkit and the server under test serving ARGS advertise
# the same block sizes.  Prints them.
same_block_sizes_as_nbdkit() {
    start_nbdkit "$@"
    start_server "$@"
    local theirs ours
    theirs=$(block_sizes "$peer_uri")
    ours=$(block_sizes "$uri")
    echo "$*: $ours"
    [ "$theirs" = "$ours" ] || fail "$*: nbdkit advertises $theirs, we advertise $ours"
    stop_server "$server_pid"
}

policy=(--filter=blocksize-policy memory 1M)
same_block_sizes_as_nbdkit "${policy[@]}" blocksize-preferred=32K
same_block_sizes_as_nbdkit "${policy[@]}" blocksize-minimum=512
same_block_sizes_as_nbdkit "${policy[@]}" blocksize-maximum=1M
same_block_sizes_as_nbdkit "${policy[@]}" blocksize-maximum=4294967295
same_block_sizes_as_nbdkit "${policy[@]}" blocksize-minimum=4K blocksize-preferred=64K blocksize-maximum=32M
same_block_sizes_as_nbdkit "${policy[@]}" blocksize-minimum=1 blocksize-preferred=512 blocksize-maximum=1000
same_block_sizes_as_nbdkit "${policy[@]}" blocksize-error-policy=error blocksize-minimum=512

eval=(eval 'block_size=echo 512 4096 1M' 'get_size=echo 1M'
      'pread=dd if=/dev/zero count=$3 iflag=count_bytes status=none')
same_block_sizes_as_nbdkit --filter=blocksize-policy "${eval[@]}"
same_block_sizes_as_nbdkit --filter=blocksize-policy "${eval[@]}" blocksize-preferred=64K
same_block_sizes_as_nbdkit --filter=blocksize-policy "${eval[@]}" blocksize-minimum=4K blocksize-maximum=256K

same_block_sizes_as_nbdkit --filter=blocksize-policy --filter=blocksize memory 1M \
    blocksize-error-policy=allow blocksize-minimum=64K minblock=64K

start_server "${policy[@]}" blocksize-minimum=4K blocksize-write-disconnect=1000000
got=$(block_sizes "$uri")
[ "$got" = "4096 4096 999424" ] || fail "with blocksize-write-disconnect=1000000: $got"
echo "blocksize-minimum=4K blocksize-write-disconnect=1000000: $got"
echo OK
