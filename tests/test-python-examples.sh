#!/usr/bin/env bash
# nbdkit's own Python example plugins (tests/python-examples/, unchanged) behave under nbdforge's
# python plugin as under nbdkit's: file.py serves the same bytes and takes writes (fio's verified
# writes too, in parallel); ramdisk.py takes writes and zeroes, falling back to writing zeroes
# when the script asks with set_error(EOPNOTSUPP); error.py fails every other call with EIO and
# the log has the traceback.
source "$(dirname "$0")/lib/functions.sh"
ex="$repo/tests/python-examples"

# file.py: the same bytes as nbdkit serves, and writes land in the file.
random_file "$tmp/disk.img" 8M
same_served_as_nbdkit python "$ex/file.py" file="$tmp/disk.img"
random_file "$tmp/new.img" 8M
nbdcopy "$tmp/new.img" "$uri"
same_file "$tmp/new.img" "$tmp/disk.img"
echo "file.py: same bytes as nbdkit, writes reach the file"

# file.py asks for THREAD_MODEL_PARALLEL: fio's verified random writes, 16 in flight, then two
# connections at once.
truncate -s 128M "$tmp/fio.img"
start_server python "$ex/file.py" file="$tmp/fio.img"
fio_verify

# ramdisk.py, on both servers: a copy in, then zeroes with and without NO_HOLE (the script
# refuses the second, and the server writes zeroes instead), then a copy out.
ramdisk_round_trip() {
    local uri=$1 out=$2
    nbdcopy "$tmp/ram.img" "$uri"
    nbdsh -u "$uri" -c '
h.zero(65536, 0)
h.zero(65536, 131072, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(65536, 0) == bytes(65536)
assert h.pread(65536, 131072) == bytes(65536)
assert h.pread(4096, 65536) != bytes(4096), "the zeroes went too far"
'
    nbdcopy "$uri" "$out"
}
random_file "$tmp/ram.img" 1M
start_nbdkit python "$ex/ramdisk.py" test1=foo
start_server python "$ex/ramdisk.py" test1=foo
ramdisk_round_trip "$peer_uri" "$tmp/ram-nbdkit.img"
ramdisk_round_trip "$uri" "$tmp/ram-ours.img"
same_file "$tmp/ram-nbdkit.img" "$tmp/ram-ours.img"
cmp -n 65536 "$tmp/ram-ours.img" /dev/zero || fail "ramdisk.py: the zeroed range is not zero"
cmp -i 262144 "$tmp/ram.img" "$tmp/ram-ours.img" || fail "ramdisk.py: data after the zeroes changed"
grep -q "ignored parameter test1=foo" "$server_log" || fail "ramdisk.py: its config output is not in the log"
echo "ramdisk.py: same disk as nbdkit after writes and zeroes"

# error.py: odd calls fail with EIO, even ones succeed, under both servers.
error_calls() {
    nbdsh -u "$1" -c '
import errno
for i in range(4):
    try:
        data = h.pread(512, 1024)
        assert i % 2 == 1, "call %d succeeded" % i
        assert data == open("'"$tmp/disk.img"'", "rb").read()[1024:1536]
    except nbd.Error as e:
        assert i % 2 == 0, "call %d failed: %s" % (i, e)
        assert e.errnum == errno.EIO, e
'
}
start_nbdkit python "$ex/error.py" file="$tmp/disk.img"
start_server python "$ex/error.py" file="$tmp/disk.img"
error_calls "$peer_uri"
error_calls "$uri"
grep -q "Traceback" "$server_log" || fail "error.py: no traceback in the log"
grep -q "RuntimeError: pread error offset=1024 count=512" "$server_log" ||
    fail "error.py: the log does not have the exception"
echo "error.py: every other call fails with EIO, as under nbdkit"
