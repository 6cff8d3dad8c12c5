#!/usr/bin/env bash
# nbdkit's C filters, loaded unchanged: Debian's nbdkit 1.32 filters, by path and by name, give
# the same disk through nbdforge as through nbdkit (nbdcopy, cmp); writes pass through cow and
# a filter written for this test (tests/cplugin/invert.c, built with gcc against
# nbdkit-filter.h), whose parameters and the ones it passes on reach the right layer; qemu-img
# map sees the same extents through cacheextents; a filter built for another nbdkit release is
# refused before the server listens.
# timeout: 240
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"

FD=/usr/lib/x86_64-linux-gnu/nbdkit/filters
fso() { echo "--filter=$FD/nbdkit-$1-filter.so"; }
[ -e "$FD/nbdkit-offset-filter.so" ] || fail "nbdkit's filters are not installed in $FD"

random_file f1 3M
random_file f2 1M
xz -k f1
gzip -k f2
tar cf t.tar f1 f2

# By path, over built-in plugins.
same_as_nbdkit "$(fso offset)" file "$tmp/f1" offset=1M range=1M
same_as_nbdkit "$(fso truncate)" file "$tmp/f1" truncate=1000000
same_as_nbdkit "$(fso swab)" file "$tmp/f1"
same_as_nbdkit "$(fso blocksize)" file "$tmp/f1" minblock=4096
same_as_nbdkit "$(fso cache)" "$(fso readahead)" file "$tmp/f1"
same_as_nbdkit "$(fso noextents)" "$(fso nozero)" file "$tmp/f1"
same_as_nbdkit "$(fso retry)" file "$tmp/f1"
same_as_nbdkit "$(fso partition)" partitioning "$tmp/f1" "$tmp/f2" partition=2
cmp "$tmp/ours.img" f2 || fail "partition: not the second partition"
# By name: filters nbdforge has no built-in for are found in nbdkit's directory.
"${server_cmd[@]}" --dump-config | grep >/dev/null "^filter_search_path=.*$FD" || fail "--dump-config does not name $FD"
same_as_nbdkit --filter=xz file "$tmp/f1.xz"
cmp "$tmp/ours.img" f1 || fail "xz: not the uncompressed file"
same_as_nbdkit --filter=gzip file "$tmp/f2.gz"
cmp "$tmp/ours.img" f2 || fail "gzip: not the uncompressed file"
same_as_nbdkit --filter=tar file "$tmp/t.tar" tar-entry=f2
cmp "$tmp/ours.img" f2 || fail "tar: not the entry"

# Extents through a C filter, as qemu-img maps them.
start_server --filter=cacheextents sparse-random size=16M seed=3
qemu-img map --output=json "$uri" > ours.map
stop_server "$server_pid"
start_reference --filter=cacheextents sparse-random size=16M seed=3
qemu-img map --output=json "$uri" > theirs.map
stop_server "$server_pid"
cmp ours.map theirs.map || fail "cacheextents: the map differs from nbdkit's"
[ "$(grep -c '"data": false' ours.map)" -gt 0 ] || fail "cacheextents: no holes in the map"

# Writes through nbdkit's cow filter leave the file alone.
cp f1 f1.orig
start_server "$(fso cow)" file "$tmp/f1"
nbdsh -u "$uri" -c '
h.pwrite(b"through cow", 4096)
assert h.pread(11, 4096) == b"through cow"
assert not h.can_zero()   # as under nbdkit 1.32: its cow filter offers no zeroing
'
stop_server "$server_pid"
cmp f1 f1.orig || fail "cow: the file under it changed"

# A filter of our own: its parameter is its own, the plugin's is passed on.
gcc -Wall -Werror -fPIC -shared -o invert.so "$repo/tests/cplugin/invert.c"
gcc -Wall -Werror -fPIC -shared -DFAKE_VERSION -o fake.so "$repo/tests/cplugin/invert.c"
"${server_cmd[@]}" --filter="$tmp/invert.so" memory --help | grep >/dev/null "invert-byte=<N>" ||
    fail "--help lacks the filter's config_help"
start_server --filter="$tmp/invert.so" file "$tmp/f2" invert-byte=0x5a
nbdcopy "$uri" inv.img
python3 -c '
import sys
a, b = open("inv.img", "rb").read(), open("f2", "rb").read()
sys.exit(a != bytes(x ^ 0x5a for x in b))' || fail "invert: reads are not the file XOR 0x5a"
nbdsh -u "$uri" -c '
h.pwrite(b"plain", 0)
assert h.pread(5, 0) == b"plain"
h.zero(512, 512)
assert h.pread(512, 512) == bytes(512)
'
stop_server "$server_pid"
head -c 5 f2 | python3 -c 'import sys; sys.exit(sys.stdin.buffer.read() != bytes(x ^ 0x5a for x in b"plain"))' ||
    fail "invert: the write did not reach the file inverted"
bad_args --filter="$tmp/invert.so" memory 1M invert-byte=x -- "invert-byte=x"
bad_args --filter="$tmp/invert.so" memory 1M colour=red -- "memory: unknown parameter 'colour'"
bad_args --filter="$tmp/fake.so" memory 1M -- "built for nbdkit 1.99.0" "1.32"

echo "PASS: $(basename "$0")"
