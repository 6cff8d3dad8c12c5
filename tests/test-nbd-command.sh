#!/usr/bin/env bash
# command=: the server below runs as a child with a socket-activated private Unix socket, as
# nbdkit's nbd plugin runs it (command=qemu-nbd arg=... is the manual's example). qemu-nbd on a
# raw file, nbdkit and nbdforge itself as children: data and writes reach the file or disk, the
# same command line works with nbdkit's nbd plugin, and the child goes away with the proxy.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/disk.raw" 8M
cp "$tmp/disk.raw" "$tmp/orig.raw"

start_server nbd command=qemu-nbd arg=-f arg=raw arg="$tmp/disk.raw"
nbdcopy "$uri" - | cmp - "$tmp/orig.raw" || fail "qemu-nbd as a child: data differs"
qemu-io -f raw -c "write -P 0x33 1M 64k" "$uri" >/dev/null
qemu-io -f raw -c "read -P 0x33 1M 64k" "$tmp/disk.raw" | grep -q "read 65536" ||
    fail "the write did not reach the file under qemu-nbd"
pids=$(pgrep -f "qemu-nbd -f raw $tmp/disk.raw" || :)
[ -n "$pids" ] || fail "no qemu-nbd child running"
stop_server "$server_pid"
for _ in $(seq 50); do pgrep -f "qemu-nbd -f raw $tmp/disk.raw" >/dev/null || break; sleep 0.1; done
expect_fail pgrep -f "qemu-nbd -f raw $tmp/disk.raw"

# The same command line with nbdkit's nbd plugin serves the same disk.
start_nbdkit nbd command=qemu-nbd arg=-f arg=raw arg="$tmp/disk.raw"
nbdcopy "$peer_uri" - | cmp - "$tmp/disk.raw" || fail "nbdkit's proxy serves other data"
stop_server "$server_pid"

# nbdkit and nbdforge as children (both take socket activation); extents pass through.
start_server nbd command=nbdkit arg=data arg='1 @1048576 2' arg=size=4M
nbdinfo --map "$uri" | grep -q "hole" || fail "no holes from nbdkit data through command="
start_server nbd command="${server_cmd[0]}" arg=memory arg=size=16M
nbdsh -u "$uri" -c 'h.pwrite(b"x" * 4096, 8192); assert h.pread(4096, 8192) == b"x" * 4096'
[ "$(nbdinfo --size "$uri")" = $((16 << 20)) ] || fail "nbdforge as a child: wrong size"

bad_args nbd command=/nonexistent/server -- "nbd:" "/nonexistent/server"
bad_args nbd command=qemu-nbd shared=false -- "shared=true"
echo OK
