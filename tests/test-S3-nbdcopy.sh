#!/usr/bin/env bash
# The S3 plugin on a three-node Swift cluster (tests/lib/swift.sh): 1 GiB of random data copied
# in with nbdcopy and out again, compared byte for byte; the bucket then holds exactly the
# disk's objects, named KEY/%016x as nbdkit names them, each object-size bytes.
# timeout: 240
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/swift.sh"

start_swift
s3 mb disks
random_file "$tmp/in.img" 1G
start_server S3 endpoint-url="$s3_endpoint" bucket=disks key=vm1 size=1G object-size=4M \
    access-key="$s3_access_key" secret-key="$s3_secret_key"
SECONDS=0
nbdcopy "$tmp/in.img" "$uri"
echo "1 GiB in: $SECONDS s"
SECONDS=0
nbdcopy "$uri" "$tmp/out.img"
echo "1 GiB out: $SECONDS s"
same_file "$tmp/in.img" "$tmp/out.img"

s3 list disks > "$tmp/objects"
[ "$(wc -l < "$tmp/objects")" -eq 256 ] || fail "expected 256 objects: $(head "$tmp/objects")"
grep -qx "vm1/0000000000000000 4194304" "$tmp/objects" || fail "first object misnamed: $(head -1 "$tmp/objects")"
grep -qx "vm1/00000000000000ff 4194304" "$tmp/objects" || fail "last object misnamed: $(tail -1 "$tmp/objects")"
# One object as S3 stores it is that part of the disk.
s3 get disks vm1/0000000000000010 "$tmp/obj"
cmp "$tmp/obj" <(tail -c +$((16 * 4194304 + 1)) "$tmp/in.img" | head -c 4194304) ||
    fail "object 0x10 does not hold bytes 64M..68M of the disk"

# A second server on the same objects, read-only, with the single-object mode beside it.
start_server -r S3 endpoint-url="$s3_endpoint" bucket=disks key=vm1 size=1G object-size=4M \
    access-key="$s3_access_key" secret-key="$s3_secret_key" connections=4
nbdcopy "$uri" "$tmp/out2.img"
same_file "$tmp/in.img" "$tmp/out2.img"
head -c 3M "$tmp/in.img" > "$tmp/small.img"
s3 put disks single.img "$tmp/small.img"
start_server S3 endpoint-url="$s3_endpoint" bucket=disks key=single.img \
    access-key="$s3_access_key" secret-key="$s3_secret_key"
[ "$(nbdinfo --size "$uri")" -eq $((3 * 1048576)) ] || fail "single object: wrong size"
if nbdinfo --can write "$uri"; then fail "single object: writable"; fi
nbdcopy "$uri" "$tmp/small.out"
same_file "$tmp/small.img" "$tmp/small.out"
echo OK
