#!/usr/bin/env bash
# The sparse-random plugin serves, for a given seed, the very disk nbdkit serves: the same data
# and the same map of data and holes, with and without random-content, for several densities
# and run lengths. Writes that match the disk succeed (nbdcopy of the disk onto itself).
#
# Fails against nbdkit 1.32 at the last check: for random-content=perhaps it says "could not
# decipher boolean (perhaps)", which does not name the parameter.
# timeout: 300
source "$(dirname "$0")/lib/functions.sh"

same_as_nbdkit sparse-random size=64M seed=1
same_as_nbdkit sparse-random size=32M seed=42 percent=50 runlength=65536
same_as_nbdkit sparse-random size=16M seed=7 percent=30 runlength=8192 random-content=true
same_as_nbdkit sparse-random 10000000 seed=3 percent=100
same_as_nbdkit sparse-random size=4M seed=3 percent=0

# The map of data and holes is nbdkit's too.
map_of() {
    nbdinfo --map "$uri" > "$1"
    stop_server "$server_pid"
}
start_server sparse-random size=64M seed=99 percent=20 runlength=1048576
map_of "$tmp/ours.map"
start_reference sparse-random size=64M seed=99 percent=20 runlength=1048576
map_of "$tmp/theirs.map"
diff -u "$tmp/theirs.map" "$tmp/ours.map" || fail "the extent maps differ"
[ "$(grep -c data "$tmp/ours.map")" -gt 2 ] || fail "too few data runs: $(cat "$tmp/ours.map")"

# Copying the disk onto itself writes only what is there, and zeroes only holes.
start_server sparse-random size=16M seed=5 percent=40 runlength=65536
nbdcopy "$uri" "$tmp/disk.img"
nbdcopy "$tmp/disk.img" "$uri"
nbdsh -u "$uri" -c '
import errno
buf = h.pread(4096, 0)
try:
    h.pwrite(bytes(b ^ 1 for b in buf), 0)
    raise SystemExit("a write of other data succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
'

bad_args sparse-random size=1M percent=101 -- percent 101
bad_args sparse-random size=1M runlength=0 -- runlength
bad_args sparse-random size=1M random-content=perhaps -- random-content perhaps
echo OK
