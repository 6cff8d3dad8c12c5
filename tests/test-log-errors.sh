#!/usr/bin/env bash
# Requests that fail below the log filter are logged with return=-1 and the NBD error the client
# receives, by name: a write past the file size limit (RLIMIT_FSIZE, EFBIG in the file plugin)
# is "...Write id=N return=-1 error=ENOSPC", as nbdkit logs it, and the client gets ENOSPC.
# Requests around it succeed, and data read back through the filter is the data written
# (qemu-io verifies the pattern). Passes against nbdkit 1.32 too.
source "$(dirname "$0")/lib/functions.sh"

truncate -s 4M "$tmp/disk.img"
# Writes past 1 MiB fail with EFBIG instead of killing the server (SIGXFSZ ignored, inherited).
trap '' XFSZ
ulimit -f 1024

start_server --filter=log file "$tmp/disk.img" logfile="$tmp/log"
nbdsh -u "$uri" -c '
import errno
h.pwrite(b"a" * 4096, 0)
for offset in (2 << 20, 3 << 20):
    try:
        h.pwrite(b"b" * 4096, offset)
        raise SystemExit("write at %d succeeded past the file size limit" % offset)
    except nbd.Error as e:
        assert e.errnum == errno.ENOSPC, e
assert h.pread(4096, 2 << 20) == bytes(4096)
'
qemu-io -f raw "$uri" -c 'write -P 0x5a 65536 65536' -c 'read -P 0x5a 65536 65536' -c 'write 1536k 4k' \
    > "$tmp/qemu-io.out" 2>&1 || :
cat "$tmp/qemu-io.out"
grep -q 'read 65536/65536 bytes' "$tmp/qemu-io.out" || fail "qemu-io could not read its pattern back"
grep -qi 'write failed' "$tmp/qemu-io.out" || fail "qemu-io's write past the limit did not fail"
stop_server "$server_pid"
cat "$tmp/log"

ts='[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}'
expect_line() {
    grep -Eq "^$ts $1\$" "$tmp/log" || fail "no log line matching: $1"
}
expect_line 'connection=[0-9]+ Write id=1 offset=0x0 count=0x1000 fua=0 \.\.\.'
expect_line 'connection=[0-9]+ \.\.\.Write id=1 return=0'
expect_line 'connection=[0-9]+ Write id=2 offset=0x200000 count=0x1000 fua=0 \.\.\.'
expect_line 'connection=[0-9]+ \.\.\.Write id=2 return=-1 error=ENOSPC'
expect_line 'connection=[0-9]+ \.\.\.Write id=3 return=-1 error=ENOSPC'
expect_line 'connection=[0-9]+ Read id=4 offset=0x200000 count=0x1000 \.\.\.'
expect_line 'connection=[0-9]+ \.\.\.Read id=4 return=0'
expect_line 'connection=[0-9]+ Write id=[0-9]+ offset=0x180000 count=0x1000 fua=[01] \.\.\.'
[ "$(grep -Ec 'error=ENOSPC$' "$tmp/log")" -eq 3 ] || fail "expected exactly 3 failed requests"
PYTHONPATH="$repo/tests/lib" python3 -c '
import sys
from filterlogs import check_pairs, parse_log
check_pairs(parse_log(open(sys.argv[1]).read()))
' "$tmp/log" || fail "the log is not well formed"
echo OK
