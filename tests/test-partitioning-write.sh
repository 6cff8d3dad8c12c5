#!/usr/bin/env bash
# Writes to the partitioning plugin: inside a partition they land in its file (and a zero request
# zeroes it there); the partition table and the padding take only writes of what they hold
# (anything else fails with EIO, as in nbdkit, and changes nothing, where nbdkit writes the file
# part of a request before failing on the padding part); the export's flags are nbdkit's; under
# -r nothing is writable. The same sequence of requests runs against nbdkit on copies of the files
# and each request must succeed or fail the same way.
source "$(dirname "$0")/lib/functions.sh"

mkdir "$tmp/ours" "$tmp/theirs"
head -c 1000000 /dev/urandom > "$tmp/ours/a"
random_file "$tmp/ours/b" 1M
cp "$tmp/ours/a" "$tmp/ours/b" "$tmp/theirs/"
cp "$tmp/ours/a" "$tmp/a.orig"

cat > "$tmp/requests.py" <<'PY'
import errno, sys
import nbd

h = nbd.NBD()
h.connect_uri(sys.argv[1])
a = 2048 * 512               # partition 1 (file a, 1000000 bytes: 1954 sectors, 448 padding)
a_end = a + 1000000
results = []

def attempt(name, fn):
    try:
        fn()
        results.append("%s: ok" % name)
    except nbd.Error as e:
        results.append("%s: %s" % (name, errno.errorcode.get(e.errno, e.errno)))

print(" ".join("%s=%s" % (f, getattr(h, f)()) for f in
               ("is_read_only", "can_flush", "can_fua", "can_multi_conn", "can_zero", "can_trim",
                "can_cache", "can_fast_zero")))
mbr = h.pread(512, 0)
attempt("write in partition", lambda: h.pwrite(b"XYZ" * 100, a + 10))
attempt("write in partition with FUA", lambda: h.pwrite(b"fua", a + 4096, nbd.CMD_FLAG_FUA))
attempt("rewrite the MBR as it is", lambda: h.pwrite(mbr, 0))
attempt("change the MBR", lambda: h.pwrite(b"\x01" + mbr[1:], 0))
attempt("zeroes to padding", lambda: h.pwrite(bytes(1024), 512))
attempt("data to padding", lambda: h.pwrite(b"\x01" * 16, 4096))
attempt("end of file and zero padding", lambda: h.pwrite(b"E" * 8 + bytes(448), a_end - 8))
attempt("end of file and data in padding", lambda: h.pwrite(b"F" * 8 + b"\x01" * 448, a_end - 8))
attempt("zero in partition", lambda: h.zero(65536, a + 65536))
attempt("zero the MBR", lambda: h.zero(512, 0))
attempt("zero padding", lambda: h.zero(4096, 8192))
attempt("flush", lambda: h.flush())
attempt("cache", lambda: h.cache(65536, 0))
print("\n".join(results))
h.shutdown()
PY

run_requests() {   # run_requests DIR SERVER-FUNCTION [OPTIONS]: the requests against DIR's files
    local dir=$1 starter=$2
    shift 2
    "$starter" "$@" partitioning "$dir/a" "$dir/b"
    /usr/bin/python3 "$tmp/requests.py" "$uri"
    stop_server "$server_pid"
}
run_requests "$tmp/ours" start_server > "$tmp/ours.out"
run_requests "$tmp/theirs" start_reference > "$tmp/theirs.out"
cat "$tmp/ours.out"
diff -u "$tmp/theirs.out" "$tmp/ours.out" || fail "requests answered differently from nbdkit"
grep -q "^change the MBR: EIO" "$tmp/ours.out" || fail "changing the MBR did not fail with EIO"
grep -q "^write in partition: ok" "$tmp/ours.out" || fail "a write in the partition failed"

# The writes landed in file a: what the requests wrote, the rest untouched.
python3 - "$tmp/ours/a" "$tmp/a.orig" <<'PY' || fail "file a does not hold the writes"
import sys
a, orig = bytearray(open(sys.argv[1], "rb").read()), bytearray(open(sys.argv[2], "rb").read())
want = bytearray(orig)
want[10:310] = b"XYZ" * 100
want[4096:4099] = b"fua"
want[1000000 - 8:] = b"E" * 8            # the failed write that also had data in the padding: not written
want[65536:131072] = bytes(65536)
assert len(a) == 1000000, len(a)
assert a == want, next(i for i in range(len(a)) if a[i] != want[i])
PY
cmp "$tmp/ours/b" "$tmp/theirs/b" || fail "file b changed"

# -r: read-only, writes refused.
start_server -r partitioning "$tmp/ours/a" "$tmp/ours/b"
nbdsh -u "$uri" -c 'assert h.is_read_only()' || fail "-r: export is writable"
expect_fail nbdsh -u "$uri" -c 'h.pwrite(b"x", 2048 * 512)'
stop_server "$server_pid"

# A read-only file: served, but not writable.
cp "$tmp/ours/b" "$tmp/ro"
chmod 0444 "$tmp/ro"
if [ "$(id -u)" -ne 0 ]; then
    start_server partitioning "$tmp/ours/a" "$tmp/ro"
    nbdsh -u "$uri" -c 'assert h.is_read_only()' || fail "a read-only file makes a writable disk"
    stop_server "$server_pid"
fi
echo OK
