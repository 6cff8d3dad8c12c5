#!/usr/bin/env bash
# timeout: 240
# The S3 plugin's block status and deletions, checked against the bucket's listing (boto3):
# objects never written are holes; trim deletes the objects it covers whole and leaves the ones
# it covers in part; zero deletes whole objects and zeroes the parts of the others; FUA and
# flush are accepted.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/swift.sh"

start_swift
s3 mb sparse
start_server S3 endpoint-url="$s3_endpoint" bucket=sparse key=d size=16M object-size=1M \
    access-key="$s3_access_key" secret-key="$s3_secret_key"
objects() { s3 list sparse d/ | awk '{print $1}' | sed 's|^d/0*||; s|^$|0|' | tr '\n' ' '; }
[ -z "$(objects)" ] || fail "a new disk has objects: $(objects)"
nbdinfo --map "$uri" | tee "$tmp/map"
grep -Eq '^ *0 +16777216 +1 +hole' "$tmp/map" || fail "a new disk is not one hole"

# Write objects 0, 2, 3 (whole) and part of 9.
nbdsh -u "$uri" -c '
M = 1 << 20
h.pwrite(b"\x11" * M, 0)
h.pwrite(b"\x22" * (2 * M), 2 * M, nbd.CMD_FLAG_FUA)
h.pwrite(b"\x33" * 4096, 9 * M + 4096)
h.flush()
'
[ "$(objects)" = "0 2 3 9 " ] || fail "objects after writes: $(objects)"
nbdinfo --map "$uri" | tee "$tmp/map"
grep -Eq '^ *0 +1048576 +0 +data' "$tmp/map" || fail "object 0 is not data"
grep -Eq '^ *1048576 +1048576 +1 +hole' "$tmp/map" || fail "object 1 is not a hole"
grep -Eq '^ *2097152 +2097152 +0 +data' "$tmp/map" || fail "objects 2-3 are not data"
grep -Eq '^ *10485760 +6291456 +1 +hole' "$tmp/map" || fail "objects 10-15 are not a hole"

# Trim from the middle of object 0 to the middle of object 3: only 2 (whole) goes; 1 was a hole.
nbdsh -u "$uri" -c 'h.trim(3 << 20, 1 << 19)'
[ "$(objects)" = "0 3 9 " ] || fail "objects after trim: $(objects)"
# Zero from the middle of object 0 to the end of object 9: 3 and 9 go, 0 keeps its first half.
nbdsh -u "$uri" -c '
M = 1 << 20
h.zero(10 * M - M // 2, M // 2)
assert h.pread(M, 0) == b"\x11" * (M // 2) + bytes(M // 2)
assert h.pread(8 * M, 2 * M) == bytes(8 * M)
'
[ "$(objects)" = "0 " ] || fail "objects after zero: $(objects)"
# A fast zero is supported (deleting is fast); the whole disk zeroed leaves no object.
nbdsh -u "$uri" -c 'h.zero(16 << 20, 0, nbd.CMD_FLAG_FAST_ZERO)'
[ -z "$(objects)" ] || fail "objects after zeroing all: $(objects)"
[ "$(nbdinfo --can fast_zero "$uri"; echo $?)" = 0 ] || fail "fast zero not advertised"
echo OK
